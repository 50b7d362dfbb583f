"""Connectors between teacher and student features (mmrazor's "connector" role).

Every width comes from the caller (measured on the real networks or read from config); nothing is hard-coded.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv1x1(c_in, c_out, bias=True):
    """1x1 ``Conv2d`` mapping (B, c_in, H, W) -> (B, c_out, H, W)."""
    if c_in <= 0 or c_out <= 0:
        raise ValueError(f"conv1x1: channel counts must be positive, got {c_in} -> {c_out}")
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias)


class ConvStack(nn.Sequential):
    """Stack of 1x1 convs over ``widths`` = [c_0, c_1, ..., c_n] with ReLU between layers (none after the last).

    (B, c_0, H, W) -> (B, c_n, H, W).
    """

    def __init__(self, widths):
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"ConvStack needs at least two widths (in, out), got {widths}")
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(conv1x1(c_in, c_out))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=False))
        super().__init__(*layers)
        self.widths = widths


class GraphLayer(nn.Module):
    """Edge-feature layer of PointDistiller: 1x1 conv + BatchNorm + ReLU over (Q, K, 2C) edges -> (Q, K, C').

    The 1x1 conv is applied as a bias-free linear map on the flattened (Q*K, c_in) edges and BatchNorm1d
    normalises over all Q*K edges (the same statistics as BatchNorm2d over a (1, C, Q, K) map), which avoids the
    slow strided conv path on CPU.
    """

    def __init__(self, c_in, c_out):
        super().__init__()
        self.c_in = int(c_in)
        self.conv = nn.Linear(self.c_in, int(c_out), bias=False)
        self.bn = nn.BatchNorm1d(int(c_out))

    def forward(self, edges):
        """edges (Q, K, c_in) -> (Q, K, c_out)."""
        if edges.dim() != 3 or edges.shape[-1] != self.c_in:
            raise ValueError(f"GraphLayer: expected edges (Q, K, {self.c_in}), got {tuple(edges.shape)}")
        q, k, _ = edges.shape
        x = self.bn(self.conv(edges.reshape(q * k, self.c_in)))
        return F.relu(x).view(q, k, -1)


class NormalizedConv1x1(nn.Module):
    """1x1 linear map whose every output row has unit L2 norm (weight normalisation without a gain).

    Used for the itKD fusion layer: a unit-norm row cannot shrink to zero, so the fusion alone cannot make the
    attention loss vanish by scaling. (M, c_in) -> (M, c_out).
    """

    def __init__(self, c_in, c_out, normalize=True, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(int(c_out), int(c_in)))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.normalize = bool(normalize)
        self.eps = eps

    def effective_weight(self):
        if not self.normalize:
            return self.weight
        return self.weight / self.weight.norm(dim=1, keepdim=True).clamp_min(self.eps)

    def forward(self, x):
        if x.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"NormalizedConv1x1: expected (..., {self.weight.shape[1]}), got {tuple(x.shape)}")
        return x @ self.effective_weight().t()


def resample_to(x, size):
    """Bilinear resize of (B, C, H, W) to ``size`` = (H', W'); identity when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
