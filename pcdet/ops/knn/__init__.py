"""k nearest neighbours within scans, in feature space, and graph edge features (PointDistiller's hot path).

``knn_in_scans`` contract: for each query row, its k nearest rows by squared Euclidean distance in feature space
among the rows of the SAME scan (same ``batch_idx``), the query itself included, sorted by ascending distance,
ties broken by the lower row index. A scan with fewer than k rows fills its remaining slots with the query's own
index and ``valid`` False. No gradient flows through ``idx``; use ``edge_features`` to gather differentiably.
"""
import torch

from .. import _loader
from .reference import (DEFAULT_TILE, check_edge_args, check_knn_args, edge_features_reference,
                        knn_in_scans_reference)

EXT_NAME = "pcdet.ops.knn.knn_ext"

__all__ = ["knn_in_scans", "edge_features", "knn_in_scans_reference", "edge_features_reference", "DEFAULT_TILE"]


def _compiled_for(tensor):
    return _loader.extension_for(EXT_NAME, tensor)


# bf16 screening pays off only where the distance GEMM dominates: on a 2-core AVX512-BF16 CPU (6000 queries,
# 20000 rows, k 128, 1 thread) it was 10% faster than float32 at C 64 and 12% slower at C 16 (its wider error
# margin admits more rows), so it is the default from 48 channels
LOW_PRECISION_MIN_CHANNELS = 48


def _low_precision_default(features):
    """bf16 screening where it is faster: float32 CPU features, C >= LOW_PRECISION_MIN_CHANNELS, native bf16."""
    if features.dtype != torch.float32 or features.device.type != "cpu":
        return False
    if features.shape[1] < LOW_PRECISION_MIN_CHANNELS:
        return False
    from ...utils.common_utils import cpu_has_native_bf16
    return cpu_has_native_bf16()


KNN_ALGORITHMS = ("auto", "gemm", "tree")
TREE_MAX_CHANNELS = 3   # 'auto' takes the k-d tree up to this many channels (xyz), the screened GEMM above


def resolve_algorithm(features, algorithm="auto"):
    """The compiled CPU path's algorithm for these features: 'tree' or 'gemm'."""
    if algorithm not in KNN_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {KNN_ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        return algorithm
    return "tree" if 1 <= features.shape[1] <= TREE_MAX_CHANNELS else "gemm"


def knn_in_scans(features, batch_idx, k, query_index=None, tile=DEFAULT_TILE, use_reference=False,
                 low_precision=None, algorithm="auto"):
    """k nearest rows of the same scan for each query row.

    Args:
        features: (M, C) float32/float64, finite (a NaN / inf row is refused by index); may require grad (idx
            carries none).
        batch_idx: (M,) int64 scan index of each row, >= 0 (rows of a scan need not be contiguous).
        k: number of neighbours.
        query_index: (Q,) int64 rows to query; None queries every row (Q = M).
        tile: rows per block; peak extra memory is O(Q k + threads * tile^2) (plus O(M) indices).
        use_reference: force the PyTorch reference path.
        low_precision: compiled CPU path only: screen candidates with a bf16 distance GEMM (float32 features);
            the result is the same either way (the screen has rigorous error bounds and the kept rows are ranked
            by exact distances), only the speed differs. None: float32 features with C >= 48 on a CPU with native
            bf16 (``LOW_PRECISION_MIN_CHANNELS``).
        algorithm: compiled CPU path only: 'gemm' (screened distance GEMM), 'tree' (a k-d tree per scan, for a
            few channels) or 'auto' (the tree for 1 <= C <= 3, else the GEMM; ``resolve_algorithm``). Both return
            the same rows. Ignored on CUDA (one kernel).
    Returns:
        idx: (Q, k) int64 global row indices, ascending distance, ties by lower row index;
        valid: (Q, k) bool, False for the slots a scan with fewer than k rows cannot fill (those hold the
            query's own index).
    """
    query_index = check_knn_args(features, batch_idx, k, query_index, tile)
    algorithm = resolve_algorithm(features, algorithm)
    if not use_reference:
        ext = _compiled_for(features)
        if ext is not None:
            if low_precision is None:
                low_precision = _low_precision_default(features)
            idx, valid = ext.knn_in_scans(features.detach().contiguous(), batch_idx.long().contiguous(),
                                          query_index.contiguous(), int(k), int(tile), bool(low_precision),
                                          algorithm)
            return idx, valid
    return knn_in_scans_reference(features, batch_idx, k, query_index, tile)


def edge_features(features, query_index, idx, mode="concat", use_reference=False):
    """Edge features of the kNN graph: for query i and neighbour j, concat = [F(j); F(i)], diff = [F(j) - F(i); F(i)].

    Args:
        features: (M, C).
        query_index: (Q,) int64 row of each query, or None for every row (Q = M).
        idx: (Q, k) int64 neighbour rows (from ``knn_in_scans``; invalid slots hold the query itself, giving
            [F(i); F(i)] for concat and [0; F(i)] for diff).
        mode: 'concat' or 'diff'.
    Returns:
        (Q, k, 2C), differentiable w.r.t. features.
    """
    check_edge_args(features, query_index, idx, mode)
    if not use_reference:
        ext = _compiled_for(features)
        if ext is not None:
            return _EdgeFeatures.apply(features, query_index, idx, mode == "diff")
    return edge_features_reference(features, query_index, idx, mode)


class _EdgeFeatures(torch.autograd.Function):
    """Compiled edge features; backward scatters the (Q, k, 2C) gradient back to the (M, C) rows."""

    @staticmethod
    def forward(ctx, features, query_index, idx, diff):
        ext = _loader.load_extension(EXT_NAME)
        if query_index is None:
            query_index = torch.arange(features.shape[0], device=features.device)
        query_index = query_index.long().contiguous()
        idx = idx.long().contiguous()
        ctx.save_for_backward(query_index, idx)
        ctx.diff = diff
        ctx.num_rows = features.shape[0]
        return ext.edge_features_forward(features.contiguous(), query_index, idx, diff)

    @staticmethod
    def backward(ctx, grad):
        ext = _loader.load_extension(EXT_NAME)
        query_index, idx = ctx.saved_tensors
        grad_features = ext.edge_features_backward(grad.contiguous(), query_index, idx, ctx.num_rows, ctx.diff)
        return grad_features, None, None, None
