"""Datasets for the course: every one is generated or ships with a declared dependency (no downloads).

* :func:`make_dataset` samples any function ``f: [N, n_var] -> [N, n_out]`` into the pykan dataset dict
  ``{"train_input", "train_label", "test_input", "test_label"}``.
* :data:`TOY_FUNCTIONS` / :func:`toy_dataset`: the toy functions of the KAN paper
  (Liu et al. 2024, arXiv 2404.19756).
* :data:`FEYNMAN` / :func:`feynman_dataset`: dimensionless Feynman equations as used in that paper,
  each with a torch function and a sympy expression in symbols ``x1..xn``.
* :func:`load_digits`: the 8x8 digits of scikit-learn, stratified split, standardised with train stats.
* Sequence tasks: :func:`adding_problem`, :func:`copy_memory`, :func:`mackey_glass`,
  :func:`make_windows`, :func:`split_series`.
* :class:`CharCorpus`: a character-level corpus, by default CPython's own ``pydoc_data.topics`` text.

Every random draw uses a local ``torch.Generator`` seeded with ``seed``; the global RNG state is never
touched (except :meth:`CharCorpus.get_batch` with ``generator=None``, which, like ``torch.randint``,
draws from the global generator so that ``kanedu.seed_everything`` makes it repeatable).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy
import torch

__all__ = [
    "make_dataset",
    "ToyFunction",
    "TOY_FUNCTIONS",
    "toy_dataset",
    "FeynmanEquation",
    "FEYNMAN",
    "feynman_dataset",
    "load_digits",
    "adding_problem",
    "COPY_BLANK",
    "copy_memory",
    "mackey_glass",
    "make_windows",
    "split_series",
    "CharCorpus",
]

Range = tuple[float, float]


# ----------------------------------------------------------------------------------------------------
# argument checks (all errors name the argument, the expected and the received value)
# ----------------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _check_fraction(name: str, value) -> float:
    value = _check_real(name, value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return value


def _check_seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


def _generator(seed) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(_check_seed(seed))
    return g


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_pair(name: str, pair) -> Range:
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ValueError(f"{name} must be a (lo, hi) pair of numbers, got {pair!r}")
    lo, hi = pair
    if not (_is_number(lo) and _is_number(hi)):
        raise TypeError(f"{name} must be a (lo, hi) pair of numbers, got {pair!r}")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name} must be a finite (lo, hi) pair with lo < hi, got {pair!r}")
    return lo, hi


def _parse_ranges(ranges, n_var: int) -> tuple[Range, ...]:
    """One (lo, hi) pair for all variables, or a sequence of ``n_var`` pairs."""
    if hasattr(ranges, "tolist"):  # torch tensor or numpy array
        ranges = ranges.tolist()
    if isinstance(ranges, (str, bytes)) or not isinstance(ranges, Sequence):
        raise TypeError(
            f"ranges must be a (lo, hi) pair or a list of {n_var} (lo, hi) pairs, "
            f"got {type(ranges).__name__} {ranges!r}"
        )
    if len(ranges) == 2 and _is_number(ranges[0]) and _is_number(ranges[1]):
        return (_check_pair("ranges", ranges),) * n_var
    if len(ranges) != n_var:
        raise ValueError(
            f"ranges must be one (lo, hi) pair or a list of n_var={n_var} pairs, got {len(ranges)} entries: {ranges!r}"
        )
    return tuple(_check_pair(f"ranges[{i}]", r) for i, r in enumerate(ranges))


def _sample_uniform(n: int, ranges: tuple[Range, ...], g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    lo = torch.tensor([r[0] for r in ranges], dtype=dtype)
    hi = torch.tensor([r[1] for r in ranges], dtype=dtype)
    u = torch.rand(n, len(ranges), generator=g, dtype=dtype)
    return lo + (hi - lo) * u


def _evaluate(f: Callable, x: torch.Tensor, name: str = "f") -> torch.Tensor:
    y = f(x)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor of shape [N] or [N, n_out], got {type(y).__name__}")
    n = x.shape[0]
    if y.dim() == 1:
        y = y.unsqueeze(1)
    if y.dim() != 2 or y.shape[0] != n:
        raise ValueError(
            f"{name} must map a tensor [N, n_var] to [N] or [N, n_out]; for input shape {tuple(x.shape)} "
            f"it returned shape {tuple(y.shape)}"
        )
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------
# generic function datasets
# ----------------------------------------------------------------------------------------------------


def make_dataset(
    f: Callable[[torch.Tensor], torch.Tensor],
    n_var: int,
    n_train: int = 1000,
    n_test: int = 1000,
    ranges=(-1, 1),
    noise: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device=None,
) -> dict[str, torch.Tensor]:
    """Sample ``f`` on uniform random inputs into the pykan dataset dict.

    Args:
        f: maps a tensor ``[N, n_var]`` to ``[N]`` or ``[N, n_out]`` (1-D outputs become ``[N, 1]``).
        n_var: number of input variables.
        n_train, n_test: number of training / test points (independent draws).
        ranges: one ``(lo, hi)`` pair for all variables, or a list of ``n_var`` pairs; inputs are
            uniform in ``[lo, hi)`` per variable.
        noise: standard deviation of Gaussian noise added to the **training labels only**; the test
            labels stay clean, so test error measures how well the true function was learned.
        seed: seed of a local ``torch.Generator`` (the global RNG is not touched). Same seed, same
            tensors. The inputs do not depend on ``noise``.
        dtype: floating dtype, default ``torch.get_default_dtype()``.
        device: where the returned tensors live (``f`` is evaluated on CPU, so values do not depend
            on the device).

    Returns:
        ``{"train_input": [n_train, n_var], "train_label": [n_train, n_out],
        "test_input": [n_test, n_var], "test_label": [n_test, n_out]}``.
    """
    if not callable(f):
        raise TypeError(f"f must be callable (tensor [N, n_var] -> [N] or [N, n_out]), got {type(f).__name__}")
    n_var = _check_int("n_var", n_var)
    n_train = _check_int("n_train", n_train)
    n_test = _check_int("n_test", n_test)
    rngs = _parse_ranges(ranges, n_var)
    noise = _check_real("noise", noise, minimum=0.0)
    dtype = _resolve_dtype(dtype)
    g = _generator(seed)

    train_input = _sample_uniform(n_train, rngs, g, dtype)
    test_input = _sample_uniform(n_test, rngs, g, dtype)
    with torch.no_grad():
        train_label = _evaluate(f, train_input)
        test_label = _evaluate(f, test_input)
    if noise > 0:
        train_label = train_label + noise * torch.randn(train_label.shape, generator=g, dtype=dtype)
    out = {
        "train_input": train_input,
        "train_label": train_label,
        "test_input": test_input,
        "test_label": test_label,
    }
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def create_dataset(f: Callable, n_var: int = 2, f_mode: str = "col", ranges=(-1, 1), train_num: int = 1000,
                   test_num: int = 1000, normalize_input: bool = False, normalize_label: bool = False,
                   device="cpu", seed: int = 0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """pykan's ``create_dataset`` (``kan.utils``), with its argument names and defaults, built on
    :func:`make_dataset` (the same draws: ``create_dataset(f, 2, seed=s)`` equals ``make_dataset(f, 2, seed=s)``).

    ``f`` maps ``x [N, n_var]`` to ``[N, 1]`` (pykan's ``f_mode="col"``, e.g. ``lambda x: x[:, [0]] * x[:, [1]]``)
    or, with ``f_mode="row"``, ``x.T [n_var, N]`` to ``[1, N]``. ``normalize_input`` / ``normalize_label``
    standardise each column by the mean and standard deviation of the *training* split (test too).
    """
    if f_mode not in ("col", "row"):
        raise ValueError(f"f_mode must be 'col' or 'row', got {f_mode!r}")
    fn = f if f_mode == "col" else (lambda x: f(x.T).T)
    data = make_dataset(fn, n_var, n_train=train_num, n_test=test_num, ranges=ranges, seed=seed, dtype=dtype)
    for flag, part in ((normalize_input, "input"), (normalize_label, "label")):
        if flag:
            mean = data[f"train_{part}"].mean(0, keepdim=True)
            std = data[f"train_{part}"].std(0, keepdim=True).clamp_min(torch.finfo(mean.dtype).tiny)
            for split in ("train", "test"):
                data[f"{split}_{part}"] = (data[f"{split}_{part}"] - mean) / std
    return {k: v.to(device) for k, v in data.items()}


def with_validation(dataset: dict[str, torch.Tensor], fraction: float = 0.2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of a pykan dataset dict with ``val_input``/``val_label`` split off its training rows (a random
    ``fraction`` of them, drawn with ``seed``); the test split is untouched. Select models, grids and
    early-stopping points on the validation split, and report the test split once at the end."""
    fraction = _check_fraction("fraction", fraction)
    x, y = dataset["train_input"], dataset["train_label"]
    n_val = int(round(fraction * len(x)))
    if not 1 <= n_val < len(x):
        raise ValueError(f"fraction={fraction} of {len(x)} training rows leaves no validation or no training rows")
    perm = torch.randperm(len(x), generator=_generator(seed)).to(x.device)
    val, train = perm[:n_val], perm[n_val:]
    out = dict(dataset)
    out.update(train_input=x[train], train_label=y[train], val_input=x[val], val_label=y[val])
    return out


# ----------------------------------------------------------------------------------------------------
# toy functions of the KAN paper
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyFunction:
    """A toy target of the KAN paper.

    Attributes:
        name: key in :data:`TOY_FUNCTIONS`.
        n_var: number of inputs.
        f: torch function ``[N, n_var] -> [N]``.
        formula: human-readable formula.
        ranges: ``(lo, hi)`` per variable (default sampling box).
        sympy_expr: the same function as a sympy expression in symbols ``x1..xn`` (or ``None``).
    """

    name: str
    n_var: int
    f: Callable[[torch.Tensor], torch.Tensor]
    formula: str
    ranges: tuple[Range, ...]
    sympy_expr: sympy.Expr | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on ``x`` of shape ``[..., n_var]``; returns ``[...]``."""
        _check_last_dim(x, self.n_var, self.name)
        return self.f(x)


def _check_last_dim(x, n_var: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor of shape [N, {n_var}], got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != n_var:
        raise ValueError(f"{name}: x must have shape [N, {n_var}], got {tuple(x.shape)}")


def _syms(n: int) -> tuple[sympy.Symbol, ...]:
    return tuple(sympy.Symbol(f"x{i + 1}") for i in range(n))


def _bessel_j0_20x(x: torch.Tensor) -> torch.Tensor:
    """J0(20 x[..., 0]) via ``scipy.special.j0`` in float64, returned in ``x``'s dtype and device.

    ``torch.special.bessel_j0`` would keep everything in torch, but its float64 values are off by up to
    ~4e-7, which puts a false floor under the error curves of lesson 02; it has no autograd either, so
    nothing is lost by using scipy's accurate J0.
    """
    from scipy.special import j0

    x0 = x[..., 0].detach().to("cpu", torch.float64).numpy()
    return torch.from_numpy(j0(20.0 * x0)).to(dtype=x.dtype, device=x.device)


def _toy_functions() -> dict[str, ToyFunction]:
    pi = math.pi
    s1, s2, s3, s4 = _syms(4)
    s100 = _syms(100)
    box = lambda n: ((-1.0, 1.0),) * n
    items = [
        ToyFunction(
            "bessel_j0",
            1,
            _bessel_j0_20x,
            "J0(20 x)",
            box(1),
            sympy.besselj(0, 20 * s1),
        ),
        ToyFunction(
            "exp_sin_sq",
            2,
            lambda x: torch.exp(torch.sin(pi * x[..., 0]) + x[..., 1] ** 2),
            "exp(sin(pi x1) + x2^2)",
            box(2),
            sympy.exp(sympy.sin(sympy.pi * s1) + s2**2),
        ),
        ToyFunction("xy", 2, lambda x: x[..., 0] * x[..., 1], "x1 * x2", box(2), s1 * s2),
        ToyFunction(
            "nested4",
            4,
            lambda x: torch.exp(
                0.5
                * (
                    torch.sin(pi * (x[..., 0] ** 2 + x[..., 1] ** 2))
                    + torch.sin(pi * (x[..., 2] ** 2 + x[..., 3] ** 2))
                )
            ),
            "exp((sin(pi (x1^2 + x2^2)) + sin(pi (x3^2 + x4^2))) / 2)",
            box(4),
            sympy.exp((sympy.sin(sympy.pi * (s1**2 + s2**2)) + sympy.sin(sympy.pi * (s3**2 + s4**2))) / 2),
        ),
        ToyFunction(
            "exp_mean_sin100",
            100,
            lambda x: torch.exp(torch.sin(0.5 * pi * x).pow(2).mean(dim=-1)),
            "exp((1/100) sum_{i=1}^{100} sin^2(pi x_i / 2))",
            box(100),
            sympy.exp(sympy.Add(*[sympy.sin(sympy.pi * s / 2) ** 2 for s in s100]) / 100),
        ),
    ]
    return {t.name: t for t in items}


#: name -> :class:`ToyFunction`: the toy functions of the KAN paper (Liu et al. 2024, Sec. 3.1).
TOY_FUNCTIONS: dict[str, ToyFunction] = _toy_functions()


def toy_dataset(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """Dataset for a toy function of :data:`TOY_FUNCTIONS`.

    ``kwargs`` go to :func:`make_dataset` (``n_train``, ``n_test``, ``noise``, ``seed``, ``dtype``,
    ``device``, and ``ranges`` to override the default box ``[-1, 1]^n_var``).
    Returns the pykan dict with inputs ``[N, n_var]`` and labels ``[N, 1]``.
    """
    if name not in TOY_FUNCTIONS:
        raise ValueError(f"unknown toy function name={name!r}; valid names: {sorted(TOY_FUNCTIONS)}")
    tf = TOY_FUNCTIONS[name]
    kwargs.setdefault("ranges", tf.ranges)
    return make_dataset(tf.f, tf.n_var, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Feynman equations
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeynmanEquation:
    """One equation of the Feynman dataset in a dimensionless form.

    Attributes:
        name: equation id, e.g. ``"I.6.2"``.
        variables: names of the (dimensionless) variables, in column order.
        ranges: ``(lo, hi)`` per variable, chosen so the formula is finite and well-conditioned there.
        f: torch function ``[N, n_var] -> [N]``.
        sympy_expr: the same formula in sympy symbols ``x1..xn`` (``x1`` = ``variables[0]``, ...).
        formula: human-readable formula in the variable names.
    """

    name: str
    variables: tuple[str, ...]
    ranges: tuple[Range, ...]
    f: Callable[[torch.Tensor], torch.Tensor]
    sympy_expr: sympy.Expr
    formula: str = ""

    @property
    def n_var(self) -> int:
        return len(self.variables)

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        """The sympy symbols ``x1..xn`` used by :attr:`sympy_expr`."""
        return _syms(self.n_var)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on ``x`` of shape ``[..., n_var]``; returns ``[...]``."""
        _check_last_dim(x, self.n_var, self.name)
        return self.f(x)


def _feynman() -> dict[str, FeynmanEquation]:
    sp = sympy
    PI = math.pi
    x1, x2, x3, x4, x5, x6 = _syms(6)
    c = lambda x, i: x[..., i]
    T = torch
    P = (-math.pi, math.pi)
    eqs = [
        FeynmanEquation(
            "I.6.2",
            ("theta", "sigma"),
            ((-2.0, 2.0), (0.5, 2.0)),
            lambda x: T.exp(-(c(x, 0) ** 2) / (2 * c(x, 1) ** 2)) / T.sqrt(2 * PI * c(x, 1) ** 2),
            sp.exp(-(x1**2) / (2 * x2**2)) / sp.sqrt(2 * sp.pi * x2**2),
            "exp(-theta^2 / (2 sigma^2)) / sqrt(2 pi sigma^2)",
        ),
        FeynmanEquation(
            "I.6.2b",
            ("theta", "theta1", "sigma"),
            ((-2.0, 2.0), (-2.0, 2.0), (0.5, 2.0)),
            lambda x: T.exp(-((c(x, 0) - c(x, 1)) ** 2) / (2 * c(x, 2) ** 2)) / T.sqrt(2 * PI * c(x, 2) ** 2),
            sp.exp(-((x1 - x2) ** 2) / (2 * x3**2)) / sp.sqrt(2 * sp.pi * x3**2),
            "exp(-(theta - theta1)^2 / (2 sigma^2)) / sqrt(2 pi sigma^2)",
        ),
        FeynmanEquation(
            "I.9.18",
            ("a", "b", "c", "d", "e", "f"),
            ((0.5, 2.0), (2.0, 3.0), (-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0)),
            lambda x: c(x, 0) / ((c(x, 1) - 1) ** 2 + (c(x, 2) - c(x, 3)) ** 2 + (c(x, 4) - c(x, 5)) ** 2),
            x1 / ((x2 - 1) ** 2 + (x3 - x4) ** 2 + (x5 - x6) ** 2),
            "a / ((b - 1)^2 + (c - d)^2 + (e - f)^2)",
        ),
        FeynmanEquation(
            "I.12.11",
            ("a", "theta"),
            ((-1.0, 1.0), P),
            lambda x: 1 + c(x, 0) * T.sin(c(x, 1)),
            1 + x1 * sp.sin(x2),
            "1 + a sin(theta)",
        ),
        FeynmanEquation(
            "I.13.12",
            ("a", "b"),
            ((-1.0, 1.0), (0.5, 2.0)),
            lambda x: c(x, 0) * (1 / c(x, 1) - 1),
            x1 * (1 / x2 - 1),
            "a (1/b - 1)",
        ),
        FeynmanEquation(
            "I.15.3x",
            ("a", "b"),
            ((-1.0, 1.0), (-0.9, 0.9)),
            lambda x: (1 - c(x, 0)) / T.sqrt(1 - c(x, 1) ** 2),
            (1 - x1) / sp.sqrt(1 - x2**2),
            "(1 - a) / sqrt(1 - b^2)",
        ),
        FeynmanEquation(
            "I.16.6",
            ("a", "b"),
            ((-0.9, 0.9), (-0.9, 0.9)),
            lambda x: (c(x, 0) + c(x, 1)) / (1 + c(x, 0) * c(x, 1)),
            (x1 + x2) / (1 + x1 * x2),
            "(a + b) / (1 + a b)   (relativistic velocity addition, c = 1)",
        ),
        FeynmanEquation(
            "I.18.4",
            ("a", "b"),
            ((0.1, 2.0), (-1.0, 1.0)),
            lambda x: (1 + c(x, 0) * c(x, 1)) / (1 + c(x, 0)),
            (1 + x1 * x2) / (1 + x1),
            "(1 + a b) / (1 + a)",
        ),
        FeynmanEquation(
            "I.26.2",
            ("n", "theta2"),
            ((0.1, 0.9), (-math.pi / 2, math.pi / 2)),
            lambda x: T.arcsin(c(x, 0) * T.sin(c(x, 1))),
            sp.asin(x1 * sp.sin(x2)),
            "arcsin(n sin(theta2))",
        ),
        FeynmanEquation(
            "I.27.6",
            ("a", "b"),
            ((0.1, 2.0), (0.1, 2.0)),
            lambda x: 1 / (1 + c(x, 0) * c(x, 1)),
            1 / (1 + x1 * x2),
            "1 / (1 + a b)",
        ),
        FeynmanEquation(
            "I.29.16",
            ("a", "theta1", "theta2"),
            ((0.1, 0.5), P, P),
            lambda x: T.sqrt(1 + c(x, 0) ** 2 - 2 * c(x, 0) * T.cos(c(x, 1) - c(x, 2))),
            sp.sqrt(1 + x1**2 - 2 * x1 * sp.cos(x2 - x3)),
            "sqrt(1 + a^2 - 2 a cos(theta1 - theta2))",
        ),
        FeynmanEquation(
            "I.30.3",
            ("n", "theta"),
            ((1.0, 4.0), (0.5, 3.0)),
            lambda x: T.sin(c(x, 0) * c(x, 1) / 2) ** 2 / T.sin(c(x, 1) / 2) ** 2,
            sp.sin(x1 * x2 / 2) ** 2 / sp.sin(x2 / 2) ** 2,
            "sin^2(n theta / 2) / sin^2(theta / 2)",
        ),
        FeynmanEquation(
            "I.30.5",
            ("a", "n"),
            ((0.1, 1.0), (1.5, 4.0)),
            lambda x: T.arcsin(c(x, 0) / c(x, 1)),
            sp.asin(x1 / x2),
            "arcsin(a / n)",
        ),
        FeynmanEquation(
            "I.37.4",
            ("a", "delta"),
            ((0.1, 2.0), P),
            lambda x: 1 + c(x, 0) + 2 * T.sqrt(c(x, 0)) * T.cos(c(x, 1)),
            1 + x1 + 2 * sp.sqrt(x1) * sp.cos(x2),
            "1 + a + 2 sqrt(a) cos(delta)",
        ),
        FeynmanEquation(
            "I.40.1",
            ("n0", "a"),
            ((0.1, 2.0), (0.0, 2.0)),
            lambda x: c(x, 0) * T.exp(-c(x, 1)),
            x1 * sp.exp(-x2),
            "n0 exp(-a)",
        ),
        FeynmanEquation(
            "I.44.4",
            ("n", "a"),
            ((0.1, 2.0), (0.5, 3.0)),
            lambda x: c(x, 0) * T.log(c(x, 1)),
            x1 * sp.log(x2),
            "n log(a)",
        ),
        FeynmanEquation(
            "I.50.26",
            ("a", "alpha"),
            (P, (-1.0, 1.0)),
            lambda x: T.cos(c(x, 0)) + c(x, 1) * T.cos(c(x, 0)) ** 2,
            sp.cos(x1) + x2 * sp.cos(x1) ** 2,
            "cos(a) + alpha cos^2(a)",
        ),
        FeynmanEquation(
            "II.2.42",
            ("a", "b"),
            ((-1.0, 1.0), (0.5, 2.0)),
            lambda x: (c(x, 0) - 1) * c(x, 1),
            (x1 - 1) * x2,
            "(a - 1) b",
        ),
        FeynmanEquation(
            "II.6.15a",
            ("a", "b", "c"),
            ((0.2, 1.0), (0.2, 1.0), (-1.0, 1.0)),
            lambda x: 3 / (4 * PI) * c(x, 2) * T.sqrt(c(x, 0) ** 2 + c(x, 1) ** 2),
            3 / (4 * sp.pi) * x3 * sp.sqrt(x1**2 + x2**2),
            "3/(4 pi) c sqrt(a^2 + b^2)",
        ),
        FeynmanEquation(
            "II.11.17",
            ("n0", "a", "theta"),
            ((0.5, 2.0), (-1.0, 1.0), P),
            lambda x: c(x, 0) * (1 + c(x, 1) * T.cos(c(x, 2))),
            x1 * (1 + x2 * sp.cos(x3)),
            "n0 (1 + a cos(theta))",
        ),
        FeynmanEquation(
            "II.11.27",
            ("n", "alpha"),
            ((0.1, 1.5), (0.1, 1.5)),
            lambda x: c(x, 0) * c(x, 1) / (1 - c(x, 0) * c(x, 1) / 3),
            x1 * x2 / (1 - x1 * x2 / 3),
            "n alpha / (1 - n alpha / 3)",
        ),
        FeynmanEquation(
            "II.35.18",
            ("n0", "a"),
            ((0.5, 2.0), (-2.0, 2.0)),
            lambda x: c(x, 0) / (T.exp(c(x, 1)) + T.exp(-c(x, 1))),
            x1 / (sp.exp(x2) + sp.exp(-x2)),
            "n0 / (exp(a) + exp(-a))",
        ),
        FeynmanEquation(
            "II.36.38",
            ("a", "alpha", "b"),
            ((-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0)),
            lambda x: c(x, 0) + c(x, 1) * c(x, 2),
            x1 + x2 * x3,
            "a + alpha b",
        ),
        FeynmanEquation(
            "II.38.3",
            ("a", "b"),
            ((-1.0, 1.0), (0.5, 2.0)),
            lambda x: c(x, 0) / c(x, 1),
            x1 / x2,
            "a / b",
        ),
        FeynmanEquation(
            "III.9.52",
            ("a", "b", "c"),
            ((-1.0, 1.0), (1.0, 2.0), (3.0, 4.0)),
            lambda x: c(x, 0) * T.sin((c(x, 1) - c(x, 2)) / 2) ** 2 / ((c(x, 1) - c(x, 2)) / 2) ** 2,
            x1 * sp.sin((x2 - x3) / 2) ** 2 / ((x2 - x3) / 2) ** 2,
            "a sin^2((b - c)/2) / ((b - c)/2)^2",
        ),
        FeynmanEquation(
            "III.10.19",
            ("a", "b"),
            ((-1.0, 1.0), (-1.0, 1.0)),
            lambda x: T.sqrt(1 + c(x, 0) ** 2 + c(x, 1) ** 2),
            sp.sqrt(1 + x1**2 + x2**2),
            "sqrt(1 + a^2 + b^2)",
        ),
        FeynmanEquation(
            "III.17.37",
            ("beta", "alpha", "theta"),
            ((0.5, 2.0), (-1.0, 1.0), P),
            lambda x: c(x, 0) * (1 + c(x, 1) * T.cos(c(x, 2))),
            x1 * (1 + x2 * sp.cos(x3)),
            "beta (1 + alpha cos(theta))",
        ),
    ]
    return {e.name: e for e in eqs}


#: name -> :class:`FeynmanEquation`: the 27 Feynman equations of the KAN paper's Table 2 (ids of the AI
#: Feynman database; the paper prints II.11.17 as "II.11.7") in dimensionless forms: the output divided
#: by a characteristic scale, inputs as dimensionless ratios (II.6.15a keeps the factor 3/(4 pi)).
FEYNMAN: dict[str, FeynmanEquation] = _feynman()


def feynman_dataset(
    name: str,
    n_train: int = 1000,
    n_test: int = 1000,
    noise: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device=None,
) -> dict[str, torch.Tensor]:
    """Dataset for ``FEYNMAN[name]`` sampled uniformly in its ``ranges``.

    Returns the pykan dict: inputs ``[N, n_var]``, labels ``[N, 1]``; ``noise`` (std) is added to the
    train labels only, as in :func:`make_dataset`.
    """
    if name not in FEYNMAN:
        raise ValueError(f"unknown Feynman equation name={name!r}; valid names: {list(FEYNMAN)}")
    eq = FEYNMAN[name]
    return make_dataset(
        eq.f,
        eq.n_var,
        n_train=n_train,
        n_test=n_test,
        ranges=eq.ranges,
        noise=noise,
        seed=seed,
        dtype=dtype,
        device=device,
    )


# ----------------------------------------------------------------------------------------------------
# 8x8 digits
# ----------------------------------------------------------------------------------------------------


def load_digits(
    seed: int = 0,
    test_fraction: float = 0.25,
    standardize: bool = True,
    dtype: torch.dtype | None = None,
    device=None,
) -> dict:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn, no download).

    The split is stratified by class and deterministic for a ``seed``. With ``standardize=True`` every
    pixel is shifted and scaled by the **train** mean and (population) std; pixels constant on the
    train set get std 1. With ``standardize=False`` the raw pixel values 0..16 are returned.

    Returns:
        ``{"train_input": [N_train, 64] float, "train_label": [N_train] long,
        "test_input": [N_test, 64] float, "test_label": [N_test] long, "n_classes": 10}``.
    """
    import numpy as np
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if not isinstance(standardize, bool):
        raise TypeError(f"standardize must be a bool, got {type(standardize).__name__} {standardize!r}")
    dtype = _resolve_dtype(dtype)

    X, y = _sk_load_digits(return_X_y=True)
    n_classes = int(y.max()) + 1
    n_test = math.ceil(test_fraction * len(y))
    if n_test < n_classes or len(y) - n_test < n_classes:
        raise ValueError(
            f"test_fraction={test_fraction} leaves {n_test} test / {len(y) - n_test} train samples; "
            f"a stratified split needs at least {n_classes} in each"
        )
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_fraction, stratify=y, random_state=seed % 2**32
    )
    if standardize:
        mean = X_train.mean(axis=0)
        std = X_train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        X_train = (X_train - mean) / std
        X_test = (X_test - mean) / std
    return {
        "train_input": torch.as_tensor(X_train, dtype=dtype, device=device),
        "train_label": torch.as_tensor(y_train, dtype=torch.long, device=device),
        "test_input": torch.as_tensor(X_test, dtype=dtype, device=device),
        "test_label": torch.as_tensor(y_test, dtype=torch.long, device=device),
        "n_classes": n_classes,
    }


# ----------------------------------------------------------------------------------------------------
# sequence tasks
# ----------------------------------------------------------------------------------------------------


def adding_problem(
    n: int, seq_len: int = 50, seed: int = 0, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997).

    Returns:
        ``x`` ``[n, seq_len, 2]``: channel 0 uniform in [0, 1), channel 1 a marker that is 1 at exactly
        two positions, one in the first half ``[0, seq_len // 2)`` and one in the second half, 0 elsewhere;
        ``y`` ``[n, 1]``: the sum of the two marked values of channel 0.
    """
    n = _check_int("n", n)
    seq_len = _check_int("seq_len", seq_len, minimum=2)
    dtype = _resolve_dtype(dtype)
    g = _generator(seed)
    half = seq_len // 2
    values = torch.rand(n, seq_len, generator=g, dtype=dtype)
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, seq_len, (n,), generator=g)
    marker = torch.zeros(n, seq_len, dtype=dtype)
    rows = torch.arange(n)
    marker[rows, first] = 1
    marker[rows, second] = 1
    x = torch.stack([values, marker], dim=-1)
    y = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return x, y


#: token of the blank in :func:`copy_memory`; data symbols are 1..n_symbols, the delimiter n_symbols + 1.
COPY_BLANK = 0


def copy_memory(
    n: int, n_symbols: int = 8, copy_len: int = 10, delay: int = 20, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The copy-memory task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    Tokens: ``0`` = blank (:data:`COPY_BLANK`), ``1..n_symbols`` = data symbols,
    ``n_symbols + 1`` = delimiter ("start recalling"), so the vocabulary has ``n_symbols + 2`` tokens.
    With ``L = copy_len`` and ``T = 2 L + delay``:

    * ``x`` ``[n, T]`` long: ``L`` random data symbols, ``delay - 1`` blanks, the delimiter, ``L`` blanks;
    * ``y`` ``[n, T]`` long: ``L + delay`` blanks, then the ``L`` data symbols, i.e. the model must
      output the remembered sequence right after the delimiter.
    """
    n = _check_int("n", n)
    n_symbols = _check_int("n_symbols", n_symbols)
    copy_len = _check_int("copy_len", copy_len)
    delay = _check_int("delay", delay)
    g = _generator(seed)
    L = copy_len
    T = 2 * L + delay
    symbols = torch.randint(1, n_symbols + 1, (n, L), generator=g)
    x = torch.full((n, T), COPY_BLANK, dtype=torch.long)
    y = torch.full((n, T), COPY_BLANK, dtype=torch.long)
    x[:, :L] = symbols
    x[:, L + delay - 1] = n_symbols + 1
    y[:, L + delay :] = symbols
    return x, y


def mackey_glass(
    n_steps: int,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    n: float = 10.0,
    dt: float = 1.0,
    substeps: int = 10,
    x0: float = 1.2,
    discard: int = 500,
    seed: int = 0,
    history_noise: float = 0.0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A Mackey-Glass time series, ``dx/dt = beta x(t - tau) / (1 + x(t - tau)^n) - gamma x(t)``.

    Integrated with classical RK4 at step ``h = dt / substeps`` and a history buffer; delayed values
    between grid points (RK4's half steps, non-integer ``tau / h``) are linearly interpolated. The
    history on ``[-tau, 0]`` is the constant ``x0`` (the classic benchmark, chaotic for ``tau = 17``),
    plus i.i.d. uniform noise of amplitude ``history_noise`` drawn from a generator seeded with ``seed``
    (so ``seed`` changes the series only when ``history_noise > 0``).

    Returns:
        1-D tensor ``[n_steps]``: ``x`` sampled every ``dt`` after dropping the first ``discard`` samples
        (the transient).
    """
    n_steps = _check_int("n_steps", n_steps)
    tau = _check_real("tau", tau, minimum=0.0)
    beta = _check_real("beta", beta)
    gamma = _check_real("gamma", gamma)
    n = _check_real("n", n)
    dt = _check_real("dt", dt)
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    substeps = _check_int("substeps", substeps)
    x0 = _check_real("x0", x0)
    discard = _check_int("discard", discard, minimum=0)
    history_noise = _check_real("history_noise", history_noise, minimum=0.0)
    dtype = _resolve_dtype(dtype)
    h = dt / substeps
    if tau < h:
        raise ValueError(f"tau must be >= the integration step dt / substeps = {h}, got tau={tau!r}")

    # buffer: xs[k] is x at time (k - m) * h, k = 0..m is the history on [-m h, 0] with m h >= tau
    m = math.ceil(tau / h - 1e-9)
    xs = [x0] * (m + 1)
    if history_noise > 0:
        g = _generator(seed)
        xs = (x0 + history_noise * (2 * torch.rand(m + 1, generator=g, dtype=torch.float64) - 1)).tolist()

    lag = tau / h  # delay in steps (float)

    def delayed(pos: float) -> float:  # x at buffer position pos (fractional index), linear interpolation
        i = math.floor(pos)
        frac = pos - i
        if frac < 1e-12:
            return xs[i]
        return xs[i] + frac * (xs[i + 1] - xs[i])

    def rhs(x: float, xd: float) -> float:
        return beta * xd / (1.0 + xd**n) - gamma * x

    total = (discard + n_steps) * substeps
    out: list[float] = []
    if discard == 0:
        out.append(xs[-1])
    x = xs[-1]
    for step in range(total):
        k = len(xs) - 1  # index of the current time
        p = k - lag
        xd0, xdh, xd1 = delayed(p), delayed(p + 0.5), delayed(p + 1.0)
        k1 = rhs(x, xd0)
        k2 = rhs(x + 0.5 * h * k1, xdh)
        k3 = rhs(x + 0.5 * h * k2, xdh)
        k4 = rhs(x + h * k3, xd1)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        xs.append(x)
        s = step + 1
        if s % substeps == 0 and s // substeps >= discard:
            out.append(x)
    return torch.tensor(out[:n_steps], dtype=dtype)


def make_windows(series: torch.Tensor, window: int, horizon: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sliding windows over a 1-D series for forecasting.

    Args:
        series: 1-D tensor ``[T]``.
        window: input length; horizon: number of future values to predict.

    Returns:
        ``X`` ``[N, window]`` and ``Y`` ``[N, horizon]`` with ``N = T - window - horizon + 1``,
        ``X[i] = series[i : i + window]`` and ``Y[i] = series[i + window : i + window + horizon]``.
    """
    if not isinstance(series, torch.Tensor):
        raise TypeError(f"series must be a 1-D torch.Tensor, got {type(series).__name__}")
    if series.dim() != 1:
        raise ValueError(f"series must be 1-D [T], got shape {tuple(series.shape)}")
    window = _check_int("window", window)
    horizon = _check_int("horizon", horizon)
    if len(series) < window + horizon:
        raise ValueError(
            f"series of length {len(series)} is too short for window={window} + horizon={horizon}; "
            f"need length >= {window + horizon}"
        )
    frames = series.unfold(0, window + horizon, 1)
    return frames[:, :window].clone(), frames[:, window:].clone()


def split_series(
    series: torch.Tensor, window: int, horizon: int = 1, test_fraction: float = 0.2
) -> dict[str, torch.Tensor]:
    """Chronological train/test split of a 1-D series into forecasting windows, as the pykan dict.

    The series is cut at ``t0 = round(T * (1 - test_fraction))``. Training windows lie entirely in
    ``series[:t0]``; every test target lies in ``series[t0:]`` (test inputs may look back into the
    training part, which is known at forecast time), so no test target is ever seen in training.

    Returns:
        ``{"train_input": [N_train, window], "train_label": [N_train, horizon],
        "test_input": [N_test, window], "test_label": [N_test, horizon]}``.
    """
    if not isinstance(series, torch.Tensor):
        raise TypeError(f"series must be a 1-D torch.Tensor, got {type(series).__name__}")
    if series.dim() != 1:
        raise ValueError(f"series must be 1-D [T], got shape {tuple(series.shape)}")
    window = _check_int("window", window)
    horizon = _check_int("horizon", horizon)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    T = len(series)
    t0 = round(T * (1 - test_fraction))
    if t0 < window + horizon or T - t0 < horizon:
        raise ValueError(
            f"series of length {T} with test_fraction={test_fraction} (split at {t0}) is too short for "
            f"window={window}, horizon={horizon}: need >= {window + horizon} train and >= {horizon} "
            "test values"
        )
    X_train, Y_train = make_windows(series[:t0], window, horizon)
    X_test, Y_test = make_windows(series[t0 - window :], window, horizon)
    return {"train_input": X_train, "train_label": Y_train, "test_input": X_test, "test_label": Y_test}


# ----------------------------------------------------------------------------------------------------
# character-level corpus
# ----------------------------------------------------------------------------------------------------


def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


class CharCorpus:
    """A character-level corpus with a 90/10 chronological train/validation split.

    By default the text is CPython's ``pydoc_data.topics.topics`` (about 465k characters of English
    documentation, shipped with Python), its values joined with ``"\\n"`` in sorted-key order.

    Args:
        text: a custom text (default: the pydoc topics).
        max_chars: keep only the first ``max_chars`` characters (default: all).
        val_fraction: fraction of the text (its end) used for validation.

    Attributes:
        text: the text; vocab: sorted list of its distinct characters; stoi: char -> id;
        itos: id -> char; train_data / val_data: LongTensors ``[n_train_chars]`` / ``[n_val_chars]``.
    """

    def __init__(self, text: str | None = None, max_chars: int | None = None, val_fraction: float = 0.1):
        if text is None:
            text = _pydoc_text()
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if max_chars is not None:
            max_chars = _check_int("max_chars", max_chars, minimum=2)
            text = text[:max_chars]
        val_fraction = _check_fraction("val_fraction", val_fraction)
        if len(text) < 2:
            raise ValueError(f"text must have at least 2 characters, got {len(text)}")
        self.text = text
        self.vocab: list[str] = sorted(set(text))
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(self.vocab)}
        self.itos: dict[int, str] = dict(enumerate(self.vocab))
        data = self.encode(text)
        n_train = min(max(int(round(len(data) * (1 - val_fraction))), 1), len(data) - 1)
        self.train_data: torch.Tensor = data[:n_train]
        self.val_data: torch.Tensor = data[n_train:]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        return (
            f"CharCorpus(chars={len(self.text)}, vocab_size={self.vocab_size}, "
            f"train={len(self.train_data)}, val={len(self.val_data)})"
        )

    def encode(self, s: str) -> torch.Tensor:
        """Encode a string as a LongTensor ``[len(s)]``; an unknown character raises ValueError."""
        if not isinstance(s, str):
            raise TypeError(f"encode expects a str, got {type(s).__name__}")
        try:
            return torch.tensor([self.stoi[ch] for ch in s], dtype=torch.long)
        except KeyError as err:
            ch = err.args[0]
            raise ValueError(
                f"encode: character {ch!r} (position {s.index(ch)}) is not in the corpus vocabulary "
                f"of {self.vocab_size} characters"
            ) from None

    def decode(self, ids) -> str:
        """Decode a 1-D tensor or list of ids back to a string."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(f"decode expects a 1-D tensor of ids, got shape {tuple(ids.shape)}")
            if ids.is_floating_point() or ids.is_complex():
                raise TypeError(f"decode expects integer ids, got a tensor of dtype {ids.dtype}")
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"decode expects integer ids, got {type(i).__name__} {i!r}")
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"decode: id {i} is out of range [0, {self.vocab_size})")
            out.append(self.itos[int(i)])
        return "".join(out)

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator | None = None,
        device=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random contiguous blocks for next-character prediction.

        Args:
            split: ``"train"`` or ``"val"``.
            batch_size, block_size: ``B`` and ``T``.
            generator: a CPU ``torch.Generator`` for the start positions (``None``: the global RNG).
            device: where to put the batch.

        Returns:
            ``x`` ``[B, T]`` long and ``y`` ``[B, T]`` long with ``y[:, t] = x[:, t + 1]`` (the next
            character), i.e. ``y`` is ``x`` shifted by one.
        """
        if split == "train":
            data = self.train_data
        elif split == "val":
            data = self.val_data
        else:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        batch_size = _check_int("batch_size", batch_size)
        block_size = _check_int("block_size", block_size)
        if len(data) <= block_size:
            raise ValueError(
                f"block_size={block_size} is too large for the {split} split of {len(data)} characters; "
                f"need block_size < {len(data)}"
            )
        starts = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
        idx = starts.unsqueeze(1) + torch.arange(block_size)
        x, y = data[idx], data[idx + 1]
        if device is not None:
            x, y = x.to(device), y.to(device)
        return x, y
