"""Exercise 04, training and grid extension: refit to a finer grid, an Adam loop, overfitting, slopes."""

from __future__ import annotations

import math

import numpy as np
import torch

from kanedu import MLP
from kanedu.splines import coef_to_curve, curve_to_coef, uniform_grid

from . import answers
from .parts import Exercise, Part, as_number, choice, close, is_number, is_tensor, rand, randint


def _extend_cases(gen, hidden):
    configs = [(1, 1, 3, 10, 3), (2, 3, 5, 10, 3), (3, 2, 4, 9, 2)]
    if hidden:
        for _ in range(5):
            G = randint(gen, 3, 6)
            configs.append((randint(gen, 1, 3), randint(gen, 1, 3), G, G + randint(gen, 2, 6), randint(gen, 1, 3)))
    cases = []
    for n_in, n_out, G, G_new, k in configs:
        lows = rand(gen, n_in, lo=-1.5, hi=-0.5)
        highs = lows + rand(gen, n_in, lo=1.0, hi=2.5)
        grid = torch.stack([uniform_grid(G, k, (float(a), float(b)), dtype=torch.float64) for a, b in zip(lows, highs)])
        new_grid = torch.stack([uniform_grid(G_new, k, (float(a), float(b)), dtype=torch.float64)
                                for a, b in zip(lows, highs)])
        x = lows + (highs - lows) * rand(gen, 200, n_in)
        coef = torch.randn(n_in, n_out, G + k, generator=gen, dtype=torch.float64)
        cases.append({"x": x, "coef": coef, "grid": grid, "new_grid": new_grid, "k": k})
    return cases


def _extend_judge(case, out):
    x, k, new_grid = case["x"], case["k"], case["new_grid"]
    n_in, n_out, _ = case["coef"].shape
    shape = (n_in, n_out, new_grid.shape[1] - k - 1)
    msg = is_tensor(out, shape, torch.float64, "the new coefficients")
    if msg:
        return msg
    old = coef_to_curve(x, case["grid"], case["coef"], k)
    reference = curve_to_coef(x, old, new_grid, k)
    scale = 1 + old.abs().max().item()
    return close(coef_to_curve(x, new_grid, out, k), coef_to_curve(x, new_grid, reference, k), rtol=1e-7,
                 atol=1e-9 * scale, what="the new spline at [sample, input, output] ")


EXTEND = Part(
    name="ex04.extend_coef", title="Grid extension by least squares", answer="extend_coef",
    points=4, minutes=20, seconds=1,
    hint="Evaluate the old splines on the samples, y[n, i, o] = sum_m coef[i, o, m] B_m(x[n, i]) with "
         "bspline_basis(x, grid, k); then, for every input i, solve min |B_new[:, i] c - y[:, i, :]|^2 with "
         "torch.linalg.lstsq, where B_new = bspline_basis(x, new_grid, k) is [N, in, G' + k].",
    cases=_extend_cases,
    run=lambda answer, c: answer(c["x"].clone(), c["coef"].clone(), c["grid"].clone(), c["new_grid"].clone(), c["k"]),
    judge=_extend_judge,
    describe=lambda c: (f"in = {c['coef'].shape[0]}, out = {c['coef'].shape[1]}, k = {c['k']}, G = "
                        f"{c['grid'].shape[1] - 2 * c['k'] - 1} -> {c['new_grid'].shape[1] - 2 * c['k'] - 1}, "
                        f"{c['x'].shape[0]} samples"),
    forbidden=("kanedu.splines:curve_to_coef", "kanedu.splines:coef_to_curve", "kanedu.layers", "kanedu.fused",
               "kanedu.models:KAN.refine", "kanedu.models:KAN.update_grid", "scipy.interpolate:make_lsq_spline"),
)


def _train_cases(gen, hidden):
    configs = [([2, 8, 1], 20, 0.01), ([1, 6, 6, 1], 15, 0.03)]
    if hidden:
        configs += [([randint(gen, 1, 3), randint(gen, 3, 10), 1], randint(gen, 10, 25),
                     choice(gen, [0.003, 0.01, 0.05])) for _ in range(3)]
    cases = []
    for widths, steps, lr in configs:
        x = rand(gen, 64, widths[0], lo=-1, hi=1)
        y = torch.sin(3 * x).sum(1, keepdim=True) + 0.1 * torch.randn(64, 1, generator=gen, dtype=torch.float64)
        data = {"train_input": x, "train_label": y, "test_input": x[:8].clone(), "test_label": y[:8].clone()}
        cases.append({"widths": widths, "seed": randint(gen, 0, 10_000), "steps": steps, "lr": lr, "dataset": data})
    return cases


def _model(case) -> MLP:
    """The case's MLP, its weights drawn from the case's seed in float64 (whatever the default dtype of the
    process: MLP's own seeded initialisation draws in the default dtype, which a notebook may change)."""
    model = MLP(case["widths"], seed=0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for lin in model.linears:
            bound = 1.0 / math.sqrt(lin.in_features)
            for p in (lin.weight, lin.bias):
                p.copy_(rand(gen, *p.shape, lo=-bound, hi=bound))
    return model


def _train_run(answer, case):
    model = _model(case)
    data = {name: v.clone() for name, v in case["dataset"].items()}
    losses = answer(model, data, case["steps"], case["lr"])
    return {"losses": losses, "params": [p.detach().clone() for p in model.parameters()]}


def _train_judge(case, out):
    if not isinstance(out, dict) or "losses" not in out:
        return "malformed result"
    losses = out["losses"]
    if isinstance(losses, torch.Tensor):
        losses = losses.tolist()
    if not isinstance(losses, (list, tuple)) or len(losses) != case["steps"]:
        return f"expected a list of {case['steps']} losses (one per step), got {type(losses).__name__} " \
               f"of length {len(losses) if hasattr(losses, '__len__') else '?'}"
    for i, v in enumerate(losses):
        msg = is_number(v, f"loss {i}")
        if msg:
            return msg
    model = _model(case)
    expected = answers.train_adam(model, case["dataset"], case["steps"], case["lr"])
    got = torch.tensor([float(as_number(v)) for v in losses], dtype=torch.float64)
    msg = close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-12, what="loss")
    if msg:
        return f"{msg} (the losses are the full-batch MSE before each step)"
    params = out["params"]
    reference = [p.detach() for p in model.parameters()]
    if not isinstance(params, list) or len(params) != len(reference):
        return "the model's parameters changed in number"
    for i, (p, q) in enumerate(zip(params, reference)):
        msg = is_tensor(p, q.shape, None, f"parameter {i}") or close(p, q, rtol=1e-5, atol=1e-8, what=f"parameter {i}")
        if msg:
            return f"the losses match but the trained weights do not: {msg}"
    return None


TRAIN = Part(
    name="ex04.train_adam", title="A full-batch Adam loop", answer="train_adam",
    points=3, minutes=15, seconds=2,
    hint="opt = torch.optim.Adam(model.parameters(), lr=lr); every step: opt.zero_grad(), loss = mean squared "
         "error of model(train_input) against train_label, loss.backward(), opt.step(); record loss.item() "
         "before the step.",
    cases=_train_cases, run=_train_run, judge=_train_judge,
    describe=lambda c: f"MLP {c['widths']} (seed {c['seed']}), {c['steps']} steps at lr = {c['lr']}",
    forbidden=("kanedu.train:fit", "kanedu.fused", "kanedu.lbfgs"),
)


def _overfit_cases(gen, hidden):
    fixed = [([2, 5, 1], 3, 300), ([2, 5, 1], 3, 1000), ([2, 1, 1], 3, 1000)]
    extra = [([randint(gen, 1, 6) for _ in range(randint(gen, 2, 4))], randint(gen, 0, 5), randint(gen, 100, 20_000))
             for _ in range(6)]
    return [{"widths": w, "k": k, "n_train": n} for w, k, n in fixed + (extra if hidden else [])]


def _overfit_judge(case, out):
    msg = is_number(out, "G", integer=True)
    if msg:
        return msg
    expected = answers.overfit_grid(case["widths"], case["k"], case["n_train"])
    got = int(as_number(out))
    return None if got == expected else f"expected G = {expected}, got {got}"


OVERFIT = Part(
    name="ex04.overfit_grid", title="When does a KAN have more parameters than data?", answer="overfit_grid",
    points=2, minutes=10, seconds=1,
    hint="KAN(widths) has sum_l widths[l] * widths[l + 1] edges, each with G + k + 2 parameters; find the "
         "smallest integer G >= 1 with more parameters than n_train (a loop over G is fine).",
    cases=_overfit_cases, run=lambda answer, c: answer(list(c["widths"]), c["k"], c["n_train"]),
    judge=_overfit_judge,
    describe=lambda c: f"widths = {c['widths']}, k = {c['k']}, n_train = {c['n_train']}",
    forbidden=("kanedu.models", "kanedu.layers"),
)


def _slope_cases(gen, hidden):
    cases = []
    for _ in range(6 if hidden else 3):
        G = sorted({randint(gen, 2, 200) for _ in range(randint(gen, 4, 7))})
        while len(G) < 3:
            G.append(G[-1] + randint(gen, 1, 20))
        s = float(rand(gen, 1, lo=0.5, hi=5.0))
        noise = torch.exp(0.2 * torch.randn(len(G), generator=gen, dtype=torch.float64))
        errors = (0.3 * torch.tensor(G, dtype=torch.float64) ** -s * noise).tolist()
        cases.append({"G": G, "errors": errors})
    return cases


def _slope_judge(case, out):
    msg = is_number(out, "the slope")
    if msg:
        return msg
    expected = float(np.polyfit(np.log(case["G"]), np.log(case["errors"]), 1)[0])
    got = float(as_number(out))
    if not math.isclose(got, expected, rel_tol=1e-8, abs_tol=1e-10):
        return f"expected slope {expected:.8g}, got {got:.8g}"
    return None


SLOPE = Part(
    name="ex04.loglog_slope", title="The slope of a staircase", answer="loglog_slope",
    points=1, minutes=5, seconds=1,
    hint="Fit a straight line to the points (log G, log error) by least squares (np.polyfit of degree 1 does it); "
         "its slope is the answer.",
    cases=_slope_cases, run=lambda answer, c: answer(list(c["G"]), list(c["errors"])), judge=_slope_judge,
    describe=lambda c: f"G = {c['G']}",
)

EXERCISE = Exercise(id="ex04", notebook="04_training_and_grid_extension", title="Training KANs and grid extension",
                    parts=(EXTEND, TRAIN, OVERFIT, SLOPE))
