"""PyTorch reference of ``voxel_point_counts`` (any device; the test oracle of the compiled kernels)."""
import math

import torch


def check_voxel_args(points, point_cloud_range, voxel_size, with_batch_idx):
    """Validate the arguments of ``voxel_point_counts``.

    Returns:
        (range_min [3] float, voxel_size [3] float, grid_size [3] int as [nx, ny, nz]).
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 2:
        raise ValueError(f"points must be a 2-D tensor (N, 3+) or (N, 4+) with a batch index, "
                         f"got {type(points).__name__} of shape {tuple(getattr(points, 'shape', ()))}")
    min_cols = 4 if with_batch_idx else 3
    if points.shape[1] < min_cols:
        raise ValueError(f"points must have at least {min_cols} columns "
                         f"({'[b, x, y, z, ...]' if with_batch_idx else '[x, y, z, ...]'}), "
                         f"got shape {tuple(points.shape)}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    pcr = [float(v) for v in torch.as_tensor(point_cloud_range, dtype=torch.float64).flatten().tolist()]
    vs = [float(v) for v in torch.as_tensor(voxel_size, dtype=torch.float64).flatten().tolist()]
    if len(pcr) != 6:
        raise ValueError(f"point_cloud_range must have 6 values [xmin, ymin, zmin, xmax, ymax, zmax], got {pcr}")
    if len(vs) != 3 or min(vs) <= 0:
        raise ValueError(f"voxel_size must be 3 positive values [vx, vy, vz], got {vs}")
    # Same rounding as OpenPCDet's grid_size, so a range that is a whole number of voxels gives that number.
    grid = [int(round((pcr[i + 3] - pcr[i]) / vs[i])) for i in range(3)]
    if min(grid) < 1:
        raise ValueError(f"point_cloud_range {pcr} with voxel_size {vs} gives an empty grid {grid}")
    if math.prod(grid) >= 2 ** 40:
        raise ValueError(f"grid {grid} is too large for 64-bit linear voxel ids")
    return pcr[:3], vs, grid


def voxel_point_counts_reference(points, point_cloud_range, voxel_size, with_batch_idx=False):
    """Voxel coordinates, per-voxel point counts and the point-to-voxel map (see ``voxel_point_counts``).

    Args:
        points: (N, 3+) [x, y, z, ...] or, with ``with_batch_idx``, (N, 4+) [b, x, y, z, ...] float.
        point_cloud_range: [xmin, ymin, zmin, xmax, ymax, zmax].
        voxel_size: [vx, vy, vz].
    Returns:
        coords (V, 3) [z, y, x] or (V, 4) [b, z, y, x] int64, ascending by (b, z, y, x);
        counts (V,) int64; point2voxel (N,) int64, -1 for points outside the range.
    """
    lo, vs, grid = check_voxel_args(points, point_cloud_range, voxel_size, with_batch_idx)
    nx, ny, nz = grid
    off = 1 if with_batch_idx else 0
    xyz = points[:, off:off + 3].detach()
    lo_t = torch.tensor(lo, dtype=xyz.dtype, device=xyz.device)
    vs_t = torch.tensor(vs, dtype=xyz.dtype, device=xyz.device)
    cell = torch.floor((xyz - lo_t) / vs_t)
    grid_t = torch.tensor(grid, dtype=xyz.dtype, device=xyz.device)
    inside = ((cell >= 0) & (cell < grid_t)).all(dim=1)
    cell = cell[inside].long()
    lin = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]
    if with_batch_idx:
        batch = points[inside, 0].detach().long()
        if batch.numel() and int(batch.min()) < 0:
            raise ValueError(f"points[:, 0] holds the batch index and must be >= 0, got {int(batch.min())}")
        lin = lin + batch * (nz * ny * nx)
    uniq, inverse, counts = torch.unique(lin, sorted=True, return_inverse=True, return_counts=True)
    x = uniq % nx
    y = (uniq // nx) % ny
    z = (uniq // (nx * ny)) % nz
    cols = [z, y, x]
    if with_batch_idx:
        cols.insert(0, uniq // (nx * ny * nz))
    coords = torch.stack(cols, dim=1)
    point2voxel = torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device)
    point2voxel[inside] = inverse
    return coords, counts, point2voxel
