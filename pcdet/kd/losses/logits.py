"""Response (logit) distillation: sigmoid soft targets for anchor heads, heatmap targets for center heads."""
import torch
import torch.nn.functional as F


def _bernoulli_entropy(p, eps=1e-12):
    p = p.clamp(eps, 1 - eps)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def bernoulli_kd(student_logits, teacher_logits, temperature=1.0, loss_type="kl"):
    """Hinton KD for independent sigmoid classes, any matching shape (e.g. (B, A*K, H, W)).

    q = sigmoid(t / T). 'kl': T^2 * mean KL(q || sigmoid(s / T)) (zero when s == t); 'bce': T^2 * mean BCE;
    'mse': mean (sigmoid(s / T) - q)^2.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"bernoulli_kd: logits shapes differ {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    t = float(temperature)
    q = torch.sigmoid(teacher_logits / t)
    if loss_type == "mse":
        return ((torch.sigmoid(student_logits / t) - q) ** 2).mean()
    bce = F.binary_cross_entropy_with_logits(student_logits / t, q, reduction="none")
    if loss_type == "bce":
        return t * t * bce.mean()
    if loss_type == "kl":
        return t * t * (bce - _bernoulli_entropy(q)).mean()
    raise ValueError(f"bernoulli_kd: unknown loss_type '{loss_type}' (kl, bce, mse)")


def heatmap_kd(student_logits, teacher_logits, loss_type="focal", gamma=2.0):
    """CenterPoint heatmap distillation with the teacher's sigmoid heatmap q as target; (B, K, H, W) logits.

    'mse': mean (sigmoid(s) - q)^2. 'focal': quality-focal form |sigmoid(s) - q|^gamma * KL(q || sigmoid(s)),
    summed and divided by max(1, sum q) like CenterPoint's focal loss (zero when s == t).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"heatmap_kd: heatmap shapes differ {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    q = torch.sigmoid(teacher_logits)
    p = torch.sigmoid(student_logits)
    if loss_type == "mse":
        return ((p - q) ** 2).mean()
    if loss_type == "focal":
        kl = F.binary_cross_entropy_with_logits(student_logits, q, reduction="none") - _bernoulli_entropy(q)
        return ((p - q).abs() ** gamma * kl).sum() / q.sum().clamp_min(1.0)
    raise ValueError(f"heatmap_kd: unknown loss_type '{loss_type}' (focal, mse)")
