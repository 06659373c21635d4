"""KAN and MLP models, parameter matching and cost estimates (lessons 03-06, 08).

``KAN([2, 5, 1])`` stacks ``KANLayer(2, 5)`` and ``KANLayer(5, 1)``. Besides the forward pass it offers
the operations of the KAN paper (Liu et al. 2024, arXiv 2404.19756):

* ``update_grid(x)``: adapt every layer's grid to the activations that ``x`` produces;
* ``refine(G, x)``: grid extension, returning a new model with ``G`` intervals per spline;
* ``regularization_loss(x)``: the paper's sparsity penalty (L1 of edge scales + entropy, as pykan computes it);
* ``attribution(x)`` and ``prune(x)``: score nodes/edges by how much of the output flows through
  them and return a smaller KAN;
* multiplication nodes (KAN 2.0): ``KAN([2, [0, 1], 1])`` has a hidden node that multiplies two sums.

All of them keep the learned function (grid operations to within a least-squares refit; pruning
exactly, up to the paths it removes).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import sympy
import torch
from torch import nn

from . import plot as _plot
from . import symbolic as _symbolic
from . import train as _train
from ._checks import integer, is_integer
from .activations import BASE_ACTIVATIONS, activation_name
from .layers import KANLayer

__all__ = ["KAN", "MLP", "count_parameters", "matched_mlp", "mlp_parameter_count", "flops_per_sample"]


def _check_widths(widths) -> list[int]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) < 2:
        raise ValueError(f"widths must be a list of at least 2 positive ints, e.g. [2, 5, 1], got {widths!r}")
    out = []
    for i, w in enumerate(widths):
        if not is_integer(w) or w < 1:
            raise ValueError(f"widths[{i}] must be a positive int, got {w!r} in {list(widths)}")
        out.append(int(w))
    return out


# pykan's constructor arguments about its own file writing and bookkeeping: accepted, without effect
_PYKAN_IGNORED = {"auto_save", "ckpt_path", "save_act", "symbolic_enabled", "first_init", "state_id", "round",
                  "affine_trainable", "sparse_init"}


def _pykan_alias(name: str, value, alias: str, alias_value, default=None):
    """kanedu's argument ``name`` or pykan's ``alias`` for it (not both with different values)."""
    if alias_value is None:
        return value
    if value is not None and value != default and value != alias_value:
        raise TypeError(f"KAN() got both {name}={value!r} and pykan's {alias}={alias_value!r}; pass one")
    return alias_value


def _check_kan_widths(widths) -> tuple[list[int], list[int]]:
    """``(n_sum, n_mult)`` per level from ``[2, 5, 1]`` or KAN 2.0's ``[2, [3, 2], 1]`` (3 sum + 2 mult nodes)."""
    example = "e.g. [2, 5, 1], or [2, [3, 2], 1] for 3 sum and 2 multiplication nodes"
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) < 2:
        raise ValueError(f"widths must be a list of at least 2 entries, {example}; got {widths!r}")
    n_sum, n_mult = [], []
    for i, w in enumerate(widths):
        if isinstance(w, Sequence) and not isinstance(w, (str, bytes)) and len(w) == 2:
            a, m = w
        else:
            a, m = w, 0
        ok = all(is_integer(v) and v >= 0 for v in (a, m)) and a + m >= 1
        if not ok:
            raise ValueError(f"widths[{i}] must be a positive int or [n_sum, n_mult] with n_sum + n_mult >= 1, "
                             f"got {w!r} in {list(widths)} ({example})")
        if i == 0 and m:
            raise ValueError(f"widths[0] counts the inputs, which cannot be multiplication nodes; got {w!r}")
        n_sum.append(int(a))
        n_mult.append(int(m))
    return n_sum, n_mult


class KAN(nn.Module):
    """A Kolmogorov-Arnold network ``[..., widths[0]] -> [..., widths[-1]]``.

    Args:
        widths: nodes per layer, e.g. ``[2, 5, 1]``. A level may also be ``[n_sum, n_mult]`` (KAN 2.0,
            Liu et al. 2024b, arXiv 2408.10205): ``n_sum`` nodes add their incoming edges as usual, and
            each of the ``n_mult`` multiplication nodes multiplies ``mult_arity`` such sums ("subnodes"),
            so ``KAN([2, [0, 1], 1])`` can represent ``x1 * x2`` exactly with one edge per input. The
            layer into a level then has ``n_sum + mult_arity * n_mult`` outputs.
        mult_arity: how many subnodes a multiplication node multiplies (2).
        grid_size, spline_order, grid_range, grid_eps, base_activation, noise_scale, scale_base_mu,
            scale_base_sigma, scale_sp, learn_scales, sb_trainable, sp_trainable: passed to every
            :class:`~kanedu.KANLayer` (see there for kanedu's defaults and why they differ from pykan's).
        seed: seeds a private generator for the initial weights (the global RNG is not touched);
            ``None`` draws from the global RNG like ``torch.nn`` layers do.

    pykan's spellings work as well: ``KAN(width=[2, 5, 1], grid=5, k=3, seed=0, base_fun="silu")``, and
    pykan's ``auto_save``, ``ckpt_path``, ``save_act``, ``symbolic_enabled``, ``first_init``, ``state_id`` and
    ``round`` are accepted and ignored (kanedu never writes files on its own; pass them to ``kanedu.save``).

    ``widths`` (the attribute) holds the number of nodes per level, ``n_mult`` the multiplication nodes
    among them (the last ``n_mult[l]`` of level ``l``). ``last_input`` holds the inputs of the last forward
    pass (or of the last ``fit``: the training inputs), which pykan-style calls without ``x`` use.
    """

    def __init__(self, widths=None, grid_size: int = 5, spline_order: int = 3, grid_range=(-1.0, 1.0),
                 grid_eps: float = 0.02, base_activation="silu", noise_scale: float = 0.1,
                 scale_base_mu: float = 1.0, scale_base_sigma: float = 0.1, scale_sp: float = 1.0,
                 learn_scales: bool = True, sb_trainable: bool | None = None, sp_trainable: bool | None = None,
                 mult_arity: int = 2, seed: int | None = None, device=None, dtype=None, *,
                 width=None, grid: int | None = None, k: int | None = None, base_fun=None, **pykan):
        super().__init__()
        widths = _pykan_alias("widths", widths, "width", width)
        if widths is None:
            raise TypeError("KAN() needs the widths of its levels, e.g. KAN([2, 5, 1]) or KAN(width=[2, 5, 1])")
        grid_size = _pykan_alias("grid_size", grid_size, "grid", grid, default=5)
        spline_order = _pykan_alias("spline_order", spline_order, "k", k, default=3)
        base_activation = _pykan_alias("base_activation", base_activation, "base_fun", base_fun, default="silu")
        unknown = sorted(set(pykan) - _PYKAN_IGNORED)
        if unknown:
            raise TypeError(f"KAN() got unexpected keyword argument(s) {unknown}")
        for name in ("affine_trainable", "sparse_init"):
            if pykan.get(name):
                raise ValueError(f"KAN: pykan's {name}=True is not supported by kanedu")
        n_sum, self.n_mult = _check_kan_widths(widths)
        self.mult_arity = integer("mult_arity", mult_arity, minimum=2)
        self.widths = [a + m for a, m in zip(n_sum, self.n_mult)]
        self._layer_kwargs = dict(
            grid_size=integer("grid_size", grid_size, minimum=1), spline_order=integer("spline_order", spline_order,
                                                                                       minimum=0),
            grid_range=tuple(float(v) for v in grid_range), grid_eps=grid_eps,
            base_activation=activation_name(base_activation), noise_scale=noise_scale, scale_base_mu=scale_base_mu,
            scale_base_sigma=scale_base_sigma, scale_sp=scale_sp,
            sb_trainable=learn_scales if sb_trainable is None else sb_trainable,
            sp_trainable=learn_scales if sp_trainable is None else sp_trainable,
        )
        self.seed = None if seed is None else integer("seed", seed, minimum=0)
        gen = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        self.layers = nn.ModuleList(
            KANLayer(self.widths[l], self.subnodes(l + 1), generator=gen, device=device, dtype=dtype,
                     **self._layer_kwargs)
            for l in range(len(self.widths) - 1)
        )
        self.last_input: torch.Tensor | None = None

    @property
    def config(self) -> dict:
        kw = dict(self._layer_kwargs)
        kw["grid_range"] = list(kw["grid_range"])
        kw["grid_size"] = self.grid_size
        if any(self.n_mult):
            widths = [[w - m, m] if m else w for w, m in zip(self.widths, self.n_mult)]
            return {"widths": widths, "mult_arity": self.mult_arity, "seed": self.seed, **kw}
        return {"widths": list(self.widths), "seed": self.seed, **kw}

    # ---- multiplication nodes (KAN 2.0) ----------------------------------------------------------------

    def subnodes(self, level: int) -> int:
        """Outputs of the layer into ``level``: its sum nodes plus ``mult_arity`` per multiplication node."""
        return self.widths[level] + (self.mult_arity - 1) * self.n_mult[level]

    def subnode_to_node(self, level: int) -> torch.Tensor:
        """``[subnodes(level)]``: the node of ``level`` that each output of the layer into it feeds."""
        n_sum = self.widths[level] - self.n_mult[level]
        mult = n_sum + torch.arange(self.n_mult[level], device="cpu").repeat_interleave(self.mult_arity)
        return torch.cat([torch.arange(n_sum, device="cpu"), mult])  # indices, on the CPU like a list

    def nodes(self, level: int, h):
        """The nodes of ``level`` from the outputs of the layer into it: ``h [..., subnodes]`` ->
        ``[..., widths[level]]`` (sum nodes pass through, multiplication nodes multiply their subnodes).
        Also takes a list of sympy expressions (``symbolic_formula``)."""
        m = self.n_mult[level]
        if not m:
            return h
        n_sum = self.widths[level] - m
        if isinstance(h, list):
            a = self.mult_arity
            return h[:n_sum] + [_product(h[n_sum + a * j: n_sum + a * (j + 1)]) for j in range(m)]
        prods = h[..., n_sum:].reshape(*h.shape[:-1], m, self.mult_arity).prod(-1)
        return torch.cat([h[..., :n_sum], prods], -1)

    @property
    def grid_size(self) -> int:
        return self.layers[0].grid_size

    @property
    def spline_order(self) -> int:
        return self.layers[0].spline_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., widths[0]]`` -> ``[..., widths[-1]]``; remembers ``x`` as ``last_input`` (pykan's
        ``cache_data``, a reference, not a copy), except inside ``torch.compile``."""
        if not torch.compiler.is_compiling():
            self.last_input = x.detach()
        for l, layer in enumerate(self.layers):
            x = self.nodes(l + 1, layer(x))
        return x

    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input of every layer and the output: ``[x_0, x_1, ..., x_L]`` (no gradient)."""
        xs = [x.reshape(-1, self.widths[0])]
        with torch.no_grad():
            for l, layer in enumerate(self.layers):
                xs.append(self.nodes(l + 1, layer(xs[-1])))
        return xs

    # ---- grids ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Adapt each layer's grid to its inputs on the samples ``x [N, widths[0]]``, layer by layer."""
        h = x.reshape(-1, self.widths[0])
        for l, layer in enumerate(self.layers):
            layer.update_grid(h)
            h = self.nodes(l + 1, layer(h))

    @torch.no_grad()
    def refine(self, grid_size: int, x: torch.Tensor | None = None) -> KAN:
        """Grid extension: a copy of this model with ``grid_size`` intervals per spline, fitted to this
        model's splines on the layer inputs that ``x`` produces. ``x`` defaults to ``last_input`` (the
        inputs of the last forward pass or ``fit``, as pykan's ``refine(G)``); a model that has seen no
        data is fitted on a dense sweep of each grid instead."""
        new = copy.deepcopy(self)
        x = self.last_input if x is None else x
        xs = self.layer_inputs(x) if x is not None else [None] * len(self.layers)
        for layer, h in zip(new.layers, xs):
            layer._extend(grid_size, h)
        new._layer_kwargs["grid_size"] = grid_size
        return new

    # ---- regularization, attribution, pruning -------------------------------------------------------

    def edge_statistics(self, x: torch.Tensor, symbolic: bool = True):
        """Per layer ``l``, on the samples ``x [N, widths[0]]`` (differentiable):

        * ``input_std[l] [in]``: ``std_n x_i`` of the layer's inputs;
        * ``edge_std[l] [out, in]``: ``std_n phi_ji(x_i)``, the spread of each edge's output
          (``symbolic=False`` leaves symbolic edges out, as pykan's regularization does);
        * ``node_std[l] [out]``: ``std_n sum_i phi_ji(x_i)``, the spread of what each output (subnode) adds up.

        Standard deviations are unbiased (``torch.std``), as in pykan. ``out`` counts subnodes.
        """
        h = x.reshape(-1, self.widths[0])
        inputs, edges, nodes = [], [], []
        for l, layer in enumerate(self.layers):
            phi = layer.edge_activations(h)  # [N, out, in]
            numeric = phi if symbolic or layer.symbolic is None else layer.edge_activations(h, symbolic=False)
            total = phi.sum(-1)
            inputs.append(h.std(0))
            edges.append(numeric.std(0))
            nodes.append(total.std(0))
            h = self.nodes(l + 1, total)
        return inputs, edges, nodes

    def regularization_loss(self, x: torch.Tensor, lamb_l1: float = 1.0, lamb_entropy: float = 2.0,
                            lamb_coef: float = 0.0, lamb_coefdiff: float = 0.0) -> torch.Tensor:
        """The KAN paper's sparsity regularization on inputs ``x [N, widths[0]]``, computed as pykan does
        (its default ``reg_metric="edge_forward_spline_n"``); a differentiable scalar.

        Per layer, every edge gets the scale ``s_ji = std_n phi_ji(x_i) / (std_n x_i + 0.1)`` (numeric
        edges only), and the layer adds

            lamb_l1 * sum_ji s_ji + lamb_entropy * (H_rows + H_cols),
            H_rows = -mean_j sum_i p_ji log2(p_ji + 1e-4),   p_ji = s_ji / (sum_i s_ji + 1),

        (``H_cols`` the same with the roles of ``i`` and ``j`` swapped): the L1 term makes every edge
        pay for its size, the entropy terms are small when a node's inputs (or an input's outputs) are
        dominated by a few edges. ``lamb_coef * sum_i mean_o sum_m |c_iom|`` and
        ``lamb_coefdiff * sum_i mean_o sum_m |c_io,m+1 - c_iom|`` penalise the spline coefficients and their
        roughness. The ``+ 0.1`` and ``+ 1`` keep tiny inputs and edges from dividing by zero (pykan's
        constants). Builds per-edge tensors: ``fit`` calls it only when ``lamb > 0``.
        """
        inputs, edges, _ = self.edge_statistics(x, symbolic=False)
        total = x.new_zeros(())
        for layer, sd_in, sd_edge in zip(self.layers, inputs, edges):
            s = sd_edge / (sd_in + 0.1)  # [out, in]
            p_row = s / (s.sum(1, keepdim=True) + 1)
            p_col = s / (s.sum(0, keepdim=True) + 1)
            h_row = -(p_row * torch.log2(p_row + 1e-4)).sum(1).mean()
            h_col = -(p_col * torch.log2(p_col + 1e-4)).sum(0).mean()
            total = total + lamb_l1 * s.sum() + lamb_entropy * (h_row + h_col)
            if lamb_coef:
                total = total + lamb_coef * layer.coef.abs().mean(1).sum()
            if lamb_coefdiff:
                total = total + lamb_coefdiff * layer.coef.diff(dim=-1).abs().mean(1).sum()
        return total

    @torch.no_grad()
    def attribution(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """How much of the output flows through each node and edge, measured on samples ``x`` (KAN 2.0's
        attribution scores, computed as pykan's ``attribute()``; Liu et al. 2024b, arXiv 2408.10205).

        Each output node scores ``1 / n_outputs``. Walking backwards, the edge ``i -> j`` scores
        ``std_n phi_ji(x_i) / std_n (sum_i phi_ji(x_i)) * score_j``, its spread relative to the spread
        of the sum it feeds, times that node's score; a node scores the sum over its outgoing edges.
        Each subnode of a multiplication node scores as much as the node (a product needs every factor).
        Scores are not shares: edges that cancel each other can make a node score above 1.

        Returns:
            ``(node_scores, edge_scores)``: ``node_scores[l]`` is ``[widths[l]]`` for ``l = 0..L``,
            ``edge_scores[l]`` is ``[subnodes(l+1), widths[l]]`` (``[widths[l+1], widths[l]]`` without
            multiplication nodes).
        """
        _, edges, nodes = self.edge_statistics(x)
        node = [None] * (len(self.layers) + 1)
        edge = [None] * len(self.layers)
        out = self.widths[-1]
        node[-1] = torch.full((out,), 1.0 / out, dtype=edges[-1].dtype, device=edges[-1].device)
        for l in range(len(self.layers) - 1, -1, -1):
            sub = node[l + 1][self.subnode_to_node(l + 1).to(node[l + 1].device)]
            edge[l] = edges[l] * (sub / (nodes[l] + 1e-4)).unsqueeze(1)
            node[l] = edge[l].sum(0)
        return node, edge

    def _inputs(self, x, what: str) -> torch.Tensor:
        """``x``, or the inputs of the last forward pass / ``fit`` (pykan's ``cache_data``) when it is None."""
        if x is None:
            x = self.last_input
            if x is None:
                raise ValueError(f"{what} needs samples x [N, {self.widths[0]}]: pass x, or run the model (or fit) "
                                 "once, and it uses those inputs as pykan does")
        if not torch.is_tensor(x) or x.shape[-1] != self.widths[0]:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{what}: x must be model inputs [N, {self.widths[0]}], got {got}")
        return x.reshape(-1, self.widths[0])

    @torch.no_grad()
    def prune_node(self, threshold: float = 1e-2, x: torch.Tensor | None = None) -> KAN:
        """A copy without the hidden nodes whose attribution score (on ``x``, default ``last_input``) is
        below ``threshold``: their edges go, the rest computes exactly what it did. Inputs and outputs stay.
        When no node of a level passes, its strongest node is kept (the network is never cut in two)."""
        x = self._inputs(x, "prune_node")
        node, _ = self.attribution(x)
        keep = [torch.arange(self.widths[0], device="cpu")]
        for l in range(1, len(self.widths) - 1):
            kept = torch.nonzero(node[l].cpu() > threshold).flatten()
            keep.append(kept if len(kept) else node[l].cpu().argmax().view(1))
        keep.append(torch.arange(self.widths[-1], device="cpu"))
        new = copy.deepcopy(self)
        for l, layer in enumerate(new.layers):
            # the layer's outputs that feed kept nodes (all subnodes of a kept multiplication node)
            owner = self.subnode_to_node(l + 1)
            outs = torch.nonzero(torch.isin(owner, keep[l + 1])).flatten()
            new.layers[l] = layer.subset(keep[l], outs)
        new.n_mult = [int((k >= w - m).sum()) for k, w, m in zip(keep, self.widths, self.n_mult)]
        new.widths = [len(k) for k in keep]
        return new

    @torch.no_grad()
    def prune_edge(self, threshold: float = 3e-2, x: torch.Tensor | None = None) -> None:
        """Switch off (mask, in place) the edges whose attribution score on ``x`` (default ``last_input``)
        is below ``threshold``, as pykan's ``prune_edge`` does."""
        x = self._inputs(x, "prune_edge")
        _, edge = self.attribution(x)
        for layer, score in zip(self.layers, edge):
            layer.mask.mul_((score > threshold).T.to(layer.mask.dtype))  # scores are [out, in], masks [in, out]

    @torch.no_grad()
    def remove_edge(self, l: int, i: int, j: int) -> None:
        """Switch off edge ``i -> j`` of layer ``l`` (in place; ``j`` counts subnodes)."""
        layer = self.layers[integer("l", l, minimum=0, maximum=len(self.layers) - 1)]
        layer.mask[integer("i", i, minimum=0, maximum=layer.in_features - 1),
                   integer("j", j, minimum=0, maximum=layer.out_features - 1)] = 0.0

    @torch.no_grad()
    def prune(self, x: torch.Tensor | None = None, node_threshold: float = 1e-2, edge_threshold: float = 3e-2, *,
              node_th: float | None = None, edge_th: float | None = None) -> KAN:
        """A smaller KAN, as pykan's ``prune``: ``prune_node(node_threshold)``, then, with the scores of the
        smaller network, ``prune_edge(edge_threshold)``. ``x`` defaults to ``last_input``; ``node_th`` and
        ``edge_th`` are pykan's names for the thresholds.

        The result computes exactly what this model computes with the removed nodes' edges and the weak
        edges switched off (``mask = 0``); inputs and outputs are never removed.
        """
        node_threshold = node_threshold if node_th is None else node_th
        edge_threshold = edge_threshold if edge_th is None else edge_th
        x = self._inputs(x, "prune")
        new = self.prune_node(node_threshold, x)
        new.prune_edge(edge_threshold, x)
        new.last_input = x
        return new

    # ---- pykan's API: the same calls as pykan's MultKAN ------------------------------------------------

    def fit(self, dataset, **kwargs):
        """``kanedu.fit(self, dataset, **kwargs)``: pykan's ``model.fit(dataset, opt="LBFGS", steps=50, lamb=...)``.
        Returns a :class:`~kanedu.History`, whose ``["train_loss"]`` and ``["test_loss"]`` are pykan's RMSEs."""
        return _train.fit(self, dataset, **kwargs)

    def plot(self, x: torch.Tensor | None = None, **kwargs):
        """``kanedu.plot.plot_network(self, x)`` with ``x`` defaulting to ``last_input`` (pykan draws the
        activations of the last forward pass the same way); returns the Axes and writes no file."""
        return _plot.plot_network(self, self.last_input if x is None else x, **kwargs)

    def attribute(self, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """pykan's ``attribute()``: computes :meth:`attribution` on ``x`` (default ``last_input``), stores
        ``node_scores`` and ``edge_scores`` on the model as pykan does, and returns the node scores."""
        self.node_scores, self.edge_scores = self.attribution(self._inputs(x, "attribute"))
        return self.node_scores

    def auto_symbolic(self, lib=None, x: torch.Tensor | None = None, **kwargs):
        """``kanedu.symbolic.auto_symbolic(self, x, lib=lib, ...)``, ``x`` defaulting to ``last_input``.
        ``lib`` takes pykan's names too (``'x^2'``, ``'sgn'``, ``'arctanh'``, ...)."""
        return _symbolic.auto_symbolic(self, self._inputs(x, "auto_symbolic"), lib=lib, **kwargs)

    def suggest_symbolic(self, l: int, i: int, j: int, lib=None, topk: int = 5, x: torch.Tensor | None = None,
                         **kwargs):
        """``kanedu.symbolic.suggest_symbolic`` for edge ``i -> j`` of layer ``l``, on ``last_input`` by default."""
        return _symbolic.suggest_symbolic(self, l, i, j, self._inputs(x, "suggest_symbolic"), lib=lib, topk=topk,
                                          **kwargs)

    def fix_symbolic(self, l: int, i: int, j: int, fun_name, fit_params_bool: bool = True,
                     x: torch.Tensor | None = None, **kwargs):
        """Replace edge ``i -> j`` of layer ``l`` by ``c * f(a u + b) + d``, fitted on ``last_input`` (pykan's
        ``fit_params_bool=False`` keeps ``a = c = 1, b = d = 0``)."""
        if not fit_params_bool:
            kwargs.setdefault("params", (1.0, 0.0, 1.0, 0.0))
            return _symbolic.fix_symbolic(self, l, i, j, fun_name, **kwargs)
        return _symbolic.fix_symbolic(self, l, i, j, fun_name, self._inputs(x, "fix_symbolic"), **kwargs)

    def unfix_symbolic(self, l: int, i: int, j: int) -> None:
        """Give edge ``i -> j`` of layer ``l`` back to its spline."""
        _symbolic.unfix_symbolic(self, l, i, j)

    def symbolic_formula(self, var=None, floating_digit: int = 4, simplify: bool = False):
        """pykan's ``symbolic_formula()``: ``(formulas, variables)``, one sympy expression per output and the
        input symbols, so that ``model.symbolic_formula()[0][0]`` is the first output's formula. Constants
        are rounded to ``floating_digit`` significant digits and snapped to exact values when within 1e-4
        (``kanedu.symbolic.symbolic_formula`` returns the list alone)."""
        names = [f"x_{i + 1}" for i in range(self.widths[0])] if var is None else list(var)
        formulas = _symbolic.symbolic_formula(self, var_names=names, precision=floating_digit)
        if simplify:
            formulas = [sympy.simplify(f) for f in formulas]
        return formulas, [sympy.Symbol(n) if isinstance(n, str) else n for n in names]

    def extra_repr(self) -> str:
        if any(self.n_mult):
            return f"widths={self.config['widths']}, mult_arity={self.mult_arity}"
        return f"widths={self.widths}"


def _product(items):
    out = items[0]
    for v in items[1:]:
        out = out * v
    return out


class MLP(nn.Module):
    """A plain multilayer perceptron ``[..., widths[0]] -> [..., widths[-1]]``, the usual baseline.

    ``activation`` is one of ``"silu"``, ``"relu"``, ``"tanh"``, ``"gelu"``, ``"identity"``; it is applied after
    every layer but the last.
    """

    def __init__(self, widths, activation: str = "silu", bias: bool = True, seed: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.widths = _check_widths(widths)
        name = activation_name(activation)
        if name == "zero":
            raise ValueError("activation must not be 'zero' for an MLP")
        self.activation, self.bias, self.seed = name, bias, seed
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # a seed leaves the global RNG alone
            self.linears = nn.ModuleList(
                nn.Linear(a, b, bias=bias, device=device, dtype=dtype)
                for a, b in zip(self.widths[:-1], self.widths[1:])
            )
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for lin in self.linears:
                    bound = 1.0 / math.sqrt(lin.in_features)
                    lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)
                    if lin.bias is not None:
                        lin.bias.copy_((torch.rand(lin.bias.shape, generator=gen) * 2 - 1) * bound)

    @property
    def config(self) -> dict:
        return {"widths": list(self.widths), "activation": self.activation, "bias": self.bias, "seed": self.seed}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = BASE_ACTIVATIONS[self.activation]
        for i, lin in enumerate(self.linears):
            x = lin(x)
            if i < len(self.linears) - 1:
                x = act(x)
        return x

    def extra_repr(self) -> str:
        return f"widths={self.widths}, activation={self.activation}"


# --------------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters. Buffers such as KAN grids and masks are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def mlp_parameter_count(widths: Sequence[int], bias: bool = True) -> int:
    """Parameters of ``MLP(widths)``: ``sum_l (w_l + bias) * w_{l+1}``."""
    return sum((a + int(bias)) * b for a, b in zip(widths[:-1], widths[1:]))


def matched_mlp(target, in_features: int | None = None, out_features: int | None = None,
                hidden_layers: int | None = None, activation: str = "silu", tol: float = 0.05,
                seed: int | None = None) -> MLP:
    """An MLP with (nearly) as many parameters as ``target``, a model or a parameter count.

    All hidden layers have one width ``w``, chosen so the count is closest to the target; if that
    misses by more than ``tol`` (relative), the last hidden layer's width is tuned as well. Widths and
    depth default to the KAN's (``hidden_layers = len(widths) - 2``, at least 1).

    Raises:
        ValueError: if no such MLP is within ``tol`` (e.g. a target smaller than the smallest MLP).
    """
    if isinstance(target, nn.Module):
        n_target = count_parameters(target)
        widths = getattr(target, "widths", None)
        in_features = in_features or (widths[0] if widths else None)
        out_features = out_features or (widths[-1] if widths else None)
        if hidden_layers is None and widths:
            hidden_layers = max(1, len(widths) - 2)
    else:
        n_target = int(target)
    if in_features is None or out_features is None:
        raise ValueError("in_features and out_features are needed when target is a number")
    L = hidden_layers or 1
    best, w = None, 0
    while True:  # any width: the count grows with w, so the first one past the target ends the search
        w += 1
        widths = [in_features] + [w] * L + [out_features]
        err = abs(mlp_parameter_count(widths) - n_target)
        if best is None or err < best[0]:
            best = (err, widths)
        if mlp_parameter_count(widths) > n_target:
            break
    err, widths = best
    if err / n_target > tol and L > 1:
        w = widths[1]
        for last in range(1, 2 * w + 2):
            cand = [in_features] + [w] * (L - 1) + [last] + [out_features]
            e = abs(mlp_parameter_count(cand) - n_target)
            if e < err:
                err, widths = e, cand
    if err / n_target > tol:
        raise ValueError(
            f"no MLP with {L} hidden layer(s) has {n_target} parameters within {tol:.0%}: closest is "
            f"{widths} with {mlp_parameter_count(widths)}"
        )
    return MLP(widths, activation=activation, seed=seed)


def flops_per_sample(model: nn.Module, sparse: bool = True) -> int:
    """Rough forward FLOPs per sample (a multiply-add counts 2).

    * ``nn.Linear(a, b)``: ``2ab`` (+ ``b`` for the bias); an activation: about 4 per element.
    * ``KANLayer(a, b)``: per input, locating the interval and evaluating ``k + 1`` bases by Horner's
      rule (``2k(k + 1) + 6``) and the base activation (4); then ``2ab(k + 2)`` for the ``k + 1`` non-zero
      bases plus the residual (``sparse=True``, what kanedu computes), or ``2ab(G + k + 1)`` for the
      dense matrix formulation (``sparse=False``, what efficient-kan computes).
    """
    total = 0
    for mod in model.modules():
        if isinstance(mod, KANLayer):
            k, G = mod.spline_order, mod.grid_size
            a, b = mod.in_features, mod.out_features
            total += a * (2 * k * (k + 1) + 6 + 4)
            total += 2 * a * b * ((k + 2) if sparse else (G + k + 1))
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features + (mod.out_features if mod.bias is not None else 0)
    if isinstance(model, MLP):
        total += 4 * sum(model.widths[1:-1])
    if isinstance(model, KAN):
        total += sum(m * (model.mult_arity - 1) for m in model.n_mult)
    return total
