"""Timing helpers shared by the lessons and ``benchmarks/``: medians of repeated runs, interleaved rounds.

A shared machine drifts by up to 2x over minutes, so a ratio of two timings is only meaningful when both
were measured in the same process, close together in time. :func:`median_time` times one function;
:func:`compare` times several in interleaved rounds and returns each one's median, so a slow phase of the
machine hits them all alike.

    >>> t = median_time(lambda: model(x).sum().backward())          # seconds per call
    >>> times = compare({"kan": step_kan, "mlp": step_mlp}, rounds=5)
    >>> times["kan"] / times["mlp"]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

from ._checks import integer

__all__ = ["median_time", "compare"]


def median_time(fn: Callable[[], object], repeat: int = 20, warmup: int = 3, min_time: float = 0.0) -> float:
    """Median seconds per call of ``fn()`` over at least ``repeat`` calls and ``min_time`` seconds, after
    ``warmup`` calls (which absorb one-off costs: compilation, allocator growth, caches)."""
    repeat, warmup = integer("repeat", repeat, minimum=1), integer("warmup", warmup, minimum=0)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare(fns: Mapping[str, Callable[[], object]], rounds: int = 5, repeat: int = 10,
            warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of every function in ``fns``, timed in ``rounds`` interleaved rounds of
    ``repeat`` calls each (after ``warmup`` calls of each): ``{name: seconds}``."""
    rounds = integer("rounds", rounds, minimum=1)
    if not fns:
        raise ValueError("compare needs at least one function to time")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(median_time(fn, repeat=repeat, warmup=0))
    return {name: statistics.median(v) for name, v in samples.items()}
