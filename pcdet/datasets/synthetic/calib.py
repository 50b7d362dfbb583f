"""KITTI-like calibrations for the synthetic dataset, the KITTI calib text format, and frame transforms.

Two calibration variants are used (picked per frame), with values of the order of the KITTI raw-data drives
(focal length ~707-721 px, principal point near (605, 175), stereo baseline ~0.54 m, camera ~0.27 m in front
of the LiDAR and ~0.08 m below it) so that readers which reuse one frame's calibration for another are caught.
"""
from dataclasses import dataclass

import numpy as np

IMAGE_SHAPE = (375, 1242)  # (height, width), pixels

_R0_A = [[9.999239e-01, 9.837760e-03, -7.445048e-03],
         [-9.869795e-03, 9.999421e-01, -4.278459e-03],
         [7.402527e-03, 4.351614e-03, 9.999631e-01]]
_V2C_A = [[7.533745e-03, -9.999714e-01, -6.166020e-04, -4.069766e-03],
          [1.480249e-02, 7.280733e-04, -9.998902e-01, -7.631618e-02],
          [9.998621e-01, 7.523790e-03, 1.480755e-02, -2.717806e-01]]
_R0_B = [[9.999454e-01, 7.259129e-03, -7.519551e-03],
         [-7.292213e-03, 9.999638e-01, -4.381729e-03],
         [7.487471e-03, 4.436324e-03, 9.999621e-01]]
_V2C_B = [[6.927964e-03, -9.999722e-01, -2.757829e-03, -2.457729e-02],
          [-1.162982e-03, 2.749836e-03, -9.999955e-01, -6.127237e-02],
          [9.999753e-01, 6.931141e-03, -1.143899e-03, -3.321029e-01]]
_IMU2VELO = [[9.999976e-01, 7.553071e-04, -2.035826e-03, -8.086759e-01],
             [-7.854027e-04, 9.998898e-01, -1.482298e-02, 3.195559e-01],
             [2.024406e-03, 1.482454e-02, 9.998881e-01, -7.997231e-01]]
# (focal, cx, cy) per variant; camera centre offsets (tx, ty, tz) of cam 0..3 in metres, P_i = K [I | t_i]
_INTRINSICS = [(721.5377, 609.5593, 172.8540), (707.0493, 604.0814, 180.5066)]
_CAM_OFFSETS = [(0.0, 0.0, 0.0), (-0.5372, 0.0, 0.0), (0.0598, -0.0003, 0.0027), (-0.4730, 0.0031, 0.0037)]


@dataclass
class KittiCalib:
    """One frame's calibration. P: (4, 3, 4) P0..P3; R0: (3, 3); V2C: (3, 4) Tr_velo_to_cam; I2V: (3, 4)."""
    P: np.ndarray
    R0: np.ndarray
    V2C: np.ndarray
    I2V: np.ndarray

    @property
    def P2(self):
        return self.P[2]

    def lidar_to_rect(self, pts):
        """(N, 3) LiDAR points -> (N, 3) rectified camera (cam 0) coordinates."""
        pts = np.asarray(pts, np.float64).reshape(-1, 3)
        cam = pts @ self.V2C[:, :3].T + self.V2C[:, 3]
        return cam @ self.R0.T

    def rect_to_lidar(self, pts):
        """(N, 3) rectified camera points -> (N, 3) LiDAR points (inverse of lidar_to_rect)."""
        pts = np.asarray(pts, np.float64).reshape(-1, 3)
        cam = np.linalg.solve(self.R0, pts.T).T
        return np.linalg.solve(self.V2C[:, :3], (cam - self.V2C[:, 3]).T).T

    def rect_to_image(self, pts):
        """(N, 3) rectified points with depth > 0 -> (N, 2) pixel coordinates through P2."""
        pts = np.asarray(pts, np.float64).reshape(-1, 3)
        hom = np.concatenate([pts, np.ones((pts.shape[0], 1))], axis=1) @ self.P2.T
        return hom[:, :2] / hom[:, 2:3]


def make_calib(variant):
    """KittiCalib for variant 0 or 1 (see module docstring)."""
    if variant not in (0, 1):
        raise ValueError(f"calib.make_calib: variant must be 0 or 1, got {variant!r}")
    f, cx, cy = _INTRINSICS[variant]
    P = np.zeros((4, 3, 4))
    for i, (tx, ty, tz) in enumerate(_CAM_OFFSETS):
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        P[i, :, :3] = K
        P[i, :, 3] = K @ np.array([tx, ty, tz])
    R0, V2C = (_R0_A, _V2C_A) if variant == 0 else (_R0_B, _V2C_B)
    return KittiCalib(P=P, R0=np.array(R0), V2C=np.array(V2C), I2V=np.array(_IMU2VELO))


def _fmt(values):
    return " ".join(f"{v:.12e}" for v in np.asarray(values, np.float64).ravel())


def calib_to_text(calib):
    """KITTI object calib text: P0..P3 (3x4), R0_rect (3x3), Tr_velo_to_cam, Tr_imu_to_velo (3x4), row-major."""
    lines = [f"P{i}: {_fmt(calib.P[i])}" for i in range(4)]
    lines.append(f"R0_rect: {_fmt(calib.R0)}")
    lines.append(f"Tr_velo_to_cam: {_fmt(calib.V2C)}")
    lines.append(f"Tr_imu_to_velo: {_fmt(calib.I2V)}")
    return "\n".join(lines) + "\n"


def read_calib_file(path):
    """Parse a KITTI object calib file into a KittiCalib; errors name the file and the missing/bad key."""
    values = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            key, sep, rest = line.partition(":")
            if not sep:
                raise ValueError(f"{path}: calib line without 'key:' -> {line.strip()!r}")
            values[key.strip()] = np.array([float(x) for x in rest.split()])
    expected = {"P0": 12, "P1": 12, "P2": 12, "P3": 12, "R0_rect": 9, "Tr_velo_to_cam": 12, "Tr_imu_to_velo": 12}
    for key, size in expected.items():
        if key not in values:
            raise ValueError(f"{path}: calib key {key!r} missing")
        if values[key].size != size:
            raise ValueError(f"{path}: calib key {key!r} has {values[key].size} values, expected {size}")
    P = np.stack([values[f"P{i}"].reshape(3, 4) for i in range(4)])
    return KittiCalib(P=P, R0=values["R0_rect"].reshape(3, 3), V2C=values["Tr_velo_to_cam"].reshape(3, 4),
                      I2V=values["Tr_imu_to_velo"].reshape(3, 4))
