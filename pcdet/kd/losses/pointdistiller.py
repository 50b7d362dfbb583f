"""PointDistiller reweighted local-graph loss."""
import torch


def scan_softmax_weights(scores, batch_idx, tau):
    """phi_i = n_b * softmax_{i in scan b}(s_i / tau), so the mean weight in each scan is 1.

    scores (Q,) float, batch_idx (Q,) int -> phi (Q,). Never mixes scans.
    """
    if scores.shape != batch_idx.shape:
        raise ValueError(f"scan_softmax_weights: scores {tuple(scores.shape)} vs batch_idx {tuple(batch_idx.shape)}")
    if tau <= 0:
        raise ValueError(f"scan_softmax_weights: tau must be > 0, got {tau}")
    z = scores.float() / tau
    phi = torch.zeros_like(z)
    for b in torch.unique(batch_idx):
        sel = batch_idx == b
        phi[sel] = sel.sum().to(z.dtype) * torch.softmax(z[sel], dim=0)
    return phi


def pointdistiller_loss(g_t, g_s, phi, valid=None, lam=1.0):
    """L = lam * mean over valid (i, j, c) of phi_i * (G_T(i,j,c) - G_S(i,j,c))^2.

    g_t, g_s (Q, K, C'); phi (Q,); valid (Q, K) bool (padding neighbours excluded) or None.
    """
    if g_t.shape != g_s.shape or g_t.dim() != 3:
        raise ValueError(f"pointdistiller_loss: graph features {tuple(g_t.shape)} vs {tuple(g_s.shape)}")
    if phi.shape != g_t.shape[:1]:
        raise ValueError(f"pointdistiller_loss: phi {tuple(phi.shape)} does not match Q={g_t.shape[0]}")
    # reduce over channels first so the (Q, K, C') tensor is touched by as few elementwise passes as possible
    sq = ((g_t - g_s) ** 2).sum(dim=2)  # (Q, K)
    weights = phi.to(g_s.dtype)[:, None].expand_as(sq)
    if valid is None:
        return lam * (sq * weights).sum() / (sq.numel() * g_s.shape[2])
    mask = valid.to(g_s.dtype)
    denom = (mask.sum() * g_s.shape[2]).clamp_min(1.0)
    return lam * (sq * weights * mask).sum() / denom
