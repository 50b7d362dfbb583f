"""KITTI ``label_2`` objects.

A label line has 15 fields (16 with a score): ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry``.
The location is the bottom centre of the box in the rectified camera frame.
"""
from pathlib import Path

import numpy as np

CLS_TYPE_TO_ID = {"Car": 1, "Pedestrian": 2, "Cyclist": 3, "Van": 4}

# KITTI benchmark difficulty: minimum 2D box height (px), maximum truncation, maximum occlusion level.
DIFFICULTY_LEVELS = ((0, "Easy", 40, 0.15, 0), (1, "Moderate", 25, 0.3, 1), (2, "Hard", 25, 0.5, 2))


def get_objects_from_label(label_file):
    """List of ``Object3d`` parsed from a KITTI label file (FileNotFoundError / ValueError name the file)."""
    label_file = Path(label_file)
    if not label_file.is_file():
        raise FileNotFoundError(f"KITTI label file not found: {label_file}")
    objects = []
    with open(label_file, "r") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                objects.append(Object3d(line))
            except ValueError as exc:
                raise ValueError(f"{label_file}:{line_no}: {exc}") from exc
    return objects


def kitti_difficulty(box2d_height, truncation, occlusion):
    """KITTI difficulty level: 0 easy, 1 moderate, 2 hard, -1 when the object meets none of them."""
    for level, _, min_height, max_trunc, max_occ in DIFFICULTY_LEVELS:
        if box2d_height >= min_height and truncation <= max_trunc and occlusion <= max_occ:
            return level
    return -1


class Object3d:
    """One KITTI label line; ``h, w, l`` in metres, ``loc`` (3,) bottom centre in rect camera, ``ry`` yaw."""

    def __init__(self, line):
        fields = line.split()   # any whitespace: single spaces in KITTI, but tools write tabs or double spaces
        if len(fields) < 15:
            raise ValueError(f"label line has {len(fields)} fields, expected 15 or 16: '{line.strip()}'")
        self.src = line
        self.cls_type = fields[0]
        self.cls_id = CLS_TYPE_TO_ID.get(self.cls_type, -1)
        self.truncation = float(fields[1])
        self.occlusion = float(fields[2])  # 0 fully visible, 1 partly, 2 largely occluded, 3 unknown
        self.alpha = float(fields[3])
        self.box2d = np.array([float(v) for v in fields[4:8]], dtype=np.float32)
        self.h = float(fields[8])
        self.w = float(fields[9])
        self.l = float(fields[10])
        self.loc = np.array([float(v) for v in fields[11:14]], dtype=np.float32)
        self.dis_to_cam = float(np.linalg.norm(self.loc))
        self.ry = float(fields[14])
        self.score = float(fields[15]) if len(fields) >= 16 else -1.0
        if self.cls_type != "DontCare":   # DontCare regions carry -1 sizes and -1000 locations by convention
            dims = {"h": self.h, "w": self.w, "l": self.l}
            bad = {k: v for k, v in dims.items() if not (np.isfinite(v) and v > 0)}
            if bad:
                raise ValueError(f"{self.cls_type}: box size must be finite and positive, got "
                                 + ", ".join(f"{k}={v}" for k, v in bad.items()) + f": '{line.strip()}'")
            if not (np.isfinite(self.loc).all() and np.isfinite(self.ry)):
                raise ValueError(f"{self.cls_type}: location / rotation_y must be finite: '{line.strip()}'")
        self.level = kitti_difficulty(self.box2d[3] - self.box2d[1] + 1, self.truncation, self.occlusion)
        self.level_str = {0: "Easy", 1: "Moderate", 2: "Hard"}.get(self.level, "UnKnown")

    def generate_corners3d(self):
        """(8, 3) box corners in the rect camera frame (bottom face first, then top; y points down)."""
        l, h, w = self.l, self.h, self.w
        x_corners = [l / 2, l / 2, -l / 2, -l / 2, l / 2, l / 2, -l / 2, -l / 2]
        y_corners = [0, 0, 0, 0, -h, -h, -h, -h]
        z_corners = [w / 2, -w / 2, -w / 2, w / 2, w / 2, -w / 2, -w / 2, w / 2]
        rot = np.array([[np.cos(self.ry), 0, np.sin(self.ry)],
                        [0, 1, 0],
                        [-np.sin(self.ry), 0, np.cos(self.ry)]])
        corners = rot @ np.vstack([x_corners, y_corners, z_corners])
        return (corners.T + self.loc).astype(np.float32)

    def to_kitti_format(self):
        return (f"{self.cls_type} {self.truncation:.2f} {int(self.occlusion)} {self.alpha:.2f} "
                f"{self.box2d[0]:.2f} {self.box2d[1]:.2f} {self.box2d[2]:.2f} {self.box2d[3]:.2f} "
                f"{self.h:.2f} {self.w:.2f} {self.l:.2f} {self.loc[0]:.2f} {self.loc[1]:.2f} {self.loc[2]:.2f} "
                f"{self.ry:.2f}")
