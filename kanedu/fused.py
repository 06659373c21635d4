"""A KAN's training loss and its gradient on fixed data, in NumPy, without autograd (``fit``'s fused path).

Full-batch L-BFGS on a small KAN (the KAN paper's protocol: ``[2, 5, 1]``, 1,000 points, thousands of
evaluations) spends most of its time on the fixed cost of each PyTorch operation and of the autograd
graph, not on arithmetic. ``FusedKAN`` computes the same loss and gradient with a hand-written
backward pass over a flat parameter vector, which ``kanedu.lbfgs.LBFGS`` optimises:

* every layer is one matrix product with its expanded features (lesson 03): ``y = Phi(h) @ W`` with
  ``Phi [N, in * P]`` holding, per input feature, the base activation and the ``k + 1`` non-zero
  B-spline bases in a slot vector ``[base | k + 1 spare | n bases | k + 1 spare]`` (``P = n + 2k + 3``;
  bases that do not exist, for inputs near or beyond the grid ends, fall in the spare slots, whose
  weight is zero);
* the bases come from ``kanedu.kernels.interval_table`` (exact per-interval polynomials, any knots);
* the first layer's input is the training data, which does not change while the grid is fixed, so its
  ``Phi`` is built once per grid (``fit`` updates grids between steps) and reused by every evaluation
  (the test inputs' too, for the logged test error);
* a later layer with several outputs builds its ``Phi`` at every evaluation; backward is
  ``dL/dW = Phi^T g`` and ``dL/dh`` = ``g W^T`` gathered at the ``k + 1`` slots times the bases'
  derivatives, plus the base activation's derivative;
* a later layer with one output (the last layer of a regression KAN) needs no ``Phi``: on each interval
  its spline is one polynomial of the local coordinate (coefficients from the table and the weights),
  and its weight gradient comes from per-interval moments of ``g`` (see ``_forward_single``);
* every work array is kept between evaluations: allocating ~100 KB arrays afresh each time costs page
  faults that, at these sizes, take longer than the arithmetic.

The loss is the mean squared error, like ``F.mse_loss``. ``tests/test_fused.py`` checks loss and
gradient against autograd through ``KAN.forward`` (float64, 1e-12), on adaptive grids, inputs outside
the grid, every supported activation, masked edges and frozen scales.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .kernels import interval_table
from .layers import KANLayer

__all__ = ["FusedKAN", "unsupported_reason"]

_ACTIVATIONS = ("silu", "identity", "zero", "tanh", "relu")
_NAMES = ("coef", "scale_base", "scale_spline")  # the trainable tensors of a KANLayer, in flat-vector order
MAX_PHI_ELEMENTS = 1 << 22  # N * in * P above which a dense Phi (32 MB in float64) is too big: torch path


def unsupported_reason(model, x: torch.Tensor) -> str | None:
    """Why ``FusedKAN(model, x, y)`` cannot train ``model`` (None if it can)."""
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
        P = layer.grid_size + 3 * layer.spline_order + 3
        if x.shape[0] * layer.in_features * P > MAX_PHI_ELEMENTS:
            return f"layer {i}'s expanded features would have {x.shape[0] * layer.in_features * P} elements"
    return None


def _activation(name: str, h: np.ndarray, derivative: bool):
    """``(b(h), b'(h) or None)``; ``(None, None)`` for "zero"."""
    if name == "zero":
        return None, None
    if name == "identity":
        return h, (np.ones_like(h) if derivative else None)
    if name == "silu":
        sig = 1.0 / (1.0 + np.exp(-h))
        b = h * sig
        return b, (sig * (1.0 + h * (1.0 - sig)) if derivative else None)
    if name == "tanh":
        b = np.tanh(h)
        return b, (1.0 - b * b if derivative else None)
    if name == "relu":
        return np.maximum(h, 0), ((h > 0).astype(h.dtype) if derivative else None)
    raise ValueError(f"unsupported activation {name!r}")


class _Layer:
    """NumPy view of one KANLayer: grid tables, weight layout and the last located bases."""

    def __init__(self, layer, dtype):
        self.module = layer
        self.k, self.n_in, self.n_out = layer.spline_order, layer.in_features, layer.out_features
        self.act = layer.base_activation
        self.dtype = dtype
        self.grid_key = None

    def refresh(self) -> bool:
        """Re-read grid, mask and frozen weights from the module; True if the grid changed."""
        layer = self.module
        key = (id(layer.grid), layer.grid._version, layer.grid.shape)
        self.mask = layer.mask.detach().numpy()
        changed = key != self.grid_key
        if changed:
            self.grid_key = key
            k = self.k
            m = layer.grid.shape[1]
            self.n = m - k - 1
            self.P = self.n + 2 * k + 3
            self.m = m
            T, t_left, inv_w = interval_table(layer.grid, k)  # cached on the grid tensor itself
            # [power, basis, in * (m + 1)]: np.take along the last axis gives bases-first [k + 1, N, in]
            self.table = np.ascontiguousarray(T.numpy().reshape(-1, k + 1, k + 1).transpose(1, 2, 0))
            # one searchsorted for all features: shift feature i's knots (and its inputs, clipped to
            # just outside them, which keeps every interval) into a band [i * C, i * C + span]
            knots = layer.grid.detach().numpy()
            self.lo, self.hi = knots[:, :1] - 1, knots[:, -1:] + 1
            C = float((self.hi - self.lo).max()) + 1
            self.shift = (np.arange(self.n_in) * C)[:, None] - self.lo  # [in, 1]
            self.flat_knots = (knots + self.shift).reshape(-1)
            self.band = np.arange(self.n_in) * m  # knots of the features before i
            self.t_left = t_left.numpy().reshape(-1)
            self.inv_w = inv_w.numpy().reshape(-1)
            self.row_offset = np.arange(self.n_in) * (m + 1)
            self.base_rows = np.arange(self.n_in) * self.P
            # weight row of basis r of a sample in table row iv: iv + slot_offset[r], [k + 1, 1, in]
            self.slot_offset = self.base_rows + 1 + np.arange(k + 1).reshape(-1, 1, 1)
            # the weight row of basis r on every table row (feature i, iv): iv + i * P + 1 + r
            iv_all = np.arange(m + 1).reshape(1, 1, -1)
            self.table_wrow = (iv_all + self.slot_offset.transpose(0, 2, 1)).reshape(k + 1, -1)  # [k+1, rows]
            self.buffers = {}
            self.W = np.zeros((self.n_in, self.P, self.n_out), dtype=self.dtype)
        return changed

    def _buf(self, name: str, shape: tuple, dtype=None) -> np.ndarray:
        """A work array kept between calls. Arrays of ~100 KB and more are otherwise mapped fresh from
        the OS (and page-faulted in) at every allocation, which cost more than the arithmetic here."""
        key = (name, shape)
        a = self.buffers.get(key)
        if a is None:
            a = self.buffers[key] = np.empty(shape, dtype=dtype or self.dtype)
        return a

    def interval(self, h: np.ndarray):
        """For every ``h [N, in]``: its interval ``iv`` (0 = left of the knots .. m = right of them),
        the table row, the local coordinate ``s`` and the interval's ``1 / width`` (all ``[N, in]``)."""
        z = np.clip(h, self.lo.T, self.hi.T, out=self._buf("z", h.shape))
        z += self.shift.T
        iv = np.searchsorted(self.flat_knots, z.reshape(-1), side="right").reshape(h.shape)
        iv -= self.band
        row = np.add(iv, self.row_offset, out=self._buf("row", h.shape, np.intp))  # table row
        s = np.take(self.t_left, row, out=self._buf("s", h.shape))
        np.subtract(h, s, out=s)
        inv_w = np.take(self.inv_w, row, out=self._buf("inv_w", h.shape))
        s *= inv_w  # local coordinate in the interval (0 on the zero rows outside the knots)
        return iv, row, s, inv_w

    def locate(self, h: np.ndarray, derivative: bool):
        """Rows of ``W [in * P, out]`` and values (and d/dh) of the ``k + 1`` non-zero bases of every
        ``h [N, in]``: three arrays ``[k + 1, N, in]`` (bases first, so every operation below runs over
        contiguous ``[N, in]`` blocks; ``np.take`` rather than fancy indexing, which is ~10x slower).
        They are work arrays, overwritten by the next call."""
        k, N = self.k, h.shape[0]
        shape = (k + 1, N, self.n_in)
        iv, row, s, inv_w = self.interval(h)
        T = np.take(self.table, row, axis=2, out=self._buf("T", self.table.shape[:2] + h.shape))
        vals = self._buf("vals", shape)  # Horner's rule over [power, basis, N, in]
        np.multiply(T[k], s, out=vals)
        for p in range(k - 1, 0, -1):
            vals += T[p]
            vals *= s
        vals += T[0]
        dvals = None
        if derivative:  # d/ds of the same polynomials: Horner on p * T[p], p = k .. 1
            dvals = self._buf("dvals", shape)
            if k == 1:
                np.copyto(dvals, T[1])
            else:
                np.multiply(T[k], k * s, out=dvals)
                tmp = self._buf("tmp", shape)
                for p in range(k - 1, 1, -1):
                    dvals += np.multiply(T[p], p, out=tmp)
                    dvals *= s
                dvals += T[1]
            dvals *= inv_w
        # basis b = interval - k + r sits in slot k + 2 + b = iv + 1 + r of its feature
        wrow = np.add(iv, self.slot_offset, out=self._buf("wrow", shape, np.intp))
        return wrow, vals, dvals

    def features(self, h: np.ndarray) -> np.ndarray:
        """The dense expanded features ``Phi [N, in * P]`` (for the fixed first-layer input)."""
        N = h.shape[0]
        wrow, vals, _ = self.locate(h, False)
        phi = np.zeros((N, self.n_in * self.P), dtype=self.dtype)
        phi[np.arange(N).reshape(1, -1, 1), wrow] = vals
        b, _ = _activation(self.act, h, False)
        if b is not None:
            phi[:, self.base_rows] = b
        return phi

    def forward(self, h: np.ndarray, W: np.ndarray, derivative: bool):
        """``y = Phi(h) @ W [N, out]`` and what ``backward`` needs."""
        if self.n_out == 1:
            return self._forward_single(h, W, derivative)
        # several outputs: the dense expanded features and two matrix products, like nn.Linear
        wrow, vals, dvals = self.locate(h, derivative)
        N = h.shape[0]
        flat = np.add(wrow, (np.arange(N) * (self.n_in * self.P))[:, None], out=self._buf("flat", wrow.shape, np.intp))
        phi = self._buf("phi", (N, self.n_in * self.P))
        phi.fill(0.0)
        phi.reshape(-1)[flat.reshape(-1)] = vals.reshape(-1)
        b, db = _activation(self.act, h, derivative)
        if b is not None:
            phi[:, self.base_rows] = b
        return phi @ W, (flat, phi, dvals, db)

    def backward(self, g: np.ndarray, W: np.ndarray, cache):
        """``(dL/dW [in, P, out], dL/dh [N, in])`` from ``g = dL/dy [N, out]``."""
        if self.n_out == 1:
            return self._backward_single(g, W, cache)
        flat, phi, dvals, db = cache
        gW = (phi.T @ g).reshape(self.n_in, self.P, g.shape[1])  # the base column is in phi too
        gphi = g @ W.T  # [N, in * P]
        gsel = np.take(gphi.reshape(-1), flat, out=self._buf("gsel", flat.shape))  # at the k + 1 slots
        gsel *= dvals
        gh = gsel.sum(0)
        if db is not None:
            gh += gphi[:, self.base_rows] * db
        return gW, gh

    # A layer with one output needs no per-basis arrays: on every interval the edge's spline is one
    # polynomial of the local coordinate, sum_r W_r B_r(s) = sum_p c_p s^p, whose k + 1 coefficients
    # per (feature, interval) cost a tiny product with the table. The value and d/ds come from one
    # gather of those coefficients, and the weight gradient from the moments sum_n g_n s_n^p per
    # (feature, interval) contracted with the same table.

    def _forward_single(self, h: np.ndarray, W: np.ndarray, derivative: bool):
        k = self.k
        _, row, s, inv_w = self.interval(h)
        Wr = W[:, 0].take(self.table_wrow)  # [k + 1, rows]: the weights of each table row's bases
        coef = np.einsum("prt,rt->pt", self.table, Wr)  # [power, rows]
        C = np.take(coef, row, axis=1, out=self._buf("C", (k + 1,) + h.shape))  # [power, N, in]
        val = C[k] * s
        dval = None
        if derivative:  # Horner for the polynomial and its derivative together
            dval = C[k].copy()
        for p in range(k - 1, 0, -1):
            val += C[p]
            if derivative:
                dval *= s
                dval += val
            val *= s
        val += C[0]
        y = val.sum(1, keepdims=True)
        b, db = _activation(self.act, h, derivative)
        if b is not None:
            y += b @ W.take(self.base_rows, axis=0)
        if derivative:
            dval *= inv_w
        return y, (row, s, dval, b, db)

    def _backward_single(self, g: np.ndarray, W: np.ndarray, cache):
        row, s, dval, b, db = cache
        k, rows = self.k, self.table.shape[-1]
        size = self.n_in * self.P
        gs = np.broadcast_to(g, s.shape).copy()  # g_n s^p, p = 0, 1, ..
        moments = np.empty((k + 1, rows))
        flat_row = row.reshape(-1)
        for p in range(k + 1):
            if p:
                gs *= s
            moments[p] = np.bincount(flat_row, gs.reshape(-1), minlength=rows)
        g_table = np.einsum("prt,pt->rt", self.table, moments)  # dL/dW for each table row's bases
        gW = np.bincount(self.table_wrow.reshape(-1), g_table.reshape(-1), minlength=size)
        gW = gW.astype(self.dtype, copy=False).reshape(self.n_in, self.P, 1)
        gh = dval * g
        if b is not None:
            gW[:, 0] += b.T @ g
            gh += (g @ W.take(self.base_rows, axis=0).T) * db
        return gW, gh

    def weight(self, coef, sb, ss) -> np.ndarray:
        """``W [in * P, out]`` in the slot layout (the same combination as ``KANLayer.combined_weight``)."""
        k, n = self.k, self.n
        W = self.W
        if self.act != "zero":
            np.multiply(self.mask, sb, out=W[:, 0])
        np.multiply((self.mask * ss)[:, None, :], coef.transpose(0, 2, 1), out=W[:, k + 2 : k + 2 + n])
        return W.reshape(-1, self.n_out)


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
        self.x = x.detach().numpy()
        self.y = y.detach().to(x.dtype).numpy()
        self.dtype = self.x.dtype
        self.layers = [_Layer(layer, self.dtype) for layer in model.layers]
        # (layer index, attribute, shape, offset) of every trainable tensor, in a fixed order
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
        self.pack()  # grids, tables, first-layer features and frozen tensors: ready to evaluate

    # ---- parameters -----------------------------------------------------------------------------------

    def pack(self) -> np.ndarray:
        """The model's current trainable values as a flat vector (a copy)."""
        changed = [L.refresh() for L in self.layers]  # every layer (not any(): it would stop early)
        if changed[0] or self.phi0 is None:
            self.phi0 = self.layers[0].features(self.x)  # the input is fixed: once per grid
        v = np.empty(self.size, dtype=self.dtype)
        for li, name, _, off, end in self.slots:
            v[off:end] = getattr(self.model.layers[li], name).detach().numpy().reshape(-1)
        # frozen tensors (learn_scales=False) as arrays, and the trainable ones' places in v
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

    # ---- evaluation -------------------------------------------------------------------------------------

    def predict(self, x: np.ndarray, v: np.ndarray | None = None) -> np.ndarray:
        """The model's output on ``x [M, in]`` (NumPy) at ``v`` (default: the model's own weights)."""
        weights = self._weights(self.pack() if v is None else v)
        h = x
        for L, (coef, sb, ss) in zip(self.layers, weights):
            h = L.forward(h, L.weight(coef, sb, ss), derivative=False)[0]
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``predict`` for a CPU tensor at the model's weights: what ``fit`` uses on the test set. The
        test inputs do not change either, so their first-layer features are also kept per grid."""
        xn = x.detach().numpy()
        weights = self._weights(self.pack())
        key = (xn.__array_interface__["data"][0], xn.shape, x._version, self.layers[0].grid_key)
        if self._test_features is None or self._test_features[0] != key:
            self._test_features = (key, self.layers[0].features(xn))
        h = self._test_features[1] @ self.layers[0].weight(*weights[0])
        for L, (coef, sb, ss) in zip(self.layers[1:], weights[1:]):
            h = L.forward(h, L.weight(coef, sb, ss), derivative=False)[0]
        return torch.from_numpy(h)

    def __call__(self, v: np.ndarray) -> tuple[float, np.ndarray]:
        """``(mean squared error, its gradient with respect to v)`` on the training data."""
        self.evaluations += 1
        weights = self._weights(v)
        Ws, saved = [], []
        h = None
        for li, (L, (coef, sb, ss)) in enumerate(zip(self.layers, weights)):
            W = L.weight(coef, sb, ss)
            Ws.append(W)
            if li == 0:
                h = self.phi0 @ W
            else:
                h, cache = L.forward(h, W, derivative=True)
                saved.append(cache)
        r = h - self.y
        loss = float(np.vdot(r, r)) / r.size
        self.last_pred, self.last_loss = h, loss  # the last evaluation, as fit's closure records it
        g = r * (2.0 / r.size)  # dL/dy
        gW = [None] * len(self.layers)
        for li in range(len(self.layers) - 1, 0, -1):
            gW[li], g = self.layers[li].backward(g, Ws[li], saved[li - 1])
        gW[0] = (self.phi0.T @ g).reshape(self.layers[0].W.shape)
        grad = np.empty(self.size, dtype=self.dtype)
        for li, name, shape, off, end in self.slots:
            L, (coef, sb, ss) = self.layers[li], weights[li]
            out = grad[off:end].reshape(shape)
            gspl = gW[li][:, L.k + 2 : L.k + 2 + L.n].transpose(0, 2, 1)  # d/d(mask * ss * coef), [in, out, n]
            if name == "coef":
                np.multiply((L.mask * ss)[..., None], gspl, out=out)
            elif name == "scale_spline":
                np.multiply(L.mask, np.einsum("ion,ion->io", gspl, coef), out=out)
            else:
                np.multiply(L.mask, gW[li][:, 0], out=out)
        return loss, grad
