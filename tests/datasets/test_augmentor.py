import pickle

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.datasets.augmentor import augmentor_utils
from pcdet.datasets.augmentor.data_augmentor import DataAugmentor
from pcdet.datasets.augmentor.database_sampler import DataBaseSampler
from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu


def _scene(seed=0):
    """Three rotated boxes with 30 points inside each, plus 40 background points outside all boxes."""
    rng = np.random.default_rng(seed)
    boxes = np.array([[10.0, 3.0, -1.0, 4.0, 1.8, 1.5, 0.4],
                      [20.0, -6.0, -0.5, 0.8, 0.6, 1.7, -1.2],
                      [30.0, 8.0, -0.8, 1.8, 0.6, 1.7, 2.9]], dtype=np.float32)
    pts = []
    for b in boxes:
        local = rng.uniform(-0.45, 0.45, size=(30, 3)) * b[3:6]
        c, s = np.cos(b[6]), np.sin(b[6])
        xy = np.stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c], axis=1)
        pts.append(np.concatenate([xy + b[0:2], local[:, 2:3] + b[2], rng.uniform(0, 1, (30, 1))], axis=1))
    background = np.stack([rng.uniform(0, 60, 40), rng.uniform(-20, 20, 40), rng.uniform(-3, 1, 40),
                           rng.uniform(0, 1, 40)], axis=1)
    background = background[points_in_boxes_cpu(background[:, :3].astype(np.float32), boxes).sum(0) == 0]
    points = np.concatenate(pts + [background], axis=0).astype(np.float32)
    return boxes, points


def _membership(boxes, points):
    return points_in_boxes_cpu(points[:, :3].astype(np.float32), boxes.astype(np.float32))


@pytest.mark.parametrize("name", ["flip_x", "flip_y", "rotation", "scaling"])
def test_scene_augmentations_keep_points_inside_their_boxes(name):
    boxes, points = _scene()
    before = _membership(boxes, points)
    assert before.sum(axis=1).tolist() == [30, 30, 30]
    if name == "flip_x":
        new_boxes, new_points, _ = augmentor_utils.random_flip_along_x(boxes, points, enable=True)
        np.testing.assert_allclose(new_boxes[0], [10, -3, -1, 4, 1.8, 1.5, -0.4], atol=1e-6)
    elif name == "flip_y":
        new_boxes, new_points, _ = augmentor_utils.random_flip_along_y(boxes, points, enable=True)
        np.testing.assert_allclose(new_boxes[0], [-10, 3, -1, 4, 1.8, 1.5, -(0.4 + np.pi)], atol=1e-6)
    elif name == "rotation":
        new_boxes, new_points, angle = augmentor_utils.global_rotation(boxes, points, [-0.78, 0.78],
                                                                       noise_rotation=np.pi / 2)
        np.testing.assert_allclose(new_boxes[0], [-3, 10, -1, 4, 1.8, 1.5, 0.4 + np.pi / 2], atol=1e-5)
    else:
        new_boxes, new_points, _ = augmentor_utils.global_scaling(boxes, points, [0.9, 1.1], noise_scale=1.1)
        np.testing.assert_allclose(new_boxes[0], [11, 3.3, -1.1, 4.4, 1.98, 1.65, 0.4], atol=1e-5)
    np.testing.assert_array_equal(_membership(new_boxes, new_points), before)
    np.testing.assert_array_equal(new_points[:, 3], points[:, 3])
    assert not np.array_equal(new_points[:, :3], points[:, :3])


def test_random_draws_come_from_numpy_global_rng():
    boxes, points = _scene()
    np.random.seed(5)
    a = augmentor_utils.global_rotation(boxes, points, [-0.5, 0.5])[2]
    np.random.seed(5)
    b = augmentor_utils.global_rotation(boxes, points, [-0.5, 0.5])[2]
    assert a == b and -0.5 <= a <= 0.5
    flips = set()
    for seed in range(20):
        np.random.seed(seed)
        flips.add(augmentor_utils.random_flip_along_x(boxes, points)[2])
    assert flips == {True, False}


def _aug_cfg(disabled=()):
    return EasyDict({
        "DISABLE_AUG_LIST": list(disabled),
        "AUG_CONFIG_LIST": [
            {"NAME": "random_world_flip", "ALONG_AXIS_LIST": ["x", "y"]},
            {"NAME": "random_world_rotation", "WORLD_ROT_ANGLE": [-0.78539816, 0.78539816]},
            {"NAME": "random_world_scaling", "WORLD_SCALE_RANGE": [0.95, 1.05]},
        ]})


def test_data_augmentor_queue_consistency_masking_and_heading_wrap(tmp_path):
    aug = DataAugmentor(tmp_path, _aug_cfg(), ["Car"])
    assert len(aug.data_augmentor_queue) == 3
    boxes, points = _scene()
    before = _membership(boxes, points)
    np.random.seed(1)
    out = aug.forward({"points": points.copy(), "gt_boxes": boxes.copy(),
                       "gt_names": np.array(["Car", "Pedestrian", "Car"]),
                       "gt_boxes_mask": np.array([True, False, True])})
    assert "gt_boxes_mask" not in out and out["gt_names"].tolist() == ["Car", "Car"]
    np.testing.assert_array_equal(_membership(out["gt_boxes"], out["points"]), before[[0, 2]])
    assert np.all(out["gt_boxes"][:, 6] >= -np.pi) and np.all(out["gt_boxes"][:, 6] < np.pi)

    assert len(DataAugmentor(tmp_path, _aug_cfg(disabled=["random_world_flip"]), ["Car"]).data_augmentor_queue) == 2
    with pytest.raises(ValueError, match="unknown NAME 'random_cutout'"):
        DataAugmentor(tmp_path, [EasyDict(NAME="random_cutout")], ["Car"])


def test_data_augmentor_empty_scene():
    aug = DataAugmentor(None, _aug_cfg(), ["Car"])
    out = aug.forward({"points": np.zeros((0, 4), np.float32), "gt_boxes": np.zeros((0, 7), np.float32),
                       "gt_names": np.zeros(0, dtype=str), "gt_boxes_mask": np.zeros(0, dtype=bool)})
    assert out["points"].shape == (0, 4) and out["gt_boxes"].shape == (0, 7) and out["gt_names"].shape == (0,)


# --------------------------------------------------------------------------- gt sampling
def _write_db(root, entries):
    """entries: list of (name, box (7,), num_points, difficulty). Points are written relative to the centre."""
    (root / "gt_database").mkdir(parents=True, exist_ok=True)
    db = {}
    for i, (name, box, num_pts, diff) in enumerate(entries):
        rel = np.zeros((num_pts, 4), np.float32)
        rel[:, 0] = np.linspace(-0.2, 0.2, num_pts)
        rel[:, 3] = i  # tag points with the entry index
        path = root / "gt_database" / f"{i:06d}_{name}_0.bin"
        rel.tofile(str(path))
        db.setdefault(name, []).append({"name": name, "path": f"gt_database/{path.name}", "image_idx": str(i),
                                        "gt_idx": 0, "box3d_lidar": np.array(box, np.float32),
                                        "num_points_in_gt": num_pts, "difficulty": diff})
    with open(root / "kitti_dbinfos_train.pkl", "wb") as f:
        pickle.dump(db, f)


def _sampler_cfg(groups, prepare=None, limit_whole_scene=False):
    return EasyDict({"NAME": "gt_sampling", "USE_ROAD_PLANE": False, "DB_INFO_PATH": ["kitti_dbinfos_train.pkl"],
                     "PREPARE": prepare or {}, "SAMPLE_GROUPS": groups, "NUM_POINT_FEATURES": 4,
                     "DATABASE_WITH_FAKELIDAR": False, "REMOVE_EXTRA_WIDTH": [0.0, 0.0, 0.0],
                     "LIMIT_WHOLE_SCENE": limit_whole_scene})


def _bev_overlap_axis_aligned(a, b):
    return (abs(a[0] - b[0]) < (a[3] + b[3]) / 2) and (abs(a[1] - b[1]) < (a[4] + b[4]) / 2)


def test_gt_sampling_rejects_collisions_and_replaces_points(tmp_path):
    existing = np.array([[10.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0]], np.float32)
    _write_db(tmp_path, [
        ("Car", [11.0, 0.5, -1.0, 4.0, 2.0, 1.5, 0.0], 5, 0),    # 0: overlaps the existing car
        ("Car", [20.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0], 6, 0),    # 1: overlaps entry 2
        ("Car", [21.0, 1.0, -1.0, 4.0, 2.0, 1.5, 0.0], 7, 0),    # 2: overlaps entry 1
        ("Car", [30.0, 5.0, -1.0, 4.0, 2.0, 1.5, 0.0], 8, 0),    # 3: free
        ("Car", [40.0, -5.0, -1.0, 4.0, 2.0, 1.5, 1.3], 9, 0),   # 4: free (rotated)
    ])
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(["Car:5"]), ["Car"])
    scene_points = np.array([[10.0, 0.0, -1.0, 0.5],    # inside the existing car: kept
                             [30.1, 5.1, -1.0, 0.5],    # inside sampled entry 3: removed
                             [50.0, 0.0, -1.0, 0.5]], np.float32)  # free: kept
    np.random.seed(0)
    out = sampler({"points": scene_points.copy(), "gt_boxes": existing.copy(), "gt_names": np.array(["Car"]),
                   "gt_boxes_mask": np.array([True])})
    boxes = out["gt_boxes"]
    assert out["gt_names"].tolist() == ["Car", "Car", "Car"]
    assert sorted(boxes[1:, 0].tolist()) == [30.0, 40.0]
    assert out["gt_boxes_mask"].tolist() == [True] * 3
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes[i, 6] == 0 and boxes[j, 6] == 0:
                assert not _bev_overlap_axis_aligned(boxes[i], boxes[j])
    pts = out["points"]
    assert pts.shape == (8 + 9 + 2, 4)
    assert sorted(pts[pts[:, 3] == 0.5][:, 0].tolist()) == [10.0, 50.0]
    entry3 = pts[pts[:, 3] == 3]
    assert entry3.shape[0] == 8
    np.testing.assert_allclose(entry3[:, 0], np.linspace(29.8, 30.2, 8), atol=1e-5)
    np.testing.assert_allclose(entry3[:, 1:3], np.tile([[5.0, -1.0]], (8, 1)))
    assert (_membership(boxes, pts).sum(axis=0) >= 1)[pts[:, 3] != 0.5].all()


def test_gt_sampling_no_overlap_among_many_random_boxes(tmp_path):
    from pcdet.ops.iou3d_nms.iou3d_nms_utils import boxes_bev_iou_cpu

    rng = np.random.default_rng(0)
    entries = [("Car", [rng.uniform(0, 20), rng.uniform(-10, 10), -1, 3.9, 1.6, 1.5, rng.uniform(-3, 3)], 3, 0)
               for _ in range(40)]
    _write_db(tmp_path, entries)
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(["Car:10"]), ["Car"])
    existing = np.array([[10.0, 0.0, -1.0, 3.9, 1.6, 1.5, 0.3]], np.float32)
    for seed in range(4):
        np.random.seed(seed)
        out = sampler({"points": np.zeros((0, 4), np.float32), "gt_boxes": existing.copy(),
                       "gt_names": np.array(["Car"]), "gt_boxes_mask": np.array([True])})
        iou = boxes_bev_iou_cpu(out["gt_boxes"], out["gt_boxes"])
        np.fill_diagonal(iou, 0)
        assert out["gt_boxes"].shape[0] > 1
        assert iou.max() == 0


def test_gt_sampling_prepare_filters_and_limit_whole_scene(tmp_path):
    _write_db(tmp_path, [
        ("Car", [0, 0, 0, 1, 1, 1, 0], 2, 0),       # too few points
        ("Car", [10, 0, 0, 1, 1, 1, 0], 10, -1),    # removed difficulty
        ("Car", [20, 0, 0, 1, 1, 1, 0], 10, 1),
        ("Car", [30, 0, 0, 1, 1, 1, 0], 10, 2),
        ("Pedestrian", [40, 0, 0, 1, 1, 1, 0], 1, 0),
    ])
    cfg = _sampler_cfg(["Car:3", "Pedestrian:2"], limit_whole_scene=True,
                       prepare={"filter_by_min_points": ["Car:5", "Pedestrian:1"], "filter_by_difficulty": [-1]})
    sampler = DataBaseSampler(tmp_path, cfg, ["Car", "Pedestrian"])
    assert [info["box3d_lidar"][0] for info in sampler.db_infos["Car"]] == [20, 30]
    assert len(sampler.db_infos["Pedestrian"]) == 1
    existing = np.array([[-20, 0, 0, 1, 1, 1, 0], [-30, 0, 0, 1, 1, 1, 0]], np.float32)
    np.random.seed(0)
    out = sampler({"points": np.zeros((0, 4), np.float32), "gt_boxes": existing,
                   "gt_names": np.array(["Car", "Car"]), "gt_boxes_mask": np.array([True, True])})
    # Car: 3 wanted - 2 in the scene = 1 sampled; Pedestrian: 2 wanted but only 1 in the database
    assert sorted(out["gt_names"].tolist()) == ["Car", "Car", "Car", "Pedestrian"]

    with pytest.raises(ValueError, match="'Car15' is not of the form"):
        DataBaseSampler(tmp_path, _sampler_cfg(["Car15"]), ["Car"])
    with pytest.raises(FileNotFoundError, match="create_kitti_infos"):
        DataBaseSampler(tmp_path / "nowhere", _sampler_cfg(["Car:1"]), ["Car"])


def test_points_in_any_box_matches_exact_test():
    from pcdet.datasets.augmentor.database_sampler import points_in_any_box

    boxes, points = _scene(seed=4)
    rng = np.random.default_rng(1)
    near = np.concatenate([boxes[:, None, 0:3] + rng.uniform(-2, 2, (3, 50, 3)),
                           rng.uniform(0, 1, (3, 50, 1))], axis=2).reshape(-1, 4).astype(np.float32)
    pts = np.concatenate([points, near])
    expected = _membership(boxes, pts).sum(axis=0) > 0
    got = points_in_any_box(pts, boxes)
    assert expected.sum() > 90 and (~expected).sum() > 40
    np.testing.assert_array_equal(got, expected)
    assert points_in_any_box(np.zeros((0, 4), np.float32), boxes).shape == (0,)
    assert not points_in_any_box(pts, np.zeros((0, 7), np.float32)).any()


def test_gt_sampling_fills_an_empty_scene(tmp_path):
    _write_db(tmp_path, [("Car", [10, 0, -1, 4, 2, 1.5, 0], 4, 0), ("Car", [20, 0, -1, 4, 2, 1.5, 0], 5, 0)])
    sampler = DataBaseSampler(tmp_path, _sampler_cfg(["Car:2"]), ["Car"])
    np.random.seed(0)
    out = sampler({"points": np.zeros((0, 4), np.float32), "gt_boxes": np.zeros((0, 7), np.float32),
                   "gt_names": np.zeros(0, dtype=str), "gt_boxes_mask": np.zeros(0, dtype=bool)})
    assert out["gt_boxes"].shape == (2, 7) and sorted(out["gt_boxes"][:, 0].tolist()) == [10, 20]
    assert out["points"].shape == (9, 4) and out["gt_names"].tolist() == ["Car", "Car"]
