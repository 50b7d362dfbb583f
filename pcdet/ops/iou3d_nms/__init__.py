"""Rotated BEV / 3D IoU and NMS (numba CPU reference; CUDA kernels via ``iou3d_nms_cuda_wrap`` when built)."""
from .iou3d_nms_utils import (boxes_bev_iou, boxes_bev_iou_cpu, boxes_iou3d, boxes_iou3d_gpu, boxes_iou_bev,
                              boxes_overlap_bev, nms, nms_gpu, nms_normal, nms_normal_gpu)

__all__ = ["boxes_bev_iou", "boxes_bev_iou_cpu", "boxes_iou3d", "boxes_iou3d_gpu", "boxes_iou_bev",
           "boxes_overlap_bev", "nms", "nms_gpu", "nms_normal", "nms_normal_gpu"]
