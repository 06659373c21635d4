"""Exercise 03, a KAN layer from scratch: one edge, the layer, its parameter count, the features Phi(x)."""

from __future__ import annotations

import torch

from kanedu import KANLayer, count_parameters
from kanedu.splines import uniform_grid

from . import answers
from .parts import Exercise, Part, close, is_number, is_tensor, rand, randint

# KANLayer holds the answers of this exercise (forward, edge_activations, combined_weight, ...), as do
# its kernels; bspline_basis (which may use kanedu.kernels' interval tables) stays on: the exercise
# builds the layer on top of it.
_LAYER = ("kanedu.layers", "kanedu.native", "kanedu.fused", "kanedu.kernels:kan_linear",
          "kanedu.kernels:expanded_features", "kanedu.splines:coef_to_curve")


def _reference_layer(case) -> KANLayer:
    """A KANLayer holding the case's weights and grids (its forward_reference is the judge)."""
    n_in, n_out, n = case["c"].shape
    k = case["k"]
    layer = KANLayer(n_in, n_out, grid_size=n - k, spline_order=k, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.scale_base.copy_(case["w_b"])
        layer.scale_spline.copy_(case["w_s"])
        layer.coef.copy_(case["c"])
        layer.set_grid(case["grid"])
    return layer


def _layer_cases(gen, hidden, shapes=None):
    if shapes is None:
        shapes = [(1, 1, 5, 3), (3, 4, 5, 3), (2, 3, 8, 1)]
        if hidden:
            shapes += [(randint(gen, 1, 4), randint(gen, 1, 4), randint(gen, 3, 10), randint(gen, 1, 3))
                       for _ in range(5)]
    cases = []
    for n_in, n_out, G, k in shapes:
        lows = rand(gen, n_in, lo=-1.5, hi=-0.5)
        highs = lows + rand(gen, n_in, lo=1.0, hi=2.5)
        grid = torch.stack([uniform_grid(G, k, (float(a), float(b)), dtype=torch.float64) for a, b in zip(lows, highs)])
        x = lows + (highs - lows) * rand(gen, 60, n_in, lo=-0.4, hi=1.4)  # some inputs beyond the grid
        cases.append({"x": x, "w_b": torch.randn(n_in, n_out, generator=gen, dtype=torch.float64),
                      "w_s": torch.randn(n_in, n_out, generator=gen, dtype=torch.float64),
                      "c": torch.randn(n_in, n_out, G + k, generator=gen, dtype=torch.float64), "grid": grid, "k": k})
    return cases


def _describe_layer(c):
    n_in, n_out, n = c["c"].shape
    return f"in = {n_in}, out = {n_out}, G = {n - c['k']}, k = {c['k']}, {c['x'].shape[0]} inputs"


def _clone(case, *names):
    return [case[n].clone() for n in names]


def _edge_cases(gen, hidden):
    cases = _layer_cases(gen, hidden, [(1, 1, 5, 3), (1, 1, 7, 2), (1, 1, 4, 1)] if not hidden else
                         [(1, 1, randint(gen, 3, 10), randint(gen, 1, 3)) for _ in range(6)])
    return [{"x": c["x"][:, 0], "w_b": c["w_b"][0, 0].item(), "w_s": c["w_s"][0, 0].item(), "c": c["c"][0, 0],
             "grid": c["grid"][0], "k": c["k"]} for c in cases]


def _edge_judge(case, out):
    layer_case = {"x": case["x"][:, None], "w_b": torch.tensor([[case["w_b"]]], dtype=torch.float64),
                  "w_s": torch.tensor([[case["w_s"]]], dtype=torch.float64), "c": case["c"][None, None],
                  "grid": case["grid"][None], "k": case["k"]}
    with torch.no_grad():
        expected = _reference_layer(layer_case).forward_reference(layer_case["x"])[:, 0]
    msg = is_tensor(out, expected.shape, torch.float64, "phi(x)")
    if msg:
        return msg
    msg = close(out, expected, rtol=1e-9, atol=1e-12, what="phi")
    if msg:
        i = int(torch.argmax((out - expected).abs().nan_to_num(nan=float("inf"))))
        return f"{msg}; at x = {case['x'][i].item():.6g}"
    return None


EDGE = Part(
    name="ex03.edge", title="One edge function", answer="edge",
    points=2, minutes=10, seconds=1,
    hint="phi(x) = w_b * silu(x) + w_s * (bspline_basis(x, grid, k) @ c); torch.nn.functional.silu is the SiLU.",
    cases=_edge_cases,
    run=lambda answer, c: answer(c["x"].clone(), c["w_b"], c["w_s"], c["c"].clone(), c["grid"].clone(), c["k"]),
    judge=_edge_judge,
    describe=lambda c: f"G = {len(c['c']) - c['k']}, k = {c['k']}, w_b = {c['w_b']:.3f}, w_s = {c['w_s']:.3f}, "
                       f"{len(c['x'])} points",
    forbidden=_LAYER,
)


def _forward_judge(case, out):
    with torch.no_grad():
        expected = _reference_layer(case).forward_reference(case["x"])
    msg = is_tensor(out, expected.shape, torch.float64, "the layer output")
    if msg:
        return msg
    msg = close(out, expected, rtol=1e-9, atol=1e-12, what="y")
    if msg:
        i = int(torch.nonzero(~torch.isclose(out, expected, rtol=1e-9, atol=1e-12))[0][0])
        point = ", ".join(f"{v:.4f}" for v in case["x"][i].tolist())
        return f"{msg}; at x = ({point})"
    return None


FORWARD = Part(
    name="ex03.kan_layer", title="The whole layer", answer="kan_layer",
    points=4, minutes=20, seconds=1,
    hint="B = bspline_basis(x, grid, k) is [N, in, G + k] for a per-input grid [in, G + 2k + 1]; "
         "torch.einsum('nim,iom->nio', B, c) gives every edge's spline; add w_b * silu(x)[..., None], "
         "scale by w_s, then sum over the inputs (dim 1).",
    cases=_layer_cases,
    run=lambda answer, c: answer(*_clone(c, "x", "w_b", "w_s", "c", "grid"), c["k"]),
    judge=_forward_judge, describe=_describe_layer, forbidden=_LAYER,
)


def _count_cases(gen, hidden):
    fixed = [(2, 5, 5, 3), (5, 1, 5, 3), (10, 10, 8, 1)]
    extra = [(randint(gen, 1, 64), randint(gen, 1, 64), randint(gen, 1, 50), randint(gen, 0, 5)) for _ in range(5)]
    return [{"n_in": a, "n_out": b, "G": G, "k": k} for a, b, G, k in fixed + (extra if hidden else [])]


def _count_judge(case, out):
    msg = is_number(out, "the parameter count", integer=True)
    if msg:
        return msg
    layer = KANLayer(case["n_in"], case["n_out"], grid_size=case["G"], spline_order=case["k"],
                     generator=torch.Generator().manual_seed(0))
    expected = count_parameters(layer)
    got = int(out.item() if isinstance(out, torch.Tensor) else out)
    return None if got == expected else f"expected {expected} trainable parameters, got {got}"


COUNT = Part(
    name="ex03.n_params", title="Counting parameters", answer="kan_layer_parameters",
    points=1, minutes=3, seconds=1,
    hint="Every edge has G + k spline coefficients plus the two scales w_b and w_s; the grid is a buffer.",
    cases=_count_cases, run=lambda answer, c: answer(c["n_in"], c["n_out"], c["G"], c["k"]), judge=_count_judge,
    describe=lambda c: f"in = {c['n_in']}, out = {c['n_out']}, G = {c['G']}, k = {c['k']}",
    forbidden=("kanedu.layers", "kanedu.models:count_parameters", "kanedu.models:flops_per_sample"),
)


def _features_judge(case, out):
    expected = answers.expanded_features(case["x"], case["grid"], case["k"])
    msg = is_tensor(out, expected.shape, torch.float64, "Phi(x)")
    if msg:
        return msg
    msg = close(out, expected, rtol=1e-9, atol=1e-12, what="Phi")
    if msg:
        n = case["c"].shape[-1] + 1
        bad = torch.nonzero(~torch.isclose(out, expected, rtol=1e-9, atol=1e-12))[0]
        slot = int(bad[1]) % n
        return f"{msg}; that is input {int(bad[1]) // n}, slot {slot} ({'silu' if slot == 0 else f'B_{slot - 1}'})"
    return None


FEATURES = Part(
    name="ex03.features", title="The matrix formulation: Phi(x)", answer="expanded_features",
    points=3, minutes=15, seconds=1,
    hint="Per input: torch.cat([silu(x)[..., None], bspline_basis(x, grid, k)], dim=-1) has G + k + 1 slots; "
         "reshape [N, in, G + k + 1] to [N, in * (G + k + 1)] so that input 0's slots come first.",
    cases=_layer_cases, run=lambda answer, c: answer(c["x"].clone(), c["grid"].clone(), c["k"]),
    judge=_features_judge, describe=_describe_layer, forbidden=_LAYER,
)

EXERCISE = Exercise(id="ex03", notebook="03_kan_layer_from_scratch", title="A KAN layer from scratch",
                    parts=(EDGE, FORWARD, COUNT, FEATURES))
