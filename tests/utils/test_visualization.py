"""draw_bev writes a PNG of the expected size with boxes drawn where they are in the scene."""
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from pcdet.utils import visualization


def _pixel(x, y, pc_range, ppm):
    """(row, col) of LiDAR (x, y) in the image."""
    return int((pc_range[4] - y) * ppm), int((x - pc_range[0]) * ppm)


def _is_color(rgb, color, tol=0.15):
    return np.abs(np.asarray(rgb[:3]) - np.asarray(color)).max() < tol


def test_png_size_and_box_colours(tmp_path):
    pc_range = [0.0, -20.0, -3.0, 40.0, 20.0, 1.0]
    ppm = 10.0
    gt = np.array([[10.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0]], np.float32)
    pred = torch.tensor([[30.0, -10.0, -1.0, 4.0, 2.0, 1.5, np.pi / 2]])
    teacher = np.array([[10.0, -15.0, -1.0, 4.0, 2.0, 1.5, 0.0]], np.float32)
    points = np.array([[20.0, 10.0, 0.5, 0.0], [5.0, 15.0, -2.5, 0.0]], np.float32)
    out = visualization.draw_bev(points, gt_boxes=gt, pred_boxes=pred, pred_scores=torch.tensor([0.9]),
                                 pred_labels=torch.tensor([1]), class_names=["Car"],
                                 out_file=tmp_path / "sub" / "bev.png", point_cloud_range=pc_range,
                                 extra_box_sets={"teacher": (teacher, (0.0, 0.0, 1.0))}, pixels_per_meter=ppm)
    img = mpimg.imread(out)
    assert img.shape[:2] == (400, 400)
    # GT box rear edge (x = 8) and left edge (y = +1) are green; its centre is background (black).
    assert _is_color(img[_pixel(8.0, 0.5, pc_range, ppm)], visualization.GT_COLOR)
    assert _is_color(img[_pixel(9.0, 1.0, pc_range, ppm)], visualization.GT_COLOR)
    assert _is_color(img[_pixel(9.0, 0.5, pc_range, ppm)], (0, 0, 0))
    # Heading tick from the centre to the front: (11, 0) lies on it.
    assert _is_color(img[_pixel(11.0, 0.0, pc_range, ppm)], visualization.GT_COLOR)
    # Prediction rotated 90 deg: its edge at y = -12 spans x in [29, 31].
    assert _is_color(img[_pixel(30.5, -12.0, pc_range, ppm)], visualization.PRED_COLOR)
    assert _is_color(img[_pixel(29.0, -11.5, pc_range, ppm)], visualization.PRED_COLOR)
    assert _is_color(img[_pixel(8.0, -15.0, pc_range, ppm)], (0.0, 0.0, 1.0))
    # Points are drawn (not background) at their location.
    assert not _is_color(img[_pixel(20.0, 10.0, pc_range, ppm)], (0, 0, 0), tol=0.05)


def test_auto_range_and_errors(tmp_path):
    out = visualization.draw_bev(np.zeros((0, 4), np.float32), gt_boxes=np.array([[0, 0, 0, 2, 2, 2, 0.3]]),
                                 out_file=tmp_path / "auto.png", pixels_per_meter=5)
    img = mpimg.imread(out)
    assert img.shape[0] == img.shape[1] and 20 <= img.shape[0] <= 40
    with pytest.raises(ValueError, match="pred_boxes"):
        visualization.draw_bev(None, pred_boxes=np.zeros((2, 5)), out_file=tmp_path / "bad.png")
