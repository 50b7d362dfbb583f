"""Fused PointDistiller graph loss: both graph layers' BatchNorm + ReLU over the kNN edges and the phi-weighted
squared error, forward and backward, without materialising (Q, K, C') tensors (``src/pd_edge_loss.cpp``, CUDA in
``src/pd_edge_loss_kernel.cu``; PyTorch reference in ``reference.py``).

A 1x1 edge convolution W = [W_j, W_i] on [F(j); F(i)] equals W_j F(j) + W_i F(i), so each side enters as its two
projections: ``rows = F @ W_j.T`` (M, C') and ``centre = F[query] @ W_i.T`` (Q, C'); the edge (i, k) with neighbour
j = idx[i, k] has pre-activation ``rows[j] + centre[i]``. The op computes the BatchNorm batch statistics over all
Q*K edges, ``z = relu(gamma * yhat + beta)`` per side, and
``lam * sum_{valid (i, k)} phi_i sum_c (z_t - z_s)^2 / max(1, #valid * C')``; it returns the loss and the statistics
(for the BatchNorm running averages). Gradients flow to rows, centre, gamma and beta of every side that requires
them (the teacher side only when its graph layer learns). CPU results do not depend on the thread count.

On CPU the training forward (``ext.forward_train``) also keeps, for each side that needs a gradient, the sums of
the loss sweep that the backward needs: per query and per neighbour row, the sums over their edges of the upstream
gradient and of y - mean (two (Q, C') and two (M, C') float32 tensors, and one (2, C') float64): a query pass
over fixed blocks of queries, and a row pass over the CSR transpose of idx in which each row gathers its own
edges (nothing is scattered). Every gradient is then closed-form from those sums: the backward sweeps no edge.
The edge loops are written in AVX2 for C' a multiple of 8 where the CPU has it; otherwise they are cloned for
AVX-512 / AVX2 / x86-64 with run-time dispatch.
"""
import torch
from torch.autograd.function import once_differentiable

from .. import _loader
from .reference import check_pd_args, pd_edge_loss_reference

EXT_NAME = "pcdet.ops.pd_edge_loss.pd_edge_loss_ext"

__all__ = ["pd_edge_loss", "pd_edge_loss_reference", "fused_available"]


def _compiled_for(tensor):
    return _loader.extension_for(EXT_NAME, tensor)


def fused_available(tensor):
    """Whether the compiled op serves tensors on ``tensor``'s device."""
    return _compiled_for(tensor) is not None


def pd_edge_loss(side_s, side_t, idx, valid, phi, lam, eps=1e-5, use_reference=False):
    """The fused loss (compiled when available, else the reference).

    Args:
        side_s, side_t: (rows (M, C'), centre (Q, C'), gamma (C',), beta (C',)) of the student and the teacher
            (gamma / beta: ones / zeros for a BatchNorm without affine).
        idx: (Q, K) int64 neighbour rows; valid: (Q, K) bool (invalid edges enter the BatchNorm statistics but
            not the loss, as in the reference); phi: (Q,) row weights (no gradient).
        lam: loss weight; eps: the BatchNorm epsilon.
    Returns:
        (loss () float32 on the compiled path, stats (4, C') float64: batch mean and biased variance of the student's, then the teacher's
        pre-activations).
    """
    check_pd_args(side_s, side_t, idx, valid, phi)
    ext = None if use_reference else _compiled_for(idx)
    if ext is None or idx.numel() == 0:
        return pd_edge_loss_reference(side_s, side_t, idx, valid, phi, lam, eps)
    # needs_input_grad inside forward ignores no_grad / inference mode: pass whether a graph is being recorded
    return _PDEdgeLoss.apply(float(lam), float(eps), torch.is_grad_enabled(), idx, valid, phi, *side_s, *side_t)


class _PDEdgeLoss(torch.autograd.Function):
    """Outputs (loss, stats); stats carry no gradient."""

    @staticmethod
    def forward(ctx, lam, eps, grad_enabled, idx, valid, phi, *sides):
        ext = _loader.load_extension(EXT_NAME)
        f32 = [t.detach().float().contiguous() for t in sides]
        side_s, side_t = f32[:4], f32[4:]
        idx, valid = idx.contiguous(), valid.contiguous()
        phi = phi.detach().float().contiguous()
        need = [grad_enabled and n for n in ctx.needs_input_grad[6:]]
        ctx.cached = idx.device.type == "cpu" and hasattr(ext, "forward_train")   # False: a build before it
        if ctx.cached:   # the loss sweep also gathers the backward's per-query and per-row sums: no edge sweep
            loss, stats, *cache = ext.forward_train(side_s, side_t, idx, valid, phi, lam, eps, any(need[:4]),
                                                    any(need[4:]))
        else:
            (loss, stats), cache = ext.forward(side_s, side_t, idx, valid, phi, lam, eps), []
        ctx.save_for_backward(idx, valid, phi, stats, *f32, *cache)
        ctx.lam, ctx.eps = lam, eps
        ctx.dtypes = [t.dtype for t in sides]
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_stats):
        ext = _loader.load_extension(EXT_NAME)
        idx, valid, phi, stats, *rest = ctx.saved_tensors
        f32, cache = rest[:8], rest[8:]
        need = ctx.needs_input_grad[6:]
        need_s, need_t = any(need[:4]), any(need[4:])
        args = (grad_loss.detach().float().reshape(()), f32[:4], f32[4:], idx, valid, phi, stats, ctx.lam, ctx.eps,
                need_s, need_t)
        grads = ext.backward_cached(*args, cache) if ctx.cached else ext.backward(*args)
        out = []
        for g, n, dtype in zip(grads, need, ctx.dtypes):
            out.append(g.to(dtype) if (n and g is not None and g.numel()) else None)
        return (None, None, None, None, None, None, *out)
