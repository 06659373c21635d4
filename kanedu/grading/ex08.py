"""Exercise 08, efficiency: FLOPs of a KAN layer, the spread of timing ratios, activation memory."""

from __future__ import annotations

import torch

from kanedu import KANLayer, flops_per_sample
from kanedu.benchmark import saved_bytes

from .parts import Exercise, Part, as_number, close, int_judge, is_number, rand, randint


def _flops_cases(gen, hidden):
    fixed = [(64, 32, 5, 3, True), (64, 32, 5, 3, False), (2, 5, 10, 1, True)]
    extra = [(randint(gen, 1, 100), randint(gen, 1, 100), randint(gen, 1, 60), randint(gen, 1, 5),
              bool(randint(gen, 0, 1))) for _ in range(6)] if hidden else []
    return [{"n_in": a, "n_out": b, "G": G, "k": k, "sparse": s} for a, b, G, k, s in fixed + extra]


def _flops_expected(c):
    layer = KANLayer(c["n_in"], c["n_out"], grid_size=c["G"], spline_order=c["k"])
    return flops_per_sample(layer, sparse=c["sparse"])


FLOPS = Part(
    name="ex08.flops", title="FLOPs of a KAN layer", answer="kan_layer_flops",
    points=3, minutes=10, seconds=1,
    hint="Per input: 2k(k + 1) + 6 FLOPs to locate the interval and evaluate the k + 1 bases, plus 4 for the SiLU. "
         "Then 2 n_in n_out (k + 2) for the contraction when sparse, 2 n_in n_out (G + k + 1) when dense.",
    cases=_flops_cases,
    run=lambda answer, c: answer(c["n_in"], c["n_out"], c["G"], c["k"], c["sparse"]),
    judge=int_judge(_flops_expected, "the FLOP count"),
    describe=lambda c: f"n_in = {c['n_in']}, n_out = {c['n_out']}, G = {c['G']}, k = {c['k']}, sparse = {c['sparse']}",
    forbidden=("kanedu.models:flops_per_sample",),
)


def _spread_cases(gen, hidden):
    fixed = [([2.0, 4.0, 3.0], [1.0, 1.0, 1.5]), ([0.5], [0.25])]
    extra = []
    if hidden:
        for _ in range(5):
            n = randint(gen, 1, 9)
            extra.append((rand(gen, n, lo=0.1, hi=5).tolist(), rand(gen, n, lo=0.1, hi=5).tolist()))
    return [{"a": a, "b": b} for a, b in fixed + extra]


def _spread_judge(case, out):
    ratios = [x / y for x, y in zip(case["a"], case["b"])]
    expected = torch.tensor([min(ratios), max(ratios)], dtype=torch.float64)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return f"expected a pair (lowest, highest), got {out!r:.80}"
    for v in out:
        msg = is_number(v, "each ratio")
        if msg:
            return msg
    got = torch.tensor([float(as_number(v)) for v in out], dtype=torch.float64)
    return close(got, expected, rtol=1e-12, atol=0, what="(lowest, highest)")


SPREAD = Part(
    name="ex08.ratio_spread", title="The spread of a timing ratio", answer="ratio_spread",
    points=2, minutes=5, seconds=1,
    hint="Divide round by round: ratios = [a / b for a, b in zip(times_a, times_b)], then return "
         "(min(ratios), max(ratios)). Never divide a median of one list by a median taken at another time.",
    cases=_spread_cases, run=lambda answer, c: answer(list(c["a"]), list(c["b"])),
    judge=_spread_judge, describe=lambda c: f"times_a = {c['a']}, times_b = {c['b']}",
)

_MODULES = ("linear", "tanh-mlp", "kan")


def _memory_cases(gen, hidden):
    fixed = [("linear", 32, 8, 5), ("tanh-mlp", 16, 4, 3), ("kan", 20, 3, 2)]
    extra = [(_MODULES[randint(gen, 0, 2)], randint(gen, 1, 64), randint(gen, 1, 8), randint(gen, 1, 6))
             for _ in range(4)] if hidden else []
    return [{"kind": kind, "batch": n, "n_in": a, "n_out": b} for kind, n, a, b in fixed + extra]


def _memory_setup(c):
    """The module and input of a case: built the same way in the student's and the grader's process."""
    torch.manual_seed(0)
    a, b = c["n_in"], c["n_out"]
    if c["kind"] == "linear":
        module = torch.nn.Linear(a, b)
    elif c["kind"] == "tanh-mlp":
        module = torch.nn.Sequential(torch.nn.Linear(a, 7), torch.nn.Tanh(), torch.nn.Linear(7, b))
    else:
        module = KANLayer(a, b, grid_size=4)
    x = (torch.rand(c["batch"], a) * 2 - 1).requires_grad_(True)
    return module, x


def _memory_run(answer, c):
    module, x = _memory_setup(c)
    return answer(lambda: module(x), list(module.parameters()))


def _memory_expected(c):
    module, x = _memory_setup(c)
    return saved_bytes(lambda: module(x), module.parameters())


MEMORY = Part(
    name="ex08.saved_bytes", title="Activation memory", answer="saved_activation_bytes",
    points=3, minutes=10, seconds=2,
    hint="Inside `with torch.autograd.graph.saved_tensors_hooks(pack, unpack):` call fn(); autograd passes every "
         "tensor it saves to pack(t), which must return it. Add t.numel() * t.element_size() unless "
         "t.data_ptr() is the data_ptr of one of the params.",
    cases=_memory_cases, run=_memory_run, judge=int_judge(_memory_expected, "the saved bytes"),
    describe=lambda c: f"{c['kind']} with {c['n_in']} inputs, {c['n_out']} outputs, batch {c['batch']}",
    forbidden=("kanedu.benchmark:saved_bytes",),
)

EXERCISE = Exercise(id="ex08", notebook="08_efficiency_and_gpus", title="Efficiency and GPUs",
                    parts=(FLOPS, SPREAD, MEMORY))
