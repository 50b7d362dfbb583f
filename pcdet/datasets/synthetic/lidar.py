"""Spinning-LiDAR sweep simulation: ray casting plus dropout, range noise and intensity."""
from dataclasses import dataclass

import numpy as np

from . import raycast as rc
from .scene import MATERIAL_DROPOUT, REFLECTANCE, hdl64e_elevations

AZIMUTH_BINS = 720


@dataclass
class Sweep:
    """points: (N, 4) float32 ``[x, y, z, intensity]``; hit_id: (N,) int64 object id or raycast.HIT_GROUND;
    beam: (N,) int64 laser index; rays_alone / rays_hit: (K_obj,) int64 occlusion ray counts (see cast_scan)."""
    points: np.ndarray
    hit_id: np.ndarray
    beam: np.ndarray
    rays_alone: np.ndarray
    rays_hit: np.ndarray


def beam_elevations(preset):
    """(B,) radians: HDL-64E elevations, every preset.beam_stride-th laser counted from the lowest one (which
    is always kept, so the near ground stays covered)."""
    elev = hdl64e_elevations()
    return np.deg2rad(elev[(len(elev) - 1) % preset.beam_stride::preset.beam_stride])


def azimuths(preset):
    """(A,) radians in [-pi, pi): one sweep at preset.azimuth_step_deg."""
    n = int(round(360.0 / preset.azimuth_step_deg))
    return -np.pi + 2.0 * np.pi * np.arange(n) / n


def simulate_sweep(scene, preset, rng):
    """Cast one sweep against ``scene`` and apply the sensor model.

    Dropout: a return survives with probability ``(1 - base_dropout) * (1 - material dropout) * p_detect``, where
    ``p_detect`` is a logistic function of the log signal ``refl * (0.3 + 0.7 cos_inc) / (r / 20)^2`` around
    ``preset.detect_floor`` (far, dark, grazing returns thin out). Range noise: Gaussian, sigma
    ``noise_sigma + noise_per_m * r``. Intensity: ``refl * (0.35 + 0.65 cos_inc) * (1 - 0.4 min(r / 80, 1))`` plus
    Gaussian noise 0.03, clipped to [0, 1] and quantised to 0.01 as in KITTI.

    Args:
        scene: Scene from sample_scene.
        preset: Preset.
        rng: numpy Generator (consumed in a fixed order, so the sweep is a pure function of it).
    Returns:
        Sweep.
    """
    elev = beam_elevations(preset)
    azim = azimuths(preset)
    dist, hit_id, material, cos_inc, rays_alone, rays_hit = rc.cast_scan(
        elev, azim, scene.prims, scene.ground, preset.max_range, len(scene.objects), AZIMUTH_BINS)
    n_ret = int(np.count_nonzero(hit_id != rc.HIT_NONE))
    u_drop = rng.random(n_ret)
    noise = rng.standard_normal(n_ret)
    i_noise = rng.standard_normal(n_ret)
    points, ids, beam = rc.apply_sensor_model(
        dist, hit_id, material, cos_inc, elev, azim, REFLECTANCE, MATERIAL_DROPOUT, u_drop, noise, i_noise,
        preset.base_dropout, preset.detect_floor, preset.noise_sigma, preset.noise_per_m)
    return Sweep(points=points, hit_id=ids, beam=beam, rays_alone=rays_alone, rays_hit=rays_hit)
