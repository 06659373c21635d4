"""Exercise 06, MLP vs KAN I: parameter counts, a parameter-matched MLP, the baseline's forward pass."""

from __future__ import annotations

import torch

from kanedu import KAN, MLP, count_parameters, matched_mlp

from .parts import Exercise, Part, close, int_judge, is_tensor, rand, randint

# kanedu.models holds every answer of this exercise (MLP, KAN, count_parameters, matched_mlp, ...).
_MODELS = ("kanedu.models", "kanedu.layers")


def _widths(gen, depth_lo=2, depth_hi=4, width_hi=12):
    return [randint(gen, 1, width_hi) for _ in range(randint(gen, depth_lo, depth_hi))]



def _mlp_count_cases(gen, hidden):
    fixed = [[2, 5, 1], [1, 12, 12, 1], [8, 3]]
    return [{"widths": w} for w in fixed + ([_widths(gen, 2, 5, 64) for _ in range(6)] if hidden else [])]


MLP_PARAMS = Part(
    name="ex06.mlp_params", title="Parameters of an MLP", answer="mlp_parameters",
    points=2, minutes=5, seconds=1,
    hint="A linear layer from a to b nodes has a weight matrix [b, a] and a bias [b].",
    cases=_mlp_count_cases, run=lambda answer, c: answer(list(c["widths"])),
    judge=int_judge(lambda c: count_parameters(MLP(c["widths"], seed=0)), "the parameter count"),
    describe=lambda c: f"widths = {c['widths']}", forbidden=_MODELS,
)


def _kan_count_cases(gen, hidden):
    fixed = [([2, 5, 1], 5, 3), ([2, 1, 1], 20, 3), ([4, 4, 4, 1], 8, 1)]
    extra = [(_widths(gen, 2, 4, 8), randint(gen, 1, 30), randint(gen, 0, 4)) for _ in range(5)]
    return [{"widths": w, "G": G, "k": k} for w, G, k in fixed + (extra if hidden else [])]


KAN_PARAMS = Part(
    name="ex06.kan_params", title="Parameters of a KAN", answer="kan_parameters",
    points=2, minutes=5, seconds=1,
    hint="Lesson 03 counted one layer: n_in n_out (G + k + 2). A KAN adds its layers up.",
    cases=_kan_count_cases, run=lambda answer, c: answer(list(c["widths"]), c["G"], c["k"]),
    judge=int_judge(lambda c: count_parameters(KAN(c["widths"], grid_size=c["G"], spline_order=c["k"], seed=0)),
                     "the parameter count"),
    describe=lambda c: f"widths = {c['widths']}, G = {c['G']}, k = {c['k']}", forbidden=_MODELS,
)


def _matched_cases(gen, hidden):
    fixed = [(150, 2, 1, 1), (150, 2, 1, 2), (815, 1, 1, 2)]
    extra = [(randint(gen, 20, 20_000), randint(gen, 1, 6), randint(gen, 1, 3), randint(gen, 1, 4)) for _ in range(6)]
    return [{"n_params": n, "n_in": a, "n_out": b, "hidden_layers": L}
            for n, a, b, L in fixed + (extra if hidden else [])]


def _matched_expected(c):
    mlp = matched_mlp(c["n_params"], in_features=c["n_in"], out_features=c["n_out"], hidden_layers=c["hidden_layers"],
                      tol=float("inf"))
    return mlp.widths[1]


MATCHED = Part(
    name="ex06.matched_width", title="A parameter-matched MLP", answer="matched_width",
    points=3, minutes=15, seconds=1,
    hint="Try widths h = 1, 2, ... of [n_in, h, ..., h, n_out] and keep the h whose parameter count is closest to "
         "n_params (on a tie the smaller h); the count grows with h, so you can stop once it passes n_params.",
    cases=_matched_cases,
    run=lambda answer, c: answer(c["n_params"], c["n_in"], c["n_out"], c["hidden_layers"]),
    judge=int_judge(_matched_expected, "the hidden width"),
    describe=lambda c: (f"n_params = {c['n_params']}, n_in = {c['n_in']}, n_out = {c['n_out']}, "
                        f"{c['hidden_layers']} hidden layer(s)"),
    forbidden=_MODELS,
)


def _forward_cases(gen, hidden):
    shapes = [[2, 5, 1], [1, 4, 4, 2], [3, 1]] + ([_widths(gen, 2, 5, 10) for _ in range(5)] if hidden else [])
    cases = []
    for widths in shapes:
        weights = [torch.randn(b, a, generator=gen, dtype=torch.float64) / a**0.5 for a, b in zip(widths, widths[1:])]
        biases = [torch.randn(b, generator=gen, dtype=torch.float64) for b in widths[1:]]
        cases.append({"x": rand(gen, 30, widths[0], lo=-2, hi=2), "weights": weights, "biases": biases,
                      "widths": widths})
    return cases


def _forward_judge(case, out):
    model = MLP(case["widths"], activation="silu", seed=0, dtype=torch.float64)
    with torch.no_grad():
        for lin, w, b in zip(model.linears, case["weights"], case["biases"]):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        expected = model(case["x"])
    msg = is_tensor(out, expected.shape, torch.float64, "the output")
    return msg or close(out, expected, rtol=1e-9, atol=1e-12, what="y")


FORWARD = Part(
    name="ex06.mlp_forward", title="The baseline's forward pass", answer="mlp_forward",
    points=3, minutes=10, seconds=1,
    hint="h = x; for each layer h = h @ W.T + b, then SiLU (torch.nn.functional.silu) after every layer but the last.",
    cases=_forward_cases,
    run=lambda answer, c: answer(c["x"].clone(), [w.clone() for w in c["weights"]], [b.clone() for b in c["biases"]]),
    judge=_forward_judge, describe=lambda c: f"widths = {c['widths']}, {c['x'].shape[0]} inputs",
    forbidden=("kanedu.models:MLP",),
)

EXERCISE = Exercise(id="ex06", notebook="06_mlp_vs_kan_function_fitting", title="MLP vs KAN I: function fitting",
                    parts=(MLP_PARAMS, KAN_PARAMS, MATCHED, FORWARD))
