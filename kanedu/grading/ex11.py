"""Exercise 11, myths and facts: the arithmetic of checking a claim (timing ratios, paired seeds,
selection on validation, a verdict written from the numbers).

The reference answers live here (kanedu computes none of them elsewhere) and are switched off by name
while a student's answer runs, like :mod:`kanedu.grading.answers`.
"""

from __future__ import annotations

import math
import statistics

from .parts import Exercise, Part, as_number, is_number, rand, randint

_HERE = "kanedu.grading.ex11"


# ---- the reference answers ----------------------------------------------------------------------------

def _step_ratio(times_a: list[float], times_b: list[float]) -> tuple[float, float, float]:
    """Per-round ratios r_i = a_i / b_i of interleaved timings: (median r, min r, max r)."""
    ratios = [a / b for a, b in zip(times_a, times_b)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _paired_differences(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Per-seed differences d_i = a_i - b_i: (mean d, sample standard deviation of d, #seeds with a_i < b_i)."""
    d = [x - y for x, y in zip(a, b)]
    return statistics.mean(d), statistics.stdev(d), sum(x < y for x, y in zip(a, b))


def _pick_on_validation(val: list[float], test: list[float]) -> tuple[int, float]:
    """The candidate with the smallest validation loss (the first on a tie) and its test loss."""
    best = min(range(len(val)), key=lambda i: (val[i], i))
    return best, test[best]


def _verdict(a: list[float], b: list[float], margin: float) -> str:
    """Lower is better: "A" if a_i < b_i - margin on every seed, "B" if b_i < a_i - margin on every seed,
    otherwise "no clear difference"."""
    if all(x < y - margin for x, y in zip(a, b)):
        return "A"
    if all(y < x - margin for x, y in zip(a, b)):
        return "B"
    return "no clear difference"


_REFERENCES = tuple(f"{_HERE}:{name}" for name in ("_step_ratio", "_paired_differences", "_pick_on_validation",
                                                    "_verdict"))


# ---- helpers ------------------------------------------------------------------------------------------

def _floats(gen, n, lo, hi):
    return [float(v) for v in rand(gen, n, lo=lo, hi=hi)]


def _numbers_judge(expected, out, names, integer=(), rtol=1e-9):
    """None if ``out`` is a tuple/list of len(names) numbers equal to ``expected`` (rtol), else a message."""
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        return f"expected a tuple ({', '.join(names)}), got {out!r:.100}"
    for name, got, want in zip(names, out, expected):
        msg = is_number(got, name, integer=name in integer)
        if msg:
            return msg
        got = as_number(got)
        if not math.isclose(got, want, rel_tol=rtol, abs_tol=1e-12):
            return f"{name}: expected {want:.10g}, got {got:.10g}"
    return None


# ---- part 1: a timing ratio from interleaved rounds ------------------------------------------------------

def _ratio_cases(gen, hidden):
    fixed = [([2.0e-3, 2.2e-3, 1.9e-3], [5e-4, 5e-4, 4e-4]), ([0.1, 0.3], [0.1, 0.1]),
             ([4.0, 1.0, 2.0, 8.0, 3.0], [1.0, 1.0, 1.0, 2.0, 1.0])]
    cases = [{"a": a, "b": b} for a, b in fixed]
    if hidden:
        for _ in range(5):
            n = randint(gen, 2, 9)
            cases.append({"a": _floats(gen, n, 1e-4, 1e-1), "b": _floats(gen, n, 1e-4, 1e-1)})
    return cases


STEP_RATIO = Part(
    name="ex11.step_ratio", title="A timing ratio with its spread", answer="step_ratio",
    points=2, minutes=5, seconds=1,
    hint="Divide round by round (times_a[i] / times_b[i]); statistics.median, min and max of those ratios. "
         "Do not divide the medians of the two lists: the point of interleaving is to compare within a round.",
    cases=_ratio_cases, run=lambda answer, c: answer(list(c["a"]), list(c["b"])),
    judge=lambda c, out: _numbers_judge(_step_ratio(c["a"], c["b"]), out, ("median", "min", "max")),
    describe=lambda c: f"{len(c['a'])} rounds", forbidden=_REFERENCES,
)


# ---- part 2: paired differences over seeds ------------------------------------------------------------

def _paired_cases(gen, hidden):
    fixed = [([1.70, 1.68, 1.72], [1.62, 1.63, 1.60]), ([0.95, 0.97], [0.97, 0.96]),
             ([0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.2, 0.2])]
    cases = [{"a": a, "b": b} for a, b in fixed]
    if hidden:
        for _ in range(5):
            n = randint(gen, 2, 10)
            cases.append({"a": _floats(gen, n, 0.0, 3.0), "b": _floats(gen, n, 0.0, 3.0)})
    return cases


PAIRED = Part(
    name="ex11.paired_differences", title="Paired differences over seeds", answer="paired_differences",
    points=3, minutes=10, seconds=1,
    hint="d_i = a_i - b_i for each seed; return (statistics.mean(d), statistics.stdev(d), the number of seeds with "
         "a_i < b_i). stdev is the sample standard deviation (divides by n - 1).",
    cases=_paired_cases, run=lambda answer, c: answer(list(c["a"]), list(c["b"])),
    judge=lambda c, out: _numbers_judge(_paired_differences(c["a"], c["b"]), out, ("mean", "std", "wins"),
                                        integer=("wins",)),
    describe=lambda c: f"{len(c['a'])} seeds", forbidden=_REFERENCES,
)


# ---- part 3: select on validation, report test -------------------------------------------------------

def _pick_cases(gen, hidden):
    fixed = [([0.30, 0.10, 0.20], [0.25, 0.12, 0.05]), ([0.5, 0.5, 0.7], [0.9, 0.1, 0.2]), ([1.0], [2.0])]
    cases = [{"val": v, "test": t} for v, t in fixed]
    if hidden:
        for _ in range(5):
            n = randint(gen, 1, 8)
            cases.append({"val": _floats(gen, n, 0.0, 1.0), "test": _floats(gen, n, 0.0, 1.0)})
    return cases


PICK = Part(
    name="ex11.pick_on_validation", title="Choose on validation, report test", answer="pick_on_validation",
    points=2, minutes=5, seconds=1,
    hint="The index with the smallest validation loss (the first one on a tie, as min() does), and the test loss "
         "at that index: not the smallest test loss.",
    cases=_pick_cases, run=lambda answer, c: answer(list(c["val"]), list(c["test"])),
    judge=lambda c, out: _numbers_judge(_pick_on_validation(c["val"], c["test"]), out, ("index", "test loss"),
                                        integer=("index",)),
    describe=lambda c: f"{len(c['val'])} candidates", forbidden=_REFERENCES,
)


# ---- part 4: the verdict ------------------------------------------------------------------------------

def _verdict_cases(gen, hidden):
    fixed = [([0.01, 0.02, 0.01], [0.06, 0.05, 0.09], 0.0), ([1.70, 1.68, 1.72], [1.62, 1.63, 1.60], 0.02),
             ([0.20, 0.17], [0.18, 0.18], 0.0), ([0.5, 0.5], [0.6, 0.6], 0.1)]
    cases = [{"a": a, "b": b, "margin": m} for a, b, m in fixed]
    if hidden:
        for _ in range(6):
            n = randint(gen, 2, 6)
            a = _floats(gen, n, 0.0, 1.0)
            shift = float(rand(gen, 1, lo=-0.6, hi=0.6))
            cases.append({"a": a, "b": [x + shift + 0.05 * float(rand(gen, 1, lo=-1, hi=1)) for x in a],
                          "margin": float(rand(gen, 1, lo=0.0, hi=0.1))})
    return cases


def _verdict_judge(case, out):
    if not isinstance(out, str):
        return f'expected one of "A", "B", "no clear difference", got {out!r:.80}'
    expected = _verdict(case["a"], case["b"], case["margin"])
    return None if out == expected else f'expected "{expected}", got "{out}"'


VERDICT = Part(
    name="ex11.verdict", title="A verdict written from the numbers", answer="verdict",
    points=3, minutes=10, seconds=1,
    hint='Lower is better. "A" only if a_i < b_i - margin holds on every seed, "B" only if b_i < a_i - margin '
         'holds on every seed; anything else (mixed seeds, or differences within the margin) is "no clear difference".',
    cases=_verdict_cases, run=lambda answer, c: answer(list(c["a"]), list(c["b"]), c["margin"]),
    judge=_verdict_judge,
    describe=lambda c: f"{len(c['a'])} seeds, margin {c['margin']:.3g}", forbidden=_REFERENCES,
)

EXERCISE = Exercise(id="ex11", notebook="11_myths_and_facts", title="Myths and facts",
                    parts=(STEP_RATIO, PAIRED, PICK, VERDICT))
