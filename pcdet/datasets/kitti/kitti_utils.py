"""KITTI file helpers: scans, image sizes, field of view, calibration matrices."""
import struct
from pathlib import Path

import numpy as np

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_velodyne_bin(path, num_features=4):
    """Load a KITTI ``velodyne/<frame>.bin`` as float32 (N, num_features).

    Raises FileNotFoundError when absent and ValueError naming the file when its byte size is not a multiple of
    ``4 * num_features`` (a truncated or foreign file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"KITTI velodyne file not found: {path}")
    size = path.stat().st_size
    if size % (4 * num_features) != 0:
        raise ValueError(f"{path}: {size} bytes is not a multiple of 4 * {num_features} "
                         f"(float32 x {num_features} features per point); the file is truncated or not a KITTI scan")
    return np.fromfile(str(path), dtype=np.float32).reshape(-1, num_features)


def png_image_shape(path):
    """``(height, width)`` of a PNG read from its IHDR header (no decoding)."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.read(24)
    if len(header) < 24 or header[:8] != _PNG_SIGNATURE or header[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file (bad signature or IHDR chunk)")
    width, height = struct.unpack(">II", header[16:24])
    return height, width


def get_fov_flag(pts_rect, img_shape, calib):
    """(N,) bool: rect-camera points (N, 3) projecting inside the image ``(height, width)`` with depth >= 0."""
    pts_img, pts_rect_depth = calib.rect_to_img(pts_rect)
    in_u = (pts_img[:, 0] >= 0) & (pts_img[:, 0] < img_shape[1])
    in_v = (pts_img[:, 1] >= 0) & (pts_img[:, 1] < img_shape[0])
    return in_u & in_v & (pts_rect_depth >= 0)


def calib_to_matricies(calib):
    """``(V2R (4, 4), P2 (4, 4))``: homogeneous LiDAR -> rect and rect -> image matrices of a Calibration."""
    v2c = np.vstack((calib.V2C, np.array([0, 0, 0, 1], dtype=np.float32)))
    r0 = np.hstack((calib.R0, np.zeros((3, 1), dtype=np.float32)))
    r0 = np.vstack((r0, np.array([0, 0, 0, 1], dtype=np.float32)))
    p2 = np.vstack((calib.P2, np.array([0, 0, 0, 1], dtype=np.float32)))
    return r0 @ v2c, p2
