"""Waymo Open Dataset in OpenPCDet's preprocessed layout (per-sequence npy points and pkl infos).

Layout under the dataset root (``DATA_PATH``)::

    ImageSets/{train,val}.txt                        one sequence name per line (``segment-..._with_camera_labels``,
                                                     a ``.tfrecord`` suffix is accepted and stripped)
    raw_data/<sequence>.tfrecord                     official files (only for the converter)
    <PROCESSED_DATA_TAG>/<sequence>/%04d.npy         float32 (N, 6) x, y, z, intensity, elongation, NLZ_flag
    <PROCESSED_DATA_TAG>/<sequence>/<sequence>.pkl   list of frame infos of the sequence
    <PROCESSED_DATA_TAG>_infos_{train,val}.pkl       all infos of a split (written by create_waymo_infos)
    <PROCESSED_DATA_TAG>_gt_database_train_sampled_<k>/, <PROCESSED_DATA_TAG>_waymo_dbinfos_train_sampled_<k>.pkl

Frame info: ``point_cloud`` {``lidar_sequence``, ``sample_idx``, ``num_features``}, ``frame_id``
(``<sequence>_%03d``), ``pose`` (4, 4), ``metadata`` {``context_name``, ``timestamp_micros``} and ``annos``
{``name`` (Vehicle, Pedestrian, Cyclist, Sign, unknown), ``gt_boxes_lidar`` (M, 7) centre origin,
``num_points_in_gt``, ``difficulty``, ``obj_ids``, ``speed_global``}.

Convert the official tfrecords (needs the optional ``waymo-open-dataset`` package and TensorFlow) and write the
infos and the GT database with::

    python -m pcdet.datasets.waymo.waymo_dataset --func create_waymo_infos \
        --cfg_file tools/cfgs/dataset_configs/waymo_dataset.yaml

``--func create_waymo_infos_from_processed`` writes infos and GT database from already processed sequences
(no TensorFlow). Evaluation: Waymo-style AP / APH at LEVEL_1 / LEVEL_2 (``waymo_eval``).
"""
import argparse
import copy
from pathlib import Path

import numpy as np

from ...config import cfg_from_yaml_file
from ... import batch_keys as K
from ...ops.roiaware_pool3d import roiaware_pool3d_utils
from ...utils import common_utils
from .. import DATASETS
from ..dataset import DatasetTemplate, resolve_data_path
from ..info_io import REBUILD_WAYMO, read_pickle, write_pickle
from . import waymo_eval
from ...config_schema import ignored, opt, req

WAYMO_CLASSES = ["Vehicle", "Pedestrian", "Cyclist"]


def sequence_name_of(line):
    """Sequence name from an ImageSets line (drops a ``.tfrecord`` suffix)."""
    name = line.strip()
    return name[:-len(".tfrecord")] if name.endswith(".tfrecord") else name


class WaymoDataset(DatasetTemplate):
    """Waymo dataset over ``<PROCESSED_DATA_TAG>/`` sequences; infos drive ``__getitem__``."""

    CONFIG_SCHEMA = {
        "PROCESSED_DATA_TAG": req(str), "DATA_SPLIT": req(dict, keys={"train": req(str), "test": req(str)}),
        "SAMPLED_INTERVAL": opt(dict, keys={"train": opt(int), "test": opt(int)}),
        "DISABLE_NLZ_FLAG_ON_POINTS": opt(bool), "FILTER_EMPTY_BOXES_FOR_TRAIN": opt(bool),
        "USE_SHARED_MEMORY": ignored("frames are read from their .npy files"),
        "SHARED_MEMORY_FILE_LIMIT": ignored("frames are read from their .npy files"),
    }

    def __init__(self, dataset_cfg, class_names, training=True, root_path=None, logger=None):
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=training,
                         root_path=root_path, logger=logger)
        self.data_path = self.root_path / dataset_cfg.PROCESSED_DATA_TAG
        self.split = dataset_cfg.DATA_SPLIT[self.mode]
        self.sample_sequence_list = self._read_split(self.split)
        self.infos = []
        self.include_waymo_data(self.mode)

    def _read_split(self, split):
        split_file = self.root_path / "ImageSets" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"Waymo split '{split}': {split_file} not found")
        with open(split_file) as f:
            return [sequence_name_of(line) for line in f if line.strip()]

    def set_split(self, split):
        self.split = split
        self.sample_sequence_list = self._read_split(split)
        self.infos = []
        self.include_waymo_data(self.mode)

    def include_waymo_data(self, mode):
        """Load the per-sequence info pickles of the split, keep every ``SAMPLED_INTERVAL[mode]``-th frame.

        A listed sequence without its pkl is skipped with a warning (partial downloads are common); none found
        is an error naming the folder.
        """
        missing = []
        infos = []
        for seq in self.sample_sequence_list:
            info_path = self.data_path / seq / f"{seq}.pkl"
            if not info_path.is_file():
                missing.append(seq)
                continue
            infos.extend(read_pickle(info_path, list, "Waymo sequence info file", REBUILD_WAYMO))
        if missing and self.logger is not None:
            self.logger.warning(f"Waymo: {len(missing)} of {len(self.sample_sequence_list)} sequences of split "
                                f"'{self.split}' have no infos under {self.data_path} (first: {missing[0]})")
        if self.sample_sequence_list and not infos:
            raise FileNotFoundError(f"Waymo split '{self.split}': no sequence infos found under {self.data_path}; "
                                    f"run create_waymo_infos first")
        interval = int(self.dataset_cfg.get("SAMPLED_INTERVAL", {}).get(mode, 1))
        self.infos = infos[::max(interval, 1)]
        if self.logger is not None:
            self.logger.info(f"Total samples for Waymo dataset ({mode}): {len(self.infos)} "
                             f"(sampled every {interval} of {len(infos)})")

    def get_lidar(self, sequence_name, sample_idx):
        """(N, 5) float32 ``[x, y, z, tanh(intensity), elongation]`` of one frame; points in no-label zones
        (NLZ_flag != -1) are dropped unless ``DISABLE_NLZ_FLAG_ON_POINTS``."""
        lidar_file = self.data_path / sequence_name / f"{sample_idx:04d}.npy"
        if not lidar_file.is_file():
            raise FileNotFoundError(f"Waymo frame {sequence_name}/{sample_idx}: {lidar_file} not found")
        features = np.load(lidar_file)
        if features.ndim != 2 or features.shape[1] < 6:
            raise ValueError(f"{lidar_file}: expected (N, 6) x, y, z, intensity, elongation, NLZ_flag, "
                             f"got {features.shape}")
        points, nlz = features[:, 0:5].astype(np.float32), features[:, 5]
        if not self.dataset_cfg.get("DISABLE_NLZ_FLAG_ON_POINTS", False):
            points = points[nlz == -1]
        points[:, 3] = np.tanh(points[:, 3])
        return points

    def __len__(self):
        return self.infos_len(self.infos)

    def __getitem__(self, index):
        info = self.info_at(self.infos, index)
        pc_info = info["point_cloud"]
        points = self.get_lidar(pc_info["lidar_sequence"], pc_info["sample_idx"])
        input_dict = {K.FRAME_ID: info["frame_id"], K.POINTS: points}
        if "annos" in info:
            annos = common_utils.drop_info_with_name(info["annos"], name="unknown")
            gt_boxes = np.asarray(annos["gt_boxes_lidar"], dtype=np.float32)
            gt_boxes = np.zeros((0, 7), np.float32) if gt_boxes.size == 0 else gt_boxes.reshape(len(gt_boxes), -1)
            gt_names = np.asarray(annos["name"]).astype(str)
            if self.training and self.dataset_cfg.get("FILTER_EMPTY_BOXES_FOR_TRAIN", False):
                keep = np.asarray(annos["num_points_in_gt"]) > 0
                gt_boxes, gt_names = gt_boxes[keep], gt_names[keep]
            input_dict[K.GT_BOXES] = gt_boxes[:, :7]
            input_dict[K.GT_NAMES] = gt_names
        return self.prepare_data(input_dict)

    def evaluation(self, det_annos, class_names, **kwargs):
        """Waymo-style AP / APH (LEVEL_1, LEVEL_2, range breakdown) of ``det_annos`` against the infos' annos.

        ``eval_metric`` (from the model's POST_PROCESSING.EVAL_METRIC) must be 'waymo' when given.
        """
        eval_metric = kwargs.get("eval_metric", "waymo")
        if eval_metric != "waymo":
            raise ValueError(f"WaymoDataset.evaluation: EVAL_METRIC '{eval_metric}' is not supported; use 'waymo'")
        if len(self.infos) == 0 or "annos" not in self.infos[0]:
            return "", {}
        gt_by_frame = {info["frame_id"]: info["annos"] for info in self.infos}
        missing = [a["frame_id"] for a in det_annos if a["frame_id"] not in gt_by_frame]
        if missing:
            raise KeyError(f"WaymoDataset.evaluation: detections for frames without infos: {missing[:20]}")
        gt_annos = [gt_by_frame[a["frame_id"]] for a in det_annos]
        return waymo_eval.waymo_evaluation(gt_annos, det_annos, class_names)

    # ------------------------------------------------------------------ infos and GT database
    def create_groundtruth_database(self, info_path, save_path, used_classes=None, split="train",
                                    sampled_interval=10):
        """Write ``<tag>_gt_database_<split>_sampled_<k>/<frame>_<class>_<i>.bin`` (object points minus the box
        centre, 5 features) and ``<tag>_waymo_dbinfos_<split>_sampled_<k>.pkl`` from every ``k``-th info."""
        tag = self.dataset_cfg.PROCESSED_DATA_TAG
        database_save_path = Path(save_path) / f"{tag}_gt_database_{split}_sampled_{sampled_interval}"
        db_info_save_path = Path(save_path) / f"{tag}_waymo_dbinfos_{split}_sampled_{sampled_interval}.pkl"
        database_save_path.mkdir(parents=True, exist_ok=True)
        infos = read_pickle(info_path, list, "Waymo info file", REBUILD_WAYMO)
        all_db_infos = {}
        for info in infos[::sampled_interval]:
            pc_info = info["point_cloud"]
            points = self.get_lidar(pc_info["lidar_sequence"], pc_info["sample_idx"])
            annos = info["annos"]
            gt_boxes = np.asarray(annos["gt_boxes_lidar"], dtype=np.float32)
            if gt_boxes.size == 0:
                continue
            gt_boxes = gt_boxes.reshape(len(annos["name"]), -1)
            inside = np.asarray(roiaware_pool3d_utils.points_in_boxes_cpu(points[:, 0:3], gt_boxes[:, 0:7]))
            for i, name in enumerate(np.asarray(annos["name"]).astype(str)):
                if name == "unknown" or (used_classes is not None and name not in used_classes):
                    continue
                filepath = database_save_path / f"{info['frame_id']}_{name}_{i}.bin"
                gt_points = points[inside[i] > 0].copy()
                gt_points[:, :3] -= gt_boxes[i, :3]
                gt_points.astype(np.float32).tofile(str(filepath))
                all_db_infos.setdefault(name, []).append({
                    "name": name, "path": str(filepath.relative_to(self.root_path)),
                    "sequence_name": pc_info["lidar_sequence"], "sample_idx": pc_info["sample_idx"],
                    "gt_idx": i, "box3d_lidar": gt_boxes[i, :7], "num_points_in_gt": int(gt_points.shape[0]),
                    "difficulty": int(annos["difficulty"][i]) if "difficulty" in annos else 0})
        return self.save_gt_database_infos(all_db_infos, db_info_save_path, self.logger)


if __name__ != "__main__":
    # `python -m pcdet.datasets.waymo.waymo_dataset` runs this file as __main__ while the package import registers
    # the package copy; registering both would clash.
    DATASETS.register(WaymoDataset)


def collect_split_infos(root_path, processed_tag, split):
    """All frame infos of ``ImageSets/<split>.txt`` from the per-sequence pickles (sequences without one are
    reported and skipped)."""
    root_path = Path(root_path)
    with open(root_path / "ImageSets" / f"{split}.txt") as f:
        sequences = [sequence_name_of(line) for line in f if line.strip()]
    infos, missing = [], []
    for seq in sequences:
        path = root_path / processed_tag / seq / f"{seq}.pkl"
        if not path.is_file():
            missing.append(seq)
            continue
        infos.extend(read_pickle(path, list, "Waymo sequence info file", REBUILD_WAYMO))
    if missing:
        print(f"Waymo {split}: {len(missing)} sequences without processed infos skipped (first: {missing[0]})")
    return infos


def create_waymo_infos_from_processed(dataset_cfg, root_path, class_names=WAYMO_CLASSES, sampled_interval=1):
    """Write ``<tag>_infos_{train,val}.pkl`` from processed sequences and the train GT database."""
    root_path = Path(root_path)
    tag = dataset_cfg.PROCESSED_DATA_TAG
    counts = {}
    for split in ("train", "val"):
        if not (root_path / "ImageSets" / f"{split}.txt").is_file():
            continue
        infos = collect_split_infos(root_path, tag, split)
        write_pickle(root_path / f"{tag}_infos_{split}.pkl", infos)
        counts[split] = len(infos)
        print(f"Waymo info {split} file is saved to {root_path / f'{tag}_infos_{split}.pkl'} ({len(infos)} frames)")
    if "train" in counts:
        cfg = copy.deepcopy(dataset_cfg)
        cfg.pop("DATA_AUGMENTOR", None)
        cfg.DATA_SPLIT = {"train": "train", "test": "train"}
        dataset = WaymoDataset(dataset_cfg=cfg, class_names=list(class_names), root_path=root_path, training=False)
        dataset.create_groundtruth_database(root_path / f"{tag}_infos_train.pkl", root_path,
                                            used_classes=list(class_names), split="train",
                                            sampled_interval=sampled_interval)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description="Waymo preprocessing, info and GT-database generation")
    parser.add_argument("--func", choices=["create_waymo_infos", "create_waymo_infos_from_processed"],
                        default="create_waymo_infos")
    parser.add_argument("--cfg_file", required=True, help="e.g. tools/cfgs/dataset_configs/waymo_dataset.yaml")
    parser.add_argument("--data_path", default=None, help="dataset root (default: the config's DATA_PATH)")
    parser.add_argument("--raw_data_tag", default="raw_data")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sampled_interval", type=int, default=1, help="frames between GT-database entries")
    args = parser.parse_args(argv)
    dataset_cfg = cfg_from_yaml_file(args.cfg_file)
    root = Path(args.data_path).resolve() if args.data_path else resolve_data_path(dataset_cfg.DATA_PATH)
    if args.func == "create_waymo_infos":
        from . import waymo_utils
        for split in ("train", "val"):
            with open(root / "ImageSets" / f"{split}.txt") as f:
                sequences = [sequence_name_of(line) for line in f if line.strip()]
            waymo_utils.convert_sequences(root / args.raw_data_tag, root / dataset_cfg.PROCESSED_DATA_TAG, sequences,
                                          workers=args.workers)
    create_waymo_infos_from_processed(dataset_cfg, root, sampled_interval=args.sampled_interval)


__all__ = ["WaymoDataset", "create_waymo_infos_from_processed", "collect_split_infos", "WAYMO_CLASSES"]

if __name__ == "__main__":
    main()
