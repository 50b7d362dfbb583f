"""CUDA kernels for rotated BEV IoU / overlap and NMS, called by ``iou3d_nms_utils`` for CUDA tensors.

``available()`` is True only when the compiled ``iou3d_nms_ext`` was built with CUDA and a GPU is visible; the
callers use their CPU reference path otherwise. Boxes are ``[x, y, z, dx, dy, dz, heading]`` (N, 7+), centre
origin; the kernels compute in float32.
"""
import torch

from .. import _loader

EXT_NAME = "pcdet.ops.iou3d_nms.iou3d_nms_ext"


def _ext():
    return _loader.load_extension(EXT_NAME)


def available():
    """True when the CUDA kernels are built and a CUDA device is visible."""
    return torch.cuda.is_available() and _loader.cuda_supported(_ext())


def _checked(boxes, name):
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] < 7:
        raise ValueError(f"{name} must be a (N, 7+) tensor [x, y, z, dx, dy, dz, heading], "
                         f"got shape {tuple(getattr(boxes, 'shape', ()))}")
    if not boxes.is_cuda:
        raise ValueError(f"{name} must be a CUDA tensor for the CUDA kernels, got {boxes.device}")
    return boxes.detach()


def boxes_iou_bev_cuda(boxes_a, boxes_b):
    """Rotated BEV IoU. boxes_a (N, 7+), boxes_b (M, 7+) on one CUDA device -> (N, M) float32."""
    return _ext().boxes_iou_bev(_checked(boxes_a, "boxes_a"), _checked(boxes_b, "boxes_b"))


def boxes_overlap_bev_cuda(boxes_a, boxes_b):
    """Rotated BEV intersection areas. boxes_a (N, 7+), boxes_b (M, 7+) -> (N, M) float32."""
    return _ext().boxes_overlap_bev(_checked(boxes_a, "boxes_a"), _checked(boxes_b, "boxes_b"))


def _nms(boxes, scores, thresh, rotated):
    boxes = _checked(boxes, "boxes")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to match boxes {tuple(boxes.shape)}, "
                         f"got {tuple(scores.shape)}")
    order = torch.sort(scores.detach(), descending=True, stable=True)[1]
    keep = _ext().nms(boxes[order].contiguous(), float(thresh), rotated)
    return order[keep]


def nms_cuda(boxes, scores, thresh):
    """Greedy rotated-BEV NMS: a box is suppressed when its IoU with a kept box is > thresh.

    Args:
        boxes: (N, 7+) CUDA; scores: (N,); thresh: float.
    Returns:
        keep (K,) int64 indices into ``boxes``, by descending score (ties by lower index).
    """
    return _nms(boxes, scores, thresh, rotated=True)


def nms_normal_cuda(boxes, scores, thresh):
    """Greedy NMS on axis-aligned BEV boxes [x -+ dx/2, y -+ dy/2] (heading ignored); same contract as nms_cuda."""
    return _nms(boxes, scores, thresh, rotated=False)
