"""``SplineMLP``: an MLP whose activations are learnable B-splines, the ablation of Yu et al. (2024).

"KAN or MLP: A Fairer Comparison" (arXiv 2407.16674) asked where a KAN's edge on formula fitting comes
from: the Kolmogorov-Arnold structure (a function on every *edge*, sums at the nodes) or the B-spline
basis. Their ablation keeps the MLP's structure (a weight matrix, then one activation per *node*) and
makes each node's activation a learnable spline. kanedu's version of that node activation is the
function a KAN edge computes (lesson 03), started as a plain SiLU:

    h = W x + b                                     (nn.Linear)
    sigma_j(h_j) = silu(h_j) + sum_m c[j, m] B_m(h_j)   c = 0 at initialisation

with ``B_m`` the ``G + k`` B-splines of order ``k`` on a uniform grid over ``grid_range`` (beyond it only
the SiLU acts). A hidden layer of width ``w`` therefore adds ``w (G + k)`` parameters to the MLP's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import integer
from .models import _check_widths, mlp_parameter_count
from .splines import _check_range, bspline_basis, uniform_grid

__all__ = ["SplineActivation", "SplineMLP", "spline_mlp_parameter_count", "matched_spline_mlp"]


class SplineActivation(nn.Module):
    """One learnable activation per feature, ``[..., features] -> [..., features]``:
    ``sigma_j(h) = silu(h) + sum_m coef[j, m] B_m(h)``; ``coef`` ``[features, G + k]`` starts at zero."""

    def __init__(self, features: int, grid_size: int = 5, spline_order: int = 3, grid_range=(-1.0, 1.0),
                 device=None, dtype=None):
        super().__init__()
        self.features = integer("features", features, minimum=1)
        self.grid_size = integer("grid_size", grid_size, minimum=1)
        self.spline_order = integer("spline_order", spline_order, minimum=0)
        self.grid_range = _check_range(grid_range)
        grid = uniform_grid(self.grid_size, self.spline_order, self.grid_range, dtype=dtype, device=device)
        self.register_buffer("grid", grid.expand(self.features, -1).contiguous())  # [features, G + 2k + 1]
        self.coef = nn.Parameter(torch.zeros(self.features, self.grid_size + self.spline_order, device=device,
                                             dtype=dtype if dtype is not None else torch.get_default_dtype()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[-1] != self.features:
            raise ValueError(f"SplineActivation: expected input [..., {self.features}], got {tuple(h.shape)}")
        basis = bspline_basis(h.reshape(-1, self.features), self.grid, self.spline_order)  # [N, features, G + k]
        spline = (basis * self.coef).sum(-1).reshape(h.shape)
        return nn.functional.silu(h) + spline

    def extra_repr(self) -> str:
        return f"features={self.features}, grid_size={self.grid_size}, spline_order={self.spline_order}, " \
               f"grid_range={self.grid_range}"


class SplineMLP(nn.Module):
    """An MLP ``[..., widths[0]] -> [..., widths[-1]]`` with a :class:`SplineActivation` after every layer
    but the last. ``seed`` draws the linear weights as ``MLP(widths, seed=seed)`` does (uniform in
    ``+-1/sqrt(fan_in)``) from a private generator; the spline coefficients start at zero, so a fresh
    ``SplineMLP`` computes exactly what ``MLP(widths, activation="silu", seed=seed)`` computes."""

    def __init__(self, widths, grid_size: int = 5, spline_order: int = 3, grid_range=(-1.0, 1.0),
                 seed: int | None = None, device=None, dtype=None):
        super().__init__()
        self.widths = _check_widths(widths)
        self.grid_size, self.spline_order = grid_size, spline_order
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # a seed leaves the global RNG alone
            self.linears = nn.ModuleList(nn.Linear(a, b, device=device, dtype=dtype)
                                         for a, b in zip(self.widths[:-1], self.widths[1:]))
        self.activations = nn.ModuleList(
            SplineActivation(w, grid_size, spline_order, grid_range, device=device, dtype=dtype)
            for w in self.widths[1:-1])
        if seed is not None:
            gen = torch.Generator().manual_seed(integer("seed", seed, minimum=0))
            with torch.no_grad():
                for lin in self.linears:
                    bound = 1.0 / math.sqrt(lin.in_features)
                    lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)
                    lin.bias.copy_((torch.rand(lin.bias.shape, generator=gen) * 2 - 1) * bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, lin in enumerate(self.linears):
            x = lin(x)
            if i < len(self.activations):
                x = self.activations[i](x)
        return x

    def extra_repr(self) -> str:
        return f"widths={self.widths}, grid_size={self.grid_size}, spline_order={self.spline_order}"


def spline_mlp_parameter_count(widths, grid_size: int = 5, spline_order: int = 3) -> int:
    """Parameters of ``SplineMLP(widths, grid_size, spline_order)``: the MLP's plus ``(G + k)`` per hidden node."""
    widths = _check_widths(widths)
    return mlp_parameter_count(widths) + sum(widths[1:-1]) * (grid_size + spline_order)


def matched_spline_mlp(n_params: int, in_features: int, out_features: int, hidden_layers: int = 2,
                       grid_size: int = 5, spline_order: int = 3, tol: float = 0.05, **kwargs) -> SplineMLP:
    """The ``SplineMLP [in, w, ..., w, out]`` (``hidden_layers`` hidden layers of one width ``w``) whose
    parameter count is closest to ``n_params`` (the smaller ``w`` on a tie); ``kwargs`` go to ``SplineMLP``.

    Raises:
        ValueError: if even the closest misses ``n_params`` by more than ``tol`` (relative).
    """
    n_params = integer("n_params", n_params, minimum=1)
    hidden_layers = integer("hidden_layers", hidden_layers, minimum=1)
    best = None
    for w in range(1, 4097):
        widths = [in_features] + [w] * hidden_layers + [out_features]
        n = spline_mlp_parameter_count(widths, grid_size, spline_order)
        if best is None or abs(n - n_params) < best[0]:
            best = (abs(n - n_params), widths)
        if n > n_params:
            break
    err, widths = best
    if err / n_params > tol:
        closest = spline_mlp_parameter_count(widths, grid_size, spline_order)
        raise ValueError(f"no SplineMLP with {hidden_layers} hidden layer(s) has {n_params} parameters within "
                         f"{tol:.0%}: closest is {widths} with {closest}")
    return SplineMLP(widths, grid_size, spline_order, **kwargs)
