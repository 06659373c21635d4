"""Exercise 10, KAN sequence models II: causal attention weights, bits per character, a matched KAN
feed-forward width, and top-k sampling probabilities."""

from __future__ import annotations

import math

import torch

from kanedu import count_parameters
from kanedu.sequence import MLPFeedForward

from . import answers
from .parts import Exercise, Part, as_number, choice, close, is_number, is_tensor, rand, randint

# kanedu.sequence holds the attention, kan_ffn_hidden, evaluate_bpc and generate that these parts rebuild.
_SEQUENCE = ("kanedu.sequence",)


def _attention_cases(gen, hidden):
    shapes = [(1, 1, 5, 4), (2, 4, 8, 8), (3, 2, 1, 3)]
    if hidden:
        shapes += [(randint(gen, 1, 3), randint(gen, 1, 4), randint(gen, 1, 16), randint(gen, 1, 16)) for _ in range(5)]
    return [{"q": torch.randn(B, h, T, d, generator=gen, dtype=torch.float64),
             "k": torch.randn(B, h, T, d, generator=gen, dtype=torch.float64)} for B, h, T, d in shapes]


def _attention_judge(case, out):
    expected = answers.causal_attention_weights(case["q"], case["k"])
    msg = is_tensor(out, expected.shape, torch.float64, "the attention weights")
    if msg:
        return msg
    msg = close(out, expected, rtol=1e-9, atol=1e-12, what="A")
    if msg and bool((out.triu(1) != 0).any()):
        return f"{msg}; a query must not see later keys: A[..., t, s] = 0 for s > t"
    return msg


ATTENTION = Part(
    name="ex10.causal_attention", title="Causal attention weights", answer="causal_attention_weights",
    points=4, minutes=15, seconds=1,
    hint="scores = q @ k.transpose(-2, -1) / sqrt(d) is [..., T, T]; set the entries above the diagonal "
         "(torch.ones(T, T, dtype=torch.bool).triu(1)) to -inf with masked_fill, then softmax over the last dim.",
    cases=_attention_cases, run=lambda answer, c: answer(c["q"].clone(), c["k"].clone()), judge=_attention_judge,
    describe=lambda c: "q, k of shape [B, heads, T, d] = " + str(list(c["q"].shape)),
    forbidden=_SEQUENCE,
)


def _bpc_cases(gen, hidden):
    shapes = [(10, 5), (64, 30), (1, 2)] + ([(randint(gen, 1, 200), randint(gen, 2, 100)) for _ in range(5)]
                                            if hidden else [])
    return [{"logits": 3 * torch.randn(N, V, generator=gen, dtype=torch.float64),
             "targets": torch.randint(0, V, (N,), generator=gen)} for N, V in shapes]


def _bpc_judge(case, out):
    msg = is_number(out, "the bits per character")
    if msg:
        return msg
    expected, got = answers.bits_per_char(case["logits"], case["targets"]), float(as_number(out))
    if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
        nats = expected * math.log(2)
        hint = " (that is the value in nats: divide by ln 2)" if math.isclose(got, nats, rel_tol=1e-9) else ""
        return f"expected {expected:.10g} bits per character, got {got:.10g}{hint}"
    return None


BPC = Part(
    name="ex10.bits_per_char", title="Bits per character", answer="bits_per_char",
    points=2, minutes=5, seconds=1,
    hint="The mean over rows of -log2 softmax(logits)[target]: torch.log_softmax(logits, -1) gathered at the "
         "targets is in nats; divide by math.log(2). Return a Python float.",
    cases=_bpc_cases, run=lambda answer, c: answer(c["logits"].clone(), c["targets"].clone()), judge=_bpc_judge,
    describe=lambda c: f"{c['logits'].shape[0]} characters, a vocabulary of {c['logits'].shape[1]}",
    forbidden=_SEQUENCE,
)


def _width_cases(gen, hidden):
    fixed = [(32, None, 5, 3), (64, 128, 5, 3), (16, None, 10, 3)]
    extra = [(randint(gen, 1, 256), choice(gen, [None, randint(gen, 1, 1024)]), randint(gen, 1, 20), randint(gen, 1, 3))
             for _ in range(6)]
    return [{"d": d, "m": m, "G": G, "k": k} for d, m, G, k in fixed + (extra if hidden else [])]


def _width_judge(case, out):
    msg = is_number(out, "the hidden width", integer=True)
    if msg:
        return msg
    d, G, k = case["d"], case["G"], case["k"]
    mlp = count_parameters(MLPFeedForward(d, case["m"]))
    per_unit = 2 * d * (G + k + 2)  # a KANFeedForward(d, h) has 2 d h (G + k + 2) parameters
    h = int(as_number(out))
    if h < 1:
        return f"expected a width of at least 1, got {h}"
    best = max(1, math.floor(mlp / per_unit))
    best = min((best, best + 1), key=lambda w: abs(w * per_unit - mlp))
    if abs(h * per_unit - mlp) > abs(best * per_unit - mlp):
        return (f"the MLP block has {mlp} parameters; width {best} gives a KAN block of {best * per_unit}, "
                f"yours ({h}) {h * per_unit}")
    return None


WIDTH = Part(
    name="ex10.kan_ffn_width", title="A parameter-matched KAN feed-forward block", answer="kan_ffn_width",
    points=2, minutes=10, seconds=1,
    hint="The MLP block Linear(d, m) -> GELU -> Linear(m, d) has 2 d m + m + d parameters (m = 4 d if None); "
         "KAN(d, h) -> LayerNorm (no parameters) -> KAN(h, d) has 2 d h (G + k + 2). Round to the nearest h >= 1.",
    cases=_width_cases, run=lambda answer, c: answer(c["d"], c["m"], c["G"], c["k"]), judge=_width_judge,
    describe=lambda c: f"d_model = {c['d']}, mlp_hidden = {c['m']}, G = {c['G']}, k = {c['k']}",
    forbidden=_SEQUENCE,
)


def _top_k_cases(gen, hidden):
    fixed = [(1, 10, 1.0, 3), (4, 50, 0.8, 20), (2, 6, 2.0, None), (3, 5, 0.5, 1)]
    extra = [(randint(gen, 1, 5), randint(gen, 2, 100), float(rand(gen, 1, lo=0.2, hi=3.0)),
              choice(gen, [None, randint(gen, 1, 120)])) for _ in range(5)]
    return [{"logits": 2 * torch.randn(B, V, generator=gen, dtype=torch.float64), "temperature": t, "top_k": k}
            for B, V, t, k in fixed + (extra if hidden else [])]


def _top_k_judge(case, out):
    expected = answers.top_k_probs(case["logits"], case["temperature"], case["top_k"])
    msg = is_tensor(out, expected.shape, torch.float64, "the probabilities")
    if msg:
        return msg
    return close(out, expected, rtol=1e-9, atol=1e-12, what="p")


TOP_K = Part(
    name="ex10.top_k_probs", title="Temperature and top-k", answer="top_k_probs",
    points=2, minutes=10, seconds=1,
    hint="Divide the logits by the temperature; if top_k is not None and smaller than the vocabulary, find each "
         "row's k-th largest value (torch.topk(logits, top_k).values[:, -1:]) and set the smaller logits to -inf; "
         "then softmax over the last dim.",
    cases=_top_k_cases, run=lambda answer, c: answer(c["logits"].clone(), c["temperature"], c["top_k"]),
    judge=_top_k_judge,
    describe=lambda c: (f"{c['logits'].shape[0]} rows of {c['logits'].shape[1]} logits, temperature = "
                        f"{c['temperature']:.3g}, top_k = {c['top_k']}"),
    forbidden=_SEQUENCE,
)

EXERCISE = Exercise(id="ex10", notebook="10_kan_transformers", title="KAN sequence models II: transformers",
                    parts=(ATTENTION, BPC, WIDTH, TOP_K))
