"""Training: ``fit()``, the loop behind ``KAN.fit`` (pykan's ``model.fit``), for any ``torch.nn.Module``.

The dataset is the pykan dict ``{"train_input", "train_label", "test_input", "test_label"}`` so that
students can move between pykan and kanedu, optionally with ``"val_input", "val_label"`` for model
selection. KANs get pykan's grid updates by default and its sparsity regularization when ``lamb > 0``.

    >>> history = fit(model, dataset, opt="LBFGS", steps=50)
    >>> history.last["test_rmse"]

``fit`` reads in three parts, each a function below:

* ``_setup``: check the arguments and the data, choose the engine (fused or torch), the optimizer and AMP;
* ``_step``: one training step (a grid update when it is due, then one optimizer step);
* ``_log``: evaluate and record the step, and decide whether to stop (divergence, early stopping,
  callbacks).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._checks import integer, is_integer
from .fused import FusedKAN, unsupported_reason
from .lbfgs import LBFGS, TorchLBFGS
from .runtime import resolve_device

__all__ = ["History", "TrainingDiverged", "fit"]

DATASET_KEYS = ("train_input", "train_label", "test_input", "test_label")
VALIDATION_KEYS = ("val_input", "val_label")
OPTIMIZERS = ("LBFGS", "Adam", "AdamW")
DEFAULT_LR = {"LBFGS": 1.0, "Adam": 1e-2, "AdamW": 1e-2}
# Curvature pairs kept by fit's L-BFGS. pykan keeps 10. On the KAN paper's protocol (grids 3..50, 50
# steps each, grid updates every 5 steps, after which the pairs are forgotten) 100 pairs took the median
# test RMSE of [2, 5, 1] at G = 50 from 1.9e-4 to 5.7e-5 and of [4, 4, 2, 1] on nested4 at G = 20 from
# ~2e-3 to 5e-4 (8 and 3 seeds), and left [2, 1, 1] where it was (5e-7); torch.optim.LBFGS's default is 100.
LBFGS_HISTORY = 100
# Grid updates place knots at quantiles of the inputs; a few thousand points pin those down, and more
# only cost memory (a KAN forward keeps [N, in, n_basis] per layer).
GRID_UPDATE_MAX_POINTS = 10_000
# log_every=None logs every step up to this many steps, then about this many records in all (each logged
# step evaluates the test set and reads a few numbers back from the device)
LOG_RECORDS = 100
# pykan's model.fit arguments that kanedu accepts with pykan's defaults only (kanedu writes no files and
# has no singularity guard or other regularization metrics)
_PYKAN_ONLY = {"save_fig": False, "singularity_avoiding": False, "y_th": 1000.0, "reg_metric": "edge_forward_spline_n",
               "img_folder": "./video", "save_fig_freq": 1, "in_vars": None, "out_vars": None, "beta": 3,
               "display_metrics": None}


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite. ``fit`` restored the model to its last finite state.

    Attributes: ``step`` (the step where the non-finite value was seen), ``last_finite_loss`` (the
    last finite train loss, or None) and ``history`` (the records up to the last finite step).
    """

    def __init__(self, message: str, *, step: int, last_finite_loss: float | None, history: History):
        super().__init__(message)
        self.step = step
        self.last_finite_loss = last_finite_loss
        self.history = history


# --------------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------------


class History:
    """One record (a dict) per logged step of :func:`fit`.

    ``h.records`` is the list of dicts; ``h["test_rmse"]`` or ``h.test_rmse`` is one column as a list
    (``h["train_loss"]`` is what pykan's ``model.fit(...)["train_loss"]`` holds: the RMSE for the MSE loss);
    ``h[-1]`` is a record; ``h.last`` is the newest record; ``h.to_dict()`` is the columnar dict.
    ``stop_reason`` is None (ran all steps), ``"early_stopping"``, ``"callback"`` or ``"interrupted"``.
    ``meta`` says how the run was set up (optimizer, device, dtype, amp, engine, ...).
    """

    def __init__(self, records: list[dict] | None = None, meta: dict | None = None):
        self.records: list[dict[str, Any]] = list(records or [])
        self.meta: dict[str, Any] = dict(meta or {})
        self.stop_reason: str | None = None

    @property
    def interrupted(self) -> bool:
        """True when training stopped on KeyboardInterrupt (e.g. Jupyter's stop button)."""
        return self.stop_reason == "interrupted"

    @property
    def stopped_early(self) -> bool:
        """True when early stopping ended training (the model holds the best validation-loss state)."""
        return self.stop_reason == "early_stopping"

    @property
    def keys(self) -> list[str]:
        """Column names, in the order they first appear."""
        return list(dict.fromkeys(k for r in self.records for k in r))

    @property
    def last(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, key: str | int | slice) -> Any:
        if not isinstance(key, str):
            return self.records[key]
        if key not in self.keys:
            raise KeyError(f"history has no column {key!r}; columns: {self.keys}")
        return [r.get(key) for r in self.records]

    def __getattr__(self, name: str) -> list:
        if name.startswith("_") or "records" not in self.__dict__:
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(str(err)) from None

    def best(self, key: str | None = None, mode: str | None = None) -> dict[str, Any]:
        """The record with the smallest ``key`` (largest for accuracies, or with ``mode="max"``).

        ``key=None`` is ``"val_loss"``: select models on the validation split, never on the test set
        (the test error of the selected record is then an honest estimate). Without a validation split
        name the key you mean; ``best("test_loss")`` is there for plots, not for choosing a model.
        """
        if key is None:
            if "val_loss" not in self.keys:
                raise ValueError("history.best() selects on 'val_loss', but this run had no validation split "
                                 "(dataset['val_input'], dataset['val_label']); name the column, e.g. "
                                 "best('train_loss')")
            key = "val_loss"
        mode = mode or ("max" if key.endswith("acc") else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        candidates = [r for r in self.records if r.get(key) is not None and not math.isnan(r[key])]
        if not candidates:
            raise ValueError(f"history has no values for {key!r}; columns: {self.keys}")
        return (min if mode == "min" else max)(candidates, key=lambda r: r[key])

    def to_dict(self) -> dict[str, list]:
        """Columnar copy ``{column: [value per record]}`` (missing values are None)."""
        return {k: self[k] for k in self.keys}

    def plot(self, keys: str | list[str] | None = None, ax=None, logy: bool = True):
        """Draw columns against ``step`` with matplotlib and return the Axes (no file is written).

        ``keys=None`` draws train/test RMSE for regression, train/test loss otherwise.
        """
        import matplotlib.pyplot as plt

        if not self.records:
            raise ValueError("the history is empty: nothing to plot")
        if keys is None:
            keys = [k for k in ("train_rmse", "test_rmse") if k in self.keys] or [
                k for k in ("train_loss", "test_loss") if k in self.keys
            ]
        elif isinstance(keys, str):
            keys = [keys]
        unknown = [k for k in keys if k not in self.keys]
        if unknown:
            raise KeyError(f"history has no column(s) {unknown}; columns: {self.keys}")
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        for k in keys:
            ax.plot(self["step"], [math.nan if v is None else v for v in self[k]], label=k)
        if logy:
            ax.set_yscale("log")
        names = {k.removeprefix("train_").removeprefix("test_") for k in keys}
        ax.set_xlabel("step")
        ax.set_ylabel(names.pop() if len(names) == 1 else "value")
        opt = self.meta.get("opt")
        ax.set_title(f"training history ({opt})" if opt else "training history")
        ax.legend()
        return ax

    def __repr__(self) -> str:
        last = self.last
        shown = "" if last is None else ", ".join(
            f"{k}={v:.3g}" for k, v in last.items() if k.startswith(("train_", "test_")) and v is not None
        )
        stop = f", stop_reason={self.stop_reason!r}" if self.stop_reason else ""
        return f"History({len(self)} records{stop}{'; last: ' + shown if shown else ''})"


# --------------------------------------------------------------------------------------------------
# setup: arguments, data, optimizer, engine, AMP
# --------------------------------------------------------------------------------------------------


def _pykan_arguments(pykan: dict, log_every, loss, batch_size, metrics):
    """Translate pykan's ``model.fit`` spellings (``log``, ``loss_fn``, ``batch``, ...) to kanedu's."""
    if "log" in pykan:
        log_every = pykan.pop("log")
    if "loss_fn" in pykan:
        fn = pykan.pop("loss_fn")
        loss = "mse" if fn is None else fn
    if "batch" in pykan:
        batch = pykan.pop("batch")
        batch_size = None if batch == -1 else batch
    for name, default in _PYKAN_ONLY.items():
        if name in pykan and pykan.pop(name) != default:
            raise ValueError(f"fit: pykan's {name}= is not supported by kanedu (only its default {default!r}); "
                             "kanedu writes no files: plot with history.plot() or kanedu.plot.plot_network")
    if pykan:
        raise TypeError(f"fit() got unexpected keyword argument(s) {sorted(pykan)}")
    return log_every, loss, batch_size, metrics


def _check_arguments(model, steps, *, lamb, grad_clip, update_grid, grid_update_num, start_grid_update_step,
                     stop_grid_update_step, log_every, batch_size, early_stopping) -> tuple[int, int]:
    """Validate fit's scalar arguments; returns ``(log_every, grid_every)`` (0: no grid updates)."""
    steps = integer("steps", steps, minimum=1)
    log_every = max(1, steps // LOG_RECORDS) if log_every is None else integer("log_every", log_every, minimum=1)
    for name, value in (("batch_size", batch_size), ("early_stopping", early_stopping)):
        if value is not None:
            integer(name, value, minimum=1)
    if not lamb >= 0:
        raise ValueError(f"lamb must be >= 0, got {lamb!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
    if lamb > 0 and not hasattr(model, "regularization_loss"):
        raise ValueError(f"lamb={lamb} needs a model with regularization_loss(x) (a KAN); "
                         f"{type(model).__name__} has none")
    integer("stop_grid_update_step", stop_grid_update_step)
    integer("start_grid_update_step", start_grid_update_step)
    grid_update_num = integer("grid_update_num", grid_update_num, minimum=1)
    if update_grid is None:  # the default: pykan's grid updates for models that have them (KANs)
        update_grid = hasattr(model, "update_grid")
    if update_grid is True:  # pykan: grid_update_num updates spread over the first stop_grid_update_step steps
        every = max(1, stop_grid_update_step // grid_update_num)
    elif update_grid is False:
        every = 0
    elif is_integer(update_grid) and update_grid >= 0:
        every = int(update_grid)
    else:
        raise ValueError(f"update_grid must be True, False, None or a number of steps >= 1, got {update_grid!r}")
    if every and not hasattr(model, "update_grid"):
        raise ValueError(f"update_grid={update_grid!r} needs a model with update_grid(x) (a KAN); "
                         f"{type(model).__name__} has none")
    return log_every, every


def _count_nonfinite(t: torch.Tensor) -> str | None:
    if not t.is_floating_point():
        return None
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    parts = ([f"{nan} NaN values"] if nan else []) + ([f"{inf} infinite values"] if inf else [])
    return " and ".join(parts) or None


def _prepare_dataset(dataset: Mapping, loss, device: torch.device) -> dict[str, torch.Tensor]:
    """Check the pykan dataset dict (and its optional validation split) and move its tensors to ``device``
    once. Tensors already on ``device`` are not copied."""
    if not isinstance(dataset, Mapping):
        raise TypeError(f"dataset must be a dict with keys {DATASET_KEYS}, got {type(dataset).__name__}")
    missing = [k for k in DATASET_KEYS if k not in dataset]
    if missing:
        raise ValueError(f"dataset is missing {missing}; expected keys {DATASET_KEYS} (the pykan convention)")
    has_val = [k in dataset for k in VALIDATION_KEYS]
    if any(has_val) and not all(has_val):
        raise ValueError(f"a validation split needs both {VALIDATION_KEYS}; dataset has only "
                         f"{[k for k in VALIDATION_KEYS if k in dataset]}")
    keys = DATASET_KEYS + (VALIDATION_KEYS if all(has_val) else ())
    for k in keys:
        if not torch.is_tensor(dataset[k]):
            raise TypeError(f"dataset[{k!r}] must be a torch.Tensor, got {type(dataset[k]).__name__} "
                            "(convert with torch.as_tensor)")
    for split in ("train", "test") + (("val",) if all(has_val) else ()):
        x, y = dataset[f"{split}_input"], dataset[f"{split}_label"]
        if x.ndim == 0 or y.ndim == 0 or x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(f"dataset['{split}_input'] has shape {tuple(x.shape)} and dataset['{split}_label'] "
                             f"has shape {tuple(y.shape)}: expected the same number N > 0 of rows")
        if not x.is_floating_point():
            raise ValueError(f"dataset['{split}_input'] must be a floating tensor, got {x.dtype}")
        if loss == "ce" and (y.dtype != torch.long or y.ndim != 1):
            raise ValueError(f"loss='ce' needs dataset['{split}_label'] as class indices of dtype torch.long and "
                             f"shape [N]; got {y.dtype} with shape {tuple(y.shape)}")
        if loss == "mse" and y.dtype != x.dtype:
            raise ValueError(f"loss='mse' needs dataset['{split}_label'] with the input dtype {x.dtype}, got {y.dtype}")
        train_x = dataset["train_input"]
        if x.dtype != train_x.dtype or x.shape[1:] != train_x.shape[1:]:
            raise ValueError(f"dataset['train_input'] ({train_x.dtype}, {tuple(train_x.shape)}) and "
                             f"dataset['{split}_input'] ({x.dtype}, {tuple(x.shape)}) must share dtype and "
                             "feature shape")
    for k in keys:
        problem = _count_nonfinite(dataset[k])
        if problem:
            raise ValueError(f"dataset[{k!r}] contains {problem}; clean or drop those rows before fit")
    return {k: dataset[k].to(device) for k in keys}


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    raise ValueError(f"{type(model).__name__} has no floating-point parameters to train")


def _make_optimizer(opt, model: torch.nn.Module, lr: float | None) -> tuple[torch.optim.Optimizer, str]:
    if isinstance(opt, str):
        name = {n.lower(): n for n in OPTIMIZERS}.get(opt.lower())
        if name is None:
            raise ValueError(f"unknown optimizer {opt!r}; valid names: {', '.join(OPTIMIZERS)} "
                             "(or pass a torch.optim.Optimizer, or a factory params -> Optimizer)")
        lr = DEFAULT_LR[name] if lr is None else lr
        if name == "LBFGS":
            # The tiny tolerances keep LBFGS working at the very small gradients of the RMSE ~1e-5 regime
            # (torch's defaults would end every step early there); kanedu's L-BFGS keeps curvature pairs
            # down to y.s > 1e-32 (torch.optim.LBFGS drops them below 1e-10): see kanedu.lbfgs.
            return TorchLBFGS(model.parameters(), lr=lr, history_size=LBFGS_HISTORY, tolerance_grad=1e-32,
                              tolerance_change=1e-32), name
        return getattr(torch.optim, name)(model.parameters(), lr=lr), name
    if isinstance(opt, torch.optim.Optimizer):
        if lr is not None:
            raise ValueError("lr is ignored when opt is an optimizer instance; set it when building the optimizer")
        optimizer = opt
    elif callable(opt):
        optimizer = opt(model.parameters()) if lr is None else opt(model.parameters(), lr=lr)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"the optimizer factory returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
    else:
        raise ValueError(f"opt must be one of {OPTIMIZERS}, an optimizer or a factory, got {opt!r}")
    owned = {id(p) for p in model.parameters()}
    if not any(id(p) in owned for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("the optimizer holds none of the model's parameters; build it from model.parameters()")
    return optimizer, type(optimizer).__name__


def _is_lbfgs(optimizer) -> bool:
    return isinstance(optimizer, (torch.optim.LBFGS, TorchLBFGS, LBFGS))


def _loss_function(loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == "mse":
        return F.mse_loss
    if loss == "ce":
        return F.cross_entropy
    if callable(loss):
        return loss
    raise ValueError(f"loss must be 'mse', 'ce' or a callable(pred, target) -> scalar tensor, got {loss!r}")


def _metric_functions(metrics) -> dict[str, Callable]:
    """``{name: fn(test_pred, test_label)}``; a function of no arguments (pykan's metrics) is called as is."""
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        fns = dict(metrics)
    elif callable(metrics):
        fns = {metrics.__name__: metrics}
    else:
        fns = {fn.__name__: fn for fn in metrics}
    reserved = {"step", "train_loss", "test_loss", "val_loss", "train_rmse", "test_rmse", "val_rmse", "train_acc",
                "test_acc", "val_acc", "reg", "lr", "seconds", "evaluations"}
    clash = sorted(set(fns) & reserved)
    if clash:
        raise ValueError(f"metric names {clash} clash with fit's own columns; rename them")

    def adapt(fn):
        try:
            takes_nothing = not inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes_nothing = False
        return (lambda pred, y: fn()) if takes_nothing else fn

    return {name: adapt(fn) for name, fn in fns.items()}


def _preflight(model: torch.nn.Module, data: dict, loss, loss_fn) -> str | None:
    """Run the model on two training rows to catch shape mistakes before training.

    Returns the task that decides the logged metrics: "regression" (RMSE), "classification"
    (accuracy) or None (a custom loss with other shapes).
    """
    x, y = data["train_input"][:2], data["train_label"][:2]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(x)
        model.train(was_training)
        if not torch.is_tensor(pred):
            raise TypeError(f"the model returned {type(pred).__name__}; fit needs a tensor of predictions")
        if loss == "mse" and pred.shape != y.shape:
            raise ValueError(f"model output has shape {tuple(pred.shape)} but dataset['train_label'] rows have shape "
                             f"{tuple(y.shape)} (first 2 rows); mse would broadcast them silently")
        if loss == "ce":
            if pred.ndim != 2:
                raise ValueError(f"loss='ce' needs model outputs [N, n_classes], got shape {tuple(pred.shape)}")
            for k in ("train_label", "test_label") + (("val_label",) if "val_label" in data else ()):
                lo, hi = int(data[k].min()), int(data[k].max())
                if lo < 0 or hi >= pred.shape[1]:
                    raise ValueError(f"dataset[{k!r}] has class indices in [{lo}, {hi}] but the model has "
                                     f"{pred.shape[1]} outputs (classes 0..{pred.shape[1] - 1})")
        value = loss_fn(pred, y)
        if not torch.is_tensor(value) or value.ndim != 0:
            raise ValueError(f"the loss must return a scalar tensor, got {value!r:.80}")
    if y.is_floating_point() and pred.shape == y.shape:
        return "regression"
    if not y.is_floating_point() and pred.ndim == 2 and y.ndim == 1:
        return "classification"
    return None


AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _amp_dtype(amp, device: torch.device, dtype: torch.dtype, lbfgs: bool) -> torch.dtype | None:
    """The autocast dtype of this run, or None for full precision.

    ``None`` (the default) turns bf16 on where it helps and is supported: a CUDA GPU of compute capability
    8.0 or newer (Ampere; on a T4 bf16 is emulated and slower than float32), a float32 model and a
    first-order optimizer (bf16 keeps ~3 significant digits, which spoils LBFGS line searches and the
    1e-4..1e-6 errors of the KAN paper). ``True`` picks bf16 where supported natively, else fp16 (with a
    gradient scaler); ``"bf16"``/``"fp16"`` ask for one; ``False`` is full precision.
    """
    if amp is None:
        if device.type != "cuda" or dtype != torch.float32 or lbfgs:
            return None
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else None
    if amp is False:
        return None
    if lbfgs:
        raise ValueError(f"amp={amp!r} needs a first-order optimizer (Adam, AdamW): LBFGS's line search "
                         "compares losses to a precision that bf16/fp16 do not have")
    if amp is True:
        if device.type != "cuda":
            warnings.warn(f"amp=True needs a CUDA device; training on {device} in full precision", stacklevel=3)
            return None
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    if not isinstance(amp, str) or amp.lower() not in AMP_DTYPES:
        raise ValueError(f"amp must be None, True, False, 'bf16' or 'fp16', got {amp!r}")
    chosen = AMP_DTYPES[amp.lower()]
    if chosen == torch.float16 and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device, the run is on {device} (bf16 autocast works on the CPU)")
    return chosen


class _CompiledForward:
    """``torch.compile(model)`` that falls back to eager (with a warning) if compilation fails.

    Compilation happens lazily at the first call, so failures are caught there, not at construction.
    """

    def __init__(self, model: torch.nn.Module):
        self.model, self.compiled = model, None
        try:
            self.compiled = torch.compile(model)
        except Exception as err:  # e.g. a Python version that Dynamo does not support
            self._fall_back(err)

    def _fall_back(self, err: Exception) -> None:
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); training eagerly", stacklevel=4)
        self.compiled = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as err:  # a genuine model error is raised again by the eager call
                self._fall_back(err)
        return self.model(x)


def _interactive() -> bool:
    """Whether a progress bar would be seen: a notebook or a terminal, and not CI."""
    if os.environ.get("CI"):
        return False
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is not None and hasattr(shell, "kernel"):  # Jupyter, Colab
        return True
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _make_generator(seed: int, device: torch.device) -> torch.Generator:
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:  # a backend without device generators: draw on the CPU
        generator = torch.Generator()
    return generator.manual_seed(seed)


def _batches(n: int, batch_size: int | None, generator: torch.Generator, device: torch.device):
    """Yield row indices for each step (None: the full set). Each epoch is a fresh permutation."""
    if batch_size is None or batch_size >= n:
        while True:
            yield None
    while True:
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
        for start in range(0, n - batch_size + 1, batch_size):  # drop the last partial batch
            yield perm[start:start + batch_size]


def _fused_unsupported(model, data, *, opt, batch_size, loss, lamb, grad_clip, compile, amp) -> str | None:
    """Why this ``fit`` call cannot run on the fused engine (None if it can)."""
    if not (isinstance(opt, str) and opt.lower() == "lbfgs"):
        return f"opt={opt!r} (fused: 'LBFGS' only)"
    if batch_size is not None and batch_size < len(data["train_input"]):
        return f"batch_size={batch_size} (fused: full batch only)"
    if loss != "mse":
        return f"loss={loss!r} (fused: 'mse' only)"
    if lamb > 0:
        return f"lamb={lamb} (fused: no regularization)"
    if grad_clip is not None:
        return "grad_clip is set"
    if compile:
        return "compile=True"
    if amp:
        return "amp is on"
    y = data["train_label"]
    if not y.is_floating_point() or y.dim() != 2:
        return f"train_label has shape {tuple(y.shape)} and dtype {y.dtype} (fused: float [N, out])"
    return unsupported_reason(model, data["train_input"])


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class _Run:
    """Everything one ``fit`` call sets up, so that a step and a record each read as one function."""

    model: torch.nn.Module
    data: dict[str, torch.Tensor]
    steps: int
    loss_fn: Callable
    loss_name: Any
    task: str | None
    optimizer: Any
    engine: FusedKAN | None
    forward: Callable
    amp_dtype: torch.dtype | None
    scaler: Any
    lamb: float
    reg_weights: dict
    grad_clip: float | None
    grid_every: int
    grid_start: int
    grid_stop: int
    generator: torch.Generator
    batches: Iterator
    log_every: int
    metric_fns: dict
    callbacks: list
    early_stopping: int | None
    history: History
    dtype: torch.dtype
    device: torch.device
    start: float = field(default_factory=time.perf_counter)
    evaluations: int = 0
    last: dict = field(default_factory=dict)  # pred, target, loss (and reg) of the last evaluation
    good_state: dict | None = None  # restore point: the last logged step with finite losses
    best_state: dict | None = None
    best_loss: float = math.inf
    bad_logs: int = 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def _setup(model, dataset, *, opt, steps, lr, batch_size, loss, lamb, reg_weights, update_grid, grid_update_num,
           start_grid_update_step, stop_grid_update_step, device, amp, compile, seed, log_every, callbacks,
           early_stopping, metrics, grad_clip, fused) -> _Run:
    log_every, grid_every = _check_arguments(
        model, steps, lamb=lamb, grad_clip=grad_clip, update_grid=update_grid, grid_update_num=grid_update_num,
        start_grid_update_step=start_grid_update_step, stop_grid_update_step=stop_grid_update_step,
        log_every=log_every, batch_size=batch_size, early_stopping=early_stopping)
    device = resolve_device(device)
    data = _prepare_dataset(dataset, loss, device)
    if early_stopping is not None and "val_input" not in data:
        raise ValueError("early_stopping watches the validation loss: add dataset['val_input'] and "
                         "dataset['val_label'] (e.g. kanedu.data.with_validation(dataset)); never stop on the test set")
    dtype = _model_dtype(model)
    if dtype != data["train_input"].dtype:
        raise ValueError(f"the model's parameters are {dtype} but dataset['train_input'] is "
                         f"{data['train_input'].dtype}; convert one, e.g. model.to({data['train_input'].dtype})")
    if device.type == "mps" and dtype == torch.float64:
        raise ValueError("MPS does not support float64; use device='cpu' or float32 data and model")
    model.to(device)
    loss_fn = _loss_function(loss)
    task = _preflight(model, data, loss, loss_fn)
    why_not = _fused_unsupported(model, data, opt=opt, batch_size=batch_size, loss=loss, lamb=lamb,
                                 grad_clip=grad_clip, compile=compile, amp=amp)
    if fused and why_not:
        raise ValueError(f"fused=True, but this run cannot use the fused engine: {why_not}")
    engine = None
    if fused is not False and why_not is None:
        engine = FusedKAN(model, data["train_input"], data["train_label"])
        # the settings of _make_optimizer's LBFGS
        optimizer = LBFGS(lr=DEFAULT_LR["LBFGS"] if lr is None else lr, history_size=LBFGS_HISTORY,
                          tolerance_grad=1e-32, tolerance_change=1e-32)
        opt_name = "LBFGS"
    else:
        optimizer, opt_name = _make_optimizer(opt, model, lr)
    amp_dtype = _amp_dtype(amp, device, dtype, _is_lbfgs(optimizer))
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    forward = engine.forward if engine is not None else _CompiledForward(model) if compile else model
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), device="cpu").item())
    generator = _make_generator(seed, device)
    history = History(meta={"opt": opt_name, "device": str(device), "dtype": str(dtype),
                            "amp": None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
                            "compile": bool(compile), "batch_size": batch_size, "seed": seed,
                            "engine": "fused" if engine is not None else "torch", "log_every": log_every,
                            "validation": "val_input" in data})
    callbacks = [callbacks] if callable(callbacks) else list(callbacks)
    return _Run(model=model, data=data, steps=steps, loss_fn=loss_fn, loss_name=loss, task=task, optimizer=optimizer,
                engine=engine, forward=forward, amp_dtype=amp_dtype, scaler=scaler, lamb=lamb, reg_weights=reg_weights,
                grad_clip=grad_clip, grid_every=grid_every, grid_start=start_grid_update_step,
                grid_stop=stop_grid_update_step, generator=generator,
                batches=_batches(len(data["train_input"]), batch_size, generator, device), log_every=log_every,
                metric_fns=_metric_functions(metrics), callbacks=callbacks, early_stopping=early_stopping,
                history=history, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# one step
# --------------------------------------------------------------------------------------------------


def _grid_update(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> None:
    if len(x) > GRID_UPDATE_MAX_POINTS:
        idx = torch.randperm(len(x), generator=generator, device=generator.device)[:GRID_UPDATE_MAX_POINTS]
        x = x[idx.to(x.device)]
    params = [id(p) for p in model.parameters()]
    with torch.no_grad():
        model.update_grid(x)
    if [id(p) for p in model.parameters()] != params:
        raise RuntimeError(f"{type(model).__name__}.update_grid replaced parameter tensors, so the optimizer would "
                           "keep updating the old ones; update them in place (p.copy_(...) under torch.no_grad())")


def _step(run: _Run, i: int) -> None:
    """Training step ``i`` (0-based): a grid update when one is due (pykan's schedule), then one step of
    the optimizer on the step's batch."""
    data, model = run.data, run.model
    idx = next(run.batches)
    x = data["train_input"] if idx is None else data["train_input"][idx]
    y = data["train_label"] if idx is None else data["train_label"][idx]
    if run.grid_every and run.grid_start <= i < run.grid_stop and i % run.grid_every == 0:
        _grid_update(model, data["train_input"], run.generator)
        if hasattr(run.optimizer, "forget"):  # the curvature pairs describe the loss before the knots moved
            run.optimizer.forget()

    if run.engine is not None:  # the fused engine: loss and gradient in NumPy, L-BFGS on one flat vector
        engine = run.engine
        with np.errstate(all="ignore"):  # a diverging run shows up as a NaN loss, handled by _log
            v = run.optimizer.step(engine, engine.pack())[0]
        engine.unpack(v)
        run.evaluations = engine.evaluations
        pred = torch.from_numpy(engine.last_pred)
        run.last.update(pred=pred, target=y, loss=torch.tensor(engine.last_loss, dtype=pred.dtype, device=pred.device))
        return

    def closure():
        run.evaluations += 1
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            pred = run.forward(x)
        pred = pred.to(run.dtype) if pred.is_floating_point() else pred
        data_loss = run.loss_fn(pred, y)
        total = data_loss
        if run.lamb > 0:
            reg = model.regularization_loss(x, **run.reg_weights)
            total = total + run.lamb * reg
            run.last["reg"] = reg.detach()
        (total if run.scaler is None else run.scaler.scale(total)).backward()
        if run.grad_clip is not None:
            if run.scaler is not None:
                run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
        run.last.update(pred=pred.detach(), target=y, loss=data_loss.detach())
        return total

    try:
        if run.scaler is not None:
            closure()
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            run.optimizer.step(closure)
    except Exception as err:  # a line search can fail on NaN losses
        if "loss" in run.last and not torch.isfinite(run.last["loss"]):
            raise _divergence(run, i + 1, "train_loss", run.last["loss"].item()) from err
        raise


# --------------------------------------------------------------------------------------------------
# logging and stopping
# --------------------------------------------------------------------------------------------------


def _evaluate(run: _Run) -> dict[str, float]:
    """The record's numbers: losses and metrics on the test (and validation) split at the current weights,
    and the train loss of the last evaluation, as the optimizer saw it. For the MSE loss ``*_loss`` is
    the RMSE, as in pykan's ``model.fit`` results; ``*_rmse`` says the same by name."""
    model, last = run.model, run.last
    values = {"train_loss": last["loss"]}
    if "reg" in last:
        values["reg"] = last["reg"]
    if run.task == "regression":  # mean squared errors here, square roots below (on the host, in float64)
        values["train_rmse"] = torch.mean((last["pred"] - last["target"]) ** 2)
    elif run.task == "classification":
        values["train_acc"] = (last["pred"].argmax(-1) == last["target"]).float().mean()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for split in ("val", "test"):
            if f"{split}_input" not in run.data:
                continue
            y = run.data[f"{split}_label"]
            with run.autocast():
                pred = run.forward(run.data[f"{split}_input"])
            pred = pred.to(last["pred"].dtype)
            values[f"{split}_loss"] = run.loss_fn(pred, y)
            if run.task == "regression":
                values[f"{split}_rmse"] = torch.mean((pred - y) ** 2)
            elif run.task == "classification":
                values[f"{split}_acc"] = (pred.argmax(-1) == y).float().mean()
            if split == "test":
                for name, fn in run.metric_fns.items():
                    values[name] = fn(pred, y)
    model.train(was_training)
    record = {k: float(v) for k, v in values.items()}  # one batch of device -> host reads
    for split in ("train", "val", "test"):
        if f"{split}_rmse" in record:
            record[f"{split}_rmse"] = math.sqrt(record[f"{split}_rmse"])
        if run.loss_name == "mse" and f"{split}_loss" in record:  # pykan's meaning of the name: the RMSE
            record[f"{split}_loss"] = math.sqrt(record[f"{split}_loss"])
    return record


def _divergence(run: _Run, step: int, key: str, value: float) -> TrainingDiverged:
    """Restore the last finite state and describe what went wrong."""
    run.model.load_state_dict(run.good_state)
    prev = run.history.last
    if prev:
        where = (f"the last finite train_loss was {prev['train_loss']:.4g} at step {prev['step']}; "
                 f"the model was restored to its state after step {prev['step']}")
    else:
        where = "no earlier step was logged; the model was restored to its state before training"
    return TrainingDiverged(f"training diverged at step {step}: {key} is {value} ({where}). "
                            "Try a smaller lr, grad_clip, float64, or check the scale of the data.",
                            step=step, last_finite_loss=prev["train_loss"] if prev else None, history=run.history)


def _progress_text(record: dict[str, float]) -> str:
    keys = [k for k in ("train_rmse", "val_rmse", "test_rmse", "train_acc", "val_acc", "test_acc") if k in record]
    return " ".join(f"{k}={record[k]:.2e}" for k in keys or ("train_loss", "test_loss"))


def _log(run: _Run, step: int) -> str | None:
    """Record step ``step`` (1-based) and return why training stops here (None: it goes on)."""
    record = {"step": step, **_evaluate(run)}
    lr = run.optimizer.lr if isinstance(run.optimizer, LBFGS) else run.optimizer.param_groups[0]["lr"]
    record.update(lr=float(lr), seconds=time.perf_counter() - run.start, evaluations=run.evaluations)
    bad = [k for k in ("train_loss", "val_loss", "test_loss", "reg") if k in record and not math.isfinite(record[k])]
    if bad:
        raise _divergence(run, step, bad[0], record[bad[0]])
    run.good_state = _state_copy(run.model)
    run.history.records.append(record)
    if run.early_stopping is not None:
        if record["val_loss"] < run.best_loss:
            run.best_state, run.best_loss, run.bad_logs = run.good_state, record["val_loss"], 0
        else:
            run.bad_logs += 1
            if run.bad_logs >= run.early_stopping:
                run.model.load_state_dict(run.best_state)
                return "early_stopping"
    if any([bool(cb(run.history, run.model)) for cb in run.callbacks]):
        return "callback"
    return None


# --------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------


def fit(
    model: torch.nn.Module,
    dataset: Mapping[str, torch.Tensor],
    *,
    opt: str | torch.optim.Optimizer | Callable = "LBFGS",
    steps: int = 100,
    lr: float | None = None,
    batch_size: int | None = None,
    loss: str | Callable = "mse",
    lamb: float = 0.0,
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    lamb_coef: float = 0.0,
    lamb_coefdiff: float = 0.0,
    update_grid: bool | int | None = None,
    grid_update_num: int = 10,
    start_grid_update_step: int = -1,
    stop_grid_update_step: int = 50,
    device: str | torch.device | None = None,
    amp: bool | str | None = None,
    compile: bool = False,
    seed: int | None = None,
    progress: bool = True,
    log_every: int | None = None,
    callbacks: Callable | tuple | list = (),
    early_stopping: int | None = None,
    metrics: Mapping[str, Callable] | list | None = None,
    grad_clip: float | None = None,
    fused: bool | None = None,
    **pykan,
) -> History:
    """Train ``model`` on a pykan-style dataset and return its :class:`History`.

    Each step minimises ``loss(model(x), y) + lamb * model.regularization_loss(x)`` on the training
    rows (all of them, or a mini-batch), then every ``log_every`` steps (and at the last step) logs a
    record evaluated on the whole validation and test sets. pykan's spellings work too: ``log``,
    ``loss_fn``, ``batch=-1``, ``lamb_l1``, ``lamb_entropy``, ``lamb_coef``, ``lamb_coefdiff``,
    ``update_grid``, ``grid_update_num``, ``start_grid_update_step``, ``stop_grid_update_step``.

    Args:
        model: any ``nn.Module`` mapping inputs ``[N, *in_shape]`` to predictions. It is moved to
            ``device`` in place (its dtype is kept) and left there, in its original train/eval mode.
            A KAN remembers the training inputs as ``model.last_input`` afterwards, so that
            ``model.prune()`` and ``model.plot()`` work without arguments, as in pykan.
        dataset: ``{"train_input": [N, *in_shape], "train_label": [N, *out_shape],
            "test_input": [M, *in_shape], "test_label": [M, *out_shape]}``, optionally with
            ``"val_input", "val_label"`` (a validation split: logged as ``val_*``, watched by
            ``early_stopping``, and what ``history.best()`` selects on). Inputs are floating and have the
            model's dtype; for ``loss="ce"`` labels are torch.long class indices ``[N]``. Moved to
            ``device`` once (tensors already there are not copied). NaN/inf values raise ValueError.
        opt: "LBFGS" (kanedu.lbfgs: strong-Wolfe line search, up to 20 iterations per step, 100 curvature
            pairs, forgotten after every grid update), "Adam", "AdamW", a ``torch.optim.Optimizer`` over
            the model's parameters, or a factory ``params -> Optimizer`` (called with ``lr=lr`` if given).
        steps: number of optimizer steps (one LBFGS step: up to 20 iterations, 25 evaluations).
        lr: learning rate; default 1.0 for LBFGS (its line search scales the step) and 1e-2 for
            Adam/AdamW (small models, a few hundred full-batch steps).
        batch_size: rows per step, drawn without replacement from a fresh permutation each epoch;
            None (or >= N) uses all training rows every step.
        loss: "mse", "ce" (cross-entropy on logits ``[N, C]``) or a callable ``(pred, target) -> scalar``.
        lamb: weight of ``model.regularization_loss(x, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff)``
            (the KAN paper's L1 + entropy sparsity term, computed as pykan computes it).
        lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff: the weights of its terms (pykan's names and
            defaults, see ``KAN.regularization_loss``).
        update_grid: KAN grid updates (``model.update_grid(train_input)``, a random subsample of at
            most 10,000 rows, without gradient) before steps ``start, start + k, ...`` below
            ``stop_grid_update_step``. None (the default) is True for models with ``update_grid`` (KANs)
            and False for others, as in pykan's ``model.fit``. True uses pykan's schedule,
            k = stop_grid_update_step // grid_update_num (every 5 steps in the first 50); an int sets k;
            False/0 never updates.
        grid_update_num, start_grid_update_step, stop_grid_update_step: pykan's names and defaults for
            that schedule (10 updates, from step 0, none at or after step 50; steps are 0-based).
        device: see :func:`kanedu.resolve_device` (argument, then $KANEDU_DEVICE, then CUDA, MPS, CPU). For
            lesson-sized KANs the CPU is faster than a GPU (the fused engine runs on the CPU only); pass
            ``device="cpu"`` to be sure.
        amp: autocast. None: bf16 on a CUDA GPU of compute capability 8.0 or newer, for float32 models
            and first-order optimizers, else off; True: bf16 where native, else fp16 with a gradient
            scaler (CUDA only); "bf16" or "fp16": that one ("bf16" also on the CPU); False: off.
        compile: train through ``torch.compile(model)``; falls back to eager with a warning if
            compilation fails.
        seed: seeds the mini-batch order and grid-update subsample (a ``torch.Generator`` on the
            device); None draws one from torch's global RNG, so ``seed_everything`` makes runs repeat.
        progress: tqdm progress bar with the latest losses; shown only in notebooks and terminals,
            never under CI (``$CI`` set) or when stderr is redirected.
        log_every: log a record every this many steps (and at the last step). None: every step up to
            100 steps, else about 100 records (each record evaluates the test set and reads a few numbers
            back from the device). Divergence is checked and the restore point saved at logged steps.
        callbacks: callables ``cb(history, model)`` run after each logged step (``history.last`` is
            the new record); returning True stops training (``stop_reason="callback"``).
        early_stopping: patience: stop when ``val_loss`` has not improved for this many logged steps,
            and restore the weights of the best logged step (``stop_reason="early_stopping"``). Needs a
            validation split.
        metrics: extra columns ``{name: fn(test_pred, test_label) -> number}`` (or a list of functions,
            named by ``__name__``; pykan's functions of no arguments are called as they are), evaluated
            on the test set at logged steps.
        grad_clip: clip the global gradient norm to this value before each update.
        fused: full-batch LBFGS on a ``kanedu.KAN`` on the CPU with the MSE loss and ``lamb=0`` (the KAN
            paper's protocol) can run on a fused engine: the loss and gradient from kanedu's compiled CPU
            kernels without autograd (``kanedu.fused``) and the same L-BFGS on one flat vector, several
            times faster for small models. None (default) uses it when the run qualifies, True requires
            it (ValueError saying why not), False never uses it. ``history.meta["engine"]`` says which ran.

    Returns:
        A :class:`History`; each record has ``step`` (1-based), ``train_loss`` (on the step's batch, as
        the optimizer saw it; for LBFGS at its last evaluation), ``val_loss`` (with a validation split) and
        ``test_loss`` (after the step) -- RMSEs for the MSE loss, as in pykan --, ``train_rmse``/``test_rmse``
        (regression) or ``train_acc``/``test_acc`` (classification), ``reg`` (if lamb > 0), ``lr``,
        ``seconds`` (since the first step), ``evaluations`` (loss-and-gradient evaluations so far: one per
        step for Adam, up to 25 per LBFGS step) and any metrics.

    Raises:
        TrainingDiverged: (a FloatingPointError) a loss became NaN/inf; the message names the step and
            the last finite loss, and the model is restored to the last logged finite state.

    KeyboardInterrupt stops training cleanly: the model is restored to the last logged step and the
    history so far is returned with ``history.interrupted == True``.
    """
    log_every, loss, batch_size, metrics = _pykan_arguments(pykan, log_every, loss, batch_size, metrics)
    reg_weights = {"lamb_l1": lamb_l1, "lamb_entropy": lamb_entropy, "lamb_coef": lamb_coef,
                   "lamb_coefdiff": lamb_coefdiff}
    run = _setup(model, dataset, opt=opt, steps=steps, lr=lr, batch_size=batch_size, loss=loss, lamb=lamb,
                 reg_weights=reg_weights, update_grid=update_grid, grid_update_num=grid_update_num,
                 start_grid_update_step=start_grid_update_step, stop_grid_update_step=stop_grid_update_step,
                 device=device, amp=amp, compile=compile, seed=seed, log_every=log_every, callbacks=callbacks,
                 early_stopping=early_stopping, metrics=metrics, grad_clip=grad_clip, fused=fused)
    was_training = model.training
    model.train()
    run.good_state = _state_copy(model)
    bar = tqdm(total=run.steps, disable=not (progress and _interactive()), desc="fit", dynamic_ncols=True)
    try:
        for i in range(run.steps):
            _step(run, i)
            bar.update()
            step = i + 1
            if step % run.log_every and step != run.steps:
                continue
            run.history.stop_reason = _log(run, step)
            bar.set_postfix_str(_progress_text(run.history.last), refresh=False)
            if run.history.stop_reason:
                break
    except KeyboardInterrupt:
        model.load_state_dict(run.good_state)
        run.history.stop_reason = "interrupted"
        done = run.history.last["step"] if run.history.last else 0
        warnings.warn(f"fit interrupted; the model holds its state after step {done} and the history so far "
                      "is returned", stacklevel=2)
    finally:
        bar.close()
        model.train(was_training)
        if hasattr(model, "last_input"):
            model.last_input = run.data["train_input"]
    return run.history
