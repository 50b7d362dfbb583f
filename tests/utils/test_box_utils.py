"""box_utils conversions with a tiny fake calibration and hand-computed corners."""
import math

import numpy as np
import pytest
import torch

from pcdet.utils import box_utils


class _FakeCalib:
    """Rect camera (x right, y down, z forward) = LiDAR (x fwd, y left, z up) rotated, plus an offset."""
    offset = np.array([0.1, -0.2, 0.3])
    f, cu, cv = 500.0, 300.0, 100.0

    def rect_to_lidar(self, pts):
        pts = np.asarray(pts, dtype=np.float64)
        return np.stack([pts[:, 2], -pts[:, 0], -pts[:, 1]], axis=1) + self.offset

    def lidar_to_rect(self, pts):
        p = np.asarray(pts, dtype=np.float64) - self.offset
        return np.stack([-p[:, 1], -p[:, 2], p[:, 0]], axis=1)

    def rect_to_img(self, pts_rect):
        pts = np.asarray(pts_rect, dtype=np.float64)
        depth = pts[:, 2]
        return np.stack([self.f * pts[:, 0] / depth + self.cu, self.f * pts[:, 1] / depth + self.cv], 1), depth


def test_corners_order_and_roundtrip():
    boxes = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 0.0], [0, 0, 0, 4, 2, 1, math.pi / 2]], np.float32)
    corners = box_utils.boxes_to_corners_3d(boxes)
    assert corners.shape == (2, 8, 3)
    np.testing.assert_allclose(corners[0, 0], [3, 3, 2.5])
    np.testing.assert_allclose(corners[0, 2], [-1, 1, 2.5])
    np.testing.assert_allclose(corners[0, 6], [-1, 1, 3.5])
    # Heading 90 deg: the box front (+dx/2 along heading) points to +y.
    np.testing.assert_allclose(corners[1, 0], [-1, 2, -0.5], atol=1e-6)
    torch_corners = box_utils.boxes_to_corners_3d(torch.from_numpy(boxes))
    np.testing.assert_allclose(torch_corners.numpy(), corners)
    back = box_utils.corners_to_boxes_3d(corners)
    np.testing.assert_allclose(back, boxes, atol=1e-5)


def test_camera_lidar_roundtrip_and_heading():
    calib = _FakeCalib()
    cam = np.array([[1.0, 1.5, 10.0, 4.0, 1.5, 1.8, 0.0], [-2.0, 1.0, 20.0, 3.0, 1.6, 1.5, 0.7]], np.float32)
    lidar = box_utils.boxes3d_kitti_camera_to_lidar(cam, calib)
    # ry = 0: the car faces camera +x = LiDAR -y -> heading -pi/2; centre raised by h/2.
    np.testing.assert_allclose(lidar[0], [10.1, -1.2, -1.5 + 0.75 + 0.3, 4.0, 1.8, 1.5, -math.pi / 2],
                               atol=1e-5)
    np.testing.assert_allclose(box_utils.boxes3d_lidar_to_kitti_camera(lidar, calib), cam, atol=1e-5)
    # LiDAR and camera corner sets describe the same box.
    lidar_corners = box_utils.boxes_to_corners_3d(lidar).reshape(-1, 3)
    cam_corners = box_utils.boxes3d_to_corners3d_kitti_camera(cam).reshape(-1, 3)
    cam_in_lidar = calib.rect_to_lidar(cam_corners).reshape(2, 8, 3)
    for k in range(2):
        d = np.linalg.norm(cam_in_lidar[k][:, None] - lidar_corners.reshape(2, 8, 3)[k][None], axis=-1)
        assert d.min(axis=1).max() < 1e-4


def test_image_boxes():
    calib = _FakeCalib()
    cam = np.array([[0.0, 1.0, 10.0, 2.0, 1.0, 2.0, 0.0]], np.float32)
    boxes2d = box_utils.boxes3d_kitti_camera_to_imageboxes(cam, calib)
    # Nearest face at z = 9: x = +-1 -> u = 300 +- 500/9; y in [0, 1] -> v from 100 to 100 + 500/9.
    np.testing.assert_allclose(boxes2d[0], [300 - 500 / 9, 100, 300 + 500 / 9, 100 + 500 / 9], rtol=1e-5)
    clipped = box_utils.boxes3d_kitti_camera_to_imageboxes(cam, calib, image_shape=(120, 330))
    np.testing.assert_allclose(clipped[0], [300 - 500 / 9, 100, 329, 119], rtol=1e-5)


def test_mask_outside_range_and_enlarge():
    boxes = np.array([[0, 0, 0, 2, 2, 2, 0], [10.5, 0, 0, 2, 2, 2, 0], [20, 0, 0, 2, 2, 2, 0]], np.float32)
    limit = np.array([-10, -10, -3, 10, 10, 3], np.float32)
    assert box_utils.mask_boxes_outside_range_numpy(boxes, limit).tolist() == [True, True, False]
    assert box_utils.mask_boxes_outside_range_numpy(boxes, limit, min_num_corners=8).tolist() == [True, False, False]
    big = box_utils.enlarge_box3d(boxes, extra_width=(0.2, 0.4, 0.6))
    np.testing.assert_allclose(big[:, 3:6], boxes[:, 3:6] + [0.2, 0.4, 0.6])
    np.testing.assert_allclose(big[:, :3], boxes[:, :3])


def test_aligned_bev_and_nearest_iou():
    boxes = torch.tensor([[0, 0, 0, 4, 2, 1, math.pi / 2], [0, 0, 0, 4, 2, 1, 0.2]])
    aligned = box_utils.boxes3d_lidar_to_aligned_bev_boxes(boxes)
    np.testing.assert_allclose(aligned.numpy(), [[-1, -2, 1, 2], [-2, -1, 2, 1]], atol=1e-6)
    iou = box_utils.boxes3d_nearest_bev_iou(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(4 / 12)
    assert iou[0, 0].item() == pytest.approx(1.0)


def test_remove_points_in_boxes():
    points = np.array([[0, 0, 0, 1], [5, 0, 0, 2]], np.float32)
    boxes = np.array([[0, 0, 0, 1, 1, 1, 0]], np.float32)
    assert box_utils.remove_points_in_boxes3d(points, boxes).tolist() == [[5, 0, 0, 2]]


def test_shape_errors_name_argument():
    with pytest.raises(ValueError, match="boxes3d"):
        box_utils.boxes_to_corners_3d(np.zeros((3, 5), np.float32))
