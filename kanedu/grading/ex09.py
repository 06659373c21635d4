"""Exercise 09, KAN sequence models I: a KAN-GRU's parameters, a matched GRU, the KAN-GRU step, forecast windows."""

from __future__ import annotations

import torch

from kanedu import KANLayer, count_parameters
from kanedu.data import make_windows
from kanedu.sequence import KANGRUCell, matched_gru

from .parts import Exercise, Part, close, equal, int_judge, is_tensor, rand, randint

# kanedu.sequence holds the answers of parts 1-3 (KANGRUCell, kan_gru_parameter_count, matched_gru, ...);
# KANLayer stays on: part 3 builds the cell from two of them.
_SEQUENCE = ("kanedu.sequence", "kanedu.models:count_parameters")



def _count_cases(gen, hidden):
    fixed = [(2, 8, 5, 3), (1, 10, 5, 3), (3, 4, 10, 1)]
    extra = [(randint(gen, 1, 8), randint(gen, 1, 32), randint(gen, 1, 20), randint(gen, 1, 3)) for _ in range(5)]
    return [{"n_in": a, "H": H, "G": G, "k": k} for a, H, G, k in fixed + (extra if hidden else [])]


def _kan_gru_count(c) -> int:
    cell = KANGRUCell(c["n_in"], c["H"], grid_size=c["G"], spline_order=c["k"],
                      generator=torch.Generator().manual_seed(0))
    return count_parameters(cell)


COUNT = Part(
    name="ex09.kan_gru_params", title="Parameters of a KAN-GRU cell", answer="kan_gru_parameters",
    points=2, minutes=5, seconds=1,
    hint="The cell holds KANLayer(input_size, 3H) and KANLayer(H, 3H); lesson 03: a KAN layer from a to b has "
         "a * b * (G + k + 2) parameters.",
    cases=_count_cases, run=lambda answer, c: answer(c["n_in"], c["H"], c["G"], c["k"]),
    judge=int_judge(_kan_gru_count, "the parameter count"),
    describe=lambda c: f"input_size = {c['n_in']}, hidden_size = {c['H']}, G = {c['G']}, k = {c['k']}",
    forbidden=_SEQUENCE,
)


def _matched_cases(gen, hidden):
    fixed = [(2400, 2, 1), (3300, 1, 15), (2400, 2, 0)]
    extra = [(randint(gen, 50, 50_000), randint(gen, 1, 6), randint(gen, 0, 16)) for _ in range(6)]
    return [{"n_params": n, "n_in": a, "head_out": o} for n, a, o in fixed + (extra if hidden else [])]


def _matched_hidden(c) -> int:
    return matched_gru(c["n_params"], input_size=c["n_in"], head_out=c["head_out"], tol=float("inf")).hidden_size


MATCHED = Part(
    name="ex09.matched_gru_hidden", title="A parameter-matched GRU", answer="matched_gru_hidden",
    points=2, minutes=10, seconds=1,
    hint="torch.nn.GRU(input_size, H) has 3H (input_size + H) weights and 6H biases; a Linear(H, head_out) "
         "head adds (H + 1) head_out (nothing if head_out is 0). Try H = 1, 2, ... and keep the closest count "
         "(the smaller H on a tie); stop once the count passes n_params.",
    cases=_matched_cases, run=lambda answer, c: answer(c["n_params"], c["n_in"], c["head_out"]),
    judge=int_judge(_matched_hidden, "the hidden size"),
    describe=lambda c: f"n_params = {c['n_params']}, input_size = {c['n_in']}, head_out = {c['head_out']}",
    forbidden=_SEQUENCE,
)


def _layer_weights(gen, n_in, n_out, G, k):
    """The tensors of a KANLayer(n_in, n_out) with random weights (on the default grid (-1, 1))."""
    layer = KANLayer(n_in, n_out, grid_size=G, spline_order=k, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(0))
    state = {name: t.clone() for name, t in layer.state_dict().items()}
    state["coef"] = 0.5 * torch.randn(n_in, n_out, G + k, generator=gen, dtype=torch.float64)
    state["scale_base"] = rand(gen, n_in, n_out, lo=-1, hi=1) / n_in**0.5
    state["scale_spline"] = rand(gen, n_in, n_out, lo=0.5, hi=1.5)
    return state


def _layer(state, k) -> KANLayer:
    """A KANLayer holding ``state`` (built in whichever process runs this)."""
    n_in, n_out, n = state["coef"].shape
    layer = KANLayer(n_in, n_out, grid_size=n - k, spline_order=k, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(0))
    layer.load_state_dict({name: t.clone() for name, t in state.items()})
    return layer


def _step_cases(gen, hidden):
    shapes = [(2, 8, 16, 5, 3), (1, 3, 4, 4, 2), (3, 1, 5, 6, 1)]
    if hidden:
        shapes += [(randint(gen, 1, 4), randint(gen, 1, 10), randint(gen, 1, 20), randint(gen, 2, 8),
                    randint(gen, 1, 3)) for _ in range(5)]
    cases = []
    for n_in, H, B, G, k in shapes:
        cases.append({"x": rand(gen, B, n_in, lo=-1, hi=1), "h": rand(gen, B, H, lo=-0.9, hi=0.9), "k": k,
                      "input_kan": _layer_weights(gen, n_in, 3 * H, G, k),
                      "hidden_kan": _layer_weights(gen, H, 3 * H, G, k)})
    return cases


def _step_run(answer, c):
    with torch.no_grad():
        return answer(c["x"].clone(), c["h"].clone(), _layer(c["input_kan"], c["k"]), _layer(c["hidden_kan"], c["k"]))


def _step_judge(case, out):
    n_in, H = case["x"].shape[1], case["h"].shape[1]
    G = case["input_kan"]["coef"].shape[-1] - case["k"]
    cell = KANGRUCell(n_in, H, grid_size=G, spline_order=case["k"], dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
    cell.input_kan, cell.hidden_kan = _layer(case["input_kan"], case["k"]), _layer(case["hidden_kan"], case["k"])
    with torch.no_grad():
        expected = cell(case["x"], case["h"])
    msg = is_tensor(out, expected.shape, torch.float64, "h'")
    if msg:
        return msg
    msg = close(out, expected, rtol=1e-9, atol=1e-12, what="h'")
    if msg:
        return msg + (" (the gates are the chunks r, z, n of the 3H outputs, in that order; r scales only the "
                      "hidden part of n)")
    return None


STEP = Part(
    name="ex09.kan_gru_step", title="One step of the KAN-GRU", answer="kan_gru_step",
    points=4, minutes=20, seconds=1,
    hint="gi = input_kan(x) and gh = hidden_kan(h) are [B, 3H]; split each into r, z, n parts of H columns "
         "(gi.split(H, dim=-1)); r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n), "
         "h' = (1 - z) * n + z * h.",
    cases=_step_cases, run=_step_run, judge=_step_judge,
    describe=lambda c: (f"input_size = {c['x'].shape[1]}, hidden_size = {c['h'].shape[1]}, batch {c['x'].shape[0]}, "
                        f"G = {c['input_kan']['coef'].shape[-1] - c['k']}, k = {c['k']}"),
    forbidden=_SEQUENCE,
)


def _window_cases(gen, hidden):
    fixed = [(20, 4, 1), (30, 16, 5), (7, 3, 4)]
    extra = [(randint(gen, 10, 200), randint(gen, 1, 20), randint(gen, 1, 15)) for _ in range(5)]
    cases = []
    for T, w, h in fixed + (extra if hidden else []):
        T = max(T, w + h)
        cases.append({"series": torch.cumsum(rand(gen, T, lo=-1, hi=1), 0), "window": w, "horizon": h})
    return cases


def _window_judge(case, out):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        return f"expected a pair (X, Y), got {type(out).__name__}"
    X, Y = make_windows(case["series"], case["window"], case["horizon"])
    for what, got, expected in (("X", out[0], X), ("Y", out[1], Y)):
        msg = is_tensor(got, expected.shape, torch.float64, what) or equal(got, expected, what)
        if msg:
            return msg
    return None


WINDOWS = Part(
    name="ex09.forecast_windows", title="Forecasting windows", answer="forecast_windows",
    points=2, minutes=10, seconds=1,
    hint="There are N = T - window - horizon + 1 windows; X[i] = series[i : i + window] and "
         "Y[i] = series[i + window : i + window + horizon]. torch.stack a list of slices, or use series.unfold.",
    cases=_window_cases, run=lambda answer, c: answer(c["series"].clone(), c["window"], c["horizon"]),
    judge=_window_judge,
    describe=lambda c: f"a series of {len(c['series'])} values, window = {c['window']}, horizon = {c['horizon']}",
    forbidden=("kanedu.data:make_windows", "kanedu.data:split_series"),
)

EXERCISE = Exercise(id="ex09", notebook="09_kan_recurrent_models", title="KAN sequence models I: recurrence",
                    parts=(COUNT, MATCHED, STEP, WINDOWS))
