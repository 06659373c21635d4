"""kanedu.comparison: seeds, validation-selected steps, spreads and log-log slopes."""

import math

import pytest
import torch

from kanedu import KAN, MLP
from kanedu.comparison import compare_over_seeds, loglog_slope, spread, train_and_select
from kanedu.data import toy_dataset, with_validation


def _data(seed):
    return with_validation(toy_dataset("xy", n_train=120, n_test=50, seed=seed), 0.25, seed)


def test_the_reported_test_error_is_the_one_at_the_best_validation_step():
    model = MLP([2, 6, 1], seed=0, dtype=torch.float64)
    ds = {k: v.double() for k, v in _data(0).items()}
    r = train_and_select(model, ds, steps=5, opt="Adam")
    assert 1 <= r["step"] <= 5 and r["seconds"] >= 0
    model2 = MLP([2, 6, 1], seed=0, dtype=torch.float64)
    from kanedu import fit
    h = fit(model2, ds, steps=5, opt="Adam", progress=False)
    best = min(h.records, key=lambda rec: rec["val_loss"])
    assert (r["val"], r["test"]) == (best["val_rmse"], best["test_rmse"])


def test_selection_needs_a_validation_split():
    ds = toy_dataset("xy", n_train=50, n_test=20, seed=0)
    with pytest.raises(ValueError, match="validation split"):
        train_and_select(MLP([2, 3, 1], seed=0), ds, steps=2)


def test_compare_over_seeds_keeps_one_entry_per_seed_and_model():
    torch.set_default_dtype(torch.float64)
    try:
        runs = compare_over_seeds({"KAN": lambda s: KAN([2, 2, 1], grid_size=3, seed=s),
                                   "MLP": lambda s: MLP([2, 4, 1], seed=s)}, _data, (0, 1), steps=3,
                                  keep_models=True)
    finally:
        torch.set_default_dtype(torch.float32)
    assert set(runs) == {"KAN", "MLP"}
    for r in runs.values():
        assert len(r.test) == len(r.val) == len(r.step) == len(r.models) == 2
        assert all(t > 0 for t in r.test)
    assert runs["KAN"].params[0] == runs["KAN"].params[1] > 0 and runs["MLP"].params == [17, 17]


def test_spread_and_slope():
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert spread([4.0])["std"] == 0.0
    x = [10.0, 20.0, 40.0, 80.0]
    assert math.isclose(loglog_slope(x, [3 * v ** -2.5 for v in x]), -2.5)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="different x"):
        loglog_slope([2.0, 2.0], [1.0, 3.0])
