"""nuScenes LiDAR detection dataset (OpenPCDet layout: infos, multi-sweep points, velocities).

Layout under ``DATA_PATH/VERSION`` (as OpenPCDet)::

    samples/LIDAR_TOP/*.pcd.bin, sweeps/LIDAR_TOP/*.pcd.bin   float32 (N, 5) x, y, z, intensity, ring
    <VERSION>/*.json                                            the official tables (nuscenes-devkit)
    nuscenes_infos_<S>sweeps_{train,val}.pkl                    written by create_nuscenes_infos
    gt_database_<S>sweeps_withvelo/, nuscenes_dbinfos_<S>sweeps_withvelo.pkl

Create the infos (needs nuscenes-devkit) with::

    python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos \
        --cfg_file tools/cfgs/dataset_configs/nuscenes_dataset.yaml --version v1.0-mini

Samples: ``points`` (N, 5) ``[x, y, z, intensity, time_lag]`` (key frame plus ``MAX_SWEEPS - 1`` previous sweeps
moved into the key frame's LiDAR frame; ``time_lag`` in seconds, 0 for the key frame), ``gt_boxes`` (M, 9)
``[x, y, z, dx, dy, dz, heading, vx, vy]`` (7 columns when ``PRED_VELOCITY`` is False), ``frame_id`` = the sample
token. Evaluation: nuscenes-devkit's ``DetectionEval`` when the devkit and the official tables are present, else
the in-project implementation of the same metric (``nuscenes_utils.nuscenes_detection_metrics``).
"""
import argparse
import copy
import json
import tempfile
from pathlib import Path

import numpy as np

from ..info_io import REBUILD_NUSCENES, read_pickle, write_pickle
from ...config import cfg_from_yaml_file
from ... import batch_keys as K
from ...ops.roiaware_pool3d import roiaware_pool3d_utils
from .. import DATASETS
from ..dataset import DatasetTemplate, resolve_data_path, _to_numpy
from . import nuscenes_utils
from ...config_schema import ignored, opt, req


class NuScenesDataset(DatasetTemplate):
    """nuScenes (and nuScenes-like) dataset driven by the info pickles listed in ``INFO_PATH[mode]``."""

    CONFIG_SCHEMA = {
        "VERSION": req(str), "MAX_SWEEPS": opt(int), "BALANCED_RESAMPLING": opt(bool),
        "INFO_PATH": req(dict, keys={"train": req(list), "test": req(list)}),
        "FILTER_MIN_POINTS_IN_GT": opt(int), "PRED_VELOCITY": opt(bool), "EVAL_BACKEND": opt(str),
        "SET_NAN_VELOCITY_TO_ZEROS": ignored("NaN velocities are always set to zero in the infos"),
    }

    def __init__(self, dataset_cfg, class_names, training=True, root_path=None, logger=None):
        base = Path(root_path) if root_path is not None else resolve_data_path(dataset_cfg.DATA_PATH)
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=training,
                         root_path=base / dataset_cfg.VERSION, logger=logger)
        self.max_sweeps = int(dataset_cfg.get("MAX_SWEEPS", 1))
        self.infos = []
        self.include_nuscenes_data(self.mode)
        if self.training and dataset_cfg.get("BALANCED_RESAMPLING", False):
            self.infos = self.balanced_infos_resampling(self.infos)

    # ------------------------------------------------------------------ infos
    def include_nuscenes_data(self, mode):
        """Load the info pickles of ``INFO_PATH[mode]`` (relative to the root); a missing, truncated or
        wrong-type file is an InfoFileError naming it."""
        for info_path in self.dataset_cfg.INFO_PATH[mode]:
            self.infos.extend(read_pickle(self.root_path / info_path, list, f"nuScenes info file ({mode})",
                                          REBUILD_NUSCENES))
        if self.logger is not None:
            self.logger.info(f"Total samples for NuScenes dataset ({mode}): {len(self.infos)}")

    def balanced_infos_resampling(self, infos):
        """Class-balanced grouping and sampling (CBGS): resample frames so each class appears in about
        ``len(infos) / num_classes`` frames. Returns the new info list."""
        if len(self.class_names) == 0 or len(infos) == 0:
            return infos
        cls_infos = {name: [] for name in self.class_names}
        for info in infos:
            for name in set(np.asarray(info.get("gt_names", [])).tolist()):
                if name in cls_infos:
                    cls_infos[name].append(info)
        total = sum(len(v) for v in cls_infos.values())
        if total == 0:
            return infos
        frac = 1.0 / len(self.class_names)
        sampled = []
        for name, cur in cls_infos.items():
            if len(cur) == 0:
                continue
            ratio = frac / (len(cur) / total)
            picks = np.random.choice(len(cur), int(len(cur) * ratio))
            sampled.extend(cur[i] for i in picks)
        if self.logger is not None:
            self.logger.info(f"Total samples after balanced resampling: {len(sampled)}")
        return sampled

    # ------------------------------------------------------------------ points
    def get_lidar_with_sweeps(self, index, max_sweeps=1):
        """(N, 5) float32 ``[x, y, z, intensity, time_lag]`` of the key frame and its first ``max_sweeps - 1``
        previous sweeps (the infos list them nearest first)."""
        info = self.infos[index]
        key = nuscenes_utils.load_lidar_file(self.root_path / info["lidar_path"])[:, :4]
        parts = [np.concatenate([key, np.zeros((key.shape[0], 1), dtype=np.float32)], axis=1)]
        for sweep in info.get("sweeps", [])[:max(max_sweeps - 1, 0)]:
            parts.append(nuscenes_utils.sweep_points(self.root_path, sweep))
        return np.concatenate(parts, axis=0).astype(np.float32)

    # ------------------------------------------------------------------ samples
    def __len__(self):
        return self.infos_len(self.infos)

    def __getitem__(self, index):
        info = self.info_at(self.infos, index)
        input_dict = {K.FRAME_ID: info["token"], K.POINTS: self.get_lidar_with_sweeps(index, self.max_sweeps)}
        if "gt_boxes" in info:
            gt_boxes = np.asarray(info["gt_boxes"], dtype=np.float32).reshape(-1, 9)
            gt_names = np.asarray(info["gt_names"]).astype(str)
            min_pts = self.dataset_cfg.get("FILTER_MIN_POINTS_IN_GT", 0)
            if min_pts and "num_lidar_pts" in info:
                keep = np.asarray(info["num_lidar_pts"]) >= min_pts
                gt_boxes, gt_names = gt_boxes[keep], gt_names[keep]
            gt_boxes[np.isnan(gt_boxes)] = 0.0  # velocities of single-frame tracks are NaN in the devkit
            if not self.dataset_cfg.get("PRED_VELOCITY", True):
                gt_boxes = gt_boxes[:, :7]
            input_dict[K.GT_BOXES] = gt_boxes
            input_dict[K.GT_NAMES] = gt_names
        return self.prepare_data(input_dict)

    # ------------------------------------------------------------------ predictions and evaluation
    def generate_prediction_dicts(self, batch_dict, pred_dicts, class_names, output_path=None):
        """Per frame ``name``, ``score``, ``boxes_lidar`` (K, 9 with velocities or 7), ``pred_labels`` (1-based),
        ``frame_id`` and ``metadata`` {``token``}; velocity heads add columns 8-9 to ``pred_boxes``."""
        annos = []
        for index, box_dict in enumerate(pred_dicts):
            scores = _to_numpy(box_dict["pred_scores"]).astype(np.float32)
            labels = _to_numpy(box_dict["pred_labels"]).astype(np.int64)
            boxes = _to_numpy(box_dict["pred_boxes"]).astype(np.float32)
            boxes = boxes.reshape(labels.shape[0], -1) if labels.size else np.zeros((0, 7), dtype=np.float32)
            names = np.array(class_names)[labels - 1] if labels.size else np.zeros(0, dtype="<U20")
            frame_id = batch_dict[K.FRAME_ID][index]
            annos.append({"name": names, "score": scores, "boxes_lidar": boxes, "pred_labels": labels,
                          "frame_id": frame_id, "metadata": {"token": frame_id}})
        return annos

    def _eval_backend(self):
        backend = self.dataset_cfg.get("EVAL_BACKEND", "auto")
        tables = self.root_path / self.dataset_cfg.VERSION / "sample.json"
        if backend == "auto":
            return "devkit" if nuscenes_utils.devkit_available() and tables.is_file() else "project"
        if backend == "devkit":
            nuscenes_utils.import_devkit()
            if not tables.is_file():
                raise FileNotFoundError(f"EVAL_BACKEND devkit: nuScenes tables not found at {tables.parent}")
        elif backend != "project":
            raise ValueError(f"EVAL_BACKEND must be auto, devkit or project, got '{backend}'")
        return backend

    def evaluation(self, det_annos, class_names, **kwargs):
        """nuScenes mAP, NDS and TP errors of ``det_annos`` (``frame_id`` = sample token).

        Like the devkit, mAP and the TP errors average over the ten detection classes (a class without ground
        truth scores AP 0); ``mAP_present`` averages over the classes with ground truth in the split.
        kwargs: ``output_path`` (directory for ``results_nusc.json`` and the devkit's outputs; a temporary
        directory when absent). Returns ``(result_str, result_dict)``; ``('', {})`` when the infos carry no labels.
        """
        if len(self.infos) == 0 or "gt_boxes" not in self.infos[0]:
            return "", {}
        unknown = [n for n in class_names if n not in nuscenes_utils.NUSCENES_CLASSES]
        if unknown:
            raise ValueError(f"NuScenesDataset.evaluation: classes {unknown} are not nuScenes detection classes")
        infos_by_token = {info["token"]: info for info in self.infos}
        missing = [a["frame_id"] for a in det_annos if a["frame_id"] not in infos_by_token]
        if missing:
            raise KeyError(f"NuScenesDataset.evaluation: detections for sample tokens without infos: {missing[:20]}")
        eval_classes = list(nuscenes_utils.NUSCENES_CLASSES)
        backend = self._eval_backend()
        if backend == "devkit":
            if kwargs.get("output_path"):
                metrics = self._devkit_metrics(det_annos, infos_by_token, Path(kwargs["output_path"]))
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    metrics = self._devkit_metrics(det_annos, infos_by_token, Path(tmp))
        else:
            gt_annos = []
            for anno in det_annos:
                info = infos_by_token[anno["frame_id"]]
                gt = {"name": np.asarray(info["gt_names"]).astype(str),
                      "gt_boxes_lidar": np.asarray(info["gt_boxes"], dtype=np.float64)}
                if "num_lidar_pts" in info:
                    gt["num_lidar_pts"] = np.asarray(info["num_lidar_pts"])
                gt_annos.append(gt)
            metrics = nuscenes_utils.nuscenes_detection_metrics(gt_annos, det_annos, eval_classes)
        result_str, result_dict = nuscenes_utils.format_metrics(metrics, eval_classes)
        present = sorted({str(n) for info in self.infos for n, c in
                          zip(info["gt_names"], info.get("num_lidar_pts", np.ones(len(info["gt_names"]))))
                          if c > 0 and n in eval_classes})
        result_dict["mAP_present"] = float(np.mean([result_dict[f"{n}_AP"] for n in present])) if present else 0.0
        result_str = (f"nuScenes detection metric ({backend} backend)\n" + result_str +
                      f"mAP over the classes with ground truth ({', '.join(present)}): "
                      f"{result_dict['mAP_present']:.4f}\n")
        return result_str, result_dict

    def _devkit_metrics(self, det_annos, infos_by_token, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        result_file = out_dir / "results_nusc.json"
        with open(result_file, "w") as f:
            json.dump(nuscenes_utils.det_annos_to_submission(det_annos, infos_by_token), f)
        eval_set = {"v1.0-trainval": "val", "v1.0-mini": "mini_val", "v1.0-test": "test"}[self.dataset_cfg.VERSION]
        return nuscenes_utils.devkit_evaluation(result_file, self.dataset_cfg.VERSION, self.root_path, out_dir,
                                                eval_set)

    # ------------------------------------------------------------------ GT database
    def create_groundtruth_database(self, used_classes=None, max_sweeps=10):
        """Write ``gt_database_<S>sweeps_withvelo/<token>_<class>_<i>.bin`` (object points minus the box centre,
        5 features) and ``nuscenes_dbinfos_<S>sweeps_withvelo.pkl`` from the loaded (training) infos."""
        database_save_path = self.root_path / f"gt_database_{max_sweeps}sweeps_withvelo"
        db_info_save_path = self.root_path / f"nuscenes_dbinfos_{max_sweeps}sweeps_withvelo.pkl"
        database_save_path.mkdir(parents=True, exist_ok=True)
        all_db_infos = {}
        for idx, info in enumerate(self.infos):
            points = self.get_lidar_with_sweeps(idx, max_sweeps=max_sweeps)
            gt_boxes = np.asarray(info["gt_boxes"], dtype=np.float32).reshape(-1, 9)
            gt_names = np.asarray(info["gt_names"]).astype(str)
            if gt_boxes.shape[0] == 0:
                continue
            inside = np.asarray(roiaware_pool3d_utils.points_in_boxes_cpu(points[:, 0:3], gt_boxes[:, 0:7]))
            for i in range(gt_boxes.shape[0]):
                name = gt_names[i]
                if used_classes is not None and name not in used_classes:
                    continue
                filepath = database_save_path / f"{info['token']}_{name}_{i}.bin"
                gt_points = points[inside[i] > 0].copy()
                gt_points[:, :3] -= gt_boxes[i, :3]
                gt_points.astype(np.float32).tofile(str(filepath))
                box = np.nan_to_num(gt_boxes[i])
                all_db_infos.setdefault(name, []).append({
                    "name": name, "path": str(filepath.relative_to(self.root_path)), "image_idx": info["token"],
                    "gt_idx": i, "box3d_lidar": box, "num_points_in_gt": int(gt_points.shape[0]),
                    "difficulty": 0})
        return self.save_gt_database_infos(all_db_infos, db_info_save_path, self.logger)


if __name__ != "__main__":
    # `python -m pcdet.datasets.nuscenes.nuscenes_dataset` runs this file as __main__ while the package import
    # registers the package copy; registering both would clash.
    DATASETS.register(NuScenesDataset)


def create_nuscenes_infos(version, base_path, max_sweeps=10, dataset_cfg=None,
                          class_names=nuscenes_utils.NUSCENES_CLASSES):
    """Write ``nuscenes_infos_<S>sweeps_{train,val}.pkl`` (``..._test.pkl`` for v1.0-test) into
    ``<base_path>/<version>/`` from the official layout there (``<version>/*.json``, ``samples/``, ``sweeps/``),
    then, given ``dataset_cfg``, the GT database of the train split. Needs nuscenes-devkit.
    Returns ``{split: number of samples}``."""
    NuScenes = nuscenes_utils.import_devkit()
    root = Path(base_path) / version
    nusc = NuScenes(version=version, dataroot=str(root), verbose=True)
    train_scenes, val_scenes = nuscenes_utils.split_scene_tokens(nusc, version)
    test = version == "v1.0-test"
    counts = {}
    splits = [("test", train_scenes)] if test else [("train", train_scenes), ("val", val_scenes)]
    for split, scenes in splits:
        infos = nuscenes_utils.fill_infos(nusc, root, scenes, with_annotations=not test, max_sweeps=max_sweeps)
        out = root / f"nuscenes_infos_{max_sweeps}sweeps_{split}.pkl"
        write_pickle(out, infos)
        counts[split] = len(infos)
        print(f"nuScenes {version} {split}: {len(infos)} samples saved to {out}")
    if dataset_cfg is not None and not test:
        create_groundtruth_database_from_cfg(dataset_cfg, version, base_path, max_sweeps, class_names)
    return counts


def create_groundtruth_database_from_cfg(dataset_cfg, version, base_path, max_sweeps, class_names):
    """GT database of ``<base_path>/<version>/nuscenes_infos_<S>sweeps_train.pkl`` (no resampling, no
    augmentation)."""
    cfg = copy.deepcopy(dataset_cfg)
    cfg.VERSION = version
    cfg.INFO_PATH = {"train": [f"nuscenes_infos_{max_sweeps}sweeps_train.pkl"], "test": []}
    cfg.BALANCED_RESAMPLING = False
    cfg.pop("DATA_AUGMENTOR", None)
    dataset = NuScenesDataset(dataset_cfg=cfg, class_names=list(class_names), root_path=base_path, training=True)
    return dataset.create_groundtruth_database(max_sweeps=max_sweeps)


def main(argv=None):
    parser = argparse.ArgumentParser(description="nuScenes info / GT-database generation")
    parser.add_argument("--func", choices=["create_nuscenes_infos"], default="create_nuscenes_infos")
    parser.add_argument("--cfg_file", required=True, help="e.g. tools/cfgs/dataset_configs/nuscenes_dataset.yaml")
    parser.add_argument("--version", default="v1.0-trainval", choices=["v1.0-trainval", "v1.0-mini", "v1.0-test"])
    parser.add_argument("--data_path", default=None,
                        help="base folder holding <version>/ (default: the config's DATA_PATH)")
    args = parser.parse_args(argv)
    dataset_cfg = cfg_from_yaml_file(args.cfg_file)
    base = Path(args.data_path).resolve() if args.data_path else resolve_data_path(dataset_cfg.DATA_PATH)
    create_nuscenes_infos(args.version, base, max_sweeps=int(dataset_cfg.get("MAX_SWEEPS", 10)),
                          dataset_cfg=dataset_cfg)


__all__ = ["NuScenesDataset", "create_nuscenes_infos"]

if __name__ == "__main__":
    main()
