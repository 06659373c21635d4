"""The KAN paper's grid-extension protocol, in kanedu and (when installed) pykan, timed in one run.

exp(sin(pi x) + y^2) on [-1, 1]^2, 1000 train / 1000 test points, float64; models [2,1,1] and [2,5,1];
grids 3 -> 5 -> 10 -> 20 -> 50 with 50 LBFGS steps per grid (grid updates during the first 50 steps,
as pykan does by default). Prints the test RMSE per grid and the seconds, and kanedu's speed-up over
pykan on the same schedule.

kanedu runs this on fit's fused engine (kanedu.fused: loss and gradient in NumPy, torch's L-BFGS
algorithm on one flat vector); --torch-engine also times fit(fused=False) (autograd + torch.optim.LBFGS).
Both libraries' loss-and-gradient evaluations are counted, so the work behind the seconds is visible.

Run: python benchmarks/bench_train.py [--threads 2] [--no-pykan] [--torch-engine]
Targets (issue 4): [2,1,1] test RMSE < 2e-4 by G=20; at least 10x faster than pykan.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time

import torch

import kanedu
from kanedu.data import toy_dataset

GRIDS = (3, 5, 10, 20, 50)
STEPS = 50


def run_kanedu(widths, ds, seed=0, fused=None):
    model = kanedu.KAN(widths, grid_size=GRIDS[0], seed=seed)
    rows, t0, evals = [], time.perf_counter(), 0
    for G in GRIDS:
        if G != GRIDS[0]:
            model = model.refine(G, ds["train_input"])
        h = kanedu.fit(model, ds, opt="LBFGS", steps=STEPS, update_grid=True, progress=False, seed=seed,
                       fused=fused)
        evals += h.last["evaluations"]
        rows.append((G, h.last["train_rmse"], h.last["test_rmse"], time.perf_counter() - t0, evals))
    return rows, h.meta["engine"]


def run_pykan(widths, ds, seed=0):
    # pykan writes ./model/history.txt during fit even with auto_save=False: run it in a temporary
    # directory so the benchmark leaves no files behind.
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            os.makedirs("model", exist_ok=True)
            return _run_pykan(widths, ds, seed)
        finally:
            os.chdir(cwd)


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _run_pykan(widths, ds, seed):
    import importlib

    from kan import KAN as PyKAN

    multkan = importlib.import_module("kan.MultKAN")  # the module (kan.MultKAN is also a class name)

    evals = 0

    class CountingLBFGS(multkan.LBFGS):  # pykan's own LBFGS, counting closure calls
        def step(self, closure):
            def counted():
                nonlocal evals
                evals += 1
                return closure()

            return super().step(counted)

    multkan.LBFGS = CountingLBFGS
    with _quiet():  # pykan prints while building, refining and fitting
        model = PyKAN(width=list(widths), grid=GRIDS[0], k=3, seed=seed, auto_save=False, device="cpu")
    rows, t0 = [], time.perf_counter()
    for G in GRIDS:
        with _quiet():
            if G != GRIDS[0]:
                model = model.refine(G)
            model.fit(ds, opt="LBFGS", steps=STEPS)
        with torch.no_grad():
            pred = model(ds["train_input"])
            tr = (pred - ds["train_label"]).pow(2).mean().sqrt().item()
            te = (model(ds["test_input"]) - ds["test_label"]).pow(2).mean().sqrt().item()
        rows.append((G, tr, te, time.perf_counter() - t0, evals))
    return rows


def show(name, rows):
    print(f"  {name}")
    print(f"    {'G':>4} {'train RMSE':>11} {'test RMSE':>11} {'seconds':>8} {'evaluations':>11}")
    for G, tr, te, s, ev in rows:
        print(f"    {G:>4} {tr:11.3e} {te:11.3e} {s:8.1f} {ev:11d}")
    s, ev = rows[-1][3], rows[-1][4]
    print(f"    {1e3 * s / ev:.2f} ms per evaluation, all costs included")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-pykan", action="store_true")
    p.add_argument("--torch-engine", action="store_true", help="also time fit(fused=False)")
    args = p.parse_args()
    kanedu.configure_cpu(threads=args.threads)
    torch.set_default_dtype(torch.float64)
    ds = toy_dataset("exp_sin_sq", n_train=1000, n_test=1000, seed=0)
    try:
        import kan  # noqa: F401

        have_pykan = not args.no_pykan
        why = "" if have_pykan else "disabled with --no-pykan"
    except ImportError:
        have_pykan, why = False, "pykan is not installed (pip install pykan): skipped"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, "
          f"grids {GRIDS}, {STEPS} LBFGS steps each")
    for widths in ([2, 1, 1], [2, 5, 1]):
        print(f"\nKAN {widths}")
        ours, engine = run_kanedu(widths, ds)
        show(f"kanedu ({engine} engine)", ours)
        if args.torch_engine:
            slow, engine = run_kanedu(widths, ds, fused=False)
            show(f"kanedu ({engine} engine)", slow)
            print(f"    the fused engine is {slow[-1][3] / ours[-1][3]:.1f}x faster than the torch engine")
        if widths == [2, 1, 1]:
            rmse20 = {row[0]: row[2] for row in ours}[20]
            print(f"    test RMSE at G=20: {rmse20:.2e} (target < 2e-4: {'meets' if rmse20 < 2e-4 else 'MISSES'})")
        if have_pykan:
            theirs = run_pykan(widths, ds)
            show("pykan", theirs)
            ratio = theirs[-1][3] / ours[-1][3]
            per_eval = (theirs[-1][3] / theirs[-1][4]) / (ours[-1][3] / ours[-1][4])
            print(f"    kanedu is {ratio:.1f}x faster than pykan on this schedule "
                  f"(target >= 10x: {'meets' if ratio >= 10 else 'MISSES'}); {per_eval:.1f}x per evaluation")
        else:
            print(f"  pykan: {why}")


if __name__ == "__main__":
    main()
