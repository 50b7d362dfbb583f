"""Losses of pcdet/utils/loss_utils.py on hand-computed cases."""
import math

import torch

from pcdet.utils.loss_utils import (SigmoidFocalClassificationLoss, WeightedCrossEntropyLoss, WeightedL1Loss,
                                    WeightedSmoothL1Loss)


def test_focal_loss_known_values():
    loss_fn = SigmoidFocalClassificationLoss(gamma=2.0, alpha=0.25)
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    weights = torch.tensor([[1.0, 0.5]])
    loss = loss_fn(logits, target, weights)
    pos = 0.25 * 0.5 ** 2 * math.log(2.0)
    neg = 0.75 * 0.5 ** 2 * math.log(2.0)
    torch.testing.assert_close(loss, torch.tensor([[[pos, neg], [0.5 * neg, 0.5 * neg]]]))


def test_focal_loss_is_small_for_confident_correct_and_stable_for_large_logits():
    loss_fn = SigmoidFocalClassificationLoss()
    logits = torch.tensor([[[20.0], [-20.0], [200.0]]])
    target = torch.tensor([[[1.0], [0.0], [0.0]]])
    loss = loss_fn(logits, target, torch.ones(1, 3))
    assert loss[0, 0, 0] < 1e-8 and loss[0, 1, 0] < 1e-8
    torch.testing.assert_close(loss[0, 2, 0], torch.tensor(0.75 * 200.0))


def test_smooth_l1_known_values_code_weights_and_nan():
    loss_fn = WeightedSmoothL1Loss(beta=1.0 / 9.0, code_weights=[1.0, 2.0, 1.0])
    pred = torch.tensor([[[0.05, 1.0, 3.0]]])
    target = torch.tensor([[[0.0, 0.0, float("nan")]]])
    loss = loss_fn(pred, target, weights=torch.tensor([[2.0]]))
    small = 0.5 * 0.05 ** 2 * 9.0
    large = 2.0 - 0.5 / 9.0  # diff 1 scaled by code weight 2
    torch.testing.assert_close(loss, torch.tensor([[[2 * small, 2 * large, 0.0]]]))
    assert "code_weights" not in loss_fn.state_dict()  # OpenPCDet checkpoints carry no loss buffers


def test_l1_and_gradient():
    pred = torch.tensor([[[1.0, -2.0]]], requires_grad=True)
    loss = WeightedL1Loss(code_weights=[1.0, 0.5])(pred, torch.zeros(1, 1, 2), torch.ones(1, 1))
    torch.testing.assert_close(loss, torch.tensor([[[1.0, 1.0]]]))
    loss.sum().backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[[1.0, -0.5]]]))


def test_weighted_cross_entropy():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    loss = WeightedCrossEntropyLoss()(logits, target, weights=torch.tensor([[1.0, 0.5]]))
    expected = torch.tensor([[math.log(2.0), 0.5 * (math.log(1 + math.exp(2.0)))]])
    torch.testing.assert_close(loss, expected)
