"""Detection losses (OpenPCDet's loss_utils): focal classification, weighted smooth-L1 regression and
weighted cross-entropy for the direction classifier. Each returns unreduced, weighted losses."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SigmoidFocalClassificationLoss(nn.Module):
    """Sigmoid focal loss, ``alpha_t * (1 - p_t) ** gamma * BCE``.

    Args:
        gamma: focusing exponent; alpha: weight of the positive class.
    """

    def __init__(self, gamma=2.0, alpha=0.25):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    @staticmethod
    def sigmoid_cross_entropy_with_logits(input, target):
        """Numerically stable ``max(x, 0) - x * z + log(1 + exp(-|x|))``, elementwise."""
        return torch.clamp(input, min=0) - input * target + torch.log1p(torch.exp(-torch.abs(input)))

    def forward(self, input, target, weights):
        """Args:
            input: (B, A, num_class) logits.
            target: (B, A, num_class) one-hot targets.
            weights: (B, A) anchor weights.
        Returns: (B, A, num_class) weighted loss."""
        pred_sigmoid = torch.sigmoid(input)
        alpha_weight = target * self.alpha + (1 - target) * (1 - self.alpha)
        pt = target * (1.0 - pred_sigmoid) + (1.0 - target) * pred_sigmoid
        focal_weight = alpha_weight * torch.pow(pt, self.gamma)
        loss = focal_weight * self.sigmoid_cross_entropy_with_logits(input, target)
        if weights.dim() == 2 or (weights.dim() == 1 and target.dim() == 2):
            weights = weights.unsqueeze(-1)
        if weights.dim() != loss.dim():
            raise ValueError(f"SigmoidFocalClassificationLoss: weights {tuple(weights.shape)} do not broadcast "
                             f"to loss {tuple(loss.shape)}")
        return loss * weights


class WeightedSmoothL1Loss(nn.Module):
    """Code-wise weighted smooth-L1 (Huber with threshold ``beta``); NaN targets are ignored.

    Args:
        beta: L1 / L2 transition; below 1e-5 the loss is plain L1.
        code_weights: list of per-column weights, or None.
    """

    def __init__(self, beta=1.0 / 9.0, code_weights=None):
        super().__init__()
        self.beta = beta
        if code_weights is not None:
            # not persistent: OpenPCDet checkpoints carry no loss buffers
            self.register_buffer("code_weights", torch.from_numpy(np.array(code_weights, dtype=np.float32)),
                                 persistent=False)
        else:
            self.code_weights = None

    @staticmethod
    def smooth_l1_loss(diff, beta):
        if beta < 1e-5:
            return torch.abs(diff)
        n = torch.abs(diff)
        return torch.where(n < beta, 0.5 * n ** 2 / beta, n - 0.5 * beta)

    def forward(self, input, target, weights=None):
        """Args:
            input: (B, A, code_size) predictions; target: (B, A, code_size); weights: (B, A) or None.
        Returns: (B, A, code_size) weighted loss."""
        target = torch.where(torch.isnan(target), input, target)
        diff = input - target
        if self.code_weights is not None:
            if self.code_weights.numel() != diff.shape[-1]:
                raise ValueError(f"WeightedSmoothL1Loss: {self.code_weights.numel()} code_weights for "
                                 f"{diff.shape[-1]} box code columns")
            diff = diff * self.code_weights.view(1, 1, -1)
        loss = self.smooth_l1_loss(diff, self.beta)
        if weights is not None:
            if weights.shape[0] != loss.shape[0] or weights.shape[1] != loss.shape[1]:
                raise ValueError(f"WeightedSmoothL1Loss: weights {tuple(weights.shape)} vs loss "
                                 f"{tuple(loss.shape)}")
            loss = loss * weights.unsqueeze(-1)
        return loss


class WeightedL1Loss(nn.Module):
    """Code-wise weighted L1; NaN targets are ignored."""

    def __init__(self, code_weights=None):
        super().__init__()
        if code_weights is not None:
            self.register_buffer("code_weights", torch.from_numpy(np.array(code_weights, dtype=np.float32)),
                                 persistent=False)
        else:
            self.code_weights = None

    def forward(self, input, target, weights=None):
        """(B, A, C) input / target, (B, A) weights -> (B, A, C) loss."""
        target = torch.where(torch.isnan(target), input, target)
        diff = input - target
        if self.code_weights is not None:
            diff = diff * self.code_weights.view(1, 1, -1)
        loss = torch.abs(diff)
        if weights is not None:
            loss = loss * weights.unsqueeze(-1)
        return loss


class WeightedCrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with per-anchor weights (direction classifier)."""

    def forward(self, input, target, weights):
        """Args:
            input: (B, A, num_class) logits; target: (B, A, num_class) one-hot; weights: (B, A).
        Returns: (B, A) weighted loss."""
        input = input.permute(0, 2, 1)
        target = target.argmax(dim=-1)
        return F.cross_entropy(input, target, reduction="none") * weights
