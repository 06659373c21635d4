"""kanedu.splines: the reference recursion against scipy, the fast path against the reference."""

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline

from kanedu.splines import (
    adaptive_grid,
    bspline_basis,
    bspline_basis_derivative,
    coef_to_curve,
    curve_to_coef,
    is_uniform,
    uniform_grid,
)


@pytest.mark.parametrize("k", range(6))
def test_reference_equals_scipy_design_matrix_on_random_knots(k):
    rng = np.random.default_rng(k)
    t = np.sort(rng.uniform(-2, 3, size=2 * k + 9))
    x = np.concatenate([np.linspace(t[k], t[-k - 1], 400), t[k : len(t) - k]])  # knots included
    expected = BSpline.design_matrix(x, t, k).toarray()
    got = bspline_basis(torch.tensor(x), torch.tensor(t), k, method="reference").numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_uniform_path_equals_reference(k):
    grid = uniform_grid(7, k, (-1.5, 2.0), dtype=torch.float64)
    x = torch.linspace(-3, 3.5, 2001, dtype=torch.float64)  # also outside the extended knots
    fast = bspline_basis(x, grid, k, method="uniform")
    ref = bspline_basis(x, grid, k, method="reference")
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("G", [5, 50, 200])
def test_float32_fast_path_within_1e5_of_float64_reference(G):
    x = torch.rand(50_000, generator=torch.Generator().manual_seed(G)) * 2.2 - 1.1
    fast32 = bspline_basis(x, uniform_grid(G, 3, dtype=torch.float32), 3)
    ref64 = bspline_basis(x.double(), uniform_grid(G, 3, dtype=torch.float64), 3, method="reference")
    assert (fast32.double() - ref64).abs().max().item() < 1e-5


def test_per_feature_grid_matches_one_grid_at_a_time():
    x = torch.randn(100, 3, dtype=torch.float64)
    grid = adaptive_grid(x, 6, 3, grid_eps=0.2)
    both = bspline_basis(x, grid, 3)
    assert both.shape == (100, 3, 9)
    for i in range(3):
        torch.testing.assert_close(both[:, i], bspline_basis(x[:, i], grid[i], 3))


@pytest.mark.parametrize("method", ["uniform", "reference"])
def test_partition_of_unity_inside_the_base_interval(method):
    grid = uniform_grid(10, 3, (-1, 1), dtype=torch.float64)
    x = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(bspline_basis(x, grid, 3, method=method).sum(-1), torch.ones_like(x))


def test_partition_of_unity_on_nonuniform_knots():
    t = torch.tensor([-1.0, -0.7, -0.65, -0.1, 0.0, 0.0, 0.3, 0.9, 1.1, 1.2, 2.0], dtype=torch.float64)
    x = torch.linspace(float(t[3]), float(t[-4]), 777, dtype=torch.float64)
    torch.testing.assert_close(bspline_basis(x, t, 3).sum(-1), torch.ones_like(x))


def test_local_support_and_at_most_k_plus_1_nonzero():
    grid = uniform_grid(12, 3, dtype=torch.float64)
    x = torch.linspace(-1, 1, 999, dtype=torch.float64)
    B = bspline_basis(x, grid, 3)
    assert ((B > 0).sum(-1) <= 4).all()
    for i in range(B.shape[-1]):
        outside = (x < grid[i]) | (x > grid[i + 4])
        assert (B[outside, i] == 0).all()


def test_bases_are_zero_outside_the_extended_knots():
    grid = uniform_grid(5, 3, dtype=torch.float64)
    x = torch.tensor([-10.0, float(grid[0]) - 1e-9, float(grid[-1]) + 1e-9, 10.0], dtype=torch.float64)
    for method in ("uniform", "reference"):
        assert (bspline_basis(x, grid, 3, method=method) == 0).all()


def test_gradcheck_both_paths_float64():
    x = (torch.rand(6, 2, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    grid = uniform_grid(5, 3, dtype=torch.float64).expand(2, -1).contiguous()
    nonuniform = adaptive_grid(torch.randn(200, 2, dtype=torch.float64), 5, 3, grid_eps=0.1)
    for g, m in [(grid, "uniform"), (grid, "reference"), (nonuniform, "reference")]:
        assert torch.autograd.gradcheck(lambda x, g=g, m=m: bspline_basis(x, g, 3, method=m), (x,))


@pytest.mark.parametrize("method", ["uniform", "reference"])
def test_derivative_matches_finite_differences(method):
    grid = uniform_grid(6, 3, dtype=torch.float64)
    x = torch.rand(300, dtype=torch.float64) * 1.9 - 0.95
    eps = 1e-6
    num = (bspline_basis(x + eps, grid, 3) - bspline_basis(x - eps, grid, 3)) / (2 * eps)
    torch.testing.assert_close(bspline_basis_derivative(x, grid, 3, method=method), num, atol=1e-7, rtol=0)


def test_uniform_grid_length_and_spacing():
    g = uniform_grid(5, 3, (-1, 1), dtype=torch.float64)
    assert g.shape == (5 + 2 * 3 + 1,)
    torch.testing.assert_close(g[3], torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(g[-4], torch.tensor(1.0, dtype=torch.float64))
    assert is_uniform(g)


def test_adaptive_grid_blends_uniform_and_quantiles():
    x = torch.cat([torch.zeros(900), torch.linspace(0.5, 1.0, 100)])[:, None].double()
    uni = adaptive_grid(x, 4, 2, grid_eps=1.0)[0]
    torch.testing.assert_close(uni, uniform_grid(4, 2, (0.0, 1.0), dtype=torch.float64))
    quant = adaptive_grid(x, 4, 2, grid_eps=0.0)[0]
    assert quant[2 + 1] == 0.0 and quant[2 + 2] == 0.0  # most samples sit at 0, so do the quantile knots
    assert not is_uniform(quant)
    assert (quant[1:] >= quant[:-1]).all()


def test_adaptive_grid_smooths_the_sample_quantiles():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 1, generator=gen, dtype=torch.float64) * 2 - 1  # uniform data: ideal knots are uniform
    G, k = 50, 3
    plain = adaptive_grid(x, G, k, grid_eps=0.0, quantile_samples=1)[0, k:k + G + 1]
    smooth = adaptive_grid(x, G, k, grid_eps=0.0)[0, k:k + G + 1]
    spread = {name: (g.diff().max() / g.diff().min()).item() for name, g in (("plain", plain), ("smooth", smooth))}
    assert spread["plain"] > 3, spread  # 20 samples per interval: some intervals are several times wider
    assert spread["smooth"] < 1.3, spread  # 4 segments of 250 samples: within a few percent of uniform
    # the smoothed knots still follow a skewed sample: denser where the data are
    skew = torch.randn(1000, 1, generator=gen, dtype=torch.float64).abs()
    g = adaptive_grid(skew, 20, k, grid_eps=0.0)[0, k:k + 21]
    assert g.diff()[:5].mean() < 0.5 * g.diff()[-5:].mean()
    # many samples: one quantile probability per 250 samples, the plain quantiles once N >= 250 G
    many = torch.rand(250 * 8, 1, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(adaptive_grid(many, 8, k, grid_eps=0.0),
                               adaptive_grid(many, 8, k, grid_eps=0.0, quantile_samples=1))
    with pytest.raises(ValueError, match="quantile_samples"):
        adaptive_grid(x, G, k, quantile_samples=0)


def test_curve_to_coef_recovers_coefficients_and_coef_to_curve_inverts():
    gen = torch.Generator().manual_seed(0)
    grid = uniform_grid(8, 3, dtype=torch.float64).expand(3, -1).contiguous()
    coef = torch.randn(3, 4, 11, dtype=torch.float64, generator=gen)
    x = torch.rand(500, 3, dtype=torch.float64, generator=gen) * 2 - 1
    y = coef_to_curve(x, grid, coef, 3)
    assert y.shape == (500, 3, 4)
    torch.testing.assert_close(curve_to_coef(x, y, grid, 3), coef, atol=1e-9, rtol=0)
    ridge = curve_to_coef(x, y, grid, 3, ridge=1e-10)
    torch.testing.assert_close(ridge, coef, atol=1e-5, rtol=0)


def test_least_squares_fit_error_falls_like_h_to_the_k_plus_1():
    x = torch.linspace(-1, 1, 4000, dtype=torch.float64)[:, None]
    y = torch.special.bessel_j0(20 * x)[:, :, None]
    errs = []
    Gs = [20, 40, 80]
    for G in Gs:
        grid = uniform_grid(G, 3, dtype=torch.float64)[None]
        c = curve_to_coef(x, y, grid, 3)
        errs.append((coef_to_curve(x, grid, c, 3) - y).pow(2).mean().sqrt().item())
    slope = np.polyfit(np.log(Gs), np.log(errs), 1)[0]
    assert -5.0 < slope < -3.5, slope


# ---- bad input -------------------------------------------------------------------------------------


def test_decreasing_knots_are_rejected():
    with pytest.raises(ValueError, match="non-decreasing"):
        bspline_basis(torch.zeros(3), torch.tensor([0.0, 1.0, 0.5, 2.0, 3.0]), 1)


def test_negative_order_is_rejected():
    with pytest.raises(ValueError, match="spline_order must be an int >= 0, got -1"):
        bspline_basis(torch.zeros(3), uniform_grid(5, 1), -1)
    with pytest.raises(ValueError, match="spline_order"):
        uniform_grid(5, -2)


def test_non_integer_order_is_rejected():
    with pytest.raises(TypeError, match="spline_order must be an int"):
        bspline_basis(torch.zeros(3), uniform_grid(5, 1), 1.5)


def test_too_few_knots_for_the_order():
    with pytest.raises(ValueError, match="needs at least 5"):
        bspline_basis(torch.zeros(3), torch.linspace(0, 1, 4), 3)


def test_last_dimension_must_match_per_feature_grid():
    grid = uniform_grid(5, 3).expand(4, -1)
    with pytest.raises(ValueError, match=r"in_features=4.*got x of shape \(10, 3\)"):
        bspline_basis(torch.zeros(10, 3), grid, 3)


def test_integer_x_is_rejected():
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        bspline_basis(torch.arange(3), uniform_grid(5, 3), 3)


def test_numpy_integers_are_accepted_as_sizes_and_orders():
    import numpy as np

    g = uniform_grid(np.int64(5), np.int32(3))
    assert g.shape == (5 + 2 * 3 + 1,)
    assert bspline_basis(torch.zeros(2), g, np.int64(3)).shape == (2, 8)
    with pytest.raises(TypeError, match="grid_size"):
        uniform_grid(True, 3)


def test_bad_grid_size_and_range():
    with pytest.raises(ValueError, match="grid_size must be an int >= 1, got 0"):
        uniform_grid(0, 3)
    with pytest.raises(ValueError, match="lo < hi"):
        uniform_grid(5, 3, (1, -1))


def test_uniform_method_on_nonuniform_knots_is_rejected():
    with pytest.raises(ValueError, match="equally spaced"):
        bspline_basis(torch.zeros(3), torch.tensor([0.0, 0.1, 0.5, 1.0, 2.0]), 1, method="uniform")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_auto_bases_on_adaptive_knots_equal_the_recursion(k):
    """On non-uniform knots bspline_basis uses per-interval polynomials: same values, knots and ends included."""
    from kanedu.splines import adaptive_grid, cox_de_boor

    gen = torch.Generator().manual_seed(k)
    x = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    grid = adaptive_grid(x[:100], 7, k)
    x[0, 0], x[1, 0], x[2, 1], x[3, 1] = grid[0, 0], grid[0, -1], grid[1, k], grid[1, -k - 1]  # on knots
    x[4, 2], x[5, 2] = 50.0, -50.0  # far outside
    fast = bspline_basis(x, grid, k)
    assert torch.allclose(fast, cox_de_boor(x, grid, k), rtol=0, atol=1e-12)
    xs = x[200:212].clone().requires_grad_(True)  # off the knots (quantiles of x[:100]): no kinks
    assert torch.autograd.gradcheck(lambda z: bspline_basis(z, grid, k), (xs,))
