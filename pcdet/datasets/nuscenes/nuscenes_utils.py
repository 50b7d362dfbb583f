"""nuScenes helpers: class maps, point and sweep loading, info generation through nuscenes-devkit, the
submission format, and the nuScenes detection metric (mAP over centre-distance thresholds, TP errors, NDS).

nuscenes-devkit is optional: it is imported lazily by ``fill_infos`` (official layout) and
``devkit_evaluation``; everything else is numpy only. Boxes are ``[x, y, z, dx, dy, dz, heading, vx, vy]`` in the
LIDAR_TOP frame, centre origin (dx = length along the heading, dy = width, dz = height; devkit ``wlh`` =
``[dy, dx, dz]``).
"""
import importlib.util
from pathlib import Path

import numpy as np

NUSCENES_CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
                    "pedestrian", "traffic_cone")

# nuScenes category -> detection class (devkit's eval/detection/utils.py mapping); others are 'ignore'.
CATEGORY_TO_DETECTION = {
    "human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
    "human.pedestrian.wheelchair": "ignore", "human.pedestrian.stroller": "ignore",
    "human.pedestrian.personal_mobility": "ignore", "human.pedestrian.police_officer": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian", "animal": "ignore", "vehicle.car": "car",
    "vehicle.motorcycle": "motorcycle", "vehicle.bicycle": "bicycle", "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus", "vehicle.truck": "truck", "vehicle.construction": "construction_vehicle",
    "vehicle.emergency.ambulance": "ignore", "vehicle.emergency.police": "ignore", "vehicle.trailer": "trailer",
    "movable_object.barrier": "barrier", "movable_object.trafficcone": "traffic_cone",
    "movable_object.pushable_pullable": "ignore", "movable_object.debris": "ignore",
    "static_object.bicycle_rack": "ignore",
}

# Detection evaluation config 'detection_cvpr_2019'.
CLASS_RANGE = {"car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50, "pedestrian": 40,
               "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30}
DIST_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)
DIST_TH_TP = 2.0
MIN_RECALL = 0.1
MIN_PRECISION = 0.1
MAX_BOXES_PER_SAMPLE = 500
TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
TP_METRIC_SHORT = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE",
                   "attr_err": "mAAE"}
# TP errors that the metric leaves undefined for a class (devkit: NaN, skipped in the class mean).
UNDEFINED_TP = {"traffic_cone": ("orient_err", "vel_err", "attr_err"), "barrier": ("vel_err", "attr_err")}
NUM_RECALL_POINTS = 101

DEFAULT_ATTRIBUTE = {"car": ("vehicle.moving", "vehicle.parked"), "truck": ("vehicle.moving", "vehicle.parked"),
                     "bus": ("vehicle.moving", "vehicle.parked"), "trailer": ("vehicle.moving", "vehicle.parked"),
                     "construction_vehicle": ("vehicle.moving", "vehicle.parked"),
                     "pedestrian": ("pedestrian.moving", "pedestrian.standing"),
                     "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
                     "bicycle": ("cycle.with_rider", "cycle.without_rider")}


def devkit_available():
    return importlib.util.find_spec("nuscenes") is not None


def import_devkit():
    """Import nuscenes-devkit or raise an ImportError saying how to install it."""
    if not devkit_available():
        raise ImportError("nuscenes-devkit is required for the official nuScenes layout and evaluation: "
                          "pip install nuscenes-devkit (see docs/DATASETS.md)")
    from nuscenes.nuscenes import NuScenes
    return NuScenes


# ------------------------------------------------------------------ points and sweeps
def load_lidar_file(path, num_features=5):
    """(N, num_features) float32 from a nuScenes ``*.pcd.bin`` (x, y, z, intensity 0-255, ring index)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nuScenes lidar file not found: {path}")
    raw = np.fromfile(str(path), dtype=np.float32)
    if raw.size % num_features != 0:
        raise ValueError(f"{path}: {raw.size} floats is not a multiple of {num_features} features per point")
    return raw.reshape(-1, num_features)


def remove_ego_points(points, center_radius=1.0):
    """Drop points (N, C) within ``center_radius`` of the sensor in both x and y (the car roof)."""
    keep = ~((np.abs(points[:, 0]) < center_radius) & (np.abs(points[:, 1]) < center_radius))
    return points[keep]


def sweep_points(root_path, sweep, num_features=5):
    """Points (N, 5) ``[x, y, z, intensity, time_lag]`` of one sweep moved into the key frame's LiDAR frame.

    ``sweep``: dict ``lidar_path`` (relative to ``root_path``), ``transform_matrix`` (4, 4) sweep LiDAR -> key
    LiDAR (None when they coincide) and ``time_lag`` seconds.
    """
    pts = remove_ego_points(load_lidar_file(Path(root_path) / sweep["lidar_path"], num_features)[:, :4])
    tm = sweep.get("transform_matrix")
    if tm is not None:
        tm = np.asarray(tm, dtype=np.float64)
        pts = pts.copy()
        pts[:, :3] = (pts[:, :3].astype(np.float64) @ tm[:3, :3].T + tm[:3, 3]).astype(np.float32)
    lag = np.full((pts.shape[0], 1), sweep["time_lag"], dtype=np.float32)
    return np.concatenate([pts, lag], axis=1)


# ------------------------------------------------------------------ rotations
def quaternion_to_matrix(q):
    """(3, 3) rotation of a unit quaternion ``[w, x, y, z]``."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quaternion(m):
    """Unit quaternion ``[w, x, y, z]`` (w >= 0) of a (3, 3) rotation matrix."""
    m = np.asarray(m, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q if q[0] >= 0 else -q


def transform_matrix(translation, rotation, inverse=False):
    """(4, 4) homogeneous transform from a translation (3,) and a quaternion ``[w, x, y, z]``."""
    rot = quaternion_to_matrix(rotation)
    t = np.asarray(translation, dtype=np.float64)
    tm = np.eye(4)
    if inverse:
        tm[:3, :3] = rot.T
        tm[:3, 3] = -rot.T @ t
    else:
        tm[:3, :3] = rot
        tm[:3, 3] = t
    return tm


def yaw_of_matrix(rot):
    """Heading about +z of a rotation (3, 3): the angle of its x axis in the xy plane."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


# ------------------------------------------------------------------ info generation (nuscenes-devkit)
def fill_infos(nusc, data_path, scene_tokens, with_annotations=True, max_sweeps=10):
    """OpenPCDet-layout infos of every key frame of ``scene_tokens`` (devkit ``NuScenes`` instance ``nusc``).

    Each info: ``lidar_path`` (relative to ``data_path``), ``token`` (sample token), ``timestamp`` (s),
    ``ref_from_car`` and ``car_from_global`` (4, 4), ``sweeps`` (up to ``max_sweeps - 1`` previous LiDAR sweeps:
    ``lidar_path``, ``sample_data_token``, ``transform_matrix`` (4, 4) sweep LiDAR -> key LiDAR, ``time_lag``),
    and with annotations ``gt_boxes`` (M, 9) ``[x, y, z, dx, dy, dz, heading, vx, vy]`` in the key LiDAR frame,
    ``gt_names`` (detection classes, 'ignore' for the rest), ``gt_boxes_token``, ``num_lidar_pts``,
    ``num_radar_pts``.
    """
    data_path = Path(data_path)
    scene_tokens = set(scene_tokens)
    infos = []
    for sample in nusc.sample:
        if sample["scene_token"] not in scene_tokens:
            continue
        ref_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        ref_cs = nusc.get("calibrated_sensor", ref_sd["calibrated_sensor_token"])
        ref_pose = nusc.get("ego_pose", ref_sd["ego_pose_token"])
        ref_from_car = transform_matrix(ref_cs["translation"], ref_cs["rotation"], inverse=True)
        car_from_global = transform_matrix(ref_pose["translation"], ref_pose["rotation"], inverse=True)
        ref_time = 1e-6 * ref_sd["timestamp"]
        lidar_path = Path(nusc.get_sample_data_path(ref_sd["token"])).resolve()
        info = {"lidar_path": str(lidar_path.relative_to(data_path.resolve())), "token": sample["token"],
                "timestamp": ref_time, "ref_from_car": ref_from_car, "car_from_global": car_from_global,
                "sweeps": []}
        cur_sd = ref_sd
        while len(info["sweeps"]) < max_sweeps - 1 and cur_sd["prev"] != "":
            cur_sd = nusc.get("sample_data", cur_sd["prev"])
            cs = nusc.get("calibrated_sensor", cur_sd["calibrated_sensor_token"])
            pose = nusc.get("ego_pose", cur_sd["ego_pose_token"])
            global_from_car = transform_matrix(pose["translation"], pose["rotation"])
            car_from_current = transform_matrix(cs["translation"], cs["rotation"])
            tm = ref_from_car @ car_from_global @ global_from_car @ car_from_current
            sweep_path = Path(nusc.get_sample_data_path(cur_sd["token"])).resolve()
            info["sweeps"].append({"lidar_path": str(sweep_path.relative_to(data_path.resolve())),
                                   "sample_data_token": cur_sd["token"], "transform_matrix": tm,
                                   "time_lag": ref_time - 1e-6 * cur_sd["timestamp"]})
        if with_annotations:
            anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
            ref_rot = (ref_from_car @ car_from_global)[:3, :3]
            boxes = np.zeros((len(anns), 9), dtype=np.float64)
            for i, ann in enumerate(anns):
                centre = ref_from_car @ car_from_global @ np.append(np.asarray(ann["translation"]), 1.0)
                rot = ref_rot @ quaternion_to_matrix(ann["rotation"])
                w, l, h = ann["size"]
                velo = np.asarray(nusc.box_velocity(ann["token"]), dtype=np.float64)
                boxes[i, :7] = [*centre[:3], l, w, h, yaw_of_matrix(rot)]
                boxes[i, 7:9] = (ref_rot @ velo)[:2]
            info["gt_boxes"] = boxes.astype(np.float32)
            info["gt_names"] = np.array([CATEGORY_TO_DETECTION.get(a["category_name"], "ignore") for a in anns])
            info["gt_boxes_token"] = np.array([a["token"] for a in anns])
            info["num_lidar_pts"] = np.array([a["num_lidar_pts"] for a in anns], dtype=np.int64)
            info["num_radar_pts"] = np.array([a["num_radar_pts"] for a in anns], dtype=np.int64)
        infos.append(info)
    return infos


def split_scene_tokens(nusc, version):
    """(train, val) scene tokens of ``version`` from devkit's predefined splits; test -> (all scenes, [])."""
    from nuscenes.utils import splits
    names = {"v1.0-trainval": (splits.train, splits.val), "v1.0-mini": (splits.mini_train, splits.mini_val),
             "v1.0-test": (splits.test, [])}
    if version not in names:
        raise ValueError(f"unknown nuScenes version '{version}', expected one of {sorted(names)}")
    by_name = {s["name"]: s["token"] for s in nusc.scene}
    train, val = names[version]
    return [by_name[n] for n in train if n in by_name], [by_name[n] for n in val if n in by_name]


# ------------------------------------------------------------------ submission format
def boxes_lidar_to_global(boxes, ref_from_car, car_from_global):
    """Global-frame ``(translation (K, 3), rotation quaternions (K, 4), velocity (K, 2))`` of LiDAR boxes (K, 7+).

    Velocities are zero when the boxes carry none (7 columns).
    """
    global_from_ref = np.linalg.inv(np.asarray(car_from_global, dtype=np.float64)) @ \
        np.linalg.inv(np.asarray(ref_from_car, dtype=np.float64))
    boxes = np.asarray(boxes, dtype=np.float64)
    boxes = np.zeros((0, 7)) if boxes.size == 0 else boxes.reshape(boxes.shape[0], -1)
    rot = global_from_ref[:3, :3]
    trans = boxes[:, :3] @ rot.T + global_from_ref[:3, 3]
    quats = []
    for yaw in boxes[:, 6]:
        c, s = np.cos(yaw), np.sin(yaw)
        quats.append(matrix_to_quaternion(rot @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])))
    velo = np.zeros((boxes.shape[0], 2))
    if boxes.shape[1] >= 9:
        v3 = np.concatenate([boxes[:, 7:9], np.zeros((boxes.shape[0], 1))], axis=1)
        velo = (v3 @ rot.T)[:, :2]
    return trans, np.array(quats).reshape(-1, 4), velo


def det_annos_to_submission(det_annos, infos_by_token, meta=None):
    """nuScenes detection submission dict (``meta``, ``results`` per sample token) from ``det_annos``.

    ``det_annos[i]``: ``frame_id`` (sample token), ``name`` (K,), ``score`` (K,), ``boxes_lidar`` (K, 7 or 9).
    Attributes are the class default (moving when the speed exceeds 0.2 m/s), as OpenPCDet writes them. At most
    ``MAX_BOXES_PER_SAMPLE`` boxes per sample are kept (the highest scores): the devkit rejects more.
    """
    results = {}
    for anno in det_annos:
        if len(anno["name"]) > MAX_BOXES_PER_SAMPLE:
            top = np.argsort(-np.asarray(anno["score"]), kind="stable")[:MAX_BOXES_PER_SAMPLE]
            anno = dict(anno, name=np.asarray(anno["name"])[top], score=np.asarray(anno["score"])[top],
                        boxes_lidar=np.asarray(anno["boxes_lidar"])[top])
        token = anno["frame_id"]
        if token not in infos_by_token:
            raise KeyError(f"nuScenes submission: detections for sample token {token} which has no info")
        info = infos_by_token[token]
        trans, quats, velo = boxes_lidar_to_global(np.asarray(anno["boxes_lidar"]), info["ref_from_car"],
                                                   info["car_from_global"])
        boxes = np.asarray(anno["boxes_lidar"], dtype=np.float64).reshape(len(anno["name"]), -1)
        entries = []
        for k, name in enumerate(anno["name"]):
            speed = float(np.linalg.norm(velo[k]))
            attrs = DEFAULT_ATTRIBUTE.get(str(name))
            attr = "" if attrs is None else (attrs[0] if speed > 0.2 else attrs[1])
            entries.append({"sample_token": token, "translation": trans[k].tolist(),
                            "size": [float(boxes[k, 4]), float(boxes[k, 3]), float(boxes[k, 5])],
                            "rotation": quats[k].tolist(), "velocity": velo[k].tolist(),
                            "detection_name": str(name), "detection_score": float(anno["score"][k]),
                            "attribute_name": attr})
        results[token] = entries
    meta = meta or {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                    "use_external": False}
    return {"meta": meta, "results": results}


# ------------------------------------------------------------------ the detection metric (numpy)
def _wrap_angle_diff(a, b, period=2 * np.pi):
    diff = np.mod(np.asarray(a) - np.asarray(b) + period / 2, period) - period / 2
    return np.abs(diff)


def _scale_error(gt_dims, pred_dims):
    """1 - IoU of two boxes (3,) aligned on centre and heading."""
    inter = np.prod(np.minimum(gt_dims, pred_dims))
    union = np.prod(gt_dims) + np.prod(pred_dims) - inter
    return 1.0 - inter / union


def _class_curves(gt_annos, det_annos, class_name, dist_th):
    """Precision / TP-error curves of one class and distance threshold sampled at 101 recall points.

    Returns None when the class has no ground truth, else dict ``precision``, ``confidence`` (101,) and one
    (101,) curve per TP metric (cumulative mean of the matched errors, by confidence).
    """
    npos = sum(int(np.sum(np.asarray(g["name"]) == class_name)) for g in gt_annos)
    if npos == 0:
        return None
    preds = []
    for f, det in enumerate(det_annos):
        for k in np.flatnonzero(np.asarray(det["name"]) == class_name):
            preds.append((float(det["score"][k]), f, int(k)))
    preds.sort(key=lambda p: -p[0])
    # per frame: indices and boxes of this class's ground truth, and which are matched
    gt_idx = [np.flatnonzero(np.asarray(g["name"]) == class_name) for g in gt_annos]
    gt_cls_boxes = [np.asarray(g["gt_boxes_lidar"], dtype=np.float64).reshape(len(g["name"]), -1)[idx]
                    for g, idx in zip(gt_annos, gt_idx)]
    taken = [np.zeros(len(idx), dtype=bool) for idx in gt_idx]
    tp, conf = [], []
    errs = {m: [] for m in TP_METRICS[:4]}
    match_conf = []
    period = np.pi if class_name == "barrier" else 2 * np.pi
    for score, f, k in preds:
        det_box = np.asarray(det_annos[f]["boxes_lidar"][k], dtype=np.float64)
        conf.append(score)
        boxes = gt_cls_boxes[f]
        if len(boxes) == 0:
            tp.append(0.0)
            continue
        dist = np.linalg.norm(boxes[:, :2] - det_box[:2], axis=1)
        dist[taken[f]] = np.inf
        best = int(np.argmin(dist))
        if dist[best] < dist_th:
            taken[f][best] = True
            tp.append(1.0)
            g = boxes[best]
            errs["trans_err"].append(float(dist[best]))
            errs["scale_err"].append(_scale_error(g[3:6], det_box[3:6]))
            errs["orient_err"].append(float(_wrap_angle_diff(det_box[6], g[6], period)))
            has_vel = g.shape[0] >= 9 and det_box.shape[0] >= 9
            errs["vel_err"].append(float(np.linalg.norm(det_box[7:9] - g[7:9])) if has_vel else np.nan)
            match_conf.append(score)
        else:
            tp.append(0.0)
    rec_points = np.linspace(0, 1, NUM_RECALL_POINTS)
    out = {"precision": np.zeros(NUM_RECALL_POINTS), "confidence": np.zeros(NUM_RECALL_POINTS)}
    for m in errs:
        out[m] = np.ones(NUM_RECALL_POINTS)
    if not match_conf:
        return out
    tp = np.cumsum(tp)
    fp = np.arange(1, len(tp) + 1) - tp
    prec = tp / np.maximum(tp + fp, 1e-12)
    rec = tp / npos
    out["precision"] = np.interp(rec_points, rec, prec, right=0)
    out["confidence"] = np.interp(rec_points, rec, np.asarray(conf), right=0)
    mc = np.asarray(match_conf)
    for m, values in errs.items():
        cummean = _nan_cummean(np.asarray(values, dtype=np.float64))
        # error curve as a function of confidence, read at the confidence of each recall point
        out[m] = np.interp(out["confidence"][::-1], mc[::-1], cummean[::-1])[::-1]
    return out


def _nan_cummean(x):
    """Running mean of ``x`` skipping NaN (unknown ground-truth velocity); all NaN gives ones (worst error)."""
    valid = ~np.isnan(x)
    if not valid.any():
        return np.ones(len(x))
    sums = np.cumsum(np.where(valid, x, 0.0))
    counts = np.cumsum(valid)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def _ap(precision):
    start = int(round(100 * MIN_RECALL)) + 1
    prec = np.clip(np.asarray(precision)[start:] - MIN_PRECISION, 0.0, None)
    return float(np.mean(prec)) / (1.0 - MIN_PRECISION)


def _tp_value(curves, metric):
    start = int(round(100 * MIN_RECALL)) + 1
    nonzero = np.flatnonzero(curves["confidence"] > 0)
    last = int(nonzero[-1]) if nonzero.size else 0
    if last < start:
        return 1.0
    return float(np.mean(curves[metric][start:last + 1]))


def filter_annos_by_range(annos, box_key, class_range=None):
    """Copies of ``annos`` keeping boxes within their class range (BEV distance to the sensor, metres) and, for
    ground truth, with at least one LiDAR point when ``num_lidar_pts`` is present. Detections keep the top
    ``MAX_BOXES_PER_SAMPLE`` by score."""
    class_range = CLASS_RANGE if class_range is None else class_range
    out = []
    for anno in annos:
        names = np.asarray(anno["name"])
        boxes = np.asarray(anno[box_key], dtype=np.float64).reshape(len(names), -1) if len(names) else \
            np.zeros((0, 9))
        limit = np.array([class_range.get(str(n), -1.0) for n in names], dtype=np.float64)
        keep = np.linalg.norm(boxes[:, :2], axis=1) <= limit if len(names) else np.zeros(0, dtype=bool)
        if "num_lidar_pts" in anno:
            keep &= np.asarray(anno["num_lidar_pts"]) > 0
        new = {"name": names[keep], box_key: boxes[keep]}
        if "score" in anno:
            scores = np.asarray(anno["score"], dtype=np.float64)[keep]
            top = np.argsort(-scores, kind="stable")[:MAX_BOXES_PER_SAMPLE]
            new = {"name": new["name"][top], box_key: new[box_key][top], "score": scores[top]}
        out.append(new)
    return out


def nuscenes_detection_metrics(gt_annos, det_annos, class_names):
    """nuScenes detection metric over frames with boxes in the LiDAR frame (ranges taken from the sensor).

    Args:
        gt_annos: per frame ``name`` (M,), ``gt_boxes_lidar`` (M, 9) ``[x, y, z, dx, dy, dz, heading, vx, vy]``
            (NaN velocity = unknown, left out of the velocity error as in the devkit), optional ``num_lidar_pts``.
        det_annos: per frame, same order, ``name`` (K,), ``boxes_lidar`` (K, 9 or 7), ``score`` (K,).
        class_names: classes averaged into mAP (a class without ground truth scores AP 0, as in the devkit).
    Returns:
        dict ``mean_ap``, ``nd_score``, ``label_aps`` {class: {dist_th: AP}}, ``label_tp_errors``
        {class: {metric: value}}, ``tp_errors`` {metric: class mean}. Attributes are not evaluated here
        (``attr_err`` is 1 for classes that have attributes), so NDS is a lower bound of the devkit's.
    """
    if len(gt_annos) != len(det_annos):
        raise ValueError(f"nuScenes metric: {len(gt_annos)} ground-truth frames but {len(det_annos)} detection "
                         f"frames")
    gts = filter_annos_by_range(gt_annos, "gt_boxes_lidar")
    dets = filter_annos_by_range(det_annos, "boxes_lidar")
    label_aps, label_tp = {}, {}
    for name in class_names:
        label_aps[name] = {}
        curves_tp = None
        for th in DIST_THRESHOLDS:
            curves = _class_curves(gts, dets, name, th)
            label_aps[name][th] = 0.0 if curves is None else _ap(curves["precision"])
            if th == DIST_TH_TP:
                curves_tp = curves
        label_tp[name] = {}
        for metric in TP_METRICS:
            if metric in UNDEFINED_TP.get(name, ()):
                label_tp[name][metric] = np.nan
            elif metric == "attr_err" or curves_tp is None:
                label_tp[name][metric] = 1.0
            else:
                label_tp[name][metric] = _tp_value(curves_tp, metric)
    mean_ap = float(np.mean([np.mean(list(v.values())) for v in label_aps.values()])) if class_names else 0.0
    tp_errors = {}
    for metric in TP_METRICS:
        values = [label_tp[n][metric] for n in class_names if not np.isnan(label_tp[n][metric])]
        tp_errors[metric] = float(np.mean(values)) if values else 1.0
    nd_score = (5 * mean_ap + sum(1.0 - min(1.0, tp_errors[m]) for m in TP_METRICS)) / 10.0
    return {"mean_ap": mean_ap, "nd_score": float(nd_score), "label_aps": label_aps, "label_tp_errors": label_tp,
            "tp_errors": tp_errors}


def format_metrics(metrics, class_names):
    """Text table of ``nuscenes_detection_metrics`` (or devkit) results and the flat dict logged by tools/."""
    lines = [f"mAP: {metrics['mean_ap']:.4f}", f"NDS: {metrics['nd_score']:.4f}"]
    flat = {"mAP": metrics["mean_ap"], "NDS": metrics["nd_score"]}
    for metric, value in metrics["tp_errors"].items():
        lines.append(f"{TP_METRIC_SHORT[metric]}: {value:.4f}")
        flat[TP_METRIC_SHORT[metric]] = value
    lines.append("class                 AP@0.5  AP@1.0  AP@2.0  AP@4.0  ATE    ASE    AOE    AVE    AAE")
    for name in class_names:
        aps = [metrics["label_aps"][name][th] for th in DIST_THRESHOLDS]
        tps = [metrics["label_tp_errors"][name][m] for m in TP_METRICS]
        flat[f"{name}_AP"] = float(np.mean(aps))
        lines.append(f"{name:<20s} " + " ".join(f"{a:6.4f}" for a in aps) + "  " +
                     " ".join("  nan " if np.isnan(t) else f"{t:6.4f}" for t in tps))
    return "\n".join(lines) + "\n", flat


def devkit_evaluation(submission_path, nusc_version, data_path, output_dir, eval_set):
    """Run nuscenes-devkit's ``DetectionEval`` ('detection_cvpr_2019') on a submission JSON.

    Returns the devkit metrics summary converted to this module's dict layout (``mean_ap``, ``nd_score``,
    ``label_aps``, ``label_tp_errors``, ``tp_errors``).
    """
    NuScenes = import_devkit()
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval
    nusc = NuScenes(version=nusc_version, dataroot=str(data_path), verbose=False)
    evaluator = DetectionEval(nusc, config=config_factory("detection_cvpr_2019"), result_path=str(submission_path),
                              eval_set=eval_set, output_dir=str(output_dir), verbose=False)
    summary = evaluator.main(plot_examples=0, render_curves=False)
    return {"mean_ap": summary["mean_ap"], "nd_score": summary["nd_score"],
            "label_aps": {n: {float(k): v for k, v in d.items()} for n, d in summary["label_aps"].items()},
            "label_tp_errors": summary["label_tp_errors"], "tp_errors": summary["tp_errors"]}
