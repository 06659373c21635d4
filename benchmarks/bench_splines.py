"""Fast uniform B-spline path vs the Cox-de Boor reference, both measured in this run.

Run: python benchmarks/bench_splines.py    (CPU, 2 threads by default; --threads N to change)
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_time  # noqa: E402

import kanedu  # noqa: E402
from kanedu.splines import bspline_basis, uniform_grid  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--features", type=int, default=64)
    args = p.parse_args()
    kanedu.configure_cpu(threads=args.threads)  # threads and denormals as the lessons set them
    print(f"torch {torch.__version__}, {args.threads} threads, x [{args.batch}, {args.features}] float32, k=3")
    print(f"{'G':>5} {'reference ms':>13} {'fast ms':>9} {'fast/reference':>15}")
    x = torch.rand(args.batch, args.features) * 2 - 1
    for G in (5, 20, 50, 200):
        grid = uniform_grid(G, 3).expand(args.features, -1).contiguous()
        ref = median_time(lambda g=grid: bspline_basis(x, g, 3, method="reference"))
        fast = median_time(lambda g=grid: bspline_basis(x, g, 3, method="uniform"))
        print(f"{G:>5} {ref * 1e3:>13.3f} {fast * 1e3:>9.3f} {fast / ref:>15.3f}")


if __name__ == "__main__":
    main()
