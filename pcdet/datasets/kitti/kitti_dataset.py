"""KITTI object detection dataset (OpenPCDet layout, infos and GT database).

Layout under the dataset root (``DATA_PATH``, relative paths taken from ``tools/``)::

    ImageSets/{train,val,test}.txt
    training/{velodyne,label_2,calib,image_2}/<frame>.{bin,txt,txt,png}
    testing/{velodyne,calib,image_2}/

Create the infos and the GT database with::

    python -m pcdet.datasets.kitti.kitti_dataset create_kitti_infos tools/cfgs/dataset_configs/kitti_dataset.yaml
"""
import argparse
import copy
import warnings
from concurrent import futures
from pathlib import Path

import numpy as np

from ...config import cfg_from_yaml_file
from ... import batch_keys as K
from ...ops.roiaware_pool3d import roiaware_pool3d_utils
from ...utils import box_utils, calibration_kitti, common_utils, object3d_kitti
from .. import DATASETS
from ..dataset import DatasetTemplate, resolve_data_path
from ..info_io import read_pickle, write_pickle
from . import kitti_utils
from ...config_schema import opt, req

KITTI_CLASSES = ["Car", "Pedestrian", "Cyclist"]
_MAX_LISTED_MISSING = 20


class EmptyScanWarning(UserWarning):
    """A labelled frame whose scan holds no point."""


def warn_empty_scan(dataset, frame_id, when):
    """Warn once per frame and dataset object that a labelled frame has an empty scan."""
    seen = dataset.__dict__.setdefault("_empty_scans_warned", set())
    if frame_id in seen:
        return
    seen.add(frame_id)
    msg = (f"KITTI frame {frame_id}: velodyne/{frame_id}.bin has 0 points but the frame is labelled ({when}); "
           f"its boxes can never be detected")
    warnings.warn(EmptyScanWarning(msg), stacklevel=2)
    if getattr(dataset, "logger", None) is not None:
        dataset.logger.warning(msg)


class KittiDataset(DatasetTemplate):
    """KITTI dataset. Infos (``INFO_PATH[mode]`` pickles under the root) drive ``__getitem__``."""

    CONFIG_SCHEMA = {
        "DATA_SPLIT": req(dict, keys={"train": req(str), "test": req(str)}),
        "INFO_PATH": req(dict, keys={"train": req(list), "test": req(list)}),
        "DEFAULT_IMAGE_SHAPE": opt(list), "GET_ITEM_LIST": opt(list), "FOV_POINTS_ONLY": opt(bool),
    }

    def __init__(self, dataset_cfg, class_names, training=True, root_path=None, logger=None, load_infos=True):
        """``load_infos=False``: do not read ``INFO_PATH`` (``create_kitti_infos`` builds them)."""
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=training,
                         root_path=root_path, logger=logger)
        self.num_point_features_raw = len(dataset_cfg.POINT_FEATURE_ENCODING.src_feature_list)
        self.split = dataset_cfg.DATA_SPLIT[self.mode]
        self.root_split_path = self.root_path / ("training" if self.split != "test" else "testing")
        self.sample_id_list = self._read_split(self.split)
        self.kitti_infos = []
        if load_infos:
            self.include_kitti_data(self.mode)

    # ------------------------------------------------------------------ splits and infos
    def _read_split(self, split):
        split_file = self.root_path / "ImageSets" / f"{split}.txt"
        if not split_file.is_file():
            return None
        with open(split_file, "r") as f:
            ids = [line.strip() for line in f if line.strip()]
        velodyne_dir = self.root_split_path / "velodyne"
        missing = [i for i in ids if not (velodyne_dir / f"{i}.bin").is_file()]
        if missing:
            shown = ", ".join(missing[:_MAX_LISTED_MISSING])
            more = f" (and {len(missing) - _MAX_LISTED_MISSING} more)" if len(missing) > _MAX_LISTED_MISSING else ""
            raise FileNotFoundError(f"{split_file}: {len(missing)} of {len(ids)} frames have no scan in "
                                    f"{velodyne_dir}: {shown}{more}")
        return ids

    def set_split(self, split):
        """Switch to ``split`` (reads ``ImageSets/<split>.txt``; None when that file is absent)."""
        self.split = split
        self.root_split_path = self.root_path / ("training" if split != "test" else "testing")
        self.sample_id_list = self._read_split(split)

    def include_kitti_data(self, mode):
        """Load the info pickles listed in ``INFO_PATH[mode]``; a missing, truncated or wrong-type file is an
        InfoFileError naming it and the command that rebuilds it."""
        for info_path in self.dataset_cfg.INFO_PATH[mode]:
            self.kitti_infos.extend(read_pickle(self.root_path / info_path, list, f"KITTI info file ({mode})"))
        if self.logger is not None:
            self.logger.info(f"Total samples for KITTI dataset ({mode}): {len(self.kitti_infos)}")

    # ------------------------------------------------------------------ raw files
    def get_lidar(self, idx):
        """(N, num_features) float32 scan of frame ``idx``."""
        return kitti_utils.read_velodyne_bin(self.root_split_path / "velodyne" / f"{idx}.bin",
                                             self.num_point_features_raw)

    def get_image_shape(self, idx):
        """``np.int32 [height, width]`` from ``image_2/<idx>.png``, else ``DEFAULT_IMAGE_SHAPE``."""
        img_file = self.root_split_path / "image_2" / f"{idx}.png"
        if img_file.is_file():
            return np.array(kitti_utils.png_image_shape(img_file), dtype=np.int32)
        return np.array(self.dataset_cfg.get("DEFAULT_IMAGE_SHAPE", [375, 1242]), dtype=np.int32)

    def get_label(self, idx):
        label_file = self.root_split_path / "label_2" / f"{idx}.txt"
        if not label_file.is_file():
            raise FileNotFoundError(f"KITTI frame {idx}: label file not found: {label_file}")
        return object3d_kitti.get_objects_from_label(label_file)

    def get_calib(self, idx):
        calib_file = self.root_split_path / "calib" / f"{idx}.txt"
        if not calib_file.is_file():
            raise FileNotFoundError(f"KITTI frame {idx}: calib file not found: {calib_file}")
        return calibration_kitti.Calibration(calib_file)

    @staticmethod
    def get_fov_flag(pts_rect, img_shape, calib):
        return kitti_utils.get_fov_flag(pts_rect, img_shape, calib)

    # ------------------------------------------------------------------ info generation
    def get_info(self, sample_idx, has_label=True, count_inside_pts=True):
        """OpenPCDet info dict of one frame: ``point_cloud``, ``image``, ``calib`` and (with labels) ``annos``."""
        info = {
            "point_cloud": {"num_features": self.num_point_features_raw, "lidar_idx": sample_idx},
            "image": {"image_idx": sample_idx, "image_shape": self.get_image_shape(sample_idx)},
        }
        calib = self.get_calib(sample_idx)
        v2r, p2 = kitti_utils.calib_to_matricies(calib)
        r0_4x4 = np.eye(4, dtype=np.float32)
        r0_4x4[:3, :3] = calib.R0
        v2c_4x4 = np.eye(4, dtype=np.float32)
        v2c_4x4[:3, :] = calib.V2C
        info["calib"] = {"P2": p2, "R0_rect": r0_4x4, "Tr_velo_to_cam": v2c_4x4}
        if not has_label:
            return info

        objects = self.get_label(sample_idx)
        # DontCare regions go last so that the first ``num_objects`` rows align with ``gt_boxes_lidar`` (the
        # layout OpenPCDet's tools rely on, e.g. ``drop_info_with_name(annos, 'DontCare')``).
        obj_list = [o for o in objects if o.cls_type != "DontCare"] + [o for o in objects if o.cls_type == "DontCare"]
        num_objects = sum(o.cls_type != "DontCare" for o in objects)
        annos = {
            "name": np.array([o.cls_type for o in obj_list]).astype(str),
            "truncated": np.array([o.truncation for o in obj_list], dtype=np.float32),
            "occluded": np.array([o.occlusion for o in obj_list], dtype=np.float32),
            "alpha": np.array([o.alpha for o in obj_list], dtype=np.float32),
            "bbox": np.array([o.box2d for o in obj_list], dtype=np.float32).reshape(-1, 4),
            "dimensions": np.array([[o.l, o.h, o.w] for o in obj_list], dtype=np.float32).reshape(-1, 3),
            "location": np.array([o.loc for o in obj_list], dtype=np.float32).reshape(-1, 3),
            "rotation_y": np.array([o.ry for o in obj_list], dtype=np.float32),
            "score": np.array([o.score for o in obj_list], dtype=np.float32),
            "difficulty": np.array([o.level for o in obj_list], dtype=np.int32),
        }
        annos["index"] = np.array(list(range(num_objects)) + [-1] * (len(obj_list) - num_objects), dtype=np.int32)
        boxes_camera = np.concatenate([annos["location"], annos["dimensions"], annos["rotation_y"][:, None]],
                                      axis=1)[:num_objects]
        annos["gt_boxes_lidar"] = box_utils.boxes3d_kitti_camera_to_lidar(boxes_camera, calib).reshape(-1, 7)

        if count_inside_pts:
            points = self.get_lidar(sample_idx)
            if points.shape[0] == 0:
                warn_empty_scan(self, sample_idx, "info building")
            fov_flag = self.get_fov_flag(calib.lidar_to_rect(points[:, 0:3]), info["image"]["image_shape"], calib)
            pts_fov = points[fov_flag]
            num_points_in_gt = -np.ones(len(obj_list), dtype=np.int32)
            if num_objects > 0:
                inside = roiaware_pool3d_utils.points_in_boxes_cpu(pts_fov[:, 0:3], annos["gt_boxes_lidar"])
                num_points_in_gt[:num_objects] = np.asarray(inside).sum(axis=1)
            annos["num_points_in_gt"] = num_points_in_gt
        info["annos"] = annos
        return info

    def get_infos(self, num_workers=4, has_label=True, count_inside_pts=True, sample_id_list=None):
        """Infos of every frame of the current split (or ``sample_id_list``), computed in a thread pool."""
        sample_id_list = sample_id_list if sample_id_list is not None else self.sample_id_list
        if sample_id_list is None:
            raise FileNotFoundError(f"KITTI split '{self.split}': {self.root_path / 'ImageSets'}/{self.split}.txt "
                                    f"not found")

        def _one(idx):
            return self.get_info(idx, has_label=has_label, count_inside_pts=count_inside_pts)

        if num_workers <= 1:
            return [_one(idx) for idx in sample_id_list]
        with futures.ThreadPoolExecutor(num_workers) as executor:
            return list(executor.map(_one, sample_id_list))

    def create_groundtruth_database(self, info_path=None, used_classes=None, split="train", num_workers=4):
        """Write ``gt_database/<frame>_<class>_<i>.bin`` (object points minus the box centre, all features) and
        ``kitti_dbinfos_<split>.pkl`` (per class: name, path, image_idx, gt_idx, box3d_lidar,
        num_points_in_gt, difficulty, bbox, score)."""
        database_save_path = self.root_path / ("gt_database" if split == "train" else f"gt_database_{split}")
        db_info_save_path = self.root_path / f"kitti_dbinfos_{split}.pkl"
        database_save_path.mkdir(parents=True, exist_ok=True)
        infos = read_pickle(info_path, list, "KITTI info file")

        def _one(info):
            sample_idx = info["point_cloud"]["lidar_idx"]
            points = self.get_lidar(sample_idx)
            annos = info["annos"]
            gt_boxes = annos["gt_boxes_lidar"]
            entries = []
            if gt_boxes.shape[0] == 0:
                return entries
            inside = np.asarray(roiaware_pool3d_utils.points_in_boxes_cpu(points[:, 0:3], gt_boxes))
            for i in range(gt_boxes.shape[0]):
                name = str(annos["name"][i])
                filepath = database_save_path / f"{sample_idx}_{name}_{i}.bin"
                gt_points = points[inside[i] > 0].copy()
                gt_points[:, 0:3] -= gt_boxes[i, 0:3]
                gt_points.astype(np.float32).tofile(str(filepath))
                if used_classes is None or name in used_classes:
                    entries.append({
                        "name": name, "path": str(filepath.relative_to(self.root_path)), "image_idx": sample_idx,
                        "gt_idx": i, "box3d_lidar": gt_boxes[i].astype(np.float32),
                        "num_points_in_gt": int(gt_points.shape[0]), "difficulty": int(annos["difficulty"][i]),
                        "bbox": annos["bbox"][i], "score": float(annos["score"][i]),
                    })
            return entries

        if num_workers <= 1:
            results = [_one(info) for info in infos]
        else:
            with futures.ThreadPoolExecutor(num_workers) as executor:
                results = list(executor.map(_one, infos))
        all_db_infos = {}
        for entries in results:
            for entry in entries:
                all_db_infos.setdefault(entry["name"], []).append(entry)
        return self.save_gt_database_infos(all_db_infos, db_info_save_path, self.logger)

    # ------------------------------------------------------------------ samples
    def __len__(self):
        return self.infos_len(self.kitti_infos)

    def __getitem__(self, index):
        info = self.info_at(self.kitti_infos, index)
        sample_idx = info["point_cloud"]["lidar_idx"]
        img_shape = info["image"]["image_shape"]
        calib = self.get_calib(sample_idx)
        get_item_list = self.dataset_cfg.get("GET_ITEM_LIST", ["points"])

        input_dict = {K.FRAME_ID: sample_idx, K.CALIB: calib}
        if "annos" in info:
            annos = common_utils.drop_info_with_name(info["annos"], name="DontCare")
            boxes_camera = np.concatenate([annos["location"], annos["dimensions"], annos["rotation_y"][:, None]],
                                          axis=1).astype(np.float32)
            input_dict[K.GT_NAMES] = annos["name"]
            input_dict[K.GT_BOXES] = box_utils.boxes3d_kitti_camera_to_lidar(boxes_camera, calib).reshape(-1, 7)
        if "annos" in info and not np.isfinite(input_dict[K.GT_BOXES]).all():
            bad = np.where(~np.isfinite(input_dict[K.GT_BOXES]).all(axis=1))[0].tolist()
            raise ValueError(f"KITTI frame {sample_idx}: non-finite GT boxes at rows {bad} of its info "
                             f"(label_2/{sample_idx}.txt); fix the label and rebuild the infos")
        if "points" in get_item_list:
            points = self.get_lidar(sample_idx)
            if points.shape[0] == 0 and "annos" in info:
                warn_empty_scan(self, sample_idx, "loading")
            if self.dataset_cfg.get("FOV_POINTS_ONLY", True) and points.shape[0] > 0:
                finite = np.isfinite(points).all(axis=1)
                fov = np.zeros(points.shape[0], dtype=bool)
                fov[finite] = self.get_fov_flag(calib.lidar_to_rect(points[finite, 0:3]), img_shape, calib)
                # NaN/inf rows are kept so that prepare_data drops and reports them.
                points = points[fov | ~finite]
            input_dict[K.POINTS] = points

        data_dict = self.prepare_data(input_dict)
        data_dict[K.IMAGE_SHAPE] = img_shape
        return data_dict

    # ------------------------------------------------------------------ predictions and evaluation
    def evaluation(self, det_annos, class_names, **kwargs):
        """Official KITTI AP of ``det_annos`` against the infos' annos of the same frames.

        Returns ``(result_str, result_dict)``; ``('', {})`` when the infos carry no labels (test split).
        """
        if len(self.kitti_infos) == 0 or "annos" not in self.kitti_infos[0]:
            return "", {}
        from .kitti_object_eval_python import eval as kitti_eval

        gt_by_frame = {info["point_cloud"]["lidar_idx"]: info["annos"] for info in self.kitti_infos}
        missing = [a["frame_id"] for a in det_annos if a["frame_id"] not in gt_by_frame]
        if missing:
            raise KeyError(f"KittiDataset.evaluation: detections for frames without infos: {missing[:20]}")
        eval_det_annos = copy.deepcopy(det_annos)
        eval_gt_annos = [copy.deepcopy(gt_by_frame[a["frame_id"]]) for a in det_annos]
        return kitti_eval.get_official_eval_result(eval_gt_annos, eval_det_annos, class_names)


if __name__ != "__main__":
    # Under `python -m pcdet.datasets.kitti.kitti_dataset` this file also runs as __main__ while the package import
    # registers the package copy; registering both would clash.
    DATASETS.register(KittiDataset)


def create_kitti_infos(dataset_cfg, class_names, data_path, save_path, workers=4):
    """Write ``kitti_infos_{train,val,tune,trainval,test}.pkl``, ``kitti_dbinfos_train.pkl`` and ``gt_database/``.

    ``data_path`` is the dataset root; ``save_path`` where the pickles go (normally the same). A split whose
    ``ImageSets/<split>.txt`` is absent is skipped (trainval needs train and val).
    Returns ``{split: number of frames}``.
    """
    data_path, save_path = Path(data_path), Path(save_path)
    save_path.mkdir(parents=True, exist_ok=True)
    dataset = KittiDataset(dataset_cfg=dataset_cfg, class_names=class_names, root_path=data_path, training=False,
                           load_infos=False)
    counts = {}
    split_infos = {}
    for split, has_label in (("train", True), ("val", True), ("tune", True), ("test", False)):
        dataset.set_split(split)
        if dataset.sample_id_list is None:
            print(f"---------------- ImageSets/{split}.txt not found, skipping the {split} split ----------------")
            continue
        infos = dataset.get_infos(num_workers=workers, has_label=has_label, count_inside_pts=has_label)
        write_pickle(save_path / f"kitti_infos_{split}.pkl", infos)
        split_infos[split] = infos
        counts[split] = len(infos)
        print(f"Kitti info {split} file is saved to {save_path / f'kitti_infos_{split}.pkl'} ({len(infos)} frames)")
    if "train" in split_infos and "val" in split_infos:
        write_pickle(save_path / "kitti_infos_trainval.pkl", split_infos["train"] + split_infos["val"])
        counts["trainval"] = len(split_infos["train"]) + len(split_infos["val"])
        print(f"Kitti info trainval file is saved to {save_path / 'kitti_infos_trainval.pkl'}")
    if "train" in split_infos:
        print("---------------- Start creating groundtruth database for data augmentation ----------------")
        dataset.set_split("train")
        dataset.create_groundtruth_database(save_path / "kitti_infos_train.pkl", split="train", num_workers=workers)
        print("---------------- Data preparation done ----------------")
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description="KITTI info / GT-database generation")
    parser.add_argument("func", choices=["create_kitti_infos"])
    parser.add_argument("cfg_file", help="dataset config, e.g. tools/cfgs/dataset_configs/kitti_dataset.yaml")
    parser.add_argument("--data_path", default=None, help="dataset root (default: the config's DATA_PATH)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--class_names", nargs="+", default=KITTI_CLASSES)
    args = parser.parse_args(argv)
    dataset_cfg = cfg_from_yaml_file(args.cfg_file)
    data_path = Path(args.data_path).resolve() if args.data_path else resolve_data_path(dataset_cfg.DATA_PATH)
    create_kitti_infos(dataset_cfg, class_names=args.class_names, data_path=data_path, save_path=data_path,
                       workers=args.workers)


__all__ = ["KittiDataset", "create_kitti_infos"]

if __name__ == "__main__":
    main()
