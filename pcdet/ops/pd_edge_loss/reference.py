"""PyTorch reference of the fused PointDistiller graph loss (any device; the test oracle and the fallback)."""
import torch
import torch.nn.functional as F


def check_pd_args(side_s, side_t, idx, valid, phi):
    """Validate the arguments of ``pd_edge_loss``; raises ValueError naming the bad one."""
    if not torch.is_tensor(idx) or idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"pd_edge_loss: idx must be a (Q, K) int64 tensor, got {getattr(idx, 'dtype', None)} "
                         f"{tuple(getattr(idx, 'shape', ()))}")
    q, k = idx.shape
    if not torch.is_tensor(valid) or valid.shape != idx.shape or valid.dtype != torch.bool:
        raise ValueError(f"pd_edge_loss: valid must be a ({q}, {k}) bool tensor, got "
                         f"{getattr(valid, 'dtype', None)} {tuple(getattr(valid, 'shape', ()))}")
    if not torch.is_tensor(phi) or phi.shape != (q,):
        raise ValueError(f"pd_edge_loss: phi must be ({q},), got {tuple(getattr(phi, 'shape', ()))}")
    num_rows = None
    for who, side in (("student", side_s), ("teacher", side_t)):
        if len(side) != 4:
            raise ValueError(f"pd_edge_loss: the {who} side is (rows, centre, gamma, beta), got {len(side)} items")
        rows, centre, gamma, beta = side
        if rows.dim() != 2 or centre.dim() != 2 or centre.shape[0] != q or rows.shape[1] != centre.shape[1]:
            raise ValueError(f"pd_edge_loss: {who} rows (M, C) and centre ({q}, C) expected, got "
                             f"{tuple(rows.shape)} and {tuple(centre.shape)}")
        c = rows.shape[1]
        if gamma.shape != (c,) or beta.shape != (c,):
            raise ValueError(f"pd_edge_loss: {who} gamma / beta must be ({c},), got {tuple(gamma.shape)} / "
                             f"{tuple(beta.shape)}")
        if num_rows is not None and (rows.shape[0], c) != num_rows:
            raise ValueError(f"pd_edge_loss: teacher rows {tuple(rows.shape)} differ from the student's {num_rows}")
        num_rows = tuple(rows.shape)
    devices = {t.device for t in (*side_s, *side_t, valid, phi)}
    if devices != {idx.device}:
        raise ValueError(f"pd_edge_loss: every tensor must be on the device of idx ({idx.device}), got "
                         f"{sorted(str(d) for d in devices)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_rows[0]):
        raise ValueError(f"pd_edge_loss: idx must lie in [0, {num_rows[0]}), got range [{int(idx.min())}, "
                         f"{int(idx.max())}]")


def _side(rows, centre, gamma, beta, idx, eps):
    q, k = idx.shape
    y = (torch.index_select(rows, 0, idx.reshape(-1)).view(q, k, -1) + centre[:, None, :]).reshape(q * k, -1)
    mean = y.detach().mean(0)
    var = y.detach().var(0, unbiased=False)
    z = F.relu(F.batch_norm(y, None, None, gamma, beta, training=True, eps=eps))
    return z, mean, var


def pd_edge_loss_reference(side_s, side_t, idx, valid, phi, lam, eps=1e-5):
    """Materialised reference: edges y = rows[idx] + centre[:, None], BatchNorm over the Q*K edges (batch
    statistics), ReLU, and ``lam * sum_valid phi_i sum_c (z_t - z_s)^2 / max(1, #valid * C)``.

    Args:
        side_s, side_t: (rows (M, C), centre (Q, C), gamma (C,), beta (C,)) of the student and the teacher.
        idx: (Q, K) int64 neighbour rows; valid: (Q, K) bool; phi: (Q,) weights.
    Returns:
        (loss (), stats (4, C) float64: mean_s, var_s, mean_t, var_t of the pre-activations, biased variance).
    """
    check_pd_args(side_s, side_t, idx, valid, phi)
    q, k = idx.shape
    c = side_s[0].shape[1]
    if q * k == 0:
        zero = sum((t * 0).sum() for t in (*side_s, *side_t)) * lam
        return zero, torch.zeros(4, c, dtype=torch.float64, device=idx.device)
    z_s, mean_s, var_s = _side(*side_s, idx, eps)
    z_t, mean_t, var_t = _side(*side_t, idx, eps)
    sq = ((z_t - z_s) ** 2).sum(1).view(q, k)
    mask = valid.to(sq.dtype)
    denom = (mask.sum() * c).clamp_min(1.0)
    loss = lam * (sq * mask * phi.detach().to(sq.dtype)[:, None]).sum() / denom   # phi carries no gradient
    stats = torch.stack([mean_s, var_s, mean_t, var_t]).double()
    return loss, stats
