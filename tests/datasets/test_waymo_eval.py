"""Waymo-style AP / APH on hand-built frames whose values are derived by hand in the comments."""
import numpy as np
import pytest

from pcdet.datasets.waymo import waymo_eval as we


def _box(x, y, heading=0.0, dx=2.0, dy=2.0):
    return [x, y, 0.0, dx, dy, 1.5, heading]


def _frame():
    # g1, g2: LEVEL_1 (10 points); g3: LEVEL_2 (3 points) at 40 m; g4: no points (ignored everywhere).
    gt = {"name": np.array(["Vehicle"] * 4),
          "gt_boxes_lidar": np.array([_box(10, 0), _box(20, 5), _box(40, 0), _box(-15, -15)]),
          "num_points_in_gt": np.array([10, 10, 3, 0])}
    # d4 (0.95) on g3 exact; d1 (0.9) on g1 with heading pi/2 (square box: IoU 1, h = 0.5);
    # d2 (0.8) on nothing (26.9 m away from the sensor); d3 (0.7) on g2 exact.
    det = {"name": np.array(["Vehicle"] * 4),
           "boxes_lidar": np.array([_box(40, 0), _box(10, 0, np.pi / 2), _box(25, -10), _box(20, 5)]),
           "score": np.array([0.95, 0.9, 0.8, 0.7])}
    return gt, det


def test_heading_accuracy_wraps_around():
    h = we.heading_accuracy([0.0, np.pi / 2, np.pi, -3.0, 2 * np.pi], [0.0, 0.0, 0.0, 3.0, 0.0])
    expected = [1.0, 0.5, 0.0, 1.0 - (2 * np.pi - 6.0) / np.pi, 1.0]
    np.testing.assert_allclose(h, expected, atol=1e-12)


def test_levels_by_point_count_and_label():
    np.testing.assert_array_equal(we.gt_levels([0, 1, 5, 6, 100], [0, 0, 0, 0, 2]), [0, 2, 2, 1, 2])


def test_level_1_ignores_detections_of_level_2_boxes():
    gt, det = _frame()
    m = we.compute_class_metrics([gt], [det], "Vehicle", level=1)
    # ranking without d4: TP(h .5), FP, TP(h 1); precision 1, 1/2, 2/3; recall 1/2, 1/2, 1
    # AP = 1/2 * 1 + 1/2 * 2/3; APH: weighted precision .5, .25, .5 over weighted recall .25, .25, .75
    assert m["num_gt"] == 2 and m["num_det"] == 3 and m["num_tp"] == 2
    assert m["ap"] == pytest.approx(0.5 + 1 / 3)
    assert m["aph"] == pytest.approx(0.25 * 0.5 + 0.5 * 0.5)


def test_level_2_counts_all_boxes_with_points():
    gt, det = _frame()
    m = we.compute_class_metrics([gt], [det], "Vehicle", level=2)
    # TP, TP, FP, TP over 3 gt: precision 1, 1, 2/3, 3/4 -> AP = 1/3 + 1/3 + 1/3 * 3/4
    assert m["num_gt"] == 3 and m["num_tp"] == 3
    assert m["ap"] == pytest.approx(2 / 3 + 0.25)
    # heading weights 1, .5, 0, 1: precision 1, .75, .5, .625 at recall 1/3, 1/2, 1/2, 5/6
    assert m["aph"] == pytest.approx(1 / 3 + (1 / 6) * 0.75 + (1 / 3) * 0.625)


def test_range_breakdown_and_summary_keys():
    gt, det = _frame()
    _, res = we.waymo_evaluation([gt], [det], ["Vehicle", "Pedestrian"])
    assert res["Vehicle/LEVEL_2/AP_30_50"] == pytest.approx(1.0)
    assert res["Vehicle/LEVEL_2/AP_0_30"] == pytest.approx(0.5 + 1 / 3)
    assert res["Vehicle/LEVEL_2/AP_50_inf"] == 0.0
    assert res["Vehicle/LEVEL_1/num_gt"] == 2
    # Pedestrian has no ground truth: it is reported but left out of the means.
    assert res["mAP_LEVEL_1"] == pytest.approx(0.5 + 1 / 3)
    assert res["mAPH_LEVEL_2"] == pytest.approx(res["Vehicle/LEVEL_2/APH"])


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
    assert we.compute_class_metrics([gt], [det], "Pedestrian", 2)["ap"] == pytest.approx(1.0)


def test_average_precision_edge_cases():
    assert we.average_precision([], 3) == 0.0
    assert we.average_precision([1, 1], 0) == 0.0
    assert we.average_precision([0, 1], 1) == pytest.approx(0.5)


def test_frame_count_mismatch_is_an_error():
    gt, det = _frame()
    with pytest.raises(ValueError, match="2 ground-truth frames but 1"):
        we.compute_class_metrics([gt, gt], [det], "Vehicle", 1)
