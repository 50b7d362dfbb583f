"""Cross-check of ``waymo_eval`` against the official Waymo metric op on random cases.

The official package (``waymo-open-dataset-tf-2-12-0``) needs TensorFlow 2.13 and numpy 1.23, so it usually lives
in an environment of its own (docs/DATASETS.md): ``official_cells`` runs ``official_metrics.py`` with that
environment's interpreter (``WAYMO_OFFICIAL_PYTHON``), or in this process when the package imports here.

    python -m pcdet.datasets.waymo.crosscheck --python /path/to/official/env/bin/python --cases 11

prints, per class, level and range, the largest |ours - official| of AP and APH over the cases.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import waymo_eval

CLASS_TYPES = {"Vehicle": 1, "Pedestrian": 2, "Sign": 3, "Cyclist": 4}
_SIZES = {"Vehicle": (4.5, 2.0, 1.6), "Pedestrian": (0.8, 0.8, 1.7), "Cyclist": (1.8, 0.6, 1.7)}
RANGE_NAMES = {"0_30": "[0, 30)", "30_50": "[30, 50)", "50_inf": "[50, +inf)"}
OFFICIAL_SCRIPT = Path(__file__).with_name("official_metrics.py")


def random_case(seed, num_frames=40, classes=("Vehicle", "Pedestrian", "Cyclist")):
    """Seeded random frames: ground truth with point counts 0-30 (some labelled LEVEL_2), detections that are
    noisy copies of it (some flipped, some shifted below the IoU threshold), duplicates and false positives.

    Returns:
        (gt_annos, det_annos) in ``waymo_eval``'s format.
    """
    rng = np.random.default_rng(seed)
    gt_annos, det_annos = [], []
    for _ in range(num_frames):
        g_names, g_boxes, g_points, g_diff = [], [], [], []
        d_names, d_boxes, d_scores = [], [], []
        for name in classes:
            size = np.array(_SIZES[name])
            for _ in range(int(rng.integers(0, 8))):
                r, phi = rng.uniform(3, 75), rng.uniform(-np.pi, np.pi)
                box = np.array([r * np.cos(phi), r * np.sin(phi), rng.uniform(-1, 2),
                                *(size * rng.uniform(0.85, 1.15, 3)), rng.uniform(-np.pi, np.pi)])
                g_names.append(name)
                g_boxes.append(box)
                g_points.append(int(rng.choice([0, rng.integers(1, 6), rng.integers(6, 300)], p=[0.1, 0.25, 0.65])))
                g_diff.append(int(rng.choice([0, 1, 2], p=[0.8, 0.1, 0.1])))
                for _ in range(int(rng.choice([0, 1, 2], p=[0.2, 0.65, 0.15]))):
                    det = box.copy()
                    det[0:3] += rng.normal(0, 0.06, 3) * box[3:6]
                    det[3:6] *= rng.normal(1, 0.05, 3)
                    det[6] += rng.normal(0, 0.25) + (np.pi if rng.random() < 0.15 else 0.0)
                    d_names.append(name)
                    d_boxes.append(det)
                    d_scores.append(rng.beta(4, 2))
            for _ in range(int(rng.integers(0, 5))):     # false positives
                r, phi = rng.uniform(3, 75), rng.uniform(-np.pi, np.pi)
                d_names.append(name)
                d_boxes.append(np.array([r * np.cos(phi), r * np.sin(phi), rng.uniform(-1, 2), *size,
                                         rng.uniform(-np.pi, np.pi)]))
                d_scores.append(rng.beta(2, 4))
        gt_annos.append({"name": np.array(g_names, dtype="<U10"),
                         "gt_boxes_lidar": np.array(g_boxes).reshape(-1, 7),
                         "num_points_in_gt": np.array(g_points, dtype=np.int64),
                         "difficulty": np.array(g_diff, dtype=np.int64)})
        det_annos.append({"name": np.array(d_names, dtype="<U10"), "boxes_lidar": np.array(d_boxes).reshape(-1, 7),
                          "score": np.array(d_scores, dtype=np.float32)})
    return gt_annos, det_annos


def official_inputs(gt_annos, det_annos):
    """The op's flat arrays: every frame concatenated with its index as frame id; ground truth without points
    dropped (as OpenPCDet does); difficulty = the label where there is one, else by points (OpenPCDet's
    conversion, written out here independently of ``waymo_eval.gt_levels``); classes outside ``CLASS_TYPES``
    dropped."""
    out = {k: [] for k in ("pd_bbox", "pd_type", "pd_score", "pd_frame", "gt_bbox", "gt_type", "gt_frame",
                           "gt_difficulty")}
    for frame, (gt, det) in enumerate(zip(gt_annos, det_annos)):
        points = np.asarray(gt["num_points_in_gt"])
        label = np.asarray(gt.get("difficulty", np.zeros(len(points), np.int64)))
        levels = np.where(label > 0, label, np.where(points <= 5, 2, 1))
        keep = (points > 0) & np.isin(gt["name"], list(CLASS_TYPES))
        out["gt_bbox"].append(np.asarray(gt["gt_boxes_lidar"]).reshape(-1, 7)[keep])
        out["gt_type"].append([CLASS_TYPES[n] for n in np.asarray(gt["name"])[keep]])
        out["gt_frame"].append(np.full(int(keep.sum()), frame))
        out["gt_difficulty"].append(levels[keep])
        dkeep = np.isin(det["name"], list(CLASS_TYPES))
        out["pd_bbox"].append(np.asarray(det["boxes_lidar"]).reshape(-1, 7)[dkeep])
        out["pd_type"].append([CLASS_TYPES[n] for n in np.asarray(det["name"])[dkeep]])
        out["pd_score"].append(np.asarray(det["score"])[dkeep])
        out["pd_frame"].append(np.full(int(dkeep.sum()), frame))
    dtypes = {"pd_bbox": np.float32, "gt_bbox": np.float32, "pd_score": np.float32, "pd_type": np.uint8,
              "gt_type": np.uint8, "gt_difficulty": np.uint8, "pd_frame": np.int64, "gt_frame": np.int64}
    return {k: (np.concatenate([np.asarray(a, dtype=dtypes[k]).reshape((-1, 7) if k.endswith("bbox") else (-1,))
                                for a in v]) if v else np.zeros((0, 7) if k.endswith("bbox") else 0, dtypes[k]))
            for k, v in out.items()}


def our_cells(gt_annos, det_annos, classes=("Vehicle", "Pedestrian", "Cyclist")):
    """``waymo_evaluation``'s AP / APH keyed by the official breakdown names."""
    _, res = waymo_eval.waymo_evaluation(gt_annos, det_annos, list(classes))
    cells = {}
    for name in classes:
        for level in (1, 2):
            cells[f"OBJECT_TYPE_TYPE_{name.upper()}_LEVEL_{level}"] = {
                "ap": res[f"{name}/LEVEL_{level}/AP"], "aph": res[f"{name}/LEVEL_{level}/APH"]}
            for tag, official in RANGE_NAMES.items():
                cells[f"RANGE_TYPE_{name.upper()}_{official}_LEVEL_{level}"] = {
                    "ap": res[f"{name}/LEVEL_{level}/AP_{tag}"], "aph": res[f"{name}/LEVEL_{level}/APH_{tag}"]}
    return cells


def official_python():
    """The interpreter of an environment with the official package: ``WAYMO_OFFICIAL_PYTHON``, else this one when
    the package imports here, else None."""
    env = os.environ.get("WAYMO_OFFICIAL_PYTHON")
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"WAYMO_OFFICIAL_PYTHON={env}: no such interpreter")
        return env
    try:
        if importlib.util.find_spec("waymo_open_dataset") is not None:
            return sys.executable
    except (ImportError, ValueError):
        pass
    return None


def official_cells(cases, python):
    """``{case: {breakdown: {"ap", "aph"}}}`` of the official op for ``{case: (gt_annos, det_annos)}``."""
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {f"{case}/{k}": v for case, (gt, det) in cases.items() for k, v in official_inputs(gt, det).items()}
        np.savez(Path(tmp) / "cases.npz", **arrays)
        out = Path(tmp) / "official.json"
        proc = subprocess.run([python, str(OFFICIAL_SCRIPT), str(Path(tmp) / "cases.npz"), str(out)],
                              capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if proc.returncode != 0:
            raise RuntimeError(f"official Waymo metric ({python} {OFFICIAL_SCRIPT}) failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def compare(cases, python):
    """Per breakdown: the largest |ours - official| of AP and APH over the cases, and the official values' range."""
    official = official_cells(cases, python)
    table = {}
    for case, (gt, det) in cases.items():
        ours = our_cells(gt, det)
        for cell, mine in ours.items():
            theirs = official[case][cell]
            row = table.setdefault(cell, {"ap": 0.0, "aph": 0.0, "official_ap": []})
            row["ap"] = max(row["ap"], abs(mine["ap"] - theirs["ap"]))
            row["aph"] = max(row["aph"], abs(mine["aph"] - theirs["aph"]))
            row["official_ap"].append(theirs["ap"])
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=None, help="interpreter of the official package's environment "
                                                       "(default: WAYMO_OFFICIAL_PYTHON, or this one)")
    parser.add_argument("--cases", type=int, default=11)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args(argv)
    python = args.python or official_python()
    if python is None:
        raise SystemExit("the official Waymo package is not importable here: pass --python or set "
                         "WAYMO_OFFICIAL_PYTHON (docs/DATASETS.md)")
    cases = {f"case{i}": random_case(i, args.frames) for i in range(args.cases)}
    table = compare(cases, python)
    print(f"{args.cases} random cases of {args.frames} frames; max |ours - official| per breakdown")
    print("| breakdown | max diff AP | max diff APH | official AP range |")
    print("|---|---|---|---|")
    for cell, row in table.items():
        print(f"| {cell} | {row['ap']:.2e} | {row['aph']:.2e} | "
              f"{min(row['official_ap']):.3f}-{max(row['official_ap']):.3f} |")
    worst = max(max(r["ap"], r["aph"]) for r in table.values())
    print(f"worst cell: {worst:.2e}")
    return worst


if __name__ == "__main__":
    main()
