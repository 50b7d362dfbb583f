"""Score filtering and rotated NMS used by the detectors' post-processing (OpenPCDet's model_nms_utils).

``NMS_CONFIG`` keys: ``NMS_TYPE`` (``nms_gpu`` = rotated BEV NMS, ``nms_normal_gpu`` = axis-aligned BEV NMS;
the names without ``_gpu`` are accepted too, the op runs on the tensors' device), ``NMS_THRESH``,
``NMS_PRE_MAXSIZE``, ``NMS_POST_MAXSIZE``.
"""
import torch

_NMS_FUNCS = {
    "nms_gpu": "nms",
    "nms": "nms",
    "nms_normal_gpu": "nms_normal",
    "nms_normal": "nms_normal",
}


def _nms_func(nms_type):
    if nms_type not in _NMS_FUNCS:
        raise KeyError(f"NMS_CONFIG.NMS_TYPE: unknown '{nms_type}' (known: {sorted(_NMS_FUNCS)})")
    from ...ops.iou3d_nms import iou3d_nms_utils

    return getattr(iou3d_nms_utils, _NMS_FUNCS[nms_type])


def _run_nms(boxes, scores, nms_config):
    """Keep indices into ``boxes`` after NMS; ``scores`` must already be sorted descending."""
    out = _nms_func(nms_config["NMS_TYPE"])(boxes[:, 0:7], scores, nms_config["NMS_THRESH"])
    keep = out[0] if isinstance(out, tuple) else out
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


def _nms_topk(box_scores, box_preds, nms_config):
    """Top ``NMS_PRE_MAXSIZE`` by score, NMS, then at most ``NMS_POST_MAXSIZE``: indices into the inputs."""
    if box_scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=box_scores.device)
    k = min(int(nms_config["NMS_PRE_MAXSIZE"]), box_scores.shape[0])
    scores_nms, order = torch.topk(box_scores, k=k)
    keep = _run_nms(box_preds[order], scores_nms, nms_config)
    return order[keep[: int(nms_config["NMS_POST_MAXSIZE"])]]


def class_agnostic_nms(box_scores, box_preds, nms_config, score_thresh=None):
    """Class-agnostic score threshold + NMS.

    Args:
        box_scores: (N,) float scores.
        box_preds: (N, 7 + C) boxes ``[x, y, z, dx, dy, dz, heading, ...]``.
        nms_config: dict with NMS_TYPE, NMS_THRESH, NMS_PRE_MAXSIZE, NMS_POST_MAXSIZE.
        score_thresh: float or None; boxes with score < thresh are dropped before NMS.
    Returns:
        selected: (K,) long indices into the inputs, highest score first.
        selected_scores: (K,) float, ``box_scores[selected]``.
    """
    if box_scores.dim() != 1 or box_preds.dim() != 2 or box_preds.shape[0] != box_scores.shape[0]:
        raise ValueError(
            f"class_agnostic_nms: expected box_scores (N,) and box_preds (N, >=7), "
            f"got {tuple(box_scores.shape)} and {tuple(box_preds.shape)}"
        )
    src_box_scores = box_scores
    if score_thresh is not None:
        kept = torch.nonzero(box_scores >= score_thresh, as_tuple=False).view(-1)
        selected = kept[_nms_topk(box_scores[kept], box_preds[kept], nms_config)]
    else:
        selected = _nms_topk(box_scores, box_preds, nms_config)
    return selected, src_box_scores[selected]


def multi_classes_nms(cls_scores, box_preds, nms_config, score_thresh=None):
    """Per-class score threshold + NMS.

    Args:
        cls_scores: (N, num_class) float scores.
        box_preds: (N, 7 + C) boxes.
    Returns:
        pred_scores: (K,) float; pred_labels: (K,) long, 0-based column of ``cls_scores``;
        pred_boxes: (K, 7 + C).
    """
    if cls_scores.dim() != 2 or cls_scores.shape[0] != box_preds.shape[0]:
        raise ValueError(
            f"multi_classes_nms: expected cls_scores (N, num_class) and box_preds (N, >=7), "
            f"got {tuple(cls_scores.shape)} and {tuple(box_preds.shape)}"
        )
    pred_scores, pred_labels, pred_boxes = [], [], []
    for k in range(cls_scores.shape[1]):
        scores_k = cls_scores[:, k]
        if score_thresh is not None:
            kept = torch.nonzero(scores_k >= score_thresh, as_tuple=False).view(-1)
        else:
            kept = torch.arange(scores_k.shape[0], device=scores_k.device)
        selected = kept[_nms_topk(scores_k[kept], box_preds[kept], nms_config)]
        pred_scores.append(scores_k[selected])
        pred_labels.append(torch.full_like(selected, k))
        pred_boxes.append(box_preds[selected])
    return torch.cat(pred_scores, dim=0), torch.cat(pred_labels, dim=0), torch.cat(pred_boxes, dim=0)
