"""Official KITTI object evaluation (protocol of the devkit's evaluate_object.cpp, as ported by second/OpenPCDet).

Metrics: 2D image boxes (``bbox``/``image``), bird's-eye view (``bev``), 3D (``3d``) and average orientation
similarity (``aos``), each with 11-point (R11) and 40-point (R40) recall interpolation, for the difficulties
easy / moderate / hard.

Protocol summary (per class and difficulty):
  * a ground-truth object counts when its class matches, its occlusion / truncation are at most
    (0, 1, 2) / (0.15, 0.3, 0.5) and its 2D height is above (40, 25, 25) px; objects of the neighbouring class
    (Van for Car, Person_sitting for Pedestrian) and objects of the class that fail the difficulty filter are
    "ignored": a detection matching them is neither a TP nor an FP;
  * detections lower than the difficulty's minimum height are ignored;
  * a detection matches when its overlap is strictly greater than the class threshold
    (0.7 / 0.5 / 0.5 for Car / Pedestrian / Cyclist; a loose set lowers BEV/3D to 0.5 / 0.25 / 0.25);
  * unmatched detections overlapping a DontCare region (2D box, intersection over detection area above the
    threshold) are not false positives. As in second/OpenPCDet this is applied to the 2D metric only
    (the devkit applies it to every metric; pass ``dontcare_all_metrics=True`` for that);
  * score thresholds are picked from the TP scores so that recall advances by about 1/40 per threshold;
    precision is made monotone (max over higher recalls); R11 averages precision at indices 0, 4, ..., 40,
    R40 at indices 1..40.
"""
import numba
import numpy as np

from .rotate_iou import bev_box_overlap, d3_box_overlap

CLASS_NAMES = ("Car", "Pedestrian", "Cyclist", "Van", "Person_sitting", "Truck")
NEIGHBOUR_CLASS = {"car": "van", "pedestrian": "person_sitting"}
DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
N_SAMPLE_PTS = 41
METRICS = ("bbox", "bev", "3d")
# [overlap set, metric (bbox, bev, 3d), class (CLASS_NAMES order)]
MIN_OVERLAPS = np.array([
    [[0.7, 0.5, 0.5, 0.7, 0.5, 0.7]] * 3,
    [[0.7, 0.5, 0.5, 0.7, 0.5, 0.5],
     [0.5, 0.25, 0.25, 0.5, 0.25, 0.5],
     [0.5, 0.25, 0.25, 0.5, 0.25, 0.5]],
])
_NO_DETECTION = -10000000.0


# ------------------------------------------------------------------ overlaps
def image_box_overlap(boxes, qboxes, criterion=-1):
    """Overlap of 2D boxes ``[x1, y1, x2, y2]`` (N, 4) and (K, 4) -> (N, K).

    criterion -1: IoU; 0: intersection / area(boxes); 1: intersection / area(qboxes).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    qboxes = np.asarray(qboxes, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(boxes[:, None, 2], qboxes[None, :, 2]) - np.maximum(boxes[:, None, 0], qboxes[None, :, 0])
    ih = np.minimum(boxes[:, None, 3], qboxes[None, :, 3]) - np.maximum(boxes[:, None, 1], qboxes[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
    area_b = ((qboxes[:, 2] - qboxes[:, 0]) * (qboxes[:, 3] - qboxes[:, 1]))[None, :]
    if criterion == -1:
        denom = area_a + area_b - inter
    elif criterion == 0:
        denom = np.broadcast_to(area_a, inter.shape)
    elif criterion == 1:
        denom = np.broadcast_to(area_b, inter.shape)
    else:
        raise ValueError(f"criterion must be -1, 0 or 1, got {criterion}")
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)


def _frame_overlaps(gt, dt, metric):
    """(D, G) overlap of one frame's detections with all its ground-truth objects for ``metric``."""
    if metric == "bbox":
        return image_box_overlap(dt["bbox"], gt["bbox"])
    if metric == "bev":
        def bev(a):
            return np.concatenate([a["location"][:, [0, 2]], a["dimensions"][:, [0, 2]],
                                   a["rotation_y"][:, None]], axis=1)
        return bev_box_overlap(bev(dt), bev(gt))

    def box3d(a):
        return np.concatenate([a["location"], a["dimensions"], a["rotation_y"][:, None]], axis=1)
    return d3_box_overlap(box3d(dt), box3d(gt))


# ------------------------------------------------------------------ data cleaning
def clean_data(gt_anno, dt_anno, class_name, difficulty):
    """Label each object as counted (0), ignored (1) or not considered (-1) for one class and difficulty.

    Args:
        gt_anno, dt_anno: anno dicts of one frame.
        class_name: evaluated class (case-insensitive).
        difficulty: 0 easy, 1 moderate, 2 hard.
    Returns:
        (num_valid_gt int, ignored_gt (G,) int64, ignored_dt (D,) int64, dontcare_boxes (C, 4) float64).
    """
    cls = class_name.lower()
    neighbour = NEIGHBOUR_CLASS.get(cls)
    gt_names = [str(n).lower() for n in gt_anno["name"]]
    gt_bbox = np.asarray(gt_anno["bbox"], dtype=np.float64).reshape(-1, 4)
    ignored_gt = np.empty(len(gt_names), dtype=np.int64)
    num_valid = 0
    for i, name in enumerate(gt_names):
        height = gt_bbox[i, 3] - gt_bbox[i, 1]
        valid_class = 1 if name == cls else (0 if name == neighbour else -1)
        hard_to_see = (gt_anno["occluded"][i] > MAX_OCCLUSION[difficulty]
                       or gt_anno["truncated"][i] > MAX_TRUNCATION[difficulty]
                       or height <= MIN_HEIGHT[difficulty])
        if valid_class == 1 and not hard_to_see:
            ignored_gt[i] = 0
            num_valid += 1
        elif valid_class == 0 or valid_class == 1:
            ignored_gt[i] = 1
        else:
            ignored_gt[i] = -1
    dontcare = gt_bbox[np.array([n == "dontcare" for n in gt_names], dtype=bool)]

    dt_bbox = np.asarray(dt_anno["bbox"], dtype=np.float64).reshape(-1, 4)
    ignored_dt = np.empty(len(dt_anno["name"]), dtype=np.int64)
    for j, name in enumerate(dt_anno["name"]):
        if dt_bbox[j, 3] - dt_bbox[j, 1] < MIN_HEIGHT[difficulty]:
            ignored_dt[j] = 1
        elif str(name).lower() == cls:
            ignored_dt[j] = 0
        else:
            ignored_dt[j] = -1
    return num_valid, ignored_gt, ignored_dt, dontcare


# ------------------------------------------------------------------ statistics (numba)
@numba.njit(cache=True)
def _frame_statistics(overlaps, dc_overlaps, gt_alpha, dt_alpha, dt_score, ignored_gt, ignored_dt,
                      min_overlap, thresh, compute_fp, compute_aos):
    """Match one frame's detections to ground truth (computeStatistics of the devkit).

    overlaps: (D, G); dc_overlaps: (D, C) 2D intersection over detection area with DontCare boxes (C may be 0).
    Returns (tp, fp, fn, similarity, tp_scores (tp,)); similarity is -1 when there is no TP and no FP.
    """
    num_dt = dt_score.shape[0]
    num_gt = ignored_gt.shape[0]
    assigned = np.zeros(num_dt, dtype=np.bool_)
    below_thresh = np.zeros(num_dt, dtype=np.bool_)
    if compute_fp:
        for j in range(num_dt):
            below_thresh[j] = dt_score[j] < thresh
    tp = 0
    fp = 0
    fn = 0
    tp_scores = np.empty(num_gt)
    delta = np.empty(num_gt)
    for i in range(num_gt):
        if ignored_gt[i] == -1:
            continue
        det_idx = -1
        valid_detection = _NO_DETECTION
        max_overlap = 0.0
        assigned_ignored_det = False
        for j in range(num_dt):
            if ignored_dt[j] == -1 or assigned[j] or below_thresh[j]:
                continue
            overlap = overlaps[j, i]
            if overlap <= min_overlap:
                continue
            if not compute_fp:
                # First pass: the best-scoring match gives the score thresholds.
                if dt_score[j] > valid_detection:
                    det_idx = j
                    valid_detection = dt_score[j]
            elif (overlap > max_overlap or assigned_ignored_det) and ignored_dt[j] == 0:
                max_overlap = overlap
                det_idx = j
                valid_detection = 1.0
                assigned_ignored_det = False
            elif valid_detection == _NO_DETECTION and ignored_dt[j] == 1:
                det_idx = j
                valid_detection = 1.0
                assigned_ignored_det = True
        if valid_detection == _NO_DETECTION:
            if ignored_gt[i] == 0:
                fn += 1
        elif ignored_gt[i] == 1 or ignored_dt[det_idx] == 1:
            assigned[det_idx] = True
        else:
            tp_scores[tp] = dt_score[det_idx]
            delta[tp] = gt_alpha[i] - dt_alpha[det_idx]
            tp += 1
            assigned[det_idx] = True
    similarity = -1.0
    if compute_fp:
        for j in range(num_dt):
            if not (assigned[j] or ignored_dt[j] != 0 or below_thresh[j]):
                fp += 1
        num_stuff = 0
        for c in range(dc_overlaps.shape[1]):
            for j in range(num_dt):
                if assigned[j] or ignored_dt[j] != 0 or below_thresh[j]:
                    continue
                if dc_overlaps[j, c] > min_overlap:
                    assigned[j] = True
                    num_stuff += 1
        fp -= num_stuff
        if compute_aos and (tp > 0 or fp > 0):
            similarity = 0.0
            for k in range(tp):
                similarity += (1.0 + np.cos(delta[k])) / 2.0
    return tp, fp, fn, similarity, tp_scores[:tp]


@numba.njit(cache=True)
def _first_pass_scores(frames, min_overlap):
    """Scores of the TPs over all frames when every detection is allowed (thresholds candidates)."""
    total = 0
    for f in frames:
        total += f[0].shape[1]
    scores = np.empty(total)
    n = 0
    for f in frames:
        overlaps, dc_overlaps, gt_alpha, dt_alpha, dt_score, ignored_gt, ignored_dt = f
        res = _frame_statistics(overlaps, dc_overlaps, gt_alpha, dt_alpha, dt_score, ignored_gt, ignored_dt,
                                min_overlap, 0.0, False, False)
        tps = res[4]
        scores[n:n + tps.shape[0]] = tps
        n += tps.shape[0]
    return scores[:n]


@numba.njit(cache=True)
def _accumulate_pr(frames, min_overlap, thresholds, compute_aos):
    """(T, 4) sums over frames of [tp, fp, fn, similarity] at each score threshold."""
    pr = np.zeros((thresholds.shape[0], 4))
    for f in frames:
        overlaps, dc_overlaps, gt_alpha, dt_alpha, dt_score, ignored_gt, ignored_dt = f
        for t in range(thresholds.shape[0]):
            tp, fp, fn, similarity, _ = _frame_statistics(overlaps, dc_overlaps, gt_alpha, dt_alpha, dt_score,
                                                          ignored_gt, ignored_dt, min_overlap, thresholds[t],
                                                          True, compute_aos)
            pr[t, 0] += tp
            pr[t, 1] += fp
            pr[t, 2] += fn
            if similarity != -1.0:
                pr[t, 3] += similarity
    return pr


def get_thresholds(scores, num_gt, num_sample_pts=N_SAMPLE_PTS):
    """Score thresholds of the devkit's recall discretisation (getThresholds).

    Args:
        scores: (K,) TP scores from the first pass.
        num_gt: number of counted ground-truth objects.
    Returns:
        (T,) float64 thresholds, descending, T <= num_sample_pts.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    thresholds = []
    current_recall = 0.0
    for i, score in enumerate(scores):
        l_recall = (i + 1) / num_gt
        is_last = i == len(scores) - 1
        r_recall = l_recall if is_last else (i + 2) / num_gt
        if not is_last and (r_recall - current_recall) < (current_recall - l_recall):
            continue
        thresholds.append(score)
        current_recall += 1.0 / (num_sample_pts - 1.0)
    return np.array(thresholds, dtype=np.float64)


def get_map_r11(prec):
    """11-point AP (percent) of (..., 41) monotone precision: mean of indices 0, 4, ..., 40."""
    return prec[..., 0::4].sum(axis=-1) / 11 * 100


def get_map_r40(prec):
    """40-point AP (percent): mean of precision at indices 1..40 (recall 0 skipped)."""
    return prec[..., 1:].sum(axis=-1) / 40 * 100


# ------------------------------------------------------------------ driver
def _class_index(cls):
    if isinstance(cls, (int, np.integer)):
        if not 0 <= cls < len(CLASS_NAMES):
            raise ValueError(f"class index {cls} out of range for {CLASS_NAMES}")
        return int(cls)
    lowered = [c.lower() for c in CLASS_NAMES]
    if str(cls).lower() not in lowered:
        raise ValueError(f"unknown KITTI class {cls!r}; known: {CLASS_NAMES}")
    return lowered.index(str(cls).lower())


def _check_annos(annos, what, need_score):
    keys = ("name", "bbox", "dimensions", "location", "rotation_y", "alpha")
    keys = keys + ("score",) if need_score else keys + ("truncated", "occluded")
    for k, anno in enumerate(annos):
        missing = [key for key in keys if key not in anno]
        if missing:
            raise KeyError(f"{what}[{k}] lacks {missing}")


def _safe_div(num, den):
    """num / den, 0 where den is 0."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def prepare_frames(gt_annos, dt_annos, class_indices):
    """Per class and difficulty, the cleaned labels of every frame (shared by the three metrics).

    Returns:
        dict ``(class position, difficulty) -> (num_valid_gt, [(ignored_gt, ignored_dt, dontcare_overlaps)])``
        where ``dontcare_overlaps`` is (D, C): 2D intersection over detection area with the DontCare boxes.
    """
    if len(gt_annos) != len(dt_annos):
        raise ValueError(f"{len(gt_annos)} ground-truth annos but {len(dt_annos)} detection annos")
    prepared = {}
    for m, cls_idx in enumerate(class_indices):
        for d in range(len(DIFFICULTIES)):
            num_valid_gt, per_frame = 0, []
            for gt, dt in zip(gt_annos, dt_annos):
                n_valid, ignored_gt, ignored_dt, dontcare = clean_data(gt, dt, CLASS_NAMES[cls_idx], d)
                num_valid_gt += n_valid
                per_frame.append((ignored_gt, ignored_dt, image_box_overlap(dt["bbox"], dontcare, 0)))
            prepared[(m, d)] = (num_valid_gt, per_frame)
    return prepared


def eval_class(gt_annos, dt_annos, class_indices, metric, min_overlaps, compute_aos=False,
               dontcare_all_metrics=False, prepared=None):
    """Precision / AOS curves for one metric.

    Args:
        gt_annos, dt_annos: lists of anno dicts, one per frame, same order.
        class_indices: indices into CLASS_NAMES.
        metric: 'bbox', 'bev' or '3d'.
        min_overlaps: (num_sets, 3 metrics, num_classes) thresholds, class axis in CLASS_NAMES order.
        prepared: output of ``prepare_frames`` for these annos and classes (computed when None).
    Returns:
        dict ``precision``, ``recall``, ``orientation``: (num_classes, 3 difficulties, num_sets, 41) float64.
    """
    if prepared is None:
        prepared = prepare_frames(gt_annos, dt_annos, class_indices)
    metric_idx = METRICS.index(metric)
    num_sets = min_overlaps.shape[0]
    shape = (len(class_indices), len(DIFFICULTIES), num_sets, N_SAMPLE_PTS)
    precision, recall, aos = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    overlaps = [_frame_overlaps(gt, dt, metric) for gt, dt in zip(gt_annos, dt_annos)]
    use_dc = metric == "bbox" or dontcare_all_metrics
    for m, cls_idx in enumerate(class_indices):
        for d in range(len(DIFFICULTIES)):
            num_valid_gt, per_frame = prepared[(m, d)]
            frames = numba.typed.List()
            for gt, dt, ov, (ignored_gt, ignored_dt, dc_ov) in zip(gt_annos, dt_annos, overlaps, per_frame):
                if not use_dc:
                    dc_ov = np.zeros((len(ignored_dt), 0))
                frames.append((np.ascontiguousarray(ov.reshape(len(ignored_dt), len(ignored_gt)), np.float64),
                               np.ascontiguousarray(dc_ov, np.float64),
                               np.asarray(gt["alpha"], np.float64).reshape(-1),
                               np.asarray(dt["alpha"], np.float64).reshape(-1),
                               np.asarray(dt["score"], np.float64).reshape(-1), ignored_gt, ignored_dt))
            if num_valid_gt == 0 or len(frames) == 0:
                continue
            for k in range(num_sets):
                min_overlap = float(min_overlaps[k, metric_idx, cls_idx])
                scores = _first_pass_scores(frames, min_overlap)
                thresholds = get_thresholds(scores, num_valid_gt)
                if len(thresholds) == 0:
                    continue
                pr = _accumulate_pr(frames, min_overlap, thresholds, compute_aos)
                n = len(thresholds)
                recall[m, d, k, :n] = _safe_div(pr[:, 0], pr[:, 0] + pr[:, 2])
                precision[m, d, k, :n] = _safe_div(pr[:, 0], pr[:, 0] + pr[:, 1])
                if compute_aos:
                    aos[m, d, k, :n] = _safe_div(pr[:, 3], pr[:, 0] + pr[:, 1])
                # Monotone precision: best precision at this or any higher recall.
                precision[m, d, k] = np.maximum.accumulate(precision[m, d, k][::-1])[::-1]
                if compute_aos:
                    aos[m, d, k] = np.maximum.accumulate(aos[m, d, k][::-1])[::-1]
    return {"precision": precision, "recall": recall, "orientation": aos}


def do_eval(gt_annos, dt_annos, class_indices, min_overlaps, compute_aos=False, pr_detail_dict=None,
            dontcare_all_metrics=False):
    """AP arrays ``{name: (num_classes, 3 difficulties, num_sets)}`` for bbox/bev/3d/aos, R11 and R40."""
    out = {}
    prepared = prepare_frames(gt_annos, dt_annos, class_indices)
    for metric in METRICS:
        ret = eval_class(gt_annos, dt_annos, class_indices, metric, min_overlaps, compute_aos,
                         dontcare_all_metrics, prepared)
        if pr_detail_dict is not None:
            pr_detail_dict[metric] = ret["precision"]
        out[metric] = (get_map_r11(ret["precision"]), get_map_r40(ret["precision"]))
        if metric == "bbox" and compute_aos:
            out["aos"] = (get_map_r11(ret["orientation"]), get_map_r40(ret["orientation"]))
            if pr_detail_dict is not None:
                pr_detail_dict["aos"] = ret["orientation"]
    return out


def get_official_eval_result(gt_annos, dt_annos, current_classes, PR_detail_dict=None,
                             dontcare_all_metrics=False):
    """KITTI AP for the given classes.

    Args:
        gt_annos: list of ground-truth anno dicts (with ``truncated``, ``occluded`` and DontCare objects).
        dt_annos: list of detection anno dicts (with ``score``), same frame order.
        current_classes: class names or indices into CLASS_NAMES (a single one is accepted).
        PR_detail_dict: optional dict filled with the precision curves per metric
            ((num_classes, 3, 2, 41)).
        dontcare_all_metrics: apply the DontCare rule to BEV/3D too (devkit) instead of 2D only (OpenPCDet).
    Returns:
        (result_str, result_dict): the printed table (strict and loose overlap sets, R11 and R40) and a dict
        with keys ``'<Class>_<3d|bev|image|aos>/<easy|moderate|hard>_<R40|R11>'`` for the strict overlap set
        (Car 0.7, Pedestrian / Cyclist 0.5) and the same keys ending in ``_loose`` for the loose set
        (0.5 / 0.25 / 0.25 for BEV and 3D).
    """
    _check_annos(gt_annos, "gt_annos", need_score=False)
    _check_annos(dt_annos, "dt_annos", need_score=True)
    if not isinstance(current_classes, (list, tuple)):
        current_classes = [current_classes]
    class_indices = [_class_index(c) for c in current_classes]
    compute_aos = any(len(a["alpha"]) > 0 and a["alpha"][0] != -10 for a in dt_annos)
    aps = do_eval(gt_annos, dt_annos, class_indices, MIN_OVERLAPS, compute_aos, PR_detail_dict,
                  dontcare_all_metrics)
    lines = []
    result_dict = {}
    labels = (("bbox", "bbox", "image"), ("bev", "bev ", "bev"), ("3d", "3d  ", "3d"), ("aos", "aos ", "aos"))
    for m, cls_idx in enumerate(class_indices):
        name = CLASS_NAMES[cls_idx]
        for k in range(MIN_OVERLAPS.shape[0]):
            ov = MIN_OVERLAPS[k, :, cls_idx]
            for suffix, which in (("", 0), ("_R40", 1)):
                lines.append(f"{name} AP{suffix}@{ov[0]:.2f}, {ov[1]:.2f}, {ov[2]:.2f}:")
                for key, printed, dict_name in labels:
                    if key not in aps:
                        continue
                    vals = aps[key][which][m, :, k]
                    lines.append(f"{printed} AP:{vals[0]:.4f}, {vals[1]:.4f}, {vals[2]:.4f}")
                    tag = ("_R40" if which == 1 else "_R11") + ("" if k == 0 else "_loose")
                    for d, diff in enumerate(DIFFICULTIES):
                        result_dict[f"{name}_{dict_name}/{diff}{tag}"] = float(vals[d])
    return "\n".join(lines) + "\n", result_dict


# ------------------------------------------------------------------ self check
def _synthetic_gt_annos(rng, num_frames, objects_per_frame):
    """Random but well-formed ground truth: Cars/Pedestrians/Cyclists in front of the camera, plus DontCare.

    Object k of a frame has class ``k % 3`` and, cycling with ``k // 3``, the occlusion/truncation of an
    easy, easy, easy, moderate, hard object, so every class has many counted objects at every difficulty (the
    devkit's recall sampling needs about 80 objects to reach AP 100 for perfect detections).
    """
    dims = {"Car": (3.9, 1.56, 1.6), "Pedestrian": (0.8, 1.75, 0.6), "Cyclist": (1.76, 1.74, 0.6)}
    levels = ((0, 0.0), (0, 0.0), (0, 0.0), (1, 0.2), (2, 0.4))
    annos = []
    for _ in range(num_frames):
        names, loc, dim, rot, bbox, trunc, occ = [], [], [], [], [], [], []
        for k in range(objects_per_frame):
            name = ("Car", "Pedestrian", "Cyclist")[k % 3]
            # Objects on a 5-wide grid so that they never overlap each other.
            x, z = -12.0 + 6.0 * (k % 5) + rng.uniform(-0.5, 0.5), 8.0 + 7.0 * (k // 5) + rng.uniform(-0.5, 0.5)
            l, h, w = np.array(dims[name]) * rng.uniform(0.9, 1.1, 3)
            ry = rng.uniform(-np.pi, np.pi)
            # A pinhole with focal 720 px and the camera 1.65 m above the ground gives the 2D box.
            u, v_bottom, v_top = 620 + 720 * x / z, 190 + 720 * 1.65 / z, 190 + 720 * (1.65 - h) / z
            half_w = 720 * 0.5 * max(l, w) / z
            names.append(name)
            loc.append((x, 1.65, z))
            dim.append((l, h, w))
            rot.append(ry)
            bbox.append((u - half_w, v_top, u + half_w, v_bottom))
            occ.append(levels[(k // 3) % 5][0])
            trunc.append(levels[(k // 3) % 5][1])
        names.append("DontCare")
        loc.append((-1000.0, -1000.0, -1000.0))
        dim.append((-1.0, -1.0, -1.0))
        rot.append(-10.0)
        bbox.append((1000.0, 150.0, 1100.0, 250.0))
        trunc.append(-1.0)
        occ.append(-1)
        loc_arr, rot_arr = np.array(loc), np.array(rot)
        annos.append({
            "name": np.array(names), "truncated": np.array(trunc), "occluded": np.array(occ, dtype=np.int64),
            "alpha": rot_arr - np.arctan2(loc_arr[:, 0], loc_arr[:, 2]), "bbox": np.array(bbox),
            "dimensions": np.array(dim), "location": loc_arr, "rotation_y": rot_arr,
            "score": np.zeros(len(names)),
        })
    return annos


def _noisy_detections(gt_annos, rng, miss_rate=0.15, num_false_positives=1):
    dets = []
    for gt in gt_annos:
        keep = np.array([n != "DontCare" for n in gt["name"]]) & (rng.uniform(size=len(gt["name"])) > miss_rate)
        n = int(keep.sum())
        loc = gt["location"][keep] + rng.normal(0, 0.15, (n, 3)) * [1, 0.3, 1]
        dim = gt["dimensions"][keep] * rng.normal(1, 0.04, (n, 3))
        rot = gt["rotation_y"][keep] + rng.normal(0, 0.08, n)
        bbox = gt["bbox"][keep] + rng.normal(0, 2.0, (n, 4))
        alpha = gt["alpha"][keep] + rng.normal(0, 0.08, n)
        names = gt["name"][keep]
        score = rng.uniform(0.3, 1.0, n)
        fp_names = np.array([("Car", "Pedestrian", "Cyclist")[k % 3] for k in range(num_false_positives)])
        fp_loc = np.stack([rng.uniform(-15, 15, num_false_positives), np.full(num_false_positives, 1.65),
                           rng.uniform(40, 50, num_false_positives)], axis=1)
        fp_bbox = np.stack([np.full(num_false_positives, 300.0), np.full(num_false_positives, 150.0),
                            np.full(num_false_positives, 360.0), np.full(num_false_positives, 200.0)], axis=1)
        dets.append({
            "name": np.concatenate([names, fp_names]),
            "truncated": np.zeros(n + num_false_positives), "occluded": np.zeros(n + num_false_positives),
            "alpha": np.concatenate([alpha, np.zeros(num_false_positives)]),
            "bbox": np.concatenate([bbox, fp_bbox]),
            "dimensions": np.concatenate([dim, np.tile([[3.9, 1.56, 1.6]], (num_false_positives, 1))]),
            "location": np.concatenate([loc, fp_loc]),
            "rotation_y": np.concatenate([rot, np.zeros(num_false_positives)]),
            "score": np.concatenate([score, rng.uniform(0.3, 0.9, num_false_positives)]),
        })
    return dets


def _perfect_detections(gt_annos):
    dets = []
    for gt in gt_annos:
        keep = np.array([n != "DontCare" for n in gt["name"]], dtype=bool)
        det = {k: np.asarray(v)[keep] for k, v in gt.items()}
        det["score"] = np.linspace(1.0, 0.5, int(keep.sum()))
        dets.append(det)
    return dets


def evaluate_self_check(num_frames=30, objects_per_frame=15, seed=0, verbose=False):
    """Evaluate synthetic ground truth against (a) perfect and (b) noisy detections.

    Returns:
        dict ``{'perfect': (result_str, result_dict), 'noisy': (result_str, result_dict)}``; every AP of
        ``perfect`` is 100, ``noisy`` is below 100 (misses, false positives, jitter; seeded).
    """
    rng = np.random.default_rng(seed)
    gt_annos = _synthetic_gt_annos(rng, num_frames, objects_per_frame)
    classes = ["Car", "Pedestrian", "Cyclist"]
    perfect = get_official_eval_result(gt_annos, _perfect_detections(gt_annos), classes)
    noisy = get_official_eval_result(gt_annos, _noisy_detections(gt_annos, rng), classes)
    if verbose:
        print("perfect detections:\n" + perfect[0])
        print("noisy detections:\n" + noisy[0])
    return {"perfect": perfect, "noisy": noisy}


if __name__ == "__main__":
    evaluate_self_check(verbose=True)
