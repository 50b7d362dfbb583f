"""KITTI calibration: LiDAR <-> rectified camera <-> image (left colour camera, P2).

Frames: LiDAR (x forward, y left, z up); rectified camera ("rect", x right, y down, z forward);
image pixels ``(u, v)``. Method names follow OpenPCDet so its box utilities work unchanged.
"""
from pathlib import Path

import numpy as np

_REQUIRED_KEYS = ("P2", "R0_rect", "Tr_velo_to_cam")


def get_calib_from_file(calib_file):
    """Parse a KITTI ``calib/<frame>.txt`` into ``{'P2' (3, 4), 'P3' (3, 4), 'R0' (3, 3), 'Tr_velo2cam' (3, 4)}``.

    Raises FileNotFoundError when the file is absent and ValueError naming the file for a missing or
    malformed key.
    """
    calib_file = Path(calib_file)
    if not calib_file.is_file():
        raise FileNotFoundError(f"KITTI calib file not found: {calib_file}")
    values = {}
    with open(calib_file, "r") as f:
        for line in f:
            if ":" not in line:
                continue
            key, text = line.split(":", 1)
            try:
                values[key.strip()] = np.array(text.split(), dtype=np.float32)
            except ValueError as exc:
                raise ValueError(f"{calib_file}: key '{key.strip()}' has non-numeric values") from exc
    missing = [k for k in _REQUIRED_KEYS if k not in values]
    if missing:
        raise ValueError(f"{calib_file}: missing calibration keys {missing} (found {sorted(values)})")

    def _shaped(key, shape):
        arr = values[key]
        if arr.size != shape[0] * shape[1]:
            raise ValueError(f"{calib_file}: key '{key}' has {arr.size} values, expected {shape[0] * shape[1]}")
        return arr.reshape(shape)

    return {
        "P2": _shaped("P2", (3, 4)),
        "P3": _shaped("P3", (3, 4)) if "P3" in values else None,
        "R0": _shaped("R0_rect", (3, 3)),
        "Tr_velo2cam": _shaped("Tr_velo_to_cam", (3, 4)),
    }


class Calibration:
    """KITTI calibration of one frame, built from a calib file path or a dict as returned by
    ``get_calib_from_file``.

    Attributes: ``P2`` (3, 4), ``R0`` (3, 3), ``V2C`` (3, 4), intrinsics ``cu, cv, fu, fv`` and the
    baseline offsets ``tx, ty`` of P2.
    """

    def __init__(self, calib_file):
        calib = calib_file if isinstance(calib_file, dict) else get_calib_from_file(calib_file)
        self.P2 = np.asarray(calib["P2"], dtype=np.float32)
        self.R0 = np.asarray(calib["R0"], dtype=np.float32)
        self.V2C = np.asarray(calib["Tr_velo2cam"], dtype=np.float32)
        self.cu = self.P2[0, 2]
        self.cv = self.P2[1, 2]
        self.fu = self.P2[0, 0]
        self.fv = self.P2[1, 1]
        self.tx = self.P2[0, 3] / (-self.fu)
        self.ty = self.P2[1, 3] / (-self.fv)

    def __repr__(self):
        return f"Calibration(fu={self.fu:.2f}, fv={self.fv:.2f}, cu={self.cu:.2f}, cv={self.cv:.2f})"

    @staticmethod
    def cart_to_hom(pts):
        """(N, 3) -> (N, 4) homogeneous coordinates."""
        return np.hstack((pts, np.ones((pts.shape[0], 1), dtype=np.float32)))

    def _rect_from_lidar_matrix(self):
        # 4x4 map from homogeneous LiDAR points to homogeneous rect points: R0_ext @ V2C_ext.
        r0_ext = np.eye(4, dtype=np.float64)
        r0_ext[:3, :3] = self.R0
        v2c_ext = np.eye(4, dtype=np.float64)
        v2c_ext[:3, :] = self.V2C
        return r0_ext @ v2c_ext

    def rect_to_lidar(self, pts_rect):
        """(N, 3) rect-camera points -> (N, 3) LiDAR points (float32)."""
        pts_rect = np.asarray(pts_rect, dtype=np.float64).reshape(-1, 3)
        inv = np.linalg.inv(self._rect_from_lidar_matrix())
        return (pts_rect @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)

    def lidar_to_rect(self, pts_lidar):
        """(N, 3) LiDAR points -> (N, 3) rect-camera points (float32)."""
        pts_lidar = np.asarray(pts_lidar, dtype=np.float64).reshape(-1, 3)
        mat = self._rect_from_lidar_matrix()
        return (pts_lidar @ mat[:3, :3].T + mat[:3, 3]).astype(np.float32)

    def rect_to_img(self, pts_rect):
        """(N, 3) rect points -> ``(pts_img (N, 2) pixels, depth (N,))``; depth is z in the camera-2 frame."""
        pts_rect = np.asarray(pts_rect, dtype=np.float32).reshape(-1, 3)
        pts_2d_hom = pts_rect @ self.P2[:, 0:3].T + self.P2[:, 3]
        pts_img = pts_2d_hom[:, 0:2] / pts_rect[:, 2:3]
        depth = pts_2d_hom[:, 2] - self.P2[2, 3]
        return pts_img, depth

    def lidar_to_img(self, pts_lidar):
        """(N, 3) LiDAR points -> ``(pts_img (N, 2), depth (N,))``."""
        return self.rect_to_img(self.lidar_to_rect(pts_lidar))

    def img_to_rect(self, u, v, depth_rect):
        """Back-project pixels ``u, v`` (N,) with rect depth (N,) -> (N, 3) rect points."""
        x = ((u - self.cu) * depth_rect) / self.fu + self.tx
        y = ((v - self.cv) * depth_rect) / self.fv + self.ty
        return np.stack((x, y, depth_rect), axis=1).astype(np.float32)

    def corners3d_to_img_boxes(self, corners3d):
        """Project rect-camera box corners (N, 8, 3) -> ``(boxes (N, 4) [x1, y1, x2, y2], corners (N, 8, 2))``."""
        corners3d = np.asarray(corners3d, dtype=np.float32)
        num = corners3d.shape[0]
        hom = np.concatenate((corners3d, np.ones((num, 8, 1), dtype=np.float32)), axis=2)
        img_pts = hom @ self.P2.T
        uv = img_pts[:, :, 0:2] / img_pts[:, :, 2:3]
        if num == 0:
            return np.zeros((0, 4), dtype=np.float32), np.zeros((0, 8, 2), dtype=np.float32)
        boxes = np.concatenate((uv.min(axis=1), uv.max(axis=1)), axis=1)
        return boxes, uv
