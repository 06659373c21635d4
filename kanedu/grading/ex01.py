"""Exercise 01, the Kolmogorov-Arnold theorem: counting, composing, an exact network, Köppen's psi."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from . import answers
from .parts import Exercise, Part, as_number, choice, is_number, rand, randint

# ---- part 1: counting the functions of the theorem --------------------------------------------------


def _counts_cases(gen, hidden):
    fixed = [1, 2, 3, 10]
    return [{"n": n} for n in fixed] + ([{"n": randint(gen, 4, 500)} for _ in range(4)] if hidden else [])


def _counts_judge(case, out):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return f"expected a pair (outer, inner), got {out!r:.80}"
    for what, value in zip(("outer", "inner"), out):
        msg = is_number(value, f"the number of {what} functions", integer=True)
        if msg:
            return msg
    expected = answers.ka_counts(case["n"])
    got = tuple(int(as_number(v)) for v in out)
    if got != expected:
        return f"expected (outer, inner) = {expected}, got {got}"
    return None


COUNTS = Part(
    name="ex01.ka_counts", title="Counting the functions of the theorem", answer="ka_counts",
    points=1, minutes=3, seconds=1,
    hint="There are 2n + 1 hidden nodes, each with its own outer function, and one inner function for every "
         "(hidden node, input) pair.",
    cases=_counts_cases, run=lambda answer, c: answer(c["n"]), judge=_counts_judge,
    describe=lambda c: f"n = {c['n']}",
)

# ---- part 2: composing a Kolmogorov-Arnold network ----------------------------------------------------

# Univariate functions by name and two parameters, so that a case can cross the process boundary as data.
_UNIVARIATE = {
    "affine": lambda a, b: (lambda x: a * x + b),
    "square": lambda a, b: (lambda x: a * (x + b) ** 2),
    "sin": lambda a, b: (lambda x: np.sin(a * x + b)),
    "exp": lambda a, b: (lambda x: np.exp(0.5 * a * x + b)),
    "tanh": lambda a, b: (lambda x: np.tanh(a * x + b)),
}


def _make(spec):
    name, a, b = spec
    return _UNIVARIATE[name](a, b)


def _spec(gen):
    return [choice(gen, sorted(_UNIVARIATE)), round(float(rand(gen, 1, lo=-1.5, hi=1.5)), 3),
            round(float(rand(gen, 1, lo=-1, hi=1)), 3)]


def _network_cases(gen, hidden):
    cases = []
    shapes = [(2, 2), (1, 3), (3, 5)] + ([(randint(gen, 1, 4), randint(gen, 1, 6)) for _ in range(5)] if hidden else [])
    for n_in, n_hidden in shapes:
        cases.append({
            "inner": [[_spec(gen) for _ in range(n_in)] for _ in range(n_hidden)],
            "outer": [_spec(gen) for _ in range(n_hidden)],
            "xs": rand(gen, n_in, 50, lo=-1, hi=1).numpy(),
        })
    return cases


def _network_run(answer, case):
    inner = [[_make(s) for s in row] for row in case["inner"]]
    outer = [_make(s) for s in case["outer"]]
    f = answer(inner, outer)
    return np.asarray(f(*[np.array(x) for x in case["xs"]]), dtype=np.float64)


def _network_judge(case, out):
    inner = [[_make(s) for s in row] for row in case["inner"]]
    outer = [_make(s) for s in case["outer"]]
    expected = answers.ka_network(inner, outer)(*case["xs"])
    if not isinstance(out, np.ndarray) or out.shape != expected.shape:
        shape = getattr(out, "shape", None)
        return f"expected f(*xs) to give {expected.shape[0]} values (one per point), got shape {shape}"
    err = np.abs(out - expected)
    if not np.all(err <= 1e-10 * (1 + np.abs(expected))):
        i = int(np.argmax(np.where(np.isfinite(err), err, np.inf)))
        point = ", ".join(f"{x[i]:.4f}" for x in case["xs"])
        return f"at x = ({point}) expected f = {expected[i]:.10g}, got {out[i]:.10g}"
    return None


NETWORK = Part(
    name="ex01.ka_network", title="Composing a Kolmogorov-Arnold network", answer="ka_network",
    points=3, minutes=10, seconds=1,
    hint="Hidden node q adds inner[q][p](x_p) over the inputs p; the output adds outer[q] of each node's sum. "
         "Every function works elementwise on NumPy arrays, so no loop over points is needed.",
    cases=_network_cases, run=_network_run, judge=_network_judge,
    describe=lambda c: f"{len(c['xs'])} inputs, {len(c['outer'])} hidden nodes, {len(c['xs'][0])} points",
)

# ---- part 3: an exact network for the power mean ------------------------------------------------------


def _power_cases(gen, hidden):
    fixed = [(2.0, 2), (1.0, 3), (0.5, 4)]
    extra = [(choice(gen, [-1.0, 0.5, 1.5, 2.0, 3.0, -0.5]), randint(gen, 2, 6)) for _ in range(5)] if hidden else []
    return [{"p": p, "n": n, "xs": rand(gen, n, 40, lo=0.1, hi=3.0).numpy()} for p, n in fixed + extra]


def _power_run(answer, case):
    inner, outer = answer(case["p"], case["n"])
    structure = [len(inner), [len(row) for row in inner], len(outer)]
    total = 0.0
    for Phi, row in zip(outer, inner):  # compose here, so the part tests the functions, not part 2
        total = total + Phi(sum(phi(np.array(x)) for phi, x in zip(row, case["xs"])))
    return {"structure": structure, "values": np.asarray(total, dtype=np.float64)}


def _power_judge(case, out):
    n, p = case["n"], case["p"]
    if not isinstance(out, dict) or "structure" not in out:
        return f"expected power_mean_network to return (inner, outer), got {out!r:.80}"
    n_hidden, row_lengths, n_outer = out["structure"]
    if n_hidden != 1 or n_outer != 1:
        return f"expected one hidden node (len(inner) == len(outer) == 1), got {n_hidden} inner rows, {n_outer} outer"
    if row_lengths != [n]:
        return f"expected the hidden node to have n = {n} inner functions, got {row_lengths[0]}"
    expected = np.mean(case["xs"] ** p, axis=0) ** (1 / p)
    got = out["values"]
    if not isinstance(got, np.ndarray) or got.shape != expected.shape:
        return f"expected the network to give {expected.shape[0]} values, got shape {getattr(got, 'shape', None)}"
    if not np.allclose(got, expected, rtol=1e-10, atol=1e-12):
        i = int(np.argmax(np.abs(got - expected)))
        point = ", ".join(f"{x[i]:.4f}" for x in case["xs"])
        return f"at x = ({point}) expected M_p = {expected[i]:.10g}, got {got[i]:.10g}"
    return None


POWER = Part(
    name="ex01.power_mean", title="An exact network for the power mean", answer="power_mean_network",
    points=3, minutes=10, seconds=1,
    hint="M_p(x) = ((x_1^p + ... + x_n^p) / n)^(1/p): which function of one variable turns each x_i into a "
         "summand, and which one turns the sum into M_p?",
    cases=_power_cases, run=_power_run, judge=_power_judge,
    describe=lambda c: f"p = {c['p']}, n = {c['n']}",
)

# ---- part 4: Köppen's psi in exact arithmetic ---------------------------------------------------------


def _psi_cases(gen, hidden):
    configs = [(6, 2, 3), (6, 2, 4), (8, 3, 3)]
    if hidden:
        configs += [(choice(gen, [6, 7, 8, 9]), 2, randint(gen, 1, 4)),
                    (choice(gen, [8, 9, 10]), 3, randint(gen, 2, 3)),
                    (10, 4, 2), (choice(gen, [6, 7]), 2, 5)]
    cases = []
    for gamma, n, k in configs:
        top = gamma**k
        ms = [0, top, gamma - 1, top - 1, top // 3] + [randint(gen, 0, top) for _ in range(5 if hidden else 3)]
        cases.append({"gamma": gamma, "n": n, "k": k, "ms": sorted(set(ms))})
    return cases


def _psi_run(answer, case):
    return [answer(m, case["k"], gamma=case["gamma"], n=case["n"]) for m in case["ms"]]


def _psi_judge(case, out):
    if not isinstance(out, list) or len(out) != len(case["ms"]):
        return f"expected one value per point, got {out!r:.80}"
    for m, got in zip(case["ms"], out):
        expected = answers.koppen_psi(m, case["k"], gamma=case["gamma"], n=case["n"])
        if isinstance(got, torch.Tensor) or not isinstance(got, (Fraction, int)):
            return (f"psi({m}, {case['k']}) should be an exact fractions.Fraction, got {type(got).__name__} "
                    f"{got!r:.40}")
        if Fraction(got) != expected:
            return f"expected psi({m}, {case['k']}) = {expected}, got {got}"
    return None


PSI = Part(
    name="ex01.koppen_psi", title="Köppen's inner function for any base and dimension", answer="koppen_psi",
    points=3, minutes=20, seconds=2,
    hint="Write m = gamma * head + digit (divmod). The steps have size gamma^-beta(k) with "
         "beta(k) = (n^k - 1) / (n - 1); "
         "a last digit gamma - 1 goes halfway to the next coarse point. Fraction keeps it exact; memoise with a dict.",
    cases=_psi_cases, run=_psi_run, judge=_psi_judge,
    describe=lambda c: f"gamma = {c['gamma']}, n = {c['n']}, level k = {c['k']}, m in {c['ms'][:4]}...",
)

EXERCISE = Exercise(id="ex01", notebook="01_kolmogorov_arnold_theorem", title="The Kolmogorov-Arnold theorem",
                    parts=(COUNTS, NETWORK, POWER, PSI))
