"""A short GPU check of the training utilities and the layer kernel (run it where CUDA is available).

1. ``kanedu.fit`` on CUDA: a [2,5,1] KAN on exp(sin(pi x) + y^2) with Adam, plain / AMP (bf16) /
   torch.compile / both, with seconds per step and final test RMSE (float32);
2. the KANLayer kernel on CUDA vs the dense matmul of the same size (forward + backward), with
   activation memory from torch.cuda.max_memory_allocated;
3. the same layer on CPU for reference.

Run: python benchmarks/gpu_check.py   (exits with a message and code 0 when no CUDA device is present)
"""

from __future__ import annotations

import sys
import time

import torch

import kanedu
from kanedu.data import toy_dataset


def cuda_time(fn, repeat=20, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def check_fit(steps=300):
    ds = toy_dataset("exp_sin_sq", n_train=10_000, n_test=2_000, seed=0)
    print(f"fit: KAN [2,5,1] G=10, Adam, {steps} steps, batch 1024, 10k points, float32 on cuda")
    for amp in (False, True):
        for comp in (False, True):
            model = kanedu.KAN([2, 5, 1], grid_size=10, seed=0)
            t = time.perf_counter()
            h = kanedu.fit(model, ds, opt="Adam", steps=steps, batch_size=1024, device="cuda", amp=amp,
                           compile=comp, progress=False, seed=0, log_every=50)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            print(f"  amp={amp!s:5} compile={comp!s:5}  {dt:6.2f} s total, {dt / steps * 1e3:6.2f} ms/step, "
                  f"test RMSE {h.last['test_rmse']:.3e}")


def check_layer(device, B=8192, n=256, G=10, k=3):
    x = (torch.rand(B, n, device=device) * 2 - 1).requires_grad_()
    g = torch.randn(B, n, device=device)
    layer = kanedu.KANLayer(n, n, grid_size=G, spline_order=k).to(device)
    D = n * (G + k + 1)
    X = torch.randn(B, D, device=device, requires_grad=True)
    W = torch.randn(n, D, device=device, requires_grad=True)

    def kan_step():
        layer(x).backward(g)

    def mm_step():
        torch.nn.functional.linear(X, W).backward(g)

    if device == "cuda":
        t_k, t_m = cuda_time(kan_step), cuda_time(mm_step)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = layer(x)
        mem = torch.cuda.max_memory_allocated() - base
        del y
    else:
        from _timing import median_time

        t_k, t_m, mem = median_time(kan_step, repeat=5), median_time(mm_step, repeat=5), float("nan")
    print(f"  {device}: KANLayer({n},{n}) G={G} B={B}: {t_k * 1e3:.2f} ms fwd+bwd, matmul {t_m * 1e3:.2f} ms "
          f"-> {t_k / t_m:.2f}x; forward peak extra memory {mem / 2**20:.1f} MiB")


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run this on a GPU machine)")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    check_fit()
    print("layer kernel:")
    check_layer("cuda")
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    torch.set_num_threads(2)
    check_layer("cpu", B=1024, n=64, G=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
