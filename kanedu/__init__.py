"""kanedu: a small, readable, fast PyTorch package for the Kolmogorov-Arnold Network course.

Lessons import from here: ``from kanedu import KAN, MLP, fit``. A pykan script runs with its import
changed (``from kan import *`` -> ``import torch`` and ``from kanedu import *``): ``KAN(width=..., grid=...,
k=...)``, ``model.fit``, ``model.prune()``, ``model.refine(G)``, ``model.auto_symbolic(lib=...)``,
``model.symbolic_formula()``, ``create_dataset``, ``ex_round``, ``save`` and ``load``.
"""

from . import checkpoint, data, plot, sequence, splines, symbolic
from ._version import __version__
from .checkpoint import load, save
from .data import create_dataset
from .layers import KANLayer
from .models import KAN, MLP, count_parameters, flops_per_sample, matched_mlp
from .runtime import CpuConfig, configure_cpu, default_device, resolve_device, seed_everything
from .symbolic import ex_round
from .train import History, TrainingDiverged, fit

__all__ = [
    "KANLayer", "KAN", "MLP", "count_parameters", "flops_per_sample", "matched_mlp",
    "fit", "History", "TrainingDiverged", "seed_everything", "configure_cpu", "CpuConfig",
    "default_device", "resolve_device", "create_dataset", "ex_round", "save", "load",
    "checkpoint", "data", "plot", "sequence", "splines", "symbolic", "__version__",
]
