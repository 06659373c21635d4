"""KANLayer: the fast kernel equals the reference, grid operations keep the function, bad input."""

import pytest
import torch

from kanedu import KANLayer, kernels, native
from kanedu.splines import adaptive_grid, bspline_basis, curve_to_coef, interval_table, uniform_grid


def kan_linear(x, W, grid, k, base, uniform):
    """kernels.kan_linear with the grid's table built here (base None = no residual branch)."""
    return kernels.kan_linear(x, W, grid, interval_table(grid, k), k, base or "zero", uniform)


@pytest.fixture(params=["native", "torch"])
def engine(request, monkeypatch):
    """Run a kernel test on both CPU engines: the compiled loops (kanedu.native) and the torch kernel (what
    runs on a GPU, or without numba)."""
    if request.param == "native" and not native.ENABLED:
        pytest.skip("numba is not installed (or KANEDU_NATIVE=0)")
    monkeypatch.setattr(native, "ENABLED", request.param == "native")
    return request.param


def rel_change(new, old):
    return ((new - old).pow(2).mean().sqrt() / old.pow(2).mean().sqrt()).item()


def reference(x, weight, grid, k):
    """Cox-de Boor bases + einsum: y_o = sum_i silu(x_i) W[i,0,o] + sum_m B_m(x_i) W[i,1+m,o]."""
    B = bspline_basis(x, grid, k, method="reference")
    phi = torch.cat([torch.nn.functional.silu(x).unsqueeze(-1), B], dim=-1)
    return torch.einsum("nis,iso->no", phi, weight)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("grid_kind", ["uniform", "adaptive"])
@pytest.mark.parametrize("spread", [0.9, 2.5])  # inside the grid / partly outside the extended knots
def test_fast_kernel_equals_reference_forward_and_backward(k, grid_kind, spread, engine):
    gen = torch.Generator().manual_seed(k)
    n_in, n_out, G = 4, 3, 7
    x = (torch.rand(257, n_in, dtype=torch.float64, generator=gen) * 2 - 1) * spread
    if grid_kind == "uniform":
        grid = uniform_grid(G, k, dtype=torch.float64).expand(n_in, -1).contiguous()
    else:
        grid = adaptive_grid(torch.randn(400, n_in, dtype=torch.float64, generator=gen) * 0.6, G, k, 0.1)
    W = torch.randn(n_in, G + k + 1, n_out, dtype=torch.float64, generator=gen)
    g = torch.randn(257, n_out, dtype=torch.float64, generator=gen)
    xa, Wa = x.clone().requires_grad_(), W.clone().requires_grad_()
    xb, Wb = x.clone().requires_grad_(), W.clone().requires_grad_()
    ya = kan_linear(xa, Wa, grid, k, "silu", uniform=grid_kind == "uniform")
    yb = reference(xb, Wb, grid, k)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-11)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(Wa.grad, Wb.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("base", ["silu", "tanh", "identity", "relu", None])
def test_gradcheck_every_path(uniform, base, engine):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(12, 3, dtype=torch.float64, generator=gen) * 3 - 1.5).requires_grad_()
    if uniform:
        grid = uniform_grid(4, 3, dtype=torch.float64).expand(3, -1).contiguous()
    else:
        grid = adaptive_grid(torch.randn(50, 3, dtype=torch.float64, generator=gen), 4, 3, 0.2)
    W = torch.randn(3, 8, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W: kan_linear(x, W, grid, 3, base, uniform), (x, W))


def _kernel_case(seed, n_in, n_out, G, N, k, grid_kind, spread):
    """float64 inputs (``spread`` > 1 puts some outside the grid), grid, weights and output gradient."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(N, n_in, dtype=torch.float64, generator=gen) * 2 - 1) * spread
    if grid_kind == "uniform":
        grid = uniform_grid(G, k, dtype=torch.float64).expand(n_in, -1).contiguous()
    else:
        grid = adaptive_grid(torch.randn(800, n_in, dtype=torch.float64, generator=gen) * 0.6, G, k, 0.1)
    W = torch.randn(n_in, G + k + 1, n_out, dtype=torch.float64, generator=gen)
    g = torch.randn(N, n_out, dtype=torch.float64, generator=gen)
    return x, grid, W, g


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("grid_kind", ["uniform", "adaptive"])
@pytest.mark.parametrize("spread", [0.9, 2.5])
@pytest.mark.parametrize("base", ["silu", None])
def test_large_grid_gathered_input_gradient_equals_reference(k, grid_kind, spread, base, engine):
    # G = 30: many slots per feature, so the compiled loops take their sparse route (no Phi)
    G = 30
    assert G + k + 1 >= native.SPARSE_MIN_SLOTS
    x, grid, W, g = _kernel_case(10 + k, 5, 4, G, 300, k, grid_kind, spread)
    xa, Wa = x.clone().requires_grad_(), W.clone().requires_grad_()
    xb, Wb = x.clone().requires_grad_(), W.clone().requires_grad_()
    kan_linear(xa, Wa, grid, k, base, uniform=grid_kind == "uniform").backward(g)
    Wr = Wb if base is not None else torch.cat([torch.zeros_like(Wb[:, :1]), Wb[:, 1:]], 1)
    reference(xb, Wr, grid, k).backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(Wa.grad, Wb.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("grid_kind", ["uniform", "adaptive"])
@pytest.mark.parametrize("spread", [0.9, 2.5])
@pytest.mark.parametrize("G", [7, 30])  # the compiled loops' dense route (Phi and BLAS) / sparse route
@pytest.mark.parametrize("needs", ["both", "weight", "input"])
@pytest.mark.parametrize("keep", [True, False])
def test_large_batch_equals_reference_on_both_routes(k, grid_kind, spread, G, needs, keep, engine, monkeypatch):
    # enough (sample, feature) pairs for the dense route at G = 7; backward takes forward's Phi and located
    # bases (keep) or, as for calls that would keep more than KEEP_BYTES, rebuilds them from x
    if not keep:
        monkeypatch.setattr(native, "KEEP_BYTES", 0)
    N = native.DENSE_MIN_PAIRS // 3 + 5
    assert native.dense_route(N, 3, 7 + k + 1) and not native.dense_route(N, 3, 30 + k + 1)
    x, grid, W, g = _kernel_case(20 + k + G, 3, 4, G, N, k, grid_kind, spread)
    xa, Wa = x.clone().requires_grad_(needs != "weight"), W.clone().requires_grad_(needs != "input")
    xb, Wb = x.clone().requires_grad_(needs != "weight"), W.clone().requires_grad_(needs != "input")
    ya = kan_linear(xa, Wa, grid, k, "silu", uniform=grid_kind == "uniform")
    yb = reference(xb, Wb, grid, k)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-11)
    ya.backward(g, retain_graph=True)
    yb.backward(g)
    for a, b in ((xa, xb), (Wa, Wb)):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)
            a.grad = None
    ya.backward(g)  # a second backward through the same saved tensors gives the same gradients
    for a, b in ((xa, xb), (Wa, Wb)):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-10)
    # float32: the same within float32 rounding
    xf, Wf = x.float().requires_grad_(needs != "weight"), W.float().requires_grad_(needs != "input")
    kan_linear(xf, Wf, grid.float(), k, "silu", uniform=grid_kind == "uniform").backward(g.float())
    for a, b in ((xf, xb), (Wf, Wb)):
        if a.requires_grad:
            torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-3)


def test_large_grid_gradcheck_and_float32(engine):
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(9, 2, dtype=torch.float64, generator=gen) * 3 - 1.5).requires_grad_()
    grid = uniform_grid(25, 3, dtype=torch.float64).expand(2, -1).contiguous()
    W = torch.randn(2, 29, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W: kan_linear(x, W, grid, 3, "tanh", True), (x, W))
    # float32 against float64 (the gathered path in both)
    xf, Wf = x.detach().float().requires_grad_(), W.detach().float().requires_grad_()
    kan_linear(xf, Wf, grid.float(), 3, "tanh", True).sum().backward()
    xd, Wd = x.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    kan_linear(xd, Wd, grid, 3, "tanh", True).sum().backward()
    torch.testing.assert_close(xf.grad.double(), xd.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(Wf.grad.double(), Wd.grad, rtol=1e-4, atol=1e-4)


def test_layer_forward_equals_edge_by_edge_reference_float32(engine):
    layer = KANLayer(5, 6, grid_size=8)
    x = torch.rand(300, 5) * 2.6 - 1.3
    torch.testing.assert_close(layer(x), layer.forward_reference(x), rtol=1e-5, atol=1e-5)


def test_float32_large_grid_stays_exact(engine):
    layer = KANLayer(3, 2, grid_size=200)
    with torch.no_grad():
        layer.coef.normal_()
    x = torch.rand(2000, 3) * 2 - 1
    ref = layer.double().forward_reference(x.double())
    fast = layer.float()(x)
    assert (fast.double() - ref).abs().max() < 1e-4


def test_edge_activations_shape_and_sum():
    layer = KANLayer(3, 4)
    x = torch.randn(2, 7, 3)
    phi = layer.edge_activations(x)
    assert phi.shape == (2, 7, 4, 3)
    torch.testing.assert_close(phi.sum(-1), layer(x), rtol=1e-5, atol=1e-5)


def test_mask_switches_edges_off():
    layer = KANLayer(2, 2)
    with torch.no_grad():
        layer.mask[0, 1] = 0
    x = torch.randn(10, 2)
    phi = layer.edge_activations(x)
    assert (phi[:, 1, 0] == 0).all()
    torch.testing.assert_close(layer(x), phi.sum(-1), rtol=1e-5, atol=1e-5)


def _perturbed(layer, gen, smooth):
    """Learnable scales moved away from their initial values (efficient-kan's update_grid bug shows up
    exactly then); optionally smooth, trained-looking splines."""
    with torch.no_grad():
        layer.scale_spline.mul_(torch.rand(layer.scale_spline.shape, generator=gen, dtype=torch.float64) * 3 + 0.2)
        layer.scale_base.add_(torch.randn(layer.scale_base.shape, generator=gen, dtype=torch.float64))
        if smooth:
            xs = torch.linspace(-1, 1, 400, dtype=torch.float64)[:, None].expand(-1, layer.in_features)
            shape = (layer.in_features, layer.out_features)
            a, b, c = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
            ys = a * torch.sin((b.abs() + 0.5) * xs[:, :, None] + c)
            layer.coef.copy_(curve_to_coef(xs, ys, layer.grid, layer.spline_order))
    return layer


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("G", [5, 20])
@pytest.mark.parametrize("grid_eps", [1.0, 0.02, 0.0])
@pytest.mark.parametrize("smooth", [False, True])
def test_update_grid_keeps_the_function_within_1_percent(k, G, grid_eps, smooth):
    gen = torch.Generator().manual_seed(G + k)
    layer = _perturbed(KANLayer(3, 4, G, k, grid_eps=grid_eps, dtype=torch.float64), gen, smooth)
    x = torch.rand(1000, 3, dtype=torch.float64, generator=gen) * 1.9 - 0.95
    before = layer(x)
    layer.update_grid(x)
    assert rel_change(layer(x), before) < 0.01
    assert not layer._uniform or grid_eps == 1.0


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("new_G", [10, 13, 40])
def test_refine_keeps_the_function_within_1_percent(k, new_G):
    gen = torch.Generator().manual_seed(new_G)
    layer = _perturbed(KANLayer(3, 4, 5, k, dtype=torch.float64), gen, smooth=True)
    x = torch.rand(1000, 3, dtype=torch.float64, generator=gen) * 2 - 1
    before = layer(x)
    finer = layer.refine(new_G)  # no samples: same range, dense sweep
    assert finer.grid_size == new_G and finer.coef.shape == (3, 4, new_G + k)
    assert layer.grid_size == 5 and torch.equal(layer(x), before)  # a copy: the layer itself is unchanged
    assert rel_change(finer(x), before) < 0.01


def test_refine_to_a_nested_uniform_grid_is_exact():
    layer = _perturbed(KANLayer(2, 2, 5, 3, dtype=torch.float64), torch.Generator().manual_seed(1), smooth=True)
    x = torch.rand(500, 2, dtype=torch.float64) * 2 - 1
    before = layer(x)
    assert rel_change(layer.refine(20)(x), before) < 1e-10


def test_refine_with_samples_follows_them():
    layer = _perturbed(KANLayer(2, 3, 5, 3, dtype=torch.float64), torch.Generator().manual_seed(2), smooth=True)
    x = torch.rand(800, 2, dtype=torch.float64) * 1.6 - 0.8
    before = layer(x)
    layer = layer.refine(12, x)
    assert rel_change(layer(x), before) < 0.01
    assert torch.allclose(layer.grid[:, 3], x.min(0).values) and torch.allclose(layer.grid[:, -4], x.max(0).values)


def test_state_dict_round_trip_keeps_adapted_grid():
    a = KANLayer(3, 2, grid_eps=0.0)
    a.update_grid(torch.randn(200, 3))
    b = KANLayer(3, 2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(50, 3)
    torch.testing.assert_close(a(x), b(x))
    assert not b._uniform


def test_to_double_and_repr():
    layer = KANLayer(2, 3).double()
    assert layer(torch.randn(4, 2, dtype=torch.float64)).dtype == torch.float64
    assert "grid_size=5" in repr(layer)


def test_reset_parameters_with_generator_is_reproducible_and_leaves_global_rng_alone():
    a, b = KANLayer(3, 3), KANLayer(3, 3)
    state = torch.get_rng_state()
    a.reset_parameters(torch.Generator().manual_seed(5))
    b.reset_parameters(torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a.coef, b.coef)
    torch.testing.assert_close(a.scale_base, b.scale_base)


def test_any_order_works_including_unusual_ones():
    for k in (1, 2, 4, 6):
        layer = KANLayer(2, 2, grid_size=6, spline_order=k)
        x = torch.rand(40, 2) * 2 - 1
        torch.testing.assert_close(layer(x), layer.forward_reference(x), rtol=1e-5, atol=1e-5)
    layer0 = KANLayer(2, 2, spline_order=0)  # piecewise constant: reference path
    assert layer0(torch.zeros(3, 2)).shape == (3, 2)


def test_custom_base_activation_name_and_module():
    for act in ("gelu", torch.nn.Tanh, torch.nn.GELU):
        layer = KANLayer(2, 2, base_activation=act)
        x = torch.randn(9, 2, requires_grad=True)
        layer(x).sum().backward()
        torch.testing.assert_close(layer(x), layer.forward_reference(x), rtol=1e-5, atol=1e-5)


# ---- bad input ---------------------------------------------------------------------------------------


def test_wrong_last_dimension():
    with pytest.raises(ValueError, match=r"in_features=3, got shape \(5, 4\)"):
        KANLayer(3, 2)(torch.zeros(5, 4))


def test_integer_input():
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        KANLayer(3, 2)(torch.zeros(5, 3, dtype=torch.long))


def test_a_masked_layer_runs_the_same_on_the_torch_kernel_and_the_reference(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", False)  # KANEDU_NATIVE=0: the torch kernel (what a GPU runs)
    gen = torch.Generator().manual_seed(3)
    layer = _perturbed(KANLayer(4, 3, 6, 3, dtype=torch.float64), gen, smooth=False)
    with torch.no_grad():
        layer.mask[1, 2] = 0.0
        layer.mask[3, :] = 0.0
    x = (torch.rand(64, 4, dtype=torch.float64, generator=gen) * 2.4 - 1.2).requires_grad_()
    y = layer(x)
    torch.testing.assert_close(y, layer.forward_reference(x))
    g = torch.randn(64, 3, dtype=torch.float64, generator=gen)
    grads = torch.autograd.grad(y, [x, layer.coef, layer.scale_base], g)
    ref = torch.autograd.grad(layer.forward_reference(x), [x, layer.coef, layer.scale_base], g)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)
    assert grads[1][3].abs().max() == 0 and grads[2][1, 2] == 0  # masked edges get no gradient


def test_grid_size_below_one():
    with pytest.raises(ValueError, match="grid_size must be an int >= 1, got 0"):
        KANLayer(3, 2, grid_size=0)


def test_negative_spline_order():
    with pytest.raises(ValueError, match="spline_order must be an int >= 0, got -1"):
        KANLayer(3, 2, spline_order=-1)


def test_bad_widths_and_activation():
    with pytest.raises(ValueError, match="in_features must be an int >= 1, got 0"):
        KANLayer(0, 2)
    with pytest.raises(ValueError, match="base_activation must be one of"):
        KANLayer(2, 2, base_activation="swish2")


def test_dtype_mismatch_is_explained():
    with pytest.raises(TypeError, match="layer.to"):
        KANLayer(2, 2)(torch.zeros(3, 2, dtype=torch.float64))


@pytest.mark.parametrize("constructed_with", [0.0, 0.02, 1.0])
def test_update_grid_uses_its_grid_eps_argument_whatever_the_constructor_said(constructed_with):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, dtype=torch.float64, generator=gen) ** 3  # skewed samples
    G, k = 8, 3
    layer = KANLayer(2, 1, G, k, grid_eps=constructed_with, dtype=torch.float64)
    layer.update_grid(x, grid_eps=1.0)  # uniform over the sample range
    inner = layer.grid[:, k:k + G + 1]
    lo, hi = x.min(0).values[:, None], x.max(0).values[:, None]
    torch.testing.assert_close(inner, lo + (hi - lo) * torch.linspace(0, 1, G + 1, dtype=torch.float64))
    layer.update_grid(x, grid_eps=0.0)  # the (smoothed) sample quantiles
    torch.testing.assert_close(layer.grid, adaptive_grid(x, G, k, grid_eps=0.0))
    assert not layer._uniform and layer.grid_eps == constructed_with  # the argument does not stick


def test_update_grid_updates_parameters_in_place_so_optimizers_keep_them():
    layer = KANLayer(2, 2)
    ids = (id(layer.coef), layer.coef.data_ptr(), layer.grid.data_ptr())
    layer.update_grid(torch.randn(100, 2))
    assert (id(layer.coef), layer.coef.data_ptr(), layer.grid.data_ptr()) == ids
