"""Synthetic KITTI-format generator: determinism, layout and formats, label geometry, sensor model.

The label round trip uses this file's own math: a KITTI label's bottom centre ``p_rect`` maps to the LiDAR frame
through ``inv(R0_4x4 @ Tr_velo_to_cam_4x4) @ [p_rect, 1]``; the box centre is that point raised by h / 2 along
LiDAR z, and the LiDAR heading is ``-rotation_y - pi / 2``.
"""
import hashlib
import json
import os

import numpy as np
import pytest

from pcdet.datasets.synthetic import raycast as rc
from pcdet.datasets.synthetic.generate import generate_dataset, generate_frame
from pcdet.datasets.synthetic.lidar import simulate_sweep
from pcdet.datasets.synthetic.scene import (MATERIAL_IDS, Scene, SceneObject, get_preset, sample_scene)

CLASSES = {"Car", "Pedestrian", "Cyclist", "Van", "Truck", "DontCare"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(str(root), 4, seed=3, val_fraction=0.25, num_test_frames=1)
    return root


def _tree_hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _read_calib(path):
    mats = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                key, vals = line.split(":", 1)
                mats[key] = np.array(vals.split(), dtype=np.float64)
    return mats


def _read_labels(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def _velo(root, idx):
    return np.fromfile(os.path.join(root, "training", "velodyne", f"{idx:06d}.bin"), dtype=np.float32).reshape(-1, 4)


def _rect_to_velo(mats, p_rect):
    r0 = np.eye(4)
    r0[:3, :3] = mats["R0_rect"].reshape(3, 3)
    tr = np.eye(4)
    tr[:3, :] = mats["Tr_velo_to_cam"].reshape(3, 4)
    return (np.linalg.inv(r0 @ tr) @ np.append(p_rect, 1.0))[:3]


def _label_box(mats, fields):
    h, w, l = (float(v) for v in fields[8:11])
    bottom = _rect_to_velo(mats, np.array([float(v) for v in fields[11:14]]))
    heading = -float(fields[14]) - np.pi / 2
    return np.array([bottom[0], bottom[1], bottom[2] + h / 2, l, w, h, np.arctan2(np.sin(heading), np.cos(heading))])


def _count_in_box(points, box):
    d = points[:, :3].astype(np.float64) - box[:3]
    c, s = np.cos(box[6]), np.sin(box[6])
    u = c * d[:, 0] + s * d[:, 1]
    v = -s * d[:, 0] + c * d[:, 1]
    return int(np.sum((np.abs(u) <= box[3] / 2) & (np.abs(v) <= box[4] / 2) & (np.abs(d[:, 2]) <= box[5] / 2)))


def test_same_seed_byte_identical_across_workers_and_reruns_and_seed_matters(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_dataset(str(a), 2, seed=11, num_test_frames=1, workers=0)
    generate_dataset(str(b), 3, seed=11, num_test_frames=2, workers=0)
    generate_dataset(str(b), 2, seed=11, num_test_frames=1, workers=2)
    generate_dataset(str(c), 2, seed=12, num_test_frames=1, workers=0)
    ha, hb, hc = _tree_hashes(a), _tree_hashes(b), _tree_hashes(c)
    assert len(ha) == 2 * 4 + 2 + 3 + 2
    assert ha == hb
    assert ha["training/velodyne/000000.bin"] != hc["training/velodyne/000000.bin"]


def test_layout_and_formats(dataset):
    sets = {n: (dataset / "ImageSets" / f"{n}.txt").read_text().split() for n in ("train", "val", "test")}
    assert sorted(sets["train"] + sets["val"]) == ["000000", "000001", "000002", "000003"]
    assert len(sets["val"]) == 1 and sets["test"] == ["000000"]
    assert (dataset / "testing" / "velodyne" / "000000.bin").is_file()
    assert not (dataset / "testing" / "label_2").exists()
    meta = json.loads((dataset / "synthetic_meta.json").read_text())
    assert meta["seed"] == 3 and meta["num_training_frames"] == 4 and meta["image_shape"] == [375, 1242]
    assert "seed 3" in (dataset / "README.txt").read_text()
    for idx in range(4):
        pts = _velo(dataset, idx)
        assert 60000 < len(pts) < 200000
        assert np.isfinite(pts).all()
        assert pts[:, 3].min() >= 0.0 and pts[:, 3].max() <= 1.0
        assert np.hypot(pts[:, 0], pts[:, 1]).max() < 125.0
        assert (pts[:, 0] < 0).mean() > 0.2, "the scan covers 360 degrees, not only the camera view"
        mats = _read_calib(dataset / "training" / "calib" / f"{idx:06d}.txt")
        assert list(mats) == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"]
        assert [m.size for m in mats.values()] == [12, 12, 12, 12, 9, 12, 12]
        p2 = mats["P2"].reshape(3, 4)
        assert 650 < p2[0, 0] < 760 and 550 < p2[0, 2] < 650 and p2[2, 2] == 1.0
        np.testing.assert_allclose(mats["R0_rect"].reshape(3, 3) @ mats["R0_rect"].reshape(3, 3).T, np.eye(3),
                                   atol=1e-5)
        labels = _read_labels(dataset / "training" / "label_2" / f"{idx:06d}.txt")
        for fields in labels:
            assert len(fields) == 15 and fields[0] in CLASSES
            bbox = [float(v) for v in fields[4:8]]
            assert 0 <= bbox[0] < bbox[2] <= 1241 and 0 <= bbox[1] < bbox[3] <= 374
            if fields[0] != "DontCare":
                assert fields[2] in ("0", "1", "2", "3") and 0.0 <= float(fields[1]) <= 1.0
                if float(fields[1]) < 0.5:
                    assert float(fields[13]) > 0, "labelled objects are in front of the camera"
    all_types = [f[0] for i in range(4) for f in _read_labels(dataset / "training" / "label_2" / f"{i:06d}.txt")]
    assert all_types.count("Car") >= 4


def test_label_geometry_round_trip_and_point_counts(dataset):
    near_clear, near_clear_with_points, checked = 0, 0, 0
    for idx in range(4):
        mats = _read_calib(dataset / "training" / "calib" / f"{idx:06d}.txt")
        p2 = mats["P2"].reshape(3, 4)
        pts = _velo(dataset, idx)
        labels = _read_labels(dataset / "training" / "label_2" / f"{idx:06d}.txt")
        meta = json.loads((dataset / "training" / "synth_meta" / f"{idx:06d}.json").read_text())
        assert len(meta["objects"]) == len(labels)
        for fields, info in zip(labels, meta["objects"]):
            assert fields[0] == info["type"]
            if fields[0] == "DontCare":
                continue
            box = _label_box(mats, fields)
            truth = np.array(info["lidar_box"])
            np.testing.assert_allclose(box[:6], truth[:6], atol=0.02)
            assert abs(np.arctan2(np.sin(box[6] - truth[6]), np.cos(box[6] - truth[6]))) < 0.01
            loc = np.array([float(v) for v in fields[11:14]])
            alpha = float(fields[14]) - np.arctan2(loc[0], loc[2])
            assert abs(np.arctan2(np.sin(alpha - float(fields[3])), np.cos(alpha - float(fields[3])))) < 0.02
            count = _count_in_box(pts, box)
            assert abs(count - info["num_points_in_box"]) <= max(2, 0.02 * count)
            if float(fields[1]) == 0.0:
                l, w, h = box[3:6]
                corners = np.array([[sx * l / 2, sy * w / 2, sz * h / 2] for sx in (-1, 1) for sy in (-1, 1)
                                    for sz in (-1, 1)])
                c, s = np.cos(box[6]), np.sin(box[6])
                velo = corners @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + box[:3]
                r0 = mats["R0_rect"].reshape(3, 3)
                tr = mats["Tr_velo_to_cam"].reshape(3, 4)
                rect = (r0 @ (velo @ tr[:, :3].T + tr[:, 3]).T).T
                uvw = np.hstack([rect, np.ones((8, 1))]) @ p2.T
                uv = uvw[:, :2] / uvw[:, 2:]
                expect = [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()]
                np.testing.assert_allclose([float(v) for v in fields[4:8]], expect, atol=3.0)
                checked += 1
            if np.hypot(box[0], box[1]) < 30 and fields[2] == "0" and float(fields[1]) < 0.5:
                near_clear += 1
                near_clear_with_points += count > 0
    assert checked >= 5
    assert near_clear >= 3 and near_clear_with_points >= 0.9 * near_clear


def test_ground_at_sensor_height_and_on_the_modelled_plane(dataset):
    preset = get_preset("default")
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, preset)
    scene.ground[rc.G_SX] = 0.0
    scene.ground[rc.G_SY] = 0.0
    sweep = simulate_sweep(scene, preset, rng)
    p = sweep.points
    road = (sweep.hit_id == rc.HIT_GROUND) & (np.hypot(p[:, 0], p[:, 1]) < 8.0)
    v = -scene.ground[rc.G_SIN] * p[:, 0] + scene.ground[rc.G_COS] * p[:, 1]
    road &= (v > scene.ground[rc.G_VLO] + 0.2) & (v < scene.ground[rc.G_VHI] - 0.2)
    assert road.sum() > 1000
    assert abs(np.median(p[road, 2]) + 1.73) < 0.005
    assert np.percentile(np.abs(p[road, 2] + 1.73), 95) < 0.03

    meta = json.loads((dataset / "training" / "synth_meta" / "000000.json").read_text())["road"]
    pts = _velo(dataset, 0)
    ring = (np.hypot(pts[:, 0], pts[:, 1]) > 3.5) & (np.hypot(pts[:, 0], pts[:, 1]) < 8.0)
    v = -np.sin(meta["theta"]) * pts[:, 0] + np.cos(meta["theta"]) * pts[:, 1]
    plane = -1.73 + meta["sx"] * pts[:, 0] + meta["sy"] * pts[:, 1] + meta["curb"] * ((v < meta["v_lo"]) |
                                                                                        (v > meta["v_hi"]))
    on_ground = np.abs(pts[ring, 2] - plane[ring]) < 0.05
    assert on_ground.mean() > 0.6


@pytest.mark.parametrize("preset,beams", [("default", 64), ("hard", 32)])
def test_distinct_beam_elevations(preset, beams):
    frame = generate_frame(5, "training", 0, get_preset(preset))
    p = frame["points"].astype(np.float64)
    elev = np.sort(np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1]))))
    clusters = 1 + int(np.sum(np.diff(elev) > 0.1))
    assert clusters == beams
    assert -25.2 < elev[0] < -24.6 and elev[-1] < 2.3


def _single(kind, **kw):
    row = np.zeros(rc.NUM_COLS)
    row[rc.C_TYPE] = kind
    row[rc.C_COS] = 1.0
    for key, val in kw.items():
        row[getattr(rc, "C_" + key.upper())] = val
    return row


def test_raycast_primitives_exact_distances():
    ground = np.zeros(rc.GROUND_LEN)
    ground[rc.G_Z0] = -1.73
    ground[rc.G_COS] = 1.0
    ground[rc.G_VLO], ground[rc.G_VHI] = -100.0, 100.0
    elev = np.array([0.0, np.radians(-10.0)])
    azim = np.array([0.0, 0.5 * np.pi, np.pi - 1e-9])
    prims = np.stack([_single(rc.PRIM_BOX, cx=10.0, hx=1.0, hy=1.0, hz=0.5, obj=0),
                      _single(rc.PRIM_CYLINDER, cy=6.0, hx=0.5, hy=0.5, hz=0.5, obj=1),
                      _single(rc.PRIM_ELLIPSOID, cx=-5.0, hx=0.5, hy=0.5, hz=0.6, obj=2)])
    dist, hit, _, cos, alone, hits = rc.cast_scan(elev, azim, prims, ground, 120.0, 3, 36)
    np.testing.assert_allclose(dist[:3], [9.0, 5.5, 4.5], atol=1e-9)
    assert hit[:3].tolist() == [0, 1, 2]
    np.testing.assert_allclose(cos[:3], [1.0, 1.0, 1.0], atol=1e-9)
    assert hit[3:].tolist() == [rc.HIT_GROUND] * 3
    np.testing.assert_allclose(dist[3:], 1.73 / np.sin(np.radians(10.0)), rtol=1e-9)
    np.testing.assert_allclose(cos[3:], np.sin(np.radians(10.0)), rtol=1e-9)
    assert alone.tolist() == [1, 1, 1] and hits.tolist() == [1, 1, 1]


def test_occlusion_from_ray_casting():
    preset = get_preset("default")
    ground = np.zeros(rc.GROUND_LEN)
    ground[rc.G_Z0] = -1.73
    ground[rc.G_COS] = 1.0
    ground[rc.G_VLO], ground[rc.G_VHI] = -100.0, 100.0
    ground[rc.G_MAT_ROAD] = ground[rc.G_MAT_SIDEWALK] = MATERIAL_IDS["asphalt"]
    mat = MATERIAL_IDS["car_paint"]
    rows = [(rc.PRIM_BOX, 10.0, 0.0, -0.98, 2.0, 0.8, 0.75, 1.0, 0.0, mat, 0),
            (rc.PRIM_BOX, 20.0, 0.5, -0.98, 2.0, 0.8, 0.75, 1.0, 0.0, mat, 1)]
    objects = [SceneObject("Car", np.array([10.0, 0.0, -0.98, 4.0, 1.6, 1.5, 0.0]), True),
               SceneObject("Car", np.array([20.0, 0.5, -0.98, 4.0, 1.6, 1.5, 0.0]), True)]
    scene = Scene(ground=ground, prims=np.array(rows, np.float64), objects=objects)
    sweep = simulate_sweep(scene, preset, np.random.default_rng(0))
    assert sweep.rays_hit[0] == sweep.rays_alone[0] > 100
    assert sweep.rays_alone[1] > 50 and sweep.rays_hit[1] < 0.5 * sweep.rays_alone[1]
    assert np.sum(sweep.hit_id == 1) < np.sum(sweep.hit_id == 0)
