"""Box conversions and geometry helpers (numpy and torch inputs, as in OpenPCDet).

LiDAR boxes are ``[x, y, z, dx, dy, dz, heading]`` with the centre as origin (x forward, y left, z up,
heading from +x towards +y). KITTI camera boxes are ``[x, y, z, l, h, w, ry]`` in rectified camera
coordinates (x right, y down, z forward) with the bottom centre as origin.

The ``calib`` objects used here need OpenPCDet's ``Calibration`` methods: ``rect_to_lidar(pts (N, 3))``,
``lidar_to_rect(pts (N, 3))`` and ``rect_to_img(pts_rect (N, 3)) -> (pts_img (N, 2), depth (N,))``.
"""
import numpy as np
import torch

# Unit-box corner signs in OpenPCDet's order: bottom face (z = -dz/2) then top face, each counter-clockwise
# seen from above starting at the front-left corner (+x, +y).
_CORNER_SIGNS = np.array([
    [1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
    [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1],
], dtype=np.float32) / 2.0


def _to_torch(x):
    """Return ``(tensor, was_numpy)``; numpy arrays become CPU tensors sharing memory where possible."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x), True
    if isinstance(x, torch.Tensor):
        return x, False
    raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")


def _check_boxes(boxes, name, min_cols=7):
    if boxes.ndim != 2 or boxes.shape[1] < min_cols:
        raise ValueError(f"{name} must have shape (N, {min_cols}+), got {tuple(boxes.shape)}")


def limit_period(val, offset=0.5, period=np.pi):
    """Wrap ``val`` (any shape, numpy or torch) into ``[-offset * period, (1 - offset) * period)``."""
    if isinstance(val, torch.Tensor):
        return val - torch.floor(val / period + offset) * period
    return val - np.floor(val / period + offset) * period


def rotate_points_along_z(points, angle):
    """Rotate points about the z axis, counter-clockwise seen from above.

    Args:
        points: (B, N, 3 + C) numpy or torch.
        angle: (B,) angle in radians, one per batch element.
    Returns:
        (B, N, 3 + C) of the input's type; channels after xyz are passed through.
    """
    pts, is_numpy = _to_torch(points)
    ang, _ = _to_torch(angle)
    ang = ang.to(pts.dtype)
    if pts.ndim != 3 or pts.shape[-1] < 3 or ang.shape != (pts.shape[0],):
        raise ValueError(f"points must be (B, N, 3+C) and angle (B,), got {tuple(pts.shape)} and "
                         f"{tuple(ang.shape)}")
    cosa, sina = torch.cos(ang), torch.sin(ang)
    zeros, ones = torch.zeros_like(ang), torch.ones_like(ang)
    # Row-vector convention: p_rot = p @ R^T, so the matrix below is R^T.
    rot_t = torch.stack((cosa, sina, zeros, -sina, cosa, zeros, zeros, zeros, ones), dim=1).view(-1, 3, 3)
    out = torch.cat((torch.matmul(pts[:, :, 0:3], rot_t), pts[:, :, 3:]), dim=-1)
    return out.numpy() if is_numpy else out


def boxes_to_corners_3d(boxes3d):
    """Corners of LiDAR boxes.

    Args:
        boxes3d: (N, 7+) ``[x, y, z, dx, dy, dz, heading, ...]``, numpy or torch.
    Returns:
        (N, 8, 3) corners in OpenPCDet order (see ``_CORNER_SIGNS``)::

              7 -------- 4
             /|         /|
            6 -------- 5 .
            | |        | |
            . 3 -------- 0
            |/         |/
            2 -------- 1
    """
    boxes, is_numpy = _to_torch(boxes3d)
    _check_boxes(boxes, "boxes3d")
    signs = torch.from_numpy(_CORNER_SIGNS).to(device=boxes.device, dtype=boxes.dtype)
    corners = boxes[:, None, 3:6] * signs[None, :, :]
    corners = rotate_points_along_z(corners, boxes[:, 6])
    corners = corners + boxes[:, None, 0:3]
    return corners.numpy() if is_numpy else corners


def corners_to_boxes_3d(corners):
    """Inverse of ``boxes_to_corners_3d`` for corners of upright boxes.

    Args:
        corners: (N, 8, 3) numpy or torch, OpenPCDet order.
    Returns:
        (N, 7) ``[x, y, z, dx, dy, dz, heading]`` with heading in ``[-pi, pi)``.
    """
    c, is_numpy = _to_torch(corners)
    if c.ndim != 3 or tuple(c.shape[1:]) != (8, 3):
        raise ValueError(f"corners must have shape (N, 8, 3), got {tuple(c.shape)}")
    center = c.mean(dim=1)
    front = (c[:, 0, :2] + c[:, 1, :2]) / 2 - (c[:, 2, :2] + c[:, 3, :2]) / 2
    dx = torch.linalg.norm(c[:, 0, :2] - c[:, 3, :2], dim=-1)
    dy = torch.linalg.norm(c[:, 0, :2] - c[:, 1, :2], dim=-1)
    dz = c[:, 4, 2] - c[:, 0, 2]
    heading = limit_period(torch.atan2(front[:, 1], front[:, 0]), 0.5, 2 * np.pi)
    out = torch.cat((center, torch.stack((dx, dy, dz, heading), dim=-1)), dim=-1)
    return out.numpy() if is_numpy else out


def mask_boxes_outside_range_numpy(boxes, limit_range, min_num_corners=1):
    """Boxes with at least ``min_num_corners`` corners inside the range.

    Args:
        boxes: (N, 7+) numpy LiDAR boxes.
        limit_range: (6,) ``[x_min, y_min, z_min, x_max, y_max, z_max]``.
        min_num_corners: int in [1, 8].
    Returns:
        (N,) bool numpy mask.
    """
    boxes = np.asarray(boxes)
    limit_range = np.asarray(limit_range)
    if limit_range.shape != (6,):
        raise ValueError(f"limit_range must have shape (6,), got {limit_range.shape}")
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=bool)
    corners = boxes_to_corners_3d(boxes[:, 0:7])
    inside = ((corners >= limit_range[0:3]) & (corners <= limit_range[3:6])).all(axis=2)
    return inside.sum(axis=1) >= min_num_corners


def enlarge_box3d(boxes3d, extra_width=(0, 0, 0)):
    """Grow box sizes by ``extra_width``.

    Args:
        boxes3d: (N, 7+) numpy or torch LiDAR boxes.
        extra_width: (3,) added to ``dx, dy, dz`` (the centre is unchanged).
    Returns:
        (N, 7+) new array/tensor of the input's type.
    """
    boxes, is_numpy = _to_torch(boxes3d)
    _check_boxes(boxes, "boxes3d")
    large = boxes.clone()
    large[:, 3:6] += torch.as_tensor(extra_width, dtype=boxes.dtype, device=boxes.device)
    return large.numpy() if is_numpy else large


def boxes3d_kitti_camera_to_lidar(boxes3d_camera, calib):
    """KITTI camera boxes to LiDAR boxes.

    Args:
        boxes3d_camera: (N, 7) numpy ``[x, y, z, l, h, w, ry]``, rectified camera frame, bottom centre.
        calib: calibration object with ``rect_to_lidar``.
    Returns:
        (N, 7) numpy ``[x, y, z, dx, dy, dz, heading]``, LiDAR frame, centre origin.
    """
    boxes = np.asarray(boxes3d_camera, dtype=np.float32)
    _check_boxes(boxes, "boxes3d_camera")
    xyz_camera, r = boxes[:, 0:3], boxes[:, 6:7]
    l, h, w = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6]
    xyz_lidar = np.asarray(calib.rect_to_lidar(xyz_camera), dtype=np.float32).reshape(-1, 3).copy()
    xyz_lidar[:, 2:3] += h / 2
    return np.concatenate([xyz_lidar, l, w, h, -(r + np.pi / 2)], axis=-1).astype(np.float32)


def boxes3d_lidar_to_kitti_camera(boxes3d_lidar, calib):
    """LiDAR boxes to KITTI camera boxes (inverse of ``boxes3d_kitti_camera_to_lidar``).

    Args:
        boxes3d_lidar: (N, 7+) numpy ``[x, y, z, dx, dy, dz, heading]``.
        calib: calibration object with ``lidar_to_rect``.
    Returns:
        (N, 7) numpy ``[x, y, z, l, h, w, ry]``, rectified camera frame, bottom centre.
    """
    boxes = np.asarray(boxes3d_lidar, dtype=np.float32)
    _check_boxes(boxes, "boxes3d_lidar")
    xyz_lidar = boxes[:, 0:3].copy()
    l, w, h, r = boxes[:, 3:4], boxes[:, 4:5], boxes[:, 5:6], boxes[:, 6:7]
    xyz_lidar[:, 2:3] -= h / 2
    xyz_cam = np.asarray(calib.lidar_to_rect(xyz_lidar), dtype=np.float32).reshape(-1, 3)
    return np.concatenate([xyz_cam, l, h, w, -r - np.pi / 2], axis=-1).astype(np.float32)


def boxes3d_to_corners3d_kitti_camera(boxes3d, bottom_center=True):
    """Corners of KITTI camera boxes.

    Args:
        boxes3d: (N, 7) numpy ``[x, y, z, l, h, w, ry]`` in the rectified camera frame.
        bottom_center: whether ``(x, y, z)`` is the bottom centre (KITTI labels) or the box centre.
    Returns:
        (N, 8, 3) numpy corners: bottom face 0-3 then top face 4-7 (camera y points down, so the top face has
        the smaller y).
    """
    boxes = np.asarray(boxes3d, dtype=np.float32)
    _check_boxes(boxes, "boxes3d")
    n = boxes.shape[0]
    l, h, w, ry = boxes[:, 3], boxes[:, 4], boxes[:, 5], boxes[:, 6]
    half = np.float32(0.5)
    x_c = np.stack([l, l, -l, -l, l, l, -l, -l], axis=1) * half
    z_c = np.stack([w, -w, -w, w, w, -w, -w, w], axis=1) * half
    if bottom_center:
        y_c = np.concatenate([np.zeros((n, 4), np.float32), -np.repeat(h[:, None], 4, axis=1)], axis=1)
    else:
        y_c = np.concatenate([np.repeat(h[:, None], 4, axis=1), -np.repeat(h[:, None], 4, axis=1)], axis=1) * half
    cos_r, sin_r = np.cos(ry)[:, None], np.sin(ry)[:, None]
    # Rotation about camera y: a local +x axis maps to (cos ry, 0, -sin ry).
    x_rot = cos_r * x_c + sin_r * z_c
    z_rot = -sin_r * x_c + cos_r * z_c
    corners = np.stack([x_rot, y_c, z_rot], axis=-1) + boxes[:, None, 0:3]
    return corners.astype(np.float32)


def boxes3d_kitti_camera_to_imageboxes(boxes3d, calib, image_shape=None):
    """2D image boxes enclosing the projected corners of KITTI camera boxes.

    Args:
        boxes3d: (N, 7) numpy ``[x, y, z, l, h, w, ry]`` (rectified camera frame, bottom centre).
        calib: calibration object with ``rect_to_img``.
        image_shape: optional ``(height, width)``; boxes are clipped to the image when given.
    Returns:
        (N, 4) numpy ``[x1, y1, x2, y2]`` in pixels.
    """
    corners = boxes3d_to_corners3d_kitti_camera(boxes3d)
    if corners.shape[0] == 0:
        return np.zeros((0, 4), dtype=np.float32)
    pts_img, _ = calib.rect_to_img(corners.reshape(-1, 3))
    pts_img = np.asarray(pts_img).reshape(-1, 8, 2)
    boxes2d = np.concatenate([pts_img.min(axis=1), pts_img.max(axis=1)], axis=1).astype(np.float32)
    if image_shape is not None:
        height, width = int(image_shape[0]), int(image_shape[1])
        boxes2d[:, 0] = np.clip(boxes2d[:, 0], 0, width - 1)
        boxes2d[:, 1] = np.clip(boxes2d[:, 1], 0, height - 1)
        boxes2d[:, 2] = np.clip(boxes2d[:, 2], 0, width - 1)
        boxes2d[:, 3] = np.clip(boxes2d[:, 3], 0, height - 1)
    return boxes2d


def boxes_iou_normal(boxes_a, boxes_b):
    """IoU of axis-aligned 2D boxes.

    Args:
        boxes_a: (N, 4) torch ``[x1, y1, x2, y2]``.
        boxes_b: (M, 4) torch.
    Returns:
        (N, M) torch IoU.
    """
    if boxes_a.shape[-1] != 4 or boxes_b.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}")
    x_min = torch.max(boxes_a[:, 0, None], boxes_b[None, :, 0])
    x_max = torch.min(boxes_a[:, 2, None], boxes_b[None, :, 2])
    y_min = torch.max(boxes_a[:, 1, None], boxes_b[None, :, 1])
    y_max = torch.min(boxes_a[:, 3, None], boxes_b[None, :, 3])
    inter = torch.clamp(x_max - x_min, min=0) * torch.clamp(y_max - y_min, min=0)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    return inter / torch.clamp(area_a[:, None] + area_b[None, :] - inter, min=1e-6)


def boxes3d_lidar_to_aligned_bev_boxes(boxes3d):
    """Axis-aligned BEV boxes nearest to rotated LiDAR boxes (sizes swapped when |heading| is nearer 90 deg).

    Args:
        boxes3d: (N, 7+) torch ``[x, y, z, dx, dy, dz, heading]``.
    Returns:
        (N, 4) torch ``[x1, y1, x2, y2]``.
    """
    _check_boxes(boxes3d, "boxes3d")
    rot_angle = limit_period(boxes3d[:, 6], offset=0.5, period=np.pi).abs()
    swap = (rot_angle > np.pi / 4)[:, None]
    dims = torch.where(swap, boxes3d[:, [4, 3]], boxes3d[:, 3:5])
    return torch.cat((boxes3d[:, 0:2] - dims / 2, boxes3d[:, 0:2] + dims / 2), dim=1)


def boxes3d_nearest_bev_iou(boxes_a, boxes_b):
    """IoU of the nearest axis-aligned BEV boxes.

    Args:
        boxes_a: (N, 7+) torch LiDAR boxes.
        boxes_b: (M, 7+) torch LiDAR boxes.
    Returns:
        (N, M) torch IoU.
    """
    return boxes_iou_normal(boxes3d_lidar_to_aligned_bev_boxes(boxes_a),
                            boxes3d_lidar_to_aligned_bev_boxes(boxes_b))


def remove_points_in_boxes3d(points, boxes3d):
    """Drop the points inside any box.

    Args:
        points: (N, 3 + C) numpy or torch.
        boxes3d: (M, 7+) LiDAR boxes of the same type.
    Returns:
        (N', 3 + C) points outside every box.
    """
    from pcdet.ops.roiaware_pool3d.roiaware_pool3d_utils import points_in_boxes_cpu
    pts, is_numpy = _to_torch(points)
    boxes, _ = _to_torch(boxes3d)
    if boxes.shape[0] == 0:
        return points
    mask = points_in_boxes_cpu(pts[:, 0:3], boxes[:, 0:7])
    keep = mask.sum(dim=0) == 0
    out = pts[keep]
    return out.numpy() if is_numpy else out
