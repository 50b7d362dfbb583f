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

    ``norm='bn'`` puts a BatchNorm2d before each hidden ReLU (conv -> BN -> ReLU); ``'none'`` gives conv -> ReLU.
    (B, c_0, H, W) -> (B, c_n, H, W).
    """

    NORMS = ("none", "bn")

    def __init__(self, widths, norm="none"):
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"ConvStack needs at least two widths (in, out), got {widths}")
        if norm not in self.NORMS:
            raise ValueError(f"ConvStack: norm must be one of {self.NORMS}, got '{norm}'")
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            hidden = i < len(widths) - 2
            layers.append(conv1x1(c_in, c_out, bias=not (hidden and norm == "bn")))
            if hidden:
                if norm == "bn":
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU(inplace=False))
        super().__init__(*layers)
        self.widths = widths
        self.norm = norm


class GraphLayer(nn.Module):
    """Edge-feature layer of PointDistiller: 1x1 conv + BatchNorm + ReLU over edges [F(j); F(i)] -> C'.

    ``forward`` never materialises the (Q, K, 2C) edge tensor: a 1x1 conv W = [W_j, W_i] on [F(j); F(i)] equals
    W_j F(j) + W_i F(i), so both halves are projected per row and gathered ((Q, K, C') memory instead of
    (Q, K, 2C), K times fewer multiply-adds). For the 'diff' edges [F(j) - F(i); F(i)] the query half uses
    W_i - W_j. BatchNorm normalises over all Q*K edges, as BatchNorm2d over a (1, C', Q, K) map would.
    ``forward_edges`` is the same layer on materialised edges (e.g. from ``pcdet.ops.knn.edge_features``).
    """

    MODES = ("trainable", "normalized", "frozen")

    def __init__(self, c_in, c_out, mode="trainable"):
        """``mode``: 'trainable' (conv and BN affine learn, as in the paper); 'normalized' (BN without affine: every
        output channel keeps zero mean / unit variance before the ReLU, so the layer cannot shrink its output to
        zero); 'frozen' (normalized, and the conv keeps its random initialisation: a fixed random projection)."""
        super().__init__()
        if int(c_in) % 2:
            raise ValueError(f"GraphLayer: c_in = 2C must be even, got {c_in}")
        if mode not in self.MODES:
            raise ValueError(f"GraphLayer: mode must be one of {self.MODES}, got '{mode}'")
        self.c_in = int(c_in)
        self.mode = mode
        self.conv = nn.Linear(self.c_in, int(c_out), bias=False)
        self.bn = nn.BatchNorm1d(int(c_out), affine=mode == "trainable")
        if mode == "frozen":
            self.conv.weight.requires_grad_(False)

    def _finish(self, y):
        q, k, c = y.shape
        return F.relu(self.bn(y.reshape(q * k, c))).view(q, k, c)

    def project(self, features, query_index, mode="concat"):
        """The two halves of the edge convolution: rows (M, C') = F W_j^T and centre (Q, C') = F[query] W_i^T
        (W_i - W_j for 'diff' edges); the edge (i, k) with neighbour j has pre-activation rows[j] + centre[i]."""
        if features.dim() != 2 or 2 * features.shape[1] != self.c_in:
            raise ValueError(f"GraphLayer: expected features (M, {self.c_in // 2}), got {tuple(features.shape)}")
        c = self.c_in // 2
        w_j, w_i = self.conv.weight[:, :c], self.conv.weight[:, c:]
        if mode == "diff":
            w_i = w_i - w_j
        elif mode != "concat":
            raise ValueError(f"GraphLayer: mode must be 'concat' or 'diff', got '{mode}'")
        return features @ w_j.t(), features[query_index] @ w_i.t()

    def affine(self, like):
        """(gamma, beta) of the BatchNorm: its parameters, or ones / zeros (float32, on ``like``'s device)."""
        if self.bn.affine:
            return self.bn.weight, self.bn.bias
        c = self.bn.num_features
        return torch.ones(c, device=like.device), torch.zeros(c, device=like.device)

    @torch.no_grad()
    def track(self, mean, var, count):
        """Update the BatchNorm running averages from batch statistics of ``count`` edges (biased ``var``), as a
        training-mode BatchNorm1d forward does; used by the fused loss, which normalises outside the module."""
        bn = self.bn
        if not (bn.training and bn.track_running_stats):
            return
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)

    def forward(self, features, query_index, idx, mode="concat"):
        """features (M, C), query_index (Q,), idx (Q, K) neighbour rows -> (Q, K, C')."""
        rows, centre = self.project(features, query_index, mode)
        q, k = idx.shape
        edges = torch.index_select(rows, 0, idx.reshape(-1)).view(q, k, -1)
        return self._finish(edges.add_(centre[:, None, :]))  # in place: index_select's backward needs no output

    def forward_edges(self, edges):
        """edges (Q, K, c_in) -> (Q, K, C'); the reference path on materialised edge features."""
        if edges.dim() != 3 or edges.shape[-1] != self.c_in:
            raise ValueError(f"GraphLayer: expected edges (Q, K, {self.c_in}), got {tuple(edges.shape)}")
        return self._finish(self.conv(edges))


class FusionLinear(nn.Module):
    """1x1 linear map (M, c_in) -> (M, c_out) of the itKD fusion layer, in one of three modes.

    'trainable': a free weight (the authors; it can learn all-zero rows and drive L_attn to zero);
    'normalized': every output row has unit L2 norm (cannot shrink, but it can still learn rows orthogonal to the
    teacher-student differences: with the authors' tau = sqrt(500) the attended features X A are close to channel
    means, so those differences span only a few directions and the loss collapses on a fixed batch, see
    tests/kd/test_kd_heads.py); 'frozen': unit-norm rows of a fixed random draw, so no distillation module can
    lower the loss except the student.
    """

    MODES = ("trainable", "normalized", "frozen")

    def __init__(self, c_in, c_out, mode="frozen", eps=1e-6):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"FusionLinear: mode must be one of {self.MODES}, got '{mode}'")
        self.weight = nn.Parameter(torch.empty(int(c_out), int(c_in)))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.mode = mode
        self.eps = eps
        if mode == "frozen":
            self.weight.requires_grad_(False)

    def effective_weight(self):
        if self.mode == "trainable":
            return self.weight
        return self.weight / self.weight.norm(dim=1, keepdim=True).clamp_min(self.eps)

    def forward(self, x):
        if x.shape[-1] != self.weight.shape[1]:
            raise ValueError(f"FusionLinear: expected (..., {self.weight.shape[1]}), got {tuple(x.shape)}")
        return x @ self.effective_weight().t()


def resample_to(x, size):
    """Bilinear resize of (B, C, H, W) to ``size`` = (H', W'); identity when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
