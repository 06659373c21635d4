"""KAN sequence models (lessons 09-10): recurrent cells with KAN gates, and a transformer whose
feed-forward block can be a KAN.

Recurrent models, shaped like ``torch.nn``'s:

* :class:`KANGRUCell`: a GRU cell whose gate pre-activations are KAN layers of ``[x, h]`` instead of
  linear maps. ``forward(x [B, in], h [B, H]) -> h' [B, H]``, like ``torch.nn.GRUCell``.
* :class:`KANLSTMCell`: a TKAN-style LSTM cell (Genet & Inzirillo 2024): LSTM input/forget/candidate
  gates, and an output gate read from a KAN layer. ``forward(x, (h, c)) -> (h', c')``.
* :class:`KANGRU`: the cell run over a sequence, like ``torch.nn.GRU``: ``forward(x, h_0=None) ->
  (output, h_n)``, optional ``batch_first`` and ``num_layers``.
* :func:`matched_gru`: a ``torch.nn.GRU`` with as many parameters as a :class:`KANGRU`, and
  :class:`SequenceRegressor`, a recurrent encoder plus a linear head on its last output, for either.

Transformer, in the shape of nanoGPT (Karpathy):

* :class:`CausalSelfAttention`, :class:`MLPFeedForward`, :class:`KANFeedForward` and
  :class:`TransformerBlock` (pre-norm, ``ffn="mlp" | "kan"``);
* :class:`CharLM`, a character-level language model with ``generate``; ``ffn="kan"`` sizes the KAN
  feed-forward so the model has as many parameters as the ``ffn="mlp"`` one (within 5%);
* :func:`evaluate_bpc` and :func:`train_char_lm`, the training loop lesson 10 uses.

**Keeping KAN inputs on the grid.** A B-spline basis is zero outside its extended knot vector, so an
input far outside ``grid_range`` sees only the SiLU residual of its edges. The models here keep every
KAN input in range by construction, with no clamping:

* in the recurrent cells the hidden state of a GRU/LSTM lies in ``(-1, 1)`` (a convex mix of ``tanh``
  values and the previous state, from ``h_0 = 0``), exactly the default grid ``(-1, 1)``. The inputs
  ``x`` are the caller's to scale (lesson 09 maps each series to ``[-1, 1]`` with training statistics);
* in :class:`KANFeedForward` each KAN layer reads a LayerNorm'd vector (zero mean, unit variance over
  its features, no learned affine part, so it cannot drift away) on the grid ``(-3, 3)``, which holds
  ~99.7% of a unit Gaussian. Squashing with ``tanh`` instead would bound it too, but it flattens the
  tails onto a few knots; a LayerNorm is what the block would apply anyway.

**Initial base weights.** ``KANLayer`` starts every edge near the same positive SiLU residual, which
suits the tiny KANs of the earlier lessons. A gate or a feed-forward layer needs its units to start
different (like ``nn.Linear``'s random init), so the layers here use ``scale_base_mu=0`` and
``scale_base_sigma=1``: ``w_b ~ U(-1, 1) / sqrt(in)``, the bound of ``nn.Linear``'s init.
"""

from __future__ import annotations

import math
import numbers
import time

import torch
import torch.nn.functional as F
from torch import nn

from .layers import KANLayer
from .models import count_parameters

__all__ = [
    "KANGRUCell",
    "KANLSTMCell",
    "KANGRU",
    "gru_parameter_count",
    "kan_gru_parameter_count",
    "matched_gru",
    "SequenceRegressor",
    "CausalSelfAttention",
    "MLPFeedForward",
    "KANFeedForward",
    "TransformerBlock",
    "kan_ffn_hidden",
    "CharLM",
    "evaluate_bpc",
    "train_char_lm",
]

#: KANLayer arguments the recurrent and feed-forward layers use unless told otherwise (see the module doc)
KAN_DEFAULTS = {"scale_base_mu": 0.0, "scale_base_sigma": 1.0}


def _check_pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_tensor(name: str, x, floating: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def _kan(in_features: int, out_features: int, kan_kwargs: dict) -> KANLayer:
    return KANLayer(in_features, out_features, **{**KAN_DEFAULTS, **kan_kwargs})


def _kan_layer_parameters(in_features: int, out_features: int, grid_size: int, spline_order: int) -> int:
    """Trainable parameters of ``KANLayer(in, out)``: ``G + k`` coefficients, ``w_b`` and ``w_s`` per edge."""
    return in_features * out_features * (grid_size + spline_order + 2)


# ----------------------------------------------------------------------------------------------------
# recurrent cells
# ----------------------------------------------------------------------------------------------------


class KANGRUCell(nn.Module):
    """A GRU cell with KAN gates: ``x [B, input_size]``, ``h [B, hidden_size]`` -> ``h' [B, hidden_size]``.

    With ``[x, h]`` the concatenated input and ``Phi_r, Phi_z, Phi_n`` KAN layers,

        r = sigmoid(Phi_r[x, h]),  z = sigmoid(Phi_z[x, h]),
        n = tanh(Phi_n^x(x) + r * Phi_n^h(h)),   h' = (1 - z) * n + z * h.

    A KAN layer adds one learnable function per input, so a KAN layer on ``[x, h]`` *is* the sum of a
    KAN layer on ``x`` and one on ``h``: the cell holds ``input_kan: KANLayer(input_size, 3H)`` and
    ``hidden_kan: KANLayer(H, 3H)`` (gates in the order r, z, n, as ``torch.nn.GRUCell``), which lets
    ``r`` scale the hidden part of the candidate exactly where ``torch.nn.GRUCell`` puts it, and lets
    :class:`KANGRU` compute the input part for all time steps in one call. The KAN layers have no
    bias: a spline that is constant over its grid is one.

    Args:
        input_size, hidden_size: ``in`` and ``H``.
        grid_size, spline_order, grid_range, **kan_kwargs: passed to both ``KANLayer`` (defaults as
            ``KANLayer``, except the random-sign base weights of :data:`KAN_DEFAULTS`). The hidden state
            stays in ``(-1, 1)``, the default grid; scale ``x`` into ``grid_range`` too.

    ``forward(x, h=None)``: ``x [B, input_size]`` or unbatched ``[input_size]``; ``h`` of the matching
    ``[B, hidden_size]`` / ``[hidden_size]`` shape, zeros if None.
    """

    def __init__(self, input_size: int, hidden_size: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range=(-1.0, 1.0), **kan_kwargs):
        super().__init__()
        self.input_size = _check_pos_int("input_size", input_size)
        self.hidden_size = _check_pos_int("hidden_size", hidden_size)
        kw = {"grid_size": grid_size, "spline_order": spline_order, "grid_range": grid_range, **kan_kwargs}
        self.input_kan = _kan(self.input_size, 3 * self.hidden_size, kw)
        self.hidden_kan = _kan(self.hidden_size, 3 * self.hidden_size, kw)

    @property
    def grid_size(self) -> int:
        return self.input_kan.grid_size

    @property
    def spline_order(self) -> int:
        return self.input_kan.spline_order

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, grid_size={self.grid_size}, spline_order={self.spline_order}"

    def input_gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input part of the gates, ``x [..., in]`` -> ``(r and z [..., 2H], n [..., H])``."""
        return self.input_kan(x).split([2 * self.hidden_size, self.hidden_size], dim=-1)

    def step(self, gi_rz: torch.Tensor, gi_n: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One update from the input gates (:meth:`input_gates`, ``[B, 2H]`` and ``[B, H]``) and ``h [B, H]``."""
        gh_rz, gh_n = self.hidden_kan(h).split([2 * self.hidden_size, self.hidden_size], dim=-1)
        r, z = torch.sigmoid(gi_rz + gh_rz).chunk(2, dim=-1)
        n = torch.tanh(gi_n + r * gh_n)
        return n + z * (h - n)  # = (1 - z) n + z h

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        x, h, unbatched = _cell_inputs(self, x, h)
        h = self.step(*self.input_gates(x), h)
        return h.squeeze(0) if unbatched else h


class KANLSTMCell(nn.Module):
    """A TKAN-style LSTM cell: ``x [B, input_size]``, ``(h, c)`` each ``[B, hidden_size]`` -> ``(h', c')``.

    TKAN (Genet & Inzirillo 2024, arXiv 2405.07344) keeps the LSTM's input, forget and candidate gates
    and computes the output gate from KAN sub-layers:

        i, f = sigmoid(W_{i,f} [x, h] + b),   g = tanh(W_g [x, h] + b),   c' = f * c + i * g,
        o = sigmoid(W_o Phi([x, h]) + b_o),    h' = o * tanh(c').

    TKAN's sub-layers keep their own small recurrent "sub-memories"; here the KAN layer ``Phi`` reads
    ``[x, h]`` directly, so the state is the ``(h, c)`` pair of ``torch.nn.LSTMCell`` (a simplification).

    Args:
        input_size, hidden_size: ``in`` and ``H``.
        kan_size: outputs of ``Phi`` (default ``H``).
        grid_size, spline_order, grid_range, **kan_kwargs: passed to ``KANLayer``. ``h`` lies in
            ``(-1, 1)``; scale ``x`` into ``grid_range`` too.

    ``forward(x, state=None)``: ``x [B, in]`` or unbatched ``[in]``; ``state = (h, c)`` or None (zeros).
    """

    def __init__(self, input_size: int, hidden_size: int, kan_size: int | None = None, grid_size: int = 5,
                 spline_order: int = 3, grid_range=(-1.0, 1.0), **kan_kwargs):
        super().__init__()
        self.input_size = _check_pos_int("input_size", input_size)
        self.hidden_size = _check_pos_int("hidden_size", hidden_size)
        self.kan_size = self.hidden_size if kan_size is None else _check_pos_int("kan_size", kan_size)
        n_in = self.input_size + self.hidden_size
        self.gates = nn.Linear(n_in, 3 * self.hidden_size)  # i, f, g
        self.kan = _kan(n_in, self.kan_size, {"grid_size": grid_size, "spline_order": spline_order,
                                              "grid_range": grid_range, **kan_kwargs})
        self.output_gate = nn.Linear(self.kan_size, self.hidden_size)
        with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
            self.gates.bias[self.hidden_size : 2 * self.hidden_size].fill_(1.0)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, kan_size={self.kan_size}"

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:
            h = c = None
        elif isinstance(state, (tuple, list)) and len(state) == 2:
            h, c = state
        else:
            raise ValueError(f"state must be a tuple (h, c) or None, got {type(state).__name__}")
        x_in = x
        x, h, unbatched = _cell_inputs(self, x, h)
        c = _check_state(self, "c", c, x_in)
        xh = torch.cat([x, h], dim=-1)
        i, f, g = self.gates(xh).chunk(3, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        o = torch.sigmoid(self.output_gate(self.kan(xh)))
        h = o * torch.tanh(c)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)


def _cell_inputs(cell, x, h, name: str = "h"):
    """Check a cell's ``x`` and one state tensor; returns ``(x [B, in], h [B, H], unbatched)``."""
    x = _check_tensor("x", x)
    if x.dim() not in (1, 2) or x.shape[-1] != cell.input_size:
        raise ValueError(f"{type(cell).__name__}: x must have shape [B, input_size={cell.input_size}] or "
                         f"[input_size={cell.input_size}], got {tuple(x.shape)}")
    unbatched = x.dim() == 1
    x2 = x.unsqueeze(0) if unbatched else x
    return x2, _check_state(cell, name, h, x), unbatched


def _check_state(cell, name: str, h, x: torch.Tensor) -> torch.Tensor:
    """``h`` as ``[B, H]`` for a cell input ``x`` of shape ``[B, in]`` (or ``[in]``); zeros if None."""
    unbatched, H = x.dim() == 1, cell.hidden_size
    B = 1 if unbatched else x.shape[0]
    if h is None:
        return x.new_zeros(B, H)
    h = _check_tensor(name, h)
    want = (H,) if unbatched else (B, H)
    if tuple(h.shape) != want:
        shape = f"[hidden_size={H}]" if unbatched else f"[B={B}, hidden_size={H}]"
        raise ValueError(f"{type(cell).__name__}: {name} must have shape {shape} to go with x of shape "
                         f"{tuple(x.shape)}, got {tuple(h.shape)}")
    return h.unsqueeze(0) if unbatched else h


# ----------------------------------------------------------------------------------------------------
# a sequence of steps, like torch.nn.GRU
# ----------------------------------------------------------------------------------------------------


class KANGRU(nn.Module):
    """A multi-layer KAN-GRU over a sequence, used like ``torch.nn.GRU``.

    Args:
        input_size, hidden_size: features in and hidden units per layer.
        num_layers: stacked :class:`KANGRUCell`; layer ``l > 0`` reads layer ``l - 1``'s outputs.
        batch_first: ``x`` and ``output`` are ``[B, T, *]`` instead of ``[T, B, *]``.
        grid_size, spline_order, grid_range, **kan_kwargs: passed to every cell.

    ``forward(x, h_0=None) -> (output, h_n)``:

    * ``x``: ``[T, B, input_size]`` (``[B, T, input_size]`` if ``batch_first``), or unbatched ``[T, input_size]``;
    * ``h_0``: ``[num_layers, B, hidden_size]`` (``[num_layers, hidden_size]`` unbatched), zeros if None;
    * ``output``: the last layer's hidden state at every step, ``[T, B, hidden_size]`` (or batch first);
    * ``h_n``: every layer's final hidden state, ``[num_layers, B, hidden_size]``.

    Each layer's input gates depend only on its input sequence, so they are computed for all ``T``
    steps in one ``KANLayer`` call; only the hidden part runs step by step.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False,
                 grid_size: int = 5, spline_order: int = 3, grid_range=(-1.0, 1.0), **kan_kwargs):
        super().__init__()
        self.input_size = _check_pos_int("input_size", input_size)
        self.hidden_size = _check_pos_int("hidden_size", hidden_size)
        self.num_layers = _check_pos_int("num_layers", num_layers)
        self.batch_first = bool(batch_first)
        self.cells = nn.ModuleList(
            KANGRUCell(self.input_size if l == 0 else self.hidden_size, self.hidden_size, grid_size=grid_size,
                       spline_order=spline_order, grid_range=grid_range, **kan_kwargs)
            for l in range(self.num_layers)
        )

    @property
    def grid_size(self) -> int:
        return self.cells[0].grid_size

    @property
    def spline_order(self) -> int:
        return self.cells[0].spline_order

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"batch_first={self.batch_first}, grid_size={self.grid_size}")

    def forward(self, x: torch.Tensor, h_0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = _check_tensor("x", x)
        L, H = self.num_layers, self.hidden_size
        layout = "[B, T, input_size" if self.batch_first else "[T, B, input_size"
        if x.dim() not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(f"KANGRU: x must have shape {layout}={self.input_size}] (batch_first="
                             f"{self.batch_first}) or unbatched [T, input_size={self.input_size}], "
                             f"got {tuple(x.shape)}")
        shape_in, unbatched = tuple(x.shape), x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise ValueError(f"KANGRU: x must have at least one time step, got shape {tuple(x.shape)}")
        if h_0 is None:
            h_0 = x.new_zeros(L, B, H)
        else:
            h_0 = _check_tensor("h_0", h_0)
            want = (L, H) if unbatched else (L, B, H)
            if tuple(h_0.shape) != want:
                shape = (f"[num_layers={L}, hidden_size={H}]" if unbatched
                         else f"[num_layers={L}, B={B}, hidden_size={H}]")
                raise ValueError(f"KANGRU: h_0 must have shape {shape} for x of shape "
                                 f"{shape_in}, got {tuple(h_0.shape)}")
            if unbatched:
                h_0 = h_0.unsqueeze(1)
        seq, h_n = x, []
        for cell, h in zip(self.cells, h_0):
            gi_rz, gi_n = cell.input_gates(seq)  # [T, B, 2H] and [T, B, H]: all steps at once
            outs = []
            # unbind, not gi_rz[t]: indexing would make backward add T full-size zero tensors (O(T^2))
            for rz_t, n_t in zip(gi_rz.unbind(0), gi_n.unbind(0)):
                h = cell.step(rz_t, n_t, h)
                outs.append(h)
            seq = torch.stack(outs)
            h_n.append(h)
        h_n = torch.stack(h_n)
        if unbatched:
            return seq.squeeze(1), h_n.squeeze(1)
        return (seq.transpose(0, 1) if self.batch_first else seq), h_n


def gru_parameter_count(input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True) -> int:
    """Parameters of ``torch.nn.GRU``: per layer ``3H (in + H)`` weights and ``6H`` biases (``in = H`` above 0)."""
    total = 0
    for l in range(num_layers):
        n_in = input_size if l == 0 else hidden_size
        total += 3 * hidden_size * (n_in + hidden_size) + (6 * hidden_size if bias else 0)
    return total


def kan_gru_parameter_count(input_size: int, hidden_size: int, num_layers: int = 1, grid_size: int = 5,
                            spline_order: int = 3) -> int:
    """Parameters of :class:`KANGRU`: per layer ``3H (in + H) (G + k + 2)`` (``in = H`` above layer 0)."""
    total = 0
    for l in range(num_layers):
        n_in = input_size if l == 0 else hidden_size
        total += _kan_layer_parameters(n_in + hidden_size, 3 * hidden_size, grid_size, spline_order)
    return total


def matched_gru(target, input_size: int | None = None, num_layers: int | None = None,
                batch_first: bool | None = None, head_out: int = 0, tol: float = 0.05) -> nn.GRU:
    """A ``torch.nn.GRU`` with (nearly) as many parameters as ``target``, a :class:`KANGRU` or a number.

    The hidden size is the one whose parameter count is closest to the target's; ``input_size``,
    ``num_layers`` and ``batch_first`` default to the KANGRU's. A KAN edge carries ``G + k + 2``
    parameters where a GRU weight is one, so the GRU gets about ``sqrt(G + k + 2)`` times the hidden
    units (about 3.2x at G = 5, k = 3).

    ``head_out > 0`` matches the two *models* instead: each recurrence plus a ``Linear(H, head_out)``
    read-out (as in :class:`SequenceRegressor`), whose size grows with the GRU's larger ``H``.

    Raises:
        ValueError: if no hidden size is within ``tol`` (relative) of the target.
    """
    if isinstance(head_out, bool) or not isinstance(head_out, numbers.Integral) or head_out < 0:
        raise ValueError(f"head_out must be an int >= 0, got {head_out!r}")
    head = lambda H: (H + 1) * head_out if head_out else 0
    if isinstance(target, KANGRU):
        n_target = count_parameters(target) + head(target.hidden_size)
        input_size = target.input_size if input_size is None else input_size
        num_layers = target.num_layers if num_layers is None else num_layers
        batch_first = target.batch_first if batch_first is None else batch_first
    elif isinstance(target, numbers.Integral) and not isinstance(target, bool) and target > 0:
        n_target = int(target)
    else:
        raise TypeError(f"target must be a KANGRU or a positive parameter count, got {type(target).__name__} "
                        f"{target!r}")
    if input_size is None:
        raise ValueError("input_size is needed when target is a number")
    input_size = _check_pos_int("input_size", input_size)
    num_layers = _check_pos_int("num_layers", 1 if num_layers is None else num_layers)
    best = None
    for H in range(1, 1 << 14):
        n = gru_parameter_count(input_size, H, num_layers) + head(H)
        if best is None or abs(n - n_target) < abs(best[1] - n_target):
            best = (H, n)
        if n > n_target:
            break
    H, n = best
    if abs(n - n_target) / n_target > tol:
        what = f" with a Linear(H, {head_out}) head" if head_out else ""
        raise ValueError(f"no torch.nn.GRU({input_size}, H, num_layers={num_layers}){what} has {n_target} "
                         f"parameters within {tol:.0%}: the closest is H={H} with {n}")
    return nn.GRU(input_size, H, num_layers=num_layers, batch_first=bool(batch_first))


class SequenceRegressor(nn.Module):
    """A recurrent encoder and a linear head on its last output: ``x [B, T, in]`` -> ``[B, out_features]``.

    ``rnn`` is any module used like ``torch.nn.GRU(batch_first=True)``: ``rnn(x) -> (output [B, T, H], h_n)``,
    e.g. ``torch.nn.GRU``, ``torch.nn.LSTM`` or :class:`KANGRU`, so both models of a comparison share
    everything but the recurrence. ``x`` may also be ``[B, T]`` (one feature, as ``make_windows`` gives).
    """

    def __init__(self, rnn: nn.Module, out_features: int = 1):
        super().__init__()
        if not getattr(rnn, "batch_first", False):
            raise ValueError(f"rnn must be batch_first (inputs [B, T, in]), got {rnn!r}")
        self.rnn = rnn
        self.out_features = _check_pos_int("out_features", out_features)
        self.head = nn.Linear(rnn.hidden_size, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_tensor("x", x)
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        if x.dim() != 3 or x.shape[-1] != self.rnn.input_size:
            raise ValueError(f"SequenceRegressor: x must have shape [B, T, input_size={self.rnn.input_size}] "
                             f"(or [B, T] for one feature), got {tuple(x.shape)}")
        output, _ = self.rnn(x)
        return self.head(output[:, -1])


# ----------------------------------------------------------------------------------------------------
# transformer
# ----------------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees only positions ``<= t``: ``[B, T, d] -> [B, T, d]``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, float(dropout)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)  # [B, h, T, d_h]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class MLPFeedForward(nn.Module):
    """The transformer's usual feed-forward block ``Linear(d, h) -> GELU -> Linear(h, d)``, ``[..., d] -> [..., d]``."""

    def __init__(self, d_model: int, hidden: int | None = None):
        super().__init__()
        self.hidden = 4 * d_model if hidden is None else _check_pos_int("hidden", hidden)
        self.fc = nn.Linear(d_model, self.hidden)
        self.proj = nn.Linear(self.hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class KANFeedForward(nn.Module):
    """A two-layer KAN feed-forward block ``[..., d] -> [..., d]``: ``KAN(d, h)``, LayerNorm, ``KAN(h, d)``.

    Each KAN layer reads a normalised vector on the grid ``grid_range`` (default ``(-3, 3)``): the block
    input comes from the transformer's pre-norm, and the hidden vector goes through a LayerNorm without
    learned affine parameters (the KAN's splines can scale and shift it). Parameters:
    ``2 d h (G + k + 2)``; :func:`kan_ffn_hidden` picks ``h`` to match an MLP block.
    """

    def __init__(self, d_model: int, hidden: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range=(-3.0, 3.0), **kan_kwargs):
        super().__init__()
        self.d_model, self.hidden = _check_pos_int("d_model", d_model), _check_pos_int("hidden", hidden)
        kw = {"grid_size": grid_size, "spline_order": spline_order, "grid_range": grid_range, **kan_kwargs}
        self.fc = _kan(self.d_model, self.hidden, kw)
        self.norm = nn.LayerNorm(self.hidden, elementwise_affine=False)
        self.proj = _kan(self.hidden, self.d_model, kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.fc(x)))


def kan_ffn_hidden(d_model: int, mlp_hidden: int | None = None, grid_size: int = 5, spline_order: int = 3) -> int:
    """Hidden width ``h`` of a :class:`KANFeedForward` with as many parameters as ``MLPFeedForward(d, mlp_hidden)``.

    The MLP block has ``2 d m + m + d`` parameters, the KAN block ``2 d h (G + k + 2)``; ``h`` is the
    nearest integer (at least 1), about ``0.4 d`` for ``m = 4 d`` at G = 5, k = 3.
    """
    d = _check_pos_int("d_model", d_model)
    m = 4 * d if mlp_hidden is None else _check_pos_int("mlp_hidden", mlp_hidden)
    mlp = 2 * d * m + m + d
    return max(1, round(mlp / (2 * d * (grid_size + spline_order + 2))))


FFN_KINDS = ("mlp", "kan")


class TransformerBlock(nn.Module):
    """A pre-norm transformer block ``[B, T, d] -> [B, T, d]``:

        x = x + Attention(LayerNorm(x)),   x = x + FFN(LayerNorm(x)),

    with causal self-attention and ``ffn="mlp"`` (:class:`MLPFeedForward`, hidden ``ffn_hidden``,
    default ``4 d``) or ``ffn="kan"`` (:class:`KANFeedForward`, hidden ``ffn_hidden``, default
    :func:`kan_ffn_hidden`, i.e. as many parameters as the MLP block). ``kan_kwargs`` go to the KAN layers.
    """

    def __init__(self, d_model: int, n_heads: int, ffn: str = "mlp", ffn_hidden: int | None = None,
                 dropout: float = 0.0, **kan_kwargs):
        super().__init__()
        if ffn not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {ffn!r}")
        self.ffn_kind = ffn
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        if ffn == "mlp":
            if kan_kwargs:
                raise ValueError(f"KAN arguments {sorted(kan_kwargs)} given with ffn='mlp'")
            self.ffn = MLPFeedForward(d_model, ffn_hidden)
        else:
            g, k = kan_kwargs.get("grid_size", 5), kan_kwargs.get("spline_order", 3)
            hidden = kan_ffn_hidden(d_model, None, g, k) if ffn_hidden is None else ffn_hidden
            self.ffn = KANFeedForward(d_model, hidden, **kan_kwargs)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ffn(self.ln2(x)))


class CharLM(nn.Module):
    """A small GPT-style character model: ``idx [B, T]`` (long, ``T <= context``) -> ``logits [B, T, vocab_size]``.

    Token and learned position embeddings, ``n_layers`` :class:`TransformerBlock`, a final LayerNorm and a
    linear read-out tied to the token embedding (as GPT-2 and nanoGPT). ``ffn="kan"`` sizes each KAN
    feed-forward block (:func:`kan_ffn_hidden`) so the model has as many parameters as ``ffn="mlp"``
    (within 5%; the blocks differ only in the feed-forward part).

    Args:
        vocab_size, d_model, n_layers, n_heads: sizes; ``d_model`` divisible by ``n_heads``.
        context: the longest sequence the model reads (position embeddings).
        ffn: ``"mlp"`` or ``"kan"``; ffn_hidden: override the hidden width of every feed-forward block.
        dropout: on attention weights and residual branches (0 by default).
        **kan_kwargs: ``KANLayer`` arguments (``grid_size``, ``spline_order``, ``grid_range``, ...), for ``ffn="kan"``.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, context: int,
                 ffn: str = "mlp", ffn_hidden: int | None = None, dropout: float = 0.0, **kan_kwargs):
        super().__init__()
        self.vocab_size = _check_pos_int("vocab_size", vocab_size)
        self.d_model = _check_pos_int("d_model", d_model)
        self.n_layers = _check_pos_int("n_layers", n_layers)
        self.n_heads = _check_pos_int("n_heads", n_heads)
        self.context = _check_pos_int("context", context)
        self.ffn = ffn
        self.tok = nn.Embedding(self.vocab_size, self.d_model)
        self.pos = nn.Embedding(self.context, self.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(self.d_model, self.n_heads, ffn, ffn_hidden, dropout, **kan_kwargs)
                                    for _ in range(self.n_layers))
        self.ln_f = nn.LayerNorm(self.d_model)
        self.head = nn.Linear(self.d_model, self.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.drop = nn.Dropout(dropout)
        with torch.no_grad():  # GPT-2's small embedding init; nn.Embedding's N(0, 1) makes the first logits huge
            self.tok.weight.normal_(0.0, 0.02)
            self.pos.weight.normal_(0.0, 0.02)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, context={self.context}, ffn={self.ffn!r}"

    def _check_idx(self, idx, name: str = "idx", max_len: int | None = None) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"{name} must be a LongTensor [B, T], got {type(idx).__name__}")
        if idx.dtype != torch.long:
            raise TypeError(f"{name} must be a LongTensor [B, T] of token ids, got dtype {idx.dtype}")
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"{name} must have shape [B, T] with T >= 1, got {tuple(idx.shape)}")
        if max_len is not None and idx.shape[1] > max_len:
            raise ValueError(f"{name} must have shape [B, T] with T <= context={max_len}, got {tuple(idx.shape)}")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.vocab_size):
            raise ValueError(f"{name} holds ids in [{int(idx.min())}, {int(idx.max())}], outside the vocabulary "
                             f"[0, {self.vocab_size})")
        return idx

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        idx = self._check_idx(idx, max_len=self.context)
        T = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> torch.Tensor:
        """Sample ``n`` more tokens after ``idx [B, T]``; returns ``[B, T + n]`` (``idx`` first).

        Each step reads the last ``context`` tokens, divides the last logits by ``temperature``, keeps
        only the ``top_k`` most likely tokens (all if None) and samples one. ``seed`` seeds a private
        ``torch.Generator`` (the same seed gives the same text; the global RNG is left alone); None draws
        from the global RNG. The model is put in eval mode for sampling and then back in its mode.
        """
        idx = self._check_idx(idx)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
        gen = None
        if seed is not None:
            gen = torch.Generator(device=idx.device)
            gen.manual_seed(int(seed))
        was_training = self.training
        self.eval()
        try:
            for _ in range(int(n)):
                logits = self(idx[:, -self.context :])[:, -1, :] / temperature
                if top_k is not None and top_k < self.vocab_size:
                    kth = torch.topk(logits, int(top_k), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits.float(), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen)
                idx = torch.cat([idx, nxt], dim=1)
        finally:
            self.train(was_training)
        return idx


# ----------------------------------------------------------------------------------------------------
# training a CharLM (lesson 10)
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_bpc(model: CharLM, data: torch.Tensor, context: int | None = None, batch_size: int = 64,
                 max_chars: int | None = None) -> float:
    """Bits per character of ``model`` on a 1-D LongTensor ``data``: mean next-character cross-entropy / ln 2.

    ``data`` is cut into non-overlapping blocks of ``context + 1`` characters (the last partial block
    dropped; ``max_chars`` keeps only the first so many characters); every block predicts its last
    ``context`` characters from the ones before them, so the result is deterministic.
    """
    context = model.context if context is None else _check_pos_int("context", context)
    data = _check_tensor("data", data, floating=False)
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D LongTensor of token ids, got shape {tuple(data.shape)}")
    if max_chars is not None:
        data = data[:max_chars]
    n_blocks = (len(data) - 1) // context
    if n_blocks < 1:
        raise ValueError(f"data of {len(data)} characters is too short for context={context}")
    idx = data[: n_blocks * context + 1]
    x = idx[:-1].view(n_blocks, context)
    y = idx[1:].view(n_blocks, context)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for s in range(0, n_blocks, batch_size):
            logits = model(x[s : s + batch_size])
            total += F.cross_entropy(logits.flatten(0, 1), y[s : s + batch_size].flatten(), reduction="sum").item()
    finally:
        model.train(was_training)
    return total / (n_blocks * context) / math.log(2)


def train_char_lm(model: CharLM, corpus, steps: int, batch_size: int = 32, lr: float = 3e-3,
                  seed: int = 0, eval_every: int | None = None, eval_chars: int | None = None,
                  warmup: int = 20, progress: bool = False) -> dict:
    """Train ``model`` on random blocks of ``corpus.train_data`` with AdamW and a cosine learning rate.

    Args:
        corpus: a :class:`kanedu.data.CharCorpus` (``get_batch``, ``val_data``).
        steps, batch_size, lr: optimizer steps, blocks per step (``model.context`` characters each), peak
            learning rate (linear warm-up over ``warmup`` steps, then cosine decay to ``lr / 10``).
        seed: seeds the batch order (a private generator): the same seed gives two models the same batches.
        eval_every: also evaluate validation bits per character every this many steps (and at the end).
        eval_chars: evaluate on the first so many validation characters (default: all of them).
        progress: show a tqdm bar.

    Returns:
        ``{"step": [...], "train_loss": [...] (nats/char, every step), "eval_step": [...], "val_bpc": [...],
        "ms_per_step": float (median forward + backward + update, evaluation excluded)}``.
    """
    from tqdm.auto import tqdm

    steps = _check_pos_int("steps", steps)
    gen = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)

    def lr_at(step):  # step is 0-based
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * frac))

    hist = {"step": [], "train_loss": [], "eval_step": [], "val_bpc": []}
    times = []
    model.train()
    for step in tqdm(range(steps), desc=f"train ffn={model.ffn}", disable=not progress, leave=False):
        x, y = corpus.get_batch("train", batch_size, model.context, generator=gen)
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"train_char_lm: the loss became {loss.item()} at step {step + 1}")
        hist["step"].append(step + 1)
        hist["train_loss"].append(loss.item())
        if (eval_every and (step + 1) % eval_every == 0) or step + 1 == steps:
            hist["eval_step"].append(step + 1)
            hist["val_bpc"].append(evaluate_bpc(model, corpus.val_data, max_chars=eval_chars))
    hist["ms_per_step"] = 1e3 * sorted(times)[len(times) // 2]
    return hist
