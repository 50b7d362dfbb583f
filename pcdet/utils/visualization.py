"""Bird's-eye-view rendering of point clouds and LiDAR boxes to PNG (matplotlib, Agg backend, no display).

The image maps LiDAR x to the right and y upwards at ``pixels_per_meter``: the pixel (row, col) of a point is
``((y_max - y) * ppm, (x - x_min) * ppm)``, so tests and scripts can locate boxes in the picture.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

GT_COLOR = (0.0, 0.8, 0.0)
PRED_COLOR = (1.0, 0.0, 0.0)
_MAX_SIDE_PX = 4000


def _to_numpy(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_boxes(boxes, name):
    if boxes is not None and (boxes.ndim != 2 or boxes.shape[1] < 7):
        raise ValueError(f"draw_bev: {name} must have shape (N, 7+) [x, y, z, dx, dy, dz, heading], "
                         f"got {boxes.shape}")


def bev_corners(boxes):
    """BEV corners of LiDAR boxes.

    Args:
        boxes: (N, 7+) ``[x, y, z, dx, dy, dz, heading]``.
    Returns:
        (N, 4, 2) corners, counter-clockwise from the front-left one.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    _check_boxes(boxes, "boxes")
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    lx = local[None, :, 0] * boxes[:, 3:4]
    ly = local[None, :, 1] * boxes[:, 4:5]
    return np.stack([boxes[:, 0:1] + lx * c[:, None] - ly * s[:, None],
                     boxes[:, 1:2] + lx * s[:, None] + ly * c[:, None]], axis=-1)


def _draw_boxes(ax, boxes, color, line_px, dpi, texts=None):
    corners = bev_corners(boxes)
    lw = line_px * 72.0 / dpi
    for k in range(boxes.shape[0]):
        poly = np.concatenate([corners[k], corners[k][:1]], axis=0)
        ax.plot(poly[:, 0], poly[:, 1], color=color, linewidth=lw, solid_capstyle="butt")
        front = corners[k][[0, 3]].mean(axis=0)
        ax.plot([boxes[k, 0], front[0]], [boxes[k, 1], front[1]], color=color, linewidth=lw)
        if texts is not None:
            ax.text(corners[k][:, 0].max(), corners[k][:, 1].max(), texts[k], color=color, fontsize=6,
                    va="bottom", ha="left")


def _auto_range(points, box_sets):
    xy = [points[:, 0:2]] if points is not None and len(points) else []
    xy += [bev_corners(b).reshape(-1, 2) for b in box_sets if b is not None and len(b)]
    if not xy:
        return np.array([-10, -10, -3, 10, 10, 1], dtype=np.float64)
    xy = np.concatenate(xy, axis=0)
    lo, hi = xy.min(axis=0) - 2.0, xy.max(axis=0) + 2.0
    return np.array([lo[0], lo[1], -3.0, hi[0], hi[1], 1.0])


def draw_bev(points, gt_boxes=None, pred_boxes=None, pred_scores=None, pred_labels=None, class_names=None,
             out_file="bev.png", point_cloud_range=None, extra_box_sets=None, pixels_per_meter=10.0,
             point_size_px=1.0, line_px=2.0, title=None):
    """Render a BEV image of points and boxes.

    Args:
        points: (N, 3+) LiDAR points (numpy or torch); coloured by height z. May be None or empty.
        gt_boxes: (M, 7+) ground-truth boxes, drawn in green.
        pred_boxes: (K, 7+) predicted boxes, drawn in red; annotated with ``pred_labels`` (1-based indices into
            ``class_names``) and ``pred_scores`` (K,) when given.
        class_names: list of class names for the annotations.
        out_file: PNG path (parent folders are created).
        point_cloud_range: ``[x_min, y_min, z_min, x_max, y_max, z_max]`` shown; derived from the data if None.
        extra_box_sets: dict ``name -> (boxes (L, 7+), color)`` of further box sets (e.g. teacher boxes).
        pixels_per_meter: image scale; the image is ``(x range, y range) * ppm`` pixels (capped at 4000 px).
        title: optional text drawn in the top-left corner.
    Returns:
        ``Path`` of the written PNG.
    """
    points = _to_numpy(points)
    if points is not None and (points.ndim != 2 or (points.shape[0] and points.shape[1] < 3)):
        raise ValueError(f"draw_bev: points must have shape (N, 3+), got {points.shape}")
    gt_boxes, pred_boxes = _to_numpy(gt_boxes), _to_numpy(pred_boxes)
    _check_boxes(gt_boxes, "gt_boxes")
    _check_boxes(pred_boxes, "pred_boxes")
    extra = {}
    for name, (boxes, color) in (extra_box_sets or {}).items():
        boxes = _to_numpy(boxes)
        _check_boxes(boxes, f"extra_box_sets[{name!r}]")
        extra[name] = (boxes, color)
    pc_range = (np.asarray(point_cloud_range, dtype=np.float64) if point_cloud_range is not None
                else _auto_range(points, [gt_boxes, pred_boxes] + [b for b, _ in extra.values()]))
    if pc_range.shape != (6,):
        raise ValueError(f"draw_bev: point_cloud_range must have 6 values, got {pc_range.shape}")
    x_min, y_min, z_min, x_max, y_max, z_max = pc_range
    ppm = min(float(pixels_per_meter), _MAX_SIDE_PX / max(x_max - x_min, y_max - y_min))
    width_px, height_px = int(round((x_max - x_min) * ppm)), int(round((y_max - y_min) * ppm))
    dpi = 100.0

    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor="black")
    try:
        ax = fig.add_axes([0, 0, 1, 1])
        ax.set_facecolor("black")
        ax.set_xlim(x_min, x_max)
        ax.set_ylim(y_min, y_max)
        ax.set_axis_off()
        if points is not None and points.shape[0]:
            inside = ((points[:, 0] >= x_min) & (points[:, 0] <= x_max)
                      & (points[:, 1] >= y_min) & (points[:, 1] <= y_max))
            pts = points[inside]
            ax.scatter(pts[:, 0], pts[:, 1], c=pts[:, 2], cmap="viridis", vmin=z_min, vmax=z_max,
                       s=(point_size_px * 72.0 / dpi) ** 2, marker="s", linewidths=0)
        handles = []
        if gt_boxes is not None and len(gt_boxes):
            _draw_boxes(ax, gt_boxes, GT_COLOR, line_px, dpi)
            handles.append(plt.Line2D([], [], color=GT_COLOR, label=f"ground truth ({len(gt_boxes)})"))
        if pred_boxes is not None and len(pred_boxes):
            texts = None
            scores = _to_numpy(pred_scores)
            labels = _to_numpy(pred_labels)
            if scores is not None or labels is not None:
                texts = []
                for k in range(len(pred_boxes)):
                    name = ""
                    if labels is not None:
                        lab = int(labels[k])
                        name = class_names[lab - 1] if class_names and 1 <= lab <= len(class_names) else str(lab)
                    texts.append(f"{name} {scores[k]:.2f}".strip() if scores is not None else name)
            _draw_boxes(ax, pred_boxes, PRED_COLOR, line_px, dpi, texts)
            handles.append(plt.Line2D([], [], color=PRED_COLOR, label=f"prediction ({len(pred_boxes)})"))
        for name, (boxes, color) in extra.items():
            if boxes is not None and len(boxes):
                _draw_boxes(ax, boxes, color, line_px, dpi)
            handles.append(plt.Line2D([], [], color=color, label=f"{name} ({0 if boxes is None else len(boxes)})"))
        if handles:
            ax.legend(handles=handles, loc="upper right", fontsize=7, facecolor="black", labelcolor="white",
                      framealpha=0.6)
        if title:
            ax.text(0.01, 0.99, title, transform=ax.transAxes, color="white", fontsize=8, va="top", ha="left")
        out_path = Path(out_file)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=dpi, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return out_path
