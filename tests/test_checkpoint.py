"""kanedu.checkpoint: round trips, atomic writes, and refusing unsafe, corrupt or foreign files."""

import os
import pathlib
import sys
import types

import pytest
import torch
from torch import nn

from kanedu import checkpoint
from kanedu.checkpoint import CheckpointError

MODULE = "kanedu._testing_models"  # load rebuilds kanedu.* classes only, so the test model lives there


class Tiny(nn.Module):
    """A small model with a kanedu-style ``config`` of plain constructor arguments."""

    def __init__(self, widths=(2, 3, 1), activation="Tanh", bias=True, note=None):
        super().__init__()
        self.config = {"widths": tuple(widths), "activation": activation, "bias": bias, "note": note}
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=False):
            layers += [nn.Linear(a, b, bias=bias), getattr(nn, activation)()]
        self.net = nn.Sequential(*layers[:-1])
        self.register_buffer("grid", torch.linspace(-1, 1, 5))

    def forward(self, x):
        return self.net(x)


Tiny.__module__ = MODULE


@pytest.fixture(autouse=True)
def testing_module(monkeypatch):
    module = types.ModuleType(MODULE)
    module.Tiny = Tiny
    monkeypatch.setitem(sys.modules, MODULE, module)


def tiny(**kwargs):
    torch.manual_seed(0)
    model = Tiny(**kwargs)
    with torch.no_grad():
        model.grid.mul_(3)  # a buffer that differs from its constructor value must survive too
    return model


def write_payload(path, **changes):
    """A valid checkpoint of ``tiny()`` with some fields replaced (None deletes the field)."""
    checkpoint.save(tiny(), path)
    payload = torch.load(path, weights_only=True)
    for k, v in changes.items():
        if v is None:
            payload.pop(k)
        else:
            payload[k] = v
    torch.save(payload, path)


def test_round_trip_rebuilds_an_equal_model(tmp_path):
    model = tiny(widths=(2, 4, 1), note="hello")
    path = tmp_path / "tiny.pt"
    checkpoint.save(model, path, extra={"test_rmse": 1e-3, "tags": ["toy", ("a", 1)]})
    loaded = checkpoint.load(path)
    assert type(loaded) is Tiny and loaded.config == model.config
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    x = torch.randn(5, 2)
    assert torch.equal(loaded(x), model(x))
    payload = checkpoint.read(str(path))
    assert payload["extra"] == {"test_rmse": 1e-3, "tags": ["toy", ("a", 1)]}
    assert payload["class"] == f"{MODULE}.Tiny"
    assert payload["format"] == "kanedu-checkpoint" and payload["format_version"] == 1
    assert isinstance(payload["kanedu_version"], str)


def test_torch_activation_classes_are_stored_by_name(tmp_path):
    model = tiny()
    model.config = {**model.config, "activation": nn.Tanh}
    checkpoint.save(model, tmp_path / "act.pt")
    assert checkpoint.read(tmp_path / "act.pt")["config"]["activation"] == "Tanh"
    assert checkpoint.load(tmp_path / "act.pt").config["activation"] == "Tanh"


def test_compiled_models_are_saved_as_the_module_inside(tmp_path):
    model = tiny()
    wrapper = nn.Module()
    wrapper._orig_mod = model  # what torch.compile returns: an OptimizedModule holding the model
    checkpoint.save(wrapper, tmp_path / "compiled.pt")
    payload = checkpoint.read(tmp_path / "compiled.pt")
    assert payload["class"] == f"{MODULE}.Tiny" and payload["state_dict"].keys() == model.state_dict().keys()


def test_float64_models_stay_float64(tmp_path):
    model = tiny().double()
    checkpoint.save(model, tmp_path / "f64.pt")
    loaded = checkpoint.load(tmp_path / "f64.pt")
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_saved_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        checkpoint.save(tiny(), tmp_path / "new.pt")
        assert (tmp_path / "new.pt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0o600
        (tmp_path / "new.pt").chmod(0o640)
        checkpoint.save(tiny(), tmp_path / "new.pt")
        assert (tmp_path / "new.pt").stat().st_mode & 0o777 == 0o640  # replacing keeps the old mode
    finally:
        os.umask(umask)


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, error):
    path = tmp_path / "model.pt"
    checkpoint.save(tiny(), path)
    old = path.read_bytes()

    def half_written_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise error

    real_save = torch.save
    monkeypatch.setattr(torch, "save", half_written_save)
    with pytest.raises(type(error)):
        checkpoint.save(tiny(widths=(2, 8, 1)), path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["model.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load(path).config["widths"] == (2, 3, 1)


class Evil:
    """Unpickling this creates a marker file: what an untrusted pickle could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "kanedu-checkpoint", "format_version": 1, "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*weights-only loading will not run"):
        checkpoint.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proof that the file really is hostile
    assert marker.exists()


@pytest.mark.parametrize("content", [
    pytest.param(lambda good: os.urandom(2000), id="random-bytes"),
    pytest.param(lambda good: good[: len(good) // 2], id="truncated"),
    pytest.param(lambda good: b"", id="empty"),
    pytest.param(lambda good: b"just some text\n", id="text"),
])
def test_corrupt_files_raise_a_clear_error_naming_the_path(tmp_path, content):
    good = tmp_path / "good.pt"
    checkpoint.save(tiny(), good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content(good.read_bytes()))
    with pytest.raises(CheckpointError, match=r"bad\.pt.*not a readable checkpoint"):
        checkpoint.load(bad)


def test_other_torch_files_are_not_checkpoints(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(tiny().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"weights\.pt.*not a kanedu checkpoint"):
        checkpoint.load(path)


def test_incompatible_format_version(tmp_path):
    path = tmp_path / "future.pt"
    write_payload(path, format_version=2)
    with pytest.raises(CheckpointError, match=r"future\.pt.*format_version 2.*reads version 1.*upgrade kanedu"):
        checkpoint.load(path)


@pytest.mark.parametrize("version", [0, None, "1", 1.0, "missing"])
def test_a_format_version_other_than_the_int_1_is_refused(tmp_path, version):
    path = tmp_path / "odd.pt"
    checkpoint.save(tiny(), path)
    payload = torch.load(path, weights_only=True)
    if version == "missing":
        del payload["format_version"]
    else:
        payload["format_version"] = version  # None stored as a value
    torch.save(payload, path)
    if version == 1.0:  # 1.0 == 1 in Python: the same version, loads
        assert isinstance(checkpoint.load(path), torch.nn.Module)
        return
    with pytest.raises(CheckpointError, match=r"odd\.pt.*format_version"):
        checkpoint.load(path)


@pytest.mark.parametrize(("cls", "message"), [
    ("torch.nn.Linear", "only rebuilds classes from kanedu"),
    ("os.system", "only rebuilds classes from kanedu"),
    ("kanedu._testing_models.Missing", "does not provide"),
    ("kanedu.no_such_module.KAN", "does not provide"),
])
def test_only_kanedu_classes_are_rebuilt(tmp_path, cls, message):
    path = tmp_path / "foreign.pt"
    write_payload(path, **{"class": cls})
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_damaged_checkpoints(tmp_path):
    path = tmp_path / "damaged.pt"
    write_payload(path, state_dict=None)
    with pytest.raises(CheckpointError, match="without"):
        checkpoint.load(path)
    write_payload(path, state_dict={"net.0.weight": torch.zeros(7, 7)})
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.load(path)
    write_payload(path, config={"widths": (2, 3, 1), "unknown_argument": 1})
    with pytest.raises(CheckpointError, match="could not rebuild"):
        checkpoint.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        checkpoint.load(tmp_path / "nothing.pt")


def test_save_refuses_what_load_could_not_rebuild(tmp_path):
    with pytest.raises(ValueError, match="kanedu models only"):
        checkpoint.save(nn.Linear(2, 1), tmp_path / "linear.pt")
    model = tiny()
    model.config = {**model.config, "note": {"fn": torch.sin}}
    with pytest.raises(ValueError, match=r"model.config\['note'\]\['fn'\].*by name"):
        checkpoint.save(model, tmp_path / "function-in-config.pt")
    del model.config
    with pytest.raises(ValueError, match="no .config"):
        checkpoint.save(model, tmp_path / "no-config.pt")
    assert os.listdir(tmp_path) == []
