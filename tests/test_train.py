"""kanedu.train and kanedu.runtime: fit() on toy problems, failure handling, History, seeds, CPU and devices."""

import functools
import inspect
import io
import math
import os
import subprocess
import sys
import textwrap
import warnings

import matplotlib
import pytest
import torch
from torch import nn

import kanedu.runtime as runtime
import kanedu.train as train
from kanedu.runtime import CpuConfig, configure_cpu, resolve_device, seed_everything
from kanedu.train import History, TrainingDiverged, fit

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """One thread (these tiny fits only slow down when they share a busy CPU) and undo global state."""
    threads, flushed = torch.get_num_threads(), runtime._denormals_flushed()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.set_num_threads(1)
    yield
    configure_cpu(threads=threads, flush_denormal=flushed)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def sine_data(n_train=256, n_test=256, dtype=torch.float32, seed=0):
    """y = sin(pi x) on [-1, 1]: inputs [N, 1], labels [N, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, 1, generator=g, dtype=dtype) * 2 - 1
    y = torch.sin(math.pi * x)
    return {"train_input": x[:n_train], "train_label": y[:n_train],
            "test_input": x[n_train:], "test_label": y[n_train:]}


def mlp(inp=1, width=16, out=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inp, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out))


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, saved):
    return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


# --------------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("opt", "steps", "max_rmse", "lr"), [
    ("LBFGS", 20, 5e-3, 1.0),
    ("Adam", 300, 2e-2, 1e-2),
    ("AdamW", 300, 2e-2, 1e-2),
])
def test_fit_regresses_a_sine_with_each_optimizer(opt, steps, max_rmse, lr):
    h = fit(mlp(), sine_data(), opt=opt, steps=steps, log_every=1, progress=False)
    assert len(h) == steps and h["step"] == list(range(1, steps + 1))
    assert h.last["test_rmse"] < max_rmse, f"{opt}: test RMSE {h.last['test_rmse']:.3g} >= {max_rmse}"
    assert h.last["train_loss"] < h[0]["train_loss"] / 7  # RMSEs (pykan's train_loss): 1/50 of the MSE
    assert h["lr"] == [lr] * len(h) and h["step"][-1] == steps
    assert h["seconds"] == sorted(h["seconds"])
    assert {"train_loss", "test_loss", "train_rmse", "test_rmse", "lr", "seconds"} <= set(h.keys)
    assert "reg" not in h.keys and "test_acc" not in h.keys
    assert h.meta["opt"] == opt and h.meta["device"] == "cpu" and h.stop_reason is None


def test_fit_classifies_blobs_with_cross_entropy():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    labels = torch.randint(0, 3, (400,), generator=g)
    x = centers[labels] + 0.5 * torch.randn(400, 2, generator=g)
    data = {"train_input": x[:300], "train_label": labels[:300], "test_input": x[300:], "test_label": labels[300:]}
    h = fit(mlp(inp=2, out=3), data, opt="Adam", steps=100, loss="ce", progress=False)
    assert h.last["test_acc"] > 0.9 and h.last["train_acc"] > 0.9
    assert "test_rmse" not in h.keys


def test_cross_entropy_checks_labels():
    data = sine_data()
    with pytest.raises(ValueError, match="torch.long"):
        fit(mlp(out=3), data, loss="ce", steps=1, progress=False)
    data = {**data, "train_label": torch.zeros(256, dtype=torch.long), "test_label": torch.full((256,), 5)}
    with pytest.raises(ValueError, match=r"class indices in \[5, 5\].*3 outputs"):
        fit(mlp(out=3), data, loss="ce", steps=1, progress=False)


def test_minibatches_cover_each_epoch_once_and_converge():
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            if torch.is_grad_enabled():
                seen.append(x.detach().clone())
            return self.net(x)

    data = sine_data()
    h = fit(Recorder(), data, opt="Adam", steps=400, batch_size=32, seed=3, progress=False)
    assert {len(x) for x in seen} == {32}
    first_epoch = torch.cat(seen[:8]).flatten().sort().values
    assert torch.equal(first_epoch, data["train_input"].flatten().sort().values)
    assert h.last["test_rmse"] < 0.05


def test_custom_loss_and_metrics_are_logged():
    h = fit(mlp(), sine_data(), opt="Adam", steps=5, progress=False,
            loss=lambda pred, y: ((pred - y) ** 2).mean(),
            metrics={"max_err": lambda pred, y: (pred - y).abs().max()})
    assert all(m >= r for m, r in zip(h["max_err"], h["test_rmse"], strict=True))
    with pytest.raises(ValueError, match="clash"):
        fit(mlp(), sine_data(), steps=1, metrics={"test_rmse": lambda p, y: 0.0}, progress=False)


def test_test_metrics_use_eval_mode_and_the_final_weights():
    model = nn.Sequential(mlp(), nn.Dropout(0.5))
    model.eval()
    data = sine_data()
    h = fit(model, data, opt="Adam", steps=5, progress=False)
    assert not model.training  # the caller's mode is restored
    with torch.no_grad():
        pred = model(data["test_input"])
    # test_loss is pykan's: the RMSE for the MSE loss (and so is test_rmse)
    assert h.last["test_loss"] ** 2 == pytest.approx(nn.functional.mse_loss(pred, data["test_label"]).item(), rel=1e-6)
    assert h.last["test_rmse"] == pytest.approx(h.last["test_loss"], rel=1e-12)


def test_history_counts_loss_and_gradient_evaluations():
    h = fit(mlp(), sine_data(), opt="Adam", steps=7, log_every=2, progress=False, seed=0)
    assert h["evaluations"] == h["step"] == [2, 4, 6, 7]  # one per Adam step
    h = fit(mlp(), sine_data(), opt="LBFGS", steps=3, progress=False, seed=0)
    assert 3 < h["evaluations"][-1] <= 3 * 25 and h["evaluations"] == sorted(h["evaluations"])


def test_log_every_logs_the_last_step_too():
    h = fit(mlp(), sine_data(), opt="Adam", steps=10, log_every=4, progress=False)
    assert h["step"] == [4, 8, 10]


def test_log_every_defaults_to_every_step_up_to_100_steps_then_about_100_records():
    assert len(fit(mlp(), sine_data(), opt="Adam", steps=60, progress=False)) == 60
    h = fit(mlp(), sine_data(), opt="Adam", steps=450, progress=False)
    assert h.meta["log_every"] == 4 and len(h) == 113 and h["step"][-1] == 450


def test_grad_clip_bounds_the_update():
    def first_step_size(grad_clip):
        model = mlp()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        fit(model, sine_data(), opt=functools.partial(torch.optim.SGD, lr=1.0), steps=1,
            grad_clip=grad_clip, progress=False)
        return (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()

    assert first_step_size(1e-3) <= 1e-3 * 1.0001
    assert first_step_size(None) > 1e-2


# --------------------------------------------------------------------------------------------------
# Optimizers, arguments, data checks
# --------------------------------------------------------------------------------------------------


def test_optimizer_instances_and_factories():
    model = mlp()
    h = fit(model, sine_data(), opt=torch.optim.SGD(model.parameters(), lr=0.1), steps=3, progress=False)
    assert h.meta["opt"] == "SGD" and h["lr"] == [0.1] * 3
    h = fit(mlp(), sine_data(), opt=functools.partial(torch.optim.SGD, momentum=0.9), lr=0.05, steps=2,
            progress=False)
    assert h["lr"] == [0.05, 0.05]
    with pytest.raises(ValueError, match="lr is ignored"):
        fit(model, sine_data(), opt=torch.optim.SGD(model.parameters(), lr=0.1), lr=0.2, steps=1)
    with pytest.raises(ValueError, match="none of the model's parameters"):
        fit(model, sine_data(), opt=torch.optim.SGD(mlp().parameters(), lr=0.1), steps=1)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="LBFGS, Adam, AdamW"):
        fit(mlp(), sine_data(), opt="sgd-ish", steps=1)


def test_nan_in_dataset_is_reported_before_training():
    data = sine_data()
    data["train_input"] = data["train_input"].clone()
    data["train_input"][[3, 5, 7]] = float("nan")
    model = mlp()
    before = state(model)
    with pytest.raises(ValueError, match=r"dataset\['train_input'\] contains 3 NaN values"):
        fit(model, data, steps=1)
    assert same_state(model, before)
    data = sine_data()
    data["test_label"] = data["test_label"].clone()
    data["test_label"][0] = float("inf")
    with pytest.raises(ValueError, match=r"dataset\['test_label'\] contains 1 infinite values"):
        fit(model, data, steps=1)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("test_label"), "missing"),
    (lambda d: d.update(train_label=d["train_label"][:10]), "same number"),
    (lambda d: d.update(train_input=d["train_input"].double(), test_input=d["test_input"].double()), "float64"),
    (lambda d: d.update(train_label=d["train_label"].flatten()), r"shape \(2, 1\).*\(2,\)"),
    (lambda d: d.update(train_input=d["train_input"].numpy()), "torch.Tensor"),
])
def test_bad_datasets_get_clear_errors(change, message):
    data = sine_data()
    change(data)
    with pytest.raises((ValueError, TypeError), match=message):
        fit(mlp(), data, steps=1, progress=False)


def test_model_and_data_dtype_must_match():
    with pytest.raises(ValueError, match=r"torch.float64 but dataset\['train_input'\] is torch.float32"):
        fit(mlp().double(), sine_data(), steps=1)
    h = fit(mlp().double(), sine_data(dtype=torch.float64), opt="Adam", steps=2, progress=False)
    assert h.meta["dtype"] == "torch.float64"


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 0}, {"log_every": 1.5}, {"lamb": -1.0},
                                 {"update_grid": -2}, {"early_stopping": 0}, {"grad_clip": 0.0},
                                 {"stop_grid_update_step": "50"}])
def test_bad_arguments_are_rejected_by_name(bad):
    (name,) = bad
    with pytest.raises((ValueError, TypeError), match=f"{name} must be"):
        fit(FakeKAN(), sine_data(), **bad)


# --------------------------------------------------------------------------------------------------
# Determinism and seeds
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"opt": "Adam", "batch_size": 32, "steps": 30}, {"opt": "LBFGS", "steps": 3}])
def test_same_seed_gives_bit_identical_runs(kwargs):
    runs = []
    for _ in range(2):
        seed_everything(0)
        model = mlp(seed=torch.randint(0, 1000, ()).item())
        runs.append((fit(model, sine_data(), progress=False, **kwargs), state(model)))
    (h1, s1), (h2, s2) = runs
    assert without_time(h1) == without_time(h2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1.meta["seed"] == h2.meta["seed"]


def test_batch_order_follows_the_seed():
    a, b, c = (fit(mlp(), sine_data(), opt="Adam", steps=5, batch_size=32, seed=s, progress=False) for s in (1, 1, 2))
    assert without_time(a) == without_time(b) != without_time(c)


def test_seed_everything_reseeds_python_numpy_and_torch():
    import random

    import numpy as np

    def draw():
        return random.random(), float(np.random.rand()), torch.rand(()).item()

    seed_everything(7)
    first = draw()
    seed_everything(7)
    assert draw() == first
    assert torch.are_deterministic_algorithms_enabled()
    for bad in (-1, 2**32, 1.5, "3"):
        with pytest.raises(ValueError, match="seed"):
            seed_everything(bad)


# --------------------------------------------------------------------------------------------------
# Failure handling
# --------------------------------------------------------------------------------------------------


class Poisonable(nn.Module):
    """An MLP whose output turns to NaN once ``poisoned`` is set."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.poisoned = False

    def forward(self, x):
        out = self.net(x)
        return out * float("nan") if self.poisoned else out


def test_nan_loss_raises_with_step_and_restores_last_finite_weights():
    saved = {}

    def poison_after_step_5(history, model):
        saved[history.last["step"]] = state(model)
        model.poisoned = history.last["step"] == 5

    model = Poisonable()
    with pytest.raises(TrainingDiverged, match=r"step 6.*last finite train_loss .* at step 5") as info:
        fit(model, sine_data(), opt="Adam", steps=20, callbacks=poison_after_step_5, progress=False)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.step == 6 and len(err.history) == 5
    assert err.last_finite_loss == err.history.last["train_loss"] and math.isfinite(err.last_finite_loss)
    assert same_state(model, saved[5])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_non_finite_test_loss_alone_is_a_divergence_too():
    class BadAtTest(nn.Module):  # finite on the training rows, NaN in eval mode (on the test set)
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            y = self.net(x)
            return y if self.training else y * float("nan")

    with pytest.raises(TrainingDiverged, match="test_loss is nan"):
        fit(BadAtTest(), sine_data(), opt="Adam", steps=3, progress=False)


def test_lbfgs_line_search_into_nan_is_a_clean_divergence():
    class NanBeyondThree(nn.Module):
        """y = w x, but NaN for |w| > 3; the target y = 5 x pulls w into the NaN region."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return torch.where(self.w.abs() <= 3, self.w * x, torch.full_like(x, float("nan")))

    data = sine_data()
    data["train_label"], data["test_label"] = 5 * data["train_input"], 5 * data["test_input"]
    model = NanBeyondThree()
    with pytest.raises(TrainingDiverged, match="step"):
        fit(model, data, opt="LBFGS", steps=10, progress=False)
    assert math.isfinite(model.w.item()) and abs(model.w.item()) <= 3


def test_keyboard_interrupt_in_a_callback_returns_the_history_so_far():
    saved = {}

    def stop_at_4(history, model):
        saved[history.last["step"]] = state(model)
        if history.last["step"] == 4:
            raise KeyboardInterrupt

    model = mlp()
    with pytest.warns(UserWarning, match="interrupted"):
        h = fit(model, sine_data(), opt="Adam", steps=50, callbacks=[stop_at_4], progress=False)
    assert h.interrupted and h.stop_reason == "interrupted" and len(h) == 4
    assert same_state(model, saved[4])


def test_keyboard_interrupt_mid_lbfgs_step_restores_the_last_logged_step():
    saved = {}

    class InterruptOnCall(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.net, self.n, self.calls = mlp(), n, 0

        def forward(self, x):
            if torch.is_grad_enabled():
                self.calls += 1
                if self.calls == self.n:
                    raise KeyboardInterrupt
            return self.net(x)

    model = InterruptOnCall(n=30)  # inside step 2: an LBFGS step makes ~20 evaluations
    with pytest.warns(UserWarning, match="after step 1"):
        h = fit(model, sine_data(), opt="LBFGS", steps=5, progress=False,
                callbacks=lambda history, m: saved.update({history.last["step"]: state(m)}))
    assert h.interrupted and h["step"] == [1]
    assert same_state(model, saved[1])


def test_early_stopping_restores_the_best_validation_loss_state():
    """Train on y = x, validate on y = -x: every step away from w = 0 makes the validation loss worse.
    The test split (y = x) would have said the opposite: early stopping never looks at it."""
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    data = {"train_input": x, "train_label": x, "val_input": x, "val_label": -x, "test_input": x, "test_label": x}
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    saved = {}
    h = fit(model, data, opt="Adam", lr=0.1, steps=50, early_stopping=3, progress=False,
            callbacks=lambda history, m: saved.update({history.last["step"]: state(m)}))
    assert h.stopped_early and h.stop_reason == "early_stopping"
    assert h["step"] == [1, 2, 3, 4]
    assert h.best()["step"] == 1 == h.best("val_loss")["step"] and h.best("test_loss")["step"] == 4
    assert same_state(model, saved[1])
    assert {"val_loss", "val_rmse"} <= set(h.keys) and h.meta["validation"]


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ValueError, match="early_stopping watches the validation loss"):
        fit(mlp(), sine_data(), opt="Adam", steps=5, early_stopping=2, progress=False)
    with pytest.raises(ValueError, match="no validation split"):
        fit(mlp(), sine_data(), opt="Adam", steps=2, progress=False).best()
    with pytest.raises(ValueError, match="needs both"):
        fit(mlp(), {**sine_data(), "val_input": sine_data()["test_input"]}, steps=1, progress=False)


def test_a_callback_returning_true_stops_training():
    h = fit(mlp(), sine_data(), opt="Adam", steps=50, progress=False,
            callbacks=lambda history, model: history.last["step"] == 3)
    assert h["step"] == [1, 2, 3] and h.stop_reason == "callback" and not h.interrupted


# --------------------------------------------------------------------------------------------------
# KAN hooks: grid updates and regularization
# --------------------------------------------------------------------------------------------------


class FakeKAN(nn.Module):
    """Records when fit calls the KAN hooks. ``train_forwards`` counts gradient-enabled forwards."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.train_forwards = 0
        self.grid_updates = []
        self.reg_batches = []

    def forward(self, x):
        self.train_forwards += torch.is_grad_enabled()
        return self.net(x)

    def update_grid(self, x):
        self.grid_updates.append({"step": self.train_forwards, "rows": len(x), "grad": torch.is_grad_enabled()})

    def regularization_loss(self, x, **weights):
        self.reg_batches.append(len(x))
        return sum(p.abs().sum() for p in self.parameters())


@pytest.mark.parametrize(("update_grid", "stop", "expected"), [
    (True, 20, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),  # pykan: 10 updates before stop_grid_update_step
    (5, 20, [0, 5, 10, 15]),
    (False, 20, []),
])
def test_grid_update_schedule(update_grid, stop, expected):
    model = FakeKAN()
    fit(model, sine_data(), opt="Adam", steps=30, update_grid=update_grid, stop_grid_update_step=stop,
        progress=False)
    assert [u["step"] for u in model.grid_updates] == expected
    assert all(u["rows"] == 256 and not u["grad"] for u in model.grid_updates)


def test_fit_updates_kan_grids_by_default_on_pykans_schedule():
    model = FakeKAN()  # any model with update_grid: every 5 steps below step 50, as pykan's model.fit does
    fit(model, sine_data(), opt="Adam", steps=60, progress=False)
    assert [u["step"] for u in model.grid_updates] == list(range(0, 50, 5))
    model = FakeKAN()
    fit(model, sine_data(), opt="Adam", steps=60, grid_update_num=5, stop_grid_update_step=20, progress=False)
    assert [u["step"] for u in model.grid_updates] == [0, 4, 8, 12, 16]
    fit(mlp(), sine_data(), opt="Adam", steps=2, progress=False)  # no update_grid: nothing to update, no error
    with pytest.raises(ValueError, match="grid_update_num"):
        fit(FakeKAN(), sine_data(), steps=1, grid_update_num=0, progress=False)


def test_grid_update_uses_a_subsample_of_large_training_sets(monkeypatch):
    monkeypatch.setattr(train, "GRID_UPDATE_MAX_POINTS", 100)
    model = FakeKAN()
    fit(model, sine_data(), opt="Adam", steps=2, update_grid=1, progress=False)
    assert [u["rows"] for u in model.grid_updates] == [100, 100]


def test_grid_update_must_keep_the_optimizer_parameters():
    class ReplacingKAN(FakeKAN):
        def update_grid(self, x):
            self.net[0].weight = nn.Parameter(self.net[0].weight.detach().clone())

    with pytest.raises(RuntimeError, match="in place"):
        fit(ReplacingKAN(), sine_data(), opt="Adam", steps=2, update_grid=1, progress=False)


def test_regularization_is_added_to_the_loss():
    def l1_after(lamb):
        model = FakeKAN()
        h = fit(model, sine_data(), opt="Adam", steps=50, batch_size=64, lamb=lamb, progress=False)
        return model, h, sum(p.abs().sum() for p in model.parameters()).item()

    model, h, l1 = l1_after(1e-2)
    assert set(model.reg_batches) == {64} and len(model.reg_batches) == 50
    assert "reg" in h.keys and h.last["reg"] > 0
    _, h0, l1_free = l1_after(0.0)
    assert "reg" not in h0.keys
    assert l1 < 0.9 * l1_free


def test_kan_options_need_a_kan():
    with pytest.raises(ValueError, match="regularization_loss"):
        fit(mlp(), sine_data(), lamb=0.1, steps=1)
    with pytest.raises(ValueError, match="update_grid"):
        fit(mlp(), sine_data(), update_grid=True, steps=1)


# --------------------------------------------------------------------------------------------------
# Devices, AMP, compile, progress
# --------------------------------------------------------------------------------------------------


def test_device_resolution_order(monkeypatch):
    monkeypatch.delenv("KANEDU_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert resolve_device() == torch.device("cpu") == runtime.default_device()
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert resolve_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")
    monkeypatch.setenv("KANEDU_DEVICE", "cpu")  # the environment beats auto-detection ...
    assert resolve_device() == torch.device("cpu")
    monkeypatch.setenv("KANEDU_DEVICE", "nonsense")  # ... and an explicit argument beats both
    assert resolve_device("cpu") == torch.device("cpu")


def test_unavailable_or_bad_devices_are_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("KANEDU_DEVICE", "cuda")
    with pytest.raises(ValueError, match="KANEDU_DEVICE.*CUDA is not available"):
        resolve_device()
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu please")


def test_fit_uses_the_environment_device(monkeypatch):
    monkeypatch.setenv("KANEDU_DEVICE", "cpu")
    assert fit(mlp(), sine_data(), steps=1, progress=False).meta["device"] == "cpu"


def test_amp_on_cpu_warns_and_trains_in_full_precision():
    with pytest.warns(UserWarning, match="amp=True needs a CUDA device"):
        h = fit(mlp(), sine_data(), opt="Adam", steps=2, amp=True, progress=False)
    assert h.meta["amp"] is None
    assert fit(mlp(), sine_data(), opt="Adam", steps=1, progress=False).meta["amp"] is None


@pytest.mark.parametrize("where", ["call", "construction"])
def test_compile_failure_falls_back_to_eager(monkeypatch, where):
    def broken_compile(model):
        if where == "construction":
            raise RuntimeError("dynamo unsupported here")

        def fail(x):
            raise RuntimeError("no C++ compiler")
        return fail

    eager = fit(mlp(), sine_data(), opt="Adam", steps=5, seed=0, progress=False)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        compiled = fit(mlp(), sine_data(), opt="Adam", steps=5, seed=0, compile=True, progress=False)
    assert without_time(compiled) == without_time(eager)
    assert compiled.meta["compile"] is True


def test_compile_traces_the_model_and_trains_like_eager(monkeypatch):
    """Real Dynamo graph capture; the "eager" backend skips inductor's C++ build (20 s on 2 cores)."""
    forwards = []
    real_compile = torch.compile

    def compile_with_eager_backend(model):
        traced = real_compile(model, backend="eager")
        return lambda x: forwards.append(len(x)) or traced(x)

    eager = fit(mlp(), sine_data(), opt="Adam", steps=20, seed=0, progress=False)
    monkeypatch.setattr(torch, "compile", compile_with_eager_backend)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        compiled = fit(mlp(), sine_data(), opt="Adam", steps=20, seed=0, compile=True, progress=False)
    assert forwards[:2] == [256, 256]  # training went through the compiled module (train, then test set)
    assert compiled["test_rmse"] == pytest.approx(eager["test_rmse"], rel=1e-5)


def test_progress_is_silent_when_stderr_is_not_a_terminal(capsys):
    fit(mlp(), sine_data(), opt="Adam", steps=5, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_shows_losses_when_interactive(capsys, monkeypatch):
    monkeypatch.setattr(train, "_interactive", lambda: True)
    fit(mlp(), sine_data(), opt="Adam", steps=5, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "test_rmse=" in err


def test_interactive_detection(monkeypatch):
    class FakeTTY:
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", FakeTTY())
    monkeypatch.delenv("CI", raising=False)
    assert train._interactive()
    monkeypatch.setenv("CI", "true")
    assert not train._interactive()


# --------------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------------


def make_history():
    records = [{"step": s, "train_loss": 1.0 / s, "test_loss": 1.0 / s + (s == 3), "test_acc": 0.1 * s}
               for s in range(1, 5)]
    return History(records, meta={"opt": "Adam"})


def test_history_access():
    h = make_history()
    assert len(h) == 4 and h.last["step"] == 4 and h[0]["step"] == 1 and h[-1] is h.last
    assert h["test_acc"] == h.test_acc == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert h.to_dict()["step"] == [1, 2, 3, 4] and list(h.to_dict()) == h.keys
    assert h.best("test_loss")["step"] == 4
    assert h.best("test_acc")["step"] == 4 and h.best("test_loss", mode="max")["step"] == 3
    with pytest.raises(KeyError, match="columns"):
        h["nope"]
    with pytest.raises(AttributeError):
        h.nope  # noqa: B018
    assert not h.interrupted and not h.stopped_early
    assert "4 records" in repr(h)
    assert History().last is None


def test_history_plot_returns_labelled_axes_and_writes_nothing(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    h = fit(mlp(), sine_data(), opt="Adam", steps=5, progress=False)
    ax = h.plot()
    assert isinstance(ax, matplotlib.axes.Axes)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train_rmse", "test_rmse"]
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "rmse" and "Adam" in ax.get_title()
    assert ax.get_yscale() == "log"
    fig, own = plt.subplots()
    assert make_history().plot(["test_acc"], ax=own, logy=False) is own and own.get_yscale() == "linear"
    plt.close("all")
    assert os.listdir(tmp_path) == []
    with pytest.raises(KeyError, match="columns"):
        h.plot("nope")


# --------------------------------------------------------------------------------------------------
# CPU setup
# --------------------------------------------------------------------------------------------------


def denormals_left(n=1 << 18):
    """How many of n float32 denormals survive ``* 1.0`` (an op big enough to use every thread)."""
    # built from bits (1 << 20 is 1.5e-39 as float32): a float literal would be flushed while converting
    product = torch.full((n,), 1 << 20, dtype=torch.int32).view(torch.float32) * 1.0
    return int(product.view(torch.int32).count_nonzero())


def test_configure_cpu_sets_threads_and_denormal_mode():
    info = configure_cpu(threads=2)
    assert isinstance(info, CpuConfig) and info.threads == 2 == torch.get_num_threads()
    assert info.torch_version == torch.__version__
    if not info.flush_denormal_supported:
        pytest.skip("this CPU cannot flush denormals")
    assert info.flush_denormal and denormals_left() == 0
    info = configure_cpu(threads=2, flush_denormal=False)
    assert not info.flush_denormal and denormals_left() == 1 << 18


def test_configure_cpu_honours_an_explicit_omp_num_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert configure_cpu().threads == 1 == torch.get_num_threads()
        assert configure_cpu(threads=2).threads == 2  # an explicit argument still wins
        monkeypatch.setenv("OMP_NUM_THREADS", "two")
        with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
            configure_cpu()
    finally:
        torch.set_num_threads(before)


_FAULTS = """
import resource, torch
import kanedu

torch.set_num_threads(1)
layer = kanedu.KANLayer(64, 64)
x, g = torch.rand(1024, 64, requires_grad=True), torch.randn(1024, 64)

def steps_that_fault():
    for _ in range(3):
        layer(x).backward(g)
    count = 0
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        layer(x).backward(g)
        count += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > 100
    return count

default = steps_that_fault()
cfg = kanedu.configure_cpu(threads=1)
print(cfg.keep_freed_memory, default, steps_that_fault())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_configure_cpu_keeps_freed_memory_so_temporaries_do_not_fault():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True, timeout=120)
    kept, default, tuned = out.stdout.split()
    assert kept == "True"
    # of 20 steps, how many fault in more than 100 pages: by default glibc returns the large temporaries
    # and they fault in again (measured with the redesigned kernels: 3-12 steps over runs); kept, at most one
    # does (0-1), as the heap may still grow once
    assert int(default) >= 2
    assert int(tuned) <= 1 or int(tuned) < int(default) // 2


def test_configure_cpu_flushes_denormals_on_already_running_worker_threads():
    """torch.set_flush_denormal only reaches the calling thread; workers started earlier keep denormals."""
    code = "import torch\n" + inspect.getsource(denormals_left) + textwrap.dedent("""
        from kanedu.runtime import configure_cpu
        torch.set_num_threads(2)
        torch.full((1 << 20,), 1.0).mul_(2)  # starts the intra-op worker threads first
        torch.set_flush_denormal(True)
        main_thread_only = denormals_left()
        info = configure_cpu(threads=2)
        print(info.flush_denormal_supported, main_thread_only, info.flush_denormal, denormals_left())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    supported, main_thread_only, flushed, left = out.stdout.split()
    if supported != "True":
        pytest.skip("this CPU cannot flush denormals")
    assert int(main_thread_only) > 0, "the trap this guards against did not occur; is the test still needed?"
    assert (flushed, left) == ("True", "0"), out.stdout


@pytest.mark.parametrize(("files", "cpus"), [
    ({"/sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2 with a quota (Binder)
    ({"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
    ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_container_cpu_quota_is_read_from_cgroups(monkeypatch, files, cpus):
    def fake_open(path, *args, **kwargs):
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])

    monkeypatch.setattr(runtime, "open", fake_open, raising=False)
    assert runtime._cgroup_cpu_limit() == cpus


def test_default_thread_count_respects_affinity_quota_and_cap(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # an explicit setting wins (tested separately)
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: 1.5)
    assert runtime._available_cpus() == 1
    monkeypatch.setattr(runtime, "_cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert runtime._available_cpus() == 64
    assert configure_cpu().threads == 8
    with pytest.raises(ValueError, match="threads"):
        configure_cpu(threads=0)
