"""Which points lie in which LiDAR boxes ``[x, y, z, dx, dy, dz, heading]`` (centre origin).

Pure PyTorch, runs on the device of its inputs. The membership test is the one of OpenPCDet's kernels: the
point, expressed in the box frame, satisfies ``|local_x| < dx/2``, ``|local_y| < dy/2`` and
``|local_z| <= dz/2``.
"""
import numpy as np
import torch

# Upper bound on (boxes x points) elements processed at once, to bound memory for large scans.
_CHUNK_ELEMENTS = 1 << 22


def _in_box_mask(points, boxes):
    """(M, N) bool mask for points (N, 3) and boxes (M, 7) tensors of one dtype/device, chunked over boxes."""
    num_boxes, num_points = boxes.shape[0], points.shape[0]
    mask = torch.zeros((num_boxes, num_points), dtype=torch.bool, device=points.device)
    if num_boxes == 0 or num_points == 0:
        return mask
    step = max(1, _CHUNK_ELEMENTS // num_points)
    for start in range(0, num_boxes, step):
        b = boxes[start:start + step]
        shift = points[None, :, :] - b[:, None, 0:3]
        cosa = torch.cos(b[:, 6])[:, None]
        sina = torch.sin(b[:, 6])[:, None]
        local_x = shift[..., 0] * cosa + shift[..., 1] * sina
        local_y = -shift[..., 0] * sina + shift[..., 1] * cosa
        mask[start:start + step] = ((local_x.abs() < b[:, 3:4] / 2) & (local_y.abs() < b[:, 4:5] / 2)
                                    & (shift[..., 2].abs() <= b[:, 5:6] / 2))
    return mask


def points_in_boxes_cpu(points, boxes):
    """Point-in-box mask.

    Args:
        points: (N, 3+) numpy or torch; only xyz is used.
        boxes: (M, 7+) numpy or torch LiDAR boxes.
    Returns:
        (M, N) int32 mask (1 = inside), numpy if ``points`` is numpy, else a tensor on the points' device.
    """
    is_numpy = isinstance(points, np.ndarray)
    pts = torch.from_numpy(points) if is_numpy else points
    bxs = torch.from_numpy(boxes) if isinstance(boxes, np.ndarray) else boxes
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3+), got {tuple(pts.shape)}")
    if bxs.ndim != 2 or bxs.shape[1] < 7:
        raise ValueError(f"boxes must have shape (M, 7+), got {tuple(bxs.shape)}")
    dtype = torch.promote_types(pts.dtype, bxs.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    mask = _in_box_mask(pts[:, 0:3].to(dtype), bxs[:, 0:7].to(device=pts.device, dtype=dtype)).to(torch.int32)
    return mask.numpy() if is_numpy else mask


def points_in_boxes(points, boxes):
    """Index of the first box containing each point, batched (``points_in_boxes_gpu`` of OpenPCDet).

    Args:
        points: (B, N, 3) torch.
        boxes: (B, M, 7) torch LiDAR boxes on the same device.
    Returns:
        (B, N) int32 box index in ``[0, M)``, or -1 for points in no box.
    """
    if points.ndim != 3 or points.shape[2] < 3:
        raise ValueError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    if boxes.ndim != 3 or boxes.shape[2] < 7 or boxes.shape[0] != points.shape[0]:
        raise ValueError(f"boxes must have shape (B={points.shape[0]}, M, 7), got {tuple(boxes.shape)}")
    batch_size, num_points = points.shape[0], points.shape[1]
    out = torch.full((batch_size, num_points), -1, dtype=torch.int32, device=points.device)
    if boxes.shape[1] == 0:
        return out
    for k in range(batch_size):
        mask = points_in_boxes_cpu(points[k, :, 0:3], boxes[k, :, 0:7])
        inside_any = mask.sum(dim=0) > 0
        first = torch.argmax(mask, dim=0).to(torch.int32)
        out[k] = torch.where(inside_any, first, out[k])
    return out


points_in_boxes_gpu = points_in_boxes
