"""A KAN's training loss and its gradient on fixed data, without autograd (``fit``'s fused engine).

Full-batch L-BFGS on a small KAN (the KAN paper's protocol: ``[2, 5, 1]``, 1,000 points, thousands of
evaluations) spends most of its time on the fixed cost of each PyTorch operation and of the autograd
graph, not on arithmetic. ``FusedKAN`` computes the same loss and gradient over one flat parameter vector,
which ``kanedu.lbfgs.LBFGS`` optimises, from the layer's own pieces and nothing else:

* every layer is ``y = Phi(h) @ W`` with the combined weight of ``weights.combine_weights`` (its chain rule,
  ``weights.combine_weights_grad``, takes ``dL/dW`` back to the coefficients and scales);
* ``Phi``, the layer products and their gradients are ``kanedu.native``'s compiled CPU loops
  (``features``, ``forward``, ``backward``), the same that run ``KANLayer.forward`` on the CPU;
* the first layer's input is the training data, which does not change while the grid is fixed, so its
  ``Phi`` is built once per grid (``fit`` updates grids between steps) and every evaluation is one matrix
  product there (the test inputs' too, for the logged test error).

The loss is the mean squared error, like ``F.mse_loss``. ``tests/test_fused.py`` checks loss and
gradient against autograd through ``KAN.forward`` (float64, 1e-12), on adaptive grids, inputs outside
the grid, every supported activation, masked edges and frozen scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import native
from .activations import base_with_derivative
from .layers import KANLayer
from .weights import combine_weights, combine_weights_grad

__all__ = ["FusedKAN", "unsupported_reason"]

_ACTIVATIONS = ("silu", "identity", "zero", "tanh", "relu", "gelu")
_NAMES = ("coef", "scale_base", "scale_spline")  # the trainable tensors of a KANLayer, in flat-vector order
MAX_PHI_ELEMENTS = 1 << 22  # N * in * P above which the first layer's Phi (32 MB in float64) is too big


def unsupported_reason(model, x: torch.Tensor) -> str | None:
    """Why ``FusedKAN(model, x, y)`` cannot train ``model`` (None if it can)."""
    if not native.ENABLED:
        return "kanedu's compiled CPU loops are off (numba missing or KANEDU_NATIVE=0)"
    layers = getattr(model, "layers", None)
    if not (hasattr(model, "n_mult") and layers is not None and len(layers)
            and all(isinstance(layer, KANLayer) for layer in layers)):
        return f"the model is a {type(model).__name__}, not a kanedu.KAN"
    if x.device.type != "cpu":
        return f"the data are on {x.device}, not the CPU"
    if x.dtype not in (torch.float32, torch.float64):
        return f"dtype {x.dtype} (float32 and float64 only)"
    if x.dim() != 2:
        return f"train_input has shape {tuple(x.shape)}, not [N, in]"
    if any(model.n_mult):
        return "the model has multiplication nodes"
    for i, layer in enumerate(model.layers):
        if layer.symbolic is not None:
            return f"layer {i} has symbolic edges"
        if layer.base_activation not in _ACTIVATIONS:
            return f"layer {i} has base activation {layer.base_activation!r} (fused: {', '.join(_ACTIVATIONS)})"
        if layer.spline_order < 1:
            return f"layer {i} has spline order {layer.spline_order} (needs >= 1)"
        P = layer.grid_size + layer.spline_order + 1
        if i == 0 and x.shape[0] * layer.in_features * P > MAX_PHI_ELEMENTS:
            return f"layer {i}'s expanded features would have {x.shape[0] * layer.in_features * P} elements"
    return None


def _base(name: str, h: np.ndarray, derivative: bool):
    """``(b(h), b'(h) or None)`` as NumPy arrays (``(None, None)`` for "zero")."""
    b, db = base_with_derivative(name, torch.from_numpy(h))
    if b is None:
        return None, None
    return b.numpy(), (db().numpy() if derivative else None)


class _Layer:
    """One KANLayer as the loops see it: its knots (re-read when the grid changes) and mask."""

    def __init__(self, layer: KANLayer):
        self.module = layer
        self.k, self.n_in, self.n_out = layer.spline_order, layer.in_features, layer.out_features
        self.act = layer.base_activation
        self.grid_key = None

    def refresh(self) -> bool:
        """Re-read grid and mask from the module; True if the grid changed."""
        layer = self.module
        key = (id(layer.grid), layer.grid._version, tuple(layer.grid.shape))
        self.mask = layer.mask.detach().numpy()
        changed = key != self.grid_key
        if changed:
            self.grid_key = key
            self.slots = layer.grid_size + self.k + 1
            self.kc = native.knot_constants(layer.grid.detach().numpy(), layer.table, self.k, layer._uniform)
        return changed

    def features(self, h: np.ndarray) -> np.ndarray:
        """``Phi(h) [N, in * (n + 1)]``."""
        return native.features(h, _base(self.act, h, False)[0], self.kc, self.slots)

    def forward(self, h: np.ndarray, W: np.ndarray, derivative: bool):
        """``(y, what backward needs)`` for ``h [N, in]`` and ``W [in, n + 1, out]``."""
        b, db = _base(self.act, h, derivative)
        return native.forward(h, b, self.kc, W), (h, b, db)

    def backward(self, g: np.ndarray, W: np.ndarray, saved):
        """``(dL/dW, dL/dh)`` for ``g = dL/dy [N, out]``."""
        h, b, db = saved
        gh, gW = native.backward(h, b, db, self.kc, W, g, True, True)
        return gW, gh


class FusedKAN:
    """Loss (MSE) and gradient of a ``kanedu.KAN`` on fixed data ``x [N, in]``, ``y [N, out]``.

    The trainable tensors (``coef``, ``scale_base``, ``scale_spline`` of every layer, those with
    ``requires_grad``) form one flat vector: ``pack()`` reads it from the model (and notices grid
    changes), ``unpack(v)`` writes it back, and ``fused(v) -> (loss, grad)`` evaluates at ``v``.
    """

    def __init__(self, model, x: torch.Tensor, y: torch.Tensor):
        why = unsupported_reason(model, x)
        if why is not None:
            raise ValueError(f"FusedKAN cannot train this model: {why}")
        if y.shape != (x.shape[0], model.widths[-1]):
            raise ValueError(f"labels must have shape {(x.shape[0], model.widths[-1])}, got {tuple(y.shape)}")
        self.model = model
        self.x = x.detach().contiguous().numpy()
        self.y = y.detach().to(x.dtype).numpy()
        self.dtype = self.x.dtype
        self.layers = [_Layer(layer) for layer in model.layers]
        # (layer index, attribute, shape, offset, end) of every trainable tensor, in a fixed order
        self.slots, off = [], 0
        for li, layer in enumerate(model.layers):
            for name in _NAMES:
                p = getattr(layer, name)
                if p.requires_grad:
                    self.slots.append((li, name, tuple(p.shape), off, off + p.numel()))
                    off += p.numel()
        self.size = off
        self.phi0 = None
        self._test_features = None
        self.evaluations = 0
        self.last_pred, self.last_loss = None, math.nan
        self.pack()  # grids, first-layer features and frozen tensors: ready to evaluate

    # ---- parameters -----------------------------------------------------------------------------------

    def pack(self) -> np.ndarray:
        """The model's current trainable values as a flat vector (a copy)."""
        changed = [L.refresh() for L in self.layers]  # every layer (not any(): it would stop early)
        if changed[0] or self.phi0 is None:
            self.phi0 = self.layers[0].features(self.x)  # the input is fixed: once per grid
        v = np.empty(self.size, dtype=self.dtype)
        for li, name, _, off, end in self.slots:
            v[off:end] = getattr(self.model.layers[li], name).detach().numpy().reshape(-1)
        self.frozen = [[getattr(layer, name).detach().numpy() for name in _NAMES] for layer in self.model.layers]
        return v

    @torch.no_grad()
    def unpack(self, v: np.ndarray) -> None:
        """Write the flat vector ``v`` into the model's parameters (in place)."""
        for li, name, shape, off, end in self.slots:
            getattr(self.model.layers[li], name).copy_(torch.from_numpy(v[off:end].reshape(shape)))

    def _weights(self, v: np.ndarray):
        """Per layer ``[coef, scale_base, scale_spline]`` as views of ``v`` (or the frozen arrays)."""
        out = [list(f) for f in self.frozen]
        for li, name, shape, off, end in self.slots:
            out[li][_NAMES.index(name)] = v[off:end].reshape(shape)
        return out

    def _combined(self, weights):
        return [combine_weights(c, sb, ss, L.mask)
                for L, (c, sb, ss) in zip(self.layers, weights)]

    # ---- evaluation -------------------------------------------------------------------------------------

    def predict(self, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        """The model's output on ``x [M, in]`` (NumPy) at ``v`` (default: the model's own weights)."""
        Ws = self._combined(self._weights(self.pack() if v is None else v))
        h = np.ascontiguousarray(x)
        for L, W in zip(self.layers, Ws):
            h = L.forward(h, W, derivative=False)[0]
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``predict`` for a CPU tensor at the model's weights: what ``fit`` uses on the test set. The
        test inputs do not change either, so their first-layer features are also kept per grid."""
        xn = x.detach().contiguous().numpy()
        Ws = self._combined(self._weights(self.pack()))
        key = (xn.__array_interface__["data"][0], xn.shape, x._version, self.layers[0].grid_key)
        if self._test_features is None or self._test_features[0] != key:
            self._test_features = (key, self.layers[0].features(xn))
        h = self._test_features[1] @ Ws[0].reshape(-1, Ws[0].shape[-1])
        for L, W in zip(self.layers[1:], Ws[1:]):
            h = L.forward(h, W, derivative=False)[0]
        return torch.from_numpy(h)

    def __call__(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        """``(mean squared error, its gradient with respect to v)`` on the training data."""
        self.evaluations += 1
        weights = self._weights(v)
        Ws = self._combined(weights)
        saved = []
        h = self.phi0 @ Ws[0].reshape(-1, Ws[0].shape[-1])
        for L, W in zip(self.layers[1:], Ws[1:]):
            h, cache = L.forward(h, W, derivative=True)
            saved.append(cache)
        r = h - self.y
        loss = float(np.vdot(r, r)) / r.size
        self.last_pred, self.last_loss = h, loss  # the last evaluation, as fit's closure records it
        g = r * (2.0 / r.size)  # dL/dy
        gW = [None] * len(self.layers)
        for li in range(len(self.layers) - 1, 0, -1):
            gW[li], g = self.layers[li].backward(g, Ws[li], saved[li - 1])
        gW[0] = (self.phi0.T @ g).reshape(Ws[0].shape)
        per_layer = [dict(zip(_NAMES, combine_weights_grad(gw, c, ss, L.mask)))
                     for L, gw, (c, _, ss) in zip(self.layers, gW, weights)]
        grad = np.empty(self.size, dtype=self.dtype)
        for li, name, _, off, end in self.slots:
            grad[off:end] = per_layer[li][name].reshape(-1)
        return loss, grad
