"""Waymo-style 3D detection metrics (AP and APH at LEVEL_1 / LEVEL_2, per class and per range), in numpy.

Definitions (Waymo Open Dataset detection metric, v1):
    * IoU: rotated 3D IoU of ``[x, y, z, dx, dy, dz, heading]`` LiDAR boxes; a detection is a true positive when it
      matches a ground-truth box of its class with IoU >= ``IOU_THRESHOLDS[class]`` (Vehicle 0.7, Pedestrian 0.5,
      Cyclist 0.5).
    * Difficulty: a ground-truth box with <= 5 LiDAR points is LEVEL_2, other boxes are LEVEL_1 unless their label
      says LEVEL_2 (``difficulty`` 2). Boxes with 0 points are ignored. LEVEL_1 scores against LEVEL_1 boxes only
      (a detection matched to a LEVEL_2 box is neither TP nor FP there); LEVEL_2 scores against all boxes.
    * Heading accuracy of a TP: ``h = 1 - min(|dtheta|, 2 pi - |dtheta|) / pi`` (1 for an exact heading, 0 for a
      flipped one). APH uses the cumulative sum of ``h`` in place of the TP count in precision and recall.
    * AP / APH: area under the precision-recall curve whose precision is made monotone (precision at recall ``r``
      is the best precision at any recall >= ``r``), computed exactly from the detection ranking.
    * Range breakdown ``[0, 30)``, ``[30, 50)``, ``[50, inf)`` metres of BEV distance from the sensor: ground truth
      and detections are both filtered by their own centre distance.
Matching is greedy by descending score within a frame (each ground-truth box matched once, to the highest-IoU
unmatched box). The official C++ metric matches with a Hungarian assignment at score cut-offs and samples the
curve, so on real data values can differ slightly; a cross-check against the official package is not wired in.
"""
import numpy as np
import torch

from ...ops.iou3d_nms import iou3d_nms_utils

IOU_THRESHOLDS = {"Vehicle": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5, "Sign": 0.5}
LEVEL_2_MAX_POINTS = 5
RANGE_BREAKDOWN = (("0_30", 0.0, 30.0), ("30_50", 30.0, 50.0), ("50_inf", 50.0, np.inf))


def heading_accuracy(pred_heading, gt_heading):
    """``1 - min(|d|, 2 pi - |d|) / pi`` with ``d`` the heading difference wrapped to ``[0, 2 pi)``; arrays (K,)."""
    diff = np.abs(np.asarray(pred_heading, dtype=np.float64) - np.asarray(gt_heading, dtype=np.float64))
    diff = np.mod(diff, 2 * np.pi)
    return 1.0 - np.minimum(diff, 2 * np.pi - diff) / np.pi


def iou3d(boxes_a, boxes_b):
    """(N, M) float64 rotated 3D IoU of numpy LiDAR boxes (N, 7+) and (M, 7+)."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)), dtype=np.float64)
    a = torch.from_numpy(np.ascontiguousarray(boxes_a[:, :7], dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(boxes_b[:, :7], dtype=np.float32))
    return iou3d_nms_utils.boxes_iou3d(a, b).numpy().astype(np.float64)


def gt_levels(num_points, difficulty=None):
    """(M,) int levels: 0 = ignored (no points), 1 = LEVEL_1, 2 = LEVEL_2 (<= 5 points or labelled 2)."""
    num_points = np.asarray(num_points, dtype=np.int64)
    levels = np.where(num_points <= LEVEL_2_MAX_POINTS, 2, 1)
    if difficulty is not None:
        levels = np.where(np.asarray(difficulty) == 2, 2, levels)
    return np.where(num_points <= 0, 0, levels)


def average_precision(tp_weights, num_gt):
    """Area under the monotone PR curve.

    Args:
        tp_weights: (K,) weight of each detection in descending score order: 0 for a FP, 1 for a TP (AP) or its
            heading accuracy (APH).
        num_gt: number of ground-truth boxes.
    Returns:
        float in [0, 1]; 0 when ``num_gt`` is 0.
    """
    tp_weights = np.asarray(tp_weights, dtype=np.float64)
    if num_gt == 0 or tp_weights.size == 0:
        return 0.0
    cum = np.cumsum(tp_weights)
    precision = cum / np.arange(1, tp_weights.size + 1)
    recall = cum / num_gt
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    recall_steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(recall_steps * envelope))


def _frame_matches(gt_boxes, gt_keep, gt_care, det_boxes, det_scores, iou_thresh):
    """Greedy matching of one frame: returns (det_order, det_tp (K,), det_ignored (K,), det_heading_acc (K,)).

    ``gt_keep``: boxes taking part (class, range, level >= 1); ``gt_care``: boxes counted at this level.
    """
    order = np.argsort(-det_scores, kind="stable")
    tp = np.zeros(len(order), dtype=bool)
    ignored = np.zeros(len(order), dtype=bool)
    head = np.zeros(len(order), dtype=np.float64)
    keep_idx = np.flatnonzero(gt_keep)
    if keep_idx.size == 0 or len(order) == 0:
        return order, tp, ignored, head
    ious = iou3d(det_boxes[order], gt_boxes[keep_idx])
    taken = np.zeros(keep_idx.size, dtype=bool)
    for k in range(len(order)):
        cand = np.where(taken, -1.0, ious[k])
        j = int(np.argmax(cand))
        if cand[j] < iou_thresh:
            continue
        taken[j] = True
        g = keep_idx[j]
        if gt_care[g]:
            tp[k] = True
            head[k] = heading_accuracy(det_boxes[order[k], 6], gt_boxes[g, 6])
        else:
            ignored[k] = True
    return order, tp, ignored, head


def _as_boxes(boxes):
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.zeros((0, 7)) if boxes.size == 0 else boxes.reshape(boxes.shape[0], -1)


def _bev_range(boxes):
    return np.linalg.norm(boxes[:, 0:2], axis=1) if len(boxes) else np.zeros(0)


def compute_class_metrics(gt_annos, det_annos, class_name, level, dist_range=(0.0, np.inf)):
    """AP and APH of one class at one level (1 or 2) and range.

    Args:
        gt_annos: list of frame dicts ``name`` (M,), ``gt_boxes_lidar`` (M, 7+), ``num_points_in_gt`` (M,),
            optional ``difficulty`` (M,).
        det_annos: list of frame dicts ``name`` (K,), ``boxes_lidar`` (K, 7+), ``score`` (K,), same frame order.
    Returns:
        dict ``ap``, ``aph``, ``num_gt``, ``num_det``, ``num_tp``.
    """
    if len(gt_annos) != len(det_annos):
        raise ValueError(f"waymo_eval: {len(gt_annos)} ground-truth frames but {len(det_annos)} detection frames")
    iou_thresh = IOU_THRESHOLDS.get(class_name, 0.5)
    lo, hi = dist_range
    scores, tps, heads = [], [], []
    num_gt = 0
    for gt, det in zip(gt_annos, det_annos):
        gt_boxes = _as_boxes(gt["gt_boxes_lidar"])
        levels = gt_levels(gt["num_points_in_gt"], gt.get("difficulty"))
        gt_dist = _bev_range(gt_boxes)
        gt_keep = (np.asarray(gt["name"]) == class_name) & (levels > 0) & (gt_dist >= lo) & (gt_dist < hi)
        gt_care = gt_keep & (levels <= level)
        num_gt += int(gt_care.sum())

        det_boxes = _as_boxes(det["boxes_lidar"])
        det_dist = _bev_range(det_boxes)
        det_mask = (np.asarray(det["name"]) == class_name) & (det_dist >= lo) & (det_dist < hi)
        det_boxes = det_boxes[det_mask]
        det_scores = np.asarray(det["score"], dtype=np.float64)[det_mask]
        order, tp, ignored, head = _frame_matches(gt_boxes, gt_keep, gt_care, det_boxes, det_scores, iou_thresh)
        scores.append(det_scores[order][~ignored])
        tps.append(tp[~ignored])
        heads.append(head[~ignored])
    scores = np.concatenate(scores) if scores else np.zeros(0)
    tps = np.concatenate(tps) if tps else np.zeros(0, dtype=bool)
    heads = np.concatenate(heads) if heads else np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    return {"ap": average_precision(tps[order].astype(np.float64), num_gt),
            "aph": average_precision(heads[order], num_gt),
            "num_gt": num_gt, "num_det": int(scores.size), "num_tp": int(tps.sum())}


def waymo_evaluation(gt_annos, det_annos, class_names, breakdown_by_range=True):
    """Waymo-style metrics of every class at LEVEL_1 and LEVEL_2, overall and per range.

    Returns:
        (result_str, result_dict) with keys ``<Class>/LEVEL_<l>/AP``, ``.../APH`` (overall) and
        ``<Class>/LEVEL_<l>/AP_<range>``, ``.../APH_<range>``; also ``mAP_LEVEL_<l>`` / ``mAPH_LEVEL_<l>`` over the
        classes with ground truth.
    """
    result = {}
    lines = []
    ranges = (("all", 0.0, np.inf),) + (RANGE_BREAKDOWN if breakdown_by_range else ())
    for level in (1, 2):
        aps, aphs = [], []
        for name in class_names:
            for tag, lo, hi in ranges:
                m = compute_class_metrics(gt_annos, det_annos, name, level, (lo, hi))
                suffix = "" if tag == "all" else f"_{tag}"
                result[f"{name}/LEVEL_{level}/AP{suffix}"] = m["ap"]
                result[f"{name}/LEVEL_{level}/APH{suffix}"] = m["aph"]
                if tag == "all":
                    result[f"{name}/LEVEL_{level}/num_gt"] = m["num_gt"]
                    if m["num_gt"] > 0:
                        aps.append(m["ap"])
                        aphs.append(m["aph"])
                lines.append(f"{name:<12s} LEVEL_{level} {tag:>6s}: AP {m['ap']:.4f}  APH {m['aph']:.4f}  "
                             f"(gt {m['num_gt']}, det {m['num_det']}, tp {m['num_tp']})")
        result[f"mAP_LEVEL_{level}"] = float(np.mean(aps)) if aps else 0.0
        result[f"mAPH_LEVEL_{level}"] = float(np.mean(aphs)) if aphs else 0.0
        lines.append(f"mean LEVEL_{level}: mAP {result[f'mAP_LEVEL_{level}']:.4f}  "
                     f"mAPH {result[f'mAPH_LEVEL_{level}']:.4f}")
    return "\n".join(lines) + "\n", result


__all__ = ["waymo_evaluation", "compute_class_metrics", "average_precision", "heading_accuracy", "gt_levels",
           "IOU_THRESHOLDS"]
