"""What a training step costs, measured the way lesson 08 and ``benchmarks/`` measure it.

* :func:`adam_step` turns a model and a batch into a function that runs one full training step;
  :func:`kanedu.timing.compare` times several such functions in interleaved rounds (one process, one
  machine state), so their ratios mean something on a busy machine.
* :func:`time_breakdown` profiles forward + backward with ``torch.profiler`` and splits the time into
  matrix products (the contraction) and everything else (the B-spline bases, the expanded features,
  the base activation), for the forward and the backward pass.
* :func:`saved_bytes` counts the activation memory autograd keeps for backward.
* :func:`denormal_slowdown` times arithmetic on subnormal numbers with and without flushing them.
* :func:`torch_kernel` runs a block with kanedu's compiled CPU loops switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn

from . import native
from ._checks import integer
from .runtime import _denormals_flushed
from .timing import median_time

__all__ = ["adam_step", "time_breakdown", "saved_bytes", "denormal_slowdown", "torch_kernel"]

_MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}


def adam_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse",
              lr: float = 1e-3) -> Callable[[], float]:
    """One training step per call: zero the gradients, ``loss(model(x), y)``, backward, ``Adam.step()``;
    returns the loss. ``x [B, in]``; ``y [B, out]`` for ``"mse"``, class indices ``[B]`` for ``"ce"``."""
    if loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    criterion = nn.functional.mse_loss if loss == "mse" else nn.functional.cross_entropy
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        value = criterion(model(x), y)
        value.backward()
        opt.step()
        return value.item()

    return step


@contextlib.contextmanager
def torch_kernel():
    """Inside this block KAN layers on the CPU run the torch kernel (``kanedu.kernels``), not the compiled
    loops of ``kanedu.native`` (as with ``KANEDU_NATIVE=0``, but switchable within one process)."""
    before = native.ENABLED
    native.ENABLED = False
    try:
        yield
    finally:
        native.ENABLED = before


def _phase(event) -> str | None:
    while event is not None:
        if event.name in ("kanedu:forward", "kanedu:backward"):
            return event.name.split(":")[1]
        event = event.cpu_parent
    return None


def time_breakdown(module: nn.Module, x: torch.Tensor, grad: torch.Tensor | None = None, repeat: int = 5,
                   warmup: int = 2) -> dict[str, float]:
    """Seconds per forward + backward of ``module(x)`` (``x [B, in]``, output gradient ``grad``, default
    ones), split by ``torch.profiler`` into ``"forward: matmul"``, ``"forward: other"``, ``"backward: matmul"``,
    ``"backward: other"`` (self CPU time of the operators in each pass; "other" is every operator that is
    not a matrix product: bases, expanded features, activations, reductions, copies) and ``"total"``."""
    from torch.profiler import ProfilerActivity, profile, record_function

    repeat, warmup = integer("repeat", repeat, minimum=1), integer("warmup", warmup, minimum=0)
    x = x.detach().requires_grad_(True)

    def once():
        with record_function("kanedu:forward"):
            y = module(x)
        with record_function("kanedu:backward"):
            y.backward(torch.ones_like(y) if grad is None else grad)

    for _ in range(warmup):
        once()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeat):
            once()
    out = {f"{p}: {c}": 0.0 for p in ("forward", "backward") for c in ("matmul", "other")}
    for event in prof.events():
        phase = _phase(event)
        if phase is None or event.name.startswith("kanedu:"):
            continue
        kind = "matmul" if event.name in _MATMULS else "other"
        out[f"{phase}: {kind}"] += event.self_cpu_time_total * 1e-6 / repeat  # microseconds -> seconds
    for event in prof.events():
        if event.name in ("kanedu:forward", "kanedu:backward"):  # the regions' own Python overhead
            out[f"{event.name.split(':')[1]}: other"] += event.self_cpu_time_total * 1e-6 / repeat
    out["total"] = sum(out.values())
    return out


def saved_bytes(fn: Callable[[], object], params: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs, not counting ``params``
    (the weights, which exist anyway): the activation memory of one forward pass."""
    skip = {p.data_ptr() for p in params}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in skip:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def denormal_slowdown(n: int = 30_000, repeat: int = 30) -> dict[str, float]:
    """Median seconds of two float64 operations that meet subnormal numbers, each timed with
    ``torch.set_flush_denormal(False)`` and ``True``:

    * ``"subnormal results"``: ``a * 1e-10`` for ``a = 1e-300`` (normal inputs, every product subnormal);
    * ``"subnormal inputs"``: ``b / 3`` for ``b = 2^-1034``, about 5e-312 (subnormal inputs).

    Returns ``{case: {"no flush": s, "flush": s, "slowdown": ratio}}`` and ``"supported"`` (False where
    the CPU cannot flush; then both times are measured without flushing). ``torch.set_flush_denormal``
    sets the calling thread only, so ``n`` stays below the size at which torch splits an element-wise
    operation over threads (32,768). The calling thread's setting is restored afterwards."""
    n = integer("n", n, minimum=1)
    a = torch.full((n,), 1e-300, dtype=torch.float64)
    # from bits: converting a float literal may itself be flushed to zero on this thread
    b = torch.full((n,), 1 << 40, dtype=torch.int64).view(torch.float64)
    out = torch.empty_like(a)
    cases = {"subnormal results": lambda: torch.mul(a, 1e-10, out=out),
             "subnormal inputs": lambda: torch.div(b, 3.0, out=out)}
    before = _denormals_flushed()
    supported = torch.set_flush_denormal(True)
    result: dict = {}
    try:
        for case, fn in cases.items():
            times = {}
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                times["flush" if flush else "no flush"] = median_time(fn, repeat=repeat)
            result[case] = {**times, "slowdown": times["no flush"] / times["flush"]}
    finally:
        torch.set_flush_denormal(before)
    result["supported"] = bool(supported)
    return result
