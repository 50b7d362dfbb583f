"""Base class, registry and geometry helpers shared by the distillation heads."""
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ...config_schema import check_module, opt
from ...registry import Registry

KD_HEADS = Registry("KD_HEADS")


@dataclass
class GridInfo:
    """One network's input grid: point_cloud_range (6,), voxel_size (3,), class_names, and its MODEL config."""
    point_cloud_range: np.ndarray
    voxel_size: np.ndarray
    class_names: list
    model_cfg: dict = field(default_factory=dict)

    def cell_size(self, stride):
        return self.voxel_size[:2] * float(stride)


@dataclass
class KDContext:
    """What a distillation head may read when it is built.

    ``taps[role] = (teacher_taps, student_taps)`` (expanded lists) and ``shapes[role] = (teacher_shapes,
    student_shapes)`` measured by the distiller's dry forward: a shape is a tuple, or a dict key -> tuple for
    dict outputs. ``teacher`` / ``student`` are the GridInfo of each network.
    """
    taps: dict
    shapes: dict
    teacher: GridInfo
    student: GridInfo
    logger: object = None

    def log(self, msg):
        if self.logger is not None:
            self.logger.info(msg)


def channels_of(shape, who):
    """Channel count of a recorded tensor shape: (B, C, H, W) -> C, (V, C) rows -> C."""
    if isinstance(shape, dict):
        raise ValueError(f"{who}: expected a tensor tap, got a dict output with keys {sorted(shape)}; add '@key'")
    if len(shape) == 4:
        return int(shape[1])
    if len(shape) == 2:
        return int(shape[1])
    raise ValueError(f"{who}: cannot read channels from a tap of shape {tuple(shape)} (expected (B,C,H,W) or (V,C))")


class KDHead(nn.Module):
    """A distillation head: config block in, weighted loss terms out.

    Subclasses define ``tap_requests(cfg) -> {role: (teacher_tap, student_tap)}`` (taps may end in ``.*``) and
    ``forward(feats, batch_dict) -> {term_name: weighted scalar}`` where ``feats[role] = (teacher_values,
    student_values)`` lists in tap order.
    """

    CONFIG_SCHEMA = {"TAG": opt(str)}  # keys a head reads (subclasses add theirs); anything else is an error

    def __init__(self, cfg, ctx):
        super().__init__()
        self.cfg = cfg
        self.name = str(cfg.get("TAG", cfg.NAME)).lower()
        self.check_keys(cfg)

    @classmethod
    def check_keys(cls, cfg, path="KD.HEADS[]"):
        """Validate the head's block against ``CONFIG_SCHEMA`` (ConfigError naming file, dotted path, and a
        "did you mean")."""
        check_module(cfg, cls, path)

    @staticmethod
    def tap_requests(cfg):
        raise NotImplementedError

    @staticmethod
    def require(cfg, key, head):
        if key not in cfg:
            raise KeyError(f"KD head {head}: config block lacks '{key}' (has {sorted(cfg)})")
        return cfg[key]


def check_same_shapes(t_shapes, s_shapes, who, what="logits"):
    """Teacher and student taps of one role must pair up one to one with equal shapes (same head layout and
    output grid); ValueError naming the head and the first mismatch otherwise."""
    if len(t_shapes) != len(s_shapes):
        raise ValueError(f"{who}: {len(t_shapes)} teacher {what} taps vs {len(s_shapes)} student taps")
    for t, s in zip(t_shapes, s_shapes):
        if t != s:
            raise ValueError(f"{who}: teacher {what} {t} and student {what} {s} differ in shape (same head "
                             f"layout and output grid required)")


def box_centre_cells(gt_boxes, grid, stride, height, width, class_ids=None):
    """Per GT slot: whether it is a real box (class in ``class_ids``, default any) centred on the map, and its cell.

    gt_boxes (B, M, 8) with 1-based class id in column 7 (0 = padding); ``grid`` the network's GridInfo;
    ``stride`` the map's stride w.r.t. the voxel grid. Returns (keep (B, M) bool, iy (B, M), ix (B, M) int64).
    """
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] < 8:
        raise ValueError(f"box_centre_cells: gt_boxes must be (B, M, 8+), got {tuple(gt_boxes.shape)}")
    cell = torch.as_tensor(grid.cell_size(stride), dtype=gt_boxes.dtype, device=gt_boxes.device)
    origin = torch.as_tensor(grid.point_cloud_range[:2], dtype=gt_boxes.dtype, device=gt_boxes.device)
    cls = gt_boxes[..., 7].long()
    keep = cls > 0
    if class_ids is not None:
        allowed = torch.as_tensor(list(class_ids), dtype=torch.long, device=gt_boxes.device)
        keep &= (cls[..., None] == allowed).any(-1)
    ix = torch.floor((gt_boxes[..., 0] - origin[0]) / cell[0]).long()
    iy = torch.floor((gt_boxes[..., 1] - origin[1]) / cell[1]).long()
    keep &= (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    return keep, iy, ix


def box_centre_pixels(gt_boxes, grid, stride, height, width, class_ids=None):
    """Feature-map pixels of the centres of real GT boxes (see ``box_centre_cells``).

    Returns (batch_idx (K,), iy (K,), ix (K,), class_id (K,)) int64 for the K kept boxes.
    """
    keep, iy, ix = box_centre_cells(gt_boxes, grid, stride, height, width, class_ids)
    b, m = torch.nonzero(keep, as_tuple=True)
    return b, iy[b, m], ix[b, m], gt_boxes[..., 7].long()[b, m]


def bev_box_mask(gt_boxes, grid, stride, height, width):
    """(B, 1, H, W) float mask of map cells whose centre lies inside a real GT box footprint (rotated)."""
    device, dtype = gt_boxes.device, gt_boxes.dtype
    cell = grid.cell_size(stride)
    xs = grid.point_cloud_range[0] + (torch.arange(width, device=device, dtype=dtype) + 0.5) * float(cell[0])
    ys = grid.point_cloud_range[1] + (torch.arange(height, device=device, dtype=dtype) + 0.5) * float(cell[1])
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    boxes = gt_boxes
    dx = xx[None, None] - boxes[..., 0, None, None]  # (B, M, H, W)
    dy = yy[None, None] - boxes[..., 1, None, None]
    cos, sin = torch.cos(boxes[..., 6])[..., None, None], torch.sin(boxes[..., 6])[..., None, None]
    lx = dx * cos + dy * sin
    ly = -dx * sin + dy * cos
    inside = (lx.abs() <= boxes[..., 3, None, None] / 2) & (ly.abs() <= boxes[..., 4, None, None] / 2)
    inside &= (boxes[..., 7] > 0)[..., None, None]
    return inside.any(dim=1, keepdim=True).to(dtype)


def map_stride(grid, width, who):
    """Stride of a BEV map of ``width`` columns w.r.t. the network's voxel grid (must be an integer)."""
    nx = (grid.point_cloud_range[3] - grid.point_cloud_range[0]) / grid.voxel_size[0]
    stride = nx / width
    if abs(stride - round(stride)) > 1e-3:
        raise ValueError(f"{who}: map width {width} is not an integer division of the grid width {nx:.1f}")
    return int(round(stride))
