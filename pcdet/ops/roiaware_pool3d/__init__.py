"""Points-in-boxes queries (PyTorch reference path, any device)."""
from .roiaware_pool3d_utils import points_in_boxes, points_in_boxes_cpu, points_in_boxes_gpu

__all__ = ["points_in_boxes", "points_in_boxes_cpu", "points_in_boxes_gpu"]
