"""Tests for kanedu.data: shapes, dtypes, ranges, determinism, known values and bad-input errors."""

import math

import numpy as np
import pytest
import sympy
import torch

from kanedu import data as D

# ----------------------------------------------------------------------------------------------------
# make_dataset
# ----------------------------------------------------------------------------------------------------


def _sum_f(x):
    return x.sum(dim=1)


def test_make_dataset_shapes_dtype_and_ranges():
    ds = D.make_dataset(_sum_f, 3, n_train=50, n_test=40, ranges=[(-1, 1), (0, 2), (5, 6)])
    assert set(ds) == {"train_input", "train_label", "test_input", "test_label"}
    assert ds["train_input"].shape == (50, 3)
    assert ds["train_label"].shape == (50, 1)
    assert ds["test_input"].shape == (40, 3)
    assert ds["test_label"].shape == (40, 1)
    for v in ds.values():
        assert v.dtype == torch.get_default_dtype()
    for key in ("train_input", "test_input"):
        x = ds[key]
        for j, (lo, hi) in enumerate([(-1, 1), (0, 2), (5, 6)]):
            assert x[:, j].min() >= lo and x[:, j].max() <= hi
    torch.testing.assert_close(ds["train_label"][:, 0], ds["train_input"].sum(1))


def test_make_dataset_single_range_multi_output_and_dtype():
    f = lambda x: torch.stack([x[:, 0], x[:, 1] ** 2], dim=1)
    ds = D.make_dataset(f, 2, n_train=30, n_test=20, ranges=(2, 3), dtype=torch.float64)
    assert ds["train_label"].shape == (30, 2) and ds["test_label"].shape == (20, 2)
    assert ds["train_input"].dtype == torch.float64 and ds["train_label"].dtype == torch.float64
    assert ds["train_input"].min() >= 2 and ds["train_input"].max() <= 3


def test_make_dataset_accepts_array_ranges_and_device():
    ranges = np.array([[0.0, 1.0], [2.0, 3.0]])
    ds = D.make_dataset(_sum_f, 2, n_train=10, n_test=10, ranges=ranges, device="cpu")
    ref = D.make_dataset(_sum_f, 2, n_train=10, n_test=10, ranges=[(0, 1), (2, 3)])
    assert ds["train_input"].device.type == "cpu"
    assert torch.equal(ds["train_input"], ref["train_input"])


def test_make_dataset_seed_determinism_and_independent_splits():
    a = D.make_dataset(_sum_f, 2, n_train=20, n_test=20, seed=1)
    b = D.make_dataset(_sum_f, 2, n_train=20, n_test=20, seed=1)
    c = D.make_dataset(_sum_f, 2, n_train=20, n_test=20, seed=2)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["train_input"], c["train_input"])
    assert not torch.equal(a["train_input"], a["test_input"])


def test_make_dataset_does_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    D.make_dataset(_sum_f, 2, n_train=10, n_test=10, noise=0.1)
    assert torch.equal(before, torch.get_rng_state())


def test_make_dataset_noise_only_on_train_labels():
    clean = D.make_dataset(_sum_f, 2, n_train=500, n_test=300, seed=3)
    noisy = D.make_dataset(_sum_f, 2, n_train=500, n_test=300, seed=3, noise=0.1)
    assert torch.equal(clean["train_input"], noisy["train_input"])
    assert torch.equal(clean["test_input"], noisy["test_input"])
    assert torch.equal(clean["test_label"], noisy["test_label"])
    resid = noisy["train_label"] - clean["train_label"]
    assert 0.08 < resid.std().item() < 0.12
    assert abs(resid.mean().item()) < 0.02


def test_make_dataset_bad_input():
    with pytest.raises(TypeError, match="f must be callable"):
        D.make_dataset(3, 2)
    with pytest.raises(ValueError, match="n_var"):
        D.make_dataset(_sum_f, 0)
    with pytest.raises(TypeError, match="n_train"):
        D.make_dataset(_sum_f, 2, n_train=1.5)
    with pytest.raises(ValueError, match="lo < hi"):
        D.make_dataset(_sum_f, 2, ranges=(1, -1))
    with pytest.raises(ValueError, match="n_var=2"):
        D.make_dataset(_sum_f, 2, ranges=[(0, 1), (0, 1), (0, 1)])
    with pytest.raises(ValueError, match="noise"):
        D.make_dataset(_sum_f, 2, noise=-0.1)
    with pytest.raises(TypeError, match="dtype"):
        D.make_dataset(_sum_f, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"returned shape \(5, 2, 1\)"):
        D.make_dataset(lambda x: x.unsqueeze(-1), 2, n_train=5, n_test=5)
    with pytest.raises(TypeError, match="seed"):
        D.make_dataset(_sum_f, 2, seed="a")


# ----------------------------------------------------------------------------------------------------
# toy functions
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, point, expected",
    [
        ("bessel_j0", [0.0], 1.0),
        ("bessel_j0", [0.3], 0.15064525725099695),  # scipy.special.j0(6.0)
        ("exp_sin_sq", [0.0, 0.0], 1.0),
        ("exp_sin_sq", [0.5, 1.0], math.exp(2.0)),
        ("xy", [0.5, -0.4], -0.2),
        ("nested4", [0.0, 0.0, 0.0, 0.0], 1.0),
        ("nested4", [0.5, 0.5, 0.0, 0.0], math.exp(0.5)),
        ("exp_mean_sin100", [0.0] * 100, 1.0),
        ("exp_mean_sin100", [1.0] * 100, math.e),
        ("exp_mean_sin100", [1.0] * 50 + [0.0] * 50, math.exp(0.5)),
    ],
)
def test_toy_function_known_values(name, point, expected):
    tf = D.TOY_FUNCTIONS[name]
    x = torch.tensor([point], dtype=torch.float64)
    assert tf(x).shape == (1,)
    assert tf(x).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", sorted(D.TOY_FUNCTIONS))
def test_toy_dataset_and_sympy(name):
    tf = D.TOY_FUNCTIONS[name]
    assert tf.name == name and isinstance(tf.formula, str) and len(tf.ranges) == tf.n_var
    ds = D.toy_dataset(name, n_train=20, n_test=10, dtype=torch.float64)
    assert ds["train_input"].shape == (20, tf.n_var) and ds["test_label"].shape == (10, 1)
    torch.testing.assert_close(ds["train_label"][:, 0], tf.f(ds["train_input"]))
    syms = sympy.symbols(f"x1:{tf.n_var + 1}")
    fn = sympy.lambdify(syms, tf.sympy_expr, modules=["scipy", "numpy"])
    x = ds["test_input"].numpy()
    np.testing.assert_allclose(fn(*x.T), ds["test_label"][:, 0].numpy(), rtol=1e-9, atol=1e-12)


def test_toy_dataset_bad_name():
    with pytest.raises(ValueError, match="valid names.*exp_sin_sq"):
        D.toy_dataset("nope")
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        D.TOY_FUNCTIONS["xy"](torch.zeros(3, 3))


def test_toy_function_is_frozen():
    with pytest.raises(AttributeError):
        D.TOY_FUNCTIONS["xy"].n_var = 3


# ----------------------------------------------------------------------------------------------------
# Feynman
# ----------------------------------------------------------------------------------------------------


def test_feynman_has_enough_equations():
    assert len(D.FEYNMAN) >= 12
    for name in ["I.6.2", "I.6.2b", "I.12.11", "I.16.6", "I.30.3", "I.37.4", "II.6.15a"]:
        assert name in D.FEYNMAN


@pytest.mark.parametrize("name", list(D.FEYNMAN))
def test_feynman_f_matches_sympy_and_is_finite(name):
    eq = D.FEYNMAN[name]
    assert eq.name == name
    assert len(eq.variables) == len(eq.ranges) == eq.n_var
    assert all(lo < hi for lo, hi in eq.ranges)
    syms = sympy.symbols(f"x1:{eq.n_var + 1}")
    assert eq.sympy_expr.free_symbols <= set(syms)
    assert eq.symbols == syms
    ds = D.feynman_dataset(name, n_train=200, n_test=50, seed=5, dtype=torch.float64)
    x = torch.cat([ds["train_input"], ds["test_input"]])
    # also the corners of the box, where singularities would show up first
    corners = torch.tensor(
        [[r[(i >> j) & 1] for j, r in enumerate(eq.ranges)] for i in range(2 ** min(eq.n_var, 6))],
        dtype=torch.float64,
    )
    x = torch.cat([x, corners])
    y = eq(x)
    assert y.shape == (len(x),)
    assert torch.isfinite(y).all(), f"{name}: non-finite values in its ranges"
    assert torch.isfinite(ds["train_label"]).all()
    fn = sympy.lambdify(syms, eq.sympy_expr, modules="numpy")
    ref = np.broadcast_to(np.asarray(fn(*x.numpy().T), dtype=np.float64), (len(x),))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-9, atol=1e-12, err_msg=name)


def test_feynman_dataset_ranges_and_determinism():
    eq = D.FEYNMAN["I.6.2"]
    a = D.feynman_dataset("I.6.2", n_train=100, n_test=100, seed=0)
    b = D.feynman_dataset("I.6.2", n_train=100, n_test=100, seed=0)
    assert torch.equal(a["train_input"], b["train_input"])
    for j, (lo, hi) in enumerate(eq.ranges):
        assert a["train_input"][:, j].min() >= lo and a["train_input"][:, j].max() <= hi
    with pytest.raises(ValueError, match="valid names"):
        D.feynman_dataset("I.99.99")


def test_feynman_relativistic_addition_value():
    eq = D.FEYNMAN["I.16.6"]
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    assert eq(x).item() == pytest.approx(0.8)


# ----------------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return D.load_digits(seed=0)


def test_digits_shapes_and_types(digits):
    assert digits["n_classes"] == 10
    n_tr, n_te = len(digits["train_label"]), len(digits["test_label"])
    assert n_tr + n_te == 1797
    assert n_te == math.ceil(0.25 * 1797)
    assert digits["train_input"].shape == (n_tr, 64) and digits["test_input"].shape == (n_te, 64)
    assert digits["train_label"].dtype == torch.long and digits["train_label"].dim() == 1
    assert digits["train_input"].dtype == torch.get_default_dtype()


def test_digits_stratified(digits):
    tr = torch.bincount(digits["train_label"], minlength=10).double()
    te = torch.bincount(digits["test_label"], minlength=10).double()
    total = tr + te
    expected = total * len(digits["test_label"]) / total.sum()
    assert (te - expected).abs().max() <= 1.0


def test_digits_standardised_with_train_stats(digits):
    x = digits["train_input"].double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    assert mean.abs().max() < 1e-5
    varying = std > 0
    assert (std[varying] - 1).abs().max() < 1e-4
    assert (~varying).any()  # some pixels are constant (always 0) on the train set
    assert (x[:, ~varying] == 0).all()
    # the test set is transformed with train stats, so its mean is near, not exactly, 0
    assert digits["test_input"].double().mean(0).abs().max() > 1e-6


def test_digits_determinism_and_raw():
    a = D.load_digits(seed=1, standardize=False)
    b = D.load_digits(seed=1, standardize=False)
    c = D.load_digits(seed=2, standardize=False)
    assert torch.equal(a["train_input"], b["train_input"])
    assert not torch.equal(a["train_label"], c["train_label"])
    assert a["train_input"].min() == 0 and a["train_input"].max() == 16
    with pytest.raises(ValueError, match="test_fraction"):
        D.load_digits(test_fraction=1.5)


# ----------------------------------------------------------------------------------------------------
# sequence tasks
# ----------------------------------------------------------------------------------------------------


def test_adding_problem():
    x, y = D.adding_problem(64, seq_len=20, seed=0)
    assert x.shape == (64, 20, 2) and y.shape == (64, 1)
    values, marker = x[..., 0], x[..., 1]
    assert values.min() >= 0 and values.max() <= 1
    assert set(marker.unique().tolist()) <= {0.0, 1.0}
    assert (marker[:, :10].sum(1) == 1).all() and (marker[:, 10:].sum(1) == 1).all()
    torch.testing.assert_close(y[:, 0], (values * marker).sum(1))
    x2, y2 = D.adding_problem(64, seq_len=20, seed=0)
    x3, _ = D.adding_problem(64, seq_len=20, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    with pytest.raises(ValueError, match="seq_len"):
        D.adding_problem(4, seq_len=1)


def test_copy_memory():
    L, delay, K = 5, 7, 4
    x, y = D.copy_memory(32, n_symbols=K, copy_len=L, delay=delay, seed=0)
    T = 2 * L + delay
    assert x.shape == y.shape == (32, T) and x.dtype == y.dtype == torch.long
    data = x[:, :L]
    assert data.min() >= 1 and data.max() <= K
    assert (x[:, L : L + delay - 1] == D.COPY_BLANK).all()
    assert (x[:, L + delay - 1] == K + 1).all()
    assert (x[:, L + delay :] == D.COPY_BLANK).all()
    assert (y[:, : L + delay] == D.COPY_BLANK).all()
    assert torch.equal(y[:, L + delay :], data)
    x2, _ = D.copy_memory(32, n_symbols=K, copy_len=L, delay=delay, seed=0)
    x3, _ = D.copy_memory(32, n_symbols=K, copy_len=L, delay=delay, seed=1)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    with pytest.raises(ValueError, match="delay"):
        D.copy_memory(4, delay=0)


def test_mackey_glass_bounds_and_chaos():
    s = D.mackey_glass(1500)
    assert s.shape == (1500,) and s.dtype == torch.get_default_dtype()
    assert torch.isfinite(s).all()
    assert s.min() > 0.2 and s.max() < 1.5
    assert s.std() > 0.1
    # not periodic-trivial: no lag up to 200 reproduces the series
    for lag in range(1, 200):
        assert (s[lag:] - s[:-lag]).abs().max() > 0.05
    assert torch.equal(s, D.mackey_glass(1500))


def test_mackey_glass_integrator_converges_and_seed():
    a = D.mackey_glass(100, discard=0, substeps=10, dtype=torch.float64)
    b = D.mackey_glass(100, discard=0, substeps=80, dtype=torch.float64)
    assert a[0].item() == 1.2
    assert (a - b).abs().max() < 1e-3
    c = D.mackey_glass(100, seed=0, history_noise=0.01)
    d = D.mackey_glass(100, seed=1, history_noise=0.01)
    assert torch.equal(c, D.mackey_glass(100, seed=0, history_noise=0.01))
    assert not torch.equal(c, d)
    with pytest.raises(ValueError, match="tau"):
        D.mackey_glass(10, tau=0.01)


def test_make_windows():
    s = torch.arange(10.0)
    X, Y = D.make_windows(s, 3, horizon=2)
    assert X.shape == (6, 3) and Y.shape == (6, 2)
    assert X[0].tolist() == [0, 1, 2] and Y[0].tolist() == [3, 4]
    assert X[-1].tolist() == [5, 6, 7] and Y[-1].tolist() == [8, 9]
    torch.testing.assert_close(Y[:, 0], X[:, -1] + 1)
    with pytest.raises(ValueError, match="too short"):
        D.make_windows(s, 9, horizon=2)
    with pytest.raises(ValueError, match="1-D"):
        D.make_windows(s.view(2, 5), 2)
    with pytest.raises(ValueError, match="window"):
        D.make_windows(s, 0)


def test_split_series_chronological_no_leakage():
    s = torch.arange(100.0)
    ds = D.split_series(s, window=5, horizon=2, test_fraction=0.2)
    assert ds["train_input"].shape[1] == 5 and ds["train_label"].shape[1] == 2
    assert ds["train_label"].max() < 80  # every training target before the cut
    assert ds["test_label"].min() >= 80  # every test target after it
    assert ds["test_label"].max() == 99
    assert len(ds["test_label"]) == 20 - 2 + 1
    assert len(ds["train_label"]) == 80 - 5 - 2 + 1
    with pytest.raises(ValueError, match="test_fraction"):
        D.split_series(s, 5, test_fraction=0)


# ----------------------------------------------------------------------------------------------------
# char corpus
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus():
    return D.CharCorpus()


def test_corpus_default_text(corpus):
    assert len(corpus.text) > 400_000
    assert corpus.vocab == sorted(set(corpus.text))
    assert len(corpus.train_data) + len(corpus.val_data) == len(corpus.text)
    assert abs(len(corpus.val_data) / len(corpus.text) - 0.1) < 1e-3
    assert corpus.train_data.dtype == torch.long
    n = len(corpus.train_data)
    assert corpus.decode(corpus.val_data[:50]) == corpus.text[n : n + 50]
    assert D.CharCorpus().text == corpus.text  # deterministic


def test_corpus_encode_decode_round_trip():
    c = D.CharCorpus(text="hello world, hello kan!")
    assert c.vocab == sorted(set("hello world, hello kan!"))
    assert c.stoi[c.itos[3]] == 3
    ids = c.encode("kan hello")
    assert ids.dtype == torch.long and ids.shape == (9,)
    assert c.decode(ids) == "kan hello"
    assert c.decode(ids.tolist()) == "kan hello"
    with pytest.raises(ValueError, match="'z'"):
        c.encode("lazy")
    with pytest.raises(ValueError, match="out of range"):
        c.decode([999])


def test_corpus_max_chars():
    c = D.CharCorpus(text="abcdefghij" * 10, max_chars=50)
    assert len(c.text) == 50
    assert len(c.train_data) == 45 and len(c.val_data) == 5


def test_corpus_get_batch_shift(corpus):
    g = torch.Generator().manual_seed(0)
    x, y = corpus.get_batch("train", 4, 16, generator=g)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y, strict=True):
        s = corpus.decode(row_x) + corpus.decode(row_y[-1:])
        assert s in corpus.text
    g2 = torch.Generator().manual_seed(0)
    x2, _ = corpus.get_batch("train", 4, 16, generator=g2)
    assert torch.equal(x, x2)
    xv, yv = corpus.get_batch("val", 2, 8, generator=g)
    assert torch.equal(xv[:, 1:], yv[:, :-1])
    with pytest.raises(ValueError, match="split"):
        corpus.get_batch("test", 2, 8)
    with pytest.raises(ValueError, match="block_size"):
        D.CharCorpus(text="abcdefghij" * 2).get_batch("val", 1, 5)
