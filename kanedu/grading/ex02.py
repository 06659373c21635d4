"""Exercise 02, B-splines: the Cox-de Boor recursion, extended grids, local support, least squares."""

from __future__ import annotations

import torch

from kanedu.splines import bspline_basis, curve_to_coef, uniform_grid

from . import answers
from .parts import Exercise, Part, close, equal, is_tensor, rand, randint

# kanedu.splines computes B-splines in several ways, kanedu.kernels has per-interval tables, and
# scipy.interpolate.BSpline has a design matrix: none of them counts as the student's recursion.
_SPLINES = ("kanedu.splines", "kanedu.kernels", "scipy.interpolate:BSpline")


def _knots(gen, m: int) -> torch.Tensor:
    """m strictly increasing, unevenly spaced knots starting somewhere in [-2, 0)."""
    gaps = rand(gen, m - 1, lo=0.15, hi=1.0)
    return torch.cat([torch.zeros(1, dtype=torch.float64), gaps.cumsum(0)]) + rand(gen, 1, lo=-2.0, hi=0.0)


def _basis_cases(gen, hidden):
    orders = [randint(gen, 0, 5) for _ in range(8)] if hidden else [0, 1, 3]
    cases = []
    for k in orders:
        t = _knots(gen, k + 2 + randint(gen, 1, 7))
        x = torch.cat([rand(gen, 40, lo=float(t[0]), hi=float(t[-1])),  # inside the knot range
                       t[1:-1][:4],  # exactly on knots: B_{i,0} is 1 on [t_i, t_{i+1})
                       torch.stack([t[0] - 0.5, t[-1] + 0.25])])  # outside: all bases vanish
        cases.append({"x": x, "t": t, "k": k})
    return cases


def _describe_basis(c):
    t = c["t"]
    return f"k = {c['k']}, {len(t)} knots from {t[0]:.3f} to {t[-1]:.3f}, {len(c['x'])} points"


def _at_x(case):
    return lambda i: f" (at x = {case['x'][i[0]].item():.6g})"


def _cox_de_boor_judge(case, out):
    x, t, k = case["x"], case["t"], case["k"]
    expected = bspline_basis(x, t, k, method="reference")
    msg = is_tensor(out, expected.shape, torch.float64, "the bases")
    if msg:
        return msg
    msg = close(out, expected, rtol=1e-9, atol=1e-12, what="B")
    if msg:
        bad = ~torch.isclose(out, expected, rtol=1e-9, atol=1e-12)
        row = int(torch.nonzero(bad)[0][0])
        return f"{msg}; first wrong row at x = {x[row].item():.6g}"
    return None


COX_DE_BOOR = Part(
    name="ex02.cox_de_boor", title="The Cox-de Boor recursion", answer="cox_de_boor",
    points=4, minutes=20, seconds=1,
    hint="Start from B = ((t[:-1] <= x) & (x < t[1:])) as float, with x as a column [N, 1]; then k times "
         "B = (x - t_i)/(t_{i+d} - t_i) * B[:, :-1] + (t_{i+d+1} - x)/(t_{i+d+1} - t_{i+1}) * B[:, 1:] "
         "with the knot slices t[:-d-1], t[d:-1], t[d+1:], t[1:-d]. Each step drops one column.",
    cases=_basis_cases, run=lambda answer, c: answer(c["x"].clone(), c["t"].clone(), c["k"]),
    judge=_cox_de_boor_judge, describe=_describe_basis, forbidden=_SPLINES,
)


def _grid_cases(gen, hidden):
    fixed = [(5, 3, -1.0, 1.0), (3, 0, 0.0, 2.0), (10, 2, -0.5, 3.5)]
    extra = []
    for _ in range(6 if hidden else 0):
        lo = round(float(rand(gen, 1, lo=-3.0, hi=1.0)), 3)
        extra.append((randint(gen, 1, 40), randint(gen, 0, 5), lo, lo + round(float(rand(gen, 1, lo=0.5, hi=4.0)), 3)))
    return [{"G": G, "k": k, "lo": lo, "hi": hi} for G, k, lo, hi in fixed + extra]


def _grid_judge(case, out):
    expected = uniform_grid(case["G"], case["k"], (case["lo"], case["hi"]), dtype=torch.float64)
    msg = is_tensor(out, expected.shape, torch.float64, "the knot vector")
    return msg or close(out, expected, rtol=1e-12, atol=1e-12, what="t")


EXTENDED_GRID = Part(
    name="ex02.extended_grid", title="The extended uniform grid", answer="extended_grid",
    points=2, minutes=5, seconds=1,
    hint="G intervals of width h = (hi - lo) / G, plus k more knots of the same spacing on each side: "
         "t_j = lo + (j - k) h for j = 0 .. G + 2k, G + 2k + 1 knots in all.",
    cases=_grid_cases, run=lambda answer, c: answer(c["G"], c["k"], c["lo"], c["hi"]), judge=_grid_judge,
    describe=lambda c: f"G = {c['G']}, k = {c['k']}, range [{c['lo']}, {c['hi']}]",
    forbidden=("kanedu.splines:uniform_grid", "kanedu.splines:extend_grid", "kanedu.splines:adaptive_grid"),
)


def _support_judge(case, out):
    expected = answers.support_mask(case["x"], case["t"], case["k"])
    msg = is_tensor(out, expected.shape, torch.bool, "the mask")
    if msg:
        return msg
    msg = equal(out, expected, what="mask")
    if msg:
        bad = torch.nonzero(out != expected)[0]
        i, j = int(bad[0]), int(bad[1])
        return (f"{msg}; x = {case['x'][i].item():.6g}, basis {j} lives on "
                f"[{case['t'][j].item():.6g}, {case['t'][j + case['k'] + 1].item():.6g})")
    return None


SUPPORT = Part(
    name="ex02.support_mask", title="Local support", answer="support_mask",
    points=2, minutes=10, seconds=1,
    hint="B_{i,k} lives on [t_i, t_{i+k+1}): compare x[:, None] with the slices t[:-k-1] and t[k+1:]. "
         "A basis can be zero inside its support (at its first knot), so do not test the basis values.",
    cases=_basis_cases, run=lambda answer, c: answer(c["x"].clone(), c["t"].clone(), c["k"]),
    judge=_support_judge, describe=_describe_basis, forbidden=_SPLINES,
)


def _fit_cases(gen, hidden):
    configs = [(5, 3), (8, 1), (4, 2)]
    if hidden:
        configs += [(randint(gen, 3, 12), randint(gen, 1, 3)) for _ in range(5)]
    cases = []
    for G, k in configs:
        lo = float(rand(gen, 1, lo=-2.0, hi=0.0))
        hi = lo + float(rand(gen, 1, lo=1.0, hi=3.0))
        x = rand(gen, 300, lo=lo, hi=hi)
        a, b = float(rand(gen, 1, lo=1.0, hi=4.0)), float(rand(gen, 1, lo=-1.0, hi=1.0))
        y = torch.sin(a * x + b) + 0.3 * x**2 + 0.05 * torch.randn(300, generator=gen, dtype=torch.float64)
        cases.append({"x": x, "y": y, "t": uniform_grid(G, k, (lo, hi), dtype=torch.float64), "k": k})
    return cases


def _fit_judge(case, out):
    x, y, t, k = case["x"], case["y"], case["t"], case["k"]
    n_bases = len(t) - k - 1
    msg = is_tensor(out, (n_bases,), torch.float64, "the coefficients")
    if msg:
        return msg
    reference = curve_to_coef(x[:, None], y[:, None, None], t[None], k)[0, 0]
    B = bspline_basis(x, t, k)
    return close(B @ out, B @ reference, rtol=1e-7, atol=1e-9, what="the fitted spline at sample ")


FIT = Part(
    name="ex02.fit_coef", title="Least-squares spline coefficients", answer="fit_coef",
    points=2, minutes=15, seconds=1,
    hint="Build the design matrix B = bspline_basis(x, t, k) (shape [N, n_bases]) and solve min_c |B c - y|^2 "
         "with torch.linalg.lstsq(B, y[:, None]).solution.",
    cases=_fit_cases, run=lambda answer, c: answer(c["x"].clone(), c["y"].clone(), c["t"].clone(), c["k"]),
    judge=_fit_judge,
    describe=lambda c: f"k = {c['k']}, G = {len(c['t']) - 2 * c['k'] - 1} on [{c['t'][c['k']]:.3f}, "
                       f"{c['t'][-c['k'] - 1]:.3f}], {len(c['x'])} samples",
    forbidden=("kanedu.splines:curve_to_coef", "kanedu.splines:coef_to_curve", "scipy.interpolate:make_lsq_spline",
               "scipy.interpolate:LSQUnivariateSpline"),
)

EXERCISE = Exercise(id="ex02", notebook="02_bsplines", title="B-splines",
                    parts=(COX_DE_BOOR, EXTENDED_GRID, SUPPORT, FIT))
