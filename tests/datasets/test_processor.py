import numpy as np
import pytest
from easydict import EasyDict

from pcdet.datasets.dataset import DatasetTemplate
from pcdet.datasets.processor.data_processor import DataProcessor, voxelize_points
from pcdet.datasets.processor.point_feature_encoder import PointFeatureEncoder

PC_RANGE = [0.0, -2.0, -1.0, 4.0, 2.0, 1.0]
VOXEL = [1.0, 1.0, 2.0]  # grid 4 x 4 x 1


def _brute_force_voxels(points, pc_range, voxel_size):
    """voxel key (z, y, x) -> list of point indices in input order, plus keys in first-appearance order."""
    groups, order = {}, []
    for i, p in enumerate(points):
        cell = [int(np.floor((p[a] - pc_range[a]) / voxel_size[a])) for a in range(3)]
        grid = [int(round((pc_range[a + 3] - pc_range[a]) / voxel_size[a])) for a in range(3)]
        if not all(0 <= cell[a] < grid[a] for a in range(3)):
            continue
        key = (cell[2], cell[1], cell[0])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(i)
    return groups, order


def _random_points(n, seed):
    rng = np.random.default_rng(seed)
    pts = rng.uniform([-0.5, -2.5, -1.2, 0], [4.5, 2.5, 1.2, 1], size=(n, 4)).astype(np.float32)
    return pts


@pytest.mark.parametrize("max_points, max_voxels", [(3, 100), (2, 5), (50, 1)])
def test_voxelize_points_matches_brute_force(max_points, max_voxels):
    points = _random_points(80, seed=max_points)
    voxels, coords, num, num_raw = voxelize_points(points, PC_RANGE, VOXEL, max_points, max_voxels)
    groups, order = _brute_force_voxels(points, PC_RANGE, VOXEL)
    kept = order[:max_voxels]
    assert len(order) > 5
    assert voxels.shape == (len(kept), max_points, 4) and coords.shape == (len(kept), 3)
    assert coords.dtype == np.int32 and num.dtype == np.int32 and num_raw.dtype == np.int32
    assert [tuple(c) for c in coords] == kept
    for v, key in enumerate(kept):
        idx = groups[key]
        assert num_raw[v] == len(idx)
        assert num[v] == min(len(idx), max_points)
        np.testing.assert_array_equal(voxels[v, :num[v]], points[idx[:max_points]])
        assert not voxels[v, num[v]:].any()


def test_voxelize_points_empty_and_all_outside():
    for pts in (np.zeros((0, 4), np.float32), np.full((3, 4), 100.0, np.float32)):
        voxels, coords, num, num_raw = voxelize_points(pts, PC_RANGE, VOXEL, 5, 10)
        assert voxels.shape == (0, 5, 4) and coords.shape == (0, 3) and num.shape == (0,) and num_raw.shape == (0,)


def _processor_cfgs():
    return [
        EasyDict(NAME="mask_points_and_boxes_outside_range", REMOVE_OUTSIDE_BOXES=True),
        EasyDict(NAME="shuffle_points", SHUFFLE_ENABLED={"train": True, "test": False}),
        EasyDict(NAME="transform_points_to_voxels", VOXEL_SIZE=VOXEL, MAX_POINTS_PER_VOXEL=4,
                 MAX_NUMBER_OF_VOXELS={"train": 3, "test": 100}),
    ]


def test_data_processor_grid_masking_and_modes():
    points = _random_points(60, seed=3)
    boxes = np.array([[1, 0, 0, 1, 1, 1, 0, 1], [10, 0, 0, 1, 1, 1, 0, 2]], dtype=np.float32)
    proc = DataProcessor(_processor_cfgs(), PC_RANGE, training=False, num_point_features=4)
    assert proc.grid_size.tolist() == [4, 4, 1] and proc.grid_size.dtype == np.int64
    assert proc.voxel_size == VOXEL
    out = proc.forward({"points": points.copy(), "gt_boxes": boxes.copy(), "gt_names": np.array(["Car", "Ped"])})
    inside_xy = ((points[:, 0] >= 0) & (points[:, 0] <= 4) & (points[:, 1] >= -2) & (points[:, 1] <= 2))
    np.testing.assert_array_equal(out["points"], points[inside_xy])  # test mode: no shuffling
    assert out["gt_boxes"].shape == (2, 8)  # boxes are only filtered in training
    assert out["voxels"].shape[0] == len(_brute_force_voxels(points, PC_RANGE, VOXEL)[0])

    proc_train = DataProcessor(_processor_cfgs(), PC_RANGE, training=True, num_point_features=4)
    np.random.seed(0)
    out = proc_train.forward({"points": points.copy(), "gt_boxes": boxes.copy(),
                              "gt_names": np.array(["Car", "Ped"])})
    assert out["gt_boxes"][:, 7].tolist() == [1] and out["gt_names"].tolist() == ["Car"]
    assert not np.array_equal(out["points"], points[inside_xy])
    assert sorted(map(tuple, out["points"])) == sorted(map(tuple, points[inside_xy]))
    assert out["voxels"].shape[0] == 3  # MAX_NUMBER_OF_VOXELS.train


def test_data_processor_unknown_step():
    with pytest.raises(ValueError, match="unknown NAME 'voxelize'"):
        DataProcessor([EasyDict(NAME="voxelize")], PC_RANGE, training=False, num_point_features=4)


def test_point_feature_encoder_selects_columns():
    cfg = EasyDict(encoding_type="absolute_coordinates_encoding", used_feature_list=["x", "y", "z", "elongation"],
                   src_feature_list=["x", "y", "z", "intensity", "elongation"])
    enc = PointFeatureEncoder(cfg)
    assert enc.num_point_features == 4
    pts = np.arange(10, dtype=np.float32).reshape(2, 5)
    out = enc.forward({"points": pts, "frame_id": "7"})
    np.testing.assert_array_equal(out["points"], [[0, 1, 2, 4], [5, 6, 7, 9]])
    assert out["use_lead_xyz"] is True
    with pytest.raises(ValueError, match=r"frame 7: points have shape \(2, 4\)"):
        enc.forward({"points": np.zeros((2, 4), np.float32), "frame_id": "7"})
    with pytest.raises(ValueError, match="absent from src_feature_list"):
        PointFeatureEncoder(EasyDict(used_feature_list=["x", "y", "z", "rgb"], src_feature_list=["x", "y", "z"]))


def _sample(n_pts, n_boxes, n_vox, frame):
    return {
        "frame_id": frame,
        "points": np.full((n_pts, 4), float(n_pts), np.float32),
        "gt_boxes": np.arange(n_boxes * 8, dtype=np.float32).reshape(n_boxes, 8) + 1,
        "voxels": np.ones((n_vox, 2, 4), np.float32),
        "voxel_coords": np.full((n_vox, 3), 3, np.int32),
        "voxel_num_points": np.full(n_vox, 2, np.int32),
        "use_lead_xyz": True,
        "image_shape": np.array([375, 1242], np.int32),
        "calib": f"calib-{frame}",
        "kd_teacher_inputs": {"points": np.zeros((n_pts, 4), np.float32),
                              "voxel_coords": np.zeros((n_vox + 1, 3), np.int32),
                              "voxels": np.zeros((n_vox + 1, 3, 4), np.float32)},
    }


def test_collate_batch_padding_and_nested_dicts():
    batch = DatasetTemplate.collate_batch([_sample(3, 2, 2, "a"), _sample(0, 0, 0, "b"), _sample(1, 3, 1, "c")])
    assert batch["batch_size"] == 3
    assert batch["frame_id"].tolist() == ["a", "b", "c"]
    assert batch["calib"] == ["calib-a", "calib-b", "calib-c"]
    assert batch["points"].shape == (4, 5)
    np.testing.assert_array_equal(batch["points"][:, 0], [0, 0, 0, 2])
    np.testing.assert_array_equal(batch["points"][:, 1], [3, 3, 3, 1])
    assert batch["gt_boxes"].shape == (3, 3, 8)
    np.testing.assert_array_equal(batch["gt_boxes"][0, :2], np.arange(16).reshape(2, 8) + 1)
    assert not batch["gt_boxes"][0, 2].any() and not batch["gt_boxes"][1].any()
    np.testing.assert_array_equal(batch["gt_boxes"][2], np.arange(24).reshape(3, 8) + 1)
    assert batch["voxels"].shape == (3, 2, 4) and batch["voxel_num_points"].tolist() == [2, 2, 2]
    np.testing.assert_array_equal(batch["voxel_coords"], [[0, 3, 3, 3], [0, 3, 3, 3], [2, 3, 3, 3]])
    assert batch["image_shape"].shape == (3, 2) and batch["use_lead_xyz"].tolist() == [True] * 3
    nested = batch["kd_teacher_inputs"]
    assert "batch_size" not in nested
    np.testing.assert_array_equal(nested["voxel_coords"][:, 0], [0, 0, 0, 1, 2, 2])
    assert nested["voxels"].shape == (6, 3, 4) and nested["points"].shape == (4, 5)


def test_collate_batch_all_empty_and_mismatched_keys():
    batch = DatasetTemplate.collate_batch([_sample(0, 0, 0, "x")])
    assert batch["gt_boxes"].shape == (1, 1, 8) and not batch["gt_boxes"].any()
    assert batch["points"].shape == (0, 5) and batch["voxel_coords"].shape == (0, 4)
    with pytest.raises(KeyError, match="'extra' is present in 1 of 2"):
        DatasetTemplate.collate_batch([dict(_sample(1, 1, 1, "a"), extra=1), _sample(1, 1, 1, "b")])
