"""kanedu.native: the compiled CPU loops equal the torch kernel and the reference on every path."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from kanedu import KANLayer, kernels, native
from kanedu.splines import adaptive_grid, interval_table, uniform_grid

pytestmark = pytest.mark.skipif(not native.ENABLED, reason="numba is not installed (or KANEDU_NATIVE=0)")

BASES = ["silu", "identity", "tanh", "relu", "gelu", "zero"]


def native_fn(x, W, grid, k, base, uniform):
    return native.NativeKANFunction.apply(x, W, grid, interval_table(grid, k), k, base, uniform)


def torch_fn(x, W, grid, k, base, uniform):
    """The torch kernel (what runs on a GPU), whatever native.supports says."""
    return kernels._product(x, W, grid, interval_table(grid, k), k, base, uniform)


@pytest.fixture(params=["dense", "sparse"])
def route(request, monkeypatch):
    """Force one of the two routes (BLAS on Phi / sparse loops) whatever the sizes."""
    if request.param == "dense":
        monkeypatch.setattr(native, "SPARSE_MIN_SLOTS", 10**6)
        monkeypatch.setattr(native, "DENSE_MIN_PAIRS", 0)
    else:
        monkeypatch.setattr(native, "SPARSE_MIN_SLOTS", 0)
    return request.param


def _case(seed, n_in, n_out, G, N, k, adaptive, spread, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = ((torch.rand(N, n_in, dtype=torch.float64, generator=gen) * 2 - 1) * spread).to(dtype)
    if adaptive:
        grid = adaptive_grid(torch.randn(600, n_in, dtype=torch.float64, generator=gen) * 0.6, G, k, 0.05)
    else:
        grid = uniform_grid(G, k, dtype=torch.float64).expand(n_in, -1).contiguous()
    W = torch.randn(n_in, G + k + 1, n_out, dtype=torch.float64, generator=gen).to(dtype)
    g = torch.randn(N, n_out, dtype=torch.float64, generator=gen).to(dtype)
    return x, grid.to(dtype), W, g


def _both(x, grid, W, g, k, base, uniform, need_x=True, need_w=True):
    """(y, gx, gW) from the native loops and from the torch kernel."""
    out = []
    for fn in (lambda a, b: native_fn(a, b, grid, k, base, uniform),
               lambda a, b: torch_fn(a, b, grid, k, base, uniform)):
        xa, Wa = x.clone().requires_grad_(need_x), W.clone().requires_grad_(need_w)
        y = fn(xa, Wa)
        y.backward(g)
        out.append((y.detach(), xa.grad, Wa.grad))
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("G", [5, 40])
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("spread", [0.9, 3.0])  # inside the grid / partly beyond the extended knots
def test_native_equals_torch_kernel(k, G, adaptive, spread, route):
    x, grid, W, g = _case(k * 100 + G, 5, 4, G, 203, k, adaptive, spread)
    (ya, gxa, gwa), (yb, gxb, gwb) = _both(x, grid, W, g, k, "silu", not adaptive)
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-11)
    torch.testing.assert_close(gxa, gxb, rtol=0, atol=1e-10)
    torch.testing.assert_close(gwa, gwb, rtol=0, atol=1e-10)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("G", [5, 40])
@pytest.mark.parametrize("adaptive", [False, True])
def test_gradcheck_native(base, G, adaptive, route):
    x, grid, W, _ = _case(7, 3, 2, G, 11, 3, adaptive, 1.6)
    x.requires_grad_()
    W.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, W: native_fn(x, W, grid, 3, base, not adaptive), (x, W))


@pytest.mark.parametrize("need", [(True, False), (False, True)])
@pytest.mark.parametrize("G", [5, 40])
def test_only_the_gradients_asked_for(need, G, route):
    x, grid, W, g = _case(3, 4, 3, G, 64, 3, False, 1.2)
    (ya, gxa, gwa), (yb, gxb, gwb) = _both(x, grid, W, g, 3, "silu", True, *need)
    assert (gxa is None) == (not need[0]) and (gwa is None) == (not need[1])
    for a, b in ((gxa, gxb), (gwa, gwb)):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("G", [5, 40])
def test_float32_matches_float64(G, route):
    x, grid, W, g = _case(5, 6, 5, G, 300, 3, False, 1.1)
    (y64, gx64, gw64), _ = _both(x, grid, W, g, 3, "silu", True)
    (y32, gx32, gw32), _ = _both(x.float(), grid.float(), W.float(), g.float(), 3, "silu", True)
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx32.double(), gx64, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(gw32.double(), gw64, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("G", [5, 40])
def test_split_over_threads_gives_the_same_result(G, route, monkeypatch):
    x, grid, W, g = _case(9, 8, 6, G, 500, 3, False, 1.3, dtype=torch.float32)
    serial = _both(x, grid, W, g, 3, "silu", True)[0]
    monkeypatch.setattr(native, "PARALLEL_MIN_WORK", 1)
    parts = []
    count = native._parts
    monkeypatch.setattr(native, "_parts", lambda total, work: parts.append(count(total, work)) or parts[-1])
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        split = _both(x, grid, W, g, 3, "silu", True)[0]
        in_thread = []  # another Python thread runs the loops unsplit (numba's workqueue is not reentrant)
        worker = threading.Thread(target=lambda: in_thread.append(_both(x, grid, W, g, 3, "silu", True)[0]))
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(old)
    if native._NUMBA_THREADS > 1:
        assert max(parts) > 1 and min(parts) == 1  # split on the main thread, not in the other one
    # every row (forward) and feature (backward) is computed by the same loop whatever the split; numba's
    # inlining of that loop into its parallel wrapper can still round the last bit differently, and on the
    # dense route the BLAS products run on 3 threads too (MKL orders a float32 sum of 500 rows by the thread
    # count: up to ~7e-6 apart, measured)
    for a, b, c in zip(serial, split, in_thread[0]):
        torch.testing.assert_close(b, a, rtol=3e-5, atol=3e-5)
        torch.testing.assert_close(c, a, rtol=3e-5, atol=3e-5)


def test_layer_gradients_through_the_combined_weight(route):
    # KANLayer.forward on the loops (one NativeKANLayerFunction node: the weights combined in NumPy, their
    # chain rule combine_weights_grad in backward): the gradients of the input, coefficients and scales
    # equal the torch kernel's through combine_weights' autograd, with frozen scales, masked edges and an
    # input that needs no gradient too
    for learn_scales, x_grad in ((True, True), (False, True), (True, False)):
        layer = KANLayer(4, 3, grid_size=6, learn_scales=learn_scales).double()
        with torch.no_grad():
            layer.coef.normal_()
            layer.scale_base.uniform_(-1, 1)
            layer.scale_spline.uniform_(0.5, 2)
            layer.mask[1, 2] = 0.0
        x = (torch.rand(40, 4, dtype=torch.float64) * 2.4 - 1.2).requires_grad_(x_grad)
        g = torch.randn(40, 3, dtype=torch.float64)
        params = [p for p in (layer.coef, layer.scale_base, layer.scale_spline) if p.requires_grad]
        wrt = [x, *params] if x_grad else params
        y = layer(x)
        assert type(y.grad_fn).__name__.startswith("NativeKANLayerFunction")
        grads = torch.autograd.grad(y, wrt, g)
        y2 = torch_fn(x, layer.combined_weight(), layer.grid, 3, "silu", layer._uniform)
        grads2 = torch.autograd.grad(y2, wrt, g)
        torch.testing.assert_close(y, y2, rtol=0, atol=1e-12)
        for a, b in zip(grads, grads2):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
        assert len(params) == (3 if learn_scales else 1)


def test_nan_and_huge_inputs_do_not_crash_or_leak(route):
    layer = KANLayer(3, 2, grid_size=5)
    x = torch.tensor([[float("nan"), 0.1, 1e30], [0.2, -1e30, float("inf")], [0.3, 0.4, 0.5]])
    y = layer(x)
    assert torch.isnan(y[0]).all()  # NaN in, NaN out (through the base activation)
    assert torch.isfinite(y[2]).all()
    torch.testing.assert_close(y[2], layer.forward_reference(x[2:]).squeeze(0))


@pytest.mark.parametrize("uniform", [True, False])
def test_local_bases_equal_the_torch_formulation(uniform):
    # the loops' _local_bases and splines.local_bases: same first index, same values and derivatives,
    # on knots, between them and beyond both ends
    import numpy as np

    from kanedu.splines import local_bases

    gen = torch.Generator().manual_seed(1)
    k = 3
    if uniform:
        grid = uniform_grid(9, k, dtype=torch.float64).expand(4, -1).contiguous()
    else:
        grid = adaptive_grid(torch.randn(300, 4, generator=gen, dtype=torch.float64) * 0.6, 9, k, 0.05)
    x = torch.randn(200, 4, generator=gen, dtype=torch.float64) * 1.5
    x[0] = grid[:, 5]  # exactly on knots
    x[1] = grid[:, 0] - 1e-9
    x[2] = grid[:, -1]
    table = interval_table(grid, k)
    first, values, dvalues = local_bases(x, grid, table, k, uniform, derivative=True)
    kc = native.knot_constants(grid.numpy(), table, k, uniform)
    nfirst, V, D = native.locate(x.numpy(), kc, True)
    n = grid.shape[1] - k - 1

    def dense(first_index, v):  # bases by their index (those that do not exist dropped)
        out = np.zeros(n)
        for j in range(k + 1):
            if 0 <= first_index + j < n:
                out[first_index + j] = v[j]
        return out

    for b in range(x.shape[0]):
        for f in range(x.shape[1]):
            fb, ft = int(nfirst[b, f]), int(first[b, f])
            np.testing.assert_allclose(dense(fb, V[:, b, f]), dense(ft, values[b, f].tolist()), rtol=0, atol=1e-12)
            np.testing.assert_allclose(dense(fb, D[:, b, f]), dense(ft, dvalues[b, f].tolist()), rtol=0, atol=1e-9)


def test_grid_constants_follow_in_place_grid_changes():
    layer = KANLayer(2, 2, grid_size=5).double()
    x = torch.rand(50, 2, dtype=torch.float64) * 1.6 - 0.8
    layer(x)
    layer.update_grid(torch.randn(200, 2, dtype=torch.float64) * 0.3)  # changes the grid in place
    torch.testing.assert_close(layer(x), layer.forward_reference(x), rtol=0, atol=1e-11)


def test_second_derivatives_are_refused_not_wrong():
    layer = KANLayer(2, 1).double()
    x = torch.rand(5, 2, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


def test_environment_variable_turns_it_off():
    code = "import kanedu.native as n; print(n.ENABLED)"
    env = dict(os.environ, KANEDU_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_route_follows_the_sizes():
    assert native.dense_route(1024, 64, 9)  # the benchmark's G = 5 layer
    assert native.dense_route(1024, 32, 9)  # lesson 10's KAN feed-forward, first layer
    assert not native.dense_route(512, 32, 54)  # G = 50: many slots
    assert not native.dense_route(1000, 2, 9)  # a lesson-sized layer: few (sample, feature) pairs
    assert not native.dense_route(10**6, 64, 9)  # Phi would take 2.3 GB: the loops need no temporary


def test_kan_linear_uses_it_on_cpu_only_when_enabled(monkeypatch):
    x, grid, W, _ = _case(2, 3, 2, 5, 10, 3, False, 1.0)
    table = interval_table(grid, 3)
    y = kernels.kan_linear(x, W.requires_grad_(), grid, table, 3, "silu", True)
    assert type(y.grad_fn).__name__.startswith("NativeKANFunction")
    monkeypatch.setattr(native, "ENABLED", False)
    y = kernels.kan_linear(x, W, grid, table, 3, "silu", True)
    assert not type(y.grad_fn).__name__.startswith("NativeKANFunction")


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")  # pure helpers
@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # Dynamo's tracing of torch.tensor
def test_torch_compile_traces_the_torch_kernel_instead():
    # Dynamo cannot trace numba; inside torch.compile the layer takes the torch kernel ("eager" backend:
    # real graph capture without inductor's C++ build)
    from kanedu import KAN

    model = KAN([2, 3, 1], seed=0)
    x = torch.rand(64, 2, requires_grad=True)
    y = torch.compile(model, backend="eager")(x)
    y.sum().backward()
    torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(x.grad).all()


def test_no_grad_forward_runs_the_torch_kernel(monkeypatch):
    # evaluation and grid updates do not pay the one-off compile: without gradients the torch kernel runs
    layer = KANLayer(3, 2, grid_size=5)
    x = torch.rand(20, 3)
    with_grad = layer(x)

    def fail(*args, **kwargs):
        raise AssertionError("the native kernels ran without gradients")

    monkeypatch.setattr(native, "forward", fail)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), with_grad.detach(), rtol=1e-5, atol=1e-6)
        layer.update_grid(torch.randn(100, 3))
    with pytest.raises(AssertionError, match="native kernels ran"):
        layer(x)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_threads(monkeypatch):
    # a forked child (a DataLoader worker) must not enter the parent's OpenMP threads: it runs unsplit
    monkeypatch.setattr(native, "PARALLEL_MIN_WORK", 1)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, grid, W, g = _case(1, 4, 3, 5, 64, 3, False, 1.0)
        y = native_fn(x, W, grid, 3, "silu", True)  # the parent starts its pool
        pid = os.fork()
        if pid == 0:  # the child: same computation, then leave without running pytest's teardown
            ok = torch.allclose(native_fn(x, W, grid, 3, "silu", True), y, rtol=1e-12, atol=1e-12)
            os._exit(0 if ok else 1)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung in the parent's worker threads")
            time.sleep(0.05)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        torch.set_num_threads(old)


def test_the_layers_knot_constants_follow_every_grid_change():
    # KANLayer keeps its grid's knot constants for the loops: every way of changing the grid or its dtype
    # must give a layer that still computes its own function
    import copy

    def check(layer, x):
        y = layer(x)
        assert type(y.grad_fn).__name__.startswith("NativeKANLayerFunction")
        torch.testing.assert_close(y, layer.forward_reference(x), rtol=1e-5, atol=1e-5)

    layer = KANLayer(3, 2, grid_size=5)
    x = torch.rand(64, 3) * 2.4 - 1.2
    check(layer, x)
    with torch.no_grad():
        layer.grid.mul_(1.5)  # in place: noticed through the grid's version
    check(layer, x)
    layer.update_grid(x * 0.8)  # adaptive knots (no longer uniform)
    check(layer, x)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.grid.add_(0.25)
    check(twin, x)
    check(layer, x)  # the copy's change leaves the original alone
    other = KANLayer(3, 2, grid_size=5)
    other(x)  # constants of its own grid, then replaced by the state dict's
    other.load_state_dict(layer.state_dict())
    check(other, x)
    check(layer.double(), x.double())


def test_numpy_combined_weight_is_c_contiguous_and_equals_torchs():
    # the loops index W [in, n + 1, out] in C order (NumPy's concatenate would keep the layout of the
    # swapped spline axes, and numba would then run a strided version of every loop, 2x slower at G = 50)
    from kanedu.weights import combine_weights

    layer = KANLayer(5, 7, grid_size=9)
    with torch.no_grad():
        layer.mask[2, 3] = 0.0
    parts = (layer.coef, layer.scale_base, layer.scale_spline, layer.mask)
    w = combine_weights(*(t.detach().numpy() for t in parts))
    assert w.flags.c_contiguous and w.shape == (5, 9 + 3 + 1, 7)
    torch.testing.assert_close(torch.from_numpy(w), combine_weights(*parts).detach(), rtol=0, atol=0)
