"""The base activations of a KAN edge, ``b`` in ``phi(x) = w_b b(x) + w_s spline(x)``, with their derivatives.

The kernels compute ``b(x)`` in forward and ``b'(x)`` in backward themselves (they save only ``x``), so
each activation comes with a closed-form derivative. ``"zero"`` means no residual branch at all.

    >>> b, db = base_with_derivative("silu", x)   # b(x), and a function that returns b'(x)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BASE_ACTIVATIONS", "activation_name", "base_with_derivative", "base"]

#: name -> the activation as a torch function (``None`` for "zero": no residual branch)
BASE_ACTIVATIONS: dict[str, Callable | None] = {
    "silu": nn.functional.silu,
    "identity": lambda x: x,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "zero": None,
}
_MODULE_NAMES = {nn.SiLU: "silu", nn.Identity: "identity", nn.Tanh: "tanh", nn.ReLU: "relu", nn.GELU: "gelu"}


def activation_name(base_activation) -> str:
    """The name of ``base_activation``: a name of :data:`BASE_ACTIVATIONS`, a ``torch.nn`` activation class
    or instance of one of them, or None (``"zero"``)."""
    if base_activation is None:
        return "zero"
    if isinstance(base_activation, str):
        name = base_activation.lower()
        if name not in BASE_ACTIVATIONS:
            raise ValueError(f"base_activation must be one of {sorted(BASE_ACTIVATIONS)}, got {base_activation!r}")
        return name
    if isinstance(base_activation, type) and base_activation in _MODULE_NAMES:
        return _MODULE_NAMES[base_activation]
    if isinstance(base_activation, nn.Module) and type(base_activation) in _MODULE_NAMES:
        return _MODULE_NAMES[type(base_activation)]
    raise ValueError(
        f"base_activation must be a name in {sorted(BASE_ACTIVATIONS)} or one of "
        f"{[c.__name__ for c in _MODULE_NAMES]}, got {base_activation!r}"
    )


def _silu(x):
    sig = torch.sigmoid(x)
    return x * sig, lambda: sig * (1 + x * (1 - sig))


def _identity(x):
    return x, lambda: torch.ones_like(x)


def _tanh(x):
    y = torch.tanh(x)
    return y, lambda: 1 - y * y


def _relu(x):
    return torch.relu(x), lambda: (x > 0).to(x.dtype)


def _gelu(x):  # the exact (erf) GELU: x Phi(x), derivative Phi(x) + x phi(x)
    cdf = 0.5 * (1 + torch.erf(x * 0.7071067811865476))
    return x * cdf, lambda: cdf + x * torch.exp(-0.5 * x * x) * 0.3989422804014327


_WITH_DERIVATIVE = {"silu": _silu, "identity": _identity, "tanh": _tanh, "relu": _relu, "gelu": _gelu}


def base_with_derivative(name: str, x: torch.Tensor):
    """``(b(x), lazy b'(x))`` for the activation ``name`` (``(None, None)`` for "zero"); ``b'`` is a function
    so that a backward pass that needs no input gradient never computes it."""
    if name == "zero":
        return None, None
    return _WITH_DERIVATIVE[name](x)


def base(name: str, x: torch.Tensor) -> torch.Tensor:
    """``b(x)`` (zeros for "zero"), differentiable through autograd."""
    fn = BASE_ACTIVATIONS[name]
    return torch.zeros_like(x) if fn is None else fn(x)
