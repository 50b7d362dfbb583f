"""PyTorch references of ``knn_in_scans`` and ``edge_features`` (any device; the test oracle)."""
import torch

DEFAULT_TILE = 512


def check_knn_args(features, batch_idx, k, query_index, tile):
    """Validate the arguments of ``knn_in_scans``; returns query_index as a (Q,) int64 tensor."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor (M, C), got shape {tuple(getattr(features, 'shape', ()))}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    num_rows = features.shape[0]
    finite = torch.isfinite(features.detach()).all(1) if features.numel() else None
    if finite is not None and not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise ValueError(f"features must be finite: row {bad} of {num_rows} holds "
                         f"{features[bad].detach().cpu().tolist()[:8]}")
    if not isinstance(batch_idx, torch.Tensor) or batch_idx.shape != (num_rows,):
        raise ValueError(f"batch_idx must be a (M,) = ({num_rows},) tensor, "
                         f"got shape {tuple(getattr(batch_idx, 'shape', ()))}")
    if batch_idx.is_floating_point() or batch_idx.dtype == torch.bool:
        raise ValueError(f"batch_idx must be an integer tensor, got {batch_idx.dtype}")
    if batch_idx.device != features.device:
        raise ValueError(f"batch_idx is on {batch_idx.device} but features on {features.device}")
    if num_rows and int(batch_idx.min()) < 0:
        raise ValueError(f"batch_idx must be >= 0, got min {int(batch_idx.min())}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(tile) < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if query_index is None:
        return torch.arange(num_rows, device=features.device)
    if not isinstance(query_index, torch.Tensor) or query_index.dim() != 1:
        raise ValueError(f"query_index must be a 1-D (Q,) tensor, got shape {tuple(getattr(query_index, 'shape', ()))}")
    if query_index.is_floating_point() or query_index.dtype == torch.bool:
        raise ValueError(f"query_index must be an integer tensor, got {query_index.dtype}")
    query_index = query_index.to(device=features.device, dtype=torch.long)
    if query_index.numel() and (int(query_index.min()) < 0 or int(query_index.max()) >= num_rows):
        raise ValueError(f"query_index must lie in [0, {num_rows}), got range "
                         f"[{int(query_index.min())}, {int(query_index.max())}]")
    return query_index


def _lexsort_keep(dist, idx, k):
    """Keep, per row, the k smallest (dist, idx) pairs in lexicographic order. dist, idx: (T, L)."""
    by_idx = torch.argsort(idx, dim=1, stable=True)
    dist = torch.gather(dist, 1, by_idx)
    idx = torch.gather(idx, 1, by_idx)
    by_dist = torch.argsort(dist, dim=1, stable=True)[:, :k]
    return torch.gather(dist, 1, by_dist), torch.gather(idx, 1, by_dist)


def knn_in_scans_reference(features, batch_idx, k, query_index=None, tile=DEFAULT_TILE):
    """k nearest rows of the same scan, in feature space (see ``knn_in_scans`` for the contract).

    Distances are Euclidean, computed by ``torch.cdist`` without the matrix-product expansion, so identical
    feature rows are exact ties. Works in (tile x tile) blocks: peak extra memory O(Q k + tile^2).

    Returns:
        idx (Q, k) int64 global row indices, valid (Q, k) bool.
    """
    query_index = check_knn_args(features, batch_idx, k, query_index, tile)
    k, tile = int(k), int(tile)
    feats = features.detach()
    batch_idx = batch_idx.long()
    num_q = query_index.numel()
    out_idx = query_index[:, None].repeat(1, k)
    out_valid = torch.zeros((num_q, k), dtype=torch.bool, device=feats.device)
    query_scan = batch_idx[query_index]
    for scan in torch.unique(query_scan).tolist():
        rows = torch.nonzero(batch_idx == scan).squeeze(1)
        qpos = torch.nonzero(query_scan == scan).squeeze(1)
        keep = min(k, rows.numel())
        for q0 in range(0, qpos.numel(), tile):
            pos = qpos[q0:q0 + tile]
            qf = feats[query_index[pos]]
            best_d = qf.new_empty((pos.numel(), 0))
            best_i = rows.new_empty((pos.numel(), 0))
            for r0 in range(0, rows.numel(), tile):
                cand = rows[r0:r0 + tile]
                dist = torch.cdist(qf, feats[cand], compute_mode="donot_use_mm_for_euclid_dist")
                best_d, best_i = _lexsort_keep(torch.cat([best_d, dist], 1),
                                               torch.cat([best_i, cand[None].expand(pos.numel(), -1)], 1), keep)
            out_idx[pos, :keep] = best_i
            out_valid[pos, :keep] = True
    return out_idx, out_valid


def edge_features_reference(features, query_index, idx, mode="concat"):
    """Graph edge features (see ``edge_features``). Returns (Q, k, 2C), differentiable w.r.t. features."""
    check_edge_args(features, query_index, idx, mode)
    num_k = idx.shape[1]
    center = features if query_index is None else features[query_index]
    center = center.unsqueeze(1).expand(-1, num_k, -1)
    neighbour = features[idx]
    if mode == "diff":
        neighbour = neighbour - center
    return torch.cat([neighbour, center], dim=2)


def check_edge_args(features, query_index, idx, mode):
    if mode not in ("concat", "diff"):
        raise ValueError(f"mode must be 'concat' or 'diff', got {mode!r}")
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor (M, C), got shape {tuple(getattr(features, 'shape', ()))}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"idx must be a 2-D (Q, k) tensor, got shape {tuple(getattr(idx, 'shape', ()))}")
    num_q = features.shape[0] if query_index is None else query_index.shape[0]
    if query_index is not None and query_index.dim() != 1:
        raise ValueError(f"query_index must be 1-D (Q,), got shape {tuple(query_index.shape)}")
    if idx.shape[0] != num_q:
        raise ValueError(f"idx has {idx.shape[0]} rows but there are {num_q} queries "
                         f"(query_index {'None -> M' if query_index is None else tuple(query_index.shape)})")
