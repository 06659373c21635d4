"""kanedu.plot: what each picture contains, that nothing is written unless asked, and bad input."""

import math
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from kanedu import KAN, fit  # noqa: E402
from kanedu.data import make_dataset  # noqa: E402
from kanedu.plot import (  # noqa: E402
    plot_activation,
    plot_basis,
    plot_edges_vs_ideal,
    plot_fit_1d,
    plot_history,
    plot_ka_network,
    plot_network,
    plot_staircase,
)
from kanedu.symbolic import fix_symbolic  # noqa: E402

D = torch.float64


@pytest.fixture(autouse=True)
def _clean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any stray file would land here
    yield
    plt.close("all")
    assert os.listdir(tmp_path) == [] or all(f.endswith(".png") for f in os.listdir(tmp_path))


def _collections(ax):
    wires, frames, curves = [c for c in ax.collections if isinstance(c, LineCollection)]
    return wires, frames, curves


def test_plot_basis_draws_every_basis_and_marks_the_knots(tmp_path):
    ax = plot_basis(grid_size=5, spline_order=3)
    assert len([l for l in ax.get_lines() if l.get_label().startswith("_basis")]) == 5 + 3  # G + k bases
    assert "G = 5" in ax.get_title() and ax.get_xlabel() == "x" and ax.get_ylabel()
    knots = [l for l in ax.get_lines() if l.get_label() == "knots"][0]
    assert len(knots.get_xdata()) == 5 + 2 * 3 + 1
    total = [l for l in ax.get_lines() if l.get_label() == "sum of bases"][0]
    inside = (total.get_xdata() >= -1) & (total.get_xdata() <= 1)
    assert abs(total.get_ydata()[inside] - 1).max() < 1e-12  # partition of unity on the grid range
    assert os.listdir(tmp_path) == []


def test_save_writes_a_file_only_when_asked(tmp_path):
    plot_basis(grid_size=3, spline_order=2)
    assert os.listdir(tmp_path) == []
    plot_basis(grid_size=3, spline_order=2, save=tmp_path / "basis.png")
    assert os.listdir(tmp_path) == ["basis.png"]


def test_plot_network_draws_one_curve_per_active_edge_with_attribution_opacity():
    model = KAN([4, 5, 5, 1], seed=0, dtype=D)
    x = torch.rand(100, 4, dtype=D) * 2 - 1
    ax = plot_network(model, x, in_vars=["a", "b", "c", "d"], beta=3.0)
    wires, frames, curves = _collections(ax)
    assert len(curves.get_segments()) == 4 * 5 + 5 * 5 + 5 == len(frames.get_segments())
    assert len(wires.get_segments()) == 2 * 50
    scores = model.attribution(x)[1]
    alphas = sorted(curves.get_colors()[:, 3].tolist())
    want = sorted(math.tanh(3.0 * float(s)) for s in torch.cat([e.T.flatten() for e in scores]))
    assert alphas == pytest.approx(want)
    texts = [t.get_text() for t in ax.texts]
    assert {"a", "b", "c", "d", "$y_{1}$"} <= set(texts)
    assert "KAN [4, 5, 5, 1]" in ax.get_title() and ax.get_ylabel() == "layer"


def test_plot_network_curves_are_the_edge_functions_and_pruned_edges_are_omitted():
    model = KAN([2, 3, 1], seed=0, dtype=D)
    with torch.no_grad():
        model.layers[0].mask[1, 2] = 0
        model.layers[0].coef[0, 0] += torch.linspace(-1, 1, model.layers[0].coef.shape[-1], dtype=D) ** 2
    ax = plot_network(model, n=40)
    _, _, curves = _collections(ax)
    assert len(curves.get_segments()) == 2 * 3 - 1 + 3
    seg = curves.get_segments()[0]  # edge 0 -> 0 over its grid range, scaled into its box
    u = torch.linspace(-1, 1, 40, dtype=D)
    phi = model.layers[0].edge_activations(torch.stack([u, u], 1))[:, 0, 0].detach()
    norm = (phi - phi.min()) / (phi.max() - phi.min())
    y = torch.tensor(seg[:, 1], dtype=D)
    assert torch.allclose((y - y.min()) / (y.max() - y.min()), norm, atol=1e-9)
    assert all(c[3] == 1.0 for c in curves.get_colors())  # no samples: full opacity


def test_plot_network_marks_symbolic_edges():
    model = KAN([2, 2, 1], seed=0, dtype=D)
    fix_symbolic(model, 0, 1, 0, "sin", params=(3.0, 0.0, 1.0, 0.0))
    ax = plot_network(model)
    _, _, curves = _collections(ax)
    reds = [c for c in curves.get_colors() if c[0] > 0.5 and c[1] < 0.5]
    assert len(reds) == 1 and "sin" in [t.get_text() for t in ax.texts]


def test_plot_network_rejects_bad_input():
    model = KAN([2, 3, 1], seed=0)
    with pytest.raises(ValueError, match="in_vars"):
        plot_network(model, in_vars=["a"])
    with pytest.raises(ValueError, match="x must be"):
        plot_network(model, torch.rand(10, 3))
    with pytest.raises(TypeError, match="KAN"):
        plot_network(model.layers[0])


def test_plot_activation_shows_the_edge_its_parts_and_knots():
    model = KAN([2, 3, 1], seed=0, dtype=D)
    layer = model.layers[0]
    ax = plot_activation(layer, 1, 2)
    labels = [l.get_label() for l in ax.get_lines()]
    assert labels[0] == r"$\phi_{ij}(x)$" and any("residual" in s for s in labels) and "knots" in labels
    phi_line, base_line, spline_line = ax.get_lines()[:3]
    torch.testing.assert_close(torch.tensor(phi_line.get_ydata()),
                               torch.tensor(base_line.get_ydata()) + torch.tensor(spline_line.get_ydata()))
    assert ax.get_title() == "edge 1 -> 2" and ax.get_xlabel() and ax.get_ylabel()
    x = torch.rand(50, 2, dtype=D) * 0.5
    ax = plot_activation(layer, 0, 0, x=x)
    assert "at the samples" in [l.get_label() for l in ax.get_lines()]
    assert ax.get_lines()[0].get_xdata().max() == pytest.approx(float(x[:, 0].max()))
    fix_symbolic(model, 0, 0, 1, "exp", params=(1.0, 0.0, 2.0, 0.0))
    ax = plot_activation(layer, 0, 1)
    assert ax.get_lines()[0].get_label().startswith("symbolic: 2 exp")
    with pytest.raises(ValueError, match="edge"):
        plot_activation(layer, 2, 0)
    with pytest.raises(TypeError, match="model.layers"):
        plot_activation(model, 0, 0)


def test_plot_history_and_plot_fit_1d():
    ds = make_dataset(lambda x: torch.sin(3 * x[..., 0]), 1, n_train=60, n_test=60, seed=0, dtype=D)
    model = KAN([1, 1], seed=0, dtype=D)
    hist = fit(model, ds, steps=3, progress=False, seed=0)
    ax = plot_history(hist)
    assert ax.get_title() and ax.get_xlabel() and len(ax.get_lines()) == 2
    ax = plot_fit_1d(model, ds, f=lambda x: torch.sin(3 * x[..., 0]))
    assert [l.get_label() for l in ax.get_lines()] == ["training data", "target", "model"]
    assert ax.get_title() == "1-D fit"
    with pytest.raises(TypeError, match="History"):
        plot_history([1, 2])
    with pytest.raises(ValueError, match="one output"):
        plot_fit_1d(KAN([1, 2], seed=0))


def test_plot_staircase_draws_the_stages_end_to_end():
    ds = make_dataset(lambda x: torch.sin(3 * x[..., 0]), 1, n_train=60, n_test=60, seed=0, dtype=D)
    model = KAN([1, 1], grid_size=3, seed=0, dtype=D)
    stages = []
    for G in (3, 6):
        if G != 3:
            model = model.refine(G, ds["train_input"])
        stages.append((G, fit(model, ds, steps=4, progress=False, seed=0)))
    ax = plot_staircase(stages)
    lines = ax.get_lines()
    curves = [l for l in lines if len(l.get_xdata()) > 2]
    assert len(curves) == 4  # train and test per stage
    first, second = stages[0][1], stages[1][1]
    assert list(curves[2].get_xdata()) == [first["step"][-1] + t for t in second["step"]]  # end to end
    assert list(curves[3].get_ydata()) == second["test_rmse"]
    assert [t.get_text() for t in ax.texts] == ["G=3", "G=6"]
    assert ax.get_yscale() == "log" and ax.get_title() and ax.get_xlabel()
    with pytest.raises(TypeError, match="History"):
        plot_staircase([1, 2])
    with pytest.raises(ValueError, match="no column"):
        plot_staircase(stages, keys=("val_rmse",))


def test_plot_ka_network_draws_every_edge_function():
    import numpy as np

    ax = plot_ka_network(inner=[[np.sin, np.square]], outer=[np.exp], input_names=["$x$", "$y$"],
                         inner_labels=[["sin", "square"]], outer_labels=["exp"], title="exp(sin x + y^2)")
    insets = [c for c in ax.child_axes]
    assert [i.get_title() for i in insets] == ["sin", "square", "exp"]
    u, v = insets[2].get_lines()[0].get_data()
    np.testing.assert_allclose(v, np.exp(u))
    assert ax.get_title() == "exp(sin x + y^2)"
    with pytest.raises(ValueError, match="inner"):
        plot_ka_network(inner=[[np.sin]], outer=[np.exp], input_names=["x", "y"], inner_labels=[["a"]],
                        outer_labels=["b"])


def _exact_211(grid_size=5):
    """A KAN [2, 1, 1] that computes exp(sin(pi x1) + x2^2) exactly, with a = 2, b1 = 0.5, b2 = -0.3."""
    model = KAN([2, 1, 1], grid_size=grid_size, seed=0, dtype=D)
    fix_symbolic(model, 0, 0, 0, "sin", params=(math.pi, 0.0, 2.0, 0.5))  # 2 sin(pi x1) + 0.5
    fix_symbolic(model, 0, 1, 0, "x^2", params=(1.0, 0.0, 2.0, -0.3))  # 2 x2^2 - 0.3
    fix_symbolic(model, 1, 0, 0, "exp", params=(0.5, -0.1, 1.0, 0.0))  # exp((h - 0.2) / 2)
    return model


def test_plot_edges_vs_ideal_finds_the_constants_and_draws_each_edge():
    model = _exact_211()
    x = torch.rand(300, 2, dtype=D) * 2 - 1
    inner = (lambda u: torch.sin(math.pi * u), lambda u: u**2)
    axes, dev = plot_edges_vs_ideal(model, inner, torch.exp, x, labels=["sin", "square", "exp"], title="exact")
    assert len(axes) == 3 and len(dev) == 3
    assert max(dev) < 1e-10, f"an exact KAN should match its ideal edges to rounding, got {dev}"
    for ax, label in zip(axes, ["sin", "square", "exp"]):
        ideal, learned, knots = ax.get_lines()
        assert [ideal.get_label(), learned.get_label(), knots.get_label()] == [label, "learned edge", "knots (G = 5)"]
        assert abs(ideal.get_ydata() - learned.get_ydata()).max() < 1e-9
        assert ax.get_title().startswith("relative RMS deviation") and ax.get_xlabel()
    u, phi1 = axes[0].get_lines()[1].get_data()
    assert u.min() == pytest.approx(float(x[:, 0].min())) and u.max() == pytest.approx(float(x[:, 0].max()))
    assert abs(phi1 - (2 * torch.sin(math.pi * torch.tensor(u)) + 0.5).numpy()).max() < 1e-12
    h = axes[2].get_lines()[1].get_xdata()
    h_data = model.layers[0](x)[:, 0].detach()
    assert h.min() == pytest.approx(float(h_data.min())) and h.max() == pytest.approx(float(h_data.max()))
    knots = axes[0].get_lines()[2].get_xdata()
    grid = model.layers[0].grid[0]
    assert len(knots) == int(((grid >= u.min()) & (grid <= u.max())).sum()) >= 4
    assert axes[0].figure._suptitle.get_text() == "exact"


def test_plot_edges_vs_ideal_measures_a_wrong_shape_and_rejects_bad_input():
    model = _exact_211()
    x = torch.rand(300, 2, dtype=D) * 2 - 1
    _, dev = plot_edges_vs_ideal(model, (lambda u: torch.cos(math.pi * u), lambda u: u**2), torch.exp, x)
    assert dev[0] > 0.3 and dev[1] < 1e-10, f"cos is not sin up to a, b: {dev}"
    fig, axes = plt.subplots(1, 3)
    drawn, _ = plot_edges_vs_ideal(model, (torch.sin, torch.square), torch.exp, x, axes=axes)
    assert drawn == list(axes)
    with pytest.raises(ValueError, match="n_in, 1, 1"):
        plot_edges_vs_ideal(KAN([2, 2, 1], seed=0), (torch.sin, torch.square), torch.exp, x)
    with pytest.raises(ValueError, match="2 functions"):
        plot_edges_vs_ideal(model, (torch.sin,), torch.exp, x)
    with pytest.raises(ValueError, match="x must be"):
        plot_edges_vs_ideal(model, (torch.sin, torch.square), torch.exp, x[:, :1])
    with pytest.raises(ValueError, match="axes must hold"):
        plot_edges_vs_ideal(model, (torch.sin, torch.square), torch.exp, x, axes=axes[:2])
    with pytest.raises(TypeError, match="KAN"):
        plot_edges_vs_ideal(model.layers[0], (torch.sin, torch.square), torch.exp, x)
