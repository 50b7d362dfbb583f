"""Waymo 3D detection metrics (AP and APH at LEVEL_1 / LEVEL_2, per class and per range), in numpy.

The definitions are those of the official Waymo Open Dataset metric (``waymo_open_dataset/metrics``,
``detection_metrics.cc``, ``metrics_utils.cc``, ``matcher.cc``) configured as OpenPCDet's ``waymo_eval`` configures
``py_metrics_ops.detection_metrics``: OBJECT_TYPE and RANGE breakdowns, each at LEVEL_1 and LEVEL_2, the Hungarian
matcher, 3D boxes, and the score cut-offs ``0, 0.01, ..., 0.99, 1.0``. When the official package imports,
``tests/datasets/test_waymo_eval.py`` compares this module with its op cell by cell.

    * Input: ground-truth boxes with no LiDAR point are dropped before anything else (as OpenPCDet does), so a
      detection on one is a false positive. A labelled box keeps its level (``difficulty`` 1 or 2); a box without a
      label (``difficulty`` 0) is LEVEL_2 with <= 5 points, else LEVEL_1.
    * Shards: a class (OBJECT_TYPE), or a class and a range interval (RANGE: ``[0, 30)``, ``[30, 50)``,
      ``[50, inf)`` m of 3D distance of the box centre from the sensor origin); ground truth and detections are each
      put in the shard of their own class and range, and every shard is matched and scored on its own.
    * Matching, per frame, shard and score cut-off ``c`` (the detections with ``score >= c``, both in float32):
      a maximum-weight assignment (Hungarian) between detections and ground-truth boxes of the shard, the weight of
      a pair being its rotated 3D IoU quantised to ``round(IoU * 1e6)``, over the pairs with IoU >= the class
      threshold (Vehicle 0.7, Pedestrian 0.5, Cyclist 0.5). Ground truth of both levels takes part at both levels.
    * Counts at level ``L``: TP = matched detections (a detection matched to a LEVEL_2 box is a TP at LEVEL_1 too),
      FP = unmatched detections, FN = unmatched ground-truth boxes of level <= ``L`` (an unmatched LEVEL_2 box is
      not a FN at LEVEL_1). ``sum_ha`` = the sum over the TPs of the heading accuracy
      ``1 - min(|dtheta|, 2 pi - |dtheta|) / pi``. Counts are summed over frames per cut-off.
    * Per cut-off: precision ``TP / (TP + FP)`` (0 when there is no detection), recall ``TP / (TP + FN)``;
      heading-weighted precision ``sum_ha / (TP + FP)`` with the same plain recall (APH weights only the
      precision); where the recall is 0 the precision is set to 1.
    * AP (``ComputeMeanAveragePrecision``, ``desired_recall_delta`` 0.05): the best precision per distinct recall,
      with (recall 0, precision 1) added; walking from the highest recall down, the precision is made monotone
      (the best precision at any higher recall), and where two recalls are more than 0.05 apart, points are
      inserted every 0.05 with the running precision; the recall-0 point takes the precision of the point above
      it; the area is integrated with trapezoids.
"""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ...ops.iou3d_nms import iou3d_nms_utils

IOU_THRESHOLDS = {"Vehicle": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5, "Sign": 0.5}
LEVEL_2_MAX_POINTS = 5
RANGE_BREAKDOWN = (("0_30", 0.0, 30.0), ("30_50", 30.0, 50.0), ("50_inf", 50.0, np.inf))
# the official config's cut-offs, stored as float32 in its proto
SCORE_CUTOFFS = np.array([i * 0.01 for i in range(100)] + [1.0], dtype=np.float32)
DESIRED_RECALL_DELTA = 0.05
IOU_QUANTISATION = 1000 * 1000      # the official matcher's kMaxIoU


def heading_accuracy(pred_heading, gt_heading):
    """``1 - min(|d|, 2 pi - |d|) / pi`` with ``d`` the heading difference wrapped to ``[0, 2 pi)``; arrays (K,)."""
    diff = np.abs(np.asarray(pred_heading, dtype=np.float64) - np.asarray(gt_heading, dtype=np.float64))
    diff = np.mod(diff, 2 * np.pi)
    return np.clip(1.0 - np.minimum(diff, 2 * np.pi - diff) / np.pi, 0.0, 1.0)


def iou3d(boxes_a, boxes_b):
    """(N, M) float64 rotated 3D IoU of numpy LiDAR boxes (N, 7+) and (M, 7+)."""
    if len(boxes_a) == 0 or len(boxes_b) == 0:
        return np.zeros((len(boxes_a), len(boxes_b)), dtype=np.float64)
    a = torch.from_numpy(np.ascontiguousarray(boxes_a[:, :7], dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(boxes_b[:, :7], dtype=np.float32))
    return iou3d_nms_utils.boxes_iou3d(a, b).numpy().astype(np.float64)


def gt_levels(num_points, difficulty=None):
    """(M,) int levels: 0 = dropped (no points), else the labelled level (1 or 2) and, for boxes without a label
    (``difficulty`` 0 or absent), LEVEL_2 with <= 5 points and LEVEL_1 otherwise (the official tool's and
    OpenPCDet's rule)."""
    num_points = np.asarray(num_points, dtype=np.int64)
    levels = np.where(num_points <= LEVEL_2_MAX_POINTS, 2, 1)
    if difficulty is not None:
        difficulty = np.asarray(difficulty, dtype=np.int64)
        levels = np.where(difficulty > 0, difficulty, levels)
    return np.where(num_points <= 0, 0, levels)


def hungarian_match(ious, iou_thresh):
    """The official Hungarian matcher on one frame and shard.

    Args:
        ious: (D, G) IoU of the kept detections and the shard's ground truth.
    Returns:
        (det_idx, gt_idx) int arrays of the matched pairs: a maximum-weight assignment with weight
        ``round(IoU * 1e6)`` over the pairs with IoU >= ``iou_thresh``.
    """
    if ious.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ious32 = ious.astype(np.float32)
    can = ious32 >= np.float32(iou_thresh)      # float32 comparison, as the official matcher's
    if not can.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    scaled = ious32.astype(np.float64) * IOU_QUANTISATION
    weights = np.where(can, np.floor(scaled + 0.5), 0.0)    # std::round: halves away from zero (IoU >= 0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = can[rows, cols]
    return rows[keep], cols[keep]


def mean_average_precision(precisions, recalls, max_recall_delta=DESIRED_RECALL_DELTA):
    """Area under a P/R curve given at score cut-offs, as the official ``ComputeMeanAveragePrecision`` (see the
    module docstring), in float32 as it is there.

    Args:
        precisions, recalls: (C,) one pair per score cut-off.
    """
    f32 = np.float32
    if len(precisions) == 0:
        return 0.0
    best = {f32(0.0): f32(1.0)}
    for p, r in zip(np.asarray(precisions, np.float32), np.asarray(recalls, np.float32)):
        best[r] = max(best.get(r, f32(0.0)), p)
    points = []                             # (precision, recall), recall descending
    keys = sorted(best)
    last = keys[0]
    running = f32(0.0)
    delta, eps = f32(max_recall_delta), f32(1e-6)
    for r in reversed(keys):
        while last - r > delta + eps:
            last = f32(last - delta)
            points.append((running, last))
        running = max(best[r], running)
        points.append((running, r))
        last = r
    if len(points) >= 2:
        points[-1] = (points[-2][0], points[-1][1])
    area = f32(0.0)
    for (p0, r0), (p1, r1) in zip(points[:-1], points[1:]):
        area = f32(area + f32(0.5) * (r0 - r1) * (p0 + p1))
    return float(area)


def _as_boxes(boxes):
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.zeros((0, 7)) if boxes.size == 0 else boxes.reshape(boxes.shape[0], -1)


def _range_3d(boxes):
    return np.linalg.norm(boxes[:, 0:3], axis=1) if len(boxes) else np.zeros(0)


def shard_counts(gt_annos, det_annos, class_name, dist_range=(0.0, np.inf), score_cutoffs=SCORE_CUTOFFS):
    """Per score cut-off counts of one shard (a class, optionally a 3D range interval), summed over frames.

    Args:
        gt_annos: list of frame dicts ``name`` (M,), ``gt_boxes_lidar`` (M, 7+), ``num_points_in_gt`` (M,),
            optional ``difficulty`` (M,).
        det_annos: list of frame dicts ``name`` (K,), ``boxes_lidar`` (K, 7+), ``score`` (K,), same frame order.
    Returns:
        dict of (C,) arrays ``tp``, ``fp``, ``sum_ha``, ``fn_1``, ``fn_2`` (false negatives at LEVEL_1 / LEVEL_2)
        and ints ``num_gt_1``, ``num_gt_2`` (boxes counted at each level), ``num_det``.
    """
    if len(gt_annos) != len(det_annos):
        raise ValueError(f"waymo_eval: {len(gt_annos)} ground-truth frames but {len(det_annos)} detection frames")
    iou_thresh = IOU_THRESHOLDS.get(class_name, 0.5)
    lo, hi = dist_range
    n_cut = len(score_cutoffs)
    out = {k: np.zeros(n_cut, np.float64) for k in ("tp", "fp", "sum_ha", "fn_1", "fn_2")}
    out.update(num_gt_1=0, num_gt_2=0, num_det=0)
    for frame, (gt, det) in enumerate(zip(gt_annos, det_annos)):
        gt_boxes = _as_boxes(gt["gt_boxes_lidar"])
        levels = gt_levels(gt["num_points_in_gt"], gt.get("difficulty"))
        gt_dist = _range_3d(gt_boxes)
        gt_keep = (np.asarray(gt["name"]) == class_name) & (levels > 0) & (gt_dist >= lo) & (gt_dist < hi)
        gt_boxes, levels = gt_boxes[gt_keep], levels[gt_keep]
        out["num_gt_1"] += int((levels == 1).sum())
        out["num_gt_2"] += int(levels.size)

        det_boxes = _as_boxes(det["boxes_lidar"])
        scores = np.asarray(det["score"], dtype=np.float32).reshape(-1)
        if len(scores) != len(det_boxes):
            raise ValueError(f"waymo_eval: detection frame {frame} has {len(det_boxes)} boxes but "
                             f"{len(scores)} scores")
        det_dist = _range_3d(det_boxes)
        det_keep = (np.asarray(det["name"]) == class_name) & (det_dist >= lo) & (det_dist < hi)
        det_boxes, scores = det_boxes[det_keep], scores[det_keep]
        out["num_det"] += int(scores.size)
        order = np.argsort(-scores, kind="stable")
        det_boxes, scores = det_boxes[order], scores[order]
        ious = iou3d(det_boxes, gt_boxes)
        cache = {}
        for c, cutoff in enumerate(score_cutoffs):
            n = int((scores >= cutoff).sum())     # scores sorted: the kept detections are the first n
            if n not in cache:
                rows, cols = hungarian_match(ious[:n], iou_thresh)
                matched = np.zeros(levels.size, dtype=bool)
                matched[cols] = True
                ha = heading_accuracy(det_boxes[rows, 6], gt_boxes[cols, 6]).sum() if rows.size else 0.0
                cache[n] = (rows.size, n - rows.size, ha, int((~matched & (levels <= 1)).sum()),
                            int((~matched).sum()))
            tp, fp, ha, fn_1, fn_2 = cache[n]
            out["tp"][c] += tp
            out["fp"][c] += fp
            out["sum_ha"][c] += ha
            out["fn_1"][c] += fn_1
            out["fn_2"][c] += fn_2
    return out


def curve_metrics(counts, level):
    """AP and APH at ``level`` (1 or 2) from ``shard_counts``: precisions and recalls per cut-off as the
    official ``ToDetectionMetrics``, then ``mean_average_precision``."""
    tp = counts["tp"]
    tp_fp = tp + counts["fp"]
    tp_fn = tp + counts[f"fn_{level}"]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp_fp > 0, tp / tp_fp, 0.0).astype(np.float32)
        precision_ha = np.where(tp_fp > 0, counts["sum_ha"] / tp_fp, 0.0).astype(np.float32)
        recall = np.where(tp_fn > 0, tp / tp_fn, 0.0).astype(np.float32)
    precision = np.where(recall == 0, np.float32(1.0), precision)
    precision_ha = np.where(recall == 0, np.float32(1.0), precision_ha)
    return mean_average_precision(precision, recall), mean_average_precision(precision_ha, recall)


def compute_class_metrics(gt_annos, det_annos, class_name, level, dist_range=(0.0, np.inf)):
    """AP and APH of one class at one level (1 or 2) and range (see ``shard_counts`` for the arguments).

    Returns:
        dict ``ap``, ``aph``, ``num_gt`` (boxes counted at the level), ``num_det``, ``num_tp`` (at cut-off 0).
    """
    counts = shard_counts(gt_annos, det_annos, class_name, dist_range)
    return _metrics_of(counts, level)


def _metrics_of(counts, level):
    ap, aph = curve_metrics(counts, level)
    num_gt = counts["num_gt_1"] if level == 1 else counts["num_gt_2"]
    return {"ap": ap, "aph": aph, "num_gt": num_gt, "num_det": counts["num_det"], "num_tp": int(counts["tp"][0])}


def waymo_evaluation(gt_annos, det_annos, class_names, breakdown_by_range=True):
    """Waymo metrics of every class at LEVEL_1 and LEVEL_2, overall and per range.

    Returns:
        (result_str, result_dict) with keys ``<Class>/LEVEL_<l>/AP``, ``.../APH`` (overall) and
        ``<Class>/LEVEL_<l>/AP_<range>``, ``.../APH_<range>``; also ``mAP_LEVEL_<l>`` / ``mAPH_LEVEL_<l>`` over the
        classes with ground truth at that level.
    """
    ranges = (("all", 0.0, np.inf),) + (RANGE_BREAKDOWN if breakdown_by_range else ())
    counts = {(name, tag): shard_counts(gt_annos, det_annos, name, (lo, hi))
              for name in class_names for tag, lo, hi in ranges}
    result = {}
    lines = []
    for level in (1, 2):
        aps, aphs = [], []
        for name in class_names:
            for tag, _, _ in ranges:
                m = _metrics_of(counts[(name, tag)], level)
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


__all__ = ["waymo_evaluation", "compute_class_metrics", "shard_counts", "curve_metrics", "mean_average_precision",
           "hungarian_match", "heading_accuracy", "gt_levels", "IOU_THRESHOLDS", "SCORE_CUTOFFS"]
