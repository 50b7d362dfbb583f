"""KITTI object labels from scene objects, and the KITTI label text format.

Label line (15 fields): type truncated occluded alpha bbox_left bbox_top bbox_right bbox_bottom h w l x y z
rotation_y, where (x, y, z) is the bottom centre of the box in the rectified camera frame, rotation_y is the
yaw about the camera y axis (``rotation_y = -heading - pi/2``, heading the LiDAR yaw, both wrapped to
[-pi, pi)), and alpha the observation angle ``rotation_y - atan2(x, z)`` of the box centre.
DontCare lines carry ``-1 -1 -10 <bbox> -1 -1 -1 -1000 -1000 -1000 -10`` as in KITTI.
"""
from dataclasses import dataclass

import numpy as np

from .calib import IMAGE_SHAPE

OCCLUSION_THRESHOLDS = (0.15, 0.6)  # occluded-ray fraction below -> 0, below -> 1, else 2; no rays alone -> 3
_NEAR_PLANE = 0.1


def wrap_angle(a):
    """Wrap radians to [-pi, pi)."""
    return (np.asarray(a, np.float64) + np.pi) % (2.0 * np.pi) - np.pi


def box_corners_lidar(box):
    """(7,) LiDAR box ``[x, y, z, l, w, h, heading]`` -> (8, 3) corners."""
    x, y, z, l, w, h, hd = box
    signs = np.array([[1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1],
                      [1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1]], np.float64)
    local = signs * [0.5 * l, 0.5 * w, 0.5 * h]
    c, s = np.cos(hd), np.sin(hd)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return local @ rot.T + [x, y, z]


_EDGES = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]


def project_box(corners_rect, calib):
    """2D box of a 3D box clipped to the near plane and the image.

    Args:
        corners_rect: (8, 3) corners in the rectified camera frame (order of box_corners_lidar).
        calib: KittiCalib.
    Returns:
        (bbox (4,) ``[left, top, right, bottom]`` clipped to the image, truncation in [0, 1]) or None when no
        part of the box is in front of the camera and inside the image.
    """
    pts = [c for c in corners_rect if c[2] >= _NEAR_PLANE]
    for a, b in _EDGES:
        za, zb = corners_rect[a][2], corners_rect[b][2]
        if (za - _NEAR_PLANE) * (zb - _NEAR_PLANE) < 0.0:
            t = (_NEAR_PLANE - za) / (zb - za)
            pts.append(corners_rect[a] + t * (corners_rect[b] - corners_rect[a]))
    if not pts:
        return None
    uv = calib.rect_to_image(np.array(pts))
    full = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
    height, width = IMAGE_SHAPE
    clipped = np.array([max(full[0], 0.0), max(full[1], 0.0), min(full[2], width - 1.0), min(full[3], height - 1.0)])
    if clipped[2] - clipped[0] < 1.0 or clipped[3] - clipped[1] < 1.0:
        return None
    area_full = (full[2] - full[0]) * (full[3] - full[1])
    area_in = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
    truncation = float(np.clip(1.0 - area_in / max(area_full, 1e-9), 0.0, 1.0))
    return clipped, truncation


def occlusion_level(rays_alone, rays_hit):
    """KITTI occlusion state from ray counts: the fraction of the object's own rays that something else takes."""
    if rays_alone <= 0:
        return 3
    frac = 1.0 - rays_hit / rays_alone
    if frac < OCCLUSION_THRESHOLDS[0]:
        return 0
    if frac < OCCLUSION_THRESHOLDS[1]:
        return 1
    return 2


@dataclass
class LabelRecord:
    """One label line plus the generator-side facts about it (object id in the scene, ray counts)."""
    line: str
    obj_id: int
    occlusion_fraction: float


def format_label(cls, truncation, occluded, alpha, bbox, hwl, loc, ry):
    """One KITTI label line: bbox (4,) pixels, hwl (3,) metres, loc (3,) rectified camera bottom centre."""
    return (f"{cls} {truncation:.2f} {occluded:d} {alpha:.2f} {bbox[0]:.2f} {bbox[1]:.2f} {bbox[2]:.2f} "
            f"{bbox[3]:.2f} {hwl[0]:.2f} {hwl[1]:.2f} {hwl[2]:.2f} {loc[0]:.2f} {loc[1]:.2f} {loc[2]:.2f} {ry:.2f}")


def make_labels(objects, rays_alone, rays_hit, calib, preset):
    """Label records for the labelled objects visible in the camera image.

    Objects outside the image are skipped (as in KITTI); objects farther than preset.dontcare_range or with a 2D
    box lower than preset.min_box_height_px become DontCare lines, listed after the others.

    Args:
        objects: list of SceneObject (index = object id).
        rays_alone, rays_hit: (K_obj,) int64 ray counts from raycast.cast_scan.
        calib: KittiCalib.
        preset: Preset.
    Returns:
        list of LabelRecord.
    """
    records, dontcare = [], []
    for obj_id, obj in enumerate(objects):
        if not obj.labelled:
            continue
        box = obj.box
        proj = project_box(calib.lidar_to_rect(box_corners_lidar(box)), calib)
        if proj is None:
            continue
        bbox, truncation = proj
        alone, hit = int(rays_alone[obj_id]), int(rays_hit[obj_id])
        occ_frac = 1.0 - hit / alone if alone > 0 else 1.0
        if np.hypot(box[0], box[1]) > preset.dontcare_range or bbox[3] - bbox[1] < preset.min_box_height_px:
            line = (f"DontCare -1 -1 -10 {bbox[0]:.2f} {bbox[1]:.2f} {bbox[2]:.2f} {bbox[3]:.2f} "
                    "-1 -1 -1 -1000 -1000 -1000 -10")
            dontcare.append(LabelRecord(line, obj_id, occ_frac))
            continue
        bottom = calib.lidar_to_rect(np.array([box[0], box[1], box[2] - 0.5 * box[5]]))[0]
        ry = float(wrap_angle(-box[6] - 0.5 * np.pi))
        alpha = float(wrap_angle(ry - np.arctan2(bottom[0], bottom[2])))
        line = format_label(obj.cls, truncation, occlusion_level(alone, hit), alpha, bbox,
                            (box[5], box[4], box[3]), bottom, ry)
        records.append(LabelRecord(line, obj_id, occ_frac))
    return records + dontcare


def parse_label_line(line, where="label"):
    """KITTI label line -> dict(type, truncated, occluded, alpha, bbox (4,), dims_hwl (3,), location (3,),
    rotation_y). ``where`` names the file/line in errors."""
    fields = line.split()
    if len(fields) != 15:
        raise ValueError(f"{where}: expected 15 fields, got {len(fields)}: {line.strip()!r}")
    try:
        nums = [float(v) for v in fields[1:]]
    except ValueError as err:
        raise ValueError(f"{where}: non-numeric field in {line.strip()!r}") from err
    return dict(type=fields[0], truncated=nums[0], occluded=int(nums[1]), alpha=nums[2], bbox=np.array(nums[3:7]),
                dims_hwl=np.array(nums[7:10]), location=np.array(nums[10:13]), rotation_y=nums[13])


def label_to_lidar_box(label, calib):
    """Parsed label -> (7,) LiDAR box ``[x, y, z, l, w, h, heading]``, centre origin: bottom centre through
    rect_to_lidar, raised by h/2, heading = -rotation_y - pi/2 (the OpenPCDet convention)."""
    h, w, l = label["dims_hwl"]
    bottom = calib.rect_to_lidar(label["location"])[0]
    return np.array([bottom[0], bottom[1], bottom[2] + 0.5 * h, l, w, h,
                     float(wrap_angle(-label["rotation_y"] - 0.5 * np.pi))])
