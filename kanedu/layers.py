"""``KANLayer``: a layer of learnable edge functions (lesson 03).

Every edge ``i -> j`` carries its own function of one variable,

    phi_ij(x) = w_b[i, j] * b(x) + w_s[i, j] * sum_m c[i, j, m] B_m(x),

with ``b`` a fixed base activation (SiLU by default) and ``B_m`` the B-spline bases on feature ``i``'s
grid; a node adds what arrives: ``y_j = sum_i mask[i, j] * phi_ij(x_i)``.

All the weights are combined in one place (``kanedu.weights.combine_weights``): ``W[i, 0, j] = mask * w_b``
and ``W[i, 1 + m, j] = mask * w_s * c[i, j, m]``. The forward pass is then one matrix product with the
expanded features, ``y = Phi(x) @ W`` (``kanedu.kernels.kan_linear``; on the CPU loops
``kanedu.native.kan_layer``, which combines the weights itself and is one autograd node per call), and grid
operations only ever touch ``c`` (the scale ``w_s`` is never folded into the coefficients, so it cannot be
applied twice).

The layer keeps its knots' piecewise-polynomial table (``splines.interval_table``) as buffers next to the
grid; ``set_grid`` replaces both, and every grid operation goes through it.

Symbolic edges (lesson 05): ``kanedu.symbolic.fix_symbolic`` masks an edge and hands it to an optional
submodule ``layer.symbolic`` (a ``kanedu.symbolic.SymbolicEdges``, ``None`` by default) that computes
``c * f(a * x_i + b) + d``; ``forward`` and ``edge_activations`` add its output. A state dict that holds
symbolic edges recreates that submodule when it is loaded.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from . import native
from ._checks import integer
from .activations import BASE_ACTIVATIONS, activation_name
from .activations import base as base_activation
from .kernels import autocast_enabled as _autocast
from .kernels import kan_linear
from .splines import (
    IntervalTable,
    _check_grid_size,
    _check_order,
    _check_range,
    adaptive_grid,
    bspline_basis,
    curve_to_coef,
    extend_grid,
    interval_table,
    is_uniform,
    uniform_grid,
)
from .weights import combine_weights, combine_weights_grad

__all__ = ["KANLayer", "BASE_ACTIVATIONS", "combine_weights", "combine_weights_grad"]


class KANLayer(nn.Module):
    """A KAN layer ``[..., in_features] -> [..., out_features]``.

    Args:
        in_features, out_features: widths.
        grid_size: ``G``, intervals of each spline grid.
        spline_order: ``k`` (3 = cubic).
        grid_range: the initial grid ``(lo, hi)`` for every input feature.
        grid_eps: blend used by ``update_grid``: 1 = uniform over the samples, 0 = sample quantiles.
        base_activation: ``"silu"`` (default), ``"identity"``, ``"tanh"``, ``"relu"``, ``"gelu"``, ``"zero"``
            (no residual), or the matching ``torch.nn`` class.
        noise_scale: std of the initial spline coefficients is ``noise_scale / G`` (small wiggles).
        scale_base_mu, scale_base_sigma: ``w_b = (scale_base_mu + scale_base_sigma * U(-1, 1)) / sqrt(in)``
            (pykan's names; pykan's defaults are 0 and 1, random signs). Starting every edge near the same
            positive residual, as here, makes small KANs such as ``[2, 1, 1]`` train reliably: with random
            signs pykan's own ``[2, 1, 1]`` stalls at a test RMSE of 0.4-0.6 on 2 to 3 of 5 seeds
            (``benchmarks/bench_train.py``); an edge whose sign is wrong has to pass through zero.
        scale_sp: ``w_s = scale_sp / sqrt(in)`` (pykan's name).
        learn_scales: train ``w_b`` and ``w_s`` (True) or keep them fixed; ``sb_trainable`` and
            ``sp_trainable`` (pykan's names) set them one by one and win over ``learn_scales``.
        generator: a ``torch.Generator`` for the initial weights (default: the global RNG, as ``nn.Linear``).

    Shapes: ``coef [in, out, G + k]``, ``scale_base``/``scale_spline``/``mask`` ``[in, out]``,
    ``grid [in, G + 2k + 1]`` (a buffer, saved in the state dict).
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range=(-1.0, 1.0), grid_eps: float = 0.02, base_activation="silu",
                 noise_scale: float = 0.1, scale_base_mu: float = 1.0, scale_base_sigma: float = 0.1,
                 scale_sp: float = 1.0, learn_scales: bool = True, sb_trainable: bool | None = None,
                 sp_trainable: bool | None = None, generator: torch.Generator | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = integer("in_features", in_features, minimum=1)
        self.out_features = integer("out_features", out_features, minimum=1)
        self.grid_size = _check_grid_size(grid_size)
        self.spline_order = _check_order(spline_order)
        self.grid_range = _check_range(grid_range)
        if not 0.0 <= float(grid_eps) <= 1.0:
            raise ValueError(f"grid_eps must be in [0, 1], got {grid_eps}")
        self.grid_eps = float(grid_eps)
        self.base_activation = activation_name(base_activation)
        self.noise_scale = float(noise_scale)
        self.scale_base_mu, self.scale_base_sigma, self.scale_sp = float(scale_base_mu), float(scale_base_sigma), float(
            scale_sp)
        self.sb_trainable = bool(learn_scales if sb_trainable is None else sb_trainable)
        self.sp_trainable = bool(learn_scales if sp_trainable is None else sp_trainable)
        fk = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        n = self.grid_size + self.spline_order
        grid = uniform_grid(self.grid_size, self.spline_order, self.grid_range, **fk)
        self.register_buffer("grid", grid.expand(in_features, -1).contiguous())
        for name in IntervalTable._fields:  # the grid's interval table (set_grid keeps it in step)
            self.register_buffer("_table_" + name, None, persistent=False)
        self._kc = None  # the compiled loops' view of grid and table (_knot_constants)
        self._uniform = True
        self.register_buffer("mask", torch.ones(in_features, out_features, **fk))
        self.coef = nn.Parameter(torch.empty(in_features, out_features, n, **fk))
        self.scale_base = nn.Parameter(torch.empty(in_features, out_features, **fk), requires_grad=self.sb_trainable)
        self.scale_spline = nn.Parameter(torch.empty(in_features, out_features, **fk), requires_grad=self.sp_trainable)
        self.set_grid(self.grid)
        # edges replaced by formulas: a kanedu.symbolic.SymbolicEdges set by fix_symbolic (None: none)
        self.symbolic: nn.Module | None = None
        self.reset_parameters(generator)

    # ---- construction ------------------------------------------------------------------------------

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initial weights: ``w_b = (scale_base_mu + scale_base_sigma * U(-1, 1)) / sqrt(in)``,
        ``w_s = scale_sp / sqrt(in)``, spline coefficients ``N(0, (noise_scale / G)^2)``, so every
        edge starts as a residual plus small wiggles. A ``generator`` makes it reproducible without
        touching the global RNG."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.in_features)
            # drawn on the CPU (the generator's device), so a seed gives the same model on every device
            u = torch.rand(self.scale_base.shape, generator=generator, dtype=self.coef.dtype, device="cpu")
            self.scale_base.copy_((self.scale_base_mu + self.scale_base_sigma * (2 * u - 1)) * bound)
            self.scale_spline.fill_(self.scale_sp * bound)
            noise = torch.randn(self.coef.shape, generator=generator, dtype=self.coef.dtype, device="cpu")
            self.coef.copy_(noise * self.noise_scale / self.grid_size)
            self.mask.fill_(1.0)

    @property
    def config(self) -> dict:
        """Constructor arguments (plain values) that rebuild a layer of the same shape."""
        return {
            "in_features": self.in_features, "out_features": self.out_features, "grid_size": self.grid_size,
            "spline_order": self.spline_order, "grid_range": list(self.grid_range), "grid_eps": self.grid_eps,
            "base_activation": self.base_activation, "noise_scale": self.noise_scale,
            "scale_base_mu": self.scale_base_mu, "scale_base_sigma": self.scale_base_sigma, "scale_sp": self.scale_sp,
            "sb_trainable": self.sb_trainable, "sp_trainable": self.sp_trainable,
        }

    def extra_repr(self) -> str:
        grid = "uniform" if self._uniform else "adaptive"
        return (f"in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid_size}, "
                f"spline_order={self.spline_order}, base={self.base_activation}, grid={grid}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.symbolic is None and any(k.startswith(prefix + "symbolic.") for k in state_dict):
            from .symbolic import SymbolicEdges  # the state dict has symbolic edges: make room for them

            self.symbolic = SymbolicEdges(self.in_features, self.out_features, device=self.coef.device,
                                          dtype=self.coef.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.set_grid(self.grid)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if self.grid.device.type == "meta":  # no values to rebuild from: the table moved with the grid
            self._grid_state = self._grid_now()
        else:
            self.set_grid(self.grid)  # a table cast from float32 would lose precision; .double() can change is_uniform
        return out

    # ---- the grid and its table ----------------------------------------------------------------------

    @torch.no_grad()
    def set_grid(self, grid: torch.Tensor) -> None:
        """Use the knots ``grid [in, G + 2k + 1]`` (non-decreasing per row) and rebuild their interval table.

        The coefficients are left as they are (``update_grid`` and ``refine`` refit them to keep the
        function). Grid operations call it; a grid written in place (``layer.grid.copy_``) is noticed at the
        next forward pass, which calls it then.
        """
        k = self.spline_order
        if grid.dim() != 2 or grid.shape[0] != self.in_features or grid.shape[1] != self.coef.shape[-1] + k + 1:
            raise ValueError(f"grid must be [in_features={self.in_features}, {self.coef.shape[-1] + k + 1}], "
                             f"got shape {tuple(grid.shape)}")
        if grid is not self.grid:
            self.grid.copy_(grid)
        table = interval_table(self.grid, k)
        for name, t in zip(IntervalTable._fields, table):
            setattr(self, "_table_" + name, t)
        if self.grid.device.type != "meta":  # a meta tensor has no values to test (it keeps the last answer)
            self._uniform = is_uniform(self.grid)
        self._grid_state = self._grid_now()

    def _grid_now(self) -> tuple:
        """What tells that the grid changed since ``set_grid``: its version (in-place writes) and its memory
        (a deep copy or an unpickled layer holds a new tensor whose version can equal the old one's)."""
        return self.grid._version, self.grid.data_ptr()

    def _knot_constants(self) -> tuple:
        """``native.knot_constants`` of the grid (NumPy views of it and its table), kept until they change."""
        key = (self._grid_state, self._table_coef.data_ptr(), self._uniform)
        if self._kc is None or self._kc[0] != key:
            self._kc = (key, native.knot_constants(self.grid.numpy(), self.table, self.spline_order, self._uniform))
        return self._kc[1]

    @property
    def table(self) -> IntervalTable:
        """The piecewise-polynomial form of this layer's bases (``splines.interval_table`` of ``grid``)."""
        return IntervalTable(*(getattr(self, "_table_" + name) for name in IntervalTable._fields))

    # ---- the one place where the weights are combined --------------------------------------------

    def combined_weight(self) -> torch.Tensor:
        """``W [in, G + k + 1, out]``: slot 0 = ``mask * w_b``, slots ``1..`` = ``mask * w_s * c``."""
        return combine_weights(self.coef, self.scale_base, self.scale_spline, self.mask)

    # ---- forward -------------------------------------------------------------------------------------

    def _check_input(self, x) -> torch.Tensor:
        """``x`` checked (type, width, device, dtype); under autocast cast to the layer's dtype."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype} (use x.float())")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}"
            )
        if x.device != self.coef.device:
            raise ValueError(f"x is on {x.device} but the layer is on {self.coef.device}; "
                             f"move the data with x.to({str(self.coef.device)!r}) (or the model with .to())")
        if x.dtype != self.coef.dtype:
            if _autocast(x):  # the previous layer's output in the autocast dtype: splines stay in ours
                return x.to(self.coef.dtype)
            raise TypeError(f"x has dtype {x.dtype} but the layer is {self.coef.dtype}; use layer.to({x.dtype})")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features]`` -> ``y [..., out_features]``, ``y_j = sum_i phi_ij(x_i)`` with
        ``phi_ij(x) = mask_ij (w_b b(x) + w_s sum_m c_ijm B_m(x))`` (plus the symbolic edges, if any).

        Computed as ``Phi(x) @ W`` (``kernels.kan_linear``, or ``native.kan_layer`` where the compiled CPU
        loops run): the same sum, without a tensor per edge.
        """
        x = self._check_input(x)
        if not torch.compiler.is_compiling() and self._grid_now() != self._grid_state:
            self.set_grid(self.grid)  # the grid was written in place (layer.grid.copy_): its table follows
        flat = x.dim() == 2  # [N, in]: no reshapes (each would add an autograd node)
        x2 = x if flat else x.reshape(-1, self.in_features)
        if native.supports(x2, self.coef, self.spline_order):  # the compiled CPU loops, weights combined there
            y = native.kan_layer(x2, self.coef, self.scale_base, self.scale_spline, self.mask,
                                 self._knot_constants(), self.base_activation)
        else:
            y = kan_linear(x2, self.combined_weight(), self.grid, self.table, self.spline_order,
                           self.base_activation, self._uniform)  # [N, out] = sum_i phi_ij(x_i)
        if self.symbolic is not None:
            y = y + self.symbolic(x2).to(y.dtype)
        return y if flat else y.reshape(*x.shape[:-1], self.out_features)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        """``b(x)``, the base activation (zeros for ``"zero"``), elementwise."""
        return base_activation(self.base_activation, x)

    def spline_values(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled splines ``sum_m c[i, j, m] B_m(x_i)``: ``x [N, in]`` -> ``[N, in, out]`` (differentiable)."""
        B = bspline_basis(x, self.grid, self.spline_order)  # [N, in, n]
        return torch.einsum("nim,iom->nio", B, self.coef)

    def edge_activations(self, x: torch.Tensor, symbolic: bool = True) -> torch.Tensor:
        """Per-edge values ``phi_ij(x_i)`` including the mask: ``x [..., in]`` -> ``[..., out, in]``, with the
        symbolic edges' values added (``symbolic=False``: the numeric edges only).

        For plots, pruning and regularization; built only when asked (the forward pass never does).
        Differentiable (dense bases from ``bspline_basis``, not the fast kernel).
        """
        x = self._check_input(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        phi = self.scale_base * self._base(x2).unsqueeze(-1) + self.scale_spline * self.spline_values(x2)
        phi = phi * self.mask  # [N, in, out]
        if symbolic and self.symbolic is not None:
            phi = phi + self.symbolic.edge_values(x2)
        return phi.transpose(1, 2).reshape(*lead, self.out_features, self.in_features)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same function as ``forward``, computed edge by edge (slow; for tests and teaching)."""
        return self.edge_activations(x).sum(-1)

    # ---- grid operations (they preserve the function) ----------------------------------------------

    @torch.no_grad()
    def _refit(self, x: torch.Tensor, new_grid: torch.Tensor, new_grid_size: int) -> None:
        """Replace the grid and least-squares fit new coefficients so each spline keeps its values on x."""
        target = self.spline_values(x)  # [N, in, out], before the grid changes
        ridge = 1e-10 if x.shape[0] < 2 * (new_grid_size + self.spline_order) else 0.0
        coef = curve_to_coef(x, target, new_grid, self.spline_order, ridge=ridge)
        if coef.shape == self.coef.shape:
            # in place, so an optimizer that holds these tensors keeps training them (update_grid in fit)
            self.set_grid(new_grid)
            self.coef.copy_(coef)
        else:  # refine: new shapes, a new parameter (call it between fits)
            self.grid = new_grid.contiguous()
            self.coef = nn.Parameter(coef.contiguous(), requires_grad=self.coef.requires_grad)
            self.set_grid(self.grid)
        self.grid_size = new_grid_size

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, grid_eps: float | None = None) -> None:
        """Adapt every feature's grid to the samples ``x [N, in]`` (``grid_eps`` blend of uniform and
        quantile knots over the sample range), refitting the coefficients so the function is kept."""
        x = self._check_input(x).reshape(-1, self.in_features)
        eps = self.grid_eps if grid_eps is None else grid_eps
        new_grid = adaptive_grid(x, self.grid_size, self.spline_order, eps)
        self._refit(x, new_grid, self.grid_size)

    @torch.no_grad()
    def refine(self, grid_size: int, x: torch.Tensor | None = None) -> KANLayer:
        """Grid extension: a copy of this layer with ``grid_size`` intervals, its coefficients fitted to this
        layer's splines (this layer is left as it is, like ``KAN.refine`` and pykan's ``refine``).

        With samples ``x [N, in]`` the new grid follows them (``grid_eps`` blend, as in pykan), and the
        fit is made on ``x``. Without samples the grid keeps its range, its knots interpolated from the
        current ones (a uniform grid stays uniform, an adaptive one keeps its shape), and the fit is
        made on a dense sweep of the grid range ``[t_k, t_{G+k}]``.
        """
        new = copy.deepcopy(self)
        new._extend(grid_size, x)
        return new

    def _extend(self, grid_size: int, x: torch.Tensor | None) -> None:
        """``refine`` in place: move to ``grid_size`` intervals and fit the new coefficients to the
        current splines.

        With samples ``x [N, in]`` the new grid follows them (``grid_eps`` blend, as in pykan), and the
        fit is made on ``x``. Without samples the grid keeps its range, its knots interpolated from the
        current ones (a uniform grid stays uniform, an adaptive one keeps its shape), and the fit is
        made on a dense sweep of the grid range ``[t_k, t_{G+k}]`` (outside it the finer grid's shorter
        extension cannot follow the old spline, and fitting there would bend the inside).
        """
        grid_size = _check_grid_size(grid_size)
        k, G = self.spline_order, self.grid_size
        if x is not None:
            x = self._check_input(x).reshape(-1, self.in_features)
            self._refit(x, adaptive_grid(x, grid_size, k, self.grid_eps), grid_size)
            return
        old = self.grid[:, k : k + G + 1]  # [in, G + 1] knots of the base interval
        pos = torch.linspace(0, G, grid_size + 1, dtype=self.grid.dtype, device=self.grid.device)
        if self._uniform:
            points = old[:, :1] + (old[:, -1:] - old[:, :1]) * pos / G
        else:
            lo_idx = pos.floor().long().clamp(max=G - 1)
            w = pos - lo_idx
            points = old[:, lo_idx] * (1 - w) + old[:, lo_idx + 1] * w
        steps = torch.linspace(0, 1, 8 * (grid_size + k) + 1, dtype=self.grid.dtype, device=self.grid.device)
        sweep = (old[:, :1] + (old[:, -1:] - old[:, :1]) * steps).T.contiguous()
        self._refit(sweep, extend_grid(points, k), grid_size)

    # ---- structure ------------------------------------------------------------------------------------

    @torch.no_grad()
    def subset(self, in_idx: torch.Tensor, out_idx: torch.Tensor) -> KANLayer:
        """A new layer with only the inputs ``in_idx`` and outputs ``out_idx`` (edges copied as they are)."""
        in_idx = torch.as_tensor(in_idx, dtype=torch.long, device=self.grid.device)
        out_idx = torch.as_tensor(out_idx, dtype=torch.long, device=self.grid.device)
        cfg = dict(self.config, in_features=len(in_idx), out_features=len(out_idx))
        new = KANLayer(**cfg, device=self.grid.device, dtype=self.coef.dtype)
        new.set_grid(self.grid[in_idx])
        new.mask.copy_(self.mask[in_idx][:, out_idx])
        new.coef.copy_(self.coef[in_idx][:, out_idx])
        new.scale_base.copy_(self.scale_base[in_idx][:, out_idx])
        new.scale_spline.copy_(self.scale_spline[in_idx][:, out_idx])
        if self.symbolic is not None:
            new.symbolic = self.symbolic.subset(in_idx, out_idx)
        return new
