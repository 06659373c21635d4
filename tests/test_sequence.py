"""kanedu.sequence: recurrent KAN cells, the KAN-GRU sequence layer, the char LM, parameter matching, bad input."""

import math

import pytest
import torch

from kanedu import count_parameters, native
from kanedu.data import CharCorpus
from kanedu.sequence import (
    KANGRU,
    CharLM,
    KANGRUCell,
    KANLSTMCell,
    SequenceRegressor,
    TransformerBlock,
    evaluate_bpc,
    gru_parameter_count,
    kan_gru_parameter_count,
    matched_gru,
    train_char_lm,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are chains of small ops: on a shared 2-core machine a second intra-op thread that is
    not scheduled in time stalls each of them (by ~8 ms, measured), so the module runs on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["native", "torch"])
def engine(request, monkeypatch):
    """Run a test on both CPU engines of KANLayer: the compiled loops and the torch kernel."""
    if request.param == "native" and not native.ENABLED:
        pytest.skip("numba is not installed (or KANEDU_NATIVE=0)")
    monkeypatch.setattr(native, "ENABLED", request.param == "native")
    return request.param


def loop(cell, x, h):
    """The reference recurrence: apply a cell step by step to x [T, B, in]; returns [T, B, H]."""
    out = []
    for x_t in x:
        h = cell(x_t, h)
        out.append(h)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------------


def test_kan_gru_cell_implements_the_gru_equations():
    torch.manual_seed(0)
    cell = KANGRUCell(3, 5)
    x, h = torch.rand(7, 3) * 2 - 1, torch.rand(7, 5) * 2 - 1
    gi, gh = cell.input_kan(x), cell.hidden_kan(h)  # the KAN layer on [x, h] is their sum
    r = torch.sigmoid(gi[:, :5] + gh[:, :5])
    z = torch.sigmoid(gi[:, 5:10] + gh[:, 5:10])
    n = torch.tanh(gi[:, 10:] + r * gh[:, 10:])
    torch.testing.assert_close(cell(x, h), (1 - z) * n + z * h)


def test_cells_default_to_a_zero_state_and_accept_unbatched_input():
    torch.manual_seed(0)
    gru, lstm = KANGRUCell(3, 4), KANLSTMCell(3, 4)
    x = torch.rand(6, 3)
    zeros = torch.zeros(6, 4)
    torch.testing.assert_close(gru(x), gru(x, zeros))
    torch.testing.assert_close(gru(x[0]), gru(x)[0])
    h, c = lstm(x)
    assert h.shape == c.shape == (6, 4)
    h1, c1 = lstm(x[0], (zeros[0], zeros[0]))
    assert h1.shape == c1.shape == (4,)
    torch.testing.assert_close(h1, h[0])
    torch.testing.assert_close(c1, c[0])


def test_kan_lstm_cell_state_update():
    torch.manual_seed(0)
    cell = KANLSTMCell(2, 3, kan_size=4)
    x, h, c = torch.rand(5, 2), torch.rand(5, 3) * 2 - 1, torch.randn(5, 3)
    xh = torch.cat([x, h], 1)
    i, f, g = cell.gates(xh).chunk(3, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    o = torch.sigmoid(cell.output_gate(cell.kan(xh)))
    h2, c2 = cell(x, (h, c))
    torch.testing.assert_close(c2, c_new)
    torch.testing.assert_close(h2, o * torch.tanh(c_new))


def test_hidden_state_stays_on_the_kan_grid():
    torch.manual_seed(0)
    cell = KANGRUCell(2, 6)
    h = torch.zeros(32, 6)
    with torch.no_grad():
        for _ in range(100):
            h = cell(torch.randn(32, 2) * 3, h)
            assert h.abs().max() < 1


# ----------------------------------------------------------------------------------------------------
# the sequence layer
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
def test_kan_gru_equals_the_step_by_step_loop_of_its_cells(batch_first):
    torch.manual_seed(0)
    layer = KANGRU(3, 4, num_layers=2, batch_first=batch_first)
    x = torch.rand(9, 5, 3)  # [T, B, in]
    h0 = torch.rand(2, 5, 4) * 2 - 1
    output, h_n = layer(x.transpose(0, 1) if batch_first else x, h0)
    assert output.shape == ((5, 9, 4) if batch_first else (9, 5, 4)) and h_n.shape == (2, 5, 4)
    first = loop(layer.cells[0], x, h0[0])
    second = loop(layer.cells[1], first, h0[1])
    torch.testing.assert_close(output.transpose(0, 1) if batch_first else output, second)
    torch.testing.assert_close(h_n, torch.stack([first[-1], second[-1]]))


def test_kan_gru_initial_state_is_used_and_defaults_to_zeros():
    torch.manual_seed(0)
    layer = KANGRU(2, 3)
    x = torch.rand(6, 4, 2)
    out0, _ = layer(x)
    torch.testing.assert_close(out0, layer(x, torch.zeros(1, 4, 3))[0])
    out1, _ = layer(x, torch.full((1, 4, 3), 0.5))
    assert (out1 - out0).abs().max() > 1e-3


def test_kan_gru_unbatched_input():
    torch.manual_seed(0)
    layer = KANGRU(2, 3, num_layers=2)
    x, h0 = torch.rand(6, 2), torch.rand(2, 3) - 0.5
    out, h_n = layer(x, h0)
    assert out.shape == (6, 3) and h_n.shape == (2, 3)
    ref, ref_n = layer(x.unsqueeze(1), h0.unsqueeze(1))
    torch.testing.assert_close(out, ref[:, 0])
    torch.testing.assert_close(h_n, ref_n[:, 0])


def test_gradients_flow_back_through_time(engine):
    torch.manual_seed(0)
    layer = KANGRU(2, 4, num_layers=2)
    x = torch.rand(20, 3, 2, requires_grad=True)
    h0 = torch.zeros(2, 3, 4, requires_grad=True)
    output, _ = layer(x, h0)
    output[-1].sum().backward()  # a loss on the last step only
    assert x.grad[0].abs().sum() > 0, "the first input must influence the last output"
    assert h0.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"

    cell = KANLSTMCell(2, 4)
    state = None
    xs = torch.rand(15, 3, 2, requires_grad=True)
    for x_t in xs:
        state = cell(x_t, state)
    state[0].sum().backward()
    assert xs.grad[0].abs().sum() > 0


def test_kan_gru_gradcheck(engine):
    torch.manual_seed(0)
    layer = KANGRU(2, 3, num_layers=2).double()
    x = (torch.rand(4, 2, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    h0 = (torch.rand(2, 2, 3, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, h: layer(x, h)[0], (x, h0))


def test_sequence_regressor_runs_either_recurrence():
    torch.manual_seed(0)
    kan = SequenceRegressor(KANGRU(1, 8, batch_first=True), 3)
    gru = SequenceRegressor(matched_gru(kan.rnn, head_out=3), 3)
    x = torch.rand(8, 12)  # [B, T]: one feature, as make_windows gives
    assert kan(x).shape == gru(x).shape == (8, 3)
    with pytest.raises(ValueError, match="batch_first"):
        SequenceRegressor(torch.nn.GRU(1, 4))


# ----------------------------------------------------------------------------------------------------
# parameter matching
# ----------------------------------------------------------------------------------------------------


def test_parameter_count_formulas():
    for args in [(1, 10, 1), (3, 7, 2)]:
        assert gru_parameter_count(*args) == count_parameters(torch.nn.GRU(*args))
        assert kan_gru_parameter_count(*args) == count_parameters(KANGRU(*args))
    assert kan_gru_parameter_count(3, 7, 2, grid_size=8, spline_order=2) == count_parameters(
        KANGRU(3, 7, 2, grid_size=8, spline_order=2))


@pytest.mark.parametrize("in_size, hidden, layers, grid, head_out",
                         [(1, 10, 1, 5, 0), (2, 8, 1, 5, 1), (1, 10, 1, 5, 15), (5, 16, 2, 3, 0), (3, 6, 1, 10, 4)])
def test_matched_gru_is_within_5_percent(in_size, hidden, layers, grid, head_out):
    kan = KANGRU(in_size, hidden, num_layers=layers, batch_first=True, grid_size=grid)
    gru = matched_gru(kan, head_out=head_out)
    assert gru.input_size == in_size and gru.num_layers == layers and gru.batch_first
    head = lambda H: (H + 1) * head_out if head_out else 0
    n_kan = count_parameters(kan) + head(hidden)
    n_gru = count_parameters(gru) + head(gru.hidden_size)
    assert abs(n_gru / n_kan - 1) < 0.05, (n_gru, n_kan)
    assert gru.hidden_size > hidden  # a KAN edge has G + k + 2 parameters, a GRU weight one


def test_matched_gru_rejects_impossible_targets():
    with pytest.raises(ValueError, match="within 5%"):
        matched_gru(7, input_size=1)  # the smallest GRU(1, 1) has 12 parameters
    with pytest.raises(TypeError, match="KANGRU"):
        matched_gru(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("d_model, n_layers, n_heads, kan_kwargs",
                         [(32, 2, 4, {}), (48, 1, 4, {}), (64, 3, 8, {}), (32, 2, 2, {"grid_size": 10})])
def test_char_lm_kan_matches_the_mlp_parameter_count_within_5_percent(d_model, n_layers, n_heads, kan_kwargs):
    mlp = CharLM(50, d_model, n_layers, n_heads, 16, ffn="mlp")
    kan = CharLM(50, d_model, n_layers, n_heads, 16, ffn="kan", **kan_kwargs)
    assert any(type(m).__name__ == "KANLayer" for m in kan.modules())
    assert not any(type(m).__name__ == "KANLayer" for m in mlp.modules())
    n_mlp, n_kan = count_parameters(mlp), count_parameters(kan)
    assert abs(n_kan / n_mlp - 1) < 0.05, (n_kan, n_mlp)


# ----------------------------------------------------------------------------------------------------
# the char LM
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(params=["mlp", "kan"])
def lm(request):
    torch.manual_seed(0)
    return CharLM(vocab_size=20, d_model=32, n_layers=2, n_heads=4, context=16, ffn=request.param)


def test_char_lm_shapes(lm):
    idx = torch.randint(0, 20, (3, 16))
    assert lm(idx).shape == (3, 16, 20)
    assert lm(idx[:, :5]).shape == (3, 5, 20)


def test_a_later_token_never_changes_an_earlier_logit(lm):
    idx = torch.randint(0, 20, (2, 16), generator=torch.Generator().manual_seed(1))
    t = 9
    changed = idx.clone()
    changed[:, t] = (idx[:, t] + 1) % 20
    with torch.no_grad():
        a, b = lm(idx), lm(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().amax() > 1e-4, "the changed token must affect its own and later logits"


def test_generate_is_reproducible_with_a_seed(lm):
    prompt = torch.randint(0, 20, (2, 4))
    state = torch.random.get_rng_state()
    a = lm.generate(prompt, 30, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state), "a seeded generate must leave the global RNG alone"
    b = lm.generate(prompt, 30, seed=7)
    c = lm.generate(prompt, 30, seed=8)
    assert a.shape == (2, 34) and torch.equal(a[:, :4], prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert lm.training, "generate must restore the training mode"


def test_generate_respects_top_k(lm):
    prompt = torch.randint(0, 20, (3, 2))
    out = lm.generate(prompt, 40, temperature=2.0, top_k=3, seed=0)  # runs past the context of 16
    lm.eval()
    with torch.no_grad():
        for t in range(2, out.shape[1]):
            logits = lm(out[:, max(0, t - lm.context) : t])[:, -1]
            top = logits.topk(3, dim=-1).indices
            assert (top == out[:, t : t + 1]).any(-1).all(), f"step {t}: a token outside the top 3 was sampled"
        greedy = lm.generate(prompt, 10, top_k=1, seed=0)
        assert torch.equal(greedy, lm.generate(prompt, 10, top_k=1, seed=123))
        assert torch.equal(greedy[:, 2], lm(prompt)[:, -1].argmax(-1))
    all_k = lm.generate(prompt, 10, seed=5)
    assert torch.equal(all_k, lm.generate(prompt, 10, top_k=20, seed=5))  # top_k = vocab keeps every token


def test_evaluate_bpc_of_a_uniform_model_is_log2_vocab():
    lm = CharLM(vocab_size=16, d_model=16, n_layers=1, n_heads=2, context=8)
    with torch.no_grad():
        lm.tok.weight.zero_()  # tied read-out: every logit is 0
    data = torch.randint(0, 16, (200,))
    assert evaluate_bpc(lm, data) == pytest.approx(4.0, abs=1e-5)


def test_train_char_lm_learns_the_corpus():
    torch.manual_seed(0)
    corpus = CharCorpus(text="the quick brown fox jumps over the lazy dog. " * 40)
    lm = CharLM(corpus.vocab_size, 32, 1, 4, 16, ffn="kan")
    before = evaluate_bpc(lm, corpus.val_data)
    hist = train_char_lm(lm, corpus, steps=60, batch_size=16, lr=1e-2, seed=0)
    assert before > 4 and hist["val_bpc"][-1] < before - 2, (before, hist["val_bpc"])
    assert hist["ms_per_step"] > 0 and len(hist["train_loss"]) == 60


# ----------------------------------------------------------------------------------------------------
# bad input: errors name the expected and the received shape
# ----------------------------------------------------------------------------------------------------


def test_wrong_feature_size_names_both_shapes():
    with pytest.raises(ValueError, match=r"input_size=3.*got \(4, 5\)"):
        KANGRUCell(3, 2)(torch.rand(4, 5))
    with pytest.raises(ValueError, match=r"\[T, B, input_size=3\].*got \(7, 4, 5\)"):
        KANGRU(3, 2)(torch.rand(7, 4, 5))
    with pytest.raises(ValueError, match=r"\[B, T, input_size=3\].*got \(4, 7, 2\)"):
        KANGRU(3, 2, batch_first=True)(torch.rand(4, 7, 2))
    with pytest.raises(ValueError, match=r"input_size=3.*got \(4, 1\)"):
        KANLSTMCell(3, 2)(torch.rand(4, 1))


def test_wrong_hidden_state_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"h must have shape \[B=4, hidden_size=2\].*got \(4, 3\)"):
        KANGRUCell(3, 2)(torch.rand(4, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"h_0 must have shape \[num_layers=2, B=4, hidden_size=5\].*got \(1, 4, 5\)"):
        KANGRU(3, 5, num_layers=2)(torch.rand(7, 4, 3), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match=r"c must have shape \[B=4, hidden_size=2\].*got \(3, 2\)"):
        KANLSTMCell(3, 2)(torch.rand(4, 3), (torch.zeros(4, 2), torch.zeros(3, 2)))


def test_char_lm_bad_input():
    lm = CharLM(vocab_size=10, d_model=16, n_layers=1, n_heads=2, context=8)
    with pytest.raises(ValueError, match=r"T <= context=8, got \(2, 9\)"):
        lm(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, T\].*got \(5,\)"):
        lm(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="LongTensor"):
        lm(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 10\)"):
        lm(torch.full((1, 3), 10))
    with pytest.raises(ValueError, match="top_k"):
        lm.generate(torch.zeros(1, 2, dtype=torch.long), 3, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0.0)
    with pytest.raises(ValueError, match="ffn"):
        TransformerBlock(16, 2, ffn="rnn")
    with pytest.raises(ValueError, match="divisible"):
        CharLM(10, 15, 1, 2, 8)


def test_bits_per_char_matches_cross_entropy():
    torch.manual_seed(0)
    lm = CharLM(vocab_size=12, d_model=16, n_layers=1, n_heads=2, context=8)
    data = torch.randint(0, 12, (8 * 5 + 1,))
    x, y = data[:-1].view(5, 8), data[1:].view(5, 8)
    with torch.no_grad():
        nats = torch.nn.functional.cross_entropy(lm(x).flatten(0, 1), y.flatten()).item()
    assert evaluate_bpc(lm, data) == pytest.approx(nats / math.log(2), rel=1e-5)
