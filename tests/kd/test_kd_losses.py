"""Pure loss functions of pcdet.kd.losses on hand-built tensors."""
import math

import torch

from pcdet.kd.losses import (bernoulli_kd, head_relation_inputs, heatmap_kd, masked_l1, masked_mse,
                             pointdistiller_loss, relation_attention_loss, relation_matrix, scan_softmax_weights)


def test_masked_l1_and_mse_hand_values():
    pred = torch.tensor([1.0, -2.0, 3.0, 0.0]).view(1, 1, 2, 2)
    target = torch.zeros_like(pred)
    assert masked_l1(pred, target).item() == 1.5
    assert masked_mse(pred, target).item() == (1 + 4 + 9) / 4
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    assert masked_l1(pred, target, mask).item() == 1.5
    assert masked_mse(pred, target, mask).item() == 2.5
    assert masked_l1(pred, pred.clone()).item() == 0.0


def test_relation_matrix_hand_3x2_columns_sum_to_one_per_sample_with_tau():
    # sample 0: M = 3 objects, C = 2 channels, X^T X = [[2, 1], [1, 2]]; sample 1: one object (2, 0) and a pad row
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                      [[2.0, 0.0], [9.0, 9.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    a = relation_matrix(x, tau=2.0, mask=mask)
    # softmax over the FIRST index: column j is softmax_i(G_ij / tau)
    s = 1 / (1 + math.exp(-0.5))  # softmax([1, 0.5]) = [s, 1 - s]
    assert torch.allclose(a[0], torch.tensor([[s, 1 - s], [1 - s, s]]), atol=1e-6)
    # sample 1 alone (the padded row (9, 9) is ignored): G = [[4, 0], [0, 0]]
    e = math.exp(2.0)
    assert torch.allclose(a[1], torch.tensor([[e / (e + 1), 0.5], [1 / (e + 1), 0.5]]), atol=1e-6)
    assert torch.allclose(a.sum(dim=-2), torch.ones(2, 2))  # every column sums to 1
    assert not torch.allclose(a.sum(dim=-1), torch.ones(2, 2))  # rows do not: not row-stochastic
    # per sample, not pooled: the pooled 4 objects would give G = [[6, 1], [1, 2]]
    pooled = relation_matrix(torch.cat([x[0], x[1, :1]]), tau=2.0)
    assert not torch.allclose(pooled, a[0]) and not torch.allclose(pooled, a[1])
    # tau enters as the divisor of the Gram matrix
    assert torch.allclose(relation_matrix(x[0], tau=1.0)[:, 0], torch.softmax(torch.tensor([2.0, 1.0]), 0))


def test_head_relation_inputs_groups_and_attention_loss_zero_on_equal():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    cat, rels = head_relation_inputs(x, [1, 3], 3.0, mask)
    assert cat.shape == (2, 5, 8)
    assert [tuple(r.shape) for r in rels] == [(2, 4, 4), (2, 1, 1), (2, 3, 3)]
    xm = x * mask[..., None]
    assert torch.allclose(cat[..., :4], xm @ relation_matrix(x, 3.0, mask))
    assert torch.allclose(cat[..., 4:5], xm[..., :1])  # a 1-channel group attends to itself with weight 1
    assert (cat[1, 2:] == 0).all()  # padded rows stay zero
    loss, fused, rel = relation_attention_loss(cat, cat.clone(), rels, rels, mask)
    assert loss.item() == 0.0 and fused.item() == 0.0 and rel.item() == 0.0
    # fused term: sum over real rows / number of objects (7); the guard is a mean over entries
    loss, fused, rel = relation_attention_loss(cat + 1.0, cat, rels, rels, mask, relation_weight=2.0)
    assert torch.isclose(fused, torch.tensor(8.0)) and torch.isclose(loss, fused)
    shifted = [r + 0.5 for r in rels]
    loss, fused, rel = relation_attention_loss(cat, cat, shifted, rels, mask, relation_weight=2.0)
    assert torch.isclose(rel, torch.tensor(0.5)) and torch.isclose(loss, torch.tensor(1.0))


def test_scan_softmax_weights_per_scan_formula():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0])
    batch = torch.tensor([0, 0, 0, 1, 1])
    phi = scan_softmax_weights(scores, batch, tau=2.0)
    expect0 = 3 * torch.softmax(torch.tensor([0.5, 1.0, 1.5]), 0)
    expect1 = 2 * torch.softmax(torch.tensor([2.5, 3.5]), 0)
    assert torch.allclose(phi, torch.cat([expect0, expect1]))
    assert torch.isclose(phi[:3].mean(), torch.tensor(1.0)) and torch.isclose(phi[3:].mean(), torch.tensor(1.0))


def test_pointdistiller_loss_hand_value_and_valid_mask():
    g_t = torch.ones(2, 3, 4)
    g_s = torch.zeros(2, 3, 4)
    phi = torch.tensor([1.5, 0.5])
    assert torch.isclose(pointdistiller_loss(g_t, g_s, phi, lam=2.0), torch.tensor(2.0))
    valid = torch.tensor([[True, True, False], [True, False, False]])
    # valid entries: query 0 -> 2 slots * 1.5, query 1 -> 1 slot * 0.5; mean over 3 slots * 4 channels
    expected = 2.0 * (4 * (2 * 1.5 + 0.5)) / (3 * 4)
    assert torch.isclose(pointdistiller_loss(g_t, g_s, phi, valid, lam=2.0), torch.tensor(expected))
    assert pointdistiller_loss(g_t, g_t.clone(), phi, valid).item() == 0.0


def test_bernoulli_kd_zero_on_equal_and_hand_bce():
    t = torch.tensor([[0.0, 2.0]])
    assert abs(bernoulli_kd(t.clone(), t, temperature=2.0).item()) < 1e-6
    s = torch.zeros(1, 2)
    q = torch.sigmoid(t / 2.0)
    bce = -(q * math.log(0.5) + (1 - q) * math.log(0.5)).mean()
    assert torch.isclose(bernoulli_kd(s, t, temperature=2.0, loss_type="bce"), 4.0 * bce)
    assert bernoulli_kd(s, t, temperature=2.0).item() > 0


def test_heatmap_kd_zero_on_equal_and_mse_value():
    t = torch.tensor([0.0, 0.0]).view(1, 1, 1, 2)
    s = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)  # sigmoid = 0.5, 0.75
    assert torch.isclose(heatmap_kd(s, t, "mse"), torch.tensor(0.25 ** 2 / 2))
    assert abs(heatmap_kd(t.clone(), t, "focal").item()) < 1e-7
    assert heatmap_kd(s, t, "focal").item() > 0
