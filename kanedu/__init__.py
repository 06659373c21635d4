"""kanedu: a small, readable, fast PyTorch package for the Kolmogorov-Arnold Network course.

Lessons import from here: ``from kanedu import KAN, MLP, fit``.
"""

__version__ = "0.1.0"

from . import checkpoint, data, plot, sequence, splines, symbolic
from .layers import KANLayer
from .models import KAN, MLP, count_parameters, flops_per_sample, matched_mlp
from .train import (
    CpuConfig,
    History,
    TrainingDiverged,
    configure_cpu,
    default_device,
    fit,
    resolve_device,
    seed_everything,
)

__all__ = [
    "KANLayer", "KAN", "MLP", "count_parameters", "flops_per_sample", "matched_mlp",
    "fit", "History", "TrainingDiverged", "seed_everything", "configure_cpu", "CpuConfig",
    "default_device", "resolve_device", "checkpoint", "data", "plot", "sequence", "splines", "symbolic",
    "__version__",
]
