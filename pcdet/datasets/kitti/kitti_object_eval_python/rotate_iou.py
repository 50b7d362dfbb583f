"""Rotated bird's-eye-view overlaps of KITTI camera boxes for the evaluation (numba, CPU).

KITTI evaluates BEV boxes in the rectified camera ground plane ``(x, z)``: a box is ``[x, z, l, w, ry]``.
A rotation ``ry`` about camera y maps the box's length axis to ``(cos ry, -sin ry)`` in ``(x, z)``, i.e. a
counter-clockwise angle of ``-ry`` in that plane; the exact rectangle clipping is shared with
``pcdet.ops.iou3d_nms``.
"""
import numba
import numpy as np

from pcdet.ops.iou3d_nms.iou3d_nms_utils import rect_intersection_area

CRITERION_IOU = -1          # intersection / union
CRITERION_AREA_A = 0        # intersection / area of the first box
CRITERION_AREA_B = 1        # intersection / area of the second box
CRITERION_INTERSECTION = 2  # raw intersection area


@numba.njit(cache=True)
def _rotate_overlap(boxes, qboxes, criterion):
    out = np.zeros((boxes.shape[0], qboxes.shape[0]))
    for i in range(boxes.shape[0]):
        area_a = boxes[i, 2] * boxes[i, 3]
        for j in range(qboxes.shape[0]):
            inter = rect_intersection_area(boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], -boxes[i, 4],
                                           qboxes[j, 0], qboxes[j, 1], qboxes[j, 2], qboxes[j, 3], -qboxes[j, 4])
            area_b = qboxes[j, 2] * qboxes[j, 3]
            if criterion == -1:
                denom = area_a + area_b - inter
            elif criterion == 0:
                denom = area_a
            elif criterion == 1:
                denom = area_b
            else:
                denom = 1.0
            out[i, j] = inter / denom if denom > 0.0 else 0.0
    return out


def rotate_iou_eval(boxes, qboxes, criterion=CRITERION_IOU):
    """Rotated BEV overlaps in the camera ground plane.

    Args:
        boxes: (N, 5) ``[x, z, l, w, ry]``.
        qboxes: (K, 5) ``[x, z, l, w, ry]``.
        criterion: -1 IoU, 0 intersection / area(boxes), 1 intersection / area(qboxes), 2 intersection.
    Returns:
        (N, K) float64 numpy.
    """
    boxes = np.ascontiguousarray(boxes, dtype=np.float64).reshape(-1, 5)
    qboxes = np.ascontiguousarray(qboxes, dtype=np.float64).reshape(-1, 5)
    if criterion not in (-1, 0, 1, 2):
        raise ValueError(f"criterion must be -1, 0, 1 or 2, got {criterion}")
    return _rotate_overlap(boxes, qboxes, int(criterion))


def bev_box_overlap(boxes, qboxes, criterion=CRITERION_IOU):
    """BEV overlap of KITTI camera boxes ``[x, z, l, w, ry]`` (N, 5) and (K, 5) -> (N, K)."""
    return rotate_iou_eval(boxes, qboxes, criterion)


def d3_box_overlap(boxes, qboxes, criterion=CRITERION_IOU):
    """3D overlap of KITTI camera boxes.

    Args:
        boxes: (N, 7) ``[x, y, z, l, h, w, ry]``, bottom centre, camera y pointing down.
        qboxes: (K, 7) same layout.
        criterion: -1 IoU, 0 over volume(boxes), 1 over volume(qboxes), 2 raw intersection volume.
    Returns:
        (N, K) float64 numpy.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    qboxes = np.asarray(qboxes, dtype=np.float64).reshape(-1, 7)
    inter_bev = rotate_iou_eval(boxes[:, [0, 2, 3, 5, 6]], qboxes[:, [0, 2, 3, 5, 6]], CRITERION_INTERSECTION)
    # Bottom at y, top at y - h (y points down).
    top = np.maximum((boxes[:, 1] - boxes[:, 4])[:, None], (qboxes[:, 1] - qboxes[:, 4])[None, :])
    bottom = np.minimum(boxes[:, 1][:, None], qboxes[:, 1][None, :])
    inter = inter_bev * np.clip(bottom - top, 0.0, None)
    vol_a = (boxes[:, 3] * boxes[:, 4] * boxes[:, 5])[:, None]
    vol_b = (qboxes[:, 3] * qboxes[:, 4] * qboxes[:, 5])[None, :]
    if criterion == CRITERION_IOU:
        denom = vol_a + vol_b - inter
    elif criterion == CRITERION_AREA_A:
        denom = np.broadcast_to(vol_a, inter.shape)
    elif criterion == CRITERION_AREA_B:
        denom = np.broadcast_to(vol_b, inter.shape)
    elif criterion == CRITERION_INTERSECTION:
        return inter
    else:
        raise ValueError(f"criterion must be -1, 0, 1 or 2, got {criterion}")
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)
