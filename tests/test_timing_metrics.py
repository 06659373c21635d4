"""kanedu.timing and kanedu.metrics."""

import time

import pytest
import torch

from kanedu import KAN
from kanedu.metrics import accuracy, rmse, split_rmse
from kanedu.timing import compare, median_time


def test_median_time_measures_a_sleep():
    t = median_time(lambda: time.sleep(0.002), repeat=5, warmup=1)
    assert 0.0015 < t < 0.05


def test_compare_times_every_function_in_interleaved_rounds():
    calls = []
    out = compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, repeat=2, warmup=1)
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    assert calls[:2] == ["a", "b"] and calls.count("a") == calls.count("b") == 1 + 3 * 2
    with pytest.raises(ValueError, match="at least one"):
        compare({})


def test_rmse_and_accuracy_evaluate_in_eval_mode_without_gradients():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Dropout(0.9))
    x = torch.randn(50, 2)
    with torch.no_grad():
        model.eval()
        want = model(x)
        model.train()
    assert rmse(model, x, want) == 0.0 and model.training
    labels = want.argmax(-1)
    assert accuracy(model, x, labels) == 1.0
    with pytest.raises(ValueError, match="shape"):
        rmse(model, x, want[:, :1])
    kan = KAN([2, 1], seed=0)
    with torch.no_grad():
        ds = {"test_input": x, "test_label": kan(x)}
    assert split_rmse(kan, ds) == 0.0
    with pytest.raises(ValueError, match="no \\['val_input'"):
        split_rmse(kan, ds, "val")
