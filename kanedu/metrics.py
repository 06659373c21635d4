"""Errors of a model on a split, for lessons and tests: ``rmse(model, x, y)``, ``accuracy(model, x, y)``.

Both evaluate without gradients, in eval mode (restored afterwards), and return Python floats.
"""

from __future__ import annotations

import torch

__all__ = ["rmse", "accuracy", "split_rmse"]


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def rmse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Root-mean-square error ``sqrt(mean((model(x) - y)^2))`` for ``x [N, in]``, ``y [N, out]``."""
    pred = _predict(model, x)
    if pred.shape != y.shape:
        raise ValueError(f"the model's output has shape {tuple(pred.shape)} but y has shape {tuple(y.shape)}")
    return (pred - y).pow(2).mean().sqrt().item()


def accuracy(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose largest logit is the label: ``model(x) [N, C]``, ``labels [N]`` (torch.long)."""
    logits = _predict(model, x)
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"accuracy needs logits [N, C] and labels [N], got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    return (logits.argmax(-1) == labels).float().mean().item()


def split_rmse(model: torch.nn.Module, dataset: dict, split: str = "test") -> float:
    """``rmse`` on ``dataset[f"{split}_input"]`` and ``dataset[f"{split}_label"]`` (pykan's dict)."""
    keys = (f"{split}_input", f"{split}_label")
    missing = [k for k in keys if k not in dataset]
    if missing:
        raise ValueError(f"dataset has no {missing}; splits present: "
                         f"{sorted({k.rsplit('_', 1)[0] for k in dataset})}")
    return rmse(model, dataset[keys[0]], dataset[keys[1]])
