"""Which of the compiled loops' two routes is faster for a KAN layer call, measured in one run.

``kanedu.native`` runs a ``KANLayer`` on the CPU by one of two routes (see its docstring): the *dense* route
writes the expanded features ``Phi [N, in * (G + k + 1)]`` and multiplies with BLAS; the *sparse* route
never forms ``Phi`` and adds the ``k + 2`` used slots per (sample, feature) straight into the output.
``native.dense_route(N, in, slots)`` picks one from the sizes. This script times both routes on a grid
of sizes (forward + backward of a ``KANLayer``, 1 or more threads, the two interleaved round by round) and
reports ``sparse / dense`` per size, and for each rule the *regret*: its time over the faster route's,
as a geometric mean over the grid and at worst. The thresholds in ``kanedu/native.py`` come from it.

Run: python benchmarks/bench_route.py [--threads 1] [--rounds 5] [--full]

Measured on the 2-core course machine (2026-12-02, --full: 434 sizes, N 32-2048, in 1-64, out 1-64,
G 5-50): the sparse loops won almost everywhere from G = 11 on and below ~8k (sample, feature) pairs; the
dense route won at G = 5-8 with more pairs, by up to 1.6x. kanedu's rule (dense for at least 8,192 pairs
and fewer than 13 slots) had a regret of 1.010 (geometric mean) at 1 thread and 1.022 at 2; the sparse
loops alone 1.020 and 1.037, the dense route alone 1.28 and 1.23.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_time  # noqa: E402

import kanedu  # noqa: E402
from kanedu import KANLayer, native  # noqa: E402

QUICK = ([128, 2048], [4, 64], [1, 8, 64], [5, 16, 32])
FULL = ([32, 128, 512, 2048], [1, 4, 16, 64], [1, 8, 30, 64], [5, 8, 11, 16, 20, 32, 50])
MAX_WORK = 2048 * 16 * 64  # N * in * out: larger cases add little and take long


class forced:
    """Within the block, every call takes the dense (True) or the sparse (False) route."""

    def __init__(self, dense: bool):
        # (SPARSE_MIN_SLOTS, DENSE_MIN_PAIRS): no limits, or none may pass
        self.values = (10**6, 0) if dense else (0, 10**15)

    def __enter__(self):
        self.saved = (native.SPARSE_MIN_SLOTS, native.DENSE_MIN_PAIRS)
        native.SPARSE_MIN_SLOTS, native.DENSE_MIN_PAIRS = self.values

    def __exit__(self, *exc):
        native.SPARSE_MIN_SLOTS, native.DENSE_MIN_PAIRS = self.saved


def time_routes(N: int, n_in: int, n_out: int, G: int, rounds: int) -> tuple[float, float]:
    """Median seconds of one forward + backward on the sparse and on the dense route."""
    gen = torch.Generator().manual_seed(0)
    layer = KANLayer(n_in, n_out, grid_size=G)
    x = torch.rand(N, n_in, generator=gen) * 2 - 1

    def step(dense):
        def run():
            with forced(dense):
                layer(x.detach().requires_grad_()).sum().backward()
        return run

    sparse, dense = step(False), step(True)
    for fn in (sparse, dense, sparse, dense):  # warm-up: compilation, allocator
        fn()
    ts, td = [], []
    for _ in range(rounds):
        ts.append(median_time(sparse, repeat=7, warmup=1))
        td.append(median_time(dense, repeat=7, warmup=1))
    return statistics.median(ts), statistics.median(td)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--full", action="store_true", help=f"the full grid {FULL} (about 10 minutes)")
    args = p.parse_args()
    cfg = kanedu.configure_cpu(threads=args.threads)
    if not native.ENABLED:
        sys.exit("kanedu's compiled loops are off (numba missing or KANEDU_NATIVE=0): nothing to compare")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU; {cfg}")
    print(f"  {'N':>5s} {'in':>3s} {'out':>3s} {'G':>3s} {'sparse ms':>10s} {'dense ms':>9s} {'sparse/dense':>12s}"
          f" {'kanedu picks':>12s}")
    rows = []
    for N, n_in, n_out, G in itertools.product(*(FULL if args.full else QUICK)):
        if N * n_in * n_out > MAX_WORK:
            continue
        ts, td = time_routes(N, n_in, n_out, G, args.rounds)
        picks = native.dense_route(N, n_in, G + 3 + 1)
        rows.append((N, n_in, n_out, G, ts, td))
        print(f"  {N:5d} {n_in:3d} {n_out:3d} {G:3d} {ts * 1e3:10.3f} {td * 1e3:9.3f} {ts / td:12.2f}"
              f" {'dense' if picks else 'sparse':>12s}", flush=True)
    rules = {
        "kanedu's dense_route": lambda N, i, o, G: native.dense_route(N, i, G + 4),
        "always sparse": lambda N, i, o, G: False,
        "always dense": lambda N, i, o, G: True,
    }
    print("\nregret (time of the route a rule picks / the faster route's), over the grid:")
    for name, rule in rules.items():
        regret = [(td if rule(N, i, o, G) else ts) / min(ts, td) for N, i, o, G, ts, td in rows]
        geo = math.exp(statistics.fmean(math.log(r) for r in regret))
        print(f"  {name:22s} geometric mean {geo:.3f}, worst {max(regret):.2f}")


if __name__ == "__main__":
    main()
