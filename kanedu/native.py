"""Compiled CPU loops for the KAN layer (numba), used by ``KANLayer.forward`` and ``kernels.kan_linear``.

Only ``k + 1`` of a feature's ``G + k`` bases are non-zero at any x. For every sample ``b`` and feature
``f`` the loops find the interval of ``x[b, f]`` (a ``floor`` on uniform knots; on any knots a count of the
knots below it and the interval's polynomials from ``kernels.interval_table``), evaluate the ``k + 1``
local polynomials there, and then take one of two routes, whichever was faster on the CPU:

* few slots per feature and many (sample, feature) pairs (``_dense_route``): write the ``k + 2``
  non-zeros of the expanded features ``Phi [N, in * P]`` and let BLAS multiply: ``y = Phi @ W``; in backward
  ``dW = Phi^T @ g`` and ``g @ W^T``, from which the loop gathers ``dx`` at the used slots. BLAS does a
  multiply-add several times faster than any loop here, so at small G that wins although it multiplies
  zeros. ``Phi`` is freed at once and written again in backward: only ``x`` (and the weight) is saved.
* many slots: never form ``Phi``. Forward adds ``b(x) W[f, 0] + sum_j B_j W[f, slot_j]`` to ``y[b]``;
  backward adds ``B_j g[b]`` to the same rows of ``dW`` and sets
  ``dx[b, f] = <g[b], b'(x) W[f, 0] + sum_j B'_j W[f, slot_j]>``, one feature at a time (its rows of
  ``dW`` stay in the L1 cache). The work is ``(k + 2) in out`` per sample whatever G is.

The source is generated for each spline order (the ``k + 1`` terms written out, so each inner loop is
one vectorised pass over ``out``) and compiled on first use, once per process and dtype: about 4 s for
the first forward and backward (numba's start-up included); nothing is written to disk. The base
activation and its derivative come from torch (vectorised). Work above ``PARALLEL_MIN_WORK`` is split
over ``torch.get_num_threads()`` threads (rows in forward, features in backward, so no two threads write
the same memory and the bits do not depend on the split). Gradients are first-order only
(``create_graph=True`` raises at the second backward).

Set the environment variable ``KANEDU_NATIVE=0`` before importing kanedu to use the torch kernel
everywhere (it is what runs on a GPU; tests hold both to the Cox-de Boor reference).
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.autograd.function import once_differentiable

# numba is a declared dependency, imported when the first kernel is compiled (it takes ~0.3 s); without it
# (an odd platform) everything runs on the torch kernel
ENABLED = importlib.util.find_spec("numba") is not None and os.environ.get("KANEDU_NATIVE", "1") != "0"
# below this many multiply-adds (N * in * out) a call runs on the calling thread only. Handing work to a
# second thread costs tens of microseconds, and on the 2-vCPU machine we measure on (vCPUs that behave like
# two hyperthreads of one core) splitting was 5-10% slower at the sizes of benchmarks/bench_layer.py.
PARALLEL_MIN_WORK = 1 << 21

_KERNELS: dict = {}
_LOCK = threading.Lock()
_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it, the pool)


def supports(x: torch.Tensor, weight: torch.Tensor, k: int) -> bool:
    """Whether these kernels run the layer: numba present and enabled, ``k >= 1``, float32 or float64 on
    the CPU, gradients enabled, and not inside ``torch.compile`` (which traces the torch kernel instead).

    Without gradients (``torch.no_grad``: evaluation, grid updates, plots) the torch kernel runs. Compiling
    the loops takes 1-3 s once per process, which training repays many times over (about 2x per step at
    64 -> 64) but a few forward passes do not: ``fit``'s fused LBFGS engine, for one, only ever evaluates
    the model without gradients."""
    return (ENABLED and k >= 1 and torch.is_grad_enabled() and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and weight.dtype == x.dtype and not _compiling())


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def _horner(k: int, j: int) -> str:
    """Source of local basis ``j`` at ``s``: ``sum_p C[p, j] s^p`` by Horner's rule, with the coefficients
    of the uniform bases (``kernels._uniform_poly``) written in as literals."""
    from .kernels import _uniform_poly

    C = _uniform_poly(k)
    h = repr(float(C[k, j]))
    for p in range(k - 1, -1, -1):
        h = f"({h}) * s + {float(C[p, j])!r}"
    return h


def _dhorner(k: int, j: int) -> str:
    """Source of ``d/ds`` of local basis ``j``: ``sum_p (p + 1) C[p + 1, j] s^p``."""
    from .kernels import _uniform_poly

    C = _uniform_poly(k)
    h = repr(float(k * C[k, j]))
    for p in range(k - 2, -1, -1):
        h = f"({h}) * s + {float((p + 1) * C[p + 1, j])!r}"
    return h


def _locate_source(k: int, xv: str, f: str, col: str, deriv: str, indent: int) -> str:
    """Source that writes column ``col`` of ``L`` for the value ``xv`` of feature ``f`` (see ``_source``):
    one branch for uniform knots, one for any knots (a run-time flag: one compiled kernel serves both, since
    training usually meets both, and compiling costs more than the never-mispredicted branch)."""
    return (" " * indent + "if adaptive:\n" + _locate_lines(k, True, xv, f, col, deriv, indent + 4)
            + " " * indent + "else:\n" + _locate_lines(k, False, xv, f, col, deriv, indent + 4))


def _locate_lines(k: int, adaptive: bool, xv: str, f: str, col: str, deriv: str, indent: int) -> str:
    K = k + 1
    if not adaptive:
        lines = [
            f"u = (np.float64({xv}) - ab[1, {f}]) * ab[0, {f}]",
            "i = np.floor(u)",
            f"i = min(max(i, -{K}.0), n + {k}.0)  # beyond the knots: every slot out of range",
            "s = u - i",
            f"L[0, {col}] = T(i - {k - 1})  # a NaN x gives a NaN slot: slot() maps it out of range",
        ]
        lines += [f"L[{1 + j}, {col}] = T({_horner(k, j)})" for j in range(K)]
        lines += [f"if {deriv}:"]
        lines += [f"    L[{1 + K + j}, {col}] = T(({_dhorner(k, j)}) * ab[0, {f}])" for j in range(K)]
    else:
        # any knots: binary search for the interval, then that interval's polynomials (kernels.interval_table)
        lines = [
            f"xv = {xv}",
            "lo = cnt[b, " + f + "]  # the number of knots <= x (0 for NaN), counted by _count_knots",
            f"s = (np.float64(xv) - tl[{f}, lo]) * iw[{f}, lo]",
            f"L[0, {col}] = T(lo - {k})",
        ]
        for j in range(K):
            h = f"tab[{f}, lo, {k}, {j}]"
            for p in range(k - 1, -1, -1):
                h = f"({h}) * s + tab[{f}, lo, {p}, {j}]"
            lines.append(f"L[{1 + j}, {col}] = T({h})")
        lines += [f"if {deriv}:"]
        for j in range(K):
            h = f"{k}.0 * tab[{f}, lo, {k}, {j}]"
            for p in range(k - 1, 0, -1):
                h = f"({h}) * s + {p}.0 * tab[{f}, lo, {p}, {j}]"
            lines.append(f"    L[{1 + K + j}, {col}] = T(({h}) * iw[{f}, lo])")
    return "\n".join(" " * indent + line for line in lines) + "\n"


def _source(k: int) -> str:
    """Python source of the kernels for spline order ``k``; ``T`` (the layer's dtype) is bound when it is
    compiled. The ``k + 1`` terms of every row update are written out, and every value an inner loop uses
    is read into a local first, so each inner loop is one vectorised pass over ``out``.

    ``gc = (adaptive, ab, tab, tl, iw, cnt)`` (``_call_constants``). Uniform knots: ``ab [2, in]`` (float64),
    ``1/h`` and ``t0`` of every feature, so that the knot coordinate is ``u = (x - ab[1]) * ab[0]``. Any
    knots: ``kernels.interval_table`` (``tab``, ``tl``, ``iw``, float64; row ``r`` = interval ``r - 1``) and
    ``cnt [N, in]``, the number of knots <= each x (``_count_knots``). The located bases of a row (or
    column) of ``x`` go to ``L [1 + 2(k+1), in (or N)]``: row 0 the slot of the first non-zero basis
    (1-based: slot 0 of a feature is its base activation; slots outside ``1..n`` do not exist), rows
    ``1..k+1`` the bases, the rest their ``d/dx``.
    """
    K = k + 1
    unpack = "    adaptive, ab, tab, tl, iw, cnt = gc"
    v = "\n".join(f"                v{j} = L[{1 + j}, f]" for j in range(K))
    rows = " + ".join(f"v{j} * W[f, q + {j}, o]" for j in range(K))

    def write_phi(indent: int) -> str:
        # row b of Phi from the located L: zeros, the base activation in slot 0, the k + 1 bases
        lines = ["row = phi[b]", "for c in range(row.shape[0]):", "    row[c] = 0.0", "for f in range(n_in):",
                 "    at = f * P", "    if has_base:", "        row[at] = bx[b, f]", "    q = slot(L, f)",
                 f"    if q >= 1 and q + {k} <= n:"]
        lines += [f"        row[at + q + {j}] = L[{1 + j}, f]" for j in range(K)]
        lines += ["    else:", f"        for j in range({K}):", "            if q + j >= 1 and q + j <= n:",
                  "                row[at + q + j] = L[1 + j, f]"]
        return "\n".join(" " * indent + line for line in lines) + "\n"

    gathered = " + ".join(f"L[{1 + K + j}, f] * row[at + q + {j}]" for j in range(K))
    bv = "\n".join(f"                    d{j} = L[{1 + K + j}, b]" for j in range(K))
    drows = " + ".join(f"d{j} * W[f, q + {j}, o]" for j in range(K))
    gwrows = "\n".join(f"                    v = L[{1 + j}, b]\n                    for o in range(n_out):\n"
                       f"                        gW[f, q + {j}, o] += v * g[b, o]" for j in range(K))
    return f"""
def slot(L, c):
    q = L[0, c]
    return np.int64(q) if q == q else np.int64(-{2 * K})


def build_phi(x, bx, has_base, gc, n, phi, b0, b1):
{unpack}
    # the expanded features Phi[b, f * (n + 1) + slot] of rows b0..b1: zeros but for k + 2 per feature
    n_in = x.shape[1]
    P = n + 1
    L = np.empty(({1 + 2 * K}, n_in), phi.dtype)
    for b in range(b0, b1):
        for f in range(n_in):
{_locate_source(k, "x[b, f]", "f", "f", "False", 12)}
{write_phi(8)}

def build_phi_gather(x, bx, dbx, has_base, gc, n, phi, gphi, gx, need_w, need_x, b0, b1):
{unpack}
    # backward, rows b0..b1: Phi again (if need_w) and gx[b, f] = sum over the k + 2 used slots of
    # dPhi/dx * dL/dPhi (if need_x), locating every x once for both
    n_in = x.shape[1]
    P = n + 1
    L = np.empty(({1 + 2 * K}, n_in), gx.dtype)
    for b in range(b0, b1):
        for f in range(n_in):
{_locate_source(k, "x[b, f]", "f", "f", "need_x", 12)}
        if need_w:
{write_phi(12)}        if need_x:
            row = gphi[b]
            for f in range(n_in):
                at = f * P
                acc = dbx[b, f] * row[at] if has_base else T(0.0)
                q = slot(L, f)
                if q >= 1 and q + {k} <= n:
                    acc += {gathered}
                else:
                    for j in range({K}):
                        if q + j >= 1 and q + j <= n:
                            acc += L[{1 + K} + j, f] * row[at + q + j]
                gx[b, f] = acc


def forward(x, bx, has_base, W, gc, n, y, b0, b1):
{unpack}
    # y[b] = sum_f b(x[b, f]) W[f, 0] + sum_j B_j(x[b, f]) W[f, q + j], for rows b0..b1
    n_in = x.shape[1]
    n_out = W.shape[2]
    L = np.empty(({1 + 2 * K}, n_in), y.dtype)
    for b in range(b0, b1):
        for f in range(n_in):
{_locate_source(k, "x[b, f]", "f", "f", "False", 12)}
        for o in range(n_out):
            y[b, o] = 0.0
        for f in range(n_in):
            q = slot(L, f)
            bv = bx[b, f] if has_base else T(0.0)
            if q >= 1 and q + {k} <= n:
{v}
                for o in range(n_out):
                    y[b, o] += bv * W[f, 0, o] + {rows}
                continue
            if has_base:
                for o in range(n_out):
                    y[b, o] += bv * W[f, 0, o]
            for j in range({K}):
                if q + j >= 1 and q + j <= n:
                    v = L[1 + j, f]
                    for o in range(n_out):
                        y[b, o] += v * W[f, q + j, o]


def backward(x, bx, dbx, has_base, W, g, gc, n, need_x, need_w, gx, gW, f0, f1):
{unpack}
    # the gradients of features f0..f1: gW[f] (all of it) and gx[:, f]; one feature at a time, so that
    # its rows of gW stay in the L1 cache
    N = x.shape[0]
    n_out = W.shape[2]
    L = np.empty(({1 + 2 * K}, N), g.dtype)
    for f in range(f0, f1):
        for b in range(N):
{_locate_source(k, "x[b, f]", "f", "b", "need_x", 12)}
        if need_w:
            for r in range(W.shape[1]):
                for o in range(n_out):
                    gW[f, r, o] = 0.0
        for b in range(N):
            q = slot(L, b)
            full = q >= 1 and q + {k} <= n
            if need_x:
                dbv = dbx[b, f] if has_base else T(0.0)
                acc = T(0.0)
                if full:
{bv}
                    for o in range(n_out):
                        acc += g[b, o] * (dbv * W[f, 0, o] + {drows})
                else:
                    if has_base:
                        for o in range(n_out):
                            acc += g[b, o] * W[f, 0, o]
                        acc *= dbv
                    for j in range({K}):
                        if q + j >= 1 and q + j <= n:
                            dv = L[{1 + K} + j, b]
                            for o in range(n_out):
                                acc += g[b, o] * dv * W[f, q + j, o]
                gx[b, f] = acc
            if need_w:
                if has_base:
                    v = bx[b, f]
                    for o in range(n_out):
                        gW[f, 0, o] += v * g[b, o]
                if full:  # one row at a time: a single store stream per loop vectorises
{gwrows}
                else:
                    for j in range({K}):
                        if q + j >= 1 and q + j <= n:
                            v = L[1 + j, b]
                            for o in range(n_out):
                                gW[f, q + j, o] += v * g[b, o]
"""


def _kernels(k: int, dtype: torch.dtype):
    """The compiled kernels for spline order ``k`` and ``dtype`` (built once per process)."""
    key = (k, dtype)
    with _LOCK:
        if key not in _KERNELS:
            ns = {"np": np, "math": math, "T": np.float32 if dtype == torch.float32 else np.float64}
            exec(_source(k), ns)  # noqa: S102 - our own generated source
            jit = _jit(fastmath=True)
            ns["slot"] = jit(ns["slot"])  # the kernels call it through the namespace
            _KERNELS[key] = {name: jit(ns[name]) for name in ("build_phi", "build_phi_gather", "forward", "backward")}
        return _KERNELS[key]


def _pool() -> ThreadPoolExecutor:
    """The worker threads, made on first use; a forked child (a DataLoader worker, say) makes its own, since
    it inherits the parent's pool object but not its threads."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=7, thread_name_prefix="kanedu-native"))
    return _POOL[1]


def _run_split(fn, total: int, work: int, args_of):
    """Run ``fn(*args_of(lo, hi))`` over ``[0, total)`` in ``torch.get_num_threads()`` parts (the calling
    thread takes the last part)."""
    parts = max(1, min(torch.get_num_threads(), 8, total, work // PARALLEL_MIN_WORK))
    if parts == 1:
        fn(*args_of(0, total))
        return
    bounds = [total * p // parts for p in range(parts + 1)]
    futures = [_pool().submit(fn, *args_of(bounds[p], bounds[p + 1])) for p in range(parts - 1)]
    fn(*args_of(bounds[-2], bounds[-1]))
    for fut in futures:
        fut.result()


def _grid_constants(grid: torch.Tensor, k: int, uniform: bool) -> tuple:
    """What the kernels need to know of the knots (cached on the grid until it changes). Uniform knots:
    ``(ab,)``, ``ab [2, in]`` = ``1/h`` and ``t0`` per feature. Any knots: ``(table, t_left, 1/width,
    knots^T)``: ``kernels.interval_table`` in float64, and the knots ``[m, in]`` as they are (compared with
    x by ``_count_knots``)."""
    cached = getattr(grid, "_kanedu_native_constants", None)
    if cached is not None and cached[0] == (grid._version, k, uniform):
        return cached[1]
    g = grid.detach().cpu()
    if uniform:
        g = g.double()
        inv_h = (g.shape[1] - 1) / (g[:, -1] - g[:, 0])
        out = (torch.stack([inv_h, g[:, 0]]).contiguous().numpy(),)
    else:
        from .kernels import interval_table

        T, t_left, inv_w = interval_table(grid.detach().cpu().double(), k)
        out = (T.contiguous().numpy(), t_left.contiguous().numpy(), inv_w.contiguous().numpy(),
               g.T.contiguous().numpy())
    grid._kanedu_native_constants = ((grid._version, k, uniform), out)
    return out


def _call_constants(x: torch.Tensor, grid: torch.Tensor, k: int, uniform: bool) -> tuple:
    """The kernels' ``gc``: ``(adaptive, ab, table, t_left, 1/width, cnt)`` with ``_grid_constants`` of the
    grid's kind, for any knots the number of knots <= every ``x`` (``cnt [N, in]``), and placeholders for
    the other kind's (fixed dtypes and ranks, so both kinds run the same compiled kernel)."""
    gc = _grid_constants(grid, k, uniform)
    if uniform:
        return (False, gc[0], _PLACEHOLDER["tab"], _PLACEHOLDER["row"], _PLACEHOLDER["row"], _PLACEHOLDER["cnt"])
    cnt = np.empty(x.shape, dtype=np.int32)
    _count_knots(x.numpy(), gc[3], cnt)
    return (True, _PLACEHOLDER["row"], gc[0], gc[1], gc[2], cnt)


_PLACEHOLDER = {"tab": np.zeros((1, 1, 1, 1)), "row": np.zeros((2, 1)), "cnt": np.zeros((1, 1), dtype=np.int32)}


_EMPTY = {}


def _empty(dtype):
    if dtype not in _EMPTY:
        _EMPTY[dtype] = np.zeros((1, 1), dtype=np.float32 if dtype == torch.float32 else np.float64)
    return _EMPTY[dtype]


# When the loops write Phi and BLAS multiplies (the dense route) rather than the sparse loops doing it all.
# Per sample and feature the sparse loops do 3 (k + 2) row updates of ``out`` values, BLAS does 3 P at
# several times the speed per multiply-add, plus a fixed cost per call. Measured on a 2-vCPU AVX-512
# machine (k = 3, fwd + bwd): the dense route is faster for P < 16 (G = 5, 8: 64 -> 64 and 64 -> 8 at batch
# 1024), about even at G = 12, slower from G = 20; and slower when there are few (sample, feature) pairs
# (2 -> 5 at batch 1024: 0.75 ms dense vs 0.42 sparse; 64 -> 64 at batch 64: 0.96 vs 0.73).
# Above DENSE_MAX_ELEMENTS entries of Phi (64 MB in float32) the sparse loops run whatever the sizes: they
# need no temporary larger than the output.
SPARSE_MIN_SLOTS = 16
DENSE_MIN_PAIRS = 8192
DENSE_MAX_ELEMENTS = 1 << 24


def _dense_route(N: int, n_in: int, n1: int) -> bool:
    return n1 < SPARSE_MIN_SLOTS and DENSE_MIN_PAIRS <= N * n_in and N * n_in * n1 <= DENSE_MAX_ELEMENTS


def _forward(x: torch.Tensor, w: torch.Tensor, grid: torch.Tensor, k: int, base, uniform: bool) -> torch.Tensor:
    """``y [N, out]`` for ``x [N, in]`` (contiguous, detached) and ``w [in, n + 1, out]`` (contiguous)."""
    from .kernels import base_with_derivative

    N, n_in = x.shape
    n1, n_out = w.shape[1], w.shape[2]
    kern = _kernels(k, x.dtype)
    gc = _call_constants(x, grid, k, uniform)
    b, _ = base_with_derivative(base, x)
    bx = _empty(x.dtype) if b is None else b.contiguous().numpy()
    xn, n, has_base = x.numpy(), n1 - 1, b is not None
    if _dense_route(N, n_in, n1):
        phi = torch.empty(N, n_in * n1, dtype=x.dtype)
        pn = phi.numpy()
        _run_split(kern["build_phi"], N, N * n_in * n1, lambda lo, hi: (xn, bx, has_base, gc, n, pn, lo, hi))
        return phi @ w.view(n_in * n1, n_out)
    y = torch.empty(N, n_out, dtype=x.dtype)
    wn, yn = w.numpy(), y.numpy()
    _run_split(kern["forward"], N, N * n_in * n_out, lambda lo, hi: (xn, bx, has_base, wn, gc, n, yn, lo, hi))
    return y


def _backward(x, w, grid, k, base, uniform: bool, g, need_x: bool, need_w: bool):
    """``(dL/dx or None, dL/dw or None)`` for the upstream gradient ``g [N, out]``."""
    from .kernels import base_with_derivative

    N, n_in = x.shape
    n1, n_out = w.shape[1], w.shape[2]
    n = n1 - 1
    kern = _kernels(k, x.dtype)
    gc = _call_constants(x, grid, k, uniform)
    b, db = base_with_derivative(base, x)
    has_base = b is not None
    empty = _empty(x.dtype)
    bx = b.contiguous().numpy() if has_base and need_w else empty
    dbx = db().contiguous().numpy() if has_base and need_x else empty
    g = g.contiguous()
    xn, gn = x.numpy(), g.numpy()
    gx = torch.empty_like(x) if need_x else None
    gw = None
    if _dense_route(N, n_in, n1):
        # g @ W^T first, so one pass over x can write Phi and gather the input gradient
        gphi = g @ w.view(n_in * n1, n_out).T if need_x else None  # [N, in * P]
        phi = torch.empty(N, n_in * n1, dtype=x.dtype) if need_w else None
        pn = empty if phi is None else phi.numpy()
        gpn = empty if gphi is None else gphi.numpy()
        gxn = empty if gx is None else gx.numpy()
        _run_split(kern["build_phi_gather"], N, N * n_in * n1,
                   lambda lo, hi: (xn, bx, dbx, has_base, gc, n, pn, gpn, gxn, need_w, need_x, lo, hi))
        del gphi, gpn
        if need_w:
            gw = (phi.T @ g).view(n_in, n1, n_out)
        return gx, gw
    gw = torch.empty_like(w) if need_w else None
    gxn = empty if gx is None else gx.numpy()
    gwn = np.zeros((1, 1, 1), dtype=empty.dtype) if gw is None else gw.numpy()
    wn = w.numpy()
    _run_split(kern["backward"], n_in, N * n_in * n_out,
               lambda lo, hi: (xn, bx, dbx, has_base, wn, gn, gc, n, need_x, need_w, gxn, gwn, lo, hi))
    return gx, gw


class NativeKANFunction(torch.autograd.Function):
    """``kernels.kan_linear`` on the CPU: ``y = Phi(x) @ W`` for a combined weight ``W [in, n + 1, out]``.

    Saves only ``x`` and the weight for backward. Few slots per feature (``_dense_route``): the
    loops write ``Phi`` (``k + 2`` non-zeros per feature) and BLAS multiplies, in forward (``Phi @ W``) and
    backward (``Phi^T @ g``, and ``g @ W^T`` from which a loop gathers the input gradient at the used
    slots); ``Phi`` is freed at once and rebuilt in backward. Many slots: the sparse loops, which never
    form ``Phi``.
    """

    @staticmethod
    def forward(ctx, x, weight, grid, k, base, uniform):
        x, w = x.detach().contiguous(), weight.detach().contiguous()
        ctx.save_for_backward(x, w, grid)
        ctx.k, ctx.base, ctx.uniform = k, base, uniform
        return _forward(x, w, grid, k, base, uniform)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, w, grid = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_w):
            return None, None, None, None, None, None
        gx, gw = _backward(x, w, grid, ctx.k, ctx.base, ctx.uniform, g, need_x, need_w)
        return gx, gw, None, None, None, None


class NativeKANLayerFunction(torch.autograd.Function):
    """``KANLayer.forward`` on the CPU, from the layer's own parameters: the weights are combined as in
    ``KANLayer.combined_weight`` (``W[i, 0] = mask * w_b``, ``W[i, 1 + m] = mask * w_s * c[i, :, m]``)
    by one compiled loop instead of five torch ops, and their gradients split back the same way (tests
    hold both paths equal)."""

    @staticmethod
    def forward(ctx, x, coef, scale_base, scale_spline, mask, grid, k, base, uniform):
        x = x.detach().contiguous()
        c, sb, ss, mk = (t.detach().contiguous() for t in (coef, scale_base, scale_spline, mask))
        n_in, n_out, n = c.shape
        w = torch.empty(n_in, n + 1, n_out, dtype=c.dtype)
        _combine(c.numpy(), sb.numpy(), ss.numpy(), mk.numpy(), w.numpy())
        ctx.save_for_backward(x, w, grid, c, ss, mk)
        ctx.k, ctx.base, ctx.uniform = k, base, uniform
        return _forward(x, w, grid, k, base, uniform)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, w, grid, c, ss, mk = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_c, need_sb, need_ss = ctx.needs_input_grad[1:4]
        need_w = need_c or need_sb or need_ss
        if not (need_x or need_w):
            return (None,) * 9
        gx, gw = _backward(x, w, grid, ctx.k, ctx.base, ctx.uniform, g, need_x, need_w)
        gc = gsb = gss = None
        if need_w:
            gc, gsb, gss = torch.empty_like(c), torch.empty_like(mk), torch.empty_like(mk)
            _split_grad(gw.contiguous().numpy(), c.numpy(), ss.numpy(), mk.numpy(), gc.numpy(), gsb.numpy(),
                        gss.numpy())
        return (gx, gc if need_c else None, gsb if need_sb else None, gss if need_ss else None,
                None, None, None, None, None)


def kan_layer(x, coef, scale_base, scale_spline, mask, grid, k: int, base, uniform: bool) -> torch.Tensor:
    """``KANLayer.forward`` for ``x [N, in]`` on the CPU (check ``supports`` first)."""
    return NativeKANLayerFunction.apply(x, coef, scale_base, scale_spline, mask, grid, k, base, uniform)


def _combine_py(c, sb, ss, mk, w):
    # w[i, 0, o] = mask * w_b; w[i, 1 + m, o] = mask * w_s * c[i, o, m]
    n_in, n_out, n = c.shape
    for i in range(n_in):
        for o in range(n_out):
            w[i, 0, o] = mk[i, o] * sb[i, o]
        for o in range(n_out):
            a = mk[i, o] * ss[i, o]
            for m in range(n):
                w[i, 1 + m, o] = a * c[i, o, m]


def _split_grad_py(gw, c, ss, mk, gc, gsb, gss):
    # the chain rule through _combine_py
    n_in, n_out, n = c.shape
    for i in range(n_in):
        for o in range(n_out):
            gsb[i, o] = mk[i, o] * gw[i, 0, o]
            a = mk[i, o] * ss[i, o]
            acc = 0.0
            for m in range(n):
                gm = gw[i, 1 + m, o]
                gc[i, o, m] = a * gm
                acc += c[i, o, m] * gm
            gss[i, o] = mk[i, o] * acc


def _count_knots_py(x, knots_t, cnt):
    # cnt[b, f] = #{t : knots[f, t] <= x[b, f]} (searchsorted(right=True)); the loop over features
    # is innermost, so it vectorises (a binary search per x is branchy and was 5x slower)
    for b in range(x.shape[0]):
        for f in range(x.shape[1]):
            cnt[b, f] = 0
        for t in range(knots_t.shape[0]):
            for f in range(x.shape[1]):
                cnt[b, f] += np.int32(knots_t[t, f] <= x[b, f])


def _jit(fastmath: bool):
    """numba.njit with our options: release the GIL (threads), NumPy's error model (no ZeroDivisionError
    checks in the loops), no on-disk cache (nothing is written)."""
    import numba

    return numba.njit(nogil=True, fastmath=fastmath, cache=False, error_model="numpy")


class _Lazy:
    """A loop compiled on its first call."""

    def __init__(self, fn, fastmath=True):
        self.fn, self.fastmath, self.compiled = fn, fastmath, None

    def __call__(self, *args):
        if self.compiled is None:
            with _LOCK:
                if self.compiled is None:
                    self.compiled = _jit(self.fastmath)(self.fn)
        return self.compiled(*args)


_count_knots = _Lazy(_count_knots_py, fastmath=False)
_combine = _Lazy(_combine_py)
_split_grad = _Lazy(_split_grad_py)
