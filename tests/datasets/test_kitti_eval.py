"""KITTI evaluation on hand-made cases whose AP is derived by hand (devkit protocol)."""
import math

import numpy as np
import pytest
import torch

from pcdet.datasets.kitti.kitti_object_eval_python import eval as kitti_eval
from pcdet.datasets.kitti.kitti_object_eval_python import kitti_common
from pcdet.datasets.kitti.kitti_object_eval_python.rotate_iou import d3_box_overlap, rotate_iou_eval
from pcdet.ops.iou3d_nms.iou3d_nms_utils import boxes_iou3d, boxes_iou_bev

CAR_DIMS = (4.0, 1.5, 1.6)  # l, h, w


def _anno(objects):
    """objects: list of dicts with name, bbox and optional loc, dims, ry, trunc, occ, alpha, score."""
    def col(key, default):
        return np.array([o.get(key, default) for o in objects], dtype=np.float64)
    return {
        "name": np.array([o["name"] for o in objects], dtype="<U16"),
        "truncated": col("trunc", 0.0), "occluded": col("occ", 0).astype(np.int64), "alpha": col("alpha", 0.0),
        "bbox": np.array([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4),
        "dimensions": np.array([o.get("dims", CAR_DIMS) for o in objects], dtype=np.float64).reshape(-1, 3),
        "location": np.array([o.get("loc", (0, 1.65, 20)) for o in objects], dtype=np.float64).reshape(-1, 3),
        "rotation_y": col("ry", 0.0), "score": col("score", 0.0),
    }


def _cars(n, dx=0.0):
    """n easy Cars in a row (2D boxes 50 px high, 3D boxes 5 m apart), optionally shifted by dx metres."""
    return [{"name": "Car", "bbox": (10.0 * i, 100.0, 10.0 * i + 8.0, 150.0), "loc": (5.0 * i + dx, 1.65, 20.0),
             "score": 1.0 - i / 1000.0} for i in range(n)]


def _far_fp(score, name="Car"):
    return {"name": name, "bbox": (1000.0, 100.0, 1040.0, 150.0), "loc": (-50.0, 1.65, 60.0), "score": score}


def _ap(gt_objects, dt_objects, **kw):
    return kitti_eval.get_official_eval_result([_anno(gt_objects)], [_anno(dt_objects)], ["Car"], **kw)[1]


def test_ground_truth_as_detections_gives_100():
    results = kitti_eval.evaluate_self_check(num_frames=30, objects_per_frame=15, seed=1)
    perfect, noisy = results["perfect"][1], results["noisy"][1]
    assert len(perfect) == 3 * 4 * 3 * 2 * 2   # classes x metrics x difficulties x R11/R40 x strict/loose
    assert perfect["Car_3d/moderate_R40_loose"] == pytest.approx(100.0)
    assert all(v == pytest.approx(100.0) for v in perfect.values())
    assert 0 < noisy["Car_3d/moderate_R40"] < noisy["Car_image/moderate_R40"] < 100


def test_two_gt_tp_fp_tp():
    # Thresholds: TP scores 0.9 and 0.1 (recall jumps 0.5 per TP, so only 2 recall samples are filled):
    # precision [1, 2/3, 0, ...] -> R40 = (2/3) / 40, R11 = 1 / 11.
    gt = _cars(2)
    dt = [dict(gt[0], score=0.9), _far_fp(0.5), dict(gt[1], score=0.1)]
    ap = _ap(gt, dt)
    for metric in ("image", "bev", "3d", "aos"):
        assert ap[f"Car_{metric}/easy_R40"] == pytest.approx(100 * (2 / 3) / 40)
        assert ap[f"Car_{metric}/easy_R11"] == pytest.approx(100 / 11)


def test_eighty_gt_with_one_fp_in_the_middle():
    # 80 TPs; thresholds at TP ranks 1, 2, 4, ..., 80 (recall 0, 1/40, ..., 1). The FP (score between TP 40 and
    # 41) is counted from recall index 21 on, where precision 2k/(2k+1) is made monotone to 80/81.
    gt = _cars(80)
    dt = [dict(o) for o in gt] + [_far_fp(0.9605)]
    ap = _ap(gt, dt)
    r40 = (20 + 20 * 80 / 81) / 40 * 100
    r11 = (6 + 5 * 80 / 81) / 11 * 100
    for metric in ("image", "bev", "3d"):
        for diff in ("easy", "moderate", "hard"):
            assert ap[f"Car_{metric}/{diff}_R40"] == pytest.approx(r40)
            assert ap[f"Car_{metric}/{diff}_R11"] == pytest.approx(r11)


@pytest.mark.parametrize("iou,expected", [(0.71, 100.0), (0.69, 0.0)])
def test_overlap_just_above_or_below_threshold(iou, expected):
    # Same-size boxes shifted along their length l: IoU = (l - d) / (l + d).
    d = CAR_DIMS[0] * (1 - iou) / (1 + iou)
    pr = {}
    ap = _ap(_cars(80), _cars(80, dx=d), PR_detail_dict=pr)
    assert ap["Car_3d/moderate_R40"] == pytest.approx(expected)
    assert ap["Car_bev/moderate_R40"] == pytest.approx(expected)
    assert ap["Car_image/moderate_R40"] == pytest.approx(100.0)
    # Loose set (0.5) matches both.
    assert kitti_eval.get_map_r40(pr["3d"][0, 1, 1]) == pytest.approx(100.0)


def test_dontcare_region_detection_not_false_positive():
    gt = _cars(80) + [{"name": "DontCare", "bbox": (900.0, 90.0, 1100.0, 200.0), "occ": -1, "trunc": -1}]
    dt = [dict(o) for o in _cars(80)] + [_far_fp(2.0)]  # top-scoring, 2D box inside the DontCare region
    fp_everywhere = 80 / 81 * 100
    ap = _ap(gt, dt)
    assert ap["Car_image/moderate_R40"] == pytest.approx(100.0)
    assert ap["Car_3d/moderate_R40"] == pytest.approx(fp_everywhere)  # 2D-only rule, as OpenPCDet
    ap_all = _ap(gt, dt, dontcare_all_metrics=True)
    assert ap_all["Car_3d/moderate_R40"] == pytest.approx(100.0)
    # Without the DontCare region the same detection is a false positive for every metric.
    assert _ap(_cars(80), dt)["Car_image/moderate_R40"] == pytest.approx(fp_everywhere)


@pytest.mark.parametrize("other_class,expected", [("Van", 100.0), ("Truck", 80 / 81 * 100)])
def test_van_detected_as_car_is_ignored(other_class, expected):
    other = {"name": other_class, "bbox": (1000.0, 100.0, 1040.0, 150.0), "loc": (-50.0, 1.65, 60.0)}
    dt = [dict(o) for o in _cars(80)] + [_far_fp(2.0)]  # a Car detection exactly on the other object
    ap = _ap(_cars(80) + [other], dt)
    for metric in ("image", "bev", "3d"):
        assert ap[f"Car_{metric}/moderate_R40"] == pytest.approx(expected)


def test_difficulty_assignment():
    gt = _anno([
        {"name": "Car", "bbox": (0, 0, 10, 50), "occ": 1, "trunc": 0.1},    # moderate
        {"name": "Car", "bbox": (0, 0, 10, 30)},                            # too small for easy
        {"name": "Car", "bbox": (0, 0, 10, 40)},                            # height 40 is not > 40
        {"name": "Car", "bbox": (0, 0, 10, 50), "trunc": 0.45},             # hard only
        {"name": "Car", "bbox": (0, 0, 10, 50), "occ": 3},                  # never counted
        {"name": "Van", "bbox": (0, 0, 10, 50)},                            # neighbour class
        {"name": "Pedestrian", "bbox": (0, 0, 10, 50)},                     # other class
        {"name": "DontCare", "bbox": (5, 5, 20, 20), "occ": -1, "trunc": -1},
    ])
    dt = _anno([{"name": "Car", "bbox": (0, 0, 10, 30)}, {"name": "Car", "bbox": (0, 0, 10, 40)},
                {"name": "Cyclist", "bbox": (0, 0, 10, 50)}])
    expected_gt = {0: [1, 1, 1, 1, 1, 1, -1, -1], 1: [0, 0, 0, 1, 1, 1, -1, -1], 2: [0, 0, 0, 0, 1, 1, -1, -1]}
    expected_dt = {0: [1, 0, -1], 1: [0, 0, -1], 2: [0, 0, -1]}
    for difficulty in range(3):
        num_valid, ignored_gt, ignored_dt, dontcare = kitti_eval.clean_data(gt, dt, "Car", difficulty)
        assert ignored_gt.tolist() == expected_gt[difficulty]
        assert ignored_dt.tolist() == expected_dt[difficulty]
        assert num_valid == expected_gt[difficulty].count(0)
        assert dontcare.tolist() == [[5, 5, 20, 20]]


def test_get_thresholds_follows_recall_steps():
    assert kitti_eval.get_thresholds([0.9, 0.1], 2).tolist() == [0.9, 0.1]
    scores = np.linspace(1.0, 0.01, 80)
    t = kitti_eval.get_thresholds(scores, 80)
    assert len(t) == 41
    assert t.tolist() == [scores[0]] + [scores[2 * k - 1] for k in range(1, 41)]


def test_rotated_eval_iou_matches_lidar_ops():
    # Camera (x right, y down, z fwd) -> LiDAR (z, -x, -y); camera bottom centre -> LiDAR centre; ry -> -ry - pi/2.
    rng = np.random.default_rng(0)
    cam = np.concatenate([rng.uniform(-1, 1, (6, 1)), rng.uniform(1.4, 1.8, (6, 1)), rng.uniform(9, 11, (6, 1)),
                          rng.uniform(1, 4, (6, 3)), rng.uniform(-np.pi, np.pi, (6, 1))], axis=1)
    lidar = np.stack([cam[:, 2], -cam[:, 0], -cam[:, 1] + cam[:, 4] / 2, cam[:, 3], cam[:, 5], cam[:, 4],
                      -cam[:, 6] - np.pi / 2], axis=1)
    expected3d = boxes_iou3d(torch.from_numpy(lidar), torch.from_numpy(lidar)).numpy()
    np.testing.assert_allclose(d3_box_overlap(cam, cam), expected3d, atol=1e-5)
    expected_bev = boxes_iou_bev(torch.from_numpy(lidar), torch.from_numpy(lidar)).numpy()
    np.testing.assert_allclose(rotate_iou_eval(cam[:, [0, 2, 3, 5, 6]], cam[:, [0, 2, 3, 5, 6]]), expected_bev,
                               atol=1e-5)
    assert (expected3d[~np.eye(6, dtype=bool)] > 0).any()
    assert math.isclose(rotate_iou_eval([[0, 0, 2, 2, 0]], [[1, 0, 2, 2, 0]], 2)[0, 0], 2.0, abs_tol=1e-9)


def test_label_files_roundtrip(tmp_path):
    (tmp_path / "000003.txt").write_text(
        "Car 0.00 1 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
        "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n")
    (anno,) = kitti_common.get_label_annos(tmp_path, [3])
    assert anno["name"].tolist() == ["Car", "DontCare"]
    np.testing.assert_allclose(anno["dimensions"][0], [3.64, 1.65, 1.67])  # l, h, w
    np.testing.assert_allclose(anno["location"][0], [-0.65, 1.71, 46.70])
    assert anno["occluded"].tolist() == [1, -1]
    dt = dict(anno, score=np.array([0.5, 0.2]))
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "000003.txt").write_text("\n".join(kitti_common.anno_to_label_lines(dt)) + "\n")
    (back,) = kitti_common.get_label_annos(tmp_path / "res", ["000003"])
    np.testing.assert_allclose(back["dimensions"], anno["dimensions"], atol=1e-4)
    np.testing.assert_allclose(back["score"], [0.5, 0.2])
    with pytest.raises(FileNotFoundError, match="000004"):
        kitti_common.get_label_annos(tmp_path, [4])


def test_missing_keys_are_named():
    gt = _anno(_cars(1))
    dt = _anno(_cars(1))
    del dt["score"]
    with pytest.raises(KeyError, match=r"dt_annos\[0\].*score"):
        kitti_eval.get_official_eval_result([gt], [dt], ["Car"])
