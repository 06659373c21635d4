"""Argument checks shared by the package: every error names the argument, what it expects and what it got.

Integers may be any ``numbers.Integral`` (Python ints, NumPy integers such as ``np.int64`` from
``np.arange``), never ``bool``; they come back as plain ``int``.
"""

from __future__ import annotations

import numbers


def is_integer(value) -> bool:
    """True for Python and NumPy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``; TypeError if it is not an integer, ValueError if it is out of range."""
    bounds = ("" if minimum is None else f" >= {minimum}") + ("" if maximum is None else f" <= {maximum}")
    if not is_integer(value):
        raise TypeError(f"{name} must be an int{bounds}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{bounds}, got {value}")
    return value
