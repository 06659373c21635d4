"""Exercise 05, interpretability: the sparsity penalty, affine fits and scores, attribution scores."""

from __future__ import annotations

import math

import torch

from . import answers
from .parts import Exercise, Part, as_number, choice, close, is_number, is_tensor, rand, randint

_SYMBOLIC = ("kanedu.symbolic",)


def _phi_cases(gen, hidden, zero_edge_first=True):
    shapes = [(50, 2, 3), (80, 1, 2), (40, 5, 2)] + ([(randint(gen, 20, 100), randint(gen, 1, 5), randint(gen, 1, 5))
                                                       for _ in range(5)] if hidden else [])
    cases = []
    for i, (N, n_out, n_in) in enumerate(shapes):
        magnitude = torch.exp(rand(gen, n_out, n_in, lo=-4, hi=1))  # edges of very different sizes
        phi = magnitude * torch.randn(N, n_out, n_in, generator=gen, dtype=torch.float64) + \
            0.1 * magnitude * rand(gen, N, 1, 1, lo=-1, hi=1)
        if n_in > 1 and ((i == 0 and zero_edge_first) or (hidden and i % 3 == 2)):
            phi[:, 0, 0] = 0.0  # a pruned (masked) edge: exactly zero
        x = rand(gen, N, n_in, lo=-1, hi=1) * torch.exp(rand(gen, 1, n_in, lo=-2, hi=1))  # inputs of varied spread
        scores = torch.exp(rand(gen, n_out, lo=-3, hi=0))  # the scores of the nodes the edges feed
        cases.append({"phi": phi, "x": x, "scores": scores, "mu": choice(gen, [2.0, 1.0, 0.5]) if hidden else 2.0})
    return cases


def _describe_phi(c):
    N, n_out, n_in = c["phi"].shape
    zero = " (edge 0 -> 0 is exactly zero)" if bool((c["phi"][:, 0, 0] == 0).all()) else ""
    return f"{N} samples, {n_in} inputs, {n_out} outputs, mu = {c['mu']}{zero}"


def _penalty_judge(case, out):
    msg = is_number(out, "the penalty")
    if msg:
        return msg
    expected = answers.sparsity_penalty(case["phi"], case["x"], case["mu"]).item()
    got = float(as_number(out))
    if not math.isclose(got, expected, rel_tol=1e-8, abs_tol=1e-10):
        return f"expected R = {expected:.10g}, got {got:.10g}"
    return None


PENALTY = Part(
    name="ex05.sparsity_penalty", title="The sparsity penalty of one layer", answer="sparsity_penalty",
    points=3, minutes=15, seconds=1,
    hint="s = phi.std(0) / (x.std(0) + 0.1) has shape [out, in] (phi.std(0) is [out, in], x.std(0) is [in] and "
         "broadcasts); p_row = s / (s.sum(1, keepdim=True) + 1), p_col = s / (s.sum(0, keepdim=True) + 1); the row "
         "entropy is -(p_row * torch.log2(p_row + 1e-4)).sum(1).mean(), the column one sums over dim 0.",
    cases=_phi_cases, run=lambda answer, c: answer(c["phi"].clone(), c["x"].clone(), c["mu"]), judge=_penalty_judge,
    describe=_describe_phi,
    forbidden=("kanedu.models:KAN.regularization_loss", "kanedu.models:KAN.edge_statistics"),
)

_FUNCTIONS = {"x": lambda u: u, "x^2": lambda u: u**2, "sin": torch.sin, "exp": torch.exp, "tanh": torch.tanh}


def _fit_cases(gen, hidden):
    names = ["sin", "x^2", "exp"] + ([choice(gen, sorted(_FUNCTIONS)) for _ in range(5)] if hidden else [])
    cases = []
    for name in names:
        x = rand(gen, 200, lo=-1, hi=1)
        a, b = float(rand(gen, 1, lo=0.5, hi=3.0)), float(rand(gen, 1, lo=-1.0, hi=1.0))
        c, d = float(rand(gen, 1, lo=-2.0, hi=2.0)), float(rand(gen, 1, lo=-1.0, hi=1.0))
        noise = float(rand(gen, 1, lo=0.0, hi=0.3))
        y = c * _FUNCTIONS[name](a * x + b) + d + noise * torch.randn(200, generator=gen, dtype=torch.float64)
        cases.append({"x": x, "y": y, "f": name, "a": a, "b": b})
    return cases


def _fit_judge(case, out):
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        return f"expected a triple (c, d, r2), got {type(out).__name__}"
    for what, v in zip(("c", "d", "r2"), out):
        msg = is_number(v, what)
        if msg:
            return msg
    expected = answers.fit_cd(case["x"], case["y"], _FUNCTIONS[case["f"]], case["a"], case["b"])
    for what, got, want in zip(("c", "d", "r2"), out, expected):
        got = float(as_number(got))
        if not math.isclose(got, want, rel_tol=1e-8, abs_tol=1e-10):
            return f"expected {what} = {want:.10g}, got {got:.10g}"
    return None


FIT = Part(
    name="ex05.fit_cd", title="Fitting c f(a x + b) + d for fixed a, b", answer="fit_cd",
    points=3, minutes=15, seconds=1,
    hint="With u = f(a x + b) this is a straight-line fit y ~ c u + d: c = cov(u, y) / var(u), "
         "d = mean(y) - c mean(u); "
         "R^2 = 1 - sum (y - c u - d)^2 / sum (y - mean y)^2.",
    cases=_fit_cases,
    run=lambda answer, c: answer(c["x"].clone(), c["y"].clone(), _FUNCTIONS[c["f"]], c["a"], c["b"]),
    judge=_fit_judge, describe=lambda c: f"f = {c['f']}, a = {c['a']:.4f}, b = {c['b']:.4f}, {len(c['x'])} samples",
    forbidden=_SYMBOLIC,
)

_LIBRARY = {"x": 1, "x^2": 2, "x^3": 3, "exp": 2, "sin": 2, "tanh": 3, "log": 2, "sqrt": 2, "gaussian": 3, "1/x": 2}


def _score_cases(gen, hidden):
    cases = [
        {"r2": {"x": 0.9, "x^2": 0.99999, "sin": 0.9999999, "exp": 0.99}, "complexity": {k: _LIBRARY[k] for k in
                                                                                        ("x", "x^2", "sin", "exp")}},
        {"r2": {"x": 1.0, "sin": 1.0, "tanh": 0.2}, "complexity": {"x": 1, "sin": 2, "tanh": 3}},
        {"r2": {"x": -0.5, "exp": 0.95, "log": 0.5}, "complexity": {"x": 1, "exp": 2, "log": 2}},
    ]
    while len(cases) < (8 if hidden else 3):
        names = sorted(_LIBRARY)[: randint(gen, 2, len(_LIBRARY))]
        r2 = {n: round(1 - 10 ** float(rand(gen, 1, lo=-8, hi=0.3)), 12) for n in names}
        scores = sorted((answers.symbolic_score(v, _LIBRARY[n]) for n, v in r2.items()), reverse=True)
        if scores[0] - scores[1] > 1e-3:  # a clear winner: ties have no single right answer
            cases.append({"r2": r2, "complexity": {n: _LIBRARY[n] for n in names}})
    for case in cases:
        case["cap"] = 6.0
    return cases


def _score_judge(case, out):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return f"expected a pair (name, score), got {type(out).__name__}"
    name, score = out
    scores = {n: answers.symbolic_score(r2, case["complexity"][n], case["cap"]) for n, r2 in case["r2"].items()}
    best = max(scores, key=scores.get)
    if name != best:
        table = ", ".join(f"{n}: {s:.3f}" for n, s in scores.items())
        return f"expected {best!r} (scores {table}), got {name!r}"
    msg = is_number(score, "the score")
    if msg:
        return msg
    if not math.isclose(float(as_number(score)), scores[best], rel_tol=1e-9, abs_tol=1e-9):
        return f"expected the score of {best!r} to be {scores[best]:.10g}, got {float(as_number(score)):.10g}"
    return None


SCORE = Part(
    name="ex05.best_candidate", title="Ranking candidate functions", answer="best_candidate",
    points=2, minutes=10, seconds=1,
    hint="score = min(-log10(1 - R^2), cap) - complexity; R^2 = 1 would divide by zero, count it as cap, and a "
         "negative quality (R^2 < 0) as 0. Return the name with the highest score, and that score.",
    cases=_score_cases, run=lambda answer, c: answer(dict(c["r2"]), dict(c["complexity"]), cap=c["cap"]),
    judge=_score_judge, describe=lambda c: f"candidates {sorted(c['r2'])}", forbidden=_SYMBOLIC,
)


def _scores_judge(case, out):
    expected = answers.edge_scores(case["phi"], case["scores"])
    msg = is_tensor(out, expected.shape, torch.float64, "the scores")
    return msg or close(out, expected, rtol=1e-8, atol=1e-10, what="score[out, in]")


SCORES = Part(
    name="ex05.edge_scores", title="Attribution: the score of each edge", answer="edge_scores",
    points=2, minutes=10, seconds=1,
    hint="phi.std(0) is the spread of every edge [out, in]; phi.sum(-1).std(0) the spread of every node's sum "
         "[out]; divide the first by the second (+ 1e-4) along dim 0 and multiply by the node scores, "
         "unsqueezed to [out, 1].",
    cases=lambda gen, hidden: _phi_cases(gen, hidden, zero_edge_first=False),
    run=lambda answer, c: answer(c["phi"].clone(), c["scores"].clone()), judge=_scores_judge,
    describe=_describe_phi, forbidden=("kanedu.models:KAN.attribution", "kanedu.models:KAN.attribute",
                                       "kanedu.models:KAN.prune", "kanedu.models:KAN.edge_statistics"),
)

EXERCISE = Exercise(id="ex05", notebook="05_interpretability", title="Interpretability",
                    parts=(PENALTY, FIT, SCORE, SCORES))
