"""The KAN layer's fast path: every edge function of a layer at once, as one matrix product.

A layer's edges are ``phi_ij(x_i) = w_b[i, j] b(x_i) + w_s[i, j] sum_m c[i, j, m] B_m(x_i)`` and a node adds
them, ``y_j = sum_i mask[i, j] phi_ij(x_i)``. Gather the weights of an input feature into one column,
``W[i, :, j] = mask * (w_b, w_s c_0, ..., w_s c_{n-1})``, and its values into one row, the *expanded
features* ``Phi(x)[i] = (b(x_i), B_0(x_i), ..., B_{n-1}(x_i))``: then

    y = Phi(x) @ W        (Phi [N, in * (n + 1)], W [in * (n + 1), out]),

the same function as the edge-by-edge sum, computed like ``nn.Linear`` on the expanded features
(lesson 03). :func:`kan_linear` is that product. On the CPU, when the layer trains, it runs kanedu's
compiled loops (``kanedu.native``); everywhere else (GPUs, evaluation, ``torch.compile``) the torch code
here, with autograd for the gradients. Both evaluate the bases the one way ``kanedu.splines`` defines
(locate the interval, the ``k + 1`` local polynomials), and tests hold both to the Cox-de Boor reference.

Under autocast the bases and the product run in the weights' dtype (float32: a bf16 spline loses its
knots' resolution), and the result comes back in the autocast dtype, which is what the next layer meets.
"""

from __future__ import annotations

import torch

from . import native
from .activations import base as base_activation
from .splines import IntervalTable, local_bases, scatter_bases

__all__ = ["expanded_features", "kan_linear", "autocast_enabled"]


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
    n = grid.shape[-1] - spline_order - 1
    first, values, _ = local_bases(x, grid, table, spline_order, uniform)
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
    phi = expanded_features(x, grid, table, k, base, uniform)  # [N, in, n + 1]
    return phi.flatten(1) @ weight.flatten(0, 1)
