"""Symbolic regression on a KAN, edge by edge (lesson 05).

A trained KAN edge is a curve ``phi_ij(x)``. This module snaps such curves to formulas:

* :data:`SYMBOLIC_LIBRARY`: candidate functions ``f`` (``x``, ``x^2``, ``sin``, ``exp``, ...), each with a
  torch form that is finite on every finite input, a sympy form and a complexity score;
* :func:`fit_affine`: the best ``y ~ c * f(a * x + b) + d`` for one ``f`` (grid search over ``(a, b)`` with
  ``(c, d)`` in closed form, then Levenberg-Marquardt);
* :func:`suggest_symbolic`: every library function fitted to one edge, ranked by fit and simplicity;
* :func:`fix_symbolic` / :func:`auto_symbolic`: replace edges by ``c * f(a * x + b) + d`` with trainable
  ``(a, b, c, d)``, held by a :class:`SymbolicEdges` module inside the layer (the numeric edge is masked);
* :func:`symbolic_formula`: the model as sympy expressions, one per output.

The recipe of the KAN paper (Liu et al. 2024, arXiv 2404.19756): train with sparsity regularization,
prune, ``auto_symbolic``, retrain the few affine parameters, read off the formula::

    fit(model, dataset, steps=20, lamb=1e-2)
    model = model.prune(x)
    fit(model, dataset, steps=30)
    report = auto_symbolic(model, x)      # print(report): the chosen functions, ambiguities
    fit(model, dataset, steps=20)
    symbolic_formula(model)               # [exp(x2**2 + sin(pi*x1))]

When the trained edges are only roughly right (a KAN at RMSE 1e-2 bends its outer edges to make up for
inner ones), snap one layer at a time, ``auto_symbolic(model, x, layers=[l])``, and let the layers above
retrain (``fit``) before they are snapped. :func:`polish_symbolic` (Levenberg-Marquardt) then finishes
the retraining where LBFGS crawls.

Saving: symbolic edges live in the state dict (parameters plus the function names as a small uint8
tensor), and a :class:`~kanedu.KANLayer` recreates them when it loads such a state dict, so
``model.load_state_dict`` on a fresh ``KAN(**config)`` and ``kanedu.checkpoint.save/load`` both restore
them. Functions are looked up by name in :data:`SYMBOLIC_LIBRARY`; register custom ones there first.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy
import torch
from torch import nn

__all__ = [
    "SymbolicFunction", "SYMBOLIC_LIBRARY", "Candidate", "Suggestions", "SymbolicReport", "SymbolicEdges",
    "fit_affine", "suggest_symbolic", "fix_symbolic", "unfix_symbolic", "auto_symbolic", "symbolic_formula",
    "symbolic_edges", "polish_symbolic", "DEFAULT_LIB", "SYMBOLIC_ALIASES", "ex_round",
]

# --------------------------------------------------------------------------------------------------
# the library: safe torch forms
# --------------------------------------------------------------------------------------------------

#: Guards of the safe numeric forms (each function's docstring says where it differs from the math).
EPS_DIV = 1e-4  # 1/x, tan: the divisor's magnitude is at least this (|1/x| <= 1e4)
EPS_LOG = 1e-8  # log: the argument is at least this (log >= -18.4)
EPS_SQRT = 1e-12  # sqrt: the argument is at least this (finite slope 5e5 at the guard)
EXP_MAX = 40.0  # exp: the argument is at most this (exp <= 2.4e17; squares stay finite in float32)
POW_MAX = 1e6  # x^2, x^3, x^4: |x| is at most this ((1e6)^4 = 1e24 is finite in float32)


def _away_from_zero(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``sign(x) * max(|x|, eps)`` with ``sign(0) = +1``: ``x`` itself unless ``|x| < eps``."""
    return torch.where(x >= 0, x.clamp_min(eps), x.clamp_max(-eps))


def f_zero(x):
    """0 (as ``0 * x``, so it stays in the autograd graph)."""
    return 0.0 * x


def f_x(x):
    """x."""
    return x


def f_x2(x):
    """x^2 of ``clamp(x, -POW_MAX, POW_MAX)``."""
    x = x.clamp(-POW_MAX, POW_MAX)
    return x * x


def f_x3(x):
    """x^3 of ``clamp(x, -POW_MAX, POW_MAX)``."""
    x = x.clamp(-POW_MAX, POW_MAX)
    return x * x * x


def f_x4(x):
    """x^4 of ``clamp(x, -POW_MAX, POW_MAX)``."""
    x = x.clamp(-POW_MAX, POW_MAX)
    return (x * x) * (x * x)


def f_inv(x):
    """1/x as ``1 / (sign(x) max(|x|, EPS_DIV))``: exact for ``|x| >= EPS_DIV``."""
    return 1.0 / _away_from_zero(x, EPS_DIV)


def f_sqrt(x):
    """sqrt(x) as ``sqrt(max(x, EPS_SQRT))``: exact for ``x >= EPS_SQRT``, 1e-6 below (negative x included)."""
    return torch.sqrt(x.clamp_min(EPS_SQRT))


def f_exp(x):
    """exp(x) as ``exp(min(x, EXP_MAX))``."""
    return torch.exp(x.clamp_max(EXP_MAX))


def f_log(x):
    """log(x) as ``log(max(x, EPS_LOG))``: exact for ``x >= EPS_LOG``."""
    return torch.log(x.clamp_min(EPS_LOG))


def f_tan(x):
    """tan(x) as ``sin(x) / (sign(cos x) max(|cos x|, EPS_DIV))``: exact unless ``|cos x| < EPS_DIV``."""
    return torch.sin(x) / _away_from_zero(torch.cos(x), EPS_DIV)


def f_gaussian(x):
    """exp(-x^2) (0 for huge |x|, never NaN)."""
    return torch.exp(-(x.clamp(-POW_MAX, POW_MAX) ** 2))


def f_sign(x):
    """sign(x) (0 at 0); its slope is 0, so training moves only c and d of a sign edge."""
    return torch.sign(x)


def f_x5(x):
    """x^5 of ``clamp(x, -POW_MAX, POW_MAX)``."""
    x = x.clamp(-POW_MAX, POW_MAX)
    return (x * x) * (x * x) * x


def _inverse_power(n: int):
    def f(x):
        return 1.0 / _away_from_zero(x.clamp(-POW_MAX, POW_MAX), EPS_DIV) ** n

    f.__doc__ = (f"1/x^{n} as ``1 / (sign(x) max(|x|, EPS_DIV))^{n}`` of ``clamp(x, -POW_MAX, POW_MAX)``: exact for "
                 "``EPS_DIV <= |x| <= POW_MAX``.")
    f.__name__ = f"f_inv{n}"
    return f


def f_x1p5(x):
    """x^1.5 as ``sqrt(clamp(x, EPS_SQRT, POW_MAX))^3``."""
    return torch.sqrt(x.clamp(EPS_SQRT, POW_MAX)) ** 3


def f_inv_sqrt(x):
    """1/sqrt(x) as ``1 / sqrt(max(x, EPS_SQRT))`` (at most 1e6)."""
    return torch.rsqrt(x.clamp_min(EPS_SQRT))


def f_arcsin(x):
    """arcsin of ``clamp(x, -1 + EPS_DIV, 1 - EPS_DIV)`` (the slope stays finite at the ends)."""
    return torch.asin(x.clamp(-1.0 + EPS_DIV, 1.0 - EPS_DIV))


def f_arccos(x):
    """arccos of ``clamp(x, -1 + EPS_DIV, 1 - EPS_DIV)``."""
    return torch.acos(x.clamp(-1.0 + EPS_DIV, 1.0 - EPS_DIV))


def f_arctanh(x):
    """artanh of ``clamp(x, -1 + EPS_DIV, 1 - EPS_DIV)`` (|artanh| <= 4.95)."""
    return torch.atanh(x.clamp(-1.0 + EPS_DIV, 1.0 - EPS_DIV))


def f_cosh(x):
    """cosh of ``clamp(x, -EXP_MAX, EXP_MAX)``."""
    return torch.cosh(x.clamp(-EXP_MAX, EXP_MAX))


# --------------------------------------------------------------------------------------------------
# canonical parameters: c f(a x + b) + d has symmetries, fix them so fitted numbers are readable
# --------------------------------------------------------------------------------------------------

Params = tuple[float, float, float, float]


def _canon(degree: float | None = None, parity: int = 0, period: float | None = None, flip: bool = False):
    """Canonical ``(a, b, c, d)`` for a function with these symmetries:

    * ``degree`` k: ``f(l u) = l^k f(u)`` for ``l > 0`` (powers, sqrt, abs): scale to ``|a| = 1``;
    * ``parity`` +1 (even, ``f(-u) = f(u)``) or -1 (odd): flip to ``a > 0``;
    * ``period`` P: shift ``b`` into ``[-P/2, P/2]``; with ``flip``, P is a half period with
      ``f(u + P) = -f(u)`` (sin, cos), and every shift by P flips the sign of ``c``.
    """
    def canonical(a: float, b: float, c: float, d: float) -> Params:
        if a == 0:
            return a, b, c, d
        if degree is not None:
            lam = abs(a)
            a, b, c = a / lam, b / lam, c * lam**degree
        if parity and a < 0:
            a, b, c = -a, -b, (c if parity > 0 else -c)
        if period is not None:
            k = math.floor(b / period + 0.5)
            b = b - period * k
            if flip and k % 2:
                c = -c
        return a, b, c, d
    return canonical


def _canon_x(a, b, c, d) -> Params:
    """c (a x + b) + d = (c a) x + (c b + d)."""
    return 1.0, 0.0, c * a, c * b + d


def _canon_exp(a, b, c, d) -> Params:
    """c exp(a x + b) = (c e^b) exp(a x)."""
    return (a, 0.0, c * math.exp(b), d) if abs(b) < 700 else (a, b, c, d)


def _canon_log(a, b, c, d) -> Params:
    """c log(a x + b) = c log|a| + c log(sign(a) x + b/|a|)."""
    if a == 0:
        return a, b, c, d
    lam = abs(a)
    return a / lam, b / lam, c, d + c * math.log(lam)


def _canon_zero(a, b, c, d) -> Params:
    return 0.0, 0.0, 0.0, d


@dataclass(frozen=True)
class SymbolicFunction:
    """One library entry.

    Attributes:
        name: e.g. ``"sin"``.
        torch_fn: elementwise torch function; finite for every finite input and equal to the mathematical
            function wherever that one is finite, except inside the guards its docstring states.
        sympy_fn: the same function on sympy expressions.
        complexity: the price of using it (0 for the constant, 1 for ``x``, 2 for ``x^2``, 3 for the usual
            curved functions, 4 for the less common ones); :func:`suggest_symbolic` trades it against fit.
        family: entries that are one function up to the affine maps, like ``cos(u) = sin(u + pi/2)``,
            share a family; candidates of one family never make an edge ambiguous.
        canonical: ``(a, b, c, d) -> (a, b, c, d)`` describing the same curve with the function's
            symmetries fixed (``|a| = 1`` for powers, ``b = 0`` for exp, ...), so fitted numbers are readable.
    """

    name: str
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    sympy_fn: Callable
    complexity: float
    family: str = ""
    canonical: Callable[..., Params] = field(default=lambda a, b, c, d: (a, b, c, d), compare=False)

    def __post_init__(self):
        if not self.family:
            object.__setattr__(self, "family", self.name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.torch_fn(x)


def _sympy_zero(x):
    return sympy.Integer(0)


def _sympy_gaussian(x):
    return sympy.exp(-(x**2))


_ENTRIES = [
    SymbolicFunction("0", f_zero, _sympy_zero, 0, canonical=_canon_zero),
    SymbolicFunction("x", f_x, lambda x: x, 1, canonical=_canon_x),
    SymbolicFunction("x^2", f_x2, lambda x: x**2, 2, canonical=_canon(degree=2, parity=1)),
    SymbolicFunction("x^3", f_x3, lambda x: x**3, 3, canonical=_canon(degree=3, parity=-1)),
    SymbolicFunction("x^4", f_x4, lambda x: x**4, 4, canonical=_canon(degree=4, parity=1)),
    SymbolicFunction("1/x", f_inv, lambda x: 1 / x, 3, canonical=_canon(degree=-1, parity=-1)),
    SymbolicFunction("sqrt", f_sqrt, sympy.sqrt, 3, canonical=_canon(degree=0.5)),
    SymbolicFunction("exp", f_exp, sympy.exp, 3, canonical=_canon_exp),
    SymbolicFunction("log", f_log, sympy.log, 3, canonical=_canon_log),
    SymbolicFunction("sin", torch.sin, sympy.sin, 3, family="sin",
                     canonical=_canon(parity=-1, period=math.pi, flip=True)),
    SymbolicFunction("cos", torch.cos, sympy.cos, 3, family="sin",
                     canonical=_canon(parity=1, period=math.pi, flip=True)),
    SymbolicFunction("tan", f_tan, sympy.tan, 4, canonical=_canon(parity=-1, period=math.pi)),
    SymbolicFunction("tanh", torch.tanh, sympy.tanh, 4, canonical=_canon(parity=-1)),
    SymbolicFunction("arctan", torch.atan, sympy.atan, 4, canonical=_canon(parity=-1)),
    SymbolicFunction("abs", torch.abs, sympy.Abs, 3, canonical=_canon(degree=1, parity=1)),
    SymbolicFunction("sign", f_sign, sympy.sign, 4, canonical=_canon(degree=0, parity=-1)),
    SymbolicFunction("gaussian", f_gaussian, _sympy_gaussian, 4, canonical=_canon(parity=1)),
]
# the rest of pykan's library: looked up by name (lib=[...]), not tried unless asked for
_MORE = [
    SymbolicFunction("x^5", f_x5, lambda x: x**5, 5, canonical=_canon(degree=5, parity=-1)),
    SymbolicFunction("1/x^2", _inverse_power(2), lambda x: 1 / x**2, 3, canonical=_canon(degree=-2, parity=1)),
    SymbolicFunction("1/x^3", _inverse_power(3), lambda x: 1 / x**3, 4, canonical=_canon(degree=-3, parity=-1)),
    SymbolicFunction("1/x^4", _inverse_power(4), lambda x: 1 / x**4, 4, canonical=_canon(degree=-4, parity=1)),
    SymbolicFunction("1/x^5", _inverse_power(5), lambda x: 1 / x**5, 5, canonical=_canon(degree=-5, parity=-1)),
    SymbolicFunction("x^1.5", f_x1p5, lambda x: x ** sympy.Rational(3, 2), 4, canonical=_canon(degree=1.5)),
    SymbolicFunction("1/sqrt(x)", f_inv_sqrt, lambda x: 1 / sympy.sqrt(x), 4, canonical=_canon(degree=-0.5)),
    SymbolicFunction("arcsin", f_arcsin, sympy.asin, 4, family="arcsin", canonical=_canon(parity=-1)),
    SymbolicFunction("arccos", f_arccos, sympy.acos, 4, family="arcsin"),  # acos(u) = pi/2 - asin(u)
    SymbolicFunction("arctanh", f_arctanh, sympy.atanh, 4, canonical=_canon(parity=-1)),
    SymbolicFunction("cosh", f_cosh, sympy.cosh, 4, canonical=_canon(parity=1)),
    SymbolicFunction("sigmoid", torch.sigmoid, lambda x: 1 / (1 + sympy.exp(-x)), 4, family="tanh"),
    SymbolicFunction("relu", torch.relu, lambda x: sympy.Max(x, 0), 3, canonical=_canon(degree=1)),
]

#: name -> :class:`SymbolicFunction`, pykan's whole library. Add entries to this dict to use them
#: everywhere (a model's symbolic edges find their functions here by name when a state dict is loaded).
SYMBOLIC_LIBRARY: dict[str, SymbolicFunction] = {e.name: e for e in _ENTRIES + _MORE}
#: what ``lib=None`` tries: the common functions (the rest of pykan's library only when named)
DEFAULT_LIB: tuple[str, ...] = tuple(e.name for e in _ENTRIES)
#: pykan's other names for kanedu's functions
SYMBOLIC_ALIASES = {"sgn": "sign", "x^0.5": "sqrt", "1/x^0.5": "1/sqrt(x)", "tanh(x)": "tanh"}


def _canonical_name(name):
    return SYMBOLIC_ALIASES.get(name, name) if isinstance(name, str) else name


def _resolve_lib(lib) -> dict[str, SymbolicFunction]:
    """``None`` (the whole library), a list of names, or a dict name -> SymbolicFunction."""
    if lib is None:
        return {n: SYMBOLIC_LIBRARY[n] for n in DEFAULT_LIB}
    if isinstance(lib, dict):
        bad = [k for k, v in lib.items() if not isinstance(v, SymbolicFunction)]
        if bad:
            raise TypeError(f"lib values must be SymbolicFunction, got other types for {bad[:3]}")
        out = dict(lib)
    else:
        names = [_canonical_name(n) for n in ([lib] if isinstance(lib, str) else list(lib))]
        unknown = [n for n in names if n not in SYMBOLIC_LIBRARY]
        if unknown:
            raise ValueError(f"lib: unknown function(s) {unknown}; known: {list(SYMBOLIC_LIBRARY)} "
                             f"(and pykan's aliases {list(SYMBOLIC_ALIASES)})")
        out = {n: SYMBOLIC_LIBRARY[n] for n in names}
    if not out:
        raise ValueError("lib must name at least one function")
    return out


def _entry(name) -> SymbolicFunction:
    if isinstance(name, SymbolicFunction):
        return name
    name = _canonical_name(name)
    if name not in SYMBOLIC_LIBRARY:
        raise ValueError(f"name must be one of {list(SYMBOLIC_LIBRARY)} (or a SymbolicFunction), got {name!r}")
    return SYMBOLIC_LIBRARY[name]


# --------------------------------------------------------------------------------------------------
# fitting y ~ c * f(a * x + b) + d
# --------------------------------------------------------------------------------------------------

#: The (a, b) grid of :func:`fit_affine`, in coordinates where x spans [-1, 1]: |a| log-spaced in
#: [0.1, 10] with both signs, b evenly spaced in [-B_MAX, B_MAX].
A_GRID = 12
B_GRID = 31
B_MAX = 10.0
B_BANDS = 3  # refinement starts: the best grid point in each of this many bands of b
GRID_POINTS = 64  # samples used by the grid search
REFINE_POINTS = 256  # samples used by the refinement (the final (c, d) and R^2 use all of them)


def _r2_closed_form(F: torch.Tensor, t: torch.Tensor):
    """Least squares ``t ~ c F + d`` for every row of ``F [..., N]`` against ``t`` (``[..., 1, N]`` shared
    by the rows, or ``[..., N]`` one per row).

    R^2 = corr(F, t)^2, ``c = cov(F, t) / var(F)``, ``d = mean(t) - c mean(F)``. Returns ``(r2, c, d)`` of
    shape ``[...]``; rows with a constant ``F`` get R^2 = 0 and c = 0.
    """
    tm = t.mean(-1, keepdim=True)
    tc = t - tm
    Fm = F.mean(-1, keepdim=True)
    Fc = F - Fm
    if t.dim() == F.dim() and t.shape[-2] == 1 and F.shape[-2] > 1:
        cov = (F @ tc.transpose(-1, -2))[..., 0]  # tc has zero mean, so F need not be centred here
    else:
        cov = (F * tc).sum(-1)
    varF = (Fc * Fc).sum(-1)
    sst = (tc * tc).sum(-1).clamp_min(1e-300)
    ok = varF > 1e-20 * F.shape[-1] * Fm[..., 0] ** 2 + 1e-280  # constant rows (up to rounding) explain nothing
    c = torch.where(ok, cov / torch.where(ok, varF, torch.ones_like(varF)), torch.zeros_like(varF))
    r2 = torch.where(ok, cov * c / sst, torch.zeros_like(varF)).clamp(0.0, 1.0)
    return r2, c, tm[..., 0] - c * Fm[..., 0]


def _values_and_slopes(fn, u: torch.Tensor):
    """``f(u)`` and ``f'(u)`` (elementwise, from autograd; guarded regions have slope 0)."""
    u = u.detach().requires_grad_(True)
    with torch.enable_grad():
        fu = fn(u)
        (df,) = torch.autograd.grad(fu.sum(), u)
    return fu.detach(), df


def _project_out(v: torch.Tensor, Fc: torch.Tensor, FF: torch.Tensor) -> torch.Tensor:
    """``v`` with its components along ``1`` and ``Fc`` (centred, ``FF = |Fc|^2``) removed (last axis)."""
    vc = v - v.mean(-1, keepdim=True)
    return vc - (vc * Fc).sum(-1, keepdim=True) / FF.clamp_min(1e-300)[..., None] * Fc


def _refine_ab(fns, s: torch.Tensor, t: torch.Tensor, ab: torch.Tensor, steps: int):
    """Levenberg-Marquardt on ``(a, b)`` with ``(c, d)`` eliminated (variable projection), many fits at once.

    For fixed ``(a, b)`` the best ``(c, d)`` is linear least squares, so the loss is
    ``SS(a, b) = |P (t - 0)|^2`` with ``P`` projecting out ``1`` and ``F = f(a s + b)``; its Jacobian is
    approximated (Kaufman) by projecting ``c dF/da = c f'(u) s`` and ``c dF/db = c f'(u)``. Each iteration
    solves ``(J^T J + lam diag(J^T J)) delta = -J^T r`` and keeps the step only where ``SS`` drops (then
    lam /= 3, else lam *= 4). Eliminating ``(c, d)`` removes their strong coupling with ``(a, b)``:
    it converges in a handful of steps where plain Gauss-Newton on all four crawls.

    Shapes: ``s, t [E, N]`` (E curves), ``ab [E, K, S, 2]`` for the K functions ``fns`` from S starts
    each. Returns ``(ab, ss)`` with ``ss [E, K, S]`` the residual sums of squares.
    """
    s4 = s[:, None, None, :]
    tc = (t - t.mean(-1, keepdim=True))[:, None, None, :]
    sst = (tc * tc).sum(-1)

    def evaluate(q):
        u = q[..., 0:1] * s4 + q[..., 1:2]  # [E, K, S, N]
        outs = [_values_and_slopes(f.torch_fn, u[:, k]) for k, f in enumerate(fns)]
        F = torch.stack([o[0] for o in outs], 1)
        dF = torch.stack([o[1] for o in outs], 1)
        Fc = F - F.mean(-1, keepdim=True)
        FF = (Fc * Fc).sum(-1)
        cov = (Fc * tc).sum(-1)
        ok = FF > 1e-280
        ss = torch.where(ok, sst - cov * cov / torch.where(ok, FF, torch.ones_like(FF)), sst)
        return {"dF": dF, "Fc": Fc, "FF": FF, "cov": cov, "ss": ss}

    lam = torch.full(ab.shape[:-1], 1e-3, dtype=ab.dtype)
    cur = evaluate(ab)
    for _ in range(steps):
        c = (cur["cov"] / cur["FF"].clamp_min(1e-300))[..., None]
        r = c * cur["Fc"] - tc
        cdF = c * cur["dF"]
        J = torch.stack([_project_out(cdF * s4, cur["Fc"], cur["FF"]),
                         _project_out(cdF, cur["Fc"], cur["FF"])], -1)  # [E, K, S, N, 2]
        JtJ = J.transpose(-1, -2) @ J
        g = (J * r[..., None]).sum(-2)
        diag = torch.diagonal(JtJ, dim1=-2, dim2=-1)
        diag = diag + 1e-6 * diag.amax(-1, keepdim=True) + 1e-30  # flat directions (exp: b ~ log c) stay put
        step = torch.linalg.solve(JtJ + torch.diag_embed(lam[..., None] * diag), -g[..., None])[..., 0]
        q = ab + torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        new = evaluate(q)
        better = torch.isfinite(new["ss"]) & (new["ss"] < cur["ss"])
        ab = torch.where(better[..., None], q, ab)
        cur = {k: torch.where(better if v.dim() == better.dim() else better[..., None], new[k], v)
               for k, v in cur.items()}
        lam = torch.where(better, (lam / 3).clamp_min(1e-15), (lam * 4).clamp_max(1e15))
    return ab, cur["ss"]


def _subsample(s: torch.Tensor, t: torch.Tensor, n: int):
    """At most ``n`` samples per curve, evenly spread over the sorted ``s`` (``s, t [E, N]``)."""
    if s.shape[1] <= n:
        return s, t
    pick = torch.linspace(0, s.shape[1] - 1, n).round().long()
    order = torch.sort(s, -1).indices[:, pick]
    return s.gather(-1, order), t.gather(-1, order)


def _fit_batch(x: torch.Tensor, y: torch.Tensor, fns: list[SymbolicFunction], a_range=(0.1, 10.0),
               b_range=(-B_MAX, B_MAX), refine_steps: int = 15):
    """:func:`_fit_on_cpu` on the CPU, whatever the default device (the fits are small float64 batches)."""
    with torch.device("cpu"):
        return _fit_on_cpu(x, y, fns, a_range, b_range, refine_steps)


def _fit_on_cpu(x: torch.Tensor, y: torch.Tensor, fns: list[SymbolicFunction], a_range, b_range, refine_steps):
    """Fit ``y_e ~ c f(a x_e + b) + d`` for every curve ``e`` and every function at once (float64).

    The grid search keeps the best ``(a, b)`` in each of ``B_BANDS`` bands of ``b``, and all of them are
    refined: saturating functions fit almost as well far out (tanh(u) ~ -1 + 2 exp(2u) for u << 0), so
    the overall grid optimum can sit in the wrong basin.

    Args:
        x, y: ``[E, N]`` samples of E curves.
        fns: K library entries.

    Returns:
        ``(params [E, K, 4], r2 [E, K])`` with params = (a, b, c, d) in the original units.
    """
    x, y = x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)
    E, N = x.shape
    K = len(fns)
    # 1. rescale: s in [-1, 1], t with zero mean and unit variance (per curve)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    m, h = (hi + lo) / 2, ((hi - lo) / 2).clamp_min(1e-12)
    s = (x - m) / h
    ym, ys = y.mean(-1, keepdim=True), y.std(-1, unbiased=False, keepdim=True)
    flat = ys <= 1e-12 * y.abs().amax(-1, keepdim=True).clamp_min(1e-300)  # constant curves
    t = (y - ym) / torch.where(flat, torch.ones_like(ys), ys)
    # 2. grid search over (a, b) on a subsample, (c, d) in closed form
    sg, tg = _subsample(s, t, GRID_POINTS)
    mags = torch.logspace(math.log10(a_range[0]), math.log10(a_range[1]), A_GRID, dtype=torch.float64)
    bs = torch.linspace(*b_range, B_GRID, dtype=torch.float64)
    A, B = torch.meshgrid(torch.cat([mags, -mags]), bs, indexing="ij")  # [2 A_GRID, B_GRID]
    band = torch.arange(B_GRID) * B_BANDS // B_GRID  # which band each b belongs to
    active = [k for k, f in enumerate(fns) if f.name != "0"]
    p0 = torch.zeros(E, len(active), B_BANDS, 4, dtype=torch.float64)
    for slot, k in enumerate(active):
        F = fns[k].torch_fn(A.reshape(-1, 1) * sg[:, None, :] + B.reshape(-1, 1))  # [E, P, n]
        r2, c, d = (v.reshape(E, *A.shape) for v in _r2_closed_form(F, tg[:, None, :]))
        for j in range(B_BANDS):
            cols = band == j
            r2j = r2[:, :, cols].reshape(E, -1)
            best = r2j.argmax(-1)
            pick_ = lambda v: v[:, :, cols].reshape(E, -1).gather(-1, best[:, None])[:, 0]  # noqa: B023
            p0[:, slot, j] = torch.stack([pick_(A.expand(E, -1, -1)), pick_(B.expand(E, -1, -1)), pick_(c),
                                          pick_(d)], -1)
    # 3. refine (a, b) on all samples from every start, keep the best
    p = torch.zeros(E, K, 4, dtype=torch.float64)
    if active:
        sr, tr = _subsample(s, t, REFINE_POINTS)
        ab, ss = _refine_ab([fns[k] for k in active], sr, tr, p0[..., :2], refine_steps)
        best = torch.nan_to_num(ss, nan=math.inf).argmin(-1)  # [E, len(active)]
        p[:, active, :2] = ab.gather(2, best[..., None, None].expand(-1, -1, 1, 2))[:, :, 0]
    # 4. exact (c, d) at the final (a, b), R^2, and back to the original units
    r2 = torch.zeros(E, K, dtype=torch.float64)
    for k in active:
        F = fns[k].torch_fn(p[:, k, 0:1] * s + p[:, k, 1:2])
        _, c_k, d_k = _r2_closed_form(F, t)
        p[:, k, 2], p[:, k, 3] = c_k, d_k
        res = c_k[:, None] * F + d_k[:, None] - t
        r2[:, k] = (1 - (res * res).mean(-1)).clamp(0.0, 1.0)
    params = torch.stack([p[..., 0] / h, p[..., 1] - p[..., 0] * m / h, p[..., 2] * ys, p[..., 3] * ys + ym], -1)
    const = torch.cat([torch.zeros(E, 3, dtype=torch.float64), ym], -1)  # (0, 0, 0, mean y)
    zero = torch.tensor([f.name == "0" for f in fns])
    params[:, zero] = const[:, None, :]
    flat_rows = flat[:, 0]
    params[flat_rows] = const[flat_rows][:, None, :]
    r2[flat_rows] = 1.0
    return params, r2


def fit_affine(x: torch.Tensor, y: torch.Tensor, name, a_range=(0.1, 10.0), b_range=(-B_MAX, B_MAX),
               refine_steps: int = 15):
    """Fit ``y ~ c * f(a * x + b) + d`` for one library function ``f``.

    1. Rescale ``x`` to ``s = (x - m) / h`` spanning [-1, 1] and ``y`` to zero mean, unit variance.
    2. Grid search, vectorised: ``a'`` in ``+-a_range`` (log-spaced), ``b'`` evenly in ``b_range``; for every
       ``(a', b')`` at once the best ``(c, d)`` in closed form (R^2 = corr^2); keep the best of each band of b.
    3. Refine ``(a', b')`` by Levenberg-Marquardt with ``(c, d)`` eliminated (variable projection), in
       float64 on all samples, then solve ``(c, d)`` exactly at the final ``(a', b')``.
    4. Map back (``a = a' / h``, ``b = b' - a' m / h``, ``c, d`` un-normalised) and make the parameters
       canonical (``SymbolicFunction.canonical``: e.g. ``a = 1`` for ``x^2``, ``b = 0`` for ``exp``).

    Args:
        x, y: samples ``[N]`` (any float dtype; the fit runs in float64 on the CPU).
        name: a :data:`SYMBOLIC_LIBRARY` name or a :class:`SymbolicFunction`.

    Returns:
        ``((a, b, c, d), r2)`` as Python floats, ``r2 = 1 - SS_res / SS_tot`` on the samples (1.0 for a
        constant ``y``). For ``"0"`` the fit is the constant ``d = mean(y)``, with R^2 = 0.

    >>> x = torch.linspace(-1, 1, 101)
    >>> (a, b, c, d), r2 = fit_affine(x, torch.sin(3.14159 * x), "sin")   # a ~ 3.14159, c ~ 1, r2 ~ 1
    """
    fn = _entry(name)
    x = _as_samples(x, "x")
    y = _as_samples(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    params, r2 = _fit_batch(x[None], y[None], [fn], a_range, b_range, refine_steps)
    return fn.canonical(*(float(v) for v in params[0, 0])), float(r2[0, 0])


def _as_samples(v, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v, dtype=torch.float64)
    if not v.is_floating_point():
        v = v.double()
    v = v.detach().reshape(-1)
    if v.numel() < 4:
        raise ValueError(f"{what} needs at least 4 samples, got {v.numel()}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{what} contains NaN or inf")
    return v


# --------------------------------------------------------------------------------------------------
# ranking candidates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One library function fitted to an edge: ``phi(x) ~ c * f(a * x + b) + d``.

    ``r2`` is the fit's R^2 on the edge's samples (0 for ``"0"``, which is judged by the edge's importance
    instead); ``score = min(-log10(1 - r2), r2_cap) - weight_simple * complexity`` (higher is better).
    """

    name: str
    r2: float
    complexity: float
    score: float
    params: Params

    def __repr__(self) -> str:
        a, b, c, d = self.params
        return (f"Candidate({self.name!r}, r2={self.r2:.6f}, complexity={self.complexity:g}, score={self.score:.3f}, "
                f"params=(a={a:.4g}, b={b:.4g}, c={c:.4g}, d={d:.4g}))")


class Suggestions(list):
    """:func:`suggest_symbolic`'s ranked list of :class:`Candidate` (best first), with the verdict.

    Attributes:
        edge: ``(l, i, j)``.
        importance: the edge's importance (attribution score with samples, else its share of the node it
            feeds); ``"0"`` is a candidate only when this is below ``zero_tol``.
        ambiguous: True when a candidate of another family scores within ``margin`` of the best, i.e.
            the data cannot tell them apart at the chosen simplicity weight (typical with noisy labels).
    """

    def __init__(self, items, edge, importance: float, ambiguous: bool, margin: float):
        super().__init__(items)
        self.edge, self.importance, self.ambiguous, self.margin = edge, importance, ambiguous, margin

    @property
    def best(self) -> Candidate:
        return self[0]

    @property
    def rivals(self) -> list[Candidate]:
        """Candidates of another family than the best, scoring within ``margin`` of it."""
        fam = _family(self[0].name)
        return [c for c in self[1:] if _family(c.name) != fam and self[0].score - c.score <= self.margin]

    def __repr__(self) -> str:
        flag = "  AMBIGUOUS" if self.ambiguous else ""
        lines = [f"edge {self.edge} (importance {self.importance:.3g}){flag}",
                 f"  {'name':<10}{'r2':>12}{'complexity':>11}{'score':>9}   params (a, b, c, d)"]
        for c in self:
            p = ", ".join(f"{v:.4g}" for v in c.params)
            lines.append(f"  {c.name:<10}{c.r2:>12.8f}{c.complexity:>11g}{c.score:>9.3f}   ({p})")
        return "\n".join(lines)


def _family(name: str) -> str:
    fn = SYMBOLIC_LIBRARY.get(name)
    return fn.family if fn is not None else name


def _quality(r2: torch.Tensor, cap: float) -> torch.Tensor:
    """``-log10(1 - R^2)``: decades of explained variance (R^2 = 0.999 -> 3), capped."""
    return (-torch.log10((1 - r2).clamp_min(10.0**-cap))).clamp(0.0, cap)


def _rank(fns: list[SymbolicFunction], params: torch.Tensor, r2: torch.Tensor, importance: float, *, edge,
          topk: int, weight_simple: float, r2_cap: float, zero_tol: float, margin: float) -> Suggestions:
    """Turn one edge's fits into ranked Suggestions (``params [K, 4]``, ``r2 [K]``)."""
    q = _quality(r2, r2_cap)
    cands = []
    for k, fn in enumerate(fns):
        if fn.name == "0":
            if importance >= zero_tol:
                continue  # "0" only for edges that really carry (almost) nothing
            score = r2_cap  # as good as a perfect fit, at no complexity: it wins
            r2k = 0.0
        else:
            score = float(q[k]) - weight_simple * fn.complexity
            r2k = float(r2[k])
        cands.append(Candidate(fn.name, r2k, fn.complexity, score, fn.canonical(*(float(v) for v in params[k]))))
    cands.sort(key=lambda c: (-c.score, c.complexity, -c.r2))
    top = cands[0]
    ambiguous = top.name != "0" and any(
        _family(c.name) != _family(top.name) and top.score - c.score <= margin for c in cands[1:] if c.name != "0")
    keep = cands[: max(1, topk)] if topk else cands
    return Suggestions(keep, edge, importance, ambiguous, margin)


# --------------------------------------------------------------------------------------------------
# symbolic edges inside a KANLayer
# --------------------------------------------------------------------------------------------------


class SymbolicEdges(nn.Module):
    """The edges of one :class:`~kanedu.KANLayer` that were replaced by formulas.

    Edge ``i -> j`` computes ``c * f(a * x_i + b) + d`` with its own trainable ``(a, b, c, d)``; the layer adds
    ``forward(x)`` to its numeric output and masks those numeric edges (``mask[i, j] = 0``).

    Shapes: ``params [in, out, 4]`` (a parameter; rows of numeric edges stay 0 and get zero gradients),
    ``forward: x [N, in] -> [N, out]``, ``edge_values: x [N, in] -> [N, in, out]``. The functions are kept as
    ``functions[(i, j)] -> SymbolicFunction`` and saved in the state dict by name (extra state).
    """

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.params = nn.Parameter(torch.zeros(in_features, out_features, 4, device=device,
                                               dtype=dtype or torch.get_default_dtype()))
        self.functions: dict[tuple[int, int], SymbolicFunction] = {}
        self._groups_cache = None

    # ---- editing -----------------------------------------------------------------------------------

    @torch.no_grad()
    def set(self, i: int, j: int, fn: SymbolicFunction, params) -> None:
        """Make edge ``(i, j)`` compute ``c * fn(a * x + b) + d`` with ``params = (a, b, c, d)``."""
        self.params[i, j] = torch.as_tensor(params, dtype=self.params.dtype, device=self.params.device)
        self.functions[(i, j)] = fn
        self._groups_cache = None

    @torch.no_grad()
    def remove(self, i: int, j: int) -> None:
        self.functions.pop((i, j), None)
        self.params[i, j] = 0.0
        self._groups_cache = None

    def _groups(self):
        """``[(fn, i_idx, j_idx)]``, one entry per distinct function (edges evaluated together)."""
        dev = self.params.device
        if self._groups_cache is None or self._groups_cache[0] != dev:
            by_fn: dict[str, list] = {}
            for (i, j), fn in sorted(self.functions.items()):
                by_fn.setdefault(fn.name, [fn, [], []])
                by_fn[fn.name][1].append(i)
                by_fn[fn.name][2].append(j)
            groups = [(fn, torch.tensor(ii, device=dev), torch.tensor(jj, device=dev)) for fn, ii, jj in by_fn.values()]
            self._groups_cache = (dev, groups)
        return self._groups_cache[1]

    # ---- evaluation --------------------------------------------------------------------------------

    def _values(self, x: torch.Tensor):
        for fn, ii, jj in self._groups():
            p = self.params[ii, jj]  # [E, 4]
            v = p[:, 2] * fn.torch_fn(p[:, 0] * x[:, ii] + p[:, 1]) + p[:, 3]  # [N, E]
            yield ii, jj, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, in]`` -> ``[N, out]``: ``y_j = sum_i c_ij f_ij(a_ij x_i + b_ij) + d_ij`` over symbolic edges."""
        y = x.new_zeros(x.shape[0], self.out_features)
        for _, jj, v in self._values(x):
            y = y.index_add(1, jj, v)
        return y

    def edge_values(self, x: torch.Tensor) -> torch.Tensor:
        """Per-edge values ``x [N, in]`` -> ``[N, in, out]`` (0 on numeric edges)."""
        flat = x.new_zeros(x.shape[0], self.in_features * self.out_features)
        for ii, jj, v in self._values(x):
            flat = flat.index_add(1, ii * self.out_features + jj, v)
        return flat.reshape(x.shape[0], self.in_features, self.out_features)

    # ---- structure and saving ----------------------------------------------------------------------

    @torch.no_grad()
    def subset(self, in_idx: torch.Tensor, out_idx: torch.Tensor) -> SymbolicEdges:
        """The symbolic edges among inputs ``in_idx`` and outputs ``out_idx``, renumbered."""
        in_pos = {int(v): n for n, v in enumerate(in_idx)}
        out_pos = {int(v): n for n, v in enumerate(out_idx)}
        new = SymbolicEdges(len(in_pos), len(out_pos), device=self.params.device, dtype=self.params.dtype)
        for (i, j), fn in self.functions.items():
            if i in in_pos and j in out_pos:
                new.set(in_pos[i], out_pos[j], fn, self.params[i, j])
        return new

    def get_extra_state(self) -> torch.Tensor:
        """The function names as JSON ``[[i, j, name], ...]`` in a uint8 tensor (state dicts hold tensors)."""
        text = json.dumps([[i, j, fn.name] for (i, j), fn in sorted(self.functions.items())])
        return torch.tensor(list(text.encode()), dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        items = json.loads(bytes(state.tolist()).decode()) if isinstance(state, torch.Tensor) else list(state)
        unknown = sorted({name for _, _, name in items if name not in SYMBOLIC_LIBRARY})
        if unknown:
            raise KeyError(f"symbolic edges use functions {unknown} that are not in kanedu.symbolic.SYMBOLIC_LIBRARY; "
                           "add them there (SYMBOLIC_LIBRARY[name] = SymbolicFunction(...)) before loading")
        self.functions = {(int(i), int(j)): SYMBOLIC_LIBRARY[name] for i, j, name in items}
        self._groups_cache = None

    def extra_repr(self) -> str:
        edges = ", ".join(f"({i},{j}):{fn.name}" for (i, j), fn in sorted(self.functions.items()))
        return f"in_features={self.in_features}, out_features={self.out_features}, edges=[{edges}]"


# --------------------------------------------------------------------------------------------------
# model-level API
# --------------------------------------------------------------------------------------------------

SAMPLES = 201  # points per edge when no data is given (an even sweep of the grid range)


def _check_model(model):
    layers = getattr(model, "layers", None)
    if layers is None or not all(hasattr(layer, "edge_activations") and hasattr(layer, "mask") for layer in layers):
        raise TypeError(f"model must be a kanedu.KAN, got {type(model).__name__}")
    return layers


def _check_edge(model, l, i, j):
    layers = _check_model(model)
    if not isinstance(l, int) or not 0 <= l < len(layers):
        raise ValueError(f"l must be a layer index in [0, {len(layers) - 1}], got {l!r}")
    layer = layers[l]
    if not isinstance(i, int) or not 0 <= i < layer.in_features:
        raise ValueError(f"i must be an input index of layer {l} in [0, {layer.in_features - 1}], got {i!r}")
    if not isinstance(j, int) or not 0 <= j < layer.out_features:
        raise ValueError(f"j must be an output index of layer {l} in [0, {layer.out_features - 1}], got {j!r}")
    return layer


def symbolic_edges(model) -> dict[tuple[int, int, int], str]:
    """``{(l, i, j): name}`` of every symbolic edge of ``model``."""
    out = {}
    for l, layer in enumerate(_check_model(model)):
        sym = getattr(layer, "symbolic", None)
        if sym is not None:
            out.update({(l, i, j): fn.name for (i, j), fn in sorted(sym.functions.items())})
    return out


def _check_x(model, x):
    if x is None:
        return None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor [N, {model.widths[0]}], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != model.widths[0] or x.shape[0] < 4:
        raise ValueError(f"x must be [N >= 4, {model.widths[0]}] model inputs, got shape {tuple(x.shape)}")
    return x


def _layer_samples(model, l: int, x) -> torch.Tensor:
    """Inputs of layer ``l``: computed from model inputs ``x``, or an even sweep of each input's grid range."""
    if x is not None:
        return model.layer_inputs(x)[l]
    layer = model.layers[l]
    k, G = layer.spline_order, layer.grid_size
    lo, hi = layer.grid[:, k], layer.grid[:, k + G]
    steps = torch.linspace(0, 1, SAMPLES, dtype=layer.grid.dtype, device=layer.grid.device)
    return lo + (hi - lo) * steps[:, None]  # [SAMPLES, in]


@torch.no_grad()
def _importance(model, l: int, x, h: torch.Tensor) -> torch.Tensor:
    """``[out, in]`` edge importance: attribution scores with samples ``x``, else each edge's share of the
    spread of the node it feeds (``std phi_ij / sum_i' std phi_i'j``) on the sweep ``h``."""
    if x is not None and hasattr(model, "attribution"):
        return model.attribution(x)[1][l]
    spread = model.layers[l].edge_activations(h).std(0, unbiased=False)  # [out, in]
    return spread / (spread.sum(1, keepdim=True) + 1e-12)


def _suggest_edges(model, l: int, edges, x, lib, *, topk, weight_simple, r2_cap, zero_tol, margin):
    """Suggestions for several edges of layer ``l`` at once (one batched fit)."""
    fns = list(_resolve_lib(lib).values())
    layer = model.layers[l]
    with torch.no_grad():
        h = _layer_samples(model, l, x)
        phi = layer.edge_activations(h)  # [N, out, in]
        imp = _importance(model, l, x, h)
    xs = torch.stack([h[:, i] for _, i, _ in edges])
    ys = torch.stack([phi[:, j, i] for _, i, j in edges])
    params, r2 = _fit_batch(xs, ys, fns)
    return {e: _rank(fns, params[n], r2[n], float(imp[e[2], e[1]]), edge=e, topk=topk, weight_simple=weight_simple,
                     r2_cap=r2_cap, zero_tol=zero_tol, margin=margin)
            for n, e in enumerate(edges)}


def suggest_symbolic(model, l: int, i: int, j: int, x: torch.Tensor | None = None, lib=None, topk: int = 5,
                     weight_simple: float = 1.0, r2_cap: float = 6.0, zero_tol: float = 1e-2,
                     margin: float = 0.5) -> Suggestions:
    """Rank library functions for edge ``i -> j`` of layer ``l``, best first.

    Every function is fitted as ``phi_ij(x) ~ c f(a x + b) + d`` (:func:`fit_affine`) on the edge's inputs
    (layer ``l``'s inputs computed from model inputs ``x [N, in]``, or an even sweep of the grid range) and
    scored::

        score = min(-log10(1 - R^2), r2_cap) - weight_simple * complexity

    i.e. each unit of complexity must buy ``weight_simple`` decades of unexplained variance; fits better
    than ``1 - R^2 = 10^-r2_cap`` count as exact, so among exact fits the simplest wins (``x^2`` rather than
    a flat ``cos``). Ties go to the lower complexity, then the higher R^2.

    ``"0"`` (the constant) is a candidate only when the edge's importance is below ``zero_tol``: its
    attribution score (:meth:`KAN.attribution`) with ``x``, its share of the node's spread without. It then
    wins. A small but real edge is never called "0" for being hard to fit.

    The result is ambiguous (``.ambiguous``, ``.rivals``) when a function of another family scores within
    ``margin`` of the best: the data cannot tell them apart (typical with noisy labels).

    Args:
        lib: ``None`` (all of :data:`SYMBOLIC_LIBRARY`), a list of names, or a dict name -> SymbolicFunction.
        topk: how many candidates to return (0 = all).

    Returns:
        :class:`Suggestions`: a list of :class:`Candidate` (name, r2, complexity, score, params).
    """
    _check_edge(model, l, i, j)
    x = _check_x(model, x)
    return _suggest_edges(model, l, [(l, i, j)], x, lib, topk=topk, weight_simple=weight_simple, r2_cap=r2_cap,
                          zero_tol=zero_tol, margin=margin)[(l, i, j)]


@torch.no_grad()
def fix_symbolic(model, l: int, i: int, j: int, name, x: torch.Tensor | None = None, params=None,
                 fit_params: bool = True) -> Candidate:
    """Replace edge ``i -> j`` of layer ``l`` by ``c * f(a * x + b) + d`` with trainable ``(a, b, c, d)``.

    The numeric edge is switched off (``mask[i, j] = 0``; its coefficients are kept for
    :func:`unfix_symbolic`) and the formula is added by the layer's :class:`SymbolicEdges`, so the model's
    forward pass, ``fit`` and the state dict all include it.

    Args:
        name: a :data:`SYMBOLIC_LIBRARY` name or a :class:`SymbolicFunction`.
        x: model inputs ``[N, in]`` whose layer-``l`` activations are the edge's samples (default: a sweep
            of the grid range).
        params: ``(a, b, c, d)`` to use as they are; otherwise fitted to the edge's current curve
            (``fit_params=True``) or ``(1, 0, 1, 0)``.

    Returns:
        A :class:`Candidate` with the parameters used and their R^2 against the edge's previous curve (its
        ``score`` is NaN: nothing was ranked).
    """
    layer = _check_edge(model, l, i, j)
    x = _check_x(model, x)
    fn = _entry(name)
    h = _layer_samples(model, l, x)
    phi = layer.edge_activations(h)[:, j, i]
    if params is not None:
        p = tuple(float(v) for v in params)
        if len(p) != 4:
            raise ValueError(f"params must be (a, b, c, d), got {params!r}")
    elif fit_params:
        p, _ = fit_affine(h[:, i], phi, fn)
    else:
        p = (1.0, 0.0, 1.0, 0.0)
    a, b, c, d = (torch.tensor(v, dtype=torch.float64) for v in p)
    u = h[:, i].double()
    y = phi.double()
    res = c * fn.torch_fn(a * u + b) + d - y
    sst = ((y - y.mean()) ** 2).sum()
    r2 = float(1 - (res * res).sum() / sst) if sst > 0 else float((res.abs().max() < 1e-12).item())
    _attach(layer).set(i, j, fn, p)
    layer.mask[i, j] = 0.0
    return Candidate(fn.name, r2, fn.complexity, float("nan"), p)


def _attach(layer) -> SymbolicEdges:
    if getattr(layer, "symbolic", None) is None:
        layer.symbolic = SymbolicEdges(layer.in_features, layer.out_features, device=layer.coef.device,
                                       dtype=layer.coef.dtype)
    return layer.symbolic


@torch.no_grad()
def unfix_symbolic(model, l: int, i: int, j: int) -> None:
    """Turn edge ``i -> j`` of layer ``l`` back into its numeric spline (as it was when it was fixed)."""
    layer = _check_edge(model, l, i, j)
    sym = getattr(layer, "symbolic", None)
    if sym is None or (i, j) not in sym.functions:
        raise ValueError(f"edge (l={l}, i={i}, j={j}) is not symbolic; symbolic edges: {sorted(symbolic_edges(model))}")
    sym.remove(i, j)
    layer.mask[i, j] = 1.0
    if not sym.functions:
        layer.symbolic = None


class SymbolicReport(list):
    """:func:`auto_symbolic`'s result: one ``(l, i, j, name, r2)`` tuple per edge it fixed.

    Attributes:
        ambiguous: ``{(l, i, j): Suggestions}`` for edges whose best candidate had a rival of another
            family within the margin (fixed to the best anyway unless ``on_ambiguous="skip"``).
        skipped: ``{(l, i, j): Suggestions}`` for edges left numeric (best R^2 below ``r2_threshold``, or
            ambiguous with ``on_ambiguous="skip"``).
        suggestions: every edge's :class:`Suggestions`.
    """

    def __init__(self):
        super().__init__()
        self.ambiguous: dict = {}
        self.skipped: dict = {}
        self.suggestions: dict = {}

    def __repr__(self) -> str:
        lines = [f"{'edge (l, i, j)':<16}{'function':<10}{'r2':>12}  note"]
        for l, i, j, name, r2 in self:
            note = ""
            if (l, i, j) in self.ambiguous:
                note = "ambiguous: " + ", ".join(f"{c.name} ({c.score:.2f})" for c in self.suggestions[(l, i, j)][:3])
            lines.append(f"{str((l, i, j)):<16}{name:<10}{r2:>12.8f}  {note}")
        for e, s in self.skipped.items():
            why = "ambiguous" if e in self.ambiguous else "no candidate fits"
            lines.append(f"{str(e):<16}{'numeric':<10}{s[0].r2:>12.8f}  left numeric: {why} (best: {s[0].name})")
        return "\n".join(lines)


def auto_symbolic(model, x: torch.Tensor | None = None, lib=None, r2_threshold: float = 0.9,
                  weight_simple: float = 1.0, r2_cap: float = 6.0, zero_tol: float = 1e-2, margin: float = 0.5,
                  on_ambiguous: str = "fix", layers=None, verbose: bool = False) -> SymbolicReport:
    """Fix every active numeric edge (``mask != 0``) to its best :func:`suggest_symbolic` candidate.

    Layers are done in order, and each layer's edges are fitted on the inputs that the already symbolic
    layers before it produce. ``r2_threshold`` is a floor: when the best-scoring candidate misses it, the
    best-scoring one that reaches it is taken (a complex function that fits, rather than a simple one that
    does not), and only an edge where none reaches it stays numeric (``report.skipped``); "0" is chosen by
    importance, not R^2. When the best candidate has a rival of
    another family within ``margin`` the edge is recorded in ``report.ambiguous``, a warning is issued,
    and it is fixed to the best (``on_ambiguous="fix"``) or left numeric (``"skip"``).

    Args:
        x: model inputs ``[N, in]`` (default: sweeps of each layer's grid range).
        layers: only these layer indices (default all); snapping one layer at a time, with ``fit`` in
            between, lets the numeric layers above adapt to the exact formulas below them.
        weight_simple, r2_cap, zero_tol, margin, lib: as in :func:`suggest_symbolic`.
        verbose: print each choice.

    Returns:
        :class:`SymbolicReport`, a list of ``(l, i, j, name, r2)``.
    """
    _check_model(model)
    x = _check_x(model, x)
    if on_ambiguous not in ("fix", "skip"):
        raise ValueError(f"on_ambiguous must be 'fix' or 'skip', got {on_ambiguous!r}")
    report = SymbolicReport()
    todo = range(len(model.layers)) if layers is None else sorted({int(v) for v in layers})
    if any(not 0 <= l < len(model.layers) for l in todo):
        raise ValueError(f"layers must be indices in [0, {len(model.layers) - 1}], got {list(todo)}")
    for l in todo:
        layer = model.layers[l]
        edges = [(l, i, j) for i, j in torch.nonzero(layer.mask != 0).tolist()]
        if not edges:
            continue
        found = _suggest_edges(model, l, edges, x, lib, topk=0, weight_simple=weight_simple, r2_cap=r2_cap,
                               zero_tol=zero_tol, margin=margin)
        functions = _resolve_lib(lib)
        for e in edges:
            s = found[e]
            report.suggestions[e] = s
            best = s[0]
            if s.ambiguous:
                report.ambiguous[e] = s
                if on_ambiguous == "skip":
                    report.skipped[e] = s
                    continue
            if best.name != "0" and best.r2 < r2_threshold:
                best = next((c for c in s if c.r2 >= r2_threshold), None)  # s is sorted by score
                if best is None:
                    report.skipped[e] = s
                    continue
            with torch.no_grad():
                _attach(layer).set(e[1], e[2], functions[best.name], best.params)
                layer.mask[e[1], e[2]] = 0.0
            report.append((l, e[1], e[2], best.name, best.r2))
            if verbose:
                print(f"fixing {e} with {best.name}, r2={best.r2:.6f}" + ("  (ambiguous)" if s.ambiguous else ""))
    numeric = {e: s for e, s in report.skipped.items() if e not in report.ambiguous}
    if numeric:
        desc = "; ".join(f"{e}: best {s[0].name} with r2 {s[0].r2:.4f}" for e, s in numeric.items())
        warnings.warn(f"auto_symbolic left {len(numeric)} edge(s) numeric, since no candidate reached "
                      f"r2_threshold={r2_threshold}: {desc}. See report.skipped; symbolic_formula needs every "
                      "active edge symbolic (fix them by hand with fix_symbolic, prune them, or widen lib).",
                      stacklevel=2)
    if report.ambiguous:
        desc = "; ".join(f"{e}: " + ", ".join(f"{c.name} {c.score:.2f}" for c in s[:3])
                         for e, s in report.ambiguous.items())
        warnings.warn(f"auto_symbolic: {len(report.ambiguous)} edge(s) are ambiguous (rival functions within "
                      f"margin={margin} of the best score): {desc}. See report.ambiguous.", stacklevel=2)
    return report


def _symbolic_slots(model):
    """``[(params_tensor, i, j)]`` of every symbolic edge, in a fixed order."""
    return [(layer.symbolic.params, i, j) for layer in model.layers if getattr(layer, "symbolic", None) is not None
            for (i, j) in sorted(layer.symbolic.functions)]


@torch.no_grad()
def polish_symbolic(model, dataset, steps: int = 30, tol: float = 1e-14) -> float:
    """Levenberg-Marquardt on the ``(a, b, c, d)`` of all symbolic edges, on the training rows.

    After :func:`auto_symbolic` the model has a handful of parameters, but they often sit in a long,
    nearly flat valley (``c sqrt(u + k) + d`` mimics ``sqrt(u + 1)`` to 1e-5 over a wide range of ``c, k, d``),
    where LBFGS crawls. Gauss-Newton steps, with the Jacobian by central differences (2 forward passes
    per parameter), walk such valleys in a few iterations. Numeric edges are left as they are.

    Args:
        dataset: the pykan dict (``train_input``, ``train_label``) or a tuple ``(x, y)``.
        steps: Gauss-Newton iterations (stops early when the relative improvement drops below ``tol``).

    Returns:
        The training RMSE after polishing.
    """
    _check_model(model)
    x, y = (dataset["train_input"], dataset["train_label"]) if isinstance(dataset, dict) else dataset
    slots = _symbolic_slots(model)
    if not slots:
        raise ValueError("the model has no symbolic edges to polish (use fix_symbolic or auto_symbolic first)")
    y = y.reshape(len(x), -1)

    def get():
        return torch.cat([t[i, j].double() for t, i, j in slots])

    def put(v):
        for n, (t, i, j) in enumerate(slots):
            t[i, j] = v[4 * n: 4 * n + 4].to(t.dtype)

    def residual(v):
        put(v)
        return (model(x).reshape(len(x), -1) - y).double().reshape(-1)

    v = get()
    r = residual(v)
    loss = float(r @ r)
    lam = 1e-3
    for _ in range(steps):
        if loss == 0.0:
            break
        h = 1e-6 * v.abs().clamp_min(1e-3)
        cols = []
        for k in range(len(v)):
            e = torch.zeros_like(v)
            e[k] = h[k]
            cols.append((residual(v + e) - residual(v - e)) / (2 * h[k]))
        J = torch.stack(cols, 1)  # [N * out, P]
        JtJ, g = J.T @ J, J.T @ r
        diag = torch.diagonal(JtJ) + 1e-9 * torch.diagonal(JtJ).max() + 1e-300
        improved = False
        for _ in range(10):
            step = torch.linalg.lstsq(JtJ + lam * torch.diag(diag), -g[:, None]).solution[:, 0]
            r_new = residual(v + step)
            new = float(r_new @ r_new)
            if math.isfinite(new) and new < loss:
                gain = (loss - new) / loss
                v, r, loss, lam = v + step, r_new, new, max(lam / 3, 1e-12)
                improved = True
                break
            lam *= 4
        if not improved or gain < tol:
            break
    put(v)
    return math.sqrt(loss / r.numel())


# --------------------------------------------------------------------------------------------------
# formulas
# --------------------------------------------------------------------------------------------------


def symbolic_formula(model, var_names=None, precision: int = 4, snap: bool = True) -> list[sympy.Expr]:
    """The model as sympy expressions, one per output, in symbols ``x1..xn`` (or ``var_names``).

    Every active edge must be symbolic: a numeric edge (``mask != 0``) raises ValueError naming it (fix it
    with :func:`fix_symbolic` / :func:`auto_symbolic`, or prune it). Edges are composed layer by layer,
    ``node_j = sum_i c_ij f_ij(a_ij node_i + b_ij) + d_ij`` (a multiplication node multiplies its
    subnodes), then tidied:

    1. canonical form: products are expanded over sums, a constant factor is pulled out of ``sqrt``,
       ``1/(...)`` and ``log`` arguments, and constants and ``k log(u)`` terms out of ``exp`` arguments;
    2. in every sum, terms whose coefficient is below ``10**-precision`` of the largest are dropped;
    3. with ``snap``, numbers within relative ``10**-precision`` of ``p/q`` or ``p pi/q`` (``q <= 12``) become
       exact; the others are rounded to ``precision`` significant digits.

    The two steps run twice, since snapping can enable more (``exp(1.0 log(x)) -> x``).
    """
    layers = _check_model(model)
    numeric = [(l, i, j) for l, layer in enumerate(layers) for i, j in torch.nonzero(layer.mask != 0).tolist()]
    if numeric:
        raise ValueError(f"symbolic_formula needs every active edge to be symbolic; numeric edges (l, i, j): "
                         f"{numeric}. Fix them with fix_symbolic/auto_symbolic or prune them first.")
    n_in = model.widths[0]
    if var_names is None:
        var_names = [f"x{i + 1}" for i in range(n_in)]
    if len(var_names) != n_in:
        raise ValueError(f"var_names must have {n_in} names, got {len(var_names)}: {list(var_names)}")
    nodes = [sympy.Symbol(v) if isinstance(v, str) else v for v in var_names]
    for l, layer in enumerate(layers):
        new = [sympy.Integer(0)] * layer.out_features
        sym = getattr(layer, "symbolic", None)
        if sym is not None:
            P = sym.params.detach().double().cpu()
            for (i, j), fn in sorted(sym.functions.items()):
                a, b, c, d = (sympy.Float(float(v)) for v in P[i, j])
                new[j] = new[j] + c * fn.sympy_fn(a * nodes[i] + b) + d
        nodes = model.nodes(l + 1, new) if hasattr(model, "nodes") else new  # multiplication nodes multiply
    out = []
    for e in nodes:
        for _ in range(2):
            e = _tidy_numbers(_canonical(e), precision, snap)
        out.append(e)
    return out


def ex_round(expr: sympy.Expr, n_digit: int = 4) -> sympy.Expr:
    """Every number in ``expr`` rounded to ``n_digit`` significant digits (pykan's ``kan.utils.ex_round``)."""
    return expr.xreplace({a: sympy.Float(a, n_digit) for a in expr.atoms(sympy.Float)})


def _coeff(term) -> sympy.Expr:
    return term.as_coeff_Mul()[0]


def _pull_factor(arg):
    """``arg = k * rest`` with ``k > 0`` the largest |coefficient| of a sum (or the coefficient of a product)."""
    if arg.is_Add:
        k = max((abs(_coeff(t)) for t in arg.args), key=lambda v: float(v))
    else:
        k = abs(_coeff(arg))
    if k == 0 or k == 1 or not k.is_number:
        return sympy.Integer(1), arg
    return k, sympy.expand(arg / k, power_exp=False, log=False, power_base=False)


def _canonical(e):
    """Bottom-up rewrite to a canonical shape (see :func:`symbolic_formula`)."""
    if e.is_Atom:
        return e
    e = e.func(*[_canonical(a) for a in e.args])
    e = sympy.expand(e, deep=False, power_exp=False, power_base=False, log=False)
    if isinstance(e, sympy.exp) and e.args[0].is_Add:
        const, logs, rest = sympy.Integer(0), sympy.Integer(1), []
        for t in e.args[0].args:
            coef, body = t.as_coeff_Mul()
            if t.is_number:
                const += t
            elif isinstance(body, sympy.log):
                logs *= body.args[0] ** coef
            else:
                rest.append(t)
        return sympy.exp(const) * logs * sympy.exp(sympy.Add(*rest))
    if isinstance(e, sympy.log) and not e.args[0].is_Atom:
        k, rest = _pull_factor(e.args[0])
        return sympy.log(k) + sympy.log(rest) if k != 1 else e
    if e.is_Pow and e.base.is_Add and not (e.exp.is_Integer and e.exp > 0):
        k, rest = _pull_factor(e.base)
        return k**e.exp * rest**e.exp if k != 1 else e
    return e


def _snap_number(v: float, tol: float):
    """``p/q`` or ``p pi / q`` (q <= 12) within relative ``tol`` of ``v``, else None."""
    if v == 0:
        return sympy.Integer(0)
    for scale, sym in ((1.0, sympy.Integer(1)), (math.pi, sympy.pi)):
        w = v / scale
        for q in range(1, 13):
            p = round(w * q)
            if p != 0 and abs(w - p / q) <= tol * abs(w):
                return sympy.Rational(p, q) * sym
    return None


def _tidy_numbers(e, precision: int, snap: bool):
    """Drop negligible terms of sums, snap or round every float (bottom-up)."""
    if e.is_Float:
        v = float(e)
        s = _snap_number(v, 10.0**-precision) if snap else None
        return s if s is not None else sympy.Float(float(f"{v:.{precision}g}"), precision)
    if e.is_Atom:
        return e
    args = [_tidy_numbers(a, precision, snap) for a in e.args]
    if e.is_Add:
        coefs = [abs(float(_coeff(a))) if _coeff(a).is_number else 0.0 for a in args]
        big = max(coefs) if coefs else 0.0
        args = [a for a, c in zip(args, coefs) if c >= 10.0**-precision * big]
    return e.func(*args)

