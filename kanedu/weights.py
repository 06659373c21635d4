"""The combined weight of a KAN layer, ``W [in, n + 1, out]``, and its chain rule: the one place where a
layer's coefficients, scales and mask meet (``KANLayer.combined_weight``, the compiled CPU loops of
``kanedu.native``, and ``fit``'s fused engine all call these two functions).

Both take torch tensors (differentiable) or NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["combine_weights", "combine_weights_grad"]


def combine_weights(coef, scale_base, scale_spline, mask):
    """The combined weight ``W [in, n + 1, out]`` of the edges: ``W[i, 0, j] = mask * w_b`` (the base
    activation's slot), ``W[i, 1 + m, j] = mask * w_s * c[i, j, m]``.

    ``coef [in, out, n]``, the others ``[in, out]``; torch tensors (differentiable) or NumPy arrays. The
    result is contiguous in C order.
    """
    spline = (mask * scale_spline)[..., None] * coef  # [in, out, n]
    parts = [(mask * scale_base)[:, None, :], spline.swapaxes(1, 2)]
    if isinstance(coef, np.ndarray):  # C order (NumPy would keep the swapped axes' layout): the loops need it
        return np.ascontiguousarray(np.concatenate(parts, 1))
    return torch.cat(parts, 1)


def combine_weights_grad(grad_w, coef, scale_spline, mask):
    """The chain rule through :func:`combine_weights`: ``dL/dW [in, n + 1, out]`` ->
    ``(dL/dcoef [in, out, n], dL/dw_b [in, out], dL/dw_s [in, out])`` (for the compiled loops and the fused
    engine, which run without autograd; tests hold it to autograd)."""
    g_spline = grad_w[:, 1:].swapaxes(1, 2)  # dL/d(mask * w_s * c), [in, out, n]
    return (mask * scale_spline)[..., None] * g_spline, mask * grad_w[:, 0], mask * (g_spline * coef).sum(-1)
