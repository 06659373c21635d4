"""The torch KAN layer kernel: one matmul, bases recomputed in backward.

On the CPU ``kan_linear`` (and ``KANLayer.forward``) run the compiled loops of ``kanedu.native`` instead,
when numba is installed; this kernel is what runs on a GPU (and everywhere with ``KANEDU_NATIVE=0``).

A KAN layer computes ``y_o = sum_i [ w_b[i,o] b(x_i) + sum_m c[i,m,o] B_m(x_i) ]``. Stack, per input
feature ``i``, the slot vector ``phi(x_i) = [b(x_i), B_0(x_i), ..., B_{n-1}(x_i)]`` (``S = n + 1`` slots,
``n = G + k`` bases) and the weights as ``W [in, S, out]``. Then the layer is one matrix product

    y = Phi(x) @ W.view(in * S, out),    Phi(x) = [N, in * S]   ("the matrix formulation", lesson 03)

Only ``k + 1`` of the ``n`` bases are non-zero at any x, so ``Phi`` is built by writing the ``k + 1``
local values (see ``kanedu.splines``) into a zero matrix. ``KANFunction`` saves ``x``, the interval
index and the local coordinate of every ``x`` (three ``[N, in]`` tensors) for backward and rebuilds
``Phi`` there, so the activation memory is ``3 [N, in]`` instead of ``[N, in * S]`` (what ``nn.Linear``
on the expanded features would keep).

Two ways to find the local values:

* uniform knots (the default grid): ``floor`` gives the interval, and the ``k + 1`` bases are fixed
  polynomials of the local coordinate ``s in [0, 1]``, evaluated by Horner's rule in ``k`` fused
  multiply-adds over all of them at once;
* any knots (adaptive grids): ``searchsorted`` gives the interval; on it the bases are again fixed
  polynomials of a local coordinate, with per-interval coefficients tabulated once per grid.

Tests hold both to the Cox-de Boor reference in ``kanedu.splines``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from . import native

# --------------------------------------------------------------------------------------------------
# local bases
# --------------------------------------------------------------------------------------------------


@functools.cache
def _uniform_poly(k: int) -> np.ndarray:
    """Coefficients ``C[p, j]``: local uniform basis ``j`` is ``sum_p C[p, j] s^p`` on ``s in [0, 1]``.

    Built by running the uniform Cox-de Boor recursion on polynomial coefficient arrays:
    ``b'_j = ((s + d - j) b_{j-1} + (j + 1 - s) b_j) / d``.
    """
    P = np.polynomial.polynomial
    b = [np.array([1.0])]
    for d in range(1, k + 1):
        nxt = []
        for j in range(d + 1):
            term = np.zeros(1)
            if j >= 1:
                term = P.polyadd(term, P.polymul([d - j, 1.0], b[j - 1]))
            if j < d:
                term = P.polyadd(term, P.polymul([j + 1, -1.0], b[j]))
            nxt.append(term / d)
        b = nxt
    C = np.zeros((k + 1, k + 1))
    for j, poly in enumerate(b):
        C[: len(poly), j] = poly
    return C


@functools.lru_cache(maxsize=64)
def _poly_tensors(k: int, dtype: torch.dtype, device: torch.device):
    C = torch.tensor(_uniform_poly(k), dtype=dtype, device=device)  # [k+1 powers, k+1 bases]
    D = C[1:] * torch.arange(1, k + 1, dtype=dtype, device=device)[:, None]  # d/ds, [k powers, k+1]
    return C, D


def interval_table(grid: torch.Tensor, k: int):
    """Polynomial coefficients of the ``k + 1`` non-zero bases on every interval of every feature.

    On interval ``[t_i, t_{i+1})`` with local coordinate ``s = (x - t_i) / (t_{i+1} - t_i)`` in ``[0, 1)``,
    basis ``B_{i-k+j}(x) = sum_p T[f, i+1, p, j] s^p`` exactly (a polynomial of degree ``k``). The table
    is found by evaluating the Cox-de Boor reference at ``k + 1`` Chebyshev nodes per interval and
    solving the small Vandermonde systems in float64. Rows 0 and ``m`` (left of the first knot, right of
    the last) and empty intervals are zero.

    Returns ``(T [in, m+1, k+1, k+1], t_left [in, m+1], inv_width [in, m+1])`` in ``grid``'s dtype. The
    table is cached on the grid tensor itself and rebuilt when the grid is modified in place (its
    version counter changes) or replaced.
    """
    cached = getattr(grid, "_kanedu_interval_table", None)
    if cached is not None and cached[0] == (grid._version, k):
        return cached[1]
    from .splines import cox_de_boor

    g = grid.detach().double()
    n_in, m = g.shape
    n = m - k - 1
    nodes = (1 - torch.cos(torch.pi * (torch.arange(k + 1, dtype=torch.float64) + 0.5) / (k + 1))) / 2
    left, right = g[:, :-1], g[:, 1:]  # [in, m-1] intervals
    width = right - left
    x = left.unsqueeze(-1) + width.unsqueeze(-1) * nodes  # [in, m-1, k+1]
    B = cox_de_boor(x.permute(1, 2, 0).reshape(-1, n_in), g, k)  # [(m-1)*(k+1), in, n]
    B = B.view(m - 1, k + 1, n_in, n).permute(2, 0, 1, 3)  # [in, interval, node, basis]
    # the k+1 bases that can be non-zero on interval i: i-k .. i (missing ones, beyond the ends, are 0)
    pad = torch.zeros(n_in, m - 1, k + 1, k, dtype=torch.float64)
    Bp = torch.cat([pad, B, pad], dim=-1)  # basis b sits at column b + k
    cols = torch.arange(m - 1).view(-1, 1) + torch.arange(k + 1).view(1, -1)  # (i - k + j) + k
    local = torch.gather(Bp, 3, cols.view(1, m - 1, 1, k + 1).expand(n_in, -1, k + 1, -1))
    V = nodes.unsqueeze(-1) ** torch.arange(k + 1, dtype=torch.float64)  # [node, power]
    coef = torch.linalg.solve(V, local)  # [in, interval, power, basis]
    coef = torch.where((width > 0).view(n_in, m - 1, 1, 1), coef, 0.0)
    zero = torch.zeros(n_in, 1, k + 1, k + 1, dtype=torch.float64)
    T = torch.cat([zero, coef, zero], dim=1)
    t_left = torch.cat([g[:, :1], left, g[:, -1:]], dim=1)
    inv_w = torch.where(width > 0, 1.0 / torch.where(width > 0, width, 1.0), 0.0)
    inv_w = torch.cat([torch.zeros(n_in, 1, dtype=torch.float64), inv_w, torch.zeros(n_in, 1, dtype=torch.float64)], 1)
    out = tuple(t.to(grid.dtype).to(grid.device).contiguous() for t in (T, t_left, inv_w))
    grid._kanedu_interval_table = ((grid._version, k), out)
    return out


def _interval_rows(grid: torch.Tensor, k: int) -> torch.Tensor:
    """``interval_table`` transposed for gathering: ``[2 + (k+1)^2, in * (m+1)]``.

    Column ``f * (m + 1) + i + 1`` holds everything ``locate`` needs on interval ``i`` of feature ``f``:
    row 0 the left knot, row 1 the inverse width, rows ``2 + p * (k+1) + j`` the coefficient of ``s^p`` in
    basis ``j``. One ``index_select`` along the columns then yields them all, already in the bases-first
    layout (no transposed copy of the gathered coefficients). Cached on the grid like the table itself.
    """
    cached = getattr(grid, "_kanedu_interval_rows", None)
    if cached is not None and cached[0] == (grid._version, k):
        return cached[1]
    T, t_left, inv_w = interval_table(grid, k)
    n_in, rows = t_left.shape
    coef = T.permute(2, 3, 0, 1).reshape((k + 1) * (k + 1), n_in * rows)
    out = torch.cat([t_left.reshape(1, -1), inv_w.reshape(1, -1), coef]).contiguous()
    grid._kanedu_interval_rows = ((grid._version, k), out)
    return out


class Local:
    """The non-zero bases of every ``x[b, f]``, in a "bases first" layout ``[k + 1, N, in]``.

    ``interval[b, f]`` (int32, or int64 for huge tensors) is the knot interval ``i`` of ``x[b, f]`` plus
    ``origin``, and ``s[b, f]`` the local coordinate of ``x[b, f]`` on it; basis ``j`` of it, ``B_{i-k+j}``,
    sits in slot ``first_basis + i - k + j`` of a per-feature slot vector of length ``P``, and slot
    ``base_slot`` holds the base activation. Normally ``P = n + 1`` (slot 0 = base, slot ``1 + m`` =
    basis ``m``). If some x lie outside the base interval, the layout is ``padded``:
    ``[k + 1 spare | n bases | k + 1 spare | base]``, so bases that do not exist land in spare slots
    whose weight is zero, and nothing has to be masked.
    """

    __slots__ = ("interval", "s", "origin", "values", "dvalues", "P", "base_slot", "first_basis", "padded", "k")

    def __init__(self, interval, s, origin, values, dvalues, P, base_slot, first_basis, padded, k):
        self.interval, self.s, self.origin, self.values, self.dvalues = interval, s, origin, values, dvalues
        self.P, self.base_slot, self.first_basis, self.padded, self.k = P, base_slot, first_basis, padded, k

    def slot_offsets(self, n_in: int, bases_first: bool, dtype=None) -> torch.Tensor:
        """What to add to ``interval`` to get the row of basis ``j`` of feature ``f`` in ``W.view(in * P, out)``:
        ``f * P + first_basis - k - origin + j``, as ``[k + 1, 1, in]`` (``bases_first``) or ``[in, k + 1]``."""
        dtype = dtype or self.interval.dtype
        return _slot_offsets(self.k, n_in, self.P, self.first_basis - self.k - self.origin, bases_first, dtype,
                             self.interval.device)

    def pad_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight [in, n + 1, out]`` laid out in this slot layout ``[in, P, out]``."""
        if not self.padded:
            return weight
        n = weight.shape[1] - 1
        w = weight.new_zeros(weight.shape[0], self.P, weight.shape[2])
        w[:, self.first_basis : self.first_basis + n] = weight[:, 1:]
        w[:, self.base_slot] = weight[:, 0]
        return w

    def unpad_grad(self, gw: torch.Tensor, n: int) -> torch.Tensor:
        """Inverse of ``pad_weight`` for a gradient ``[in, P, out]`` -> ``[in, n + 1, out]``."""
        if not self.padded:
            return gw
        base = gw[:, self.base_slot : self.base_slot + 1]
        return torch.cat([base, gw[:, self.first_basis : self.first_basis + n]], 1)


@functools.lru_cache(maxsize=64)
def _slot_offsets(k, n_in, P, shift, bases_first, dtype, device):
    j = torch.arange(k + 1, dtype=dtype, device=device) + shift
    f = torch.arange(n_in, dtype=dtype, device=device) * P
    return (j.view(-1, 1, 1) + f.view(1, 1, -1)) if bases_first else (f.view(-1, 1) + j.view(1, -1))


def locate(x: torch.Tensor, grid: torch.Tensor, k: int, uniform: bool, derivative: bool) -> Local:
    """Find the interval of every ``x [N, in]`` on its feature's knots ``grid [in, m]`` and evaluate the
    ``k + 1`` non-zero bases there (and ``d/dx`` of them if ``derivative``). The result also keeps the
    local coordinate ``s [N, in]``: with ``interval`` it is all ``relocate`` needs to evaluate them again."""
    N, n_in = x.shape
    m = grid.shape[-1]
    n = m - k - 1
    xd = x.detach()
    inv_w = coef = None
    if uniform:
        t0 = grid[:, 0]
        h = (grid[:, -1] - grid[:, 0]) / (m - 1)
        if _exact_uniform(x.dtype, m):
            inv_h = 1.0 / h.double()
            u = (xd.double() - t0.double()) * inv_h
        else:
            inv_h = 1.0 / h
            u = torch.addcmul(-t0 * inv_h, xd, inv_h)
        # u = (x - t0) / h is the knot coordinate, the same for every feature: x is inside the base
        # interval [t_k, t_n] iff k <= u <= n, one reduction over all of u (not a per-feature compare)
        inside = N == 0 or (lambda lo, hi: lo >= k and hi <= n)(*torch.aminmax(u))
        lo_i, hi_i = (k, n - 1) if inside else (-1, m - 1)
        i = torch.floor(u).clamp_(lo_i, hi_i)
        s = (u - i).to(x.dtype)
    else:
        # any knots: find the interval, then the bases are fixed polynomials of the interval's local
        # coordinate, with coefficients tabulated once per grid (see interval_table)
        lo, hi = torch.aminmax(xd, dim=0) if N else (None, None)
        inside = N == 0 or bool(((lo >= grid[:, k]) & (hi <= grid[:, n])).all())
        lo_i, hi_i = (k, n - 1) if inside else (-1, m - 1)
        rows = _interval_rows(grid, k)
        # i + 1 (the count of knots <= x), clamped: Local keeps it as is (origin 1), one op less
        i = torch.searchsorted(grid, xd.T.contiguous(), right=True, out_int32=True)  # [in, N], 0 .. m
        i = i.clamp_(lo_i + 1, hi_i + 1).T.contiguous()  # [N, in]
        cols = rows.index_select(1, _table_columns(i, m))  # [2 + (k+1)^2, N * in]
        inv_w = cols[1].view(N, n_in)
        s = (xd - cols[0].view(N, n_in)) * inv_w
        coef = cols[2:]
    if not inside:
        s = s.clamp_(-1.0, 2.0)  # values for far-away x land in spare slots: keep them finite
    P = n + 1 if inside else n + 2 * k + 3
    # int32 index arithmetic is ~3x cheaper than int64
    idx_dtype = torch.int32 if N * n_in * P < 2**31 else torch.int64
    return _evaluate(i.to(idx_dtype), s, grid, k, uniform, not inside, derivative, coef, inv_w)


def relocate(interval: torch.Tensor, s: torch.Tensor, grid: torch.Tensor, k: int, uniform: bool, padded: bool,
             derivative: bool) -> Local:
    """``locate`` again from its ``interval`` and ``s``: no interval search, only the ``k + 1`` polynomials
    (and, on any knots, one gather of the interval's coefficients)."""
    inv_w = coef = None
    if not uniform:
        N, n_in = s.shape
        rows = _interval_rows(grid, k)[1 if derivative else 2 :]  # [inverse width +] coefficients
        cols = rows.index_select(1, _table_columns(interval, grid.shape[-1]))
        inv_w = cols[0].view(N, n_in) if derivative else None
        coef = cols[1:] if derivative else cols
    return _evaluate(interval, s, grid, k, uniform, padded, derivative, coef, inv_w)


def _exact_uniform(dtype: torch.dtype, m: int) -> bool:
    """Whether the uniform knot coordinate is computed in float64: a float64 coordinate keeps float32 exact
    at large G."""
    return dtype == torch.float64 or m > 40


def _table_columns(i: torch.Tensor, m: int) -> torch.Tensor:
    """Column of ``_interval_rows`` for ``(feature, interval)``: ``i [N, in]`` (origin 1) -> ``[N * in]``."""
    return (i + _arange(i.shape[1], i.dtype, i.device) * (m + 1)).view(-1)


def _evaluate(interval, s, grid, k, uniform, padded, derivative, coef=None, inv_w=None) -> Local:
    """The ``k + 1`` bases (and derivatives) at local coordinate ``s [N, in]``: fixed polynomials on uniform
    knots, the gathered per-interval ``coef [(k+1)^2, N * in]`` (``inv_w [N, in]`` = 1 / width) otherwise."""
    N, n_in = s.shape
    m = grid.shape[-1]
    n = m - k - 1
    s3 = s.unsqueeze(0)  # [1, N, in]: bases-first layout
    dvalues = None
    if uniform:
        C, D = _poly_tensors(k, s.dtype, s.device)
        values = _horner_first(s3, C.view(k + 1, k + 1, 1, 1))
        if derivative:
            if k == 0:
                dvalues = torch.zeros_like(values)
            else:  # d/dx = d/ds / h: fold the per-feature 1/h into the (tiny) coefficient table
                h = (grid[:, -1] - grid[:, 0]) / (m - 1)
                inv_h = (1.0 / h.double() if _exact_uniform(s.dtype, m) else 1.0 / h).to(s.dtype)
                dvalues = _horner_first(s3, D.view(k, k + 1, 1, 1) * inv_h.view(1, 1, 1, n_in))
    else:
        coef = coef.view(k + 1, k + 1, N, n_in)  # [power, basis, N, in]
        values = _horner_first(s3, coef)
        if derivative:
            if k == 0:
                dvalues = torch.zeros_like(values)
            else:
                dvalues = coef[k] * k
                for p in range(k - 1, 0, -1):
                    dvalues = torch.addcmul(coef[p] * p, dvalues, s3)
                dvalues = dvalues * inv_w.view(1, N, n_in)
    if padded:
        P, base_slot, first_basis = n + 2 * k + 3, n + 2 * k + 2, k + 1
    else:
        P, base_slot, first_basis = n + 1, 0, 1
    return Local(interval, s, 0 if uniform else 1, values, dvalues, P, base_slot, first_basis, padded, k)


def _arange(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.arange(n)``, cached for small ``n`` (index offsets reused every step; big ones not kept)."""
    if n > 1 << 16:
        return torch.arange(n, dtype=dtype, device=device)
    return _arange_cached(n, dtype, device)


@functools.lru_cache(maxsize=32)
def _arange_cached(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=dtype, device=device)


def _horner_first(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``sum_p c[p, j] s^p`` -> ``[k+1, N, in]`` for ``s [1, N, in]`` and ``c [powers, k+1, 1 or N, 1 or in]``."""
    if c.shape[0] == 1:
        return c[0].expand(c.shape[1], *s.shape[1:]).clone()
    out = torch.addcmul(c[-2], c[-1], s)
    for p in range(c.shape[0] - 3, -1, -1):
        out = torch.addcmul(c[p], out, s)
    return out


def dense_phi(x: torch.Tensor, loc: Local, base: torch.Tensor | None) -> torch.Tensor:
    """The expanded features ``Phi [N, in, P]`` (bases scattered into zeros, base in its slot)."""
    N, n_in = x.shape
    phi = x.new_zeros(N, n_in, loc.P)
    # scatter along the slot dim: index [N, in, k+1] (slot within the feature), values as a permuted view
    shift = loc.first_basis - loc.k - loc.origin
    idx = loc.interval.long().unsqueeze(-1) + (_arange(loc.k + 1, torch.int64, x.device) + shift)
    phi.scatter_(2, idx, loc.values.permute(1, 2, 0))
    phi[..., loc.base_slot] = 0.0 if base is None else base
    return phi


# --------------------------------------------------------------------------------------------------
# base activations with closed-form derivatives
# --------------------------------------------------------------------------------------------------


def _silu(x):
    sig = torch.sigmoid(x)
    return x * sig, lambda: sig * (1 + x * (1 - sig))


def _identity(x):
    return x, lambda: torch.ones_like(x)


def _tanh(x):
    y = torch.tanh(x)
    return y, lambda: 1 - y * y


def _relu(x):
    return torch.relu(x), lambda: (x > 0).to(x.dtype)


BASE_FUNCTIONS = {"silu": _silu, "identity": _identity, "tanh": _tanh, "relu": _relu}


def base_with_derivative(name_or_fn, x):
    """``(b(x), lazy b'(x))`` for a named activation, or via autograd for any elementwise callable."""
    if name_or_fn is None:
        return None, None
    if isinstance(name_or_fn, str):
        return BASE_FUNCTIONS[name_or_fn](x)
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        y = name_or_fn(xx)

    def deriv():
        (g,) = torch.autograd.grad(y, xx, torch.ones_like(y))
        return g

    return y.detach(), deriv


# --------------------------------------------------------------------------------------------------
# the autograd function
# --------------------------------------------------------------------------------------------------


# N * in at or below which forward keeps all it located (intervals, bases and their derivatives, 9 values
# per x for k = 3) for backward; above it, only the interval and local coordinate (and x), from which
# backward evaluates the bases again without searching (relocate). Measured on CPU at 1 thread: keeping
# everything saves 0-15% of a step at N * in <= 8192 (per-op overhead), for a few hundred KB; above it the
# gain is small and the memory would exceed nn.Linear's on the expanded features at small G.
SMALL_BATCH_ELEMENTS = 8192
# Slots per feature (P) from which backward gathers the input gradient's k + 1 weight rows instead of the
# dense ``g @ W^T``. Measured on CPU for k = 3: the dense product wins at G = 5 (P = 9), the gather at
# G = 50 (P = 55) by 2.5x; the break-even is near P = 20.
GATHER_GX_MIN_SLOTS = 20


class KANFunction(torch.autograd.Function):
    """``y = Phi(x) @ W``; saves ``x``, the intervals and local coordinates (and the weights) and rebuilds
    the bases from them in backward.

    Forward never builds ``Phi``: an ``embedding_bag`` adds up the ``k + 1`` weighted weight rows of
    every ``(j, b)`` bag, plus one small matmul for the base branch. Backward needs ``Phi`` for the
    weight gradient (a dense matmul, like ``nn.Linear``'s). For the input gradient it gathers
    ``dL/dPhi = g @ W^T`` at the ``k + 1`` slots, or, with many slots per feature (large G), gathers the
    ``k + 1`` weight rows instead and never forms ``g @ W^T``.
    """

    @staticmethod
    def forward(ctx, x, weight, grid, k, base, uniform):
        # x [N, in], weight [in, n + 1, out], grid [in, m]
        N, n_in = x.shape
        out = weight.shape[-1]
        small = N * n_in <= SMALL_BATCH_ELEMENTS
        loc = locate(x, grid, k, uniform, derivative=small and ctx.needs_input_grad[0])
        w = loc.pad_weight(weight)
        bags = (loc.interval.unsqueeze(0) + loc.slot_offsets(n_in, True)).view(-1, n_in)  # one per (j, b)
        y = F.embedding_bag(bags, w.reshape(-1, out), per_sample_weights=loc.values.reshape(-1, n_in),
                            mode="sum").view(k + 1, N, out).sum(0)
        b, _ = base_with_derivative(base, x)
        if b is not None:
            y = torch.addmm(y, b, weight[:, 0, :])
        ctx.k, ctx.base, ctx.uniform, ctx.padded = k, base, uniform, loc.padded
        if small:
            # Small batches are dominated by per-op overhead, not memory: keep the located bases (a few KB).
            ctx.save_for_backward(x, weight, grid)
            ctx.loc, loc.s = loc, None
        else:
            # Large batches keep x (for the base's derivative) and what spares backward the interval search:
            # the interval and the local coordinate, from which relocate evaluates the bases again.
            ctx.save_for_backward(x, weight, grid, loc.interval, loc.s)
            ctx.loc = None
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, grid, *located = ctx.saved_tensors
        k = ctx.k
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, n_in = x.shape
        out = weight.shape[-1]
        loc = ctx.loc
        if located:
            loc = relocate(*located, grid, k, ctx.uniform, ctx.padded, derivative=need_x)
        elif loc is None or (need_x and loc.dvalues is None):  # a second backward (retain_graph) comes here
            loc = locate(x, grid, k, ctx.uniform, derivative=need_x)
        ctx.loc = None
        b, db = base_with_derivative(ctx.base, x)
        gx = gw = None
        if need_w:
            phi = dense_phi(x, loc, b)
            loc.values = None
            gw = loc.unpad_grad((phi.view(N, -1).T @ g).view(n_in, loc.P, out), weight.shape[1] - 1)
            # Free Phi before gx allocates. Fewer bytes live at once keep the big temporaries in the
            # allocator's heap; when the peak grows, glibc returns memory to the OS after every step, and
            # the next step pays a page fault per 4 KiB (that cost more than a matmul here).
            del phi
        if need_x:
            w = loc.pad_weight(weight).reshape(-1, out)
            if loc.P >= GATHER_GX_MIN_SLOTS:
                # many slots, k + 1 used: gather them instead of the dense g @ W^T ([N, in * P]).
                # E[b, f] = sum_j dB_j(x_bf) W[f, slot_j] by an embedding_bag with one bag per (b, f), then
                # gx[b, f] = <E[b, f], g[b]>; the base enters as (g @ W_base^T) * b'(x).
                idx = loc.interval.unsqueeze(-1) + loc.slot_offsets(n_in, False)  # [N, in, k+1]
                dv = loc.dvalues.permute(1, 2, 0).reshape(N * n_in, k + 1)
                E = F.embedding_bag(idx.view(-1, k + 1), w, per_sample_weights=dv, mode="sum")
                gx = E.view(N, n_in, out).mul_(g.unsqueeze(1)).sum(-1)
                if db is not None:
                    gx = torch.addcmul(gx, g @ weight[:, 0, :].T, db())
            else:
                gphi = g @ w.T  # [N, in * P]
                flat = loc.interval.unsqueeze(0) + loc.slot_offsets(n_in, True)  # [k+1, N, in] rows of W
                flat += (_arange(N, flat.dtype, x.device) * (n_in * loc.P)).view(1, N, 1)  # rows in gphi
                gsel = gphi.view(-1).index_select(0, flat.view(-1)).view_as(loc.dvalues)  # [k+1, N, in]
                del flat
                gx = gsel.mul_(loc.dvalues).sum(0)
                if db is not None:
                    gx = torch.addcmul(gx, gphi.view(N, n_in, loc.P)[..., loc.base_slot], db())
        return gx, gw, None, None, None, None


def kan_linear(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int, base="silu",
               uniform: bool = True) -> torch.Tensor:
    """Functional KAN layer: ``x [N, in]``, ``weight [in, n + 1, out]`` (slot 0 = base weight) -> ``[N, out]``.

    ``grid [in, n + k + 1]``; ``uniform=True`` requires equally spaced knots per feature. On the CPU this
    runs the compiled loops of ``kanedu.native`` (when numba is installed), elsewhere the torch kernel above.
    """
    if native.supports(x, weight, spline_order):
        return native.NativeKANFunction.apply(x, weight, grid, spline_order, base, uniform)
    return KANFunction.apply(x, weight, grid, spline_order, base, uniform)
