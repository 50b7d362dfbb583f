"""Per-sample processing after augmentation (``DATA_PROCESSOR`` list of the dataset config).

Steps, selected by ``NAME`` and run in config order:
  mask_points_and_boxes_outside_range (REMOVE_OUTSIDE_BOXES, optional min_num_corners),
  shuffle_points (SHUFFLE_ENABLED {train, test}),
  transform_points_to_voxels (VOXEL_SIZE, MAX_POINTS_PER_VOXEL, MAX_NUMBER_OF_VOXELS {train, test}).
"""
import numpy as np
import torch

from ... import batch_keys as K
from ...config_schema import opt, req
from ...ops.voxel_count import voxel_point_counts
from ...utils import box_utils, common_utils


def voxelize_points(points, point_cloud_range, voxel_size, max_points_per_voxel, max_num_voxels):
    """Group points into voxels.

    Voxels are ordered by the index of their first point, so when there are more than ``max_num_voxels`` the
    voxels whose first point comes earliest are kept (with shuffled points this is a random subset, as in
    spconv's ``PointToVoxel``). Inside a voxel the first ``max_points_per_voxel`` points in input order are kept.

    Args:
        points: (N, C) float, columns x, y, z first.
        point_cloud_range: (6,) ``[x0, y0, z0, x1, y1, z1]``.
        voxel_size: (3,) ``[vx, vy, vz]``.
    Returns:
        voxels (V, P, C) zero padded, coordinates (V, 3) int32 ``[z, y, x]``, num_points (V,) int32 (<= P),
        num_points_raw (V,) int32 (all points of the voxel, uncapped).
    """
    num_features = points.shape[1]
    empty = (np.zeros((0, max_points_per_voxel, num_features), dtype=points.dtype),
             np.zeros((0, 3), dtype=np.int32), np.zeros((0,), dtype=np.int32), np.zeros((0,), dtype=np.int32))
    if points.shape[0] == 0:
        return empty
    coords, counts, point2voxel = voxel_point_counts(
        torch.from_numpy(np.ascontiguousarray(points)), list(point_cloud_range), list(voxel_size))
    coords, counts, point2voxel = coords.numpy(), counts.numpy(), point2voxel.numpy()
    num_voxels = coords.shape[0]
    if num_voxels == 0:
        return empty

    inside = np.nonzero(point2voxel >= 0)[0]
    vox_of_pt = point2voxel[inside]
    # Stable sort by voxel id keeps the input order of points within each voxel.
    order = np.argsort(vox_of_pt, kind="stable")
    sorted_pts, sorted_vox = inside[order], vox_of_pt[order]
    group_start = np.searchsorted(sorted_vox, np.arange(num_voxels), side="left")
    first_point = sorted_pts[group_start]
    rank_in_voxel = np.arange(sorted_vox.shape[0]) - group_start[sorted_vox]

    voxel_order = np.argsort(first_point, kind="stable")[:max_num_voxels]
    new_id = np.full(num_voxels, -1, dtype=np.int64)
    new_id[voxel_order] = np.arange(voxel_order.shape[0])

    keep = (rank_in_voxel < max_points_per_voxel) & (new_id[sorted_vox] >= 0)
    voxels = np.zeros((voxel_order.shape[0], max_points_per_voxel, num_features), dtype=points.dtype)
    voxels[new_id[sorted_vox[keep]], rank_in_voxel[keep]] = points[sorted_pts[keep]]
    raw = counts[voxel_order].astype(np.int32)
    return (voxels, coords[voxel_order].astype(np.int32), np.minimum(raw, max_points_per_voxel).astype(np.int32),
            raw)


class DataProcessor:
    """Runs the ``DATA_PROCESSOR`` steps on a sample dict.

    Attributes set for the models: ``point_cloud_range`` (6,), ``voxel_size`` (3,) list or None,
    ``grid_size`` np.int64 ``[nx, ny, nz]`` or None (set by ``transform_points_to_voxels``).
    """

    # the keys of each step's block of DATA_PROCESSOR (besides NAME)
    STEP_SCHEMAS = {
        "mask_points_and_boxes_outside_range": {"REMOVE_OUTSIDE_BOXES": opt(bool), "min_num_corners": opt(int)},
        "shuffle_points": {"SHUFFLE_ENABLED": req(dict, keys={"train": req(bool), "test": req(bool)})},
        "transform_points_to_voxels": {
            "VOXEL_SIZE": req(list), "MAX_POINTS_PER_VOXEL": req(int),
            "MAX_NUMBER_OF_VOXELS": req(dict, keys={"train": req(int), "test": req(int)})},
    }
    STEPS = tuple(STEP_SCHEMAS)

    def __init__(self, processor_configs, point_cloud_range, training, num_point_features):
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32)
        self.training = training
        self.num_point_features = num_point_features
        self.mode = "train" if training else "test"
        self.grid_size = None
        self.voxel_size = None
        self.data_processor_queue = []
        for cur_cfg in processor_configs:
            if cur_cfg.NAME not in self.STEPS:
                raise ValueError(f"DATA_PROCESSOR: unknown NAME '{cur_cfg.NAME}' (known: {self.STEPS})")
            self.data_processor_queue.append((getattr(self, cur_cfg.NAME), cur_cfg))
            if cur_cfg.NAME == "transform_points_to_voxels":
                self._set_grid(cur_cfg.VOXEL_SIZE)

    def _set_grid(self, voxel_size):
        voxel_size = np.asarray(voxel_size, dtype=np.float32)
        extent = self.point_cloud_range[3:6] - self.point_cloud_range[0:3]
        self.grid_size = np.round(extent / voxel_size).astype(np.int64)
        self.voxel_size = [float(v) for v in voxel_size]

    def mask_points_and_boxes_outside_range(self, data_dict, config):
        if data_dict.get(K.POINTS) is not None:
            mask = common_utils.mask_points_by_range(data_dict[K.POINTS], self.point_cloud_range)
            data_dict[K.POINTS] = data_dict[K.POINTS][mask]
        if data_dict.get(K.GT_BOXES) is not None and config.get("REMOVE_OUTSIDE_BOXES", True) and self.training:
            mask = box_utils.mask_boxes_outside_range_numpy(
                data_dict[K.GT_BOXES], self.point_cloud_range, min_num_corners=config.get("min_num_corners", 1))
            data_dict[K.GT_BOXES] = data_dict[K.GT_BOXES][mask]
            if data_dict.get(K.GT_NAMES) is not None:
                data_dict[K.GT_NAMES] = data_dict[K.GT_NAMES][mask]
        return data_dict

    def shuffle_points(self, data_dict, config):
        if config.SHUFFLE_ENABLED[self.mode]:
            points = data_dict[K.POINTS]
            data_dict[K.POINTS] = points[np.random.permutation(points.shape[0])]
        return data_dict

    def transform_points_to_voxels(self, data_dict, config):
        points = data_dict[K.POINTS]
        voxels, coords, num_points, num_points_raw = voxelize_points(
            points, self.point_cloud_range, config.VOXEL_SIZE, config.MAX_POINTS_PER_VOXEL,
            config.MAX_NUMBER_OF_VOXELS[self.mode])
        if not data_dict.get(K.USE_LEAD_XYZ, True):
            voxels = voxels[..., 3:]
        data_dict[K.VOXELS] = voxels
        data_dict[K.VOXEL_COORDS] = coords
        data_dict[K.VOXEL_NUM_POINTS] = num_points
        data_dict[K.VOXEL_NUM_POINTS_RAW] = num_points_raw
        return data_dict

    def forward(self, data_dict):
        """Apply the configured steps in order; ``data_dict`` holds ``points`` (N, C) and, optionally,
        ``gt_boxes`` (M, 7 + C) and ``gt_names`` (M,)."""
        for step, cfg in self.data_processor_queue:
            data_dict = step(data_dict, cfg)
        return data_dict
