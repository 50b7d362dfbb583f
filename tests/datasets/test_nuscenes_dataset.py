"""nuScenes dataset: real key frame (points, box convention, point counts), sweeps, CBGS, GT database, the
submission format and the detection metric on hand-built cases."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.datasets.nuscenes import nuscenes_utils as nu
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REAL_NUSC = SHARED / "data" / "real" / "mmdet3d_demo_nuscenes"
CLASSES = list(nu.NUSCENES_CLASSES)


def _cfg(max_sweeps=1, processors=None, **extra):
    cfg = EasyDict({
        "DATASET": "NuScenesDataset", "DATA_PATH": "unused", "VERSION": "v1.0-mini", "MAX_SWEEPS": max_sweeps,
        "PRED_VELOCITY": True, "FILTER_MIN_POINTS_IN_GT": 0, "EVAL_BACKEND": "project",
        "INFO_PATH": {"train": ["infos.pkl"], "test": ["infos.pkl"]},
        "POINT_CLOUD_RANGE": [-60.0, -60.0, -5.0, 60.0, 60.0, 3.0],
        "POINT_FEATURE_ENCODING": {"encoding_type": "absolute_coordinates_encoding",
                                   "used_feature_list": ["x", "y", "z", "intensity", "timestamp"],
                                   "src_feature_list": ["x", "y", "z", "intensity", "timestamp"]},
        "DATA_PROCESSOR": processors or [],
    })
    cfg.update(extra)
    return cfg


def _write_infos(base, infos):
    root = base / "v1.0-mini"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "infos.pkl", "wb") as f:
        pickle.dump(infos, f)
    return root


@pytest.fixture(scope="module")
def real_anno():
    path = REAL_NUSC / "annotations_lidar.json"
    if not path.is_file():
        pytest.skip(f"real nuScenes key frame not found at {path} (../shared fixtures absent)")
    with open(path) as f:
        return json.load(f)


def test_real_keyframe_points_have_five_features(real_anno):
    pts = nu.load_lidar_file(REAL_NUSC / real_anno["lidar_path"])
    assert pts.shape == (34688, 5)
    assert pts[:, 3].max() == 255.0 and pts[:, 4].max() == 31.0 and pts[:, 4].min() == 0.0
    boxes = np.array(real_anno["gt_boxes"], dtype=np.float32)
    counts = points_in_boxes_cpu(pts[:, :3], boxes).sum(axis=1)
    # centre-origin boxes: 61 of the 69 counts equal nuScenes num_lidar_pts exactly (shared README)
    assert int((counts == np.array(real_anno["num_lidar_pts"])).sum()) == 61


def test_real_keyframe_through_the_dataset(real_anno, tmp_path):
    info = {"lidar_path": str(REAL_NUSC / real_anno["lidar_path"]), "token": real_anno["token"],
            "sweeps": [], "gt_boxes": np.concatenate([np.array(real_anno["gt_boxes"]),
                                                      np.array(real_anno["velocity"])], axis=1).astype(np.float32),
            "gt_names": np.array(real_anno["gt_names"]), "num_lidar_pts": np.array(real_anno["num_lidar_pts"])}
    _write_infos(tmp_path, [info])
    ds = NuScenesDataset(_cfg(), CLASSES, training=False, root_path=tmp_path)
    sample = ds[0]
    assert sample["frame_id"] == "ca9a282c9e77460f8360f564131a8af5"
    pts = sample["points"]
    assert pts.shape == (34688, 5) and np.all(pts[:, 4] == 0.0)  # key frame: time lag 0
    keep = np.array(real_anno["gt_names"]) != "ignore"
    boxes = sample["gt_boxes"]
    assert boxes.shape == (68, 10)  # 7 box values, vx, vy, class id; the 'ignore' box is dropped
    velocity = np.array(real_anno["velocity"], dtype=np.float64)[keep]
    assert np.isnan(velocity).any()  # single-frame tracks: the dataset writes 0 for NaN velocities
    np.testing.assert_allclose(boxes[:, 7:9], np.nan_to_num(velocity), atol=1e-6)
    assert boxes[0, 9] == CLASSES.index(real_anno["gt_names"][0]) + 1
    counts = points_in_boxes_cpu(pts[:, :3], boxes[:, :7]).sum(axis=1)
    assert int((counts == np.array(real_anno["num_lidar_pts"])[keep]).sum()) == 60  # 61 minus the ignored box


def test_sweeps_are_moved_into_the_key_frame_with_time_lag(tmp_path):
    root = tmp_path / "v1.0-mini"
    (root / "samples").mkdir(parents=True)
    key = np.array([[5.0, 0.0, 0.0, 10.0, 1.0]], dtype=np.float32)
    sweep = np.array([[2.0, 0.0, 1.0, 20.0, 2.0], [0.5, 0.5, 0.0, 30.0, 3.0]], dtype=np.float32)
    key.tofile(root / "samples" / "key.pcd.bin")
    sweep.tofile(root / "samples" / "sweep.pcd.bin")
    tm = np.eye(4)
    tm[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about z
    tm[:3, 3] = [1.0, 0.0, 0.0]
    info = {"lidar_path": "samples/key.pcd.bin", "token": "t0",
            "sweeps": [{"lidar_path": "samples/sweep.pcd.bin", "transform_matrix": tm, "time_lag": 0.05},
                       {"lidar_path": "samples/sweep.pcd.bin", "transform_matrix": None, "time_lag": 0.1}]}
    _write_infos(tmp_path, [info])
    ds = NuScenesDataset(_cfg(max_sweeps=2), CLASSES, training=False, root_path=tmp_path)
    pts = ds.get_lidar_with_sweeps(0, max_sweeps=2)
    # the sweep point at (0.5, 0.5) is on the ego car and dropped; (2, 0, 1) -> (1, 2, 1)
    np.testing.assert_allclose(pts, [[5, 0, 0, 10, 0], [1, 2, 1, 20, 0.05]], atol=1e-6)
    assert ds.get_lidar_with_sweeps(0, max_sweeps=3).shape == (3, 5)
    assert ds[0]["points"].shape == (2, 5)


def test_balanced_resampling_counts():
    ds = NuScenesDataset.__new__(NuScenesDataset)
    ds.class_names, ds.logger = ["car", "bicycle"], None
    infos = [{"gt_names": np.array(["car"])}] * 3 + [{"gt_names": np.array(["bicycle", "car"])}]
    np.random.seed(0)
    out = ds.balanced_infos_resampling(infos)
    # 5 class-frame pairs: car 4/5 -> ratio 0.5 / 0.8 -> int(4 * 0.625) = 2; bicycle 1/5 -> ratio 2.5 -> 2
    assert len(out) == 4
    assert sum("bicycle" in i["gt_names"] for i in out) >= 2


def test_groundtruth_database(tmp_path):
    root = tmp_path / "v1.0-mini"
    (root / "samples").mkdir(parents=True)
    np.array([[10.0, 0.0, 0.0, 1.0, 0.0], [10.2, 0.1, 0.1, 2.0, 0.0], [30.0, 0.0, 0.0, 3.0, 0.0]],
             dtype=np.float32).tofile(root / "samples" / "key.pcd.bin")
    info = {"lidar_path": "samples/key.pcd.bin", "token": "tok", "sweeps": [],
            "gt_boxes": np.array([[10, 0, 0, 2, 2, 2, 0, 1.5, -0.5]], dtype=np.float32),
            "gt_names": np.array(["car"]), "num_lidar_pts": np.array([2])}
    _write_infos(tmp_path, [info])
    ds = NuScenesDataset(_cfg(), CLASSES, training=False, root_path=tmp_path)
    db = ds.create_groundtruth_database(max_sweeps=1)
    entry = db["car"][0]
    assert entry["num_points_in_gt"] == 2 and entry["path"] == "gt_database_1sweeps_withvelo/tok_car_0.bin"
    np.testing.assert_allclose(entry["box3d_lidar"][7:9], [1.5, -0.5])
    pts = np.fromfile(root / entry["path"], dtype=np.float32).reshape(-1, 5)
    np.testing.assert_allclose(pts[:, :4], [[0, 0, 0, 1], [0.2, 0.1, 0.1, 2]], atol=1e-6)
    assert (root / "nuscenes_dbinfos_1sweeps_withvelo.pkl").is_file()


def test_submission_is_in_the_global_frame():
    # ego at (100, 200, 0) facing +y (yaw 90 deg); LiDAR at the ego origin
    car_from_global = nu.transform_matrix([100.0, 200.0, 0.0], [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)],
                                          inverse=True)
    info = {"token": "s0", "ref_from_car": np.eye(4), "car_from_global": car_from_global}
    det = {"frame_id": "s0", "name": np.array(["car"]), "score": np.array([0.5]),
           "boxes_lidar": np.array([[10.0, 0.0, 1.0, 4.0, 2.0, 1.5, 0.0, 3.0, 0.0]])}
    sub = nu.det_annos_to_submission([det], {"s0": info})
    box = sub["results"]["s0"][0]
    np.testing.assert_allclose(box["translation"], [100.0, 210.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(box["rotation"], [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)], atol=1e-9)
    np.testing.assert_allclose(box["velocity"], [0.0, 3.0], atol=1e-9)
    assert box["size"] == [2.0, 4.0, 1.5] and box["attribute_name"] == "vehicle.moving"
    with pytest.raises(KeyError, match="sample token s1"):
        nu.det_annos_to_submission([dict(det, frame_id="s1")], {"s0": info})


def _box(x, y, yaw=0.0, vx=0.0):
    return [x, y, 0.0, 4.0, 2.0, 1.5, yaw, vx, 0.0]


def test_metric_perfect_and_offset_detection():
    gt = [{"name": np.array(["car"]), "gt_boxes_lidar": np.array([_box(10, 0, vx=1.0)])}]
    perfect = [{"name": np.array(["car"]), "boxes_lidar": np.array([_box(10, 0, vx=1.0)]), "score": [0.9]}]
    m = nu.nuscenes_detection_metrics(gt, perfect, ["car"])
    assert m["mean_ap"] == pytest.approx(1.0)
    assert m["tp_errors"]["trans_err"] == pytest.approx(0.0) and m["tp_errors"]["vel_err"] == pytest.approx(0.0)
    assert m["nd_score"] == pytest.approx(0.9)  # attributes not evaluated: mAAE = 1
    offset = [{"name": np.array(["car"]), "boxes_lidar": np.array([_box(11.5, 0, vx=3.0)]), "score": [0.9]}]
    m = nu.nuscenes_detection_metrics(gt, offset, ["car", "bus"])
    assert m["label_aps"]["car"] == {0.5: 0.0, 1.0: 0.0, 2.0: pytest.approx(1.0), 4.0: pytest.approx(1.0)}
    assert m["mean_ap"] == pytest.approx(0.25)  # bus has no ground truth: AP 0 in the mean
    assert m["label_tp_errors"]["car"]["trans_err"] == pytest.approx(1.5)
    assert m["label_tp_errors"]["car"]["vel_err"] == pytest.approx(2.0)


def test_metric_false_positive_ranked_first():
    gt = [{"name": np.array(["car"]), "gt_boxes_lidar": np.array([_box(10, 0)])}]
    det = [{"name": np.array(["car", "car"]), "boxes_lidar": np.array([_box(-20, 0), _box(10.3, 0.4)]),
            "score": [0.9, 0.8]}]
    m = nu.nuscenes_detection_metrics(gt, det, ["car"])
    # precision(r) = r / 2 on recall points 0.11..1: mean(clip(r/2 - 0.1, 0)) / 0.9 = (16.2 / 90) / 0.9 = 0.2
    assert m["label_aps"]["car"][2.0] == pytest.approx(0.2)
    assert m["label_tp_errors"]["car"]["trans_err"] == pytest.approx(0.5)


def test_metric_ranges_and_orientation_periods():
    gt = [{"name": np.array(["pedestrian", "barrier", "car", "traffic_cone"]),
           "gt_boxes_lidar": np.array([_box(45, 0), _box(5, 5), _box(0, 20), _box(3, 3)]),
           "num_lidar_pts": np.array([10, 10, 10, 0])}]
    det = [{"name": np.array(["barrier", "car", "car"]),
            "boxes_lidar": np.array([_box(5, 5, np.pi), _box(0, 20, np.pi), _box(60, 0)]), "score": [0.9, 0.9, 0.99]}]
    m = nu.nuscenes_detection_metrics(gt, det, ["pedestrian", "barrier", "car", "traffic_cone"])
    assert m["label_aps"]["barrier"][0.5] == pytest.approx(1.0)
    assert m["label_aps"]["car"][0.5] == pytest.approx(1.0)  # the car at 60 m is beyond the 50 m car range
    assert m["label_aps"]["pedestrian"][4.0] == 0.0  # the only pedestrian is beyond 40 m: no ground truth
    assert m["label_tp_errors"]["barrier"]["orient_err"] == pytest.approx(0.0)  # barrier heading period is pi
    assert m["label_tp_errors"]["car"]["orient_err"] == pytest.approx(np.pi)
    assert np.isnan(m["label_tp_errors"]["traffic_cone"]["orient_err"])


def test_dataset_evaluation_from_predictions(tmp_path):
    root = tmp_path / "v1.0-mini"
    (root / "samples").mkdir(parents=True)
    np.zeros((1, 5), dtype=np.float32).tofile(root / "samples" / "k.pcd.bin")
    info = {"lidar_path": "samples/k.pcd.bin", "token": "tok", "sweeps": [],
            "gt_boxes": np.array([_box(10, 0, vx=2.0), _box(-10, 5)], dtype=np.float32),
            "gt_names": np.array(["car", "pedestrian"]), "num_lidar_pts": np.array([5, 5]),
            "ref_from_car": np.eye(4), "car_from_global": np.eye(4)}
    _write_infos(tmp_path, [info])
    ds = NuScenesDataset(_cfg(), CLASSES, training=False, root_path=tmp_path)
    preds = [{"pred_boxes": torch.tensor([_box(10, 0, vx=2.0), _box(-10, 5)]), "pred_scores": torch.tensor([0.8, 0.7]),
              "pred_labels": torch.tensor([1, 9])}]
    annos = ds.generate_prediction_dicts({"frame_id": np.array(["tok"])}, preds, CLASSES)
    assert annos[0]["boxes_lidar"].shape == (2, 9) and list(annos[0]["name"]) == ["car", "pedestrian"]
    result_str, result = ds.evaluation(annos, ["car", "pedestrian"])
    assert result["mAP_present"] == pytest.approx(1.0) and result["car_AP"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx(0.2)  # 2 of the 10 classes have ground truth
    assert "project backend" in result_str
    with pytest.raises(KeyError, match="nope"):
        ds.evaluation([dict(annos[0], frame_id="nope")], ["car"])
    with pytest.raises(ValueError, match="Car"):
        ds.evaluation(annos, ["Car"])


def test_metric_skips_unknown_ground_truth_velocity():
    gt = [{"name": np.array(["car", "car"]),
           "gt_boxes_lidar": np.array([_box(10, 0, vx=np.nan), _box(20, 0, vx=1.0)])}]
    det = [{"name": np.array(["car", "car"]), "boxes_lidar": np.array([_box(10, 0, vx=5.0), _box(20, 0, vx=3.0)]),
            "score": [0.8, 0.9]}]
    m = nu.nuscenes_detection_metrics(gt, det, ["car"])
    # the running mean skips the unknown velocity: 2 at both matches (a NaN ranked first would read as 0
    # until the first known error, as in the devkit)
    assert m["label_tp_errors"]["car"]["vel_err"] == pytest.approx(2.0)
    gt[0]["gt_boxes_lidar"][1, 7] = np.nan
    assert nu.nuscenes_detection_metrics(gt, det, ["car"])["label_tp_errors"]["car"]["vel_err"] == 1.0
