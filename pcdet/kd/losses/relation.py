"""itKD head relation-aware self-attention: relation matrices and the attention loss."""
import torch


def relation_matrix(x):
    """x (M, C) -> A = softmax(X^T X / sqrt(M)) of shape (C, C), softmax over the last dim."""
    if x.dim() != 2:
        raise ValueError(f"relation_matrix: expected (M, C), got {tuple(x.shape)}")
    m = max(x.shape[0], 1)
    return torch.softmax(x.t() @ x / (m ** 0.5), dim=-1)


def head_relation_inputs(x, group_sizes):
    """Inter- and intra-head attended features.

    x (M, C) gathered head outputs, ``group_sizes`` channels per head (sum = C).
    Returns ``(cat, relations)``: cat (M, 2C) = [X A_inter ; X_g A_g for each group g], and the list of relation
    matrices [A_inter (C, C), A_g (C_g, C_g) ...].
    """
    if sum(group_sizes) != x.shape[1]:
        raise ValueError(f"head_relation_inputs: group sizes {list(group_sizes)} do not sum to C={x.shape[1]}")
    a_inter = relation_matrix(x)
    intra, relations = [], [a_inter]
    for chunk in torch.split(x, list(group_sizes), dim=1):
        a_g = relation_matrix(chunk)
        relations.append(a_g)
        intra.append(chunk @ a_g)
    return torch.cat([x @ a_inter] + intra, dim=1), relations


def relation_attention_loss(fused_s, fused_t, relations_s, relations_t, num_objects, relation_weight=1.0):
    """L_attn = sum |F(X_S) - F(X_T)| / num_objects + relation_weight * sum_r sum |A_S - A_T|.

    fused_* (M, C); relations_* lists of (C_r, C_r) row-stochastic matrices. The second term does not depend on
    the fusion layer, so the distillation modules alone cannot drive the loss to zero.
    Returns ``(loss, fused_term, relation_term)`` as scalars.
    """
    if fused_s.shape != fused_t.shape:
        raise ValueError(f"relation_attention_loss: fused shapes differ {tuple(fused_s.shape)} vs "
                         f"{tuple(fused_t.shape)}")
    n = max(int(num_objects), 1)
    fused_term = (fused_s - fused_t).abs().sum() / n
    rel_term = fused_s.new_zeros(())
    for a_s, a_t in zip(relations_s, relations_t):
        rel_term = rel_term + (a_s - a_t).abs().sum()
    return fused_term + relation_weight * rel_term, fused_term, rel_term
