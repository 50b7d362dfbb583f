"""Synthetic scenes exported in the nuScenes-like and Waymo-like layouts load through their dataset classes, carry
the generator's points and boxes, and evaluate to perfect scores with the ground truth as predictions."""
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.nuscenes.nuscenes_dataset import NuScenesDataset
from pcdet.datasets.synthetic import export_layouts as ex
from pcdet.datasets.synthetic.generate import generate_frame
from pcdet.datasets.synthetic.scene import get_preset
from pcdet.datasets.waymo.waymo_dataset import WaymoDataset
from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu

CFG_DIR = Path(__file__).resolve().parents[2] / "tools" / "cfgs" / "dataset_configs"
NUM_FRAMES, SEED, VAL_FRACTION = 3, 7, 1 / 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    counts = ex.export_layouts(["nuscenes", "waymo"], out, NUM_FRAMES, SEED, VAL_FRACTION)
    return out, counts


def _cfg(name):
    cfg = cfg_from_yaml_file(CFG_DIR / name)
    cfg.DATA_PROCESSOR = []  # raw points and boxes: no range crop, no voxels
    return cfg


def test_split_matches_the_kitti_generator(exported):
    _, counts = exported
    train, val = ex.split_frames(NUM_FRAMES, SEED, VAL_FRACTION)
    assert counts == {"nuscenes": {"train": 2, "val": 1}, "waymo": {"train": 2, "val": 1}}
    assert sorted(train + val) == [0, 1, 2] and len(val) == 1
    with pytest.raises(ValueError, match="unknown layouts"):
        ex.export_layouts(["lyft"], "unused", 1, 0)


def test_nuscenes_like_layout(exported):
    out, _ = exported
    _, val = ex.split_frames(NUM_FRAMES, SEED, VAL_FRACTION)
    classes = ["car", "truck", "pedestrian", "bicycle"]
    ds = NuScenesDataset(_cfg("synthetic_nuscenes_dataset.yaml"), classes, training=False, root_path=out / "nuscenes")
    assert len(ds) == 1 and ds.infos[0]["token"] == f"synthetic{SEED}_{val[0]:06d}"
    sample = ds[0]
    frame = generate_frame(SEED, "training", val[0], get_preset("default"))
    labelled = [o for o in frame["scene"].objects if o.labelled]
    pts = sample["points"]
    assert pts.shape == (frame["points"].shape[0], 5) and np.all(pts[:, 4] == 0)
    np.testing.assert_allclose(pts[:, :3], frame["points"][:, :3])
    np.testing.assert_allclose(pts[:, 3], np.round(frame["points"][:, 3] * 255))
    info = ds.infos[0]
    assert len(info["gt_names"]) == len(labelled)
    counts = points_in_boxes_cpu(pts[:, :3], info["gt_boxes"][:, :7]).sum(axis=1)
    np.testing.assert_array_equal(counts, info["num_lidar_pts"])
    # boxes with fewer than FILTER_MIN_POINTS_IN_GT (1) points are not served
    assert sample["gt_boxes"].shape == (int((info["num_lidar_pts"] >= 1).sum()), 10)

    # the metric drops ground truth without points, so predicting those boxes would add false positives
    seen = info["num_lidar_pts"] > 0
    preds = [{"pred_boxes": torch.from_numpy(info["gt_boxes"][seen]), "pred_scores": torch.ones(int(seen.sum())),
              "pred_labels": torch.tensor([classes.index(n) + 1 for n in info["gt_names"][seen]])}]
    annos = ds.generate_prediction_dicts({"frame_id": np.array([info["token"]])}, preds, classes)
    ds.dataset_cfg.EVAL_BACKEND = "project"
    _, result = ds.evaluation(annos, classes)
    present = sorted(set(info["gt_names"][seen]))
    assert result["mAP_present"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx(len(present) / 10)  # the devkit's mean runs over the ten classes
    db = (out / "nuscenes" / "v1.0-mini" / "nuscenes_dbinfos_10sweeps_withvelo.pkl")
    assert db.is_file()


def test_waymo_like_layout(exported):
    out, _ = exported
    _, val = ex.split_frames(NUM_FRAMES, SEED, VAL_FRACTION)
    classes = ["Vehicle", "Pedestrian", "Cyclist"]
    ds = WaymoDataset(_cfg("synthetic_waymo_dataset.yaml"), classes, training=False, root_path=out / "waymo")
    assert len(ds) == 1 and ds.infos[0]["metadata"]["synthetic_frame"] == val[0]
    frame = generate_frame(SEED, "training", val[0], get_preset("default"))
    pts = ds[0]["points"]
    np.testing.assert_allclose(pts[:, :3], frame["points"][:, :3])
    np.testing.assert_allclose(pts[:, 3], np.tanh(frame["points"][:, 3]), rtol=1e-6)
    annos = ds.infos[0]["annos"]
    counts = points_in_boxes_cpu(pts[:, :3], annos["gt_boxes_lidar"]).sum(axis=1)
    np.testing.assert_array_equal(counts, annos["num_points_in_gt"])
    seen = annos["num_points_in_gt"] > 0  # boxes without points are ignored: predicting them adds FPs
    preds = [{"pred_boxes": torch.from_numpy(annos["gt_boxes_lidar"][seen]), "pred_scores": torch.ones(int(seen.sum())),
              "pred_labels": torch.tensor([classes.index(n) + 1 for n in annos["name"][seen]])}]
    dets = ds.generate_prediction_dicts({"frame_id": np.array([ds.infos[0]["frame_id"]])}, preds, classes)
    _, result = ds.evaluation(dets, classes, eval_metric="waymo")
    assert result["Vehicle/LEVEL_2/num_gt"] > 0
    assert result["mAP_LEVEL_2"] == pytest.approx(1.0) and result["mAPH_LEVEL_2"] == pytest.approx(1.0)
    assert (out / "waymo" / "waymo_processed_data_v0_5_0_waymo_dbinfos_train_sampled_1.pkl").is_file()


def test_nuscenes_like_tables_evaluate_alike_in_the_devkit(exported, tmp_path):
    pytest.importorskip("nuscenes", reason="nuscenes-devkit not installed: the official evaluation is not run")
    out, _ = exported
    classes = ["car", "truck", "pedestrian", "bicycle"]
    ds = NuScenesDataset(_cfg("synthetic_nuscenes_dataset.yaml"), classes, training=False, root_path=out / "nuscenes")
    info = ds.infos[0]
    boxes = np.nan_to_num(info["gt_boxes"]).copy()
    boxes[:, 0] += np.linspace(0.0, 1.5, len(boxes))  # spread the centre errors over the distance thresholds
    boxes[:, 6] += 0.3
    boxes[:, 3] *= 1.1
    preds = [{"pred_boxes": torch.from_numpy(boxes), "pred_scores": torch.linspace(0.9, 0.2, len(boxes)),
              "pred_labels": torch.tensor([classes.index(n) + 1 for n in info["gt_names"]])}]
    annos = ds.generate_prediction_dicts({"frame_id": np.array([info["token"]])}, preds, classes)
    ds.dataset_cfg.EVAL_BACKEND = "devkit"
    devkit_str, devkit = ds.evaluation(annos, classes, output_path=tmp_path)
    ds.dataset_cfg.EVAL_BACKEND = "project"
    _, project = ds.evaluation(annos, classes)
    assert "devkit backend" in devkit_str and 0.0 < devkit["mAP"] < 1.0
    for key in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE") + tuple(f"{c}_AP" for c in classes):
        assert project[key] == pytest.approx(devkit[key], abs=1e-6), key


def _yaw_quat(yaw):
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def test_devkit_infos_recover_lidar_boxes_under_poses(exported, tmp_path):
    pytest.importorskip("nuscenes", reason="nuscenes-devkit not installed: info generation needs it")
    import json
    import pickle
    import shutil

    from pcdet.datasets.nuscenes import nuscenes_utils as nu
    from pcdet.datasets.nuscenes.nuscenes_dataset import create_nuscenes_infos

    out, _ = exported
    shutil.copytree(out / "nuscenes", tmp_path / "nus")
    root = tmp_path / "nus" / "v1.0-mini"
    tables = root / "v1.0-mini"
    # move the LiDAR off the ego origin and the ego off the global origin, then re-express the annotations
    # (written in the LiDAR frame by the exporter) in the global frame
    cs = json.loads((tables / "calibrated_sensor.json").read_text())
    cs[0].update(translation=[1.0, 0.5, 1.8], rotation=_yaw_quat(np.pi / 2))
    poses = json.loads((tables / "ego_pose.json").read_text())
    for pose in poses:
        pose.update(translation=[100.0, 200.0, 0.0], rotation=_yaw_quat(np.pi / 6))
    global_from_lidar = nu.transform_matrix([100.0, 200.0, 0.0], _yaw_quat(np.pi / 6)) @ \
        nu.transform_matrix([1.0, 0.5, 1.8], _yaw_quat(np.pi / 2))
    anns = json.loads((tables / "sample_annotation.json").read_text())
    for ann in anns:
        ann["translation"] = (global_from_lidar @ np.append(ann["translation"], 1.0))[:3].tolist()
        rot = global_from_lidar[:3, :3] @ nu.quaternion_to_matrix(ann["rotation"])
        ann["rotation"] = nu.matrix_to_quaternion(rot).tolist()
    for name, records in (("calibrated_sensor", cs), ("ego_pose", poses), ("sample_annotation", anns)):
        (tables / f"{name}.json").write_text(json.dumps(records))

    cfg = cfg_from_yaml_file(CFG_DIR / "synthetic_nuscenes_dataset.yaml")
    counts = create_nuscenes_infos("v1.0-mini", tmp_path / "nus", max_sweeps=10, dataset_cfg=cfg)
    assert counts == {"train": 2, "val": 1}
    with open(root / "nuscenes_infos_10sweeps_val.pkl", "rb") as f:
        new = pickle.load(f)[0]
    with open(out / "nuscenes" / "v1.0-mini" / "nuscenes_infos_10sweeps_val.pkl", "rb") as f:
        ref = pickle.load(f)[0]
    assert new["token"] == ref["token"] and new["lidar_path"] == ref["lidar_path"] and new["sweeps"] == []
    np.testing.assert_array_equal(new["gt_names"], ref["gt_names"])
    np.testing.assert_array_equal(new["num_lidar_pts"], ref["num_lidar_pts"])
    np.testing.assert_allclose(new["gt_boxes"][:, :6], ref["gt_boxes"][:, :6], atol=1e-4)
    dyaw = new["gt_boxes"][:, 6] - ref["gt_boxes"][:, 6]
    np.testing.assert_allclose(np.cos(dyaw), 1.0, atol=1e-6)
    assert np.isnan(new["gt_boxes"][:, 7:9]).all()  # one annotation per instance: unknown velocity
    # the submission maps LiDAR boxes back onto the global annotations
    det = {"frame_id": new["token"], "name": new["gt_names"], "score": np.ones(len(new["gt_names"])),
           "boxes_lidar": new["gt_boxes"][:, :7]}
    sub = nu.det_annos_to_submission([det], {new["token"]: new})["results"][new["token"]]
    by_token = {a["token"]: a for a in anns}
    for box, ann_token in zip(sub, new["gt_boxes_token"]):
        np.testing.assert_allclose(box["translation"], by_token[ann_token]["translation"], atol=1e-3)
        np.testing.assert_allclose(np.abs(np.dot(box["rotation"], by_token[ann_token]["rotation"])), 1.0, atol=1e-6)
    assert (root / "nuscenes_dbinfos_10sweeps_withvelo.pkl").is_file()
