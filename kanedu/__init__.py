"""kanedu: a small, readable, fast PyTorch package for the Kolmogorov-Arnold Network course.

Lessons import from here: ``from kanedu import KAN, MLP, fit``.
"""

__version__ = "0.1.0"

from .layers import KANLayer
from .models import KAN, MLP, count_parameters, flops_per_sample, matched_mlp

__all__ = ["KANLayer", "KAN", "MLP", "count_parameters", "flops_per_sample", "matched_mlp", "__version__"]
