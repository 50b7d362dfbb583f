"""Three real KITTI training frames (../shared/data/real/kitti_object_vis): calibration, boxes, infos, loader."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets import KittiDataset
from pcdet.datasets.dataset import REPO_ROOT
from pcdet.datasets.kitti.kitti_dataset import create_kitti_infos
from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu
from pcdet.utils import box_utils
from pcdet.utils.calibration_kitti import Calibration
from pcdet.utils.object3d_kitti import get_objects_from_label

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real" / "kitti_object_vis" / "training"
CLASSES = ["Car", "Pedestrian", "Cyclist"]
# Points inside each labelled box (DontCare excluded), counted on the full scans (mmdet3d agrees on 377).
EXPECTED_COUNTS = {
    "000000": [("Pedestrian", 377)],
    "000001": [("Truck", 71), ("Car", 9), ("Cyclist", 18)],
    "000002": [("Misc", 1349), ("Car", 67)],
}

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real KITTI fixture frames not found at {REAL}")


def _load(fid):
    calib = Calibration(REAL / "calib" / f"{fid}.txt")
    objs = [o for o in get_objects_from_label(REAL / "label_2" / f"{fid}.txt") if o.cls_type != "DontCare"]
    points = np.fromfile(str(REAL / "velodyne" / f"{fid}.bin"), dtype=np.float32).reshape(-1, 4)
    return calib, objs, points


@pytest.mark.parametrize("fid", sorted(EXPECTED_COUNTS))
def test_points_in_labelled_boxes_after_calib_conversion(fid):
    calib, objs, points = _load(fid)
    boxes_cam = np.array([[*o.loc, o.l, o.h, o.w, o.ry] for o in objs], dtype=np.float32)
    boxes = box_utils.boxes3d_kitti_camera_to_lidar(boxes_cam, calib)
    counts = points_in_boxes_cpu(points[:, 0:3], boxes).sum(axis=1)
    assert [(o.cls_type, int(c)) for o, c in zip(objs, counts)] == EXPECTED_COUNTS[fid]


def test_calibration_round_trip_on_real_calib():
    calib, objs, points = _load("000001")
    pts = points[:1000, 0:3]
    np.testing.assert_allclose(calib.rect_to_lidar(calib.lidar_to_rect(pts)), pts, atol=1e-3)
    # the labelled bottom centre projects inside the labelled 2D box
    for o in objs:
        uv, depth = calib.rect_to_img(o.loc[None, :] - np.array([[0, o.h / 2, 0]], np.float32))
        assert o.box2d[0] <= uv[0, 0] <= o.box2d[2] and o.box2d[1] <= uv[0, 1] <= o.box2d[3], o.cls_type
        assert depth[0] > 0


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_kitti")
    for sub in ("velodyne", "label_2", "calib", "image_2"):
        (root / "training" / sub).mkdir(parents=True)
        for f in sorted((REAL / sub).iterdir()):
            os.symlink(f, root / "training" / sub / f.name)
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "train.txt").write_text("000000\n000001\n")
    (root / "ImageSets" / "val.txt").write_text("000002\n")
    cfg = cfg_from_yaml_file(REPO_ROOT / "tools" / "cfgs" / "dataset_configs" / "kitti_dataset.yaml")
    counts = create_kitti_infos(cfg, CLASSES, root, root, workers=2)
    assert counts == {"train": 2, "val": 1, "trainval": 3}
    return root, cfg


def test_real_infos_difficulty_image_shape_and_database(real_root):
    root, _ = real_root
    with open(root / "kitti_infos_train.pkl", "rb") as f:
        infos = pickle.load(f)
    assert infos[0]["image"]["image_shape"].tolist() == [370, 1224]  # read from image_2/000000.png
    assert infos[1]["image"]["image_shape"].tolist() == [375, 1242]
    a0, a1 = infos[0]["annos"], infos[1]["annos"]
    assert a0["name"].tolist() == ["Pedestrian"] and a0["difficulty"].tolist() == [0]
    assert a0["num_points_in_gt"].tolist() == [377]  # the pedestrian lies in the camera field of view
    assert a1["name"].tolist() == ["Truck", "Car", "Cyclist"] + ["DontCare"] * 4
    # Truck: 2D height 33.85 px -> moderate; Car: 22.58 px -> none; Cyclist: occlusion 3 -> none
    assert a1["difficulty"].tolist() == [1, -1, -1, -1, -1, -1, -1]
    assert a1["index"].tolist() == [0, 1, 2, -1, -1, -1, -1]
    assert a1["gt_boxes_lidar"].shape == (3, 7)
    np.testing.assert_allclose(a1["gt_boxes_lidar"][:, 3:6], [[12.34, 2.63, 2.85], [3.69, 1.87, 1.67],
                                                              [2.02, 0.60, 1.86]], atol=1e-5)
    with open(root / "kitti_infos_val.pkl", "rb") as f:
        assert pickle.load(f)[0]["annos"]["difficulty"].tolist() == [0, 1]  # Misc easy, Car moderate

    with open(root / "kitti_dbinfos_train.pkl", "rb") as f:
        db = pickle.load(f)
    ped = db["Pedestrian"][0]
    assert ped["path"] == "gt_database/000000_Pedestrian_0.bin" and ped["num_points_in_gt"] == 377
    rel = np.fromfile(str(root / ped["path"]), dtype=np.float32).reshape(-1, 4)
    assert rel.shape == (377, 4)
    # stored relative to the box centre: shifted back they lie in the box
    inside = points_in_boxes_cpu(rel[:, 0:3] + ped["box3d_lidar"][0:3], ped["box3d_lidar"][None, :])
    assert inside.sum() == 377
    assert [e["num_points_in_gt"] for e in db["Cyclist"]] == [18]


def test_real_getitem_and_collate(real_root):
    root, cfg = real_root
    ds = KittiDataset(cfg, CLASSES, training=False, root_path=root)
    sample = ds[0]
    assert sample["frame_id"] == "000002"
    pts = sample["points"]
    assert pts.shape[1] == 4 and 10000 < pts.shape[0] < 126891  # FOV and range cut the 360 degree scan
    assert pts[:, 0].min() >= 0 and pts[:, 0].max() <= 70.4 and np.abs(pts[:, 1]).max() <= 40
    np.testing.assert_allclose(sample["gt_boxes"][:, 7], [1])  # Misc is not a detection class
    assert sample["image_shape"].tolist() == [375, 1242]
    batch = ds.collate_batch([sample, sample])
    v = sample["voxels"].shape[0]
    assert batch["voxels"].shape == (2 * v, 5, 4) and batch["voxel_coords"].shape == (2 * v, 4)
    assert (batch["voxel_coords"][:, 1:] < ds.grid_size[::-1]).all() and (batch["voxel_coords"] >= 0).all()
    assert batch["points"].shape == (2 * pts.shape[0], 5) and batch["gt_boxes"].shape == (2, 1, 8)
    assert (sample["voxel_num_points"] <= 5).all() and sample["voxel_num_points_raw"].sum() <= pts.shape[0]
