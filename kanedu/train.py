"""Training: seeds, CPU setup, device choice and a pykan-style ``fit()`` loop.

The dataset is the pykan dict ``{"train_input", "train_label", "test_input", "test_label"}`` so that
students can move between pykan and kanedu. ``fit`` trains any ``torch.nn.Module``; KAN models also
get grid updates (``model.update_grid(x)``) and sparsity regularization
(``model.regularization_loss(x)``) when asked for.

    >>> seed_everything(0)
    >>> history = fit(model, dataset, opt="LBFGS", steps=50)
    >>> history.last["test_rmse"]
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "CpuConfig",
    "History",
    "TrainingDiverged",
    "configure_cpu",
    "default_device",
    "fit",
    "resolve_device",
    "seed_everything",
]

DATASET_KEYS = ("train_input", "train_label", "test_input", "test_label")
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
# Seeds, CPU and device
# --------------------------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed Python's ``random``, NumPy and torch (every device, CUDA included); returns ``seed``.

    With ``deterministic=True`` torch is also asked for deterministic kernels:
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op without a deterministic
    implementation warns instead of failing), cuDNN autotuning off, and ``CUBLAS_WORKSPACE_CONFIG``
    set for deterministic cuBLAS if it is not set yet.

    What repeats, and what does not: on the same machine, with the same thread count and the same
    library versions, two runs of ``fit`` with the same seed give bit-identical histories and weights.
    On another CPU they do not: BLAS and the compiled kernels pick different SIMD code (AVX2 or
    AVX-512) and split sums differently over 1 or 2 threads, so the last bits of every result differ, and
    long LBFGS runs amplify those bits into visibly different (equally good) fits. The course's
    assertions therefore use thresholds measured over seeds and thread counts, never one run's digits.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


class CpuConfig(NamedTuple):
    """What :func:`configure_cpu` did."""

    threads: int
    flush_denormal: bool  # checked: denormals are flushed to zero on every intra-op thread
    flush_denormal_supported: bool
    torch_version: str
    keep_freed_memory: bool = False  # glibc told to keep freed blocks up to KEEP_FREED_BYTES for reuse


def _cgroup_cpu_limit() -> float | None:
    """The container's CPU quota in CPUs (Binder, Docker), or None if unlimited or unknown."""
    try:  # cgroup v2: "<quota> <period>", quota "max" when unlimited
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
    except (OSError, ValueError):
        try:  # cgroup v1: quota -1 when unlimited
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
                quota, period = f.read().strip(), g.read().strip()
        except OSError:
            return None
    try:
        return int(quota) / int(period) if quota not in ("max", "-1") else None
    except ValueError:
        return None


def _available_cpus() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        n = min(n, int(limit))  # round down: a thread throttled by the quota stalls the others
    return max(1, n)


def _threads_from_environment() -> int | None:
    """``$OMP_NUM_THREADS`` as a positive int, None when unset; ValueError when it is not a number."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        n = int(value.split(",")[0])  # OpenMP allows a comma-separated list (nested levels)
    except ValueError:
        raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"OMP_NUM_THREADS must be a positive integer, got {value!r}")
    return n


def _denormals_flushed() -> bool:
    """Check on a tensor big enough to be split over all intra-op threads that denormals vanish."""
    # Build the denormals from bits: converting a float literal would itself be flushed on this thread.
    bits = torch.full((2**16 * torch.get_num_threads(),), 1 << 20, dtype=torch.int32)  # 1.5e-39 as float32
    return not bool((bits.view(torch.float32) * 1.0).view(torch.int32).any())


def _openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes loaded in this process (Linux), torch's own first."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    runtimes = [p for p in paths if re.match(r"lib(g|i)?omp5?([-.]|$)", os.path.basename(p))]
    torch_dir = os.path.dirname(torch.__file__)
    return sorted(runtimes, key=lambda p: (not p.startswith(torch_dir), p))


def _set_flush_denormal_on_omp_threads(runtime: str, flush: bool) -> None:
    """Run ``torch.set_flush_denormal(flush)`` once on every thread of ``runtime``'s thread pool.

    The flag lives in each thread's FPU control register and ``torch.set_flush_denormal`` sets it on
    the calling thread only: worker threads started before it (by any earlier parallel op) kept
    computing on slow denormals. ``GOMP_parallel`` (GNU OpenMP's entry point, also provided by LLVM
    and Intel OpenMP) runs a callback on each thread of the pool that torch's parallel ops use.
    """
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    callback = callback_type(lambda _: torch.set_flush_denormal(flush))
    try:
        gomp_parallel = ctypes.CDLL(runtime).GOMP_parallel
    except (OSError, AttributeError):
        return
    gomp_parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp_parallel.restype = None
    gomp_parallel(callback, None, torch.get_num_threads(), 0)


KEEP_FREED_BYTES = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)


def _keep_freed_memory(nbytes: int) -> bool:
    """Ask glibc's malloc to serve blocks below ``nbytes`` from its heap and to keep up to ``nbytes`` of
    freed memory instead of returning it to the OS (mallopt). False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes)) and bool(mallopt(_M_TRIM_THRESHOLD, nbytes))


def configure_cpu(threads: int | None = None, flush_denormal: bool = True,
                  keep_freed_memory: bool = True) -> CpuConfig:
    """Set torch's CPU thread count and denormal handling; returns a :class:`CpuConfig` to print.

    ``threads=None`` uses ``$OMP_NUM_THREADS`` when it is set (so a whole run, notebooks included, can be
    pinned from outside: ``OMP_NUM_THREADS=1 make test``), else the CPUs this process may run on (its
    affinity mask, capped by a container CPU quota), at most 8: small KAN/MLP ops stop scaling well before
    that. Use ``threads=1`` when
    other processes share the cores (e.g. parallel test workers): a parallel op waits for its
    slowest thread, and a preempted one made small fits ~100x slower on a busy 2-core machine.

    ``flush_denormal=True`` flushes denormal floats (|x| < 1.2e-38 in float32) to zero, on every
    intra-op thread, where the CPU supports it; tiny spline coefficients and gradients made a KAN
    run about 20x slower without it. ``flush_denormal=False`` restores IEEE denormals (lesson 08
    shows the difference). Call this again after changing the thread count yourself.

    ``keep_freed_memory=True`` (Linux/glibc) keeps up to 64 MB of freed memory in the process for reuse.
    By default glibc hands blocks of a few hundred KB back to the OS when they are freed, and the next
    step's temporaries of the same size fault their pages in again: ~1,000 page faults per
    forward+backward of a 64 -> 64 KAN layer on 1,024 samples, about a quarter of its time on a 2-core
    machine (measured; PyTorch's CPU tuning guide recommends jemalloc or tcmalloc for the same reason).
    The setting is process-wide, like the others here; the cost is up to 64 MB held after a peak.
    ``False`` leaves malloc as it is.
    """
    if threads is None:
        threads = _threads_from_environment() or min(_available_cpus(), 8)
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    torch.set_num_threads(threads)
    supported = bool(torch.set_flush_denormal(flush_denormal))
    if supported and threads > 1:
        for runtime in _openmp_runtimes():  # torch's own first; others only if that did not reach its threads
            _set_flush_denormal_on_omp_threads(runtime, flush_denormal)
            if _denormals_flushed() == flush_denormal:
                break
    kept = _keep_freed_memory(KEEP_FREED_BYTES) if keep_freed_memory else False
    return CpuConfig(threads, supported and _denormals_flushed(), supported, torch.__version__, kept)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``device`` if given, else ``$KANEDU_DEVICE``, else CUDA, MPS, CPU.

    Raises ValueError for a malformed name or a device that is not available here.
    """
    source = "the device argument"
    if device is None:
        env = os.environ.get("KANEDU_DEVICE", "").strip()
        if env:
            device, source = env, "the KANEDU_DEVICE environment variable"
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{source} is {device!r}, which is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1', 'mps')"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{source} asks for {str(dev)!r}, but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{source} asks for {str(dev)!r}, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not _mps_available():
        raise ValueError(f"{source} asks for 'mps', but MPS is not available on this machine")
    return dev


def default_device() -> torch.device:
    """``resolve_device(None)``: ``$KANEDU_DEVICE`` if set, else CUDA, then MPS, then CPU."""
    return resolve_device(None)


# --------------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------------


class History:
    """One record (a dict) per logged step of :func:`fit`.

    ``h.records`` is the list of dicts; ``h["test_rmse"]`` or ``h.test_rmse`` is one column as a list;
    ``h[-1]`` is a record; ``h.last`` is the newest record; ``h.to_dict()`` is the columnar dict.
    ``stop_reason`` is None (ran all steps), ``"early_stopping"``, ``"callback"`` or ``"interrupted"``.
    ``meta`` says how the run was set up (optimizer, device, dtype, amp, ...).
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
        """True when early stopping ended training (the model holds the best test-loss state)."""
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

    def best(self, key: str = "test_loss", mode: str | None = None) -> dict[str, Any]:
        """The record with the smallest ``key`` (largest for accuracies, or with ``mode="max"``)."""
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
# fit() helpers
# --------------------------------------------------------------------------------------------------


def _count_nonfinite(t: torch.Tensor) -> str | None:
    if not t.is_floating_point():
        return None
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    parts = ([f"{nan} NaN values"] if nan else []) + ([f"{inf} infinite values"] if inf else [])
    return " and ".join(parts) or None


def _prepare_dataset(dataset: Mapping, loss, device: torch.device) -> dict[str, torch.Tensor]:
    """Check the pykan dataset dict and move its four tensors to ``device`` (once)."""
    if not isinstance(dataset, Mapping):
        raise TypeError(f"dataset must be a dict with keys {DATASET_KEYS}, got {type(dataset).__name__}")
    missing = [k for k in DATASET_KEYS if k not in dataset]
    if missing:
        raise ValueError(f"dataset is missing {missing}; expected keys {DATASET_KEYS} (the pykan convention)")
    for k in DATASET_KEYS:
        if not torch.is_tensor(dataset[k]):
            raise TypeError(f"dataset[{k!r}] must be a torch.Tensor, got {type(dataset[k]).__name__} "
                            "(convert with torch.as_tensor)")
    for split in ("train", "test"):
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
    train_x, test_x = dataset["train_input"], dataset["test_input"]
    if train_x.dtype != test_x.dtype or train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"dataset['train_input'] ({train_x.dtype}, {tuple(train_x.shape)}) and dataset['test_input'] "
                         f"({test_x.dtype}, {tuple(test_x.shape)}) must share dtype and feature shape")
    for k in DATASET_KEYS:
        problem = _count_nonfinite(dataset[k])
        if problem:
            raise ValueError(f"dataset[{k!r}] contains {problem}; clean or drop those rows before fit")
    return {k: dataset[k].to(device) for k in DATASET_KEYS}


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    raise ValueError(f"{type(model).__name__} has no floating-point parameters to train")


def _check_arguments(model, *, lamb, grad_clip, update_grid, stop_grid_update_step, grid_update_num,
                     **counts) -> int:
    """Validate fit's scalar arguments; returns the number of steps between grid updates (0: none)."""
    for name, value in counts.items():  # steps, log_every, batch_size, early_stopping
        if (value is not None or name == "steps") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer{' or None' if name != 'steps' else ''}, got {value!r}")
    if not lamb >= 0:
        raise ValueError(f"lamb must be >= 0, got {lamb!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
    if lamb > 0 and not hasattr(model, "regularization_loss"):
        raise ValueError(f"lamb={lamb} needs a model with regularization_loss(x) (a KAN); "
                         f"{type(model).__name__} has none")
    if isinstance(stop_grid_update_step, bool) or not isinstance(stop_grid_update_step, int):
        raise ValueError(f"stop_grid_update_step must be an integer, got {stop_grid_update_step!r}")
    if isinstance(grid_update_num, bool) or not isinstance(grid_update_num, int) or grid_update_num < 1:
        raise ValueError(f"grid_update_num must be a positive integer, got {grid_update_num!r}")
    if update_grid is None:  # the default: pykan's grid updates for models that have them (KANs)
        update_grid = hasattr(model, "update_grid")
    if update_grid is True:  # pykan: grid_update_num updates spread over the first stop_grid_update_step steps
        every = max(1, stop_grid_update_step // grid_update_num)
    elif update_grid is False:
        every = 0
    elif isinstance(update_grid, int) and update_grid >= 0:
        every = update_grid
    else:
        raise ValueError(f"update_grid must be True, False or a number of steps >= 1, got {update_grid!r}")
    if every and not hasattr(model, "update_grid"):
        raise ValueError(f"update_grid={update_grid!r} needs a model with update_grid(x) (a KAN); "
                         f"{type(model).__name__} has none")
    return every


def _make_optimizer(opt, model: torch.nn.Module, lr: float | None) -> tuple[torch.optim.Optimizer, str]:
    if isinstance(opt, str):
        name = {n.lower(): n for n in OPTIMIZERS}.get(opt.lower())
        if name is None:
            raise ValueError(f"unknown optimizer {opt!r}; valid names: {', '.join(OPTIMIZERS)} "
                             "(or pass a torch.optim.Optimizer, or a factory params -> Optimizer)")
        lr = DEFAULT_LR[name] if lr is None else lr
        if name == "LBFGS":
            # pykan's settings. The tiny tolerances keep LBFGS working at the very small gradients of
            # the RMSE ~1e-5 regime (torch's defaults would end every step early there), and our own
            # L-BFGS keeps curvature pairs down to y.s > 1e-32 (torch.optim.LBFGS drops them below 1e-10).
            from .lbfgs import TorchLBFGS

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


def _loss_function(loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == "mse":
        return F.mse_loss
    if loss == "ce":
        return F.cross_entropy
    if callable(loss):
        return loss
    raise ValueError(f"loss must be 'mse', 'ce' or a callable(pred, target) -> scalar tensor, got {loss!r}")


def _metric_functions(metrics) -> dict[str, Callable]:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        fns = dict(metrics)
    elif callable(metrics):
        fns = {metrics.__name__: metrics}
    else:
        fns = {fn.__name__: fn for fn in metrics}
    reserved = {"step", "train_loss", "test_loss", "train_rmse", "test_rmse", "train_acc", "test_acc",
                "reg", "lr", "seconds"}
    clash = sorted(set(fns) & reserved)
    if clash:
        raise ValueError(f"metric names {clash} clash with fit's own columns; rename them")
    return fns


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
            for k in ("train_label", "test_label"):
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


def _is_lbfgs(optimizer) -> bool:
    from .lbfgs import TorchLBFGS

    return isinstance(optimizer, (torch.optim.LBFGS, TorchLBFGS))


def _use_amp(amp: bool | None, device: torch.device, dtype: torch.dtype, lbfgs: bool) -> bool:
    if amp is None:
        # bf16 keeps ~3 significant digits: fine for Adam on float32 models on a GPU, ruinous for
        # LBFGS line searches and for the 1e-4..1e-5 RMSE targets of the KAN paper.
        return device.type == "cuda" and dtype == torch.float32 and not lbfgs
    if amp and device.type != "cuda":
        warnings.warn(f"amp=True needs a CUDA device; training on {device} in full precision", stacklevel=3)
        return False
    return bool(amp)


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


def _fused_unsupported(model, data, *, opt, batch_size, loss, lamb, grad_clip, compile, amp) -> str | None:
    """Why this ``fit`` call cannot run on the fused engine (None if it can)."""
    from .fused import unsupported_reason

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
        return "amp=True"
    y = data["train_label"]
    if not y.is_floating_point() or y.dim() != 2:
        return f"train_label has shape {tuple(y.shape)} and dtype {y.dtype} (fused: float [N, out])"
    return unsupported_reason(model, data["train_input"])


def _fused_step(engine, optimizer, last: dict, target: torch.Tensor) -> None:
    """One LBFGS step of the fused engine; fills ``last`` like the torch closure does."""
    with np.errstate(all="ignore"):  # a diverging run shows up as a NaN loss, handled by fit
        v, _, _, _, _ = optimizer.step(engine, engine.pack())
    engine.unpack(v)
    pred = torch.from_numpy(engine.last_pred)
    last.update(pred=pred, target=target, loss=torch.tensor(engine.last_loss, dtype=pred.dtype))


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _evaluate(forward, model, data, loss_fn, task, last: dict, metric_fns, autocast) -> dict[str, torch.Tensor]:
    """Test-set loss and metrics at the current weights, plus train metrics from the last batch."""
    y = data["test_label"]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        with autocast():
            pred = forward(data["test_input"])
        pred = pred.to(last["pred"].dtype)
        values = {"train_loss": last["loss"], "test_loss": loss_fn(pred, y)}
        if task == "regression":
            values["train_rmse"] = torch.sqrt(torch.mean((last["pred"] - last["target"]) ** 2))
            values["test_rmse"] = torch.sqrt(torch.mean((pred - y) ** 2))
        elif task == "classification":
            values["train_acc"] = (last["pred"].argmax(-1) == last["target"]).float().mean()
            values["test_acc"] = (pred.argmax(-1) == y).float().mean()
        if "reg" in last:
            values["reg"] = last["reg"]
        for name, fn in metric_fns.items():
            values[name] = fn(pred, y)
    model.train(was_training)
    return values


def _progress_text(record: dict[str, float]) -> str:
    keys = [k for k in ("train_rmse", "test_rmse", "train_acc", "test_acc") if k in record]
    return " ".join(f"{k}={record[k]:.2e}" for k in keys or ("train_loss", "test_loss"))


def _divergence(model, good_state, history: History, step: int, key: str, value: float) -> TrainingDiverged:
    """Restore the last finite state and describe what went wrong."""
    model.load_state_dict(good_state)
    prev = history.last
    if prev:
        where = (f"the last finite train_loss was {prev['train_loss']:.4g} at step {prev['step']}; "
                 f"the model was restored to its state after step {prev['step']}")
    else:
        where = "no earlier step was logged; the model was restored to its state before training"
    return TrainingDiverged(f"training diverged at step {step}: {key} is {value} ({where}). "
                            "Try a smaller lr, grad_clip, float64, or check the scale of the data.",
                            step=step, last_finite_loss=prev["train_loss"] if prev else None, history=history)


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
    stop_grid_update_step: int = 50,
    grid_update_num: int = 10,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    compile: bool = False,
    seed: int | None = None,
    progress: bool = True,
    log_every: int = 1,
    callbacks: Callable | tuple | list = (),
    early_stopping: int | None = None,
    metrics: Mapping[str, Callable] | list | None = None,
    grad_clip: float | None = None,
    fused: bool | None = None,
) -> History:
    """Train ``model`` on a pykan-style dataset and return its :class:`History`.

    Each step minimises ``loss(model(x), y) + lamb * model.regularization_loss(x)`` on the training
    rows (all of them, or a mini-batch), then every ``log_every`` steps (and at the last step) logs a
    record evaluated on the whole test set.

    Args:
        model: any ``nn.Module`` mapping inputs ``[N, *in_shape]`` to predictions. It is moved to
            ``device`` in place (its dtype is kept) and left there, in its original train/eval mode.
        dataset: ``{"train_input": [N, *in_shape], "train_label": [N, *out_shape],
            "test_input": [M, *in_shape], "test_label": [M, *out_shape]}``; inputs are floating and
            have the model's dtype; for ``loss="ce"`` labels are torch.long class indices ``[N]``.
            Moved to ``device`` once. NaN/inf values raise ValueError before training.
        opt: "LBFGS" (kanedu.lbfgs: strong-Wolfe line search, up to 20 iterations per step, 100 curvature pairs,
            forgotten after every grid update),
            "Adam", "AdamW", a ``torch.optim.Optimizer`` over the model's parameters, or a factory
            ``params -> Optimizer`` (called with ``lr=lr`` if lr is given).
        steps: number of optimizer steps (one LBFGS step: up to 20 iterations, 25 evaluations).
        lr: learning rate; default 1.0 for LBFGS (its line search scales the step) and 1e-2 for
            Adam/AdamW (small models, a few hundred full-batch steps).
        batch_size: rows per step, drawn without replacement from a fresh permutation each epoch;
            None (or >= N) uses all training rows every step.
        loss: "mse", "ce" (cross-entropy on logits ``[N, C]``) or a callable ``(pred, target) -> scalar``.
        lamb: weight of ``model.regularization_loss(x, lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff)``
            (pykan's L1 + entropy sparsity term, computed as pykan computes it);
        lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff: the weights of its terms (pykan's names and
            defaults, see ``KAN.regularization_loss``);
            needs a model that has that method.
        update_grid: KAN grid updates (``model.update_grid(train_input)``, a random subsample of at
            most 10,000 rows, without gradient), done before steps 0, k, 2k, ... below
            ``stop_grid_update_step``. None (the default) is True for models with ``update_grid`` (KANs)
            and False for others, as in pykan's ``model.fit``. True uses pykan's schedule,
            k = stop_grid_update_step // grid_update_num (every 5 steps in the first 50); an int sets k;
            False/0 never updates.
        stop_grid_update_step: no grid updates at or after this (0-based) step (pykan's name).
        grid_update_num: the number of grid updates that ``update_grid=True`` spreads over the first
            ``stop_grid_update_step`` steps (pykan's name and default, 10).
        device: see :func:`resolve_device` (argument, then $KANEDU_DEVICE, then CUDA, MPS, CPU).
        amp: bf16 autocast. None turns it on only on CUDA for float32 models with a first-order
            optimizer (bf16 spoils LBFGS line searches); True off CUDA warns and trains in full precision.
        compile: train through ``torch.compile(model)``; falls back to eager with a warning if
            compilation fails.
        seed: seeds the mini-batch order and grid-update subsample (a ``torch.Generator`` on the
            device); None draws one from torch's global RNG, so ``seed_everything`` makes runs repeat.
        progress: tqdm progress bar with the latest losses; shown only in notebooks and terminals,
            never under CI (``$CI`` set) or when stderr is redirected.
        log_every: log a record every this many steps (and at the last step). Divergence is checked
            and the restore point saved at logged steps, so keep it small.
        callbacks: callables ``cb(history, model)`` run after each logged step (``history.last`` is
            the new record); returning True stops training (``stop_reason="callback"``).
        early_stopping: patience: stop when test_loss has not improved for this many logged steps,
            and restore the weights of the best logged step (``stop_reason="early_stopping"``).
        metrics: extra columns ``{name: fn(test_pred, test_label) -> number}`` (or a list of functions,
            named by ``__name__``), evaluated on the test set at logged steps.
        grad_clip: clip the global gradient norm to this value before each update.
        fused: full-batch LBFGS on a ``kanedu.KAN`` on the CPU with the MSE loss and ``lamb=0`` (the KAN
            paper's protocol) can run on a fused engine: the loss and gradient computed in NumPy
            without autograd (``kanedu.fused``) and the same L-BFGS algorithm on one flat vector
            (``kanedu.lbfgs``), several times faster for small models. None (default) uses it when
            the run qualifies, True requires it (ValueError saying why not), False never uses it.
            ``history.meta["engine"]`` says which ran.

    Returns:
        A :class:`History`; each record has ``step`` (1-based), ``train_loss`` (data loss on the
        step's batch, as the optimizer saw it; for LBFGS at its last evaluation), ``test_loss``
        (after the step), ``train_rmse``/``test_rmse`` (regression) or ``train_acc``/``test_acc``
        (classification), ``reg`` (if lamb > 0), ``lr``, ``seconds`` (since the first step),
        ``evaluations`` (loss-and-gradient evaluations so far: one per step for Adam, up to 25 per
        LBFGS step) and any metrics. pykan's ``train_loss`` is our ``train_rmse``.

    Raises:
        TrainingDiverged: (a FloatingPointError) a loss became NaN/inf; the message names the step and
            the last finite loss, and the model is restored to the last logged finite state.

    KeyboardInterrupt stops training cleanly: the model is restored to the last logged step and the
    history so far is returned with ``history.interrupted == True``.
    """
    grid_every = _check_arguments(model, steps=steps, log_every=log_every, batch_size=batch_size,
                                  early_stopping=early_stopping, lamb=lamb, grad_clip=grad_clip,
                                  update_grid=update_grid, stop_grid_update_step=stop_grid_update_step,
                                  grid_update_num=grid_update_num)

    device = resolve_device(device)
    data = _prepare_dataset(dataset, loss, device)
    dtype = _model_dtype(model)
    if dtype != data["train_input"].dtype:
        raise ValueError(f"the model's parameters are {dtype} but dataset['train_input'] is "
                         f"{data['train_input'].dtype}; convert one, e.g. model.to({data['train_input'].dtype})")
    if device.type == "mps" and dtype == torch.float64:
        raise ValueError("MPS does not support float64; use device='cpu' or float32 data and model")
    model.to(device)
    loss_fn = _loss_function(loss)
    metric_fns = _metric_functions(metrics)
    callbacks = [callbacks] if callable(callbacks) else list(callbacks)
    reg_weights = {"lamb_l1": lamb_l1, "lamb_entropy": lamb_entropy, "lamb_coef": lamb_coef,
                   "lamb_coefdiff": lamb_coefdiff}
    why_not = _fused_unsupported(model, data, opt=opt, batch_size=batch_size, loss=loss, lamb=lamb,
                                 grad_clip=grad_clip, compile=compile, amp=amp)
    if fused and why_not:
        raise ValueError(f"fused=True, but this run cannot use the fused engine: {why_not}")
    engine = None
    if fused is not False and why_not is None:
        from .fused import FusedKAN
        from .lbfgs import LBFGS

        lr = DEFAULT_LR["LBFGS"] if lr is None else lr
        engine = FusedKAN(model, data["train_input"], data["train_label"])
        # the settings of _make_optimizer's torch.optim.LBFGS
        optimizer = LBFGS(lr=lr, history_size=LBFGS_HISTORY, tolerance_grad=1e-32, tolerance_change=1e-32)
        opt_name = "LBFGS"
    else:
        optimizer, opt_name = _make_optimizer(opt, model, lr)
    amp_on = _use_amp(amp, device, dtype, engine is not None or _is_lbfgs(optimizer))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp_on else contextlib.nullcontext
    task = _preflight(model, data, loss, loss_fn)
    forward = _CompiledForward(model) if compile else model
    if engine is not None:
        forward = engine.forward  # test-set evaluation in NumPy too
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    generator = _make_generator(seed, device)
    batches = _batches(len(data["train_input"]), batch_size, generator, device)

    history = History(meta={"opt": opt_name, "device": str(device), "dtype": str(dtype), "amp": amp_on,
                            "compile": bool(compile), "batch_size": batch_size, "seed": seed,
                            "engine": "fused" if engine is not None else "torch"})
    was_training = model.training
    model.train()
    good_state = _state_copy(model)  # restore point: the last logged step with finite losses
    best_state, best_loss, bad_logs = None, math.inf, 0
    bar = tqdm(total=steps, disable=not (progress and _interactive()), desc="fit", dynamic_ncols=True)
    last: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    batch: dict[str, torch.Tensor] = {}
    counts = {"evaluations": 0}  # loss-and-gradient evaluations (LBFGS makes many per step)

    def closure():
        counts["evaluations"] += 1
        x, y = batch["x"], batch["y"]
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            pred = forward(x)
        pred = pred.to(dtype) if pred.is_floating_point() else pred
        data_loss = loss_fn(pred, y)
        total = data_loss
        if lamb > 0:
            reg = model.regularization_loss(x, **reg_weights)
            total = total + lamb * reg
            last["reg"] = reg.detach()
        total.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        last.update(pred=pred.detach(), target=y, loss=data_loss.detach())
        return total

    try:
        for i in range(steps):
            idx = next(batches)
            batch["x"] = data["train_input"] if idx is None else data["train_input"][idx]
            batch["y"] = data["train_label"] if idx is None else data["train_label"][idx]
            if grid_every and i < stop_grid_update_step and i % grid_every == 0:
                _grid_update(model, data["train_input"], generator)
                if hasattr(optimizer, "forget"):  # the curvature pairs describe the loss before the knots moved
                    optimizer.forget()

            step = i + 1
            if engine is not None:
                _fused_step(engine, optimizer, last, data["train_label"])
            else:
                try:
                    optimizer.step(closure)
                except Exception as err:  # LBFGS's line search can fail on NaN losses (IndexError in torch 2.x)
                    if "loss" in last and not torch.isfinite(last["loss"]):
                        raise _divergence(model, good_state, history, step, "train_loss",
                                          last["loss"].item()) from err
                    raise
            bar.update()
            if step % log_every and step != steps:
                continue

            values = _evaluate(forward, model, data, loss_fn, task, last, metric_fns, autocast)
            lr_now = optimizer.lr if engine is not None else optimizer.param_groups[0]["lr"]
            evaluations = engine.evaluations if engine is not None else counts["evaluations"]
            record = {"step": step, **{k: float(v) for k, v in values.items()},
                      "lr": float(lr_now), "seconds": time.perf_counter() - start, "evaluations": evaluations}
            bad = [k for k in ("train_loss", "test_loss", "reg") if k in record and not math.isfinite(record[k])]
            if bad:
                raise _divergence(model, good_state, history, step, bad[0], record[bad[0]])
            good_state = _state_copy(model)
            history.records.append(record)
            bar.set_postfix_str(_progress_text(record), refresh=False)

            if early_stopping is not None:
                if record["test_loss"] < best_loss:
                    best_state, best_loss, bad_logs = good_state, record["test_loss"], 0
                else:
                    bad_logs += 1
                    if bad_logs >= early_stopping:
                        model.load_state_dict(best_state)
                        history.stop_reason = "early_stopping"
                        break
            if any([bool(cb(history, model)) for cb in callbacks]):
                history.stop_reason = "callback"
                break
    except KeyboardInterrupt:
        model.load_state_dict(good_state)
        history.stop_reason = "interrupted"
        done = history.last["step"] if history.last else 0
        warnings.warn(f"fit interrupted; the model holds its state after step {done} and the history so far "
                      "is returned", stacklevel=2)
    finally:
        bar.close()
        model.train(was_training)
    return history
