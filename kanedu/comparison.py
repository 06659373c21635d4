"""Honest model comparisons (lessons 06-07): train every candidate on the same splits over several seeds,
pick each run's stopping point on the validation split, and report the test metric at that point.

    >>> results = compare_over_seeds({"KAN": lambda s: KAN([2, 5, 1], seed=s),
    ...                               "MLP": lambda s: MLP([2, 10, 10, 1], seed=s)},
    ...                              data=lambda s: with_validation(toy_dataset("xy", seed=s), 0.2, s),
    ...                              seeds=(0, 1, 2), steps=50)
    >>> results["KAN"].test          # one test RMSE per seed, each at its run's best validation step
    >>> spread(results["KAN"].test)  # mean, std, min, max

The test split is read only at the step that the validation loss selected; it never selects anything.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from .models import count_parameters
from .train import fit

__all__ = ["Runs", "train_and_select", "compare_over_seeds", "spread", "loglog_slope"]


@dataclass
class Runs:
    """The runs of one model type: per seed, the parameter count, the selected ``step``, the ``val`` and
    ``test`` metric at that step and the training ``seconds``; ``models`` holds the trained models."""

    params: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    test: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    models: list[nn.Module] = field(default_factory=list, repr=False)


def train_and_select(model: nn.Module, dataset: Mapping, metric: str = "rmse", **fit_kwargs) -> dict:
    """``fit(model, dataset, **fit_kwargs)`` on a dataset with a validation split, then the logged record
    with the lowest ``val_loss``: ``{"step", "val", "test", "seconds"}`` with ``val``/``test`` the
    ``val_{metric}``/``test_{metric}`` of that record (``metric`` "rmse" or "acc")."""
    if "val_input" not in dataset:
        raise ValueError("train_and_select needs a validation split (kanedu.data.with_validation)")
    fit_kwargs.setdefault("progress", False)
    start = time.perf_counter()
    history = fit(model, dataset, **fit_kwargs)
    seconds = time.perf_counter() - start
    best = history.best()
    return {"step": best["step"], "val": best[f"val_{metric}"], "test": best[f"test_{metric}"], "seconds": seconds}


def compare_over_seeds(models: Mapping[str, Callable[[int], nn.Module]], data: Callable[[int], Mapping],
                       seeds: Iterable[int], metric: str = "rmse", keep_models: bool = False,
                       **fit_kwargs) -> dict[str, Runs]:
    """For every seed ``s``: build ``data(s)`` once, and train ``models[name](s)`` on it for every name
    with the same ``fit_kwargs`` (and ``seed=s``), selected by :func:`train_and_select`.

    Returns ``{name: Runs}``, the seeds in order."""
    out = {name: Runs() for name in models}
    for s in seeds:
        ds = data(s)
        for name, make in models.items():
            model = make(s)
            r = train_and_select(model, ds, metric=metric, seed=s, **fit_kwargs)
            runs = out[name]
            runs.params.append(count_parameters(model))
            for key in ("step", "val", "test", "seconds"):
                getattr(runs, key).append(r[key])
            if keep_models:
                runs.models.append(model)
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "std", "min", "max"}`` of ``values`` (the sample std; 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``: the exponent ``a`` of ``y ~ x^a``."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"loglog_slope needs two sequences of equal length >= 2, got {len(x)} and {len(y)}")
    if min(x) <= 0 or min(y) <= 0:
        raise ValueError("loglog_slope needs positive values")
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    if sxx == 0:
        raise ValueError("loglog_slope needs at least two different x values")
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx
