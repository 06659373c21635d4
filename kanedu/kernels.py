"""The KAN layer's fast path: every edge function of a layer at once, as one matrix product.

A layer's edges are ``phi_ij(x_i) = w_b[i, j] b(x_i) + w_s[i, j] sum_m c[i, j, m] B_m(x_i)`` and a node adds
them, ``y_j = sum_i mask[i, j] phi_ij(x_i)``. Gather the weights of an input feature into one column,
``W[i, :, j] = mask * (w_b, w_s c_0, ..., w_s c_{n-1})``, and its values into one row, the *expanded
features* ``Phi(x)[i] = (b(x_i), B_0(x_i), ..., B_{n-1}(x_i))``: then

    y = Phi(x) @ W        (Phi [N, in * (n + 1)], W [in * (n + 1), out]),

the same function as the edge-by-edge sum, computed like ``nn.Linear`` on the expanded features
(lesson 03). :func:`kan_linear` is that product. On the CPU, when the layer trains, it runs kanedu's
compiled loops (``kanedu.native``); everywhere else (GPUs, evaluation, ``torch.compile``) the torch code
here (:class:`KANFunction`, which keeps only ``x`` for backward). Both evaluate the bases the one way
``kanedu.splines`` defines (locate the interval, the ``k + 1`` local polynomials), and tests hold both to the
Cox-de Boor reference.

Under autocast the bases and the product run in the weights' dtype (float32: a bf16 spline loses its
knots' resolution), and the result comes back in the autocast dtype, which is what the next layer meets.
"""

from __future__ import annotations

import torch

from . import native
from .activations import base as base_activation
from .activations import base_with_derivative
from .splines import IntervalTable, local_bases, scatter_bases

__all__ = ["expanded_features", "kan_linear", "KANFunction", "autocast_enabled"]


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device type (False for devices autocast does not know)."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # e.g. the meta device
        return False


def expanded_features(x: torch.Tensor, grid: torch.Tensor, table: IntervalTable, spline_order: int, base: str,
                      uniform: bool) -> torch.Tensor:
    """``Phi(x) [N, in, n + 1]`` for ``x [N, in]``: slot 0 is ``b(x)`` (0 for ``base="zero"``), slots ``1 .. n``
    the B-spline bases on each feature's knots ``grid [in, n + k + 1]``. Differentiable in ``x``."""
    first, values, _ = local_bases(x, grid, table, spline_order, uniform)
    return _features(x, base, first, values, grid.shape[-1] - spline_order - 1)


def _features(x, base, first, values, n):
    """``Phi(x)`` from the located bases: the base activation in slot 0, then the ``n`` bases."""
    return torch.cat([base_activation(base, x).unsqueeze(-1), scatter_bases(first, values, n)], dim=-1)


def kan_linear(x: torch.Tensor, weight: torch.Tensor, grid: torch.Tensor, table: IntervalTable,
               spline_order: int, base: str = "silu", uniform: bool = True) -> torch.Tensor:
    """A KAN layer as a function: ``y = Phi(x) @ W``.

    Args:
        x: ``[N, in]``.
        weight: the combined weight ``W [in, n + 1, out]`` (``KANLayer.combined_weight``).
        grid: ``[in, n + k + 1]`` knots; ``table``: their ``splines.interval_table``.
        spline_order: ``k``; base: the base activation's name (``kanedu.activations``).
        uniform: True only if every feature's knots are equally spaced (then the interval is one floor).

    Returns:
        ``[N, out]``, in the autocast dtype under autocast, else in ``x``'s dtype.
    """
    if native.supports(x, weight, spline_order):
        return native.kan_linear(x, weight, grid, table, spline_order, base, uniform)
    device = x.device.type
    if autocast_enabled(x):
        out_dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):  # splines and their contraction in the weights' dtype
            y = _product(x.to(weight.dtype), weight, grid, table, spline_order, base, uniform)
        return y.to(out_dtype)
    return _product(x, weight, grid, table, spline_order, base, uniform)


def _product(x, weight, grid, table, k, base, uniform):
    return KANFunction.apply(x, weight, grid, table, k, base, uniform)


class KANFunction(torch.autograd.Function):
    """``Phi(x) @ W`` that saves only ``x`` and ``W`` for backward (like ``nn.Linear`` on its input, not on the
    ``n + 1`` times larger ``Phi``), and rebuilds the bases there:

    * ``dL/dW = Phi(x)^T g``;
    * ``dL/dx_i = sum_slots dPhi_i/dx_i * (g W^T)_slot``, over the base slot and the ``k + 1`` bases that are
      non-zero at ``x_i`` (their derivatives from the same ``local_bases``).
    """

    @staticmethod
    def forward(ctx, x, weight, grid, table, k, base, uniform):
        ctx.save_for_backward(x, weight)
        ctx.grid, ctx.table, ctx.k, ctx.base, ctx.uniform = grid, table, k, base, uniform
        phi = expanded_features(x, grid, table, k, base, uniform)  # [N, in, n + 1]
        return phi.flatten(1) @ weight.flatten(0, 1)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        grid, table, k, base, uniform = ctx.grid, ctx.table, ctx.k, ctx.base, ctx.uniform
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = grid.shape[-1] - k - 1
        first, values, dvalues = local_bases(x, grid, table, k, uniform, derivative=need_x)
        gx = gw = None
        if need_w:
            gw = (_features(x, base, first, values, n).flatten(1).transpose(0, 1) @ g).view_as(weight)
        if need_x:
            gphi = (g @ weight.flatten(0, 1).transpose(0, 1)).view(*x.shape, n + 1)  # dL/dPhi [N, in, n + 1]
            slots = (first.unsqueeze(-1) + torch.arange(1, k + 2, device=x.device)).clamp(0, n)  # [N, in, k + 1]
            gx = (gphi.gather(-1, slots) * dvalues).sum(-1)  # bases that do not exist have dvalues == 0
            if base != "zero":
                b, db = base_with_derivative(base, x)
                gx = gx + gphi[..., 0] * db()
        return gx, gw, None, None, None, None, None
