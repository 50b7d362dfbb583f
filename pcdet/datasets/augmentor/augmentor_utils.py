"""Whole-scene augmentations applied to points and boxes together.

Boxes are (M, 7 + C) ``[x, y, z, dx, dy, dz, heading, ...]`` in LiDAR coordinates; points are (N, 3 + C).
Randomness comes from numpy's global RNG, which the dataloader seeds per worker
(``common_utils.worker_init_fn``). Each function returns the new arrays and the parameter it drew.
"""
import numpy as np

from ...utils import common_utils


def random_flip_along_x(gt_boxes, points, enable=None):
    """Mirror across the x axis (y -> -y) with probability 0.5; returns ``(gt_boxes, points, enabled)``."""
    if enable is None:
        enable = bool(np.random.choice([False, True], p=[0.5, 0.5]))
    if enable:
        gt_boxes = gt_boxes.copy()
        points = points.copy()
        gt_boxes[:, 1] = -gt_boxes[:, 1]
        gt_boxes[:, 6] = -gt_boxes[:, 6]
        points[:, 1] = -points[:, 1]
        if gt_boxes.shape[1] > 8:
            gt_boxes[:, 8] = -gt_boxes[:, 8]  # velocity vy
    return gt_boxes, points, enable


def random_flip_along_y(gt_boxes, points, enable=None):
    """Mirror across the y axis (x -> -x) with probability 0.5; returns ``(gt_boxes, points, enabled)``."""
    if enable is None:
        enable = bool(np.random.choice([False, True], p=[0.5, 0.5]))
    if enable:
        gt_boxes = gt_boxes.copy()
        points = points.copy()
        gt_boxes[:, 0] = -gt_boxes[:, 0]
        gt_boxes[:, 6] = -(gt_boxes[:, 6] + np.pi)
        points[:, 0] = -points[:, 0]
        if gt_boxes.shape[1] > 8:
            gt_boxes[:, 7] = -gt_boxes[:, 7]  # velocity vx
    return gt_boxes, points, enable


def global_rotation(gt_boxes, points, rot_range, noise_rotation=None):
    """Rotate the scene about +z by an angle drawn from ``U(rot_range)``; returns ``(gt_boxes, points, angle)``."""
    if noise_rotation is None:
        noise_rotation = float(np.random.uniform(rot_range[0], rot_range[1]))
    angle = np.array([noise_rotation], dtype=np.float32)
    points = common_utils.rotate_points_along_z(points[np.newaxis, :, :].astype(np.float32), angle)[0]
    gt_boxes = gt_boxes.copy()
    gt_boxes[:, 0:3] = common_utils.rotate_points_along_z(gt_boxes[np.newaxis, :, 0:3].astype(np.float32),
                                                          angle)[0]
    gt_boxes[:, 6] += noise_rotation
    if gt_boxes.shape[1] > 8:
        vel = np.concatenate((gt_boxes[:, 7:9], np.zeros((gt_boxes.shape[0], 1), dtype=gt_boxes.dtype)), axis=1)
        gt_boxes[:, 7:9] = common_utils.rotate_points_along_z(vel[np.newaxis].astype(np.float32), angle)[0][:, 0:2]
    return gt_boxes, points, noise_rotation


def global_scaling(gt_boxes, points, scale_range, noise_scale=None):
    """Scale positions and sizes by a factor drawn from ``U(scale_range)``; returns ``(gt_boxes, points, s)``."""
    if noise_scale is None:
        if scale_range[1] - scale_range[0] < 1e-3:
            noise_scale = 1.0
        else:
            noise_scale = float(np.random.uniform(scale_range[0], scale_range[1]))
    gt_boxes = gt_boxes.copy()
    points = points.copy()
    points[:, 0:3] *= noise_scale
    gt_boxes[:, 0:6] *= noise_scale
    if gt_boxes.shape[1] > 8:
        gt_boxes[:, 7:9] *= noise_scale
    return gt_boxes, points, noise_scale
