"""Save and load kanedu models safely.

A checkpoint is a ``torch.save`` of a dict of plain values and tensors::

    {"format": "kanedu-checkpoint", "format_version": 1, "class": "kanedu.models.KAN",
     "config": model.config, "state_dict": {...}, "kanedu_version": "0.1.0", "extra": extra}

``load`` reads it with ``torch.load(weights_only=True)``, which never runs code from the file (a plain
pickle can run anything), and rebuilds only classes from the ``kanedu`` package, as
``cls(**config)`` followed by ``load_state_dict``. ``save`` writes atomically: an interrupted save
leaves the previous file untouched.

    >>> checkpoint.save(model, "kan.pt", extra={"test_rmse": 1e-3})
    >>> model = checkpoint.load("kan.pt")
"""

from __future__ import annotations

import contextlib
import importlib
import os
import stat
import tempfile
from typing import Any

import torch

from ._version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "load", "read", "save"]

FORMAT = "kanedu-checkpoint"
FORMAT_VERSION = 1
_PLAIN = (type(None), bool, int, float, str)


class CheckpointError(ValueError):
    """A file is not a loadable kanedu checkpoint (corrupt, unsafe, foreign or incompatible)."""


def _plain(value: Any, where: str) -> Any:
    """``value`` built from None/bool/int/float/str, lists, tuples and str-keyed dicts only.

    A ``torch.nn`` module class (an activation such as ``nn.SiLU``) becomes its name, ``"SiLU"``.
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, type) and issubclass(value, torch.nn.Module) and value.__module__.startswith("torch.nn"):
        return value.__name__
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ValueError(f"{where} is {value!r} ({type(value).__name__}); a checkpoint config holds only None, "
                     "bool, int, float, str, lists, tuples and dicts (give functions and classes by name)")


def _file_mode(path: str) -> int:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp's temporary files are 0o600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # keep the mode of the file being replaced
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def save(model: torch.nn.Module, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write ``model`` (a kanedu model with a ``.config`` dict) to ``path``, atomically.

    ``extra`` is any plain-valued dict to keep alongside (metrics, dataset name, ...); it comes back
    from :func:`read`. The data goes to a temporary file in the same directory, is flushed and
    fsync'ed, then renamed over ``path``; on any error the temporary file is removed and an existing
    ``path`` is left as it was. Tensors are stored on the CPU.
    """
    model = getattr(model, "_orig_mod", model)  # the module inside torch.compile's wrapper
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    if not name.startswith("kanedu."):
        raise ValueError(f"save stores kanedu models only (load rebuilds kanedu.* classes), got {name}; "
                         "for other modules use torch.save(model.state_dict(), path)")
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"{name} has no .config dict of constructor arguments, so load could not rebuild it")

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": name,
        "config": _plain(config, "model.config"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "kanedu_version": __version__,
        "extra": _plain(extra, "extra"),
    }
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave a half-written temporary file
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable too (POSIX; Windows cannot open directories)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """The checkpoint dict stored at ``path``, checked but not turned into a model.

    Raises FileNotFoundError if there is no file, and :class:`CheckpointError` (a ValueError) naming
    the path if the file is unsafe, corrupt, truncated, not a kanedu checkpoint or of another version.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        inner = err.__context__ or err  # torch wraps the unpickler's own error in a long explanation
        detail = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
        if "Unsupported global" in detail:
            raise CheckpointError(
                f"{path!r} is not a kanedu checkpoint: it refers to Python code that weights-only loading will "
                f"not run ({detail.split(' was not')[0]}). Unpickling it could run arbitrary code; use "
                "torch.load(..., weights_only=False) only on files from a source you trust") from err
        raise CheckpointError(f"{path!r} is not a readable checkpoint (corrupt, truncated or another format): "
                              f"{type(inner).__name__}: {detail}") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path!r} is not a kanedu checkpoint (expected format {FORMAT!r}, found {found!r})")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade kanedu to read it" if isinstance(version, int) and version > FORMAT_VERSION else ""
        raise CheckpointError(f"{path!r} has checkpoint format_version {version!r}; this kanedu "
                              f"({payload.get('kanedu_version', '?')} wrote it) reads version {FORMAT_VERSION}"
                              f"{'; ' + hint if hint else ''}")
    missing = [k for k in ("class", "config", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"{path!r} is a kanedu checkpoint without {missing}; the file is damaged")
    return payload


def _resolve_class(name: Any, path: str) -> type[torch.nn.Module]:
    """Import ``kanedu.<module>.<qualname>``; nothing outside the kanedu package is ever imported."""
    if not isinstance(name, str) or not name.startswith("kanedu."):
        raise CheckpointError(f"{path!r} names the class {name!r}; load only rebuilds classes from kanedu.*")
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):  # longest importable module prefix, then attributes
        try:
            obj: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module):
            return obj
        break
    raise CheckpointError(f"{path!r} names the class {name!r}, which this kanedu does not provide as a torch module")


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> torch.nn.Module:
    """Rebuild the model saved at ``path`` with :func:`save`.

    The model is constructed as ``cls(**config)``, cast to the saved floating dtype (a float64 KAN
    stays float64), moved to ``map_location`` (default "cpu") and given the saved state dict.
    ``read(path)["extra"]`` returns the ``extra`` dict. Raises like :func:`read`, and
    :class:`CheckpointError` if the class cannot be rebuilt from its config or the weights do not fit.
    """
    path = os.fspath(path)
    payload = read(path, map_location)
    cls = _resolve_class(payload["class"], path)
    config, state = payload["config"], payload["state_dict"]
    try:
        model = cls(**config)
    except Exception as err:
        raise CheckpointError(f"{path!r}: could not rebuild {payload['class']}(**{config!r}): {err}") from err
    dtypes = {v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    if map_location is not None:
        model.to(map_location)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path!r}: the saved weights do not fit {payload['class']}: {err}") from err
    return model
