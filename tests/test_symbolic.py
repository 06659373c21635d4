"""Symbolic regression on KANs: the library, affine fits, ranking, symbolic edges, formulas, and the
end-to-end recovery of exact formulas (the KAN paper's sparsify -> prune -> snap -> retrain recipe)."""

import copy
import math
import warnings

import pytest
import sympy
import torch

from kanedu import KAN, checkpoint, fit
from kanedu.data import FEYNMAN, TOY_FUNCTIONS, feynman_dataset, make_dataset, toy_dataset
from kanedu.splines import curve_to_coef
from kanedu.symbolic import (
    SYMBOLIC_LIBRARY,
    SymbolicEdges,
    auto_symbolic,
    fit_affine,
    fix_symbolic,
    polish_symbolic,
    suggest_symbolic,
    symbolic_edges,
    symbolic_formula,
    unfix_symbolic,
)

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------------
# the library
# --------------------------------------------------------------------------------------------------


def test_library_has_the_required_functions():
    need = {"x", "x^2", "x^3", "x^4", "1/x", "sqrt", "exp", "log", "sin", "cos", "tan", "tanh", "arctan", "abs",
            "sign", "gaussian", "0"}
    assert need <= set(SYMBOLIC_LIBRARY)
    for fn in SYMBOLIC_LIBRARY.values():
        assert fn.complexity >= 0 and callable(fn.torch_fn) and callable(fn.sympy_fn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_library_is_finite_with_finite_gradients_on_wide_inputs(dtype):
    big = 1e30 if dtype == torch.float32 else 1e300
    tiny = 1e-38 if dtype == torch.float32 else 1e-300
    x = torch.tensor([-big, -1e10, -1e6, -7.0, -1.0, -tiny, 0.0, tiny, 1e-10, 1.0, math.pi / 2, 7.0, 1e6, 1e10, big],
                     dtype=dtype)
    x = torch.cat([x, torch.linspace(-50, 50, 1001, dtype=dtype)]).requires_grad_(True)
    for name, fn in SYMBOLIC_LIBRARY.items():
        y = fn.torch_fn(x)
        assert torch.isfinite(y).all(), f"{name} is not finite at {x[~torch.isfinite(y)].tolist()}"
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(g).all(), f"the slope of {name} is not finite at {x[~torch.isfinite(g)].tolist()}"


def test_library_matches_its_sympy_form_away_from_the_guards():
    u = torch.linspace(-3, 3, 601, dtype=D)
    s = sympy.Symbol("u")
    for name, fn in SYMBOLIC_LIBRARY.items():
        ok = torch.ones_like(u, dtype=torch.bool)
        if name in ("log", "sqrt", "x^1.5", "1/sqrt(x)"):
            ok = u > 1e-2
        elif name in ("1/x", "sign", "1/x^2", "1/x^3", "1/x^4", "1/x^5"):
            ok = u.abs() > 1e-2
        elif name in ("arcsin", "arccos", "arctanh"):
            ok = u.abs() < 0.99
        elif name == "tan":
            ok = torch.cos(u).abs() > 1e-2
        f = sympy.lambdify(s, fn.sympy_fn(s) + 0 * s, "math")
        want = torch.tensor([float(f(float(v))) for v in u[ok]], dtype=D)
        torch.testing.assert_close(fn.torch_fn(u[ok]), want, rtol=1e-12, atol=1e-12, msg=name)


# --------------------------------------------------------------------------------------------------
# fit_affine
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, f, want",
    [
        ("sin", lambda x: torch.sin(math.pi * x), (math.pi, 0.0, 1.0, 0.0)),
        ("sin", lambda x: 0.5 * torch.sin(-2.0 * x + 0.7) + 3.0, (2.0, -0.7, -0.5, 3.0)),
        ("exp", lambda x: torch.exp(2 * x + 1), (2.0, 0.0, math.e, 0.0)),
        ("x^2", lambda x: 2 * (x - 0.3) ** 2 + 1, (1.0, -0.3, 2.0, 1.0)),
        ("x", lambda x: -3 * x + 2, (1.0, 0.0, -3.0, 2.0)),
        ("sqrt", lambda x: torch.sqrt(x + 1.5), (1.0, 1.5, 1.0, 0.0)),
        ("log", lambda x: torch.log(2 * x + 3), (1.0, 1.5, 1.0, math.log(2))),
        ("1/x", lambda x: 1 / (x + 2), (1.0, 2.0, 1.0, 0.0)),
        ("tanh", lambda x: torch.tanh(3 * x - 1), (3.0, -1.0, 1.0, 0.0)),
        ("gaussian", lambda x: torch.exp(-((2 * x - 0.3) ** 2)), (2.0, -0.3, 1.0, 0.0)),
        ("x^3", lambda x: (x - 0.2) ** 3, (1.0, -0.2, 1.0, 0.0)),
    ],
)
def test_fit_affine_recovers_clean_functions_in_canonical_form(name, f, want):
    x = torch.linspace(-1, 1, 201, dtype=D)
    params, r2 = fit_affine(x, f(x), name)
    assert r2 > 0.9999
    assert params == pytest.approx(want, abs=1e-5), f"{name}: got {params}, want {want}"


def test_fit_affine_works_in_float32_and_on_shifted_ranges():
    x = torch.linspace(2.0, 5.0, 150)  # float32, far from [-1, 1]
    params, r2 = fit_affine(x, 0.7 * torch.sin(1.3 * x - 0.4) - 0.2, "sin")
    assert r2 > 0.9999
    # all four constants, each with its sign (a wrong sign of b once passed a check of R^2 and a alone)
    assert params == pytest.approx((1.3, -0.4, 0.7, -0.2), abs=1e-3), params


def test_pykan_library_names_and_aliases_resolve():
    from kanedu.symbolic import DEFAULT_LIB, SYMBOLIC_ALIASES, _resolve_lib

    pykan_names = ["x", "x^2", "x^3", "x^4", "x^5", "1/x", "1/x^2", "1/x^3", "1/x^4", "1/x^5", "sqrt", "x^0.5",
                   "x^1.5", "1/sqrt(x)", "1/x^0.5", "exp", "log", "abs", "sin", "cos", "tan", "tanh", "sgn",
                   "arcsin", "arccos", "arctan", "arctanh", "0", "gaussian", "cosh", "sigmoid", "relu"]
    lib = _resolve_lib(pykan_names)
    assert _resolve_lib(["sgn"]) == {"sign": SYMBOLIC_LIBRARY["sign"]} and SYMBOLIC_ALIASES["x^0.5"] == "sqrt"
    assert len(lib) == len(pykan_names) - 2  # x^0.5 and 1/x^0.5 are sqrt and 1/sqrt(x), listed too
    assert set(_resolve_lib(None)) == set(DEFAULT_LIB) and "arcsin" not in DEFAULT_LIB
    x = torch.linspace(0.1, 0.9, 200, dtype=D)
    (a, b, c, d), r2 = fit_affine(x, 2 * torch.asin(0.8 * x) + 1, "arcsin")
    assert r2 > 1 - 1e-10 and abs(a - 0.8) < 1e-4 and abs(c - 2) < 1e-4


def test_fit_affine_rejects_bad_input():
    x = torch.linspace(-1, 1, 50, dtype=D)
    with pytest.raises(ValueError, match="name must be one of"):
        fit_affine(x, x, "cosech")
    with pytest.raises(ValueError, match="same shape"):
        fit_affine(x, x[:10], "x")
    with pytest.raises(ValueError, match="NaN"):
        fit_affine(x, x * float("nan"), "x")


# --------------------------------------------------------------------------------------------------
# ranking edges
# --------------------------------------------------------------------------------------------------


def _edge_model(curves, grid_size=20):
    """A KAN [len(curves), 1] whose edge i is curves[i] on [-1, 1] (spline only, least-squares fit)."""
    model = KAN([len(curves), 1], grid_size=grid_size, base_activation="zero", seed=0, dtype=D)
    layer = model.layers[0]
    u = torch.linspace(-1, 1, 400, dtype=D)[:, None].expand(-1, len(curves))
    target = torch.stack([c(u[:, i]) for i, c in enumerate(curves)], 1)[:, :, None]  # [N, in, 1]
    with torch.no_grad():
        layer.scale_spline.fill_(1.0)
        layer.coef.copy_(curve_to_coef(u, target, layer.grid, layer.spline_order))
    return model


def test_suggest_ranks_clean_edges_and_calls_only_a_negligible_edge_zero():
    model = _edge_model([lambda x: torch.sin(math.pi * x), lambda x: x**2, lambda x: torch.exp(x),
                         lambda x: 1e-4 * torch.cos(3 * x)])
    best = [suggest_symbolic(model, 0, i, 0)[0].name for i in range(4)]
    assert best == ["sin", "x^2", "exp", "0"]
    s = suggest_symbolic(model, 0, 0, 0, topk=3)
    assert len(s) == 3 and s[0].r2 > 0.99999 and not s.ambiguous
    assert abs(s[0].params[0]) == pytest.approx(math.pi, rel=1e-3)
    assert [c.score for c in s] == sorted([c.score for c in s], reverse=True)


def test_a_small_but_real_sine_beats_zero():
    # pykan can call such an edge "0"; here "0" needs the edge to carry < 1% of its node
    model = _edge_model([lambda x: 0.05 * torch.sin(math.pi * x), lambda x: 2 * x + x**2])
    s = suggest_symbolic(model, 0, 0, 0)
    assert s[0].name == "sin" and "0" not in [c.name for c in s]
    assert 0.01 < s.importance < 0.1


def test_suggest_uses_layer_inputs_from_samples():
    model = _edge_model([lambda x: torch.sin(math.pi * x), lambda x: x])
    # narrower than the grid: the fit sees only this range
    x = torch.rand(300, 2, dtype=D, generator=torch.Generator().manual_seed(1)) * 0.8 - 0.4
    s = suggest_symbolic(model, 0, 0, 0, x=x)
    # sin or cos: one family (cos u = sin(u + pi/2)); which of the two ties first depends on the samples, and
    # asserting "sin" made this test fail on some draws of x (it used the global RNG, so the test order decided)
    assert SYMBOLIC_LIBRARY[s[0].name].family == "sin" and s.edge == (0, 0, 0)
    with pytest.raises(ValueError, match="x must be"):
        suggest_symbolic(model, 0, 0, 0, x=x[:, :1])
    with pytest.raises(ValueError, match="i must be"):
        suggest_symbolic(model, 0, 5, 0)
    with pytest.raises(ValueError, match="unknown function"):
        suggest_symbolic(model, 0, 0, 0, lib=["sin", "sinh"])


def test_noisy_labels_make_candidates_ambiguous_and_the_api_says_so():
    # exp(x) + noise 0.05: the trained edge is fitted about equally well by exp and by a parabola
    ds = make_dataset(lambda x: torch.exp(x[..., 0]), 1, n_train=200, n_test=200, noise=0.05, seed=0, dtype=D)
    model = KAN([1, 1], seed=0, dtype=D)
    fit(model, ds, steps=10, progress=False, seed=0)
    s = suggest_symbolic(model, 0, 0, 0, ds["train_input"])
    names = [c.name for c in s]
    assert s.ambiguous and "exp" in names[:3] and "x^2" in names[:3]
    assert s.rivals and all(s[0].score - c.score <= s.margin for c in s.rivals)
    assert "AMBIGUOUS" in repr(s)
    with pytest.warns(UserWarning, match="ambiguous"):
        report = auto_symbolic(model, ds["train_input"])
    assert (0, 0, 0) in report.ambiguous and report.ambiguous[(0, 0, 0)][0].name == s[0].name
    model2 = KAN([1, 1], seed=0, dtype=D)
    fit(model2, ds, steps=10, progress=False, seed=0)
    with pytest.warns(UserWarning, match="ambiguous"):
        report = auto_symbolic(model2, ds["train_input"], on_ambiguous="skip")
    assert len(report) == 0 and (0, 0, 0) in report.skipped and not symbolic_edges(model2)


def test_auto_symbolic_leaves_an_edge_numeric_only_when_no_candidate_fits_and_says_so():
    x = torch.linspace(-1, 1, 200, dtype=D)[:, None]
    ds = {"train_input": x, "train_label": torch.sin(6 * x) * torch.exp(-x), "test_input": x,
          "test_label": torch.sin(6 * x) * torch.exp(-x)}
    model = KAN([1, 1], grid_size=10, seed=0, dtype=D)
    fit(model, ds, steps=20, progress=False, seed=0)
    with pytest.warns(UserWarning, match=r"left 1 edge\(s\) numeric.*no candidate reached r2_threshold"):
        report = auto_symbolic(model, x, lib=["x", "x^2"])
    assert len(report) == 0 and (0, 0, 0) in report.skipped and not symbolic_edges(model)
    assert "left numeric: no candidate fits" in repr(report)
    # with the function in the library, the same edge snaps (no warning about numeric edges)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fit(model, {**ds, "train_label": torch.exp(0.7 * x), "test_label": torch.exp(0.7 * x)}, steps=20,
            progress=False, seed=0)
        report = auto_symbolic(model, x, lib=["x", "x^2", "exp"])
    assert [name for *_, name, _ in report] == ["exp"] and not report.skipped


def test_auto_symbolic_takes_the_best_candidate_that_reaches_the_threshold():
    # a strong simplicity weight ranks "x" (a poor fit of sin(3x)) above "sin" (an exact one); the threshold
    # is a floor, so the edge snaps to sin rather than staying numeric (pykan's hello-KAN script met this)
    x = torch.linspace(-1, 1, 200, dtype=D)[:, None]
    ds = {"train_input": x, "train_label": torch.sin(3 * x), "test_input": x, "test_label": torch.sin(3 * x)}
    model = KAN([1, 1], grid_size=10, seed=0, dtype=D)
    fit(model, ds, steps=20, progress=False, seed=0)
    s = suggest_symbolic(model, 0, 0, 0, x, lib=["x", "sin"], weight_simple=3.0)
    assert s[0].name == "x" and s[0].r2 < 0.9 and max(c.r2 for c in s if c.name == "sin") > 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # (the two may be reported as ambiguous)
        report = auto_symbolic(model, x, lib=["x", "sin"], weight_simple=3.0)
    assert [name for *_, name, _ in report] == ["sin"] and not report.skipped
    torch.testing.assert_close(model(x), torch.sin(3 * x), rtol=0, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# symbolic edges inside the model
# --------------------------------------------------------------------------------------------------


def test_fix_symbolic_replaces_the_edge_in_forward_and_edge_activations():
    model = KAN([2, 3, 1], seed=0, dtype=D)
    x = torch.rand(50, 2, dtype=D, generator=torch.Generator().manual_seed(2)) * 2 - 1
    fix_symbolic(model, 0, 1, 2, "sin", params=(2.0, 0.5, 1.5, -0.25))
    layer = model.layers[0]
    assert layer.mask[1, 2] == 0 and isinstance(layer.symbolic, SymbolicEdges)
    phi = layer.edge_activations(x)
    torch.testing.assert_close(phi[:, 2, 1], 1.5 * torch.sin(2.0 * x[:, 1] + 0.5) - 0.25)
    torch.testing.assert_close(layer(x), layer.forward_reference(x))
    assert symbolic_edges(model) == {(0, 1, 2): "sin"}


def test_fix_symbolic_fits_the_current_curve():
    model = _edge_model([lambda x: 0.7 * torch.exp(1.5 * x) - 0.2, lambda x: x])
    x = torch.rand(200, 2, dtype=D, generator=torch.Generator().manual_seed(3)) * 2 - 1
    before = model(x)
    cand = fix_symbolic(model, 0, 0, 0, "exp", x=x)
    assert cand.name == "exp" and cand.r2 > 0.99999
    assert cand.params == pytest.approx((1.5, 0.0, 0.7, -0.2), abs=1e-3)
    torch.testing.assert_close(model(x), before, atol=1e-4, rtol=0)


def test_symbolic_parameters_keep_training_under_fit():
    ds = make_dataset(lambda x: torch.sin(math.pi * x[..., 0]), 1, n_train=100, n_test=100, seed=0, dtype=D)
    model = KAN([1, 1], seed=0, dtype=D)
    fix_symbolic(model, 0, 0, 0, "sin", params=(2.5, 0.3, 0.7, 0.1))
    before = model.layers[0].symbolic.params.detach().clone()
    hist = fit(model, ds, steps=10, progress=False, seed=0)
    after = model.layers[0].symbolic.params.detach()[0, 0]
    assert not torch.equal(before[0, 0], after)
    assert hist.last["test_rmse"] < 1e-8
    a, b, c, d = after.tolist()
    assert abs(a) == pytest.approx(math.pi, abs=1e-6) and abs(c) == pytest.approx(1.0, abs=1e-6)


def test_state_dict_round_trip_rebuilds_symbolic_edges(tmp_path):
    model = KAN([2, 3, 1], seed=0, dtype=D)
    fix_symbolic(model, 0, 0, 1, "sin", params=(2.0, 0.1, 1.0, 0.0))
    fix_symbolic(model, 0, 1, 1, "x^2", params=(1.0, -0.2, 0.5, 0.3))
    fix_symbolic(model, 1, 1, 0, "exp", params=(0.5, 0.0, 1.2, -1.0))
    x = torch.rand(40, 2, dtype=D, generator=torch.Generator().manual_seed(4)) * 2 - 1
    fresh = KAN(**model.config).to(D)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert symbolic_edges(fresh) == symbolic_edges(model)
    path = tmp_path / "sym.pt"
    checkpoint.save(model, path)
    loaded = checkpoint.load(path)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert symbolic_edges(loaded) == {(0, 0, 1): "sin", (0, 1, 1): "x^2", (1, 1, 0): "exp"}
    with pytest.raises(RuntimeError, match="symbolic"):  # a plain model's state dict lacks the edges
        model.load_state_dict(KAN(**model.config).to(D).state_dict())


def test_copies_pruning_and_unfix_keep_symbolic_edges_consistent():
    model = KAN([2, 3, 1], seed=0, dtype=D)
    x = torch.rand(100, 2, dtype=D, generator=torch.Generator().manual_seed(5)) * 2 - 1
    fix_symbolic(model, 0, 1, 2, "sin", params=(3.0, 0.0, 1.0, 0.0))
    torch.testing.assert_close(copy.deepcopy(model)(x), model(x))
    with torch.no_grad():  # hidden node 0 carries nothing: pruning removes it without changing the function
        model.layers[0].mask[:, 0] = 0
        model.layers[1].mask[0, :] = 0
    small = model.prune(x)
    assert small.widths == [2, 2, 1]
    assert symbolic_edges(small) == {(0, 1, 1): "sin"}
    torch.testing.assert_close(small(x), model(x))
    before_fix = KAN([2, 3, 1], seed=0, dtype=D)
    m2 = copy.deepcopy(before_fix)
    fix_symbolic(m2, 0, 1, 2, "x")
    unfix_symbolic(m2, 0, 1, 2)
    torch.testing.assert_close(m2(x), before_fix(x))
    assert m2.layers[0].symbolic is None
    with pytest.raises(ValueError, match="not symbolic"):
        unfix_symbolic(m2, 0, 1, 2)


def test_symbolic_formula_needs_every_active_edge_symbolic_and_rounds_constants():
    model = KAN([2, 1], seed=0, dtype=D)
    fix_symbolic(model, 0, 0, 0, "sin", params=(3.14159265, 1e-9, 0.50000001, 0.0))
    with pytest.raises(ValueError, match=r"numeric edges \(l, i, j\): \[\(0, 1, 0\)\]"):
        symbolic_formula(model)
    fix_symbolic(model, 0, 1, 0, "x^2", params=(1.0, 0.0, 1.2345678, 0.1))
    x1, x2 = sympy.symbols("x1 x2")
    (f,) = symbolic_formula(model)
    assert f == sympy.sin(sympy.pi * x1) / 2 + sympy.Float(1.235, 4) * x2**2 + sympy.Rational(1, 10)
    (g,) = symbolic_formula(model, var_names=["a", "b"], snap=False, precision=3)
    assert g.free_symbols == {sympy.Symbol("a"), sympy.Symbol("b")} and "3.14" in str(g)


# --------------------------------------------------------------------------------------------------
# acceptance: recover exact formulas from data
# --------------------------------------------------------------------------------------------------


def _same(f, truth) -> bool:
    d = sympy.simplify(f - truth)
    return d == 0 or sympy.simplify(d.rewrite(sympy.exp)) == 0


def _check_recovered(model, ds, truth):
    """Structural (sympy) and numerical agreement of the recovered formula with the truth."""
    (f,) = symbolic_formula(model)
    assert _same(f, truth), f"recovered {f}, expected {truth}"
    (rounded,) = symbolic_formula(model, snap=False)  # constants rounded to 4 significant digits, not snapped
    syms = sympy.symbols(f"x1:{ds['test_input'].shape[1] + 1}")
    got, want = (sympy.lambdify(syms, e, "math") for e in (rounded, truth))
    pts = ds["test_input"][:200].tolist()
    err = max(abs(got(*p) - want(*p)) / max(1.0, abs(want(*p))) for p in pts)
    assert err < 1e-3, f"rounded formula {rounded} is off by {err:.2e}"
    rmse = (model(ds["test_input"]) - ds["test_label"]).pow(2).mean().sqrt().item()
    assert rmse <= 1e-6, f"test RMSE {rmse:.2e} of the symbolic model"
    return f


def _sparse_pruned(ds, widths, seed, lamb=1e-2):
    """Train with sparsity regularization, prune (library defaults), retrain: the KAN paper's first steps."""
    model = KAN(widths, grid_size=5, seed=seed, dtype=D)
    fit(model, ds, steps=20, lamb=lamb, progress=False, seed=0)
    model = model.prune(ds["train_input"])
    fit(model, ds, steps=30, progress=False, seed=0)
    return model


def _recovers(ds, truth, seed, lamb, layerwise):
    """The whole recipe with the library's defaults; True when the formula is the truth."""
    model = _sparse_pruned(ds, [2, 5, 1], seed, lamb=lamb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ambiguity warnings are in the report; not the point here
        if layerwise:  # snap layer by layer, letting the numeric layers above adapt in between
            for l in range(len(model.layers)):
                auto_symbolic(model, ds["train_input"], layers=[l])
                if l < len(model.layers) - 1:
                    fit(model, ds, steps=10, progress=False, seed=0)
        else:
            auto_symbolic(model, ds["train_input"])
    if symbolic_edges(model) and not any(layer.mask.any() for layer in model.layers):
        if layerwise:
            polish_symbolic(model, ds)
        else:
            fit(model, ds, steps=20, progress=False, seed=0)  # retrain the few affine parameters
        (f,) = symbolic_formula(model)
        if _same(f, truth):
            _check_recovered(model, ds, truth)  # and the constants and the test error
            return True
    return False


def _exp_half_x1_plus_tanh_x2(x):
    return torch.exp(0.5 * x[..., 0] + torch.tanh(x[..., 1]))


@pytest.mark.parametrize("target", ["exp_sin_sq", "exp_half_x1_tanh_x2"])
def test_the_recipe_recovers_the_formula_on_most_seeds(target):
    # sparsify (lamb = 1e-2) -> prune() -> retrain -> auto_symbolic() -> retrain, library defaults throughout.
    # Measured: exp(sin(pi x1) + x2^2) on 5 of 5 seeds at 1 and at 2 threads (test RMSE ~6e-16 after
    # snapping); exp(x1 / 2 + tanh(x2)) on 5 of 5 (its outer edge snaps to exp, its x2 edge to tanh).
    if target == "exp_sin_sq":
        ds = toy_dataset("exp_sin_sq", n_train=200, n_test=500, seed=0, dtype=D)
        truth = TOY_FUNCTIONS[target].sympy_expr
    else:
        ds = make_dataset(_exp_half_x1_plus_tanh_x2, n_var=2, n_train=200, n_test=500, seed=0, dtype=D)
        x1, x2 = sympy.symbols("x1 x2")
        truth = sympy.exp(x1 / 2 + sympy.tanh(x2))
    results = {seed: _recovers(ds, truth, seed, lamb=1e-2, layerwise=False) for seed in range(5)}
    print(f"{truth} recovered on {sum(results.values())} of 5 seeds: {results}")
    assert sum(results.values()) >= 4, f"{truth}: recovered on {sum(results.values())} of 5 seeds only: {results}"


# Harder formulas are snapped layer by layer (retraining the numeric edges still left in between, so they
# adapt to the exact formulas below them), then polished by Levenberg-Marquardt: LBFGS crawls along the
# nearly flat valleys such formulas have (c sqrt(u + k) + d mimics sqrt(u + 1) to 1e-5). Success rates
# measured over seeds 0-4 at 1 and 2 threads: I.40.1 5/5 and 5/5, I.27.6 5/5 and 4/5, III.10.19 with
# lamb = 1e-3 5/5 and 5/5 (at lamb = 1e-2 its small output range lets the penalty switch every edge off:
# 0/5). x1 * x2 through squares needs two hidden nodes, which the penalty prunes to one (0-1 of 5 seeds at
# lamb 1e-2 and 1e-3): the KAN 2.0 multiplication node is the way to it (tests/test_mult.py).
RECOVER = [
    ("III.10.19", 1e-3),  # sqrt(1 + x1^2 + x2^2)
    ("I.40.1", 1e-2),  # x1 exp(-x2) = exp(log x1 - x2)
    ("I.27.6", 1e-2),  # 1 / (1 + x1 x2) = (1 - tanh((log x1 + log x2) / 2)) / 2
]


@pytest.mark.parametrize("name, lamb", RECOVER)
def test_the_recipe_recovers_feynman_formulas_on_most_seeds(name, lamb):
    ds, truth = feynman_dataset(name, n_train=200, n_test=500, seed=0, dtype=D), FEYNMAN[name].sympy_expr
    results = {seed: _recovers(ds, truth, seed, lamb=lamb, layerwise=True) for seed in range(3)}
    print(f"{name} recovered on {sum(results.values())} of 3 seeds: {results}")
    assert sum(results.values()) >= 2, f"{name}: recovered on {sum(results.values())} of 3 seeds only: {results}"
