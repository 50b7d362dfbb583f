"""Rotated BEV / 3D IoU and NMS for LiDAR boxes ``[x, y, z, dx, dy, dz, heading]`` (centre origin).

Every function works on CPU tensors without compiled code: the reference path clips the two rectangles
exactly (Sutherland-Hodgman on convex polygons) in numba. CUDA tensors use the kernels of
``iou3d_nms_cuda_wrap`` when they are built; otherwise the work is done on CPU and the result moved back.

OpenPCDet names are kept: ``boxes_bev_iou_cpu``, ``boxes_iou_bev``, ``boxes_iou3d_gpu``, ``nms_gpu``,
``nms_normal_gpu``. Note that, as in OpenPCDet, ``nms_gpu`` / ``nms_normal_gpu`` return ``(keep, None)``
(what ``model_nms_utils`` unpacks), while ``nms`` / ``nms_normal`` return ``keep`` alone.
"""
import math

import numba
import numpy as np
import torch

_EPS = 1e-8


# ---------------------------------------------------------------- numba reference kernels
@numba.njit(cache=True)
def _rect_corners(cx, cy, dx, dy, angle, out):
    """Write the 4 corners, counter-clockwise, of a rotated rectangle into ``out`` (4, 2)."""
    c = math.cos(angle)
    s = math.sin(angle)
    hx = dx / 2.0
    hy = dy / 2.0
    lx = (-hx, hx, hx, -hx)
    ly = (-hy, -hy, hy, hy)
    for k in range(4):
        out[k, 0] = cx + lx[k] * c - ly[k] * s
        out[k, 1] = cy + lx[k] * s + ly[k] * c


@numba.njit(cache=True)
def rect_intersection_area(cx1, cy1, dx1, dy1, a1, cx2, cy2, dx2, dy2, a2):
    """Exact intersection area of two rotated rectangles (centre, sizes, CCW angle)."""
    if dx1 <= 0.0 or dy1 <= 0.0 or dx2 <= 0.0 or dy2 <= 0.0:
        return 0.0
    # Disjoint circumscribed circles: no overlap, skip the clipping.
    dist2 = (cx1 - cx2) ** 2 + (cy1 - cy2) ** 2
    rad = (math.sqrt(dx1 * dx1 + dy1 * dy1) + math.sqrt(dx2 * dx2 + dy2 * dy2)) / 2.0
    if dist2 > rad * rad:
        return 0.0
    subj = np.empty((4, 2))
    clip = np.empty((4, 2))
    _rect_corners(cx1, cy1, dx1, dy1, a1, subj)
    _rect_corners(cx2, cy2, dx2, dy2, a2, clip)
    # A convex quadrilateral clipped by 4 half-planes has at most 8 vertices.
    poly = np.empty((16, 2))
    nxt = np.empty((16, 2))
    n = 4
    for k in range(4):
        poly[k, 0] = subj[k, 0]
        poly[k, 1] = subj[k, 1]
    for e in range(4):
        px, py = clip[e, 0], clip[e, 1]
        qx, qy = clip[(e + 1) % 4, 0], clip[(e + 1) % 4, 1]
        ex, ey = qx - px, qy - py
        m = 0
        for k in range(n):
            sx, sy = poly[k, 0], poly[k, 1]
            tx, ty = poly[(k + 1) % n, 0], poly[(k + 1) % n, 1]
            cs = ex * (sy - py) - ey * (sx - px)
            ct = ex * (ty - py) - ey * (tx - px)
            if cs >= 0.0:
                nxt[m, 0] = sx
                nxt[m, 1] = sy
                m += 1
            if (cs >= 0.0) != (ct >= 0.0):
                t = cs / (cs - ct)
                nxt[m, 0] = sx + t * (tx - sx)
                nxt[m, 1] = sy + t * (ty - sy)
                m += 1
        n = m
        if n < 3:
            return 0.0
        for k in range(n):
            poly[k, 0] = nxt[k, 0]
            poly[k, 1] = nxt[k, 1]
    area = 0.0
    for k in range(n):
        area += poly[k, 0] * poly[(k + 1) % n, 1] - poly[(k + 1) % n, 0] * poly[k, 1]
    return abs(area) / 2.0


@numba.njit(cache=True)
def _bev_overlap_matrix(a, b):
    """(N, M) intersection areas of (N, 5) and (M, 5) ``[cx, cy, dx, dy, angle]`` float64 arrays."""
    out = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = rect_intersection_area(a[i, 0], a[i, 1], a[i, 2], a[i, 3], a[i, 4],
                                               b[j, 0], b[j, 1], b[j, 2], b[j, 3], b[j, 4])
    return out


@numba.njit(cache=True)
def _nms_rotated_sorted(boxes, thresh):
    """Greedy NMS over (N, 5) ``[cx, cy, dx, dy, angle]`` boxes already sorted by descending score."""
    n = boxes.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    num = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[num] = i
        num += 1
        area_i = boxes[i, 2] * boxes[i, 3]
        for j in range(i + 1, n):
            if suppressed[j]:
                continue
            inter = rect_intersection_area(boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], boxes[i, 4],
                                           boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3], boxes[j, 4])
            union = area_i + boxes[j, 2] * boxes[j, 3] - inter
            if inter / max(union, _EPS) > thresh:
                suppressed[j] = True
    return keep[:num]


@numba.njit(cache=True)
def _nms_aligned_sorted(boxes, thresh):
    """Greedy NMS over (N, 4) axis-aligned ``[x1, y1, x2, y2]`` boxes sorted by descending score."""
    n = boxes.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    num = 0
    for i in range(n):
        if suppressed[i]:
            continue
        keep[num] = i
        num += 1
        area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
        for j in range(i + 1, n):
            if suppressed[j]:
                continue
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            if w <= 0.0 or h <= 0.0:
                continue
            inter = w * h
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / max(area_i + area_j - inter, _EPS) > thresh:
                suppressed[j] = True
    return keep[:num]


# ---------------------------------------------------------------- helpers
def _cuda_wrap():
    """The CUDA kernel module when it is importable and built, else None."""
    try:
        from . import iou3d_nms_cuda_wrap
    except ImportError:
        return None
    return iou3d_nms_cuda_wrap if iou3d_nms_cuda_wrap.available() else None


def _as_tensor(x, name):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x), True
    if isinstance(x, torch.Tensor):
        return x, False
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _check_boxes(boxes, name):
    if boxes.ndim != 2 or boxes.shape[1] < 7:
        raise ValueError(f"{name} must have shape (N, 7+) [x, y, z, dx, dy, dz, heading], "
                         f"got {tuple(boxes.shape)}")


def _bev_params(boxes):
    """(N, 7+) tensor -> (N, 5) float64 numpy ``[cx, cy, dx, dy, heading]``."""
    return np.ascontiguousarray(boxes[:, [0, 1, 3, 4, 6]].detach().cpu().double().numpy())


def _bev_overlap_cpu(boxes_a, boxes_b):
    """(N, M) float64 numpy BEV intersection areas."""
    return _bev_overlap_matrix(_bev_params(boxes_a), _bev_params(boxes_b))


# ---------------------------------------------------------------- IoU
def boxes_bev_iou_cpu(boxes_a, boxes_b):
    """Rotated BEV IoU on CPU.

    Args:
        boxes_a: (N, 7+) numpy or torch LiDAR boxes.
        boxes_b: (M, 7+) numpy or torch LiDAR boxes.
    Returns:
        (N, M) float32 IoU, numpy if ``boxes_a`` is numpy else a CPU tensor.
    """
    a, is_numpy = _as_tensor(boxes_a, "boxes_a")
    b, _ = _as_tensor(boxes_b, "boxes_b")
    _check_boxes(a, "boxes_a")
    _check_boxes(b, "boxes_b")
    inter = _bev_overlap_cpu(a, b)
    area_a = (a[:, 3] * a[:, 4]).detach().cpu().double().numpy()
    area_b = (b[:, 3] * b[:, 4]).detach().cpu().double().numpy()
    iou = (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, _EPS)).astype(np.float32)
    return iou if is_numpy else torch.from_numpy(iou)


def boxes_overlap_bev(boxes_a, boxes_b):
    """Rotated BEV intersection areas.

    Args:
        boxes_a: (N, 7+) torch LiDAR boxes, any device.
        boxes_b: (M, 7+) torch, same device.
    Returns:
        (N, M) float32 tensor on the input device.
    """
    _check_boxes(boxes_a, "boxes_a")
    _check_boxes(boxes_b, "boxes_b")
    if boxes_a.is_cuda:
        wrap = _cuda_wrap()
        if wrap is not None:
            return wrap.boxes_overlap_bev_cuda(boxes_a, boxes_b)
    inter = _bev_overlap_cpu(boxes_a, boxes_b)
    return torch.from_numpy(inter.astype(np.float32)).to(boxes_a.device)


def boxes_iou_bev(boxes_a, boxes_b):
    """Rotated BEV IoU.

    Args:
        boxes_a: (N, 7+) torch LiDAR boxes, any device.
        boxes_b: (M, 7+) torch, same device.
    Returns:
        (N, M) float32 tensor on the input device.
    """
    _check_boxes(boxes_a, "boxes_a")
    _check_boxes(boxes_b, "boxes_b")
    if boxes_a.is_cuda:
        wrap = _cuda_wrap()
        if wrap is not None:
            return wrap.boxes_iou_bev_cuda(boxes_a, boxes_b)
    return boxes_bev_iou_cpu(boxes_a.detach().cpu(), boxes_b.detach().cpu()).to(boxes_a.device)


def boxes_iou3d(boxes_a, boxes_b):
    """Rotated 3D IoU: BEV intersection area times the z overlap, over the union volume.

    Args:
        boxes_a: (N, 7+) torch LiDAR boxes, any device.
        boxes_b: (M, 7+) torch, same device.
    Returns:
        (N, M) float32 tensor on the input device.
    """
    overlap_bev = boxes_overlap_bev(boxes_a, boxes_b)
    top_a = (boxes_a[:, 2] + boxes_a[:, 5] / 2).view(-1, 1)
    bottom_a = (boxes_a[:, 2] - boxes_a[:, 5] / 2).view(-1, 1)
    top_b = (boxes_b[:, 2] + boxes_b[:, 5] / 2).view(1, -1)
    bottom_b = (boxes_b[:, 2] - boxes_b[:, 5] / 2).view(1, -1)
    overlap_h = torch.clamp(torch.min(top_a, top_b) - torch.max(bottom_a, bottom_b), min=0)
    overlap_3d = overlap_bev.to(overlap_h.dtype) * overlap_h
    vol_a = (boxes_a[:, 3] * boxes_a[:, 4] * boxes_a[:, 5]).view(-1, 1)
    vol_b = (boxes_b[:, 3] * boxes_b[:, 4] * boxes_b[:, 5]).view(1, -1)
    return overlap_3d / torch.clamp(vol_a + vol_b - overlap_3d, min=1e-6)


# ---------------------------------------------------------------- NMS
def _sorted_order(boxes, scores, pre_maxsize):
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to match boxes {tuple(boxes.shape)}, "
                         f"got {tuple(scores.shape)}")
    order = torch.sort(scores, descending=True, stable=True)[1]
    if pre_maxsize is not None:
        order = order[:pre_maxsize]
    return order


def nms(boxes, scores, thresh, pre_maxsize=None, **kwargs):
    """Greedy rotated-BEV NMS.

    Args:
        boxes: (N, 7+) torch LiDAR boxes, any device.
        scores: (N,) torch scores.
        thresh: float; a box is suppressed when its BEV IoU with a kept box is > thresh.
        pre_maxsize: keep only the top-scoring ``pre_maxsize`` boxes before NMS.
        kwargs: ignored (OpenPCDet passes the whole NMS config).
    Returns:
        (K,) int64 indices into ``boxes``, by descending score, on the input device.
    """
    _check_boxes(boxes, "boxes")
    order = _sorted_order(boxes, scores, pre_maxsize)
    sorted_boxes = boxes[order]
    if boxes.is_cuda:
        wrap = _cuda_wrap()
        if wrap is not None:
            return order[wrap.nms_cuda(sorted_boxes.contiguous(), scores[order].contiguous(), thresh)]
    keep = _nms_rotated_sorted(_bev_params(sorted_boxes), float(thresh))
    return order[torch.from_numpy(keep).to(order.device)]


def nms_normal(boxes, scores, thresh, pre_maxsize=None, **kwargs):
    """Greedy NMS on axis-aligned BEV boxes ``[x -+ dx/2, y -+ dy/2]`` (heading ignored, as OpenPCDet).

    Args:
        boxes: (N, 7+) torch LiDAR boxes, any device.
        scores: (N,) torch scores.
        thresh: float IoU threshold (suppress when IoU > thresh).
        pre_maxsize: keep only the top-scoring ``pre_maxsize`` boxes before NMS.
    Returns:
        (K,) int64 indices into ``boxes``, by descending score, on the input device.
    """
    _check_boxes(boxes, "boxes")
    order = _sorted_order(boxes, scores, pre_maxsize)
    sorted_boxes = boxes[order]
    if boxes.is_cuda:
        wrap = _cuda_wrap()
        if wrap is not None:
            return order[wrap.nms_normal_cuda(sorted_boxes.contiguous(), scores[order].contiguous(), thresh)]
    b = sorted_boxes.detach().cpu().double()
    aligned = torch.stack((b[:, 0] - b[:, 3] / 2, b[:, 1] - b[:, 4] / 2,
                           b[:, 0] + b[:, 3] / 2, b[:, 1] + b[:, 4] / 2), dim=1)
    keep = _nms_aligned_sorted(np.ascontiguousarray(aligned.numpy()), float(thresh))
    return order[torch.from_numpy(keep).to(order.device)]


def nms_gpu(boxes, scores, thresh, pre_maxsize=None, **kwargs):
    """OpenPCDet-compatible ``nms``: returns ``(keep (K,), None)``."""
    return nms(boxes, scores, thresh, pre_maxsize=pre_maxsize), None


def nms_normal_gpu(boxes, scores, thresh, **kwargs):
    """OpenPCDet-compatible ``nms_normal``: returns ``(keep (K,), None)``."""
    return nms_normal(boxes, scores, thresh), None


boxes_iou3d_gpu = boxes_iou3d
boxes_bev_iou = boxes_iou_bev
