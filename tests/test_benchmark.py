"""kanedu.benchmark: training steps, the profiler breakdown, activation memory, the denormal check."""

import pytest
import torch

from kanedu import MLP, KANLayer, native
from kanedu.benchmark import adam_step, denormal_slowdown, saved_bytes, time_breakdown, torch_kernel
from kanedu.runtime import _denormals_flushed


def test_adam_step_trains_the_model_and_returns_the_loss():
    model = MLP([3, 4, 2], seed=0)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    step = adam_step(model, x, y, loss="ce", lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    losses = [step() for _ in range(20)]
    assert all(isinstance(v, float) for v in losses) and losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="loss"):
        adam_step(model, x, y, loss="l1")


def test_torch_kernel_switches_the_compiled_loops_off_and_restores_them():
    before = native.ENABLED
    with torch_kernel():
        assert native.ENABLED is False
    assert native.ENABLED == before
    with pytest.raises(RuntimeError), torch_kernel():
        raise RuntimeError("boom")
    assert native.ENABLED == before


def test_saved_bytes_of_a_linear_layer_is_its_input():
    lin = torch.nn.Linear(8, 5)
    x = torch.randn(32, 8, requires_grad=True)
    assert saved_bytes(lambda: lin(x), lin.parameters()) == 32 * 8 * 4


def test_saved_activations_per_sample_of_both_kernels(monkeypatch):
    layer = KANLayer(6, 4, grid_size=5)

    def per_sample():
        small, large = (saved_bytes(lambda n=n: layer(torch.rand(n, 6, requires_grad=True)), layer.parameters())
                        for n in (64, 128))
        return (large - small) / 64

    with torch_kernel():
        assert per_sample() <= 3 * 6 * 8  # x, interval and local coordinate, <= 8 bytes each
    if native.ENABLED:
        # a small call keeps what its backward needs, and saved_bytes counts it: per (sample, feature) x
        # (float32), the interval index (int64) and, on the sparse route this small layer takes, the 4
        # bases and b(x) for dL/dW and their derivatives for dL/dx
        assert not native.dense_route(128, 6, 9)
        assert per_sample() == 6 * (4 + 8 + 2 * 5 * 4)
        monkeypatch.setattr(native, "KEEP_BYTES", 0)  # a call that would keep more keeps only x
        assert per_sample() == 6 * 4


def test_time_breakdown_splits_forward_and_backward_into_matmul_and_other():
    lin = torch.nn.Linear(16, 16)
    b = time_breakdown(lin, torch.randn(64, 16), repeat=2, warmup=1)
    parts = ["forward: matmul", "forward: other", "backward: matmul", "backward: other"]
    assert set(b) == set(parts) | {"total"}
    assert all(b[p] >= 0 for p in parts) and b["forward: matmul"] + b["backward: matmul"] > 0
    assert b["total"] == pytest.approx(sum(b[p] for p in parts))


def test_denormal_slowdown_reports_both_cases_and_restores_the_flush_setting():
    before = _denormals_flushed()
    r = denormal_slowdown(n=1000, repeat=3)
    assert _denormals_flushed() == before
    for case in ("subnormal results", "subnormal inputs"):
        assert r[case]["no flush"] > 0 and r[case]["flush"] > 0 and r[case]["slowdown"] > 0
    assert isinstance(r["supported"], bool)
