"""The KAN paper's grid-extension protocol, in kanedu and (when installed) pykan, over seeds, in one run.

exp(sin(pi x1) + x2^2) on [-1, 1]^2, 1000 train / 1000 test points (``toy_dataset(seed=0)``), float64;
models [2,1,1] and [2,5,1]; grids 3 -> 5 -> 10 -> 20 -> 50, 50 LBFGS steps per grid, each stage with
fit's default (pykan's) grid updates every 5 steps during its first 50. Both libraries run the same
schedule with their own defaults: ``kanedu.fit(model, ds, opt="LBFGS", steps=50)`` and pykan's
``model.fit(ds, opt="LBFGS", steps=50)``. Prints the test RMSE per grid for every seed, the medians, the
seconds, and kanedu's speed-up over pykan on the same schedule (both timed in this process, one after the
other, so a slow phase of the machine hits both).

Run: python benchmarks/bench_train.py [--seeds 0-4] [--threads 2] [--no-pykan] [--torch-engine]

Targets (issue 11), over seeds 0-4: [2,1,1] median test RMSE <= 4e-5 at G=20 and <= 2e-6 at G=50, every
seed below 1e-4 at G=20; [2,5,1] median <= 1.5e-4 at G=20 and <= 1e-4 at G=50; the whole schedule at
least 10x ([2,1,1]) and 5x ([2,5,1]) faster than pykan's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

import torch

import kanedu
from kanedu.data import toy_dataset

GRIDS = (3, 5, 10, 20, 50)
STEPS = 50
TARGETS = {  # issue 11: (grid, median bound)
    (2, 1, 1): {20: 4e-5, 50: 2e-6},
    (2, 5, 1): {20: 1.5e-4, 50: 1e-4},
}
SPEED_TARGET = {(2, 1, 1): 10.0, (2, 5, 1): 5.0}


def run_kanedu(widths, ds, seed, fused=None):
    """``{G: test RMSE}``, seconds and loss-and-gradient evaluations of the whole schedule."""
    model = kanedu.KAN(widths, grid_size=GRIDS[0], seed=seed)
    rmse, evals, start = {}, 0, time.perf_counter()
    for G in GRIDS:
        if G != GRIDS[0]:
            model = model.refine(G, ds["train_input"])
        h = kanedu.fit(model, ds, opt="LBFGS", steps=STEPS, progress=False, seed=seed, fused=fused)
        rmse[G], evals = h.last["test_rmse"], evals + h.last["evaluations"]
    return rmse, time.perf_counter() - start, evals, h.meta["engine"]


@contextlib.contextmanager
def _quiet_in_temporary_directory():
    """pykan prints while building, refining and fitting, and writes ./model/ files even with
    auto_save=False: silence it and run it where it cannot leave files behind."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.makedirs("model", exist_ok=True)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.chdir(cwd)


def run_pykan(widths, ds, seed):
    import importlib

    from kan import KAN as PyKAN

    multkan = importlib.import_module("kan.MultKAN")  # the module (kan.MultKAN is also a class name)
    counter = {"evals": 0}

    class CountingLBFGS(multkan.LBFGS):  # pykan's own LBFGS, counting closure calls
        def step(self, closure):
            def counted():
                counter["evals"] += 1
                return closure()

            return super().step(counted)

    original, multkan.LBFGS = multkan.LBFGS, CountingLBFGS
    rmse = {}
    try:
        with _quiet_in_temporary_directory():
            model = PyKAN(width=list(widths), grid=GRIDS[0], k=3, seed=seed, auto_save=False, device="cpu")
            start = time.perf_counter()
            for G in GRIDS:
                if G != GRIDS[0]:
                    model = model.refine(G)
                model.fit(ds, opt="LBFGS", steps=STEPS)
                with torch.no_grad():
                    rmse[G] = (model(ds["test_input"]) - ds["test_label"]).pow(2).mean().sqrt().item()
            seconds = time.perf_counter() - start
    finally:
        multkan.LBFGS = original
    return rmse, seconds, counter["evals"], "pykan"


def table(name, runs):
    """Print one row per seed and the medians; return the medians."""
    print(f"  {name}")
    print("    " + f"{'seed':>6}" + "".join(f"{'G=' + str(G):>10}" for G in GRIDS) + f"{'seconds':>9}{'evals':>7}")
    for seed, (rmse, secs, evals, _) in runs.items():
        print("    " + f"{seed:>6}" + "".join(f"{rmse[G]:10.2e}" for G in GRIDS) + f"{secs:9.1f}{evals:7d}")
    med = {G: statistics.median(r[0][G] for r in runs.values()) for G in GRIDS}
    secs = statistics.median(r[1] for r in runs.values())
    print("    " + f"{'median':>6}" + "".join(f"{med[G]:10.2e}" for G in GRIDS) + f"{secs:9.1f}")
    return med, secs


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3,7 (default 0-4)")
    p.add_argument("--threads", type=int, default=None, help="default: kanedu.configure_cpu's choice")
    p.add_argument("--widths", default="211,251", help="which models: 211, 251 or both (default)")
    p.add_argument("--no-pykan", action="store_true")
    p.add_argument("--torch-engine", action="store_true", help="also time fit(fused=False)")
    args = p.parse_args()
    cfg = kanedu.configure_cpu(threads=args.threads)
    torch.set_default_dtype(torch.float64)
    ds = toy_dataset("exp_sin_sq", n_train=1000, n_test=1000, seed=0)
    seeds = parse_seeds(args.seeds)
    try:
        import kan  # noqa: F401

        have_pykan, why = not args.no_pykan, "disabled with --no-pykan"
    except ImportError:
        have_pykan, why = False, "pykan is not installed (pip install pykan==0.2.8): skipped"
    print(f"torch {torch.__version__}, {cfg.threads} threads, float64, grids {GRIDS}, {STEPS} LBFGS steps each, "
          f"seeds {seeds}")
    widths_list = [tuple(int(c) for c in w) for w in args.widths.split(",")]
    for widths in widths_list:
        print(f"\nKAN {list(widths)}: test RMSE after each grid")
        ours = {s: run_kanedu(list(widths), ds, s) for s in seeds}
        med, secs = table(f"kanedu ({ours[seeds[0]][3]} engine)", ours)
        worst20 = max(r[0][20] for r in ours.values())
        for G, bound in TARGETS[widths].items():
            print(f"    median at G={G}: {med[G]:.2e} (target <= {bound:.1e}: "
                  f"{'meets' if med[G] <= bound else 'MISSES'})")
        if widths == (2, 1, 1):
            print(f"    worst seed at G=20: {worst20:.2e} (target < 1e-4: {'meets' if worst20 < 1e-4 else 'MISSES'})")
        if args.torch_engine:
            slow = {s: run_kanedu(list(widths), ds, s, fused=False) for s in seeds}
            _, slow_secs = table("kanedu (torch engine)", slow)
            print(f"    the fused engine is {slow_secs / secs:.1f}x faster than the torch engine")
        if have_pykan:
            theirs = {s: run_pykan(widths, ds, s) for s in seeds}
            pmed, psecs = table("pykan 0.2.8 (its defaults)", theirs)
            best = {G: min(r[0][G] for r in theirs.values()) for G in GRIDS}
            print("    pykan's best seed: " + ", ".join(f"G={G} {best[G]:.2e}" for G in (20, 50)))
            ratio = psecs / secs
            print(f"    kanedu's median schedule is {ratio:.1f}x faster than pykan's "
                  f"(target >= {SPEED_TARGET[widths]:.0f}x: {'meets' if ratio >= SPEED_TARGET[widths] else 'MISSES'})")
            beats = all(med[G] <= best[G] for G in (20, 50))
            print(f"    kanedu's median {'beats' if beats else 'does NOT beat'} pykan's best seed at G=20 and G=50")
        else:
            print(f"  pykan: {why}")


if __name__ == "__main__":
    main()
