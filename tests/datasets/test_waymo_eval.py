"""Waymo AP / APH: hand-built frames whose values are derived by hand in the comments (the official metric's rules:
LEVEL_1 counts detections of LEVEL_2 boxes as TPs, APH weights only the precision, Hungarian matching per score
cut-off, trapezoids at 0.05 recall steps, range by 3D distance), and a cross-check against the official op."""
import numpy as np
import pytest

from pcdet.datasets.waymo import crosscheck
from pcdet.datasets.waymo import waymo_eval as we


def _box(x, y, heading=0.0, dx=2.0, dy=2.0, z=0.0):
    return [x, y, z, dx, dy, 1.5, heading]


def _gt(boxes, points, names=None):
    return {"name": np.array(names or ["Vehicle"] * len(boxes)), "gt_boxes_lidar": np.array(boxes, dtype=float),
            "num_points_in_gt": np.array(points)}


def _det(boxes, scores, names=None):
    return {"name": np.array(names or ["Vehicle"] * len(boxes)), "boxes_lidar": np.array(boxes, dtype=float),
            "score": np.array(scores, dtype=np.float32)}


def test_heading_accuracy_wraps_around():
    h = we.heading_accuracy([0.0, np.pi / 2, np.pi, -3.0, 2 * np.pi], [0.0, 0.0, 0.0, 3.0, 0.0])
    expected = [1.0, 0.5, 0.0, 1.0 - (2 * np.pi - 6.0) / np.pi, 1.0]
    np.testing.assert_allclose(h, expected, atol=1e-12)


def test_levels_by_point_count_and_label():
    np.testing.assert_array_equal(we.gt_levels([0, 1, 5, 6, 100], [0, 0, 0, 0, 2]), [0, 2, 2, 1, 2])
    # a label wins over the point count: labelled LEVEL_1 with 3 points stays LEVEL_1
    np.testing.assert_array_equal(we.gt_levels([3, 3, 50, 0], [1, 2, 1, 1]), [1, 2, 1, 0])


def test_level_1_counts_a_detection_of_a_level_2_box_as_a_true_positive():
    # g1 LEVEL_1 (10 points) missed; g2 LEVEL_2 (3 points) found exactly by the only detection.
    # LEVEL_1: TP 1 (the match to g2), FP 0, FN 1 (g1; g2 is matched) -> P 1 at R 1/2 -> AP 1/2.
    # (A LEVEL_1 that ignored the detection of g2 would give AP 0.)
    gt = _gt([_box(10, 0), _box(40, 0)], [10, 3])
    det = _det([_box(40, 0)], [0.9])
    for level in (1, 2):
        m = we.compute_class_metrics([gt], [det], "Vehicle", level)
        assert m["ap"] == pytest.approx(0.5, abs=1e-6), level
    assert we.compute_class_metrics([gt], [det], "Vehicle", 1)["num_gt"] == 1
    # an unmatched LEVEL_2 box is a FN at LEVEL_2 only: with g1 found and g2 missed, L1 AP 1, L2 AP 1/2
    det = _det([_box(10, 0)], [0.9])
    assert we.compute_class_metrics([gt], [det], "Vehicle", 1)["ap"] == pytest.approx(1.0, abs=1e-6)
    assert we.compute_class_metrics([gt], [det], "Vehicle", 2)["ap"] == pytest.approx(0.5, abs=1e-6)


def test_aph_weights_the_precision_only():
    # one exact match with heading off by pi / 2 (square box: IoU 1, heading accuracy 1/2): precision 1, heading-
    # weighted precision 1/2, recall 1 -> AP 1, APH 1/2 (weighting the recall too would give 1/4).
    gt = _gt([_box(10, 0)], [10])
    det = _det([_box(10, 0, np.pi / 2)], [0.9])
    m = we.compute_class_metrics([gt], [det], "Vehicle", 1)
    assert m["ap"] == pytest.approx(1.0, abs=1e-6)
    assert m["aph"] == pytest.approx(0.5, abs=1e-6)


def test_curve_is_integrated_with_trapezoids_at_0_05_recall_steps():
    # 2 gt; TP (0.9), FP (0.8), TP (0.7). Per cut-off: (P, R) = (2/3, 1), (1/2, 1/2), (1, 1/2), recall 0 -> P 1.
    # Best precision per recall: R 1: 2/3, R 1/2: 1, R 0: 1. Walking down from R 1, points every 0.05 carry the
    # running precision 2/3 down to R 0.55, then (1, 0.5) and points at precision 1 down to 0.
    # Area: 0.45 * 2/3 + 0.05 * (2/3 + 1) / 2 + 0.5 * 1 = 0.841667 (the exact step area would be 0.833333).
    gt = _gt([_box(10, 0), _box(20, 5)], [10, 10])
    det = _det([_box(10, 0), _box(-20, -20), _box(20, 5)], [0.9, 0.8, 0.7])
    m = we.compute_class_metrics([gt], [det], "Vehicle", 2)
    assert m["ap"] == pytest.approx(0.45 * 2 / 3 + 0.05 * (2 / 3 + 1) / 2 + 0.5, abs=1e-6)


def test_mean_average_precision_edge_cases():
    assert we.mean_average_precision([], []) == 0.0
    assert we.mean_average_precision([1.0, 1.0], [0.0, 0.0]) == 0.0     # no recall: no area
    # a single point (P 1/2, R 1): the recall-0 point takes its precision -> 1/2
    assert we.mean_average_precision([0.5], [1.0]) == pytest.approx(0.5, abs=1e-6)


def test_matching_is_hungarian_at_each_cut_off():
    # pedestrians (1 x 1 x 1.5) A at x 0 and B at x 0.5; d1 (0.9) at x 0.2: IoU(A) 0.8/1.2 = 0.667, IoU(B)
    # 0.7/1.3 = 0.538; d2 (0.8) at x -0.3: IoU(A) 0.538, IoU(B) 0.2/1.8 = 0.111. Greedy by score gives d1 -> A and
    # leaves d2 a FP (AP 1/2 + ...); the maximum-weight assignment at the cut-offs <= 0.8 is d1 -> B, d2 -> A: two
    # TPs. (P, R): cut-offs <= 0.8: (1, 1); (0.8, 0.9]: (1, 1/2) -> AP 1.
    ped = dict(dx=1.0, dy=1.0)
    gt = _gt([_box(30, 0, **ped), _box(30.5, 0, **ped)], [50, 50], ["Pedestrian"] * 2)
    det = _det([_box(30.2, 0, **ped), _box(29.7, 0, **ped)], [0.9, 0.8], ["Pedestrian"] * 2)
    rows, cols = we.hungarian_match(we.iou3d(det["boxes_lidar"], gt["gt_boxes_lidar"]), 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]
    m = we.compute_class_metrics([gt], [det], "Pedestrian", 1)
    assert m["num_tp"] == 2
    assert m["ap"] == pytest.approx(1.0, abs=1e-6)


def test_range_is_the_3d_distance_and_summary_keys():
    # g1 at (29, 0, 8): 29 m in BEV but 30.08 m in 3D -> the [30, 50) shard, with its exact detection
    gt = _gt([_box(29, 0, z=8.0), _box(10, 0)], [10, 10])
    det = _det([_box(29, 0, z=8.0)], [0.9])
    _, res = we.waymo_evaluation([gt], [det], ["Vehicle", "Pedestrian"])
    assert res["Vehicle/LEVEL_1/AP_30_50"] == pytest.approx(1.0, abs=1e-6)
    assert res["Vehicle/LEVEL_1/AP_0_30"] == 0.0        # g2 missed, nothing detected there
    assert res["Vehicle/LEVEL_1/AP"] == pytest.approx(0.5, abs=1e-6)
    assert res["Vehicle/LEVEL_1/num_gt"] == 2
    # Pedestrian has no ground truth: it is reported but left out of the means.
    assert res["mAP_LEVEL_1"] == pytest.approx(res["Vehicle/LEVEL_1/AP"])
    assert res["mAPH_LEVEL_2"] == pytest.approx(res["Vehicle/LEVEL_2/APH"])


def test_boxes_without_points_are_dropped_and_their_detections_are_false_positives():
    # g2 has no points: dropped. The detection on it is a FP ranked first: (P, R) = (1/2, 1) at cut-offs <= 0.8,
    # (0, 0) -> P 1 at (0.8, 0.9]: best precision R 1: 1/2, R 0: 1 -> points 1/2 down to R 0.05, then the
    # recall-0 point takes 1/2 -> AP 1/2.
    gt = _gt([_box(10, 0), _box(20, 0)], [10, 0])
    det = _det([_box(20, 0), _box(10, 0)], [0.9, 0.8])
    m = we.compute_class_metrics([gt], [det], "Vehicle", 1)
    assert m["num_gt"] == 1
    assert m["ap"] == pytest.approx(0.5, abs=1e-6)


def test_iou_threshold_per_class():
    gt = {"name": np.array(["Vehicle", "Pedestrian"]),
          "gt_boxes_lidar": np.array([_box(10, 0, dx=4.0), _box(5, 5, dx=1.0, dy=1.0)]),
          "num_points_in_gt": np.array([50, 50])}
    # each detection is shifted by 0.3 of its length along x: IoU = 0.7 / 1.3 = 0.54 -> enough for a
    # pedestrian (0.5), not for a vehicle (0.7)
    det = {"name": np.array(["Vehicle", "Pedestrian"]),
           "boxes_lidar": np.array([_box(10 + 1.2, 0, dx=4.0), _box(5 + 0.3, 5, dx=1.0, dy=1.0)]),
           "score": np.array([0.9, 0.9])}
    assert we.compute_class_metrics([gt], [det], "Vehicle", 2)["ap"] == 0.0
    assert we.compute_class_metrics([gt], [det], "Pedestrian", 2)["ap"] == pytest.approx(1.0, abs=1e-6)


def test_frame_count_mismatch_is_an_error():
    gt = _gt([_box(10, 0)], [10])
    det = _det([_box(10, 0)], [0.9])
    with pytest.raises(ValueError, match="2 ground-truth frames but 1"):
        we.compute_class_metrics([gt, gt], [det], "Vehicle", 1)
    bad = dict(det, score=np.array([0.9, 0.8], np.float32))
    with pytest.raises(ValueError, match="detection frame 0 has 1 boxes but 2 scores"):
        we.compute_class_metrics([gt], [bad], "Vehicle", 1)


def test_equals_the_official_metric_on_random_cases():
    """Every cell (class x level x overall / range) of AP and APH within 1e-3 of the official op; runs where the
    official package imports here or WAYMO_OFFICIAL_PYTHON names an environment that has it (docs/DATASETS.md)."""
    python = crosscheck.official_python()
    if python is None:
        pytest.skip("the official Waymo metric (waymo-open-dataset-tf-2-12-0) is not importable and "
                    "WAYMO_OFFICIAL_PYTHON is not set; see docs/DATASETS.md")
    cases = {f"case{i}": crosscheck.random_case(100 + i, num_frames=25) for i in range(4)}
    table = crosscheck.compare(cases, python)
    assert len(table) == 3 * 2 * 4
    worst = {cell: max(row["ap"], row["aph"]) for cell, row in table.items()}
    assert max(worst.values()) < 1e-3, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    # the cases are not degenerate: the official APs spread over (0, 1)
    aps = [ap for row in table.values() for ap in row["official_ap"]]
    assert 0.05 < np.median(aps) < 0.95


def test_random_cases_are_seeded_and_official_inputs_drop_empty_boxes():
    a, b = crosscheck.random_case(3, 5), crosscheck.random_case(3, 5)
    np.testing.assert_array_equal(a[0][0]["gt_boxes_lidar"], b[0][0]["gt_boxes_lidar"])
    arrays = crosscheck.official_inputs(*a)
    n_with_points = sum(int((g["num_points_in_gt"] > 0).sum()) for g in a[0])
    assert len(arrays["gt_bbox"]) == n_with_points == len(arrays["gt_difficulty"])
    assert set(np.unique(arrays["gt_difficulty"])) <= {1, 2}
