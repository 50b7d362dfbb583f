"""Waymo dataset over OpenPCDet's processed layout: the two real (truncated) frames, NLZ filtering, sampling,
evaluation round trip, GT database, and the optional converter's import error."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.datasets.waymo import waymo_utils
from pcdet.datasets.waymo.waymo_dataset import WaymoDataset, create_waymo_infos_from_processed

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
REAL_WAYMO = SHARED / "data" / "real" / "mmdet3d_tests_waymo" / "kitti_format"
TAG = "waymo_processed_data_v0_5_0"
CLASSES = ["Vehicle", "Pedestrian", "Cyclist"]


def _cfg(**extra):
    cfg = EasyDict({
        "DATASET": "WaymoDataset", "DATA_PATH": "unused", "PROCESSED_DATA_TAG": TAG,
        "DATA_SPLIT": {"train": "train", "test": "val"}, "SAMPLED_INTERVAL": {"train": 1, "test": 1},
        "FILTER_EMPTY_BOXES_FOR_TRAIN": True, "DISABLE_NLZ_FLAG_ON_POINTS": False,
        "POINT_CLOUD_RANGE": [-75.2, -75.2, -2, 75.2, 75.2, 4],
        "POINT_FEATURE_ENCODING": {"encoding_type": "absolute_coordinates_encoding",
                                   "used_feature_list": ["x", "y", "z", "intensity", "elongation"],
                                   "src_feature_list": ["x", "y", "z", "intensity", "elongation"]},
        "DATA_PROCESSOR": [],
    })
    cfg.update(extra)
    return cfg


def _write_sequence(root, seq, frames, split="val"):
    """frames: list of (points (N, 6), annos dict or None); appends ``seq`` to ImageSets/<split>.txt."""
    seq_dir = root / TAG / seq
    seq_dir.mkdir(parents=True, exist_ok=True)
    infos = []
    for i, (points, annos) in enumerate(frames):
        np.save(seq_dir / f"{i:04d}.npy", points.astype(np.float32))
        info = {"point_cloud": {"num_features": 5, "lidar_sequence": seq, "sample_idx": i},
                "frame_id": f"{seq}_{i:03d}", "pose": np.eye(4, dtype=np.float32)}
        if annos is not None:
            info["annos"] = annos
        infos.append(info)
    with open(seq_dir / f"{seq}.pkl", "wb") as f:
        pickle.dump(infos, f)
    (root / "ImageSets").mkdir(exist_ok=True)
    with open(root / "ImageSets" / f"{split}.txt", "a") as f:
        f.write(f"{seq}.tfrecord\n")


def _annos(names, boxes, num_points):
    return {"name": np.array(names), "gt_boxes_lidar": np.array(boxes, dtype=np.float32).reshape(-1, 7),
            "num_points_in_gt": np.array(num_points), "difficulty": np.zeros(len(names), dtype=np.int32)}


@pytest.fixture(scope="module")
def real_frames():
    path = REAL_WAYMO / "annotations_lidar.json"
    if not path.is_file():
        pytest.skip(f"real Waymo frames not found at {path} (../shared fixtures absent)")
    with open(path) as f:
        return json.load(f)["frames"]


def test_real_frames_load(real_frames, tmp_path):
    raws = []
    for frame in real_frames:
        raw = np.fromfile(REAL_WAYMO / frame["lidar_path"], dtype=np.float32).reshape(-1, 6)
        raws.append(raw)
        nlz = -np.ones((raw.shape[0], 1), dtype=np.float32)
        nlz[:10] = 1.0  # the first ten points are marked as inside a no-label zone
        names = ["Vehicle" if n == "Car" else n for n in frame["gt_names"]]
        annos = _annos(names, frame["gt_boxes"], frame["num_lidar_pts"])
        _write_sequence(tmp_path, frame["context_name"], [(np.concatenate([raw[:, :5], nlz], axis=1), annos)])
    ds = WaymoDataset(_cfg(), CLASSES, training=False, root_path=tmp_path)
    assert len(ds) == 2
    for i, frame in enumerate(real_frames):
        sample = ds[i]
        assert sample["frame_id"] == f"{frame['context_name']}_000"
        pts = sample["points"]
        assert pts.shape == (790, 5)
        np.testing.assert_allclose(pts[:, :3], raws[i][10:, :3])
        np.testing.assert_allclose(pts[:, 3], np.tanh(raws[i][10:, 3]), rtol=1e-6)
        np.testing.assert_allclose(pts[:, 4], raws[i][10:, 4])
        np.testing.assert_allclose(sample["gt_boxes"], [frame["gt_boxes"][0] + [1.0]], rtol=1e-6)
    ds_all = WaymoDataset(_cfg(DISABLE_NLZ_FLAG_ON_POINTS=True), CLASSES, training=False, root_path=tmp_path)
    assert ds_all[0]["points"].shape == (800, 5)


def _tiny_root(tmp_path, num_frames=4):
    frames = []
    for i in range(num_frames):
        pts = np.array([[10.0 + 0.1 * j, 0.0, 0.5, 0.5, 0.1, -1.0] for j in range(8)] +
                       [[30.0, 5.0, 0.0, 0.2, 0.0, -1.0]], dtype=np.float32)
        annos = _annos(["Vehicle", "Pedestrian", "unknown"],
                       [[10.35, 0, 0.5, 4, 2, 1.5, 0.1 * i], [-20, 0, 0, 1, 1, 2, 0], [30, 5, 0, 1, 1, 1, 0]],
                       [8, 0, 1])
        frames.append((pts, annos))
    _write_sequence(tmp_path, "segment-a", frames, split="train")
    _write_sequence(tmp_path, "segment-a", frames, split="val")
    return tmp_path


def test_sampled_interval_and_filters(tmp_path):
    root = _tiny_root(tmp_path)
    ds = WaymoDataset(_cfg(SAMPLED_INTERVAL={"train": 2, "test": 1}), CLASSES, training=True, root_path=root)
    assert [info["frame_id"] for info in ds.infos] == ["segment-a_000", "segment-a_002"]
    # training drops the empty Pedestrian box; 'unknown' is dropped always
    assert ds[0]["gt_boxes"].shape == (1, 8)
    test_ds = WaymoDataset(_cfg(), CLASSES, training=False, root_path=root)
    assert len(test_ds) == 4 and test_ds[0]["gt_boxes"].shape == (2, 8)


def test_missing_sequences_are_errors_naming_the_folder(tmp_path):
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("segment-missing\n")
    with pytest.raises(FileNotFoundError, match=TAG):
        WaymoDataset(_cfg(), CLASSES, training=False, root_path=tmp_path)


def test_evaluation_round_trip(tmp_path):
    root = _tiny_root(tmp_path)
    ds = WaymoDataset(_cfg(), CLASSES, training=False, root_path=root)
    batch = {"frame_id": np.array([info["frame_id"] for info in ds.infos])}
    preds = [{"pred_boxes": torch.from_numpy(info["annos"]["gt_boxes_lidar"][:1].copy()),
              "pred_scores": torch.tensor([0.9]), "pred_labels": torch.tensor([1])} for info in ds.infos]
    annos = ds.generate_prediction_dicts(batch, preds, CLASSES)
    _, result = ds.evaluation(annos, CLASSES, eval_metric="waymo")
    assert result["Vehicle/LEVEL_1/AP"] == pytest.approx(1.0)
    assert result["Vehicle/LEVEL_1/APH"] == pytest.approx(1.0)
    assert result["Vehicle/LEVEL_1/num_gt"] == 4 and result["Pedestrian/LEVEL_2/num_gt"] == 0
    with pytest.raises(ValueError, match="EVAL_METRIC 'kitti'"):
        ds.evaluation(annos, CLASSES, eval_metric="kitti")


def test_infos_and_gt_database_from_processed(tmp_path):
    root = _tiny_root(tmp_path)
    counts = create_waymo_infos_from_processed(_cfg(), root, class_names=CLASSES, sampled_interval=2)
    assert counts == {"train": 4, "val": 4}
    with open(root / f"{TAG}_waymo_dbinfos_train_sampled_2.pkl", "rb") as f:
        db = pickle.load(f)
    assert sorted(db) == ["Pedestrian", "Vehicle"] and len(db["Vehicle"]) == 2
    entry = db["Vehicle"][1]
    assert entry["num_points_in_gt"] == 8 and entry["sample_idx"] == 2
    pts = np.fromfile(root / entry["path"], dtype=np.float32).reshape(-1, 5)
    np.testing.assert_allclose(pts[:, 0], np.arange(8) * 0.1 - 0.35, atol=1e-5)
    np.testing.assert_allclose(pts[:, 3], np.tanh(0.5), rtol=1e-6)


def test_converter_needs_the_optional_package(tmp_path):
    if waymo_utils.package_available():
        pytest.skip("waymo-open-dataset is installed; the missing-package error cannot be observed")
    with pytest.raises(ImportError, match="waymo-open-dataset"):
        waymo_utils.convert_sequences(tmp_path, tmp_path / "out", ["segment-x"])


def test_frame_annos_from_laser_labels():
    from types import SimpleNamespace as NS

    def label(type_id, x, heading, points, difficulty):
        return NS(box=NS(center_x=x, center_y=2.0, center_z=1.0, length=4.0, width=2.0, height=1.5, heading=heading),
                  type=type_id, detection_difficulty_level=difficulty, tracking_difficulty_level=0,
                  num_lidar_points_in_box=points, metadata=NS(speed_x=1.0, speed_y=-1.0), id=f"obj{type_id}")

    frame = NS(laser_labels=[label(1, 10.0, 0.5, 30, 0), label(4, 20.0, -1.0, 3, 2), label(9, 5.0, 0.0, 1, 0)])
    annos = waymo_utils.frame_annos(frame)
    assert list(annos["name"]) == ["Vehicle", "Cyclist", "unknown"]
    np.testing.assert_allclose(annos["gt_boxes_lidar"][1], [20.0, 2.0, 1.0, 4.0, 2.0, 1.5, -1.0])
    np.testing.assert_array_equal(annos["num_points_in_gt"], [30, 3, 1])
    np.testing.assert_array_equal(annos["difficulty"], [0, 2, 0])
    assert annos["speed_global"].shape == (3, 2)
    empty = waymo_utils.frame_annos(NS(laser_labels=[]))
    assert empty["gt_boxes_lidar"].shape == (0, 7)
