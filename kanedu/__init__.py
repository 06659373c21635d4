"""kanedu: a small, readable, fast PyTorch package for the Kolmogorov-Arnold Network course."""

__version__ = "0.1.0"
