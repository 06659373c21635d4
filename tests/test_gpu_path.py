"""What a GPU run goes through, checked on the CPU (no GPU in CI).

* autocast: on CUDA ``fit`` turns bf16 autocast on by default; on the CPU the same code path runs under
  CPU autocast (bf16), where kanedu's compiled loops step aside and the torch kernel runs, as on a GPU;
* devices: the tensors a method creates must take their device from its inputs or parameters. With the
  default device set to ``meta`` and the model and data on the CPU, a tensor created without a device
  lands on ``meta`` and the first operation that mixes it with a CPU tensor fails, as on a GPU;
* data on another device than the model is an error that names both devices;
* ``torch.compile`` captures a KAN's forward pass in one graph.
"""

import copy

import pytest
import torch

import kanedu
from kanedu import KAN, fit, native
from kanedu.data import make_dataset


@pytest.fixture
def torch_kernel(monkeypatch):
    """The torch kernel everywhere (what runs on a GPU)."""
    monkeypatch.setattr(native, "ENABLED", False)


def toy(n=256, seed=0):
    """exp(sin(pi x1) + x2^2), the KAN paper's example."""
    f = lambda x: torch.exp(torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2)  # noqa: E731
    return make_dataset(f, 2, n_train=n, n_test=n, seed=seed)


def test_autocast_forward_and_backward_through_several_layers():
    model = KAN([2, 4, 3, 1], seed=0)
    x = torch.rand(64, 2) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        assert y.dtype == torch.bfloat16  # what the next (autocast) operation expects
        y.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():  # splines stay in float32 under autocast: the output is the float32 one, rounded
        torch.testing.assert_close(y.float(), model(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("layers", [[2, 1], [2, 5, 1]])
def test_fit_with_bf16_autocast_trains(layers):
    # the configuration that crashed on CUDA: Adam + autocast, one and two layers
    model = KAN(layers, seed=0)
    h = fit(model, toy(), opt="Adam", lr=1e-2, steps=60, amp="bf16", update_grid=False, progress=False)
    assert h.meta["amp"] == "bfloat16"
    assert h["train_loss"][-1] < 0.7 * h["train_loss"][0], h["train_loss"]


def test_grid_operations_plots_and_symbolic_fits_under_autocast(torch_kernel):
    import matplotlib

    matplotlib.use("Agg")
    model = KAN([2, 3, 1], seed=0)
    ds = toy()
    x = ds["train_input"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.update_grid(x)
        bigger = model.refine(8, x)
        assert bigger.layers[0].grid_size == 8
        pruned = model.prune(x)
        fig = kanedu.plot.plot_network(model, x).figure
        model.auto_symbolic(lib=["x", "x^2", "sin", "exp"], x=x, verbose=0)
    assert pruned.widths[0] == 2
    import matplotlib.pyplot as plt

    plt.close(fig)


# ---- devices -----------------------------------------------------------------------------------------


@pytest.fixture
def meta_default_device():
    """Tensors created without a device go to ``meta``: mixed with the CPU model they fail loudly."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _cpu_model_and_data():
    with torch.device("cpu"):
        model = KAN([2, 3, 1], seed=0)
        ds = toy(128)
    return model, ds


def test_every_tensor_a_method_makes_follows_its_inputs(meta_default_device, torch_kernel):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, ds = _cpu_model_and_data()
    x = ds["train_input"]
    y = model(x)
    assert y.device.type == "cpu"
    y.sum().backward()
    model.regularization_loss(x).backward()
    model.update_grid(x)
    model.refine(7, x)
    model.refine(7)
    pruned = model.prune(x)
    model.attribution(x)
    plt.close(kanedu.plot.plot_network(model, x).figure)
    pruned.auto_symbolic(lib=["x", "x^2", "sin"], x=x, verbose=0)
    h = fit(model, ds, opt="Adam", steps=3, progress=False, device="cpu")
    assert len(h["train_loss"]) > 0


def test_every_tensor_fit_makes_follows_the_model_on_the_fused_and_lbfgs_paths(meta_default_device):
    model, ds = _cpu_model_and_data()
    fit(model, ds, steps=3, progress=False, device="cpu")  # LBFGS, grid updates (fused engine where it can)
    fit(model, ds, steps=2, progress=False, device="cpu", fused=False, lamb=1e-3)


def test_data_on_another_device_is_an_error_naming_both():
    model = KAN([2, 3, 1], seed=0).to("meta")
    with pytest.raises(ValueError, match=r"x is on cpu but the layer is on meta"):
        model(torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"x is on cpu but the layer is on meta"):
        model.update_grid(torch.rand(4, 2))


def test_a_model_moved_between_devices_keeps_its_grid_table():
    model = KAN([2, 3, 1], seed=0)
    model.update_grid(torch.randn(200, 2) * 0.4)
    x = torch.rand(16, 2) * 2 - 1
    y = model(x)
    meta = copy.deepcopy(model).to("meta")
    assert all(t.device.type == "meta" for layer in meta.layers for t in layer.table)
    back = model.to("cpu").double()
    assert all(t.dtype == torch.float64 for layer in back.layers for t in layer.table)
    torch.testing.assert_close(back(x.double()).float(), y, rtol=1e-5, atol=1e-6)


# ---- torch.compile -----------------------------------------------------------------------------------


@pytest.mark.parametrize("adaptive", [False, True])
def test_compile_captures_the_forward_pass_in_one_graph(adaptive):
    import torch._dynamo

    model = KAN([2, 5, 1], seed=0)
    x = torch.rand(32, 2) * 2 - 1
    if adaptive:
        model.update_grid(torch.randn(300, 2) * 0.4)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
