"""The runtime: seeds, CPU tuning and device choice (every lesson's first cell calls two of these).

    >>> kanedu.configure_cpu()      # threads, denormals flushed on every thread, malloc kept warm
    >>> kanedu.seed_everything(0)   # Python, NumPy and torch, deterministic kernels
    >>> kanedu.resolve_device()     # $KANEDU_DEVICE, else CUDA, MPS, CPU

CPU tuning reaches below torch: GNU OpenMP's ``GOMP_parallel`` runs the denormal flag on every worker
thread, and glibc's ``mallopt`` keeps freed memory for reuse (both through ``ctypes``, both measured in the
docstrings below, both no-ops where the library is not there).
"""

from __future__ import annotations

import ctypes
import os
import random
import re
import sys
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["CpuConfig", "configure_cpu", "default_device", "resolve_device", "seed_everything"]


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
