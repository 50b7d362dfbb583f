"""KittiDataset on a tiny hand-made KITTI layout in tmp_path (simple calibration, hand-computed boxes)."""
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets import DATASETS, DistributedEvalSampler, KittiDataset, build_dataloader
from pcdet.datasets.dataset import REPO_ROOT, resolve_data_path
from pcdet.datasets.kitti import kitti_utils
from pcdet.datasets.kitti.kitti_dataset import create_kitti_infos
from pcdet.utils.calibration_kitti import Calibration
from pcdet.utils.object3d_kitti import Object3d

CFG_FILE = REPO_ROOT / "tools" / "cfgs" / "dataset_configs" / "kitti_dataset.yaml"
CLASSES = ["Car", "Pedestrian", "Cyclist"]

# P2: f = 700, principal point (600, 180); R0 = I; LiDAR (x, y, z) -> rect camera (-y, -z, x).
CALIB_TEXT = """P0: 700 0 600 0 0 700 180 0 0 0 1 0
P1: 700 0 600 0 0 700 180 0 0 0 1 0
P2: 700 0 600 0 0 700 180 0 0 0 1 0
P3: 700 0 600 0 0 700 180 0 0 0 1 0
R0_rect: 1 0 0 0 1 0 0 0 1
Tr_velo_to_cam: 0 -1 0 0 0 0 -1 0 1 0 0 0
Tr_imu_to_velo: 1 0 0 0 0 1 0 0 0 0 1 0
"""
CAR = "Car 0.00 0 -0.05 600.00 150.00 700.00 200.00 1.50 1.60 4.00 1.00 1.50 20.00 0.00"
# LiDAR box of CAR: bottom centre rect (1, 1.5, 20) -> LiDAR (20, -1, -1.5), lifted by h/2; heading -(ry + pi/2).
CAR_LIDAR = [20.0, -1.0, -0.75, 4.0, 1.6, 1.5, -np.pi / 2]
PED = "Pedestrian 0.20 1 0.00 600.00 150.00 620.00 180.00 1.80 0.60 0.80 -2.00 1.60 10.00 0.00"
DONTCARE = "DontCare -1 -1 -10.00 500.00 170.00 520.00 190.00 -1 -1 -1 -1000 -1000 -1000 -10"
VAN = "Van 0.00 0 0.00 100.00 150.00 300.00 250.00 2.00 1.90 5.00 -15.00 1.80 30.00 0.00"


def _car_points(n, seed=0):
    rng = np.random.default_rng(seed)
    box = np.array(CAR_LIDAR)
    # heading -pi/2: box length runs along LiDAR y, width along x
    local = rng.uniform(-0.45, 0.45, size=(n, 3)) * box[3:6]
    xyz = np.stack([box[0] + local[:, 1], box[1] - local[:, 0], box[2] + local[:, 2]], axis=1)
    return np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], axis=1).astype(np.float32)


def _front_points(n, seed=1):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(30, 60, n), rng.uniform(-5, 5, n), rng.uniform(-2, 0, n),
                     rng.uniform(0, 1, n)], axis=1).astype(np.float32)


def make_kitti_root(root, frames, train_ids, val_ids):
    """frames: {frame_id: (points (N, 4) or raw bytes, [label lines] or None for no label file)}."""
    for sub in ("velodyne", "label_2", "calib"):
        (root / "training" / sub).mkdir(parents=True, exist_ok=True)
    for fid, (points, labels) in frames.items():
        velo = root / "training" / "velodyne" / f"{fid}.bin"
        if isinstance(points, bytes):
            velo.write_bytes(points)
        else:
            np.asarray(points, dtype=np.float32).tofile(str(velo))
        (root / "training" / "calib" / f"{fid}.txt").write_text(CALIB_TEXT)
        if labels is not None:
            (root / "training" / "label_2" / f"{fid}.txt").write_text("".join(line + "\n" for line in labels))
    (root / "ImageSets").mkdir(exist_ok=True)
    (root / "ImageSets" / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (root / "ImageSets" / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    return root


def _cfg(augment=False):
    cfg = cfg_from_yaml_file(CFG_FILE)
    if augment:
        cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ["gt_sampling"]
    else:
        cfg.DATA_AUGMENTOR.AUG_CONFIG_LIST = []
    cfg.DATA_PROCESSOR[-1].VOXEL_SIZE = [0.5, 0.5, 0.5]
    return cfg


@pytest.fixture()
def kitti_root(tmp_path):
    behind = np.array([[-5.0, 0.0, 0.0, 0.1]] * 10, np.float32)  # behind the camera: outside the FOV
    frames = {
        "000000": (np.concatenate([_car_points(50), behind, _front_points(20)]), [CAR, PED, DONTCARE, VAN]),
        "000001": (_front_points(30, seed=2), []),
        "000002": (np.zeros((0, 4), np.float32), [CAR]),
    }
    root = make_kitti_root(tmp_path / "kitti", frames, ["000000", "000001", "000002"], ["000000", "000001"])
    create_kitti_infos(_cfg(), CLASSES, root, root, workers=2)
    return root


def test_calibration_hand_values(tmp_path):
    (tmp_path / "c.txt").write_text(CALIB_TEXT)
    calib = Calibration(tmp_path / "c.txt")
    lidar = np.array([[20.0, -1.0, 0.5], [10.0, 2.0, -1.0]], np.float32)
    rect = calib.lidar_to_rect(lidar)
    np.testing.assert_allclose(rect, [[1.0, -0.5, 20.0], [-2.0, 1.0, 10.0]], atol=1e-6)
    np.testing.assert_allclose(calib.rect_to_lidar(rect), lidar, atol=1e-5)
    img, depth = calib.lidar_to_img(lidar)
    np.testing.assert_allclose(img, [[635.0, 162.5], [460.0, 250.0]], atol=1e-4)
    np.testing.assert_allclose(depth, [20.0, 10.0], atol=1e-5)
    np.testing.assert_allclose(calib.img_to_rect(img[:, 0], img[:, 1], depth), rect, atol=1e-4)
    (tmp_path / "bad.txt").write_text("P2: 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.txt: missing calibration keys \['R0_rect', 'Tr_velo_to_cam'\]"):
        Calibration(tmp_path / "bad.txt")


def test_object3d_difficulty_levels():
    assert Object3d(CAR).level == 0                 # height 51, visible
    assert Object3d(PED).level == 1                 # height 31, truncation 0.2, occlusion 1
    assert Object3d(DONTCARE).level == -1           # height 21
    hard = "Car 0.45 2 0 0 100 10 130 1 1 1 0 0 10 0"  # height 31, truncation 0.45, occlusion 2
    assert Object3d(hard).level == 2
    assert Object3d("Car 0.60 0 0 0 100 10 200 1 1 1 0 0 10 0").level == -1  # truncation too large
    with pytest.raises(ValueError, match="has 3 fields"):
        Object3d("Car 0 0")


def test_resolve_data_path_relative_to_tools():
    assert resolve_data_path("../data/kitti") == (REPO_ROOT / "data" / "kitti").resolve()
    assert resolve_data_path("/abs/x") == Path("/abs/x")
    assert "KittiDataset" in DATASETS.names()


def test_info_generation_fields(kitti_root):
    with open(kitti_root / "kitti_infos_train.pkl", "rb") as f:
        infos = pickle.load(f)
    assert [i["point_cloud"]["lidar_idx"] for i in infos] == ["000000", "000001", "000002"]
    info = infos[0]
    assert info["point_cloud"]["num_features"] == 4
    assert info["image"]["image_shape"].tolist() == [375, 1242]  # no PNG: DEFAULT_IMAGE_SHAPE
    assert info["calib"]["P2"].shape == (4, 4) and info["calib"]["R0_rect"].shape == (4, 4)
    annos = info["annos"]
    assert annos["name"].tolist() == ["Car", "Pedestrian", "Van", "DontCare"]  # DontCare moved last
    assert annos["difficulty"].tolist() == [0, 1, 0, -1]
    assert annos["index"].tolist() == [0, 1, 2, -1]
    np.testing.assert_allclose(annos["dimensions"][0], [4.0, 1.5, 1.6])  # l, h, w
    np.testing.assert_allclose(annos["gt_boxes_lidar"][0], CAR_LIDAR, atol=1e-5)
    assert annos["gt_boxes_lidar"].shape == (3, 7)
    assert annos["num_points_in_gt"].tolist() == [50, 0, 0, -1]
    assert infos[1]["annos"]["gt_boxes_lidar"].shape == (0, 7)
    with open(kitti_root / "kitti_infos_trainval.pkl", "rb") as f:
        assert len(pickle.load(f)) == 5
    with open(kitti_root / "kitti_dbinfos_train.pkl", "rb") as f:
        db = pickle.load(f)
    assert sorted(db) == ["Car", "Pedestrian", "Van"]
    car = db["Car"][0]
    assert car["path"] == "gt_database/000000_Car_0.bin" and car["num_points_in_gt"] == 50
    rel = np.fromfile(str(kitti_root / car["path"]), dtype=np.float32).reshape(-1, 4)
    np.testing.assert_allclose(np.sort(rel[:, 0] + CAR_LIDAR[0]), np.sort(_car_points(50)[:, 0]), atol=1e-5)
    assert db["Car"][1]["image_idx"] == "000002" and db["Car"][1]["num_points_in_gt"] == 0


def test_getitem_eval_mode_fov_boxes_and_voxels(kitti_root):
    ds = KittiDataset(_cfg(), CLASSES, training=False, root_path=kitti_root)
    assert len(ds) == 2 and ds.grid_size.tolist() == [141, 160, 8]
    sample = ds[0]
    assert sample["frame_id"] == "000000"
    assert sample["points"].shape == (70, 4)  # the 10 points behind the camera are outside the FOV
    assert sample["points"][:, 0].min() > 0
    np.testing.assert_allclose(sample["gt_boxes"][:, 7], [1, 2])  # Car, Pedestrian; DontCare and Van dropped
    np.testing.assert_allclose(sample["gt_boxes"][0, :7], CAR_LIDAR, atol=1e-5)
    assert sample["voxels"].shape[1:] == (5, 4) and sample["voxel_num_points_raw"].sum() == 70
    empty = ds[1]
    assert empty["gt_boxes"].shape == (0, 8)
    batch = ds.collate_batch([sample, empty])
    assert batch["gt_boxes"].shape == (2, 2, 8) and not batch["gt_boxes"][1].any()
    assert batch["points"].shape == (100, 5) and batch["image_shape"].tolist() == [[375, 1242]] * 2


def test_empty_scan_through_pipeline(kitti_root):
    cfg = _cfg()
    cfg.DATA_SPLIT.test = "train"
    cfg.INFO_PATH.test = ["kitti_infos_train.pkl"]
    ds = KittiDataset(cfg, CLASSES, training=False, root_path=kitti_root)
    sample = ds[2]
    assert sample["points"].shape == (0, 4) and sample["voxels"].shape == (0, 5, 4)
    assert sample["voxel_coords"].shape == (0, 3) and sample["gt_boxes"].shape == (1, 8)
    batch = ds.collate_batch([sample])
    assert batch["points"].shape == (0, 5) and batch["voxel_coords"].shape == (0, 4)


def test_training_resamples_scenes_without_boxes_and_augments(kitti_root):
    ds = KittiDataset(_cfg(augment=True), CLASSES, training=True, root_path=kitti_root)
    assert [len(q.keywords) for q in ds.data_augmentor.data_augmentor_queue] == [1, 1, 1]
    np.random.seed(0)
    for _ in range(3):
        sample = ds[1]  # frame 000001 has no objects: another frame is returned
        assert sample["frame_id"] in ("000000", "000002") and len(sample["gt_boxes"]) >= 1


def test_side_processor_sees_the_same_augmented_scene(kitti_root):
    cfg = _cfg(augment=True)
    ds = KittiDataset(cfg, CLASSES, training=True, root_path=kitti_root)
    side = ds.register_side_processor("kd_teacher_inputs", cfg.DATA_PROCESSOR, voxel_size=[1.0, 1.0, 1.0])
    assert side.grid_size.tolist() == [70, 80, 4] and ds.grid_size.tolist() == [141, 160, 8]
    np.random.seed(3)
    sample = ds[0]
    teacher = sample["kd_teacher_inputs"]
    assert sorted(teacher) == ["points", "voxel_coords", "voxel_num_points", "voxel_num_points_raw", "voxels"]
    assert sorted(map(tuple, teacher["points"])) == sorted(map(tuple, sample["points"]))
    assert teacher["voxel_num_points_raw"].sum() <= sample["points"].shape[0]
    batch = ds.collate_batch([sample, sample])
    assert batch["kd_teacher_inputs"]["voxel_coords"].shape == (2 * len(teacher["voxel_coords"]), 4)
    with pytest.raises(KeyError, match="already used"):
        ds.register_side_processor("kd_teacher_inputs", cfg.DATA_PROCESSOR)


def test_bad_velodyne_size_names_file(tmp_path):
    root = make_kitti_root(tmp_path, {"000007": (b"\0" * 20, [CAR])}, ["000007"], ["000007"])
    ds = KittiDataset(_cfg(), CLASSES, training=False, root_path=root, load_infos=False)
    with pytest.raises(ValueError, match=r"000007\.bin: 20 bytes is not a multiple of 4 \* 4"):
        ds.get_lidar("000007")


def test_missing_label_and_calib_name_frame_and_path(tmp_path):
    root = make_kitti_root(tmp_path, {"000003": (_front_points(5), None)}, ["000003"], ["000003"])
    ds = KittiDataset(_cfg(), CLASSES, training=False, root_path=root, load_infos=False)
    with pytest.raises(FileNotFoundError, match=r"frame 000003: label file not found: .*label_2/000003\.txt"):
        ds.get_infos(num_workers=1)
    (root / "training" / "calib" / "000003.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"frame 000003: calib file not found: .*calib/000003\.txt"):
        ds.get_calib("000003")


def test_split_with_missing_frames_lists_them(tmp_path):
    root = make_kitti_root(tmp_path, {"000000": (_front_points(5), [CAR])}, ["000000", "000004", "000009"],
                           ["000000"])
    with pytest.raises(FileNotFoundError, match=r"train.txt: 2 of 3 frames have no scan .*: 000004, 000009"):
        create_kitti_infos(_cfg(), CLASSES, root, root, workers=1)


def test_nan_points_dropped_with_warning(tmp_path):
    pts = _car_points(10)
    pts[2, 0] = np.nan
    pts[5, 3] = np.inf
    root = make_kitti_root(tmp_path, {"000005": (pts, [CAR])}, ["000005"], ["000005"])
    create_kitti_infos(_cfg(), CLASSES, root, root, workers=1)
    ds = KittiDataset(_cfg(), CLASSES, training=False, root_path=root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = ds[0]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("frame 000005: dropped 2 of 10 points" in m for m in messages), messages
    assert sample["points"].shape == (8, 4) and np.isfinite(sample["points"]).all()


def test_png_image_shape_from_header(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(str(tmp_path / "x.png"), np.zeros((7, 13, 3)))
    assert kitti_utils.png_image_shape(tmp_path / "x.png") == (7, 13)
    (tmp_path / "y.png").write_bytes(b"not a png at all, no header here")
    with pytest.raises(ValueError, match="y.png: not a PNG"):
        kitti_utils.png_image_shape(tmp_path / "y.png")


def test_generate_prediction_dicts_round_trip_and_result_file(kitti_root, tmp_path):
    import torch

    ds = KittiDataset(_cfg(), CLASSES, training=False, root_path=kitti_root)
    batch = ds.collate_batch([ds[0]])
    preds = [{"pred_boxes": torch.tensor([CAR_LIDAR], dtype=torch.float32), "pred_scores": torch.tensor([0.9]),
              "pred_labels": torch.tensor([1])}]
    annos = ds.generate_prediction_dicts(batch, preds, CLASSES, output_path=tmp_path / "out")
    anno = annos[0]
    assert anno["name"].tolist() == ["Car"] and anno["frame_id"] == "000000"
    np.testing.assert_allclose(anno["location"][0], [1.0, 1.5, 20.0], atol=1e-5)
    np.testing.assert_allclose(anno["dimensions"][0], [4.0, 1.5, 1.6], atol=1e-5)
    np.testing.assert_allclose(anno["rotation_y"][0], 0.0, atol=1e-6)
    np.testing.assert_allclose(anno["alpha"][0], -np.arctan2(1.0, 20.0), atol=1e-6)
    assert anno["bbox"].shape == (1, 4) and 0 <= anno["bbox"][0, 0] < anno["bbox"][0, 2] <= 1241
    fields = (tmp_path / "out" / "000000.txt").read_text().split()
    assert fields[0] == "Car" and [float(v) for v in fields[8:11]] == [1.5, 1.6, 4.0]
    assert float(fields[15]) == pytest.approx(0.9)
    empty = ds.generate_prediction_dicts(batch, [{"pred_boxes": torch.zeros(0, 7), "pred_scores": torch.zeros(0),
                                                  "pred_labels": torch.zeros(0, dtype=torch.long)}], CLASSES)
    assert empty[0]["bbox"].shape == (0, 4) and empty[0]["name"].shape == (0,)


def test_build_dataloader_and_eval_sampler(kitti_root):
    ds, loader, sampler = build_dataloader(_cfg(), CLASSES, batch_size=2, dist=False, root_path=kitti_root,
                                           workers=0, training=False)
    assert sampler is None and isinstance(ds, KittiDataset) and not loader.drop_last
    batches = list(loader)
    assert [b["batch_size"] for b in batches] == [2]
    assert batches[0]["frame_id"].tolist() == ["000000", "000001"]
    shares = [list(DistributedEvalSampler(range(10), num_replicas=3, rank=r)) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert len(DistributedEvalSampler(range(10), num_replicas=3, rank=1)) == 3
    with pytest.raises(ValueError, match="rank 3 outside"):
        DistributedEvalSampler(range(10), num_replicas=3, rank=3)


def test_build_dataloader_workers_are_seeded(kitti_root):
    cfg = _cfg(augment=True)
    runs = []
    for _ in range(2):
        _, loader, _ = build_dataloader(cfg, CLASSES, batch_size=1, dist=False, root_path=kitti_root, workers=1,
                                        seed=11, training=True)
        runs.append([b["gt_boxes"].copy() for b in loader])
    assert len(runs[0]) == 3
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_unknown_dataset_name_in_registry():
    with pytest.raises(KeyError, match="did you mean"):
        build_dataloader(EasyDict(DATASET="KittiDatset"), CLASSES, 1, False)


def test_evaluation_pairs_gt_and_detections_by_frame_id(kitti_root, monkeypatch):
    from pcdet.datasets.kitti.kitti_object_eval_python import eval as kitti_eval

    captured = {}

    def fake_eval(gt_annos, dt_annos, current_classes):
        captured.update(gt=gt_annos, dt=dt_annos, classes=current_classes)
        return "result", {"Car_3d/moderate_R40": 1.0}

    monkeypatch.setattr(kitti_eval, "get_official_eval_result", fake_eval)
    ds = KittiDataset(_cfg(), CLASSES, training=False, root_path=kitti_root)
    dets = [{"frame_id": "000001", "name": np.array(["Car"])}, {"frame_id": "000000", "name": np.array([])}]
    assert ds.evaluation(dets, CLASSES) == ("result", {"Car_3d/moderate_R40": 1.0})
    assert [len(g["name"]) for g in captured["gt"]] == [0, 4]  # frame 000001 has no objects, 000000 has four
    assert captured["dt"][0]["frame_id"] == "000001" and captured["classes"] == CLASSES
    with pytest.raises(KeyError, match="frames without infos: \\['000042'\\]"):
        ds.evaluation([{"frame_id": "000042", "name": np.array([])}], CLASSES)


def test_label_lines_split_on_any_whitespace_and_bad_sizes_name_file_and_line(tmp_path):
    from pcdet.utils.object3d_kitti import get_objects_from_label

    f = tmp_path / "000001.txt"
    f.write_text(CAR.replace(" ", "  ", 3).replace("1.60", "1.60\t") + "\n" + DONTCARE + "\n")
    objs = get_objects_from_label(f)
    assert [o.cls_type for o in objs] == ["Car", "DontCare"] and (objs[0].h, objs[0].w, objs[0].l) == (1.5, 1.6, 4.0)
    for bad, msg in (("1.60", "w=nan"), ("4.00", "l=-4.0"), ("1.50 1.60", "h=0.0")):
        line = CAR.replace(bad, {"w=nan": "nan", "l=-4.0": "-4.00", "h=0.0": "0.0 1.60"}[msg], 1)
        f.write_text(PED + "\n" + line + "\n")
        with pytest.raises(ValueError, match=rf"000001\.txt:2: Car: box size must be finite and positive, got {msg}"):
            get_objects_from_label(f)


def test_empty_scan_in_a_labelled_frame_warns_once_per_frame(tmp_path):
    from pcdet.datasets.kitti.kitti_dataset import EmptyScanWarning

    root = make_kitti_root(tmp_path, {"000000": (np.zeros((0, 4)), [CAR]), "000001": (_front_points(50), [CAR])},
                           ["000000", "000001"], ["000000"])
    with pytest.warns(EmptyScanWarning, match=r"KITTI frame 000000: velodyne/000000\.bin has 0 points .*info building"):
        create_kitti_infos(_cfg(), CLASSES, root, root, workers=1)
    ds = KittiDataset(_cfg(), CLASSES, training=False, root_path=root)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds[0]
        ds[0]
    empty = [w for w in caught if issubclass(w.category, EmptyScanWarning)]
    assert len(empty) == 1 and "(loading)" in str(empty[0].message)
