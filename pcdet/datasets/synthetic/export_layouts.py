"""Write synthetic scenes in a nuScenes-like and a Waymo-like layout, so both dataset paths run end to end.

    python -m pcdet.datasets.synthetic.export_layouts --layout nuscenes --out data/synthetic_nuscenes \
        --num_frames 64 --seed 0 [--val_fraction 0.25] [--preset default] [--workers 2]
    python -m pcdet.datasets.synthetic.export_layouts --layout waymo --out data/synthetic_waymo \
        --num_frames 64 --seed 0 [--frames_per_sequence 8]

Frames come from the synthetic generator's ``generate_frame(seed, 'training', index, preset)``, so frame ``i`` is
the same scene as ``training/velodyne/%06d.bin`` of the KITTI-format dataset generated with the same seed and
preset, and the train / val split is the same. Unlike the KITTI labels (camera field of view only) every labelled
object of the 360-degree scene is written, with its LiDAR box (centre origin) and point count.
Classes: Car, Van -> car / Vehicle; Truck -> truck / Vehicle; Pedestrian -> pedestrian / Pedestrian;
Cyclist -> bicycle / Cyclist. Scenes are static and single-frame: there are no intermediate sweeps, nuScenes-like
velocities are unknown (NaN; the dataset serves 0) and Waymo-like speeds are 0.

nuScenes-like: a minimal v1.0-mini table set that nuscenes-devkit loads (train frames in scene 'scene-0061', val
frames in 'scene-0103', so the devkit's ``mini_val`` split is the val split; identity ego poses and LiDAR
calibration, no attributes, one annotation per instance so the devkit sees unknown velocities), plus the infos::

    <out>/v1.0-mini/v1.0-mini/*.json                                     the 13 tables; maps/synthetic.png
    <out>/v1.0-mini/samples/LIDAR_TOP/synthetic__LIDAR_TOP__%06d.pcd.bin   float32 (N, 5) x, y, z, intensity
                                                                           0-255, ring 0
    <out>/v1.0-mini/nuscenes_infos_10sweeps_{train,val}.pkl
    <out>/v1.0-mini/gt_database_10sweeps_withvelo/, nuscenes_dbinfos_10sweeps_withvelo.pkl

Waymo-like (OpenPCDet's processed layout)::

    <out>/ImageSets/{train,val}.txt                                      sequence names
    <out>/waymo_processed_data_v0_5_0/<sequence>/%04d.npy, <sequence>.pkl  (N, 6) x, y, z, intensity,
                                                                           elongation 0, NLZ_flag -1
    <out>/waymo_processed_data_v0_5_0_infos_{train,val}.pkl, ..._gt_database_train_sampled_1/,
    <out>/waymo_processed_data_v0_5_0_waymo_dbinfos_train_sampled_1.pkl
"""
import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from easydict import EasyDict

from ..info_io import write_pickle
from .generate import generate_frame
from .raycast import count_points_in_boxes
from .scene import get_preset

NUSCENES_NAMES = {"Car": "car", "Van": "car", "Truck": "truck", "Pedestrian": "pedestrian", "Cyclist": "bicycle"}
WAYMO_NAMES = {"Car": "Vehicle", "Van": "Vehicle", "Truck": "Vehicle", "Pedestrian": "Pedestrian",
               "Cyclist": "Cyclist"}
NUSCENES_CATEGORIES = {"Car": "vehicle.car", "Van": "vehicle.car", "Truck": "vehicle.truck",
                       "Pedestrian": "human.pedestrian.adult", "Cyclist": "vehicle.bicycle"}
NUSCENES_VERSION = "v1.0-mini"
# devkit splits: the first mini_train scene and the first mini_val scene
NUSCENES_SCENES = {"train": "scene-0061", "val": "scene-0103"}
WAYMO_TAG = "waymo_processed_data_v0_5_0"
FRAME_PERIOD_S = 0.5


def split_frames(num_frames, seed, val_fraction):
    """(train ids, val ids): the seeded split of ``generate.generate_dataset`` for the same arguments."""
    n_val = int(round(val_fraction * num_frames))
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 99])).permutation(num_frames)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def scene_frame(seed, index, preset_name):
    """One synthetic frame: ``points`` (N, 4) and all labelled objects: ``classes`` (M,), ``boxes`` (M, 7)
    LiDAR centre origin, ``num_points`` (M,)."""
    frame = generate_frame(seed, "training", index, get_preset(preset_name))
    objects = [o for o in frame["scene"].objects if o.labelled and o.cls in NUSCENES_NAMES]
    boxes = np.array([o.box for o in objects], dtype=np.float64).reshape(-1, 7)
    counts = count_points_in_boxes(frame["points"], boxes) if len(objects) else np.zeros(0, dtype=np.int64)
    return {"points": frame["points"].astype(np.float32), "classes": np.array([o.cls for o in objects], dtype=str),
            "boxes": boxes.astype(np.float32), "num_points": np.asarray(counts, dtype=np.int64)}


def _frames(seed, ids, preset, workers):
    args = [(seed, i, preset) for i in ids]
    if workers and workers > 1:
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=get_context("fork")) as pool:
            return list(pool.map(_scene_frame_task, args))
    return [scene_frame(*a) for a in args]


def _scene_frame_task(args):
    return scene_frame(*args)


def _dataset_cfg_base():
    return {"DATA_PATH": "unused", "POINT_CLOUD_RANGE": [-75.2, -75.2, -5.0, 75.2, 75.2, 5.0], "DATA_PROCESSOR": []}


# ------------------------------------------------------------------ nuScenes-like
class _NuScenesTables:
    """Collects the nuScenes JSON tables of the exported frames; ``write()`` stores them under
    ``<root>/<NUSCENES_VERSION>/`` with a one-pixel map image (the devkit opens every map file it lists)."""

    def __init__(self, root):
        self.root = Path(root)
        self.log = {"token": "synthetic-log", "logfile": "synthetic", "vehicle": "synthetic",
                    "date_captured": "2026-01-01", "location": "synthetic"}
        self.sensor = {"token": "synthetic-lidar-top", "channel": "LIDAR_TOP", "modality": "lidar"}
        self.calib = {"token": "synthetic-calib-lidar-top", "sensor_token": self.sensor["token"],
                      "translation": [0.0, 0.0, 0.0], "rotation": [1.0, 0.0, 0.0, 0.0], "camera_intrinsic": []}
        self.categories = {name: {"token": f"synthetic-category-{name}", "name": name, "description": name}
                           for name in sorted(set(NUSCENES_CATEGORIES.values()))}
        self.samples = {"train": [], "val": []}
        self.sample_data, self.ego_pose, self.instance, self.sample_annotation = [], [], [], []

    def add_sample(self, split, token, filename, timestamp_us, frame):
        self.samples[split].append({"token": token, "timestamp": timestamp_us, "prev": "", "next": "",
                                    "scene_token": f"synthetic-scene-{split}"})
        self.ego_pose.append({"token": f"{token}_pose", "timestamp": timestamp_us,
                              "translation": [0.0, 0.0, 0.0], "rotation": [1.0, 0.0, 0.0, 0.0]})
        self.sample_data.append({"token": f"{token}_lidar", "sample_token": token, "ego_pose_token": f"{token}_pose",
                                 "calibrated_sensor_token": self.calib["token"], "timestamp": timestamp_us,
                                 "fileformat": "pcd", "is_key_frame": True, "height": 0, "width": 0,
                                 "filename": filename, "prev": "", "next": ""})
        for k, (cls, box, num) in enumerate(zip(frame["classes"], frame["boxes"], frame["num_points"])):
            ann, inst = f"{token}_ann{k}", f"{token}_inst{k}"
            half = 0.5 * float(box[6])
            self.instance.append({"token": inst, "category_token": self.categories[NUSCENES_CATEGORIES[cls]]["token"],
                                  "nbr_annotations": 1, "first_annotation_token": ann, "last_annotation_token": ann})
            self.sample_annotation.append({
                "token": ann, "sample_token": token, "instance_token": inst, "visibility_token": "4",
                "attribute_tokens": [], "translation": [float(v) for v in box[0:3]],
                "size": [float(box[4]), float(box[3]), float(box[5])],
                "rotation": [float(np.cos(half)), 0.0, 0.0, float(np.sin(half))], "prev": "", "next": "",
                "num_lidar_pts": int(num), "num_radar_pts": 0})

    def write(self):
        scenes = []
        for split, samples in self.samples.items():
            samples.sort(key=lambda r: r["timestamp"])
            for a, b in zip(samples[:-1], samples[1:]):
                a["next"], b["prev"] = b["token"], a["token"]
            if samples:
                scenes.append({"token": f"synthetic-scene-{split}", "log_token": self.log["token"],
                               "nbr_samples": len(samples), "first_sample_token": samples[0]["token"],
                               "last_sample_token": samples[-1]["token"], "name": NUSCENES_SCENES[split],
                               "description": f"synthetic {split} frames"})
        from PIL import Image
        (self.root / "maps").mkdir(parents=True, exist_ok=True)
        Image.new("L", (1, 1), 255).save(self.root / "maps" / "synthetic.png")
        tables = {
            "category": list(self.categories.values()), "attribute": [],
            "visibility": [{"token": "4", "level": "v80-100", "description": "visibility of whole object is "
                                                                             "between 80 and 100%"}],
            "instance": self.instance, "sensor": [self.sensor], "calibrated_sensor": [self.calib],
            "ego_pose": self.ego_pose, "log": [self.log], "scene": scenes,
            "sample": self.samples["train"] + self.samples["val"], "sample_data": self.sample_data,
            "sample_annotation": self.sample_annotation,
            "map": [{"token": "synthetic-map", "log_tokens": [self.log["token"]], "category": "semantic_prior",
                     "filename": "maps/synthetic.png"}],
        }
        table_dir = self.root / NUSCENES_VERSION
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, records in tables.items():
            with open(table_dir / f"{name}.json", "w") as f:
                json.dump(records, f)


def export_nuscenes_like(out_dir, num_frames, seed, val_fraction=0.25, preset="default", workers=0,
                         max_sweeps=10):
    """Write the nuScenes-like layout (module docstring); returns ``{'train': n, 'val': n}``."""
    from ..nuscenes.nuscenes_dataset import create_groundtruth_database_from_cfg

    root = Path(out_dir) / NUSCENES_VERSION
    lidar_dir = root / "samples" / "LIDAR_TOP"
    lidar_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    tables = _NuScenesTables(root)
    for split, ids in zip(("train", "val"), split_frames(num_frames, seed, val_fraction)):
        infos = []
        for index, frame in zip(ids, _frames(seed, ids, preset, workers)):
            pts = frame["points"]
            raw = np.zeros((pts.shape[0], 5), dtype=np.float32)
            raw[:, :3] = pts[:, :3]
            raw[:, 3] = np.round(np.clip(pts[:, 3], 0.0, 1.0) * 255.0)
            rel = Path("samples") / "LIDAR_TOP" / f"synthetic__LIDAR_TOP__{index:06d}.pcd.bin"
            raw.tofile(root / rel)
            m = len(frame["classes"])
            # velocity unknown (NaN), as the devkit reads it from a single annotation per instance; the dataset
            # serves 0 for training
            boxes = np.full((m, 9), np.nan, dtype=np.float32)
            boxes[:, :7] = frame["boxes"]
            token = f"synthetic{seed}_{index:06d}"
            infos.append({"lidar_path": str(rel), "token": token, "timestamp": index * FRAME_PERIOD_S,
                          "sweeps": [], "ref_from_car": np.eye(4), "car_from_global": np.eye(4),
                          "gt_boxes": boxes, "gt_names": np.array([NUSCENES_NAMES[c] for c in frame["classes"]]),
                          "gt_boxes_token": np.array([f"{token}_{k}" for k in range(m)]),
                          "num_lidar_pts": frame["num_points"], "num_radar_pts": np.zeros(m, dtype=np.int64)})
            tables.add_sample(split, token, str(rel), int(index * FRAME_PERIOD_S * 1e6), frame)
        write_pickle(root / f"nuscenes_infos_{max_sweeps}sweeps_{split}.pkl", infos)
        counts[split] = len(infos)
    tables.write()
    cfg = EasyDict(dict(_dataset_cfg_base(), DATASET="NuScenesDataset", VERSION=NUSCENES_VERSION,
                        MAX_SWEEPS=max_sweeps,
                        POINT_FEATURE_ENCODING={"encoding_type": "absolute_coordinates_encoding",
                                                "used_feature_list": ["x", "y", "z", "intensity", "timestamp"],
                                                "src_feature_list": ["x", "y", "z", "intensity", "timestamp"]}))
    if counts["train"]:
        create_groundtruth_database_from_cfg(cfg, NUSCENES_VERSION, Path(out_dir), max_sweeps,
                                             sorted(set(NUSCENES_NAMES.values())))
    return counts


# ------------------------------------------------------------------ Waymo-like
def export_waymo_like(out_dir, num_frames, seed, val_fraction=0.25, preset="default", workers=0,
                      frames_per_sequence=8):
    """Write the Waymo-like layout (module docstring); returns ``{'train': n, 'val': n}`` frame counts."""
    from ..waymo.waymo_dataset import create_waymo_infos_from_processed

    root = Path(out_dir)
    (root / "ImageSets").mkdir(parents=True, exist_ok=True)
    for split, ids in zip(("train", "val"), split_frames(num_frames, seed, val_fraction)):
        names = []
        frames = _frames(seed, ids, preset, workers)
        for start in range(0, len(ids), frames_per_sequence):
            seq = f"segment-synthetic{seed}-{split}-{start // frames_per_sequence:03d}"
            names.append(seq)
            seq_dir = root / WAYMO_TAG / seq
            seq_dir.mkdir(parents=True, exist_ok=True)
            infos = []
            for k, (index, frame) in enumerate(zip(ids[start:start + frames_per_sequence],
                                                   frames[start:start + frames_per_sequence])):
                pts = frame["points"]
                out = np.zeros((pts.shape[0], 6), dtype=np.float32)
                out[:, :4] = pts[:, :4]
                out[:, 5] = -1.0
                np.save(seq_dir / f"{k:04d}.npy", out)
                boxes = frame["boxes"]
                m = len(frame["classes"])
                annos = {"name": np.array([WAYMO_NAMES[c] for c in frame["classes"]]),
                         "difficulty": np.zeros(m, dtype=np.int32), "dimensions": boxes[:, 3:6],
                         "location": boxes[:, 0:3], "heading_angles": boxes[:, 6],
                         "obj_ids": np.array([f"{index}_{j}" for j in range(m)]),
                         "tracking_difficulty": np.zeros(m, dtype=np.int32),
                         "num_points_in_gt": frame["num_points"].astype(np.int32),
                         "speed_global": np.zeros((m, 2), dtype=np.float32), "gt_boxes_lidar": boxes}
                infos.append({"point_cloud": {"num_features": 5, "lidar_sequence": seq, "sample_idx": k},
                              "frame_id": f"{seq}_{k:03d}", "pose": np.eye(4, dtype=np.float32),
                              "metadata": {"context_name": seq, "synthetic_frame": index,
                                           "timestamp_micros": int(k * FRAME_PERIOD_S * 1e6)},
                              "annos": annos})
            write_pickle(seq_dir / f"{seq}.pkl", infos)
        with open(root / "ImageSets" / f"{split}.txt", "w") as f:
            f.write("".join(n + "\n" for n in names))
    cfg = EasyDict(dict(_dataset_cfg_base(), DATASET="WaymoDataset", PROCESSED_DATA_TAG=WAYMO_TAG,
                        DATA_SPLIT={"train": "train", "test": "val"}, SAMPLED_INTERVAL={"train": 1, "test": 1},
                        POINT_FEATURE_ENCODING={"encoding_type": "absolute_coordinates_encoding",
                                                "used_feature_list": ["x", "y", "z", "intensity", "elongation"],
                                                "src_feature_list": ["x", "y", "z", "intensity", "elongation"]}))
    return create_waymo_infos_from_processed(cfg, root, class_names=sorted(set(WAYMO_NAMES.values())),
                                             sampled_interval=1)


EXPORTERS = {"nuscenes": export_nuscenes_like, "waymo": export_waymo_like}


def export_layouts(layouts, out_dir, num_frames, seed, val_fraction=0.25, preset="default", workers=0):
    """Export each of ``layouts`` ('nuscenes', 'waymo') into ``<out_dir>/<layout>``; the entry point for a
    ``generate.py`` option. Returns ``{layout: split counts}``."""
    unknown = [name for name in layouts if name not in EXPORTERS]
    if unknown:
        raise ValueError(f"export_layouts: unknown layouts {unknown}; choose from {sorted(EXPORTERS)}")
    return {name: EXPORTERS[name](Path(out_dir) / name, num_frames, seed, val_fraction, preset, workers)
            for name in layouts}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write synthetic scenes in nuScenes-like / Waymo-like layouts")
    parser.add_argument("--layout", required=True, choices=sorted(EXPORTERS))
    parser.add_argument("--out", required=True, help="output root folder")
    parser.add_argument("--num_frames", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--val_fraction", type=float, default=0.25)
    parser.add_argument("--preset", default="default", choices=["default", "hard"])
    parser.add_argument("--workers", type=int, default=0, help="processes (0: this process)")
    parser.add_argument("--frames_per_sequence", type=int, default=8, help="Waymo-like: frames per sequence")
    args = parser.parse_args(argv)
    if args.num_frames < 1:
        parser.error(f"--num_frames must be >= 1, got {args.num_frames}")
    if args.layout == "waymo":
        counts = export_waymo_like(args.out, args.num_frames, args.seed, args.val_fraction, args.preset,
                                   args.workers, args.frames_per_sequence)
    else:
        counts = export_nuscenes_like(args.out, args.num_frames, args.seed, args.val_fraction, args.preset,
                                      args.workers)
    print(f"{args.layout}-like synthetic layout written to {args.out}: {counts}")


if __name__ == "__main__":
    main()
