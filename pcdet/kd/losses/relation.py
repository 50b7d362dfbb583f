"""itKD head relation-aware self-attention: per-sample relation matrices and the attention loss.

Objects of one sample are rows of ``x`` (B, M, C) with a validity mask (B, M); padded rows are zero, so
``X_b^T X_b`` sums over the real objects of sample b only. Relations are never pooled over the batch.
"""
import torch


def relation_matrix(x, tau, mask=None):
    """Column-stochastic relation matrices A = softmax(X^T X / tau) with the softmax over the FIRST index.

    x (M, C) or (B, M, C); ``mask`` (B, M) / (M,) bool of real rows (others are ignored). Returns (C, C) or
    (B, C, C) where every column sums to 1, so each output channel of X A is a convex mix of the input channels.
    """
    if x.dim() not in (2, 3):
        raise ValueError(f"relation_matrix: expected (M, C) or (B, M, C), got {tuple(x.shape)}")
    if float(tau) <= 0:
        raise ValueError(f"relation_matrix: tau must be > 0, got {tau}")
    if mask is not None:
        if tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"relation_matrix: mask {tuple(mask.shape)} does not match rows {tuple(x.shape[:-1])}")
        x = x * mask[..., None].to(x.dtype)
    gram = x.transpose(-1, -2) @ x
    return torch.softmax(gram / float(tau), dim=-2)


def head_relation_inputs(x, group_sizes, tau, mask=None):
    """Inter- and intra-head attended features of each sample.

    x (B, M, C) gathered head outputs (or (M, C) for one sample), ``group_sizes`` channels per head (sum = C),
    ``mask`` (B, M) real rows. Returns ``(cat, relations)``: cat (B, M, 2C) = [X A_inter ; X_g A_g for each head g]
    (zero on padded rows) and the list [A_inter (B, C, C), A_g (B, C_g, C_g) ...].
    """
    if sum(group_sizes) != x.shape[-1]:
        raise ValueError(f"head_relation_inputs: group sizes {list(group_sizes)} do not sum to C={x.shape[-1]}")
    if mask is not None:
        x = x * mask[..., None].to(x.dtype)
    a_inter = relation_matrix(x, tau)
    intra, relations = [], [a_inter]
    for chunk in torch.split(x, list(group_sizes), dim=-1):
        a_g = relation_matrix(chunk, tau)
        relations.append(a_g)
        intra.append(chunk @ a_g)
    return torch.cat([x @ a_inter] + intra, dim=-1), relations


def relation_attention_loss(fused_s, fused_t, relations_s, relations_t, mask, relation_weight=0.0):
    """L_attn = sum |F(X_S) - F(X_T)| / number of objects + relation_weight * R.

    fused_* (B, M, C) with padded rows zero; relations_* lists of (B, C_r, C_r); ``mask`` (B, M) real objects.
    R is the mean absolute difference of the relation matrices (a mean over entries, matrices and the samples
    that hold objects, so it is O(1) whatever C); it does not depend on the fusion layer, so the distillation
    modules alone cannot drive the loss to zero. Returns ``(loss, fused_term, relation_term)`` scalars.
    """
    if fused_s.shape != fused_t.shape:
        raise ValueError(f"relation_attention_loss: fused shapes differ {tuple(fused_s.shape)} vs "
                         f"{tuple(fused_t.shape)}")
    m = mask.to(fused_s.dtype)
    n = m.sum().clamp_min(1.0)
    fused_term = ((fused_s - fused_t).abs() * m[..., None]).sum() / n
    has_obj = (m.sum(-1) > 0).to(fused_s.dtype)  # (B,)
    per_sample = torch.stack([(a_s - a_t).abs().mean(dim=(-1, -2)) for a_s, a_t in zip(relations_s, relations_t)])
    rel_term = (per_sample.mean(0) * has_obj).sum() / has_obj.sum().clamp_min(1.0)
    return fused_term + float(relation_weight) * rel_term, fused_term, rel_term
