"""One short check that kanedu works on a GPU: PASS/FAIL per check, with where in kanedu a failure happened.

Run where CUDA is available (about a minute on one GPU):

    python benchmarks/gpu_check.py

Without CUDA it runs the same checks on the CPU as a smoke test (CPU autocast stands in for bf16; fp16,
sync counting and inductor compilation are skipped there), so CI can keep it working. Checks:

1. the layer kernel on the device against the float64 CPU reference: uniform and adaptive grids, inside
   and outside the grid, float32 and float64, outputs and gradients;
2. ``fit`` with Adam: AMP off, bf16, fp16 (the loss must fall and stay finite);
3. ``fit`` with LBFGS and grid updates;
4. ``update_grid``, ``refine`` and ``prune`` on the device;
5. ``plot_network`` of a model on the device;
6. ``auto_symbolic`` of a model on the device;
7. a checkpoint saved on the device and loaded on the CPU gives the same outputs;
8. host syncs in one Adam step (``torch.cuda.set_sync_debug_mode``);
9. ``torch.compile``: graph breaks, compile time, and ms per step against eager;
10. ms per training step on the device against the CPU, for a lesson-sized and a larger model.

Exit code 1 if any check fails.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

import kanedu
from kanedu import KAN, fit
from kanedu.data import toy_dataset
from kanedu.splines import bspline_basis

RESULTS: list[tuple[str, bool, str]] = []


def where(exc: BaseException) -> str:
    """The innermost kanedu frame of a traceback, as ``file:line in function``."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}kanedu{os.sep}" in f.filename]
    if not frames:
        return "outside kanedu"
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


def check(name: str):
    def run(fn):
        t = time.perf_counter()
        try:
            detail = fn() or ""
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the run goes on
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[:200]} [{where(exc)}]"
        RESULTS.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name} ({time.perf_counter() - t:.1f} s)  {detail}", flush=True)
        return fn

    return run


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(model, ds, device, steps=10, batch_size=1024, **kw):
    """Seconds per Adam step of ``fit`` (after a short warm-up run)."""
    fit(copy.deepcopy(model), ds, opt="Adam", steps=3, batch_size=batch_size, device=device, progress=False, **kw)
    sync(device)
    t = time.perf_counter()
    fit(model, ds, opt="Adam", steps=steps, batch_size=batch_size, device=device, progress=False,
        log_every=steps, **kw)
    sync(device)
    return (time.perf_counter() - t) / steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu (smoke test)")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    print(f"kanedu {kanedu.__version__}, torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)}, compute capability {torch.cuda.get_device_capability(device)})"
             if gpu else " (no GPU: smoke test of the same checks)"))
    kanedu.seed_everything(0)
    ds = toy_dataset("exp_sin_sq", n_train=2000, n_test=1000, seed=0)
    ds_dev = {k: v.to(device) for k, v in ds.items()}

    @check("1. kernel on the device == float64 CPU reference (uniform/adaptive, inside/outside, f32/f64)")
    def _():
        worst = {}
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
            for adaptive in (False, True):
                ref = kanedu.KANLayer(6, 5, grid_size=8, dtype=torch.float64)
                if adaptive:
                    ref.update_grid(torch.randn(2000, 6, dtype=torch.float64) * 0.5)
                x = torch.rand(700, 6, dtype=torch.float64) * 3 - 1.5  # about a third outside the grid
                g = torch.randn(700, 5, dtype=torch.float64)
                xr = x.clone().requires_grad_()
                B = bspline_basis(xr, ref.grid, 3, method="reference")
                phi = torch.cat([torch.nn.functional.silu(xr).unsqueeze(-1), B], -1)
                yr = torch.einsum("nis,iso->no", phi, ref.combined_weight())
                yr.backward(g)
                layer = copy.deepcopy(ref).to(device, dtype)
                xd = x.to(device, dtype).requires_grad_()
                yd = layer(xd)
                yd.backward(g.to(device, dtype))
                err = max((yd.double().cpu() - yr.detach()).abs().max().item(),
                          (xd.grad.double().cpu() - xr.grad).abs().max().item(),
                          (layer.coef.grad.double().cpu() - ref_grad(ref, x, g)).abs().max().item())
                worst[(str(dtype).removeprefix("torch."), "adaptive" if adaptive else "uniform")] = err
                assert err < tol * 10, f"{dtype} {'adaptive' if adaptive else 'uniform'}: max error {err:.2e}"
        return "max abs errors " + ", ".join(f"{k[0]}/{k[1]} {v:.1e}" for k, v in worst.items())

    @check("2. fit with Adam: AMP off / bf16 / fp16")
    def _():
        out = []
        modes = [False, "bf16"] + (["fp16"] if gpu else [])
        for amp in modes:
            model = KAN([2, 5, 1], seed=0)
            h = fit(model, ds_dev, opt="Adam", lr=1e-2, steps=60, batch_size=512, amp=amp, device=device,
                    progress=False, update_grid=False)
            first, last = h["train_loss"][0], h["train_loss"][-1]
            assert last == last and last < 0.5 * first, f"amp={amp}: train RMSE {first:.3g} -> {last:.3g}"
            out.append(f"{amp or 'off'} {first:.3f}->{last:.4f} ({h.meta['amp']})")
        return "train RMSE " + ", ".join(out) + ("" if gpu else "; fp16 needs CUDA")

    @check("3. fit with LBFGS and grid updates")
    def _():
        model = KAN([2, 5, 1], seed=0)
        h = fit(model, ds_dev, steps=30, device=device, progress=False)
        assert h["test_loss"][-1] < 0.05, h["test_loss"][-1]
        return f"test RMSE {h['test_loss'][-1]:.2e}, engine {h.meta['engine']}"

    model = KAN([2, 5, 1], seed=0).to(device)
    fit(model, ds_dev, steps=20, device=device, progress=False)
    x = ds_dev["train_input"]

    @check("4. update_grid, refine and prune on the device")
    def _():
        m = copy.deepcopy(model)
        before = m(x)
        m.update_grid(x)
        drift = (m(x) - before).abs().max().item()
        bigger = m.refine(10, x)
        gap = (bigger(x) - m(x)).abs().max().item()
        pruned = m.prune(x)
        assert drift < 1e-2 and gap < 1e-2, (drift, gap)
        return f"update_grid keeps the function to {drift:.1e}, refine to {gap:.1e}, pruned to {pruned.widths}"

    @check("5. plot_network of a model on the device")
    def _():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ax = kanedu.plot.plot_network(model, x)
        plt.close(ax.figure)

    @check("6. auto_symbolic of a model on the device")
    def _():
        m = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = m.auto_symbolic(lib=["x", "x^2", "sin", "exp", "tanh"], x=x)
        y = m(x)
        assert torch.isfinite(y).all() and y.device == x.device
        fixed = sum(len(layer.symbolic.functions) for layer in m.layers if layer.symbolic is not None)
        return f"{fixed} edges symbolic; {str(report)[:80]}"

    @check("7. checkpoint saved on the device, loaded on the CPU")
    def _():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt"
            kanedu.save(model, path)
            cpu = kanedu.load(path, map_location="cpu")
        err = (cpu(x.cpu()) - model(x).cpu()).abs().max().item()
        assert err < 1e-5, err
        return f"max difference {err:.1e}"

    @check("8. host syncs in one Adam step")
    def _():
        if not gpu:
            return "skipped: needs CUDA"
        m = KAN([2, 5, 1], seed=0).to(device)
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        xb, yb = x[:512], ds_dev["train_label"][:512]
        for _ in range(2):  # warm up (first calls may sync for allocation)
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(xb), yb).backward()
            opt.step()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                opt.zero_grad()
                torch.nn.functional.mse_loss(m(xb), yb).backward()
                opt.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert not syncs, f"{len(syncs)} syncs: {str(syncs[0].message)[:120]}"
        return "0 syncs"

    @check("9. torch.compile: graph breaks, compile time, speed")
    def _():
        import torch._dynamo

        m = KAN([2, 5, 1], seed=0).to(device)
        xb = x[:1024]
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(m)(xb)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        backend = "inductor" if gpu else "eager"
        compiled = torch.compile(m, backend=backend)
        t = time.perf_counter()
        compiled(xb).sum().backward()
        sync(device)
        first = time.perf_counter() - t

        def run(f):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(20):
                f(xb).sum().backward()
            sync(device)
            return (time.perf_counter() - t0) / 20

        run(m)
        eager, comp = run(m), run(compiled)
        return (f"{explanation.graph_count} graph(s), 0 breaks; {backend} compile {first:.1f} s; fwd+bwd eager "
                f"{eager * 1e3:.2f} ms, compiled {comp * 1e3:.2f} ms ({eager / comp:.2f}x)")

    @check("10. ms per Adam step, device vs CPU")
    def _():
        out = []
        for widths, G, n in (([2, 5, 1], 5, 1000), ([16, 64, 64, 1], 10, 8192 if gpu else 2048)):
            big = toy_dataset("exp_sin_sq", n_train=n, n_test=256, seed=0) if widths[0] == 2 else _wide(n, widths[0])
            t_dev = step_time(KAN(widths, grid_size=G, seed=0), big, device, batch_size=min(n, 1024),
                              update_grid=False)
            t_cpu = step_time(KAN(widths, grid_size=G, seed=0), big, torch.device("cpu"), batch_size=min(n, 1024),
                              update_grid=False)
            out.append(f"{widths} G={G}: {device.type} {t_dev * 1e3:.2f} ms, cpu {t_cpu * 1e3:.2f} ms "
                       f"({t_cpu / t_dev:.2f}x)")
        return "; ".join(out)

    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


def ref_grad(ref, x, g):
    """d(sum g * y)/d coef of the float64 CPU layer through autograd (the reference's weight gradient)."""
    r = copy.deepcopy(ref)
    r.zero_grad()
    with io.StringIO():
        (r.forward_reference(x) * g).sum().backward()
    return r.coef.grad


def _wide(n, d):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n + 256, d, generator=gen) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * x[:, 1:2] + x[:, 2:].pow(2).mean(-1, keepdim=True)
    return {"train_input": x[:n], "train_label": y[:n], "test_input": x[n:], "test_label": y[n:]}


if __name__ == "__main__":
    sys.exit(main())
