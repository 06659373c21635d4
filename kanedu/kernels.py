"""The fast KAN layer kernel: one matmul, bases recomputed in backward.

A KAN layer computes ``y_o = sum_i [ w_b[i,o] b(x_i) + sum_m c[i,m,o] B_m(x_i) ]``. Stack, per input
feature ``i``, the slot vector ``phi(x_i) = [b(x_i), B_0(x_i), ..., B_{n-1}(x_i)]`` (``S = n + 1`` slots,
``n = G + k`` bases) and the weights as ``W [in, S, out]``. Then the layer is one matrix product

    y = Phi(x) @ W.view(in * S, out),    Phi(x) = [N, in * S]   ("the matrix formulation", lesson 03)

Only ``k + 1`` of the ``n`` bases are non-zero at any x, so ``Phi`` is built by writing the ``k + 1``
local values (see ``kanedu.splines``) into a zero matrix. ``KANFunction`` saves only ``x`` for
backward and rebuilds ``Phi`` there, so the activation memory is ``[N, in]`` instead of
``[N, in * S]`` (what ``nn.Linear`` on the expanded features would keep).

Two ways to find the local values:

* uniform knots (the default grid): ``floor`` gives the interval, and the ``k + 1`` bases are fixed
  polynomials of the local coordinate ``s in [0, 1]``, evaluated by Horner's rule in ``k`` fused
  multiply-adds over all of them at once;
* any knots (adaptive grids): ``searchsorted`` gives the interval and de Boor's triangular
  recursion the ``k + 1`` values from the ``2k`` surrounding knots.

Tests hold both to the Cox-de Boor reference in ``kanedu.splines``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

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


def _horner(s: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``sum_p coef[p] s^p`` for every basis at once: ``s [...]``, ``coef [P, k+1]`` -> ``[..., k+1]``."""
    if coef.shape[0] == 1:
        return coef[0].expand(*s.shape, coef.shape[1])
    s = s.unsqueeze(-1)
    out = torch.addcmul(coef[-2], s, coef[-1])
    for p in range(coef.shape[0] - 3, -1, -1):
        out = torch.addcmul(coef[p], out, s)
    return out


def uniform_local(s: torch.Tensor, k: int, derivative: bool = False) -> torch.Tensor:
    """The ``k + 1`` non-zero uniform bases (or their ``d/ds``) at local coordinate ``s``; ``[..., k+1]``."""
    C, D = _poly_tensors(k, s.dtype, s.device)
    if derivative:
        if k == 0:
            return torch.zeros(*s.shape, 1, dtype=s.dtype, device=s.device)
        return _horner(s, D)
    return _horner(s, C)


def general_local(x: torch.Tensor, knots: torch.Tensor, i: torch.Tensor, k: int, derivative: bool):
    """De Boor's triangular recursion: the ``k + 1`` non-zero bases at ``x`` on interval ``i``.

    Args:
        x: ``[N, in]``; knots: ``[in, M]`` padded so that indices ``i - k .. i + k + 1`` exist;
        i: ``[N, in]`` interval index into ``knots`` (``knots[i] <= x < knots[i+1]``).

    Returns:
        values ``[N, in, k+1]`` for bases ``i-k .. i`` and, if asked, their ``d/dx``.
    """
    offs = torch.arange(-k, k + 2, device=x.device)
    t = torch.gather(knots.unsqueeze(0).expand(i.shape[0], -1, -1), 2, i.unsqueeze(-1) + offs)

    def knot(a):  # knot i + a; t[..., r] holds knot i - k + r
        return t[..., a + k]

    N = [torch.ones_like(x)]
    lower = N
    for j in range(1, k + 1):
        left = [None] + [x - knot(1 - r) for r in range(1, j + 1)]  # left[r] = x - t_{i+1-r}
        right = [None] + [knot(r) - x for r in range(1, j + 1)]  # right[r] = t_{i+r} - x
        saved = torch.zeros_like(x)
        nxt = []
        for r in range(j):
            temp = N[r] / (right[r + 1] + left[j - r])
            nxt.append(saved + right[r + 1] * temp)
            saved = left[j - r] * temp
        nxt.append(saved)
        if j == k:
            lower = N
        N = nxt
    values = torch.stack(N, dim=-1)
    if not derivative:
        return values, None
    if k == 0:
        return values, torch.zeros_like(values)
    # dB_{m,k}/dx = k [B_{m,k-1} / (t_{m+k} - t_m) - B_{m+1,k-1} / (t_{m+k+1} - t_{m+1})], m = i - k + r
    zero = torch.zeros_like(x)
    low = [zero] + list(lower) + [zero]  # low[r] = B_{i-k+r, k-1}, r = 0..k+1 (ends are zero)
    d = []
    for r in range(k + 1):
        a = low[r] / (knot(r) - knot(r - k)).clamp_min(1e-30)  # m = i-k+r: t_{m+k} - t_m
        b = low[r + 1] / (knot(r + 1) - knot(r - k + 1)).clamp_min(1e-30)
        d.append(k * (a - b))
    return values, torch.stack(d, dim=-1)


# --------------------------------------------------------------------------------------------------
# locating x: which k + 1 bases are non-zero, and their values
# --------------------------------------------------------------------------------------------------


class Local:
    """The non-zero bases of every ``x[b, f]``, in a "bases first" layout ``[k + 1, N, in]``.

    ``slot[j, b, f]`` is where basis ``j`` of ``x[b, f]`` sits in a per-feature slot vector of length
    ``P``; slot ``base_slot`` holds the base activation. Normally ``P = n + 1`` (slot 0 = base,
    slot ``1 + m`` = basis ``m``). If some x lie outside the base interval, the layout is ``padded``:
    ``[k + 1 spare | n bases | k + 1 spare | base]``, so bases that do not exist land in spare slots
    whose weight is zero, and nothing has to be masked.
    """

    __slots__ = ("slot", "values", "dvalues", "P", "base_slot", "first_basis", "padded")

    def __init__(self, slot, values, dvalues, P, base_slot, first_basis, padded):
        self.slot, self.values, self.dvalues = slot, values, dvalues
        self.P, self.base_slot, self.first_basis, self.padded = P, base_slot, first_basis, padded

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


def _stack_first(cols):
    return torch.stack(cols, dim=0)


def locate(x: torch.Tensor, grid: torch.Tensor, k: int, uniform: bool, derivative: bool) -> Local:
    """Find the interval of every ``x [N, in]`` on its feature's knots ``grid [in, m]`` and evaluate the
    ``k + 1`` non-zero bases there (and ``d/dx`` of them if ``derivative``)."""
    N, n_in = x.shape
    m = grid.shape[-1]
    n = m - k - 1
    xd = x.detach()
    inside = N == 0 or bool(((xd.amin(0) >= grid[:, k]) & (xd.amax(0) <= grid[:, n])).all())
    lo_i, hi_i = (k, n - 1) if inside else (-1, m - 1)

    if uniform:
        t0 = grid[:, 0]
        h = (grid[:, -1] - grid[:, 0]) / (m - 1)
        exact = x.dtype == torch.float64 or m > 40  # a float64 coordinate keeps float32 exact at large G
        if exact:
            inv_h = 1.0 / h.double()
            u = (xd.double() - t0.double()) * inv_h
        else:
            inv_h = 1.0 / h
            u = torch.addcmul(-t0 * inv_h, xd, inv_h)
        i = torch.floor(u).clamp_(lo_i, hi_i)
        s = (u - i).to(x.dtype)
        if not inside:
            s = s.clamp_(-1.0, 2.0)  # values for far-away x land in spare slots: keep them finite
        s = s.unsqueeze(0)  # [1, N, in]: bases-first layout
        C, D = _poly_tensors(k, x.dtype, x.device)
        values = _horner_first(s, C)
        dvalues = None
        if derivative:
            dvalues = _horner_first(s, D) * inv_h.to(x.dtype) if k > 0 else torch.zeros_like(values)
        i = i.long()
    else:
        # pad the knots by k + 1 on each side so the recursion always finds its 2k + 2 knots
        step = ((grid[:, -1] - grid[:, 0]) / (m - 1)).clamp_min(1e-6)[:, None]
        ar = torch.arange(1, k + 2, dtype=grid.dtype, device=grid.device)
        knots = torch.cat([grid[:, :1] - step * ar.flip(0), grid, grid[:, -1:] + step * ar], dim=1)
        i = (torch.searchsorted(knots, xd.T.contiguous(), right=True).T - 2 - k).contiguous()  # in grid
        i = i.clamp_(lo_i, hi_i)
        xe = xd if inside else torch.minimum(torch.maximum(xd, knots[:, 0]), knots[:, -1])
        values, dvalues = general_local(xe, knots, i + k + 1, k, derivative)
        values = values.permute(2, 0, 1).contiguous()
        dvalues = dvalues.permute(2, 0, 1).contiguous() if dvalues is not None else None

    if inside:
        P, base_slot, first_basis = n + 1, 0, 1
    else:
        P, base_slot, first_basis = n + 2 * k + 3, n + 2 * k + 2, k + 1
    # basis m = i - k + j sits in slot first_basis + m; int32 index arithmetic is ~3x cheaper than int64
    idx_dtype = torch.int32 if N * n_in * P < 2**31 else torch.int64
    slot = (i.to(idx_dtype) + (first_basis - k)).unsqueeze(0) + _arange(k + 1, idx_dtype, x.device).view(-1, 1, 1)
    return Local(slot, values, dvalues, P, base_slot, first_basis, not inside)


@functools.lru_cache(maxsize=32)
def _arange(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=dtype, device=device)


def _row_offsets(N: int, n_in: int, P: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(b * in + f) * P`` as ``[N, in]``: the start of every per-feature slot vector in ``Phi``."""
    return (_arange(N * n_in, dtype, device) * P).view(N, n_in)


def _horner_first(s: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``sum_p coef[p, j] s^p`` -> ``[k+1, N, in]`` for ``s [1, N, in]`` (broadcast over a leading dim)."""
    c = coef.view(coef.shape[0], coef.shape[1], 1, 1)
    if coef.shape[0] == 1:
        return c[0].expand(coef.shape[1], *s.shape[1:]).clone()
    out = torch.addcmul(c[-2], c[-1], s)
    for p in range(coef.shape[0] - 3, -1, -1):
        out = torch.addcmul(c[p], out, s)
    return out


def dense_phi(x: torch.Tensor, loc: Local, base: torch.Tensor | None) -> torch.Tensor:
    """The expanded features ``Phi [N, in, P]`` (bases scattered into zeros, base in its slot)."""
    N, n_in = x.shape
    phi = x.new_zeros(N, n_in, loc.P)
    flat = loc.slot.long() + _row_offsets(N, n_in, loc.P, torch.int64, x.device)
    phi.view(-1).scatter_(0, flat.view(-1), loc.values.reshape(-1))
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


class KANFunction(torch.autograd.Function):
    """``y = Phi(x) @ W``; saves only ``x`` (and the weights) and rebuilds the bases in backward.

    Forward never builds ``Phi``: an ``embedding_bag`` adds up the ``k + 1`` weighted weight rows of
    every ``(j, b)`` bag, plus one small matmul for the base branch. Backward needs ``Phi`` for the
    weight gradient (a dense matmul, like ``nn.Linear``'s) and gathers ``dL/dPhi`` at the ``k + 1``
    slots for the input gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, grid, k, base, uniform):
        # x [N, in], weight [in, n + 1, out], grid [in, m]
        N, n_in = x.shape
        out = weight.shape[-1]
        loc = locate(x, grid, k, uniform, derivative=False)
        w = loc.pad_weight(weight)
        rows = (_arange(n_in, loc.slot.dtype, x.device) * loc.P).view(1, 1, n_in)
        bags = (loc.slot + rows).view(-1, n_in)  # [(k+1) * N, in] bags, one per (j, b)
        y = F.embedding_bag(bags, w.reshape(-1, out), per_sample_weights=loc.values.reshape(-1, n_in),
                            mode="sum").view(k + 1, N, out).sum(0)
        b, _ = base_with_derivative(base, x)
        if b is not None:
            y = torch.addmm(y, b, weight[:, 0, :])
        ctx.save_for_backward(x, weight, grid)
        ctx.k, ctx.base, ctx.uniform = k, base, uniform
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, grid = ctx.saved_tensors
        k = ctx.k
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, n_in = x.shape
        out = weight.shape[-1]
        loc = locate(x, grid, k, ctx.uniform, derivative=need_x)
        b, db = base_with_derivative(ctx.base, x)
        gx = gw = None
        if need_w:
            phi = dense_phi(x, loc, b)
            gw = loc.unpad_grad((phi.view(N, -1).T @ g).view(n_in, loc.P, out), weight.shape[1] - 1)
        if need_x:
            w = loc.pad_weight(weight)
            gphi = g @ w.reshape(-1, out).T  # [N, in * P]
            flat = loc.slot + _row_offsets(N, n_in, loc.P, loc.slot.dtype, x.device)
            gsel = gphi.view(-1).index_select(0, flat.view(-1)).view_as(loc.values)  # [k+1, N, in]
            gx = (gsel * loc.dvalues).sum(0)
            if db is not None:
                gx = gx + gphi.view(N, n_in, loc.P)[..., loc.base_slot] * db()
        return gx, gw, None, None, None, None


def kan_linear(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, spline_order: int, base="silu",
               uniform: bool = True) -> torch.Tensor:
    """Functional KAN layer: ``x [N, in]``, ``weight [in, n + 1, out]`` (slot 0 = base weight) -> ``[N, out]``.

    ``grid [in, n + k + 1]``; ``uniform=True`` requires equally spaced knots per feature.
    """
    return KANFunction.apply(x, weight, grid, spline_order, base, uniform)
