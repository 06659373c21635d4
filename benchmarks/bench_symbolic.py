"""Speed of symbolic regression and of the network diagram (targets: < 2 s each on a laptop CPU).

* auto_symbolic on a trained KAN [2, 5, 1] (exp(sin(pi x1) + x2^2), float64, not pruned: 15 edges, each
  fitted with all 17 library functions);
* plot_network on a KAN [4, 5, 5, 1] with 200 samples (50 edge curves), building the figure and also
  rendering it (Agg).

Run: python benchmarks/bench_symbolic.py    (CPU, 2 threads by default; --threads N to change)
"""

import argparse
import copy
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_time  # noqa: E402

import kanedu  # noqa: E402
from kanedu import KAN, fit  # noqa: E402
from kanedu.data import toy_dataset  # noqa: E402
from kanedu.plot import plot_network  # noqa: E402
from kanedu.symbolic import auto_symbolic  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    kanedu.configure_cpu(threads=args.threads)  # threads and denormals as the lessons set them
    print(f"torch {torch.__version__}, {args.threads} threads")

    ds = toy_dataset("exp_sin_sq", n_train=1000, n_test=1000, seed=0, dtype=torch.float64)
    model = KAN([2, 5, 1], grid_size=5, seed=0, dtype=torch.float64)
    fit(model, ds, steps=20, progress=False, seed=0)
    x = ds["train_input"]

    def run_auto():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return auto_symbolic(copy.deepcopy(model), x)

    report = run_auto()
    t = median_time(run_auto, repeat=args.repeat, warmup=1)
    print(f"auto_symbolic, KAN [2, 5, 1], {len(report) + len(report.skipped)} edges, N={len(x)}: {t:.3f} s "
          f"(target < 2 s)")

    big = KAN([4, 5, 5, 1], seed=0)
    xb = torch.rand(200, 4) * 2 - 1

    def build():
        plt.close(plot_network(big, xb).figure)

    def build_and_draw():
        ax = plot_network(big, xb)
        ax.figure.canvas.draw()
        plt.close(ax.figure)

    t_build = median_time(build, repeat=args.repeat, warmup=1)
    t_draw = median_time(build_and_draw, repeat=args.repeat, warmup=1)
    print(f"plot_network, KAN [4, 5, 5, 1], 50 edges: {t_build:.3f} s to build, {t_draw:.3f} s with rendering "
          f"(target < 2 s)")


if __name__ == "__main__":
    main()
