"""SplineMLP: an MLP whose node activations are learnable B-splines (the ablation of Yu et al. 2024)."""

import pytest
import torch

from kanedu import MLP, count_parameters
from kanedu.spline_mlp import SplineActivation, SplineMLP, matched_spline_mlp, spline_mlp_parameter_count
from kanedu.splines import bspline_basis, uniform_grid


def test_a_fresh_spline_mlp_computes_the_silu_mlp_of_the_same_seed():
    x = torch.randn(17, 3, dtype=torch.float64)
    spline = SplineMLP([3, 6, 4, 2], seed=5, dtype=torch.float64)
    plain = MLP([3, 6, 4, 2], activation="silu", seed=5, dtype=torch.float64)
    assert torch.equal(spline(x), plain(x))


def test_the_activation_is_silu_plus_the_spline_of_its_coefficients():
    act = SplineActivation(4, grid_size=6, spline_order=2, grid_range=(-1.5, 1.5), dtype=torch.float64)
    with torch.no_grad():
        act.coef.copy_(torch.randn(4, 8, dtype=torch.float64))
    h = torch.linspace(-2, 2, 40, dtype=torch.float64)[:, None].expand(40, 4)
    grid = uniform_grid(6, 2, (-1.5, 1.5), dtype=torch.float64)
    expected = torch.nn.functional.silu(h) + torch.stack(
        [bspline_basis(h[:, j], grid, 2) @ act.coef[j] for j in range(4)], dim=1)
    assert torch.allclose(act(h), expected, atol=1e-12)


def test_the_parameter_count_is_the_mlps_plus_g_plus_k_per_hidden_node():
    widths = [2, 7, 5, 1]
    model = SplineMLP(widths, grid_size=10, spline_order=3)
    assert count_parameters(model) == spline_mlp_parameter_count(widths, 10, 3) == (3 * 7 + 8 * 5 + 6) + 12 * 13


def test_matched_spline_mlp_is_within_tolerance_and_refuses_impossible_targets():
    model = matched_spline_mlp(225, 2, 1, hidden_layers=2, grid_size=5, seed=0)
    assert abs(count_parameters(model) - 225) <= 0.05 * 225 and model.widths == [2, 8, 8, 1]
    with pytest.raises(ValueError, match="within"):
        matched_spline_mlp(150, 2, 1, hidden_layers=2, grid_size=5)


def test_the_spline_coefficients_receive_gradients_and_bad_input_is_named():
    model = SplineMLP([2, 4, 1], seed=0)
    model(torch.rand(8, 2) * 2 - 1).sum().backward()
    assert model.activations[0].coef.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        model.activations[0](torch.zeros(3, 5))
