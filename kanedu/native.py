"""The KAN layer on the CPU as compiled loops (numba): ``y = Phi(x) @ W`` without autograd's overhead.

``W [in, n + 1, out]`` is the layer's combined weight (``KANLayer.combined_weight``: slot 0 the base
activation's weight ``mask * w_b``, slots ``1 .. n`` the spline weights ``mask * w_s * c``), and
``Phi(x) [N, in, n + 1]`` the expanded features: ``b(x_i)`` in slot 0 and the ``n = G + k`` B-spline bases
after it. Only ``k + 1`` bases are non-zero at any x, and the loops find them the one way every fast path
does (``kanedu.splines``): locate the table row (a floor on uniform knots, a binary search on any
others), ``s = (x - t_left) / width``, then the row's ``k + 1`` polynomials by Horner's rule
(:func:`locate`, one pass over all of x). Then one of two routes, whichever is faster:

* few slots per feature and many (sample, feature) pairs (:func:`dense_route`): the loops write ``Phi``
  and BLAS multiplies, ``y = Phi @ W``; in backward ``dW = Phi^T g`` and ``dx`` gathered from ``g W^T`` at
  the ``k + 2`` used slots. A BLAS multiply-add is several times faster than any loop, so at small G that
  wins although it multiplies zeros. Small calls keep ``Phi`` for backward (:data:`KEEP_BYTES`); large
  ones free it at once and write it again in backward.
* many slots: never form ``Phi``; forward adds ``b(x) W[f, 0] + sum_j B_j W[f, slot_j]`` to ``y[b]``,
  backward adds ``B_j g[b]`` to the same rows of ``dW`` and ``dx[b, f] = <g[b], b'(x) W[f, 0] +
  sum_j B'_j W[f, slot_j]>``, one feature at a time. The work is ``(k + 2) in out`` per sample for any G.

The loops are plain module-level ``numba.njit(cache=True)`` functions for every spline order (``k`` is an
argument): numba compiles them once per installation and dtype and keeps the machine code in
``__pycache__``, like bytecode, so a new process loads them in well under a second. The base activation
and its derivative come from torch (``kanedu.activations``). Work above ``PARALLEL_MIN_WORK`` is split over
up to ``torch.get_num_threads()`` of numba's threads (``prange``; rows in forward, features in backward, so
no two threads write the same memory and every row is computed by the same loop). First-order gradients only.

``KANEDU_NATIVE=0`` in the environment before importing kanedu runs the torch kernel everywhere (what runs
on a GPU); tests hold both to the Cox-de Boor reference.
"""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .activations import base_with_derivative
from .splines import IntervalTable, uniform_polynomials
from .weights import combine_weights, combine_weights_grad

__all__ = ["ENABLED", "supports", "kan_linear", "kan_layer", "knot_constants", "NativeKANFunction",
           "NativeKANLayerFunction", "dense_route", "features", "forward",
           "backward"]

# numba is a declared dependency; without it (an odd platform) everything runs on the torch kernel
ENABLED = importlib.util.find_spec("numba") is not None and os.environ.get("KANEDU_NATIVE", "1") != "0"
# below this many multiply-adds (N * in * out) per thread a call runs on the calling thread only. Waking
# numba's threads costs ~10-20 us (a Python thread pool, used before, cost ~90 us and never paid off for
# the benchmark's layers); 2^17 is about 50 us of loop work on one core
PARALLEL_MIN_WORK = 1 << 17

if ENABLED:
    import numba

    # fastmath without "nnan"/"ninf": the loops test for NaN and must keep those tests
    _OPTS = {"nogil": True, "cache": True, "error_model": "numpy",
             "fastmath": {"contract", "afn", "reassoc", "arcp", "nsz"}}
    _njit = numba.njit(**_OPTS)
    _inline = numba.njit(inline="always", **_OPTS)  # inlined into its caller, constants propagated
    _njit_parallel = numba.njit(parallel=True, **_OPTS)  # numba's own threads (prange)
    _prange = numba.prange
else:  # pragma: no cover - the plain Python functions stay importable (and testable) without numba
    def _njit(fn):
        return fn

    _inline = _njit_parallel = _njit
    _prange = range


def supports(x: torch.Tensor, weight: torch.Tensor, k: int) -> bool:
    """Whether the loops run the layer: numba present and enabled, ``k >= 1``, float32 or float64 on the
    CPU in one dtype, gradients enabled, no autocast, and not inside ``torch.compile`` (which traces the
    torch kernel). Without gradients (evaluation, grid updates, plots) the torch kernel runs: it needs no
    compiled code and is as fast there."""
    return (ENABLED and k >= 1 and torch.is_grad_enabled() and x.device.type == "cpu"
            and weight.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and weight.dtype == x.dtype and not torch.is_autocast_enabled("cpu") and not _compiling())


def _compiling() -> bool:
    return bool(torch.compiler.is_compiling())


# ---- the spline evaluation, once ------------------------------------------------------------------------
#
# Every loop below is written once for any spline order k. Each entry point calls its body with the literal
# 3 when k == 3 (cubic, the default) and with k otherwise; the bodies are inlined into the entry point, so
# for cubic splines every loop over the k + 1 bases has a constant trip count and is unrolled, and the
# update of an output row is one vectorised pass over ``out``. No function is called per element: the
# bases of every (sample, feature) are located first, in one pass (:func:`locate`), and the routes read them.


@_inline
def _locate_body(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, V, D, deriv, fm, r0, r1,
                 to_phi, bx, has_base, phi):
    # rows r0 .. r1 of x: samples (x [N, in]), or features if fm (x then x^T [in, N]); the outputs have x's shape.
    # to_phi (samples only): the bases go straight into the rows of phi [N, in * (n + 1)] (b(x) in slot 0,
    # zeros where no basis is), not into V
    C = x.shape[1]
    m = knots.shape[1]
    real = x.dtype.type  # every constant in x's dtype: float32 data never computes in float64
    lowest, highest = real(-1.0), real(m - 1.0)
    P = phi.shape[1] // C if to_phi else 1
    n = P - 1
    for r in range(r0, r1):
        if to_phi:
            for c in range(phi.shape[1]):
                phi[r, c] = real(0.0)
        for c in range(C):
            f = r if fm else c
            xv = x[r, c]
            if uniform:  # the row from one floor, in x's dtype (as the torch kernel does)
                u = (xv - t0[f]) * inv_h[f]
                i = np.floor(u)
                i = i if i >= lowest else lowest  # also NaN -> -1: no basis exists there
                i = i if i <= highest else highest
                s = u - i
                q = np.int64(i) - k
                scale = inv_h[f]
                row = 1  # (only the bisection uses it)
            else:  # any knots: the row by bisection (the number of knots <= xv; 0 for NaN)
                row, hi = 0, m
                while row < hi:
                    mid = (row + hi) // 2
                    if knots[f, mid] <= xv:
                        row = mid + 1
                    else:
                        hi = mid
                s = (xv - t_left[f, row]) * inv_w[f, row]
                q = row - 1 - k
                scale = inv_w[f, row]
            first[r, c] = q
            at = c * P + 1 + q  # (to_phi) where basis first + j goes: slot at + j of the row
            inside = 0 <= q and q + k < n
            if to_phi and has_base:
                phi[r, c * P] = bx[r, c]
            for j in range(k + 1):
                acc = real(poly[k][j] if uniform else tab[f, row, k, j])
                for p in range(k):
                    acc = acc * s + real(poly[k - 1 - p][j] if uniform else tab[f, row, k - 1 - p, j])
                if not to_phi:
                    V[j, r, c] = acc
                elif inside or 0 <= q + j < n:
                    phi[r, at + j] = acc
                if deriv:
                    d = real(k * (poly[k][j] if uniform else tab[f, row, k, j]))
                    for p in range(k - 1):
                        d = d * s + real((k - 1 - p) * (poly[k - 1 - p][j] if uniform else tab[f, row, k - 1 - p, j]))
                    D[j, r, c] = d * scale


# the cubic's polynomials as a tuple: numba folds a global tuple into the machine code as constants
_CUBIC = uniform_polynomials(3)


@_njit
def _locate(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, V, D, deriv, fm, r0, r1):
    """The ``k + 1`` bases that can be non-zero at every ``x[b, f]`` of rows ``r0 .. r1``: ``first[b, f]`` the
    index of the basis in ``V[0, b, f]``, ``V[j, b, f]`` the bases ``first .. first + k`` and ``D`` their
    ``d/dx`` (if ``deriv``). Feature-major if ``fm``: ``x`` is then ``x^T [in, N]`` and so are the outputs
    (``first[f, b]``, ``V[j, f, b]``), so that every loop reads and writes memory in order.

    The steps of ``kanedu.splines``: the table row (a floor on uniform knots, a bisection on any others),
    ``s = (x - t_left) / width``, the row's polynomials by Horner's rule. Slots ``j`` whose basis index
    ``first + j`` lies outside ``0 .. n - 1`` hold no basis (near and beyond the grid ends; all of them for a
    NaN ``x``, whose ``first`` is ``-k - 1``): every loop that reads ``V`` skips them by that index, so they
    are left as computed instead of being zeroed here (the test per slot cost more than the polynomials).
    """
    if k == 3 and uniform and fm:
        _locate_body(x, 3, True, t0, inv_h, _CUBIC, tab, t_left, inv_w, knots, first, V, D, deriv, True, r0, r1,
                     False, x, False, x)
    elif k == 3 and uniform:
        _locate_body(x, 3, True, t0, inv_h, _CUBIC, tab, t_left, inv_w, knots, first, V, D, deriv, False, r0, r1,
                     False, x, False, x)
    elif k == 3:
        _locate_body(x, 3, False, t0, inv_h, poly, tab, t_left, inv_w, knots, first, V, D, deriv, fm, r0, r1,
                     False, x, False, x)
    else:
        _locate_body(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, V, D, deriv, fm, r0, r1,
                     False, x, False, x)


@_njit_parallel
def _locate_parallel(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, V, D, deriv, fm, total, parts):
    """:func:`_locate` over rows ``0 .. total`` in ``parts`` pieces, one per thread of numba's."""
    for p in _prange(parts):
        lo, hi = total * p // parts, total * (p + 1) // parts
        _locate(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, V, D, deriv, fm, lo, hi)


@_njit
def _locate_phi(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, D, deriv, bx, has_base, phi, r0, r1):
    """Rows ``r0 .. r1`` of ``Phi(x) [N, in * (n + 1)]`` straight from ``x [N, in]`` (:func:`_locate` and
    :func:`_phi_row` in one pass, without ``V``), with ``first`` and, if ``deriv``, ``D`` as :func:`_locate`
    writes them (sample-major)."""
    if k == 3 and uniform:
        _locate_body(x, 3, True, t0, inv_h, _CUBIC, tab, t_left, inv_w, knots, first, D, D, deriv, False, r0, r1,
                     True, bx, has_base, phi)
    elif k == 3:
        _locate_body(x, 3, False, t0, inv_h, poly, tab, t_left, inv_w, knots, first, D, D, deriv, False, r0, r1,
                     True, bx, has_base, phi)
    else:
        _locate_body(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, D, D, deriv, False, r0, r1,
                     True, bx, has_base, phi)


@_njit_parallel
def _locate_phi_parallel(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, D, deriv, bx, has_base,
                         phi, total, parts):
    """:func:`_locate_phi` over rows ``0 .. total`` in ``parts`` pieces, one per thread of numba's."""
    for p in _prange(parts):
        lo, hi = total * p // parts, total * (p + 1) // parts
        _locate_phi(x, k, uniform, t0, inv_h, poly, tab, t_left, inv_w, knots, first, D, deriv, bx, has_base, phi,
                    lo, hi)


# ---- the two routes ---------------------------------------------------------------------------------------


@_inline
def _phi_row(bx, has_base, k, first, V, phi, b):
    # one row of Phi: zeros, then per feature b(x) in slot 0 and the k + 1 located bases
    n_in = first.shape[1]
    P = phi.shape[1] // n_in
    n = P - 1
    zero = phi.dtype.type(0.0)
    for c in range(phi.shape[1]):
        phi[b, c] = zero
    for f in range(n_in):
        at = f * P
        if has_base:
            phi[b, at] = bx[b, f]
        q = first[b, f]
        if 0 <= q and q + k < n:  # all k + 1 bases exist (every x but those near the grid ends)
            for j in range(k + 1):
                phi[b, at + 1 + q + j] = V[j, b, f]
        else:
            for j in range(k + 1):
                if 0 <= q + j < n:
                    phi[b, at + 1 + q + j] = V[j, b, f]


@_inline
def _phi_gather_row(dbx, has_base, k, first, D, gphi, gx, b):
    # gx[b, f] = sum over the slots of d Phi[b, f, slot] / dx * gphi[b, f * P + slot]
    n_in = first.shape[1]
    P = gphi.shape[1] // n_in
    n = P - 1
    for f in range(n_in):
        q = first[b, f]
        at = f * P
        acc = dbx[b, f] * gphi[b, at] if has_base else gphi.dtype.type(0.0)
        if 0 <= q and q + k < n:
            for j in range(k + 1):
                acc += D[j, b, f] * gphi[b, at + 1 + q + j]
        else:
            for j in range(k + 1):
                if 0 <= q + j < n:
                    acc += D[j, b, f] * gphi[b, at + 1 + q + j]
        gx[b, f] = acc


@_njit
def _phi_gather(dbx, has_base, k, first, D, gphi, gx, phi, bx, V, b0, b1):
    """For rows ``b0 .. b1``: ``gx[b, f] = sum_slots dPhi[b, f, slot]/dx * gphi[b, f * P + slot]`` (if ``gphi``
    has rows), then the row of ``phi`` (if it has rows), in one pass while the row's bases are in the cache."""
    for b in range(b0, b1):
        if k == 3:
            if gphi.shape[0]:
                _phi_gather_row(dbx, has_base, 3, first, D, gphi, gx, b)
            if phi.shape[0]:
                _phi_row(bx, has_base, 3, first, V, phi, b)
        else:
            if gphi.shape[0]:
                _phi_gather_row(dbx, has_base, k, first, D, gphi, gx, b)
            if phi.shape[0]:
                _phi_row(bx, has_base, k, first, V, phi, b)


@_njit_parallel
def _phi_gather_parallel(dbx, has_base, k, first, D, gphi, gx, phi, bx, V, total, parts):
    """:func:`_phi_gather` over rows ``0 .. total`` in ``parts`` pieces, one per thread of numba's."""
    for p in _prange(parts):
        _phi_gather(dbx, has_base, k, first, D, gphi, gx, phi, bx, V, total * p // parts, total * (p + 1) // parts)


@_inline
def _sparse_forward_body(bx, has_base, k, first, V, W, y, fm, b0, b1):
    n_in, n_out = bx.shape[1], W.shape[2]
    n = W.shape[1] - 1
    for b in range(b0, b1):
        for o in range(n_out):
            y[b, o] = 0.0
        for f in range(n_in):
            bv = bx[b, f] if has_base else 0.0
            r0, c0 = (f, b) if fm else (b, f)
            q = first[r0, c0]
            if k == 3 and 0 <= q and q + 3 < n:  # cubic, all four bases inside: one pass over out
                r = q + 1
                v0, v1, v2, v3 = V[0, r0, c0], V[1, r0, c0], V[2, r0, c0], V[3, r0, c0]
                for o in range(n_out):
                    y[b, o] += (bv * W[f, 0, o] + v0 * W[f, r, o] + v1 * W[f, r + 1, o] + v2 * W[f, r + 2, o]
                                + v3 * W[f, r + 3, o])
                continue
            if has_base:
                for o in range(n_out):
                    y[b, o] += bv * W[f, 0, o]
            for j in range(k + 1):
                if 0 <= q + j < n:
                    v = V[j, r0, c0]
                    for o in range(n_out):
                        y[b, o] += v * W[f, 1 + q + j, o]


@_njit
def _sparse_forward(bx, has_base, k, first, V, W, y, fm, b0, b1):
    """``y[b] = sum_f b(x[b, f]) W[f, 0] + sum_j B_j(x[b, f]) W[f, 1 + first + j]`` for rows ``b0 .. b1``
    (the located bases feature-major if ``fm``)."""
    if k == 3:
        _sparse_forward_body(bx, has_base, 3, first, V, W, y, fm, b0, b1)
    else:
        _sparse_forward_body(bx, has_base, k, first, V, W, y, fm, b0, b1)


@_njit_parallel
def _sparse_forward_parallel(bx, has_base, k, first, V, W, y, fm, total, parts):
    """:func:`_sparse_forward` over rows ``0 .. total`` in ``parts`` pieces, one per thread of numba's."""
    for p in _prange(parts):
        _sparse_forward(bx, has_base, k, first, V, W, y, fm, total * p // parts, total * (p + 1) // parts)


@_inline
def _sparse_backward_body(bx, dbx, has_base, k, first, V, D, W, g, need_x, need_w, gx, gW, f0, f1):
    N, n_out = first.shape[1], W.shape[2]
    n = W.shape[1] - 1
    for f in range(f0, f1):
        if need_w:
            for r in range(n + 1):
                for o in range(n_out):
                    gW[f, r, o] = 0.0
        for b in range(N):
            q = first[f, b]
            if need_x:
                acc = 0.0
                if has_base:
                    for o in range(n_out):
                        acc += g[b, o] * W[f, 0, o]
                    acc *= dbx[b, f]
                if k == 3 and 0 <= q and q + 3 < n:
                    r = q + 1
                    d0, d1, d2, d3 = D[0, f, b], D[1, f, b], D[2, f, b], D[3, f, b]
                    for o in range(n_out):
                        acc += g[b, o] * (d0 * W[f, r, o] + d1 * W[f, r + 1, o] + d2 * W[f, r + 2, o]
                                          + d3 * W[f, r + 3, o])
                else:
                    for j in range(k + 1):
                        if 0 <= q + j < n:
                            part = 0.0
                            for o in range(n_out):
                                part += g[b, o] * W[f, 1 + q + j, o]
                            acc += D[j, f, b] * part
                gx[b, f] = acc
            if need_w:
                if has_base:
                    v = bx[b, f]
                    for o in range(n_out):
                        gW[f, 0, o] += v * g[b, o]
                for j in range(k + 1):  # one row at a time: a single store stream per loop vectorises
                    if 0 <= q + j < n:
                        v = V[j, f, b]
                        for o in range(n_out):
                            gW[f, 1 + q + j, o] += v * g[b, o]


@_njit
def _sparse_backward(bx, dbx, has_base, k, first, V, D, W, g, need_x, need_w, gx, gW, f0, f1):
    """``gW[f]`` and ``gx[:, f]`` of features ``f0 .. f1``, one feature at a time (its rows of ``gW`` stay in
    the cache). The located bases come feature-major here: ``first [in, N]``, ``V``, ``D [k + 1, in, N]``."""
    if k == 3:
        _sparse_backward_body(bx, dbx, has_base, 3, first, V, D, W, g, need_x, need_w, gx, gW, f0, f1)
    else:
        _sparse_backward_body(bx, dbx, has_base, k, first, V, D, W, g, need_x, need_w, gx, gW, f0, f1)


@_njit_parallel
def _sparse_backward_parallel(bx, dbx, has_base, k, first, V, D, W, g, need_x, need_w, gx, gW, total, parts):
    """:func:`_sparse_backward` over features ``0 .. total`` in ``parts`` pieces, one per thread of numba's."""
    for p in _prange(parts):
        lo, hi = total * p // parts, total * (p + 1) // parts
        _sparse_backward(bx, dbx, has_base, k, first, V, D, W, g, need_x, need_w, gx, gW, lo, hi)


# ---- calling them -----------------------------------------------------------------------------------------

_MAIN = (os.getpid(), threading.main_thread())
_NUMBA_THREADS = numba.config.NUMBA_NUM_THREADS if ENABLED else 1


def _parts(total: int, work: int) -> int:
    """How many threads a call of ``work`` multiply-adds over ``total`` rows gets: up to
    ``torch.get_num_threads()`` (and numba's thread count), one if below ``PARALLEL_MIN_WORK`` per thread.

    Only the main thread of the process that imported kanedu splits work: numba's fallback threading
    layer (workqueue) must not be entered from two threads at once, and OpenMP's must not be used in a
    forked child (a DataLoader worker), where it can hang.
    """
    if os.getpid() != _MAIN[0] or threading.current_thread() is not _MAIN[1]:
        return 1
    return max(1, min(torch.get_num_threads(), _NUMBA_THREADS, total, work // PARALLEL_MIN_WORK))



def _run_split(fn, parallel, total: int, work: int, args: tuple):
    """``fn(*args, 0, total)``, or ``parallel(*args, total, parts)`` (the same loops, split over numba's
    threads: rows in forward, features in backward, so no two threads write the same memory)."""
    parts = _parts(total, work)
    if parts == 1:
        fn(*args, 0, total)
    else:
        numba.set_num_threads(parts)  # wake only the threads that get a part (not one per CPU)
        parallel(*args, total, parts)


def knot_constants(grid: np.ndarray, table: IntervalTable, k: int, uniform: bool) -> tuple:
    """The loops' view of a grid ``[in, m]`` (NumPy arrays in the grid's dtype):
    ``(k, uniform, t0, 1/h, poly, tab, t_left, 1/width, knots)``."""
    m = grid.shape[1]
    t0 = grid[:, 0]
    inv_h = (m - 1) / (grid[:, -1] - grid[:, 0]) if uniform else t0
    tab, t_left, inv_w, poly = (t.detach().numpy() for t in table)
    return (k, bool(uniform), t0, inv_h, poly, tab, t_left, inv_w, grid)


# When the loops write Phi and BLAS multiplies (the dense route). Per sample and feature the sparse loops do
# about 3 (k + 2) passes over ``out``, BLAS 3 P multiply-adds at several times the speed, plus a fixed cost
# per call for writing Phi. benchmarks/bench_route.py times both routes (fwd + bwd of a KANLayer) on 434
# sizes (N 32-2048, in 1-64, out 1-64, G 5-50): the sparse loops won almost everywhere from G = 11 on, and
# below ~8k (sample, feature) pairs; the dense route won at G = 5-8 with more pairs (up to 1.6x). This rule
# has a regret (time over the faster route's, geometric mean over the sizes) of 1.010 at 1 thread and 1.022
# at 2, against 1.020 and 1.037 for the sparse loops alone (measured 2026-12-02, after the narrow products
# ran transposed). Above DENSE_MAX_ELEMENTS entries of Phi (64 MB in float32) the sparse loops run whatever
# the sizes: they need no temporary larger than the output.
SPARSE_MIN_SLOTS = 13
DENSE_MIN_PAIRS = 8192
DENSE_MAX_ELEMENTS = 1 << 24


def dense_route(N: int, n_in: int, n_slots: int) -> bool:
    """Whether a layer call of ``N`` samples, ``n_in`` features and ``n_slots = n + 1`` slots writes ``Phi``
    (and multiplies it with BLAS) instead of running the sparse loops."""
    return n_slots < SPARSE_MIN_SLOTS and DENSE_MIN_PAIRS <= N * n_in and N * n_in * n_slots <= DENSE_MAX_ELEMENTS


def locate(x: np.ndarray, kc: tuple, derivative: bool, feature_major: bool = False):
    """``(first [N, in], V [k + 1, N, in], D or None)``: the located bases of every ``x [N, in]`` (:func:`_locate`);
    ``feature_major``: ``first [in, N]``, ``V``, ``D [k + 1, in, N]``."""
    N, n_in = x.shape
    K = kc[0] + 1
    xs = np.ascontiguousarray(x.T) if feature_major else x
    first = np.empty(xs.shape, dtype=np.int64)
    V = np.empty((K, *xs.shape), dtype=x.dtype)
    D = np.empty((K, *xs.shape), dtype=x.dtype) if derivative else V
    _run_split(_locate, _locate_parallel, xs.shape[0], N * n_in * K * 8,
               (xs, *kc, first, V, D, derivative, feature_major))
    return first, V, (D if derivative else None)


def locate_features(x: np.ndarray, bx: np.ndarray | None, kc: tuple, n_slots: int, derivative: bool):
    """``(first [N, in], D [k + 1, N, in] or None, Phi [N, in * n_slots])`` of ``x [N, in]`` in one pass
    (:func:`_locate_phi`; ``bx``: ``b(x)`` or None): what the dense route needs, without the bases' values
    apart from ``Phi``."""
    N, n_in = x.shape
    first = np.empty(x.shape, dtype=np.int64)
    D = np.empty((kc[0] + 1, N, n_in), dtype=x.dtype) if derivative else np.empty((1, 1, 1), dtype=x.dtype)
    phi = np.empty((N, n_in * n_slots), dtype=x.dtype)
    has_base, bxa = (False, x) if bx is None else (True, bx)
    _run_split(_locate_phi, _locate_phi_parallel, N, N * n_in * n_slots,
               (x, *kc, first, D, derivative, bxa, has_base, phi))
    return first, (D if derivative else None), phi


def features(x: np.ndarray, bx: np.ndarray | None, kc: tuple, n_slots: int) -> np.ndarray:
    """The expanded features ``Phi [N, in * n_slots]`` of ``x [N, in]`` (``bx``: ``b(x)`` or None)."""
    return locate_features(x, bx, kc, n_slots, False)[2]


NARROW_PRODUCT = 16


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (contiguous result) with torch's BLAS, not NumPy's: on the machines we measured NumPy's
    bundled OpenBLAS was up to 25x slower for these float32 shapes (and it keeps threads of its own).

    A product only 2-15 columns wide is computed as ``(b.T @ a.T).T``: MKL's kernels for a narrow result ran
    at a fifth to a half of their speed (1 thread, ``[1024, 288] @ [288, n]``: 0.28-0.48 ms for n = 2-13
    against 0.05-0.16 ms transposed; never slower transposed for those widths, see benchmarks/bench_sequence.py).
    """
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if 1 < b.shape[1] < NARROW_PRODUCT and a.shape[0] >= NARROW_PRODUCT:
        return (tb.T @ ta.T).T.contiguous().numpy()
    return (ta @ tb).numpy()


def forward(x: np.ndarray, bx: np.ndarray | None, kc: tuple, W: np.ndarray, located=None) -> np.ndarray:
    """``y [N, out] = Phi(x) @ W`` for ``x [N, in]`` and ``W [in, n + 1, out]`` (contiguous NumPy arrays);
    ``located``: for the sparse route, :func:`locate`'s feature-major result for ``x`` if already at hand (the
    dense route writes ``Phi`` while it locates, :func:`locate_features`)."""
    N, n_in = x.shape
    n_slots, n_out = W.shape[1], W.shape[2]
    if dense_route(N, n_in, n_slots):
        return _mm(locate_features(x, bx, kc, n_slots, False)[2], W.reshape(n_in * n_slots, n_out))
    first, V, _ = located if located is not None else locate(x, kc, False, feature_major=True)
    y = np.empty((N, n_out), dtype=x.dtype)
    has_base, bxa = (False, x) if bx is None else (True, bx)
    _run_split(_sparse_forward, _sparse_forward_parallel, N, N * n_in * n_out,
               (bxa, has_base, kc[0], first, V, W, y, True))
    return y


def backward(x: np.ndarray, bx, dbx, kc: tuple, W: np.ndarray, g: np.ndarray, need_x: bool, need_w: bool,
             located=None, phi=None):
    """``(dL/dx [N, in] or None, dL/dW [in, n + 1, out] or None)`` for the upstream gradient ``g [N, out]``;
    ``located``: :func:`locate`'s result for ``x`` (with the derivatives if ``need_x``; feature-major unless
    :func:`dense_route`), if at hand; ``phi``: the dense route's ``Phi(x)`` from :func:`forward`, if kept."""
    N, n_in = x.shape
    n_slots, n_out = W.shape[1], W.shape[2]
    k = kc[0]
    has_base = bx is not None or dbx is not None  # (what forward kept may hold only the one backward needs)
    bxa = bx if bx is not None else x  # (placeholders where a loop is given an array it will not read)
    dbxa = dbx if dbx is not None else x
    gx = np.empty_like(x) if need_x else None
    gW = None
    if dense_route(N, n_in, n_slots):
        kept = phi is not None
        if kept and not need_x:
            return None, (_mm(phi.T, g).reshape(n_in, n_slots, n_out) if need_w else None)
        first, V, D = located if located is not None else locate(x, kc, need_x)
        V = D if V is None else V
        gphi = _mm(g, W.reshape(n_in * n_slots, n_out).T) if need_x else np.empty((0, 1), dtype=x.dtype)
        write = np.empty((N if (need_w and not kept) else 0, n_in * n_slots), dtype=x.dtype)
        gxa = gx if need_x else np.empty((1, 1), dtype=x.dtype)
        _run_split(_phi_gather, _phi_gather_parallel, N, N * n_in * n_slots,  # dL/dx and Phi in one pass
                   (dbxa, has_base, k, first, D if need_x else V, gphi, gxa, write, bxa, V))
        del gphi
        phi = phi if kept else write
        if need_w:
            gW = _mm(phi.T, g).reshape(n_in, n_slots, n_out)
        return gx, gW
    # feature-major, so that the loop over the samples of one feature reads them in order
    first, V, D = located if located is not None else locate(x, kc, need_x, feature_major=True)
    V = D if V is None else V
    Da = D if need_x else V
    gW = np.empty_like(W) if need_w else np.empty((1, 1, 1), dtype=x.dtype)
    gxa = gx if need_x else np.empty((1, 1), dtype=x.dtype)
    _run_split(_sparse_backward, _sparse_backward_parallel, n_in, N * n_in * n_out,
               (bxa, dbxa, has_base, k, first, V, Da, W, g, need_x, need_w, gxa, gW))
    return gx, (gW if need_w else None)


# Forward keeps what backward needs (the located bases and their derivatives, b(x) and b'(x), and on the dense
# route Phi) when that takes at most KEEP_BYTES, else backward computes it again from x. For small calls the
# second pass is mostly fixed cost (a KAN-GRU step, a feed-forward block of lesson 10: 2 MiB or less);
# for large ones memory matters more than the pass (a 1024 x 64 batch at G = 5 would keep 4 MiB, against
# the 2.3 MiB that nn.Linear on the expanded features saves). Whatever is kept is saved with
# ctx.save_for_backward, so autograd's saved-tensor hooks (kanedu.benchmark.saved_bytes) count it.
KEEP_BYTES = 3 << 20


def _keep(xn: np.ndarray, w: np.ndarray, k: int, has_base: bool, need_x: bool, need_w: bool) -> tuple[bool, bool]:
    """``(dense, keep)``: the route of a call, and whether what its backward needs is kept from forward."""
    (N, n_in), n_slots = xn.shape, w.shape[1]
    dense = dense_route(N, n_in, n_slots)
    item, K = xn.itemsize, k + 1
    if dense:  # backward: Phi for dL/dW; first, D and b'(x) for dL/dx
        per_pair = (n_slots * item if need_w else 0) + ((8 + (K + has_base) * item) if need_x else 0)
    else:  # backward: first; V and b(x) for dL/dW, D and b'(x) for dL/dx
        per_pair = 8 + ((K + has_base) * item) * (need_w + need_x)
    return dense, N * n_in * per_pair <= KEEP_BYTES


def _forward_saving(ctx, x: torch.Tensor, w: np.ndarray, kc: tuple, base: str, need_w: bool):
    """``(Phi(x) @ w, kept)`` for the Functions below: ``kept`` the NumPy arrays backward needs, by name, if
    small enough to keep (:data:`KEEP_BYTES`; None otherwise). Sets ``ctx.kc``, ``ctx.base``."""
    need_x = ctx.needs_input_grad[0]
    b, db = base_with_derivative(base, x)
    xn = x.numpy()
    dense, keep = _keep(xn, w, kc[0], b is not None, need_x, need_w)
    bx = None if b is None else b.numpy()
    if dense:  # Phi, with first and D (for dL/dx) if kept, in one pass
        first, D, phi = locate_features(xn, bx, kc, w.shape[1], keep and need_x)
        located = (first, None, D)
        y = _mm(phi, w.reshape(-1, w.shape[2]))
    else:
        located = locate(xn, kc, keep and need_x, feature_major=True)
        y, phi = forward(xn, bx, kc, w, located), None
    ctx.kc, ctx.base = kc, base
    kept = None
    if keep:  # what _keep counted
        kept = {} if dense else {"first": located[0]}
        if need_w:
            kept.update({"phi": phi} if dense else {"V": located[1], "bx": bx})
        if need_x:
            kept.update(first=located[0], D=located[2], dbx=None if b is None else db().numpy())
        kept = {name: a for name, a in kept.items() if a is not None}
    return torch.from_numpy(y), kept


def _save(ctx, tensors: tuple, kept: dict | None) -> None:
    """``ctx.save_for_backward(*tensors, *kept arrays)``; :func:`_saved` undoes it."""
    ctx.kept_names = None if kept is None else tuple(kept)
    ctx.save_for_backward(*tensors, *(() if kept is None else (torch.from_numpy(a) for a in kept.values())))


def _saved(ctx, n: int) -> tuple[tuple, dict | None]:
    """``(the first n saved tensors, the kept arrays by name or None)``."""
    saved = ctx.saved_tensors
    kept = None if ctx.kept_names is None else dict(zip(ctx.kept_names, (t.numpy() for t in saved[n:])))
    return saved[:n], kept


def _backward_saved(ctx, x: torch.Tensor, w: np.ndarray, g: torch.Tensor, need_x: bool, need_w: bool,
                    kept: dict | None):
    """``(dL/dx [N, in] or None, dL/dW [in, n + 1, out] or None)`` from what :func:`_forward_saving` kept."""
    g = g.contiguous().numpy()
    if kept is None:
        b, db = base_with_derivative(ctx.base, x)
        bx, dbx = (None, None) if b is None else (b.numpy(), db().numpy() if need_x else None)
        return backward(x.numpy(), bx, dbx, ctx.kc, w, g, need_x, need_w)
    located = (kept.get("first"), kept.get("V"), kept.get("D"))
    return backward(x.numpy(), kept.get("bx"), kept.get("dbx"), ctx.kc, w, g, need_x, need_w, located,
                    kept.get("phi"))


class NativeKANFunction(torch.autograd.Function):
    """``y = Phi(x) @ W`` on the CPU for ``x [N, in]`` and the combined weight ``W [in, n + 1, out]``.
    Saves ``x`` and ``W``, and what backward needs if small enough (:data:`KEEP_BYTES`: the located bases,
    ``b(x)``, ``b'(x)``, on the dense route ``Phi``); otherwise backward computes them again from ``x``."""

    @staticmethod
    def forward(ctx, x, weight, grid, table, k, base, uniform):
        x, w = x.detach().contiguous(), weight.detach().contiguous()
        # NumPy views of the grid and its table, reused by backward
        kc = knot_constants(grid.detach().numpy(), table, k, uniform)
        y, kept = _forward_saving(ctx, x, w.numpy(), kc, base, ctx.needs_input_grad[1])
        _save(ctx, (x, w, grid), kept)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x, w, _), kept = _saved(ctx, 3)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_w):
            return (None,) * 7
        gx, gw = _backward_saved(ctx, x, w.numpy(), g, need_x, need_w, kept)
        return (None if gx is None else torch.from_numpy(gx), None if gw is None else torch.from_numpy(gw),
                None, None, None, None, None)


class NativeKANLayerFunction(torch.autograd.Function):
    """A whole ``KANLayer`` forward on the CPU, ``x [N, in]`` -> ``Phi(x) @ W``, with the combined weight
    ``W = weights.combine_weights(coef, scale_base, scale_spline, mask)`` formed in NumPy and its chain rule
    (``weights.combine_weights_grad``) applied in backward: one autograd node per layer call instead of the
    half dozen of combining the weights in torch (for small layers, such as a recurrent cell's, those
    nodes cost as much as the loops). ``kc``: :func:`knot_constants` of the layer's grid, which the layer
    keeps until its grid changes. Saves what :class:`NativeKANFunction` saves."""

    @staticmethod
    def forward(ctx, x, coef, scale_base, scale_spline, mask, kc, base):
        x = x.detach().contiguous()
        w = combine_weights(coef.detach().numpy(), scale_base.detach().numpy(), scale_spline.detach().numpy(),
                            mask.detach().numpy())
        y, kept = _forward_saving(ctx, x, w, kc, base, any(ctx.needs_input_grad[1:4]))
        _save(ctx, (x, torch.from_numpy(w), coef, scale_spline, mask), kept)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x, w, coef, scale_spline, mask), kept = _saved(ctx, 5)
        need = ctx.needs_input_grad
        need_x, need_w = need[0], any(need[1:4])
        if not (need_x or need_w):
            return (None,) * 7
        gx, gw = _backward_saved(ctx, x, w.numpy(), g, need_x, need_w, kept)
        grads = [None] * 3
        if gw is not None:
            grads = combine_weights_grad(gw, coef.detach().numpy(), scale_spline.detach().numpy(),
                                         mask.detach().numpy())
        gc, gb, gs = (torch.from_numpy(np.ascontiguousarray(a)) if (a is not None and n) else None
                      for a, n in zip(grads, need[1:4]))
        return (None if gx is None else torch.from_numpy(gx), gc, gb, gs, None, None, None)


def kan_linear(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, table: IntervalTable, k: int,
               base: str, uniform: bool) -> torch.Tensor:
    """``kernels.kan_linear`` on the CPU (check :func:`supports` first)."""
    return NativeKANFunction.apply(x, weight, grid, table, k, base, uniform)


def kan_layer(x: torch.Tensor, coef: torch.Tensor, scale_base: torch.Tensor, scale_spline: torch.Tensor,
              mask: torch.Tensor, kc: tuple, base: str) -> torch.Tensor:
    """``y [N, out]`` of a KAN layer for ``x [N, in]`` from its own tensors (``coef [in, out, n]``, the
    scales and mask ``[in, out]``) and ``kc = knot_constants(grid, table, k, uniform)``; differentiable in
    ``x``, ``coef`` and the scales (:class:`NativeKANLayerFunction`; check :func:`supports` first)."""
    return NativeKANLayerFunction.apply(x, coef, scale_base, scale_spline, mask, kc, base)

