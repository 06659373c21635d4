"""KAN and MLP models: grids, regularization, attribution, pruning, parameter matching."""

import pytest
import torch

from kanedu import KAN, MLP, count_parameters, flops_per_sample, matched_mlp
from kanedu.models import mlp_parameter_count


def rel_change(new, old):
    return ((new - old).pow(2).mean().sqrt() / old.pow(2).mean().sqrt()).item()


def test_kan_shapes_and_layers():
    model = KAN([2, 5, 1])
    assert [(l.in_features, l.out_features) for l in model.layers] == [(2, 5), (5, 1)]
    assert model(torch.randn(7, 2)).shape == (7, 1)
    assert model(torch.randn(3, 4, 2)).shape == (3, 4, 1)


def test_kan_parameter_count_matches_the_formula():
    # per edge: G + k spline coefficients, plus w_b and w_s
    model = KAN([3, 4, 2], grid_size=5, spline_order=3)
    assert count_parameters(model) == (3 * 4 + 4 * 2) * (5 + 3 + 2)


def test_seed_makes_init_reproducible_without_global_rng():
    state = torch.get_rng_state()
    a, b = KAN([2, 3, 1], seed=7), KAN([2, 3, 1], seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(KAN([2, 3, 1], seed=8).layers[0].coef, a.layers[0].coef)


def test_config_rebuilds_the_same_architecture():
    model = KAN([2, 3, 1], grid_size=7, spline_order=2, base_activation="tanh", seed=1)
    clone = KAN(**model.config)
    assert clone.widths == [2, 3, 1] and clone.grid_size == 7 and clone.layers[0].base_activation == "tanh"
    for pa, pb in zip(model.parameters(), clone.parameters()):
        assert torch.equal(pa, pb)


def _trained_like(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.scale_spline.mul_(torch.rand(layer.scale_spline.shape, generator=gen, dtype=torch.float64) + 0.5)
            layer.coef.add_(0.2 * torch.randn(layer.coef.shape, generator=gen, dtype=torch.float64).cumsum(-1) / 3)
    return model


def test_model_update_grid_keeps_the_function():
    model = _trained_like(KAN([2, 4, 1], seed=0, dtype=torch.float64))
    x = torch.rand(1000, 2, dtype=torch.float64) * 2 - 1
    before = model(x)
    model.update_grid(x)
    assert rel_change(model(x), before) < 0.01


@pytest.mark.parametrize("with_samples", [False, True])
def test_model_refine_returns_a_finer_model_with_the_same_function(with_samples):
    model = _trained_like(KAN([2, 4, 1], seed=0, dtype=torch.float64))
    x = torch.rand(1000, 2, dtype=torch.float64) * 2 - 1
    model.update_grid(x)
    finer = model.refine(20, x if with_samples else None)
    assert finer.grid_size == 20 and model.grid_size == 5
    assert finer.config["grid_size"] == 20
    assert rel_change(finer(x), model(x)) < 0.01


def test_regularization_loss_is_differentiable_and_prefers_sparse_models():
    x = torch.randn(200, 3)
    model = KAN([3, 2, 1], seed=0)
    reg = model.regularization_loss(x)
    reg.backward()
    assert reg.item() > 0 and model.layers[0].coef.grad is not None
    # switching edges off lowers both the L1 and the entropy term
    sparse = KAN([3, 2, 1], seed=0)
    with torch.no_grad():
        sparse.layers[0].mask[1:, :] = 0
    assert sparse.regularization_loss(x).item() < model.regularization_loss(x).item()


def test_regularization_with_coefficient_terms():
    model = KAN([2, 2, 1], seed=0)
    x = torch.randn(50, 2)
    base = model.regularization_loss(x)
    assert model.regularization_loss(x, lamb_coef=1.0, lamb_coefdiff=1.0) > base


def _pykan_regularization(model, x, l1=1.0, ent=2.0):
    """pykan 0.2.8's reg(reg_metric="edge_forward_spline_n") written out for one forward pass."""
    total, h = 0.0, x
    for layer in model.layers:
        phi = layer.edge_activations(h)  # [N, out, in]
        vec = phi.std(0) / (h.std(0) + 0.1)
        p_row = vec / (vec.sum(1, keepdim=True) + 1)
        p_col = vec / (vec.sum(0, keepdim=True) + 1)
        e_row = -(p_row * torch.log2(p_row + 1e-4)).sum(1).mean()
        e_col = -(p_col * torch.log2(p_col + 1e-4)).sum(0).mean()
        total = total + l1 * vec.sum() + ent * (e_row + e_col)
        h = phi.sum(-1)
    return total


def test_regularization_is_computed_as_pykan_computes_it():
    x = torch.randn(300, 3, dtype=torch.float64)
    model = KAN([3, 4, 2], seed=3, dtype=torch.float64)
    with torch.no_grad():
        model.layers[0].mask[1, 2] = 0.0
    torch.testing.assert_close(model.regularization_loss(x), _pykan_regularization(model, x))
    torch.testing.assert_close(model.regularization_loss(x, lamb_l1=0.5, lamb_entropy=0.0),
                               _pykan_regularization(model, x, l1=0.5, ent=0.0))
    coef = sum(layer.coef.abs().mean(1).sum() for layer in model.layers)
    torch.testing.assert_close(model.regularization_loss(x, lamb_coef=2.0) - model.regularization_loss(x), 2 * coef)


def test_attribution_scores_are_pykans():
    x = torch.rand(400, 2, dtype=torch.float64) * 2 - 1
    model = KAN([2, 3, 2], seed=1, dtype=torch.float64)
    node, edge = model.attribution(x)
    phi0, phi1 = model.layers[0].edge_activations(x), None
    h = phi0.sum(-1)
    phi1 = model.layers[1].edge_activations(h)
    out_score = torch.full((2,), 0.5, dtype=torch.float64)  # 1 / n_outputs each
    e1 = phi1.std(0) * (out_score / (phi1.sum(-1).std(0) + 1e-4))[:, None]
    torch.testing.assert_close(edge[1], e1)
    torch.testing.assert_close(node[1], e1.sum(0))
    e0 = phi0.std(0) * (node[1] / (h.std(0) + 1e-4))[:, None]
    torch.testing.assert_close(edge[0], e0)
    torch.testing.assert_close(node[0], e0.sum(0))


def test_attribution_finds_the_input_that_matters():
    model = KAN([3, 4, 1], seed=0)
    with torch.no_grad():
        model.layers[0].mask[2, :] = 0  # input 3 is disconnected
    node, edge = model.attribution(torch.randn(500, 3))
    assert [n.shape[0] for n in node] == [3, 4, 1]
    assert edge[0].shape == (4, 3) and edge[1].shape == (1, 4)
    assert node[0][2] == 0 and node[0][:2].min() > 0


def test_prune_removes_dead_hidden_nodes_and_keeps_the_kept_paths_exact():
    torch.manual_seed(0)
    model = KAN([2, 5, 1], seed=0)
    with torch.no_grad():
        model.layers[1].mask[[1, 3], 0] = 0  # hidden nodes 1 and 3 no longer reach the output
    x = torch.rand(300, 2) * 2 - 1
    pruned = model.prune(x, node_threshold=1e-2, edge_threshold=0.0)
    assert pruned.widths == [2, 3, 1]
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


def test_prune_keeps_the_strongest_node_when_none_passes_the_threshold():
    x = torch.rand(400, 2, dtype=torch.float64) * 2 - 1
    model = KAN([2, 4, 1], seed=2, dtype=torch.float64)
    with torch.no_grad():  # hidden node 2 carries almost everything, the others a little
        model.layers[1].scale_base.mul_(torch.tensor([[0.02], [0.05], [3.0], [0.01]], dtype=torch.float64))
        model.layers[1].scale_spline.mul_(torch.tensor([[0.02], [0.05], [3.0], [0.01]], dtype=torch.float64))
    node, _ = model.attribution(x)
    strongest = int(node[1].argmax())
    assert strongest == 2
    pruned = model.prune(x, node_threshold=10.0, edge_threshold=0.0)  # no node scores 10
    assert pruned.widths == [2, 1, 1]
    torch.testing.assert_close(pruned.layers[0].coef[:, 0], model.layers[0].coef[:, strongest])
    err = (pruned(x) - model(x)).pow(2).mean().sqrt() / model(x).std()
    assert err < 0.05, f"the pruned model should stay close to the original, relative error {err:.3f}"


def test_prune_weak_edges_equals_masking_them():
    model = KAN([3, 3, 1], seed=1)
    x = torch.randn(400, 3)
    _, edge = model.attribution(x)
    thr = float(edge[0].median())
    pruned = model.prune(x, node_threshold=0.0, edge_threshold=thr)
    masked = KAN(**model.config)
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        masked.layers[0].mask.mul_((edge[0] > thr).T.float())
        masked.layers[1].mask.mul_((edge[1] > thr).T.float())
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)
    assert pruned.layers[0].mask.sum() < 9


def test_mlp_forward_config_and_count():
    mlp = MLP([4, 16, 16, 2], activation="relu", seed=0)
    assert mlp(torch.randn(5, 4)).shape == (5, 2)
    assert count_parameters(mlp) == mlp_parameter_count([4, 16, 16, 2]) == 5 * 16 + 17 * 16 + 17 * 2
    again = MLP(**mlp.config)
    assert all(torch.equal(a, b) for a, b in zip(mlp.parameters(), again.parameters()))


@pytest.mark.parametrize("widths,G", [([2, 5, 1], 5), ([4, 8, 8, 1], 10), ([64, 10], 5), ([2, 1, 1], 3)])
def test_matched_mlp_is_within_5_percent(widths, G):
    kan = KAN(widths, grid_size=G)
    mlp = matched_mlp(kan)
    assert mlp.widths[0] == widths[0] and mlp.widths[-1] == widths[-1]
    assert abs(count_parameters(mlp) - count_parameters(kan)) / count_parameters(kan) <= 0.05


@pytest.mark.parametrize("widths", [[2, 5, 1], [3, 4, 4, 1], [4, 6, 2, 3, 1]])
def test_matched_mlp_has_the_kans_number_of_hidden_layers(widths):
    mlp = matched_mlp(KAN(widths, grid_size=5))
    assert len(mlp.widths) == len(widths), f"{mlp.widths} for a KAN {widths}"


def test_matched_mlp_finds_widths_beyond_4096():
    # a 1 -> h -> 1 MLP has 3h + 1 parameters: 19,531 needs h = 6510 (a search capped at 4096 returned 4096)
    assert matched_mlp(19_531, in_features=1, out_features=1, hidden_layers=1).widths == [1, 6510, 1]


def test_matched_mlp_rejects_impossible_targets():
    with pytest.raises(ValueError, match="no MLP"):
        matched_mlp(3, in_features=10, out_features=1)


def test_flops_per_sample():
    kan, mlp = KAN([2, 5, 1]), MLP([2, 5, 1])
    assert flops_per_sample(mlp) == 2 * 2 * 5 + 5 + 2 * 5 * 1 + 1 + 4 * 5
    dense = flops_per_sample(kan, sparse=False)
    assert dense > flops_per_sample(kan) > flops_per_sample(mlp)


def test_bad_widths():
    with pytest.raises(ValueError, match=r"widths\[1\] must be a positive int or \[n_sum, n_mult\].*, got 0"):
        KAN([2, 0, 1])
    with pytest.raises(ValueError, match="at least 2"):
        KAN([3])
    with pytest.raises(ValueError, match="widths"):
        MLP("2,1")
