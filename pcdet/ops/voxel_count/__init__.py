"""Voxel point counts: which voxel each point falls in and how many points each occupied voxel holds.

A point is inside the grid when, for each axis, ``c = floor((x - xmin) / vx)`` computed in the points' dtype
satisfies ``0 <= c < nx`` with ``nx = round((xmax - xmin) / vx)``; that is ``x in [xmin, xmax)`` up to the
rounding of that expression (a point exactly on ``xmax`` is outside, one exactly on ``xmin`` inside).
"""
from .. import _loader
from .reference import check_voxel_args, voxel_point_counts_reference

EXT_NAME = "pcdet.ops.voxel_count.voxel_count_ext"

__all__ = ["voxel_point_counts", "voxel_point_counts_reference"]


def voxel_point_counts(points, point_cloud_range, voxel_size, with_batch_idx=False, use_reference=False):
    """Occupied voxels with their exact (uncapped) point counts. Deterministic on every device.

    Args:
        points: (N, 3+) [x, y, z, ...] or, with ``with_batch_idx``, (N, 4+) [b, x, y, z, ...] float32/float64;
            the batch index must be a non-negative integer value.
        point_cloud_range: [xmin, ymin, zmin, xmax, ymax, zmax] (list, array or tensor).
        voxel_size: [vx, vy, vz].
        with_batch_idx: column 0 of ``points`` is the batch index.
        use_reference: force the PyTorch reference path (tests, debugging).
    Returns:
        coords: (V, 3) [z, y, x] or (V, 4) [b, z, y, x] int64, sorted ascending by (b, z, y, x);
        counts: (V,) int64, number of points in each voxel (no cap);
        point2voxel: (N,) int64 row of ``coords`` for each point, -1 for points outside the range.
    """
    lo, vs, grid = check_voxel_args(points, point_cloud_range, voxel_size, with_batch_idx)
    if not use_reference:
        ext = _loader.extension_for(EXT_NAME, points)
        if ext is not None:
            return tuple(ext.voxel_point_counts(points.detach().contiguous(), lo, vs, grid, bool(with_batch_idx)))
    return voxel_point_counts_reference(points, point_cloud_range, voxel_size, with_batch_idx)
