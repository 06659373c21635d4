"""Values <-> JSON, for the pipe between a student's process and the grader.

Only data crosses: numbers, strings, lists, dicts, tensors and arrays (as raw bytes), fractions.
Decoding never runs code (no pickle), checks every size it is given, and builds tensors with
``numpy.frombuffer``, so a hostile process can at worst send wrong numbers.

A tensor becomes ``{"$tensor": [dtype, shape, base64 bytes]}``, a NumPy array ``{"$array": ...}`` the
same way, a ``Fraction`` ``{"$fraction": [numerator, denominator]}``, a tuple ``{"$tuple": [...]}``
and anything else ``{"$object": "type name"}`` (which a check then reports as a wrong type).
"""

from __future__ import annotations

import base64
import math
from fractions import Fraction

import numpy as np
import torch

__all__ = ["encode", "decode", "WireError", "MAX_ELEMENTS"]

MAX_ELEMENTS = 4_000_000  # per tensor: far above any check's outputs, far below the grader's memory
_MAX_DEPTH = 20

_TORCH_TO_NUMPY = {
    torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8",
    torch.uint8: "uint8", torch.bool: "bool", torch.complex64: "complex64", torch.complex128: "complex128",
}
_NUMPY_OK = set(_TORCH_TO_NUMPY.values())


class WireError(ValueError):
    """Malformed data arrived from a student's process."""


def _encode_array(arr: np.ndarray) -> list:
    if arr.dtype.name not in _NUMPY_OK:
        arr = arr.astype(np.float64) if arr.dtype.kind in "fiub" else arr.astype(np.complex128)
    arr = np.ascontiguousarray(arr)
    return [arr.dtype.name, list(arr.shape), base64.b64encode(arr.tobytes()).decode("ascii")]


def encode(value, _depth: int = 0):
    """A JSON-serialisable form of ``value`` (tensors are detached, copied to the CPU, made dense)."""
    if _depth > _MAX_DEPTH:
        return {"$object": "too deeply nested"}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Fraction):
        return {"$fraction": [value.numerator, value.denominator]}
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.numel() > MAX_ELEMENTS:
            return {"$object": f"a tensor with {t.numel()} elements (more than {MAX_ELEMENTS})"}
        t = t.cpu()
        if t.dtype not in _TORCH_TO_NUMPY:
            t = t.to(torch.float64 if not t.is_complex() else torch.complex128)
        return {"$tensor": _encode_array(t.resolve_conj().resolve_neg().contiguous().numpy())}
    if isinstance(value, np.ndarray):
        if value.size > MAX_ELEMENTS:
            return {"$object": f"an array with {value.size} elements (more than {MAX_ELEMENTS})"}
        if value.dtype.kind not in "fiubc":
            return {"$object": f"numpy array of dtype {value.dtype}"}
        return {"$array": _encode_array(value)}
    if isinstance(value, np.generic):
        return encode(value.item(), _depth + 1)
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, _depth + 1) for v in value]}
    if isinstance(value, list):
        return [encode(v, _depth + 1) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode(v, _depth + 1) for k, v in value.items()}
        return {"$dict": [[encode(k, _depth + 1), encode(v, _depth + 1)] for k, v in value.items()]}
    return {"$object": type(value).__name__}


class Unsupported:
    """Stands for a value of a type that cannot cross the pipe (its type name is kept)."""

    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return f"<{self.what}>"


def _decode_array(item) -> np.ndarray:
    if not (isinstance(item, list) and len(item) == 3):
        raise WireError("an array must be [dtype, shape, data]")
    dtype, shape, data = item
    if dtype not in _NUMPY_OK or not isinstance(shape, list) or not isinstance(data, str):
        raise WireError(f"bad array header {dtype!r}, {shape!r}")
    if len(shape) > 32 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise WireError(f"bad array shape {shape!r}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise WireError(f"array with {count} elements is too large")
    raw = base64.b64decode(data.encode("ascii"), validate=True)
    itemsize = np.dtype(dtype).itemsize
    if len(raw) != count * itemsize:
        raise WireError(f"array data has {len(raw)} bytes, shape {shape} of {dtype} needs {count * itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def decode(obj, _depth: int = 0):
    """The value that :func:`encode` produced ``obj`` from (tensors come back as CPU tensors)."""
    if _depth > _MAX_DEPTH + 2:
        raise WireError("data nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [decode(v, _depth + 1) for v in obj]
    if not isinstance(obj, dict):
        raise WireError(f"unexpected {type(obj).__name__}")
    if len(obj) == 1:
        (key, item), = obj.items()
        if key == "$tensor":
            return torch.from_numpy(_decode_array(item))
        if key == "$array":
            return _decode_array(item)
        if key == "$fraction":
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)) \
                    or item[1] == 0:
                raise WireError("a fraction must be [numerator, non-zero denominator]")
            return Fraction(item[0], item[1])
        if key == "$tuple":
            if not isinstance(item, list):
                raise WireError("a tuple must be a list")
            return tuple(decode(v, _depth + 1) for v in item)
        if key == "$dict":
            if not isinstance(item, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in item):
                raise WireError("a dict must be a list of [key, value] pairs")
            out = {}
            for k, v in item:
                k = decode(k, _depth + 1)
                try:
                    out[k] = decode(v, _depth + 1)
                except TypeError:  # an unhashable key
                    raise WireError("unhashable dict key") from None
            return out
        if key == "$object":
            return Unsupported(str(item)[:200])
    if any(k.startswith("$") for k in obj):
        raise WireError(f"unknown tag in {sorted(obj)[:3]}")
    return {k: decode(v, _depth + 1) for k, v in obj.items()}
