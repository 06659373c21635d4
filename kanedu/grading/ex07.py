"""Exercise 07, MLP vs KAN II: accuracy from logits, a class-incremental task split, average forgetting."""

from __future__ import annotations

import torch

from .answers import average_forgetting
from .parts import Exercise, Part, as_number, close, equal, is_number, is_tensor, rand, randint


def _accuracy_cases(gen, hidden):
    shapes = [(20, 10), (7, 2), (1, 3)] + ([(randint(gen, 1, 300), randint(gen, 2, 12)) for _ in range(6)]
                                          if hidden else [])
    cases = []
    for n, c in shapes:
        logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * 3
        labels = torch.randint(0, c, (n,), generator=gen)
        cases.append({"logits": logits, "labels": labels})
    # one case where every prediction is right, to catch answers that count wrong rows
    logits = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    cases.append({"logits": logits, "labels": logits.argmax(-1)})
    return cases


def _accuracy_judge(case, out):
    msg = is_number(out, "the accuracy")
    if msg:
        return msg
    expected = (case["logits"].argmax(-1) == case["labels"]).double().mean().item()
    got = float(as_number(out))
    return None if abs(got - expected) <= 1e-12 else f"expected accuracy {expected:.6f}, got {got:.6f}"


ACCURACY = Part(
    name="ex07.accuracy", title="Accuracy from logits", answer="accuracy_from_logits",
    points=2, minutes=5, seconds=1,
    hint="The prediction of a row is the index of its largest logit (argmax over the last dimension); the "
         "accuracy is the share of rows whose prediction equals the label, a float between 0 and 1.",
    cases=_accuracy_cases, run=lambda answer, c: answer(c["logits"].clone(), c["labels"].clone()),
    judge=_accuracy_judge,
    describe=lambda c: f"logits of shape {tuple(c['logits'].shape)}, {len(c['labels'])} labels",
    forbidden=("kanedu.metrics",),
)


def _mask_cases(gen, hidden):
    fixed = [(torch.tensor([0, 1, 2, 3, 1, 9]), (0, 1)), (torch.tensor([5, 5, 5]), (2, 3)),
             (torch.arange(10), (8, 9))]
    extra = []
    if hidden:
        for _ in range(6):
            labels = torch.randint(0, 10, (randint(gen, 1, 200),), generator=gen)
            classes = tuple(sorted({randint(gen, 0, 9) for _ in range(randint(gen, 1, 4))}))
            extra.append((labels, classes))
    return [{"labels": labels, "classes": classes} for labels, classes in fixed + extra]


def _mask_judge(case, out):
    expected = torch.isin(case["labels"], torch.tensor(case["classes"]))
    msg = is_tensor(out, expected.shape, torch.bool, "the mask")
    return msg or equal(out, expected, "mask")


def _describe_mask(c):
    labels = c["labels"].tolist()
    return f"labels = {labels[:12]}{'...' if len(labels) > 12 else ''}, classes = {c['classes']}"


TASK_MASK = Part(
    name="ex07.task_mask", title="A class-incremental task", answer="task_mask",
    points=2, minutes=5, seconds=1,
    hint="Start from an all-False boolean tensor of the labels' shape and OR in (labels == c) for every class c "
         "of the task; torch.isin(labels, torch.tensor(classes)) does it in one call.",
    cases=_mask_cases, run=lambda answer, c: answer(c["labels"].clone(), tuple(c["classes"])),
    judge=_mask_judge, describe=_describe_mask,
)


def _forgetting_cases(gen, hidden):
    fixed = [torch.tensor([[1.0, 0.0], [0.25, 0.9]], dtype=torch.float64),
             torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.8, 0.0], [0.2, 0.3, 0.95]], dtype=torch.float64)]
    extra = [rand(gen, T, T) for T in (randint(gen, 2, 7) for _ in range(5))] if hidden else []
    return [{"acc": acc} for acc in fixed + extra]


def _forgetting_judge(case, out):
    msg = is_number(out, "the average forgetting")
    if msg:
        return msg
    return close(torch.tensor(float(as_number(out)), dtype=torch.float64),
                 torch.tensor(average_forgetting(case["acc"]), dtype=torch.float64), rtol=1e-9,
                 atol=1e-12, what="the average forgetting")


FORGETTING = Part(
    name="ex07.forgetting", title="Average forgetting", answer="average_forgetting",
    points=3, minutes=10, seconds=1,
    hint="For each task q except the last, forgetting is its best accuracy at any earlier point (rows p = q .. T-2 "
         "of column q) minus its accuracy at the end (row T-1); average over those T-1 tasks.",
    cases=_forgetting_cases, run=lambda answer, c: answer(c["acc"].clone()),
    judge=_forgetting_judge, describe=lambda c: f"acc = {[[round(v, 3) for v in r] for r in c['acc'].tolist()]}",
)

EXERCISE = Exercise(id="ex07", notebook="07_mlp_vs_kan_classification_noise_forgetting",
                    title="MLP vs KAN II: classification, noise, forgetting",
                    parts=(ACCURACY, TASK_MASK, FORGETTING))
