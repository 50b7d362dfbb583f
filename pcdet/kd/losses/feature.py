"""Feature-map regression losses with an optional spatial weight."""
import torch


def _weighted_mean(err, weight):
    """err (B, C, H, W); weight None or (B, 1, H, W) / (B, H, W): mean over weighted cells and channels."""
    if weight is None:
        return err.mean()
    if weight.dim() == 3:
        weight = weight.unsqueeze(1)
    if weight.shape[0] != err.shape[0] or tuple(weight.shape[-2:]) != tuple(err.shape[-2:]):
        raise ValueError(f"feature loss: weight {tuple(weight.shape)} does not match map {tuple(err.shape)}")
    weight = weight.to(err.dtype)
    denom = (weight.sum() * err.shape[1]).clamp_min(1.0)
    return (err * weight).sum() / denom


def masked_l1(pred, target, weight=None):
    """Mean |pred - target| over (B, C, H, W), restricted to cells weighted by ``weight`` (B, 1, H, W) if given."""
    if pred.shape != target.shape:
        raise ValueError(f"masked_l1: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    return _weighted_mean((pred - target).abs(), weight)


def masked_mse(pred, target, weight=None):
    """Mean (pred - target)^2 over (B, C, H, W), restricted to cells weighted by ``weight`` if given."""
    if pred.shape != target.shape:
        raise ValueError(f"masked_mse: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    return _weighted_mean((pred - target) ** 2, weight)


def zero_like_graph(*tensors):
    """A scalar 0 that stays connected to the autograd graph of ``tensors`` (so DDP sees every parameter used)."""
    total = None
    for t in tensors:
        term = t.sum() * 0.0
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
