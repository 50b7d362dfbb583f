"""Generate the synthetic KITTI-format LiDAR dataset.

    python -m pcdet.datasets.synthetic.generate --out data/synthetic_kitti --num_frames 500 --seed 0 \
        [--val_fraction 0.25] [--workers 2] [--preset default|hard] [--num_test_frames T]

Layout written under ``--out`` (the KITTI object layout, without images):
    ImageSets/train.txt, val.txt    ids of training/ frames (a seeded random split), test.txt ids of testing/;
                                    tune.txt (with tune_fraction > 0) a tuning split taken out of train
    training/velodyne/%06d.bin      float32 (N, 4) x, y, z, intensity in the LiDAR frame
    training/label_2/%06d.txt       KITTI label lines (see kitti_writer), camera-FOV objects only
    training/calib/%06d.txt         P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo
    training/synth_meta/%06d.json   per label line: num_points_in_box (-1 for DontCare), num_hits, rays_alone,
                                    rays_hit, lidar_box; plus the road/ground parameters and point count
    testing/velodyne, testing/calib (T frames, no labels; T defaults to num_frames // 10)
    README.txt, synthetic_meta.json generator version, seed, preset, frame counts, image shape (375, 1242)

Every frame is a pure function of (seed, split, frame index) through its own numpy SeedSequence, so the output is
byte-identical for a given seed whatever the number of workers.
Presets: ``default`` (HDL-64E, 64 beams, 0.16 deg azimuth step); ``hard`` (32 of the 64 beams, 0.2 deg step, more
range noise and dropout, twice the clutter, more objects, 40 % of the objects 45-85 m ahead, more pedestrian
groups).
"""
import argparse
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from . import GENERATOR_VERSION
from .calib import IMAGE_SHAPE, calib_to_text, make_calib
from .kitti_writer import label_to_lidar_box, make_labels, parse_label_line
from .lidar import simulate_sweep
from .raycast import count_points_in_boxes
from .scene import LABELLED_CLASSES, get_preset, sample_scene

_SPLIT_CODES = {"training": 0, "testing": 1}


def frame_rng(seed, split, index):
    """numpy Generator of one frame, derived from (seed, split, index) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODES[split], int(index)]))


def generate_frame(seed, split, index, preset):
    """Simulate one frame.

    Args:
        seed: dataset seed; split: 'training' or 'testing'; index: frame index; preset: Preset.
    Returns:
        dict(points (N, 4) float32, calib KittiCalib, labels list of LabelRecord, scene Scene, sweep Sweep).
    """
    rng = frame_rng(seed, split, index)
    calib = make_calib(int(rng.integers(0, 2)))
    scene = sample_scene(rng, preset)
    sweep = simulate_sweep(scene, preset, rng)
    labels = make_labels(scene.objects, sweep.rays_alone, sweep.rays_hit, calib, preset)
    return dict(points=sweep.points, calib=calib, labels=labels, scene=scene, sweep=sweep)


def _frame_meta(frame, preset, index):
    points, labels, sweep, scene = frame["points"], frame["labels"], frame["sweep"], frame["scene"]
    objects = []
    boxes = []
    hits = np.bincount(sweep.hit_id[sweep.hit_id >= 0], minlength=len(scene.objects))
    for rec in labels:
        label = parse_label_line(rec.line)
        entry = dict(type=label["type"], obj_id=rec.obj_id, num_hits=int(hits[rec.obj_id]),
                     rays_alone=int(sweep.rays_alone[rec.obj_id]), rays_hit=int(sweep.rays_hit[rec.obj_id]),
                     occlusion_fraction=round(rec.occlusion_fraction, 4),
                     lidar_box=[round(float(v), 4) for v in scene.objects[rec.obj_id].box])
        if label["type"] != "DontCare":
            boxes.append(label_to_lidar_box(label, frame["calib"]))
        else:
            entry["num_points_in_box"] = -1
        objects.append(entry)
    counts = count_points_in_boxes(points, np.array(boxes, np.float64).reshape(-1, 7))
    for entry, n in zip((e for e in objects if e["type"] != "DontCare"), counts):
        entry["num_points_in_box"] = int(n)
    ground = {k: round(float(v), 6) for k, v in scene.road.items()}
    ground["z0"] = round(float(scene.ground[0]), 6)
    return dict(frame=index, preset=preset.name, generator_version=GENERATOR_VERSION, num_points=int(len(points)),
                road=ground, objects=objects)


def _write_frame(root, split, index, seed, preset_name):
    preset = get_preset(preset_name)
    frame = generate_frame(seed, split, index, preset)
    base = os.path.join(root, split)
    name = f"{index:06d}"
    frame["points"].tofile(os.path.join(base, "velodyne", name + ".bin"))
    with open(os.path.join(base, "calib", name + ".txt"), "w") as f:
        f.write(calib_to_text(frame["calib"]))
    summary = dict(num_points=int(len(frame["points"])), classes={})
    if split == "training":
        with open(os.path.join(base, "label_2", name + ".txt"), "w") as f:
            f.write("".join(rec.line + "\n" for rec in frame["labels"]))
        with open(os.path.join(base, "synth_meta", name + ".json"), "w") as f:
            json.dump(_frame_meta(frame, preset, index), f, sort_keys=True)
            f.write("\n")
        summary["classes"] = dict(Counter(rec.line.split(" ", 1)[0] for rec in frame["labels"]))
    return summary


def _write_frame_task(args):
    return _write_frame(*args)


def _remove_stale_frames(out_dir, folders, num):
    """Delete frame files numbered >= num left by an earlier, larger run, so the folder matches ImageSets."""
    for folder in folders:
        for name in os.listdir(folder):
            stem, ext = os.path.splitext(name)
            if ext in (".bin", ".txt", ".json") and len(stem) == 6 and stem.isdigit() and int(stem) >= num:
                os.remove(os.path.join(folder, name))


def generate_dataset(out_dir, num_frames, seed, val_fraction=0.25, workers=0, preset="default",
                     num_test_frames=None, tune_fraction=0.0):
    """Write a synthetic KITTI-format dataset (layout in the module docstring).

    Args:
        out_dir: root folder (created; frame files of an earlier run are overwritten or, beyond the new frame
            counts, deleted; infos derived from an earlier run, e.g. kitti_infos_*.pkl, must be rebuilt).
        num_frames: number of training/ frames (split into train and val).
        seed: dataset seed.
        val_fraction: share of the training/ frames listed in val.txt.
        tune_fraction: share of the training/ frames listed in tune.txt, the tuning split, carved from the
            frames that are not val and removed from train.txt (0: no tune.txt).
        workers: processes; 0 or 1 runs in this process.
        preset: 'default' or 'hard'.
        num_test_frames: testing/ frames (no labels); None -> num_frames // 10.
    Returns:
        dict written to synthetic_meta.json (counts of labels per class, mean points per frame, ...).
    """
    if int(num_frames) < 1:
        raise ValueError(f"generate_dataset: num_frames must be >= 1, got {num_frames!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"generate_dataset: val_fraction must be in [0, 1), got {val_fraction!r}")
    if not 0.0 <= float(tune_fraction) or float(val_fraction) + float(tune_fraction) >= 1.0:
        raise ValueError(f"generate_dataset: tune_fraction must be >= 0 and leave training frames "
                         f"(val_fraction + tune_fraction < 1), got tune_fraction={tune_fraction!r}, "
                         f"val_fraction={val_fraction!r}")
    get_preset(preset)
    num_frames = int(num_frames)
    num_test = num_frames // 10 if num_test_frames is None else int(num_test_frames)
    for split, subdirs in (("training", ("velodyne", "label_2", "calib", "synth_meta")),
                           ("testing", ("velodyne", "calib"))):
        folders = [os.path.join(out_dir, split, sub) for sub in subdirs]
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
        _remove_stale_frames(out_dir, folders, num_frames if split == "training" else num_test)
    os.makedirs(os.path.join(out_dir, "ImageSets"), exist_ok=True)

    tasks = [(out_dir, "training", i, seed, preset) for i in range(num_frames)]
    tasks += [(out_dir, "testing", i, seed, preset) for i in range(num_test)]
    if workers and workers > 1:
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=get_context("fork")) as pool:
            summaries = list(pool.map(_write_frame_task, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
    else:
        summaries = [_write_frame_task(t) for t in tasks]

    n_val = int(round(val_fraction * num_frames))
    n_tune = int(round(tune_fraction * num_frames))
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 99])).permutation(num_frames)
    val_ids = sorted(order[:n_val].tolist())
    tune_ids = sorted(order[n_val:n_val + n_tune].tolist())
    train_ids = sorted(order[n_val + n_tune:].tolist())
    splits = [("train", train_ids), ("val", val_ids), ("test", list(range(num_test)))]
    if n_tune:
        splits.append(("tune", tune_ids))
    elif os.path.isfile(os.path.join(out_dir, "ImageSets", "tune.txt")):
        os.remove(os.path.join(out_dir, "ImageSets", "tune.txt"))
    for name, ids in splits:
        with open(os.path.join(out_dir, "ImageSets", name + ".txt"), "w") as f:
            f.write("".join(f"{i:06d}\n" for i in ids))

    train_summaries = summaries[:num_frames]
    class_counts = Counter()
    for s in train_summaries:
        class_counts.update(s["classes"])
    meta = dict(generator="pcdet.datasets.synthetic", generator_version=GENERATOR_VERSION, seed=int(seed),
                preset=preset, num_training_frames=num_frames, num_train=len(train_ids), num_val=len(val_ids),
                num_tune=len(tune_ids),
                num_testing_frames=num_test, image_shape=list(IMAGE_SHAPE),
                labelled_classes=list(LABELLED_CLASSES),
                label_counts={k: class_counts[k] for k in sorted(class_counts)},
                mean_points_per_frame=round(float(np.mean([s["num_points"] for s in train_summaries])), 1))
    with open(os.path.join(out_dir, "synthetic_meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write(f"Synthetic KITTI-format LiDAR dataset (pcdet.datasets.synthetic, generator version "
                f"{GENERATOR_VERSION}).\nseed {seed}, preset {preset}, {num_frames} training frames "
                f"({len(train_ids)} train / {len(tune_ids)} tune / {len(val_ids)} val), {num_test} testing frames.\n"
                f"No camera images: image_2 is absent; labels and calibrations assume an image of "
                f"{IMAGE_SHAPE[1]}x{IMAGE_SHAPE[0]} pixels (width x height).\n"
                "ImageSets/test.txt lists testing/ frames (velodyne + calib, no labels).\n"
                "training/synth_meta/*.json: per label line, points inside the label box, LiDAR hits, "
                "occlusion ray counts.\n")
    return meta


def parse_args(argv=None):
    """CLI arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Generate the synthetic KITTI-format LiDAR dataset.")
    parser.add_argument("--out", required=True, help="output root folder")
    parser.add_argument("--num_frames", type=int, required=True, help="training/ frames")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--val_fraction", type=float, default=0.25)
    parser.add_argument("--tune_fraction", type=float, default=0.0,
                        help="share of the frames in the tuning split (tune.txt), taken out of train")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: this process)")
    parser.add_argument("--preset", default="default", choices=["default", "hard"])
    parser.add_argument("--num_test_frames", type=int, default=None,
                        help="testing/ frames without labels (default num_frames // 10)")
    parser.add_argument("--layouts", nargs="*", default=[], choices=["nuscenes", "waymo"],
                        help="also write the same scenes in these layouts, under <out>_<layout>/ "
                             "(see pcdet.datasets.synthetic.export_layouts)")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: generate the dataset and print synthetic_meta.json."""
    args = parse_args(argv)
    meta = generate_dataset(args.out, args.num_frames, args.seed, val_fraction=args.val_fraction,
                            tune_fraction=args.tune_fraction, workers=args.workers, preset=args.preset, num_test_frames=args.num_test_frames)
    print(json.dumps(meta, indent=2, sort_keys=True))
    if args.layouts:
        from pathlib import Path

        from .export_layouts import export_layouts

        out = Path(args.out)
        for layout in args.layouts:
            counts = export_layouts([layout], out.parent / f"{out.name}_{layout}_tmp", args.num_frames, args.seed,
                                    args.val_fraction, args.preset, args.workers)
            target = out.parent / f"{out.name}_{layout}"
            if target.exists():
                import shutil

                shutil.rmtree(target)
            (out.parent / f"{out.name}_{layout}_tmp" / layout).rename(target)
            (out.parent / f"{out.name}_{layout}_tmp").rmdir()
            print(f"{layout}-like layout written to {target}: {counts[layout]}")


if __name__ == "__main__":
    main()
