"""The benchmarks' timer is the package's (``kanedu.timing``), so lessons and benchmarks time alike."""

from kanedu.timing import compare, median_time  # noqa: F401
