"""Shared timing helper for the benchmarks: median of repeated runs after warm-up."""

import statistics
import time


def median_time(fn, repeat: int = 20, warmup: int = 3, min_time: float = 0.0) -> float:
    """Median seconds per call of ``fn()`` over ``repeat`` calls (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
