"""Runs the official Waymo detection metric op on cases written by ``crosscheck.write_cases``.

This file imports only numpy, TensorFlow and ``waymo_open_dataset`` (no torch, no pcdet), so it runs in the separate
environment the official package needs (docs/DATASETS.md, "Waymo metric cross-check"):

    <official env>/bin/python pcdet/datasets/waymo/official_metrics.py CASES.npz OUT.json

The op is configured as OpenPCDet's ``waymo_eval`` configures it: OBJECT_TYPE and RANGE breakdowns, LEVEL_1 and
LEVEL_2 each, Hungarian matcher, 3D boxes, score cut-offs 0, 0.01, ..., 0.99, 1.0. OUT.json maps each case name
to ``{breakdown name: {"ap": float, "aph": float}}`` with the op's own breakdown names (e.g.
``OBJECT_TYPE_TYPE_VEHICLE_LEVEL_1``, ``RANGE_TYPE_PEDESTRIAN_[30, 50)_LEVEL_2``).
"""
import json
import sys

import numpy as np


def official_config():
    from waymo_open_dataset import label_pb2
    from waymo_open_dataset.protos import breakdown_pb2, metrics_pb2

    config = metrics_pb2.Config()
    for generator in (breakdown_pb2.Breakdown.OBJECT_TYPE, breakdown_pb2.Breakdown.RANGE):
        config.breakdown_generator_ids.append(generator)
        difficulty = config.difficulties.add()
        difficulty.levels.append(label_pb2.Label.LEVEL_1)
        difficulty.levels.append(label_pb2.Label.LEVEL_2)
    config.matcher_type = metrics_pb2.MatcherProto.TYPE_HUNGARIAN
    for threshold in (0.0, 0.7, 0.5, 0.5, 0.5):     # unknown, vehicle, pedestrian, sign, cyclist
        config.iou_thresholds.append(threshold)
    config.box_type = label_pb2.Label.Box.TYPE_3D
    for i in range(100):
        config.score_cutoffs.append(i * 0.01)
    config.score_cutoffs.append(1.0)
    return config


def run_case(arrays, prefix, config):
    import tensorflow as tf
    from waymo_open_dataset.metrics.ops import py_metrics_ops
    from waymo_open_dataset.metrics.python import config_util_py as config_util

    def get(key, dtype):
        return tf.constant(arrays[f"{prefix}{key}"].astype(dtype))

    out = py_metrics_ops.detection_metrics(
        prediction_bbox=get("pd_bbox", np.float32), prediction_type=get("pd_type", np.uint8),
        prediction_score=get("pd_score", np.float32), prediction_frame_id=get("pd_frame", np.int64),
        prediction_overlap_nlz=tf.zeros_like(get("pd_frame", np.int64), dtype=tf.bool),
        ground_truth_bbox=get("gt_bbox", np.float32), ground_truth_type=get("gt_type", np.uint8),
        ground_truth_frame_id=get("gt_frame", np.int64), ground_truth_difficulty=get("gt_difficulty", np.uint8),
        config=config.SerializeToString())
    names = config_util.get_breakdown_names_from_config(config)
    ap = out.average_precision.numpy() if hasattr(out, "average_precision") else out[0].numpy()
    aph = out.average_precision_ha_weighted.numpy() if hasattr(out, "average_precision_ha_weighted") \
        else out[1].numpy()
    return {name: {"ap": float(a), "aph": float(h)} for name, a, h in zip(names, ap, aph)}


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: official_metrics.py CASES.npz OUT.json")
    arrays = np.load(argv[0])
    cases = sorted({k.split("/", 1)[0] for k in arrays.files})
    config = official_config()
    result = {case: run_case(arrays, f"{case}/", config) for case in cases}
    with open(argv[1], "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
