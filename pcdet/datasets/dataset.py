"""``DatasetTemplate``: the per-sample pipeline shared by all datasets.

``__getitem__`` of a subclass builds ``{'frame_id', 'points' (N, C), 'gt_boxes' (M, 7) LiDAR, 'gt_names' (M,),
'calib', ...}`` and calls ``prepare_data``, which runs (training) class filtering and augmentation, then the
point feature encoder, the side processors (see ``register_side_processor``) and the data processor.
``collate_batch`` stacks samples into the ``batch_dict`` declared in ``pcdet/batch_keys.py``.
"""
import copy
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch.utils.data as torch_data

from .info_io import write_pickle
from .. import batch_keys as K
from ..config_schema import by_name, check, class_schema, opt, req
from ..utils import box_utils, common_utils
from .augmentor.data_augmentor import DataAugmentor
from .processor.data_processor import DataProcessor
from .processor.point_feature_encoder import PointFeatureEncoder

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tools"

# Keys produced by a side processor and stored under its key.
SIDE_PROCESSOR_KEYS = (K.POINTS, K.VOXELS, K.VOXEL_COORDS, K.VOXEL_NUM_POINTS, K.VOXEL_NUM_POINTS_RAW)

# In training a scene without boxes is replaced by a random other one; give up after this many in a row.
MAX_EMPTY_RESAMPLES = 100


def resolve_data_path(data_path):
    """Absolute dataset root: relative ``DATA_PATH`` values are taken from the repo's ``tools/`` directory
    (OpenPCDet configs say ``../data/kitti`` relative to ``tools/``), so commands work from any cwd."""
    path = Path(data_path).expanduser()
    return path if path.is_absolute() else (TOOLS_DIR / path).resolve()


def drop_invalid_points(points, frame_id, logger=None):
    """Drop rows of ``points`` (N, C) containing NaN or inf, warning with the count and the frame id."""
    finite = np.isfinite(points).all(axis=1)
    num_bad = int(points.shape[0] - finite.sum())
    if num_bad:
        msg = f"frame {frame_id}: dropped {num_bad} of {points.shape[0]} points with NaN/inf values"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        if logger is not None:
            logger.warning(msg)
        points = points[finite]
    return points


class DatasetTemplate(torch_data.Dataset):
    """Base dataset.

    Attributes read by models: ``class_names``, ``point_cloud_range`` np.float32 (6,), ``voxel_size`` list (3,),
    ``grid_size`` np.int64 ``[nx, ny, nz]``, ``point_feature_encoder.num_point_features``,
    ``depth_downsample_factor`` (None), ``training``, ``dataset_cfg``.
    """

    # DATA_CONFIG keys every dataset reads; subclasses add their own (``config_schema.class_schema`` merges them)
    CONFIG_SCHEMA = {
        "DATASET": req(str), "DATA_PATH": req(str), "POINT_CLOUD_RANGE": req(list),
        "DATA_SPLIT": opt(dict, keys={"train": req(str), "test": req(str)}),
        "INFO_PATH": opt(dict, keys={"train": req(list), "test": req(list)}),
        "POINT_FEATURE_ENCODING": req(dict, keys={
            "encoding_type": opt(str), "ENCODING_TYPE": opt(str), "used_feature_list": req(list),
            "src_feature_list": req(list)}),
        "DATA_AUGMENTOR": opt(dict, keys={
            "DISABLE_AUG_LIST": opt(list),
            "AUG_CONFIG_LIST": opt(list, items=by_name(DataAugmentor.STEP_SCHEMAS, "augmentation",
                                                       skip_key="DISABLE_AUG_LIST"))}),
        "DATA_PROCESSOR": opt(list, items=by_name(DataProcessor.STEP_SCHEMAS, "data processor")),
        "MERGE_ALL_ITERS_TO_ONE_EPOCH": opt(bool),
    }

    def __init__(self, dataset_cfg=None, class_names=None, training=True, root_path=None, logger=None):
        super().__init__()
        if dataset_cfg is not None:
            check(dataset_cfg, self.config_schema(dataset_cfg), "DATA_CONFIG", type(self).__name__)
        self.dataset_cfg = dataset_cfg
        self.training = training
        self.class_names = list(class_names)
        self.logger = logger
        self.root_path = Path(root_path).resolve() if root_path is not None else \
            resolve_data_path(dataset_cfg.DATA_PATH)
        self.point_cloud_range = np.array(dataset_cfg.POINT_CLOUD_RANGE, dtype=np.float32)
        self.point_feature_encoder = PointFeatureEncoder(dataset_cfg.POINT_FEATURE_ENCODING,
                                                         point_cloud_range=self.point_cloud_range)
        self.data_augmentor = DataAugmentor(self.root_path, dataset_cfg.DATA_AUGMENTOR, self.class_names,
                                            logger=logger) if training and dataset_cfg.get("DATA_AUGMENTOR") else None
        self.data_processor = DataProcessor(dataset_cfg.get("DATA_PROCESSOR", []),
                                            point_cloud_range=self.point_cloud_range, training=training,
                                            num_point_features=self.point_feature_encoder.num_point_features)
        self.grid_size = self.data_processor.grid_size
        self.voxel_size = self.data_processor.voxel_size
        self.total_epochs = 0
        self._merge_all_iters_to_one_epoch = False
        self.depth_downsample_factor = None
        self.side_processors = {}

    @classmethod
    def config_schema(cls, dataset_cfg):
        """The keys this dataset reads. A dataset class built on the config of another (the template itself for
        the KD side views, demo.py's point files, the benchmarks' synthetic frames) also accepts the keys of the
        registered dataset its ``DATASET`` names."""
        schema = class_schema(cls)
        from . import DATASETS

        name = dataset_cfg.get("DATASET")
        if name in DATASETS and not issubclass(cls, DATASETS.get(name)):
            schema = dict(class_schema(DATASETS.get(name)), **schema)
        return schema

    @property
    def mode(self):
        return "train" if self.training else "test"

    @mode.setter
    def mode(self, value):
        self.training = value == "train"
        if getattr(self, "data_processor", None) is not None:
            self.data_processor.training = self.training
            self.data_processor.mode = value

    def __getstate__(self):
        d = dict(self.__dict__)
        d["logger"] = None  # loggers hold locks and cannot be pickled into spawned workers
        return d

    def merge_all_iters_to_one_epoch(self, merge=True, epochs=None):
        self._merge_all_iters_to_one_epoch = merge
        if merge:
            self.total_epochs = epochs

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")

    def infos_len(self, infos):
        """``__len__`` of a dataset indexed by an info list: ``len(infos)``, times ``total_epochs`` when all
        iterations are merged into one epoch."""
        return len(infos) * self.total_epochs if self._merge_all_iters_to_one_epoch else len(infos)

    def info_at(self, infos, index):
        """Deep copy of ``infos[index]``; with merged epochs ``index`` wraps around ``len(infos)``."""
        if self._merge_all_iters_to_one_epoch:
            index = index % len(infos)
        return copy.deepcopy(infos[index])

    @staticmethod
    def save_gt_database_infos(all_db_infos, db_info_save_path, logger=None):
        """Log the object count per class of a GT database and pickle ``{class: [entry, ...]}`` to its info file."""
        if logger is not None:
            for name, entries in all_db_infos.items():
                logger.info(f"Database {name}: {len(entries)}")
        write_pickle(db_info_save_path, all_db_infos)
        return all_db_infos

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def register_side_processor(self, key, processor_cfg_list, point_cloud_range=None, voxel_size=None):
        """Also process every sample with ``processor_cfg_list`` and store the result under ``data_dict[key]``.

        Runs after augmentation and the point feature encoder, on a copy of the points, so a second network
        with another grid sees the same augmented scene. ``point_cloud_range`` (6,) defaults to the dataset's;
        ``voxel_size`` (3,) overrides ``VOXEL_SIZE`` of its ``transform_points_to_voxels`` step.
        Returns the side ``DataProcessor`` (its ``grid_size`` / ``voxel_size`` describe the side grid).
        """
        if key in K.DATASET_KEYS or key in self.side_processors:
            raise KeyError(f"register_side_processor: key '{key}' is already used in the sample dict")
        cfg_list = copy.deepcopy(list(processor_cfg_list))
        if voxel_size is not None:
            for cfg in cfg_list:
                if cfg.NAME == "transform_points_to_voxels":
                    cfg.VOXEL_SIZE = list(voxel_size)
        pc_range = self.point_cloud_range if point_cloud_range is None else point_cloud_range
        processor = DataProcessor(cfg_list, point_cloud_range=pc_range, training=self.training,
                                  num_point_features=self.point_feature_encoder.num_point_features)
        self.side_processors[key] = processor
        return processor

    def _run_side_processors(self, data_dict):
        for key, processor in self.side_processors.items():
            side = {K.FRAME_ID: data_dict.get(K.FRAME_ID), K.POINTS: data_dict[K.POINTS].copy(),
                    K.USE_LEAD_XYZ: data_dict.get(K.USE_LEAD_XYZ, True)}
            processor.training = self.training
            processor.mode = self.mode
            side = processor.forward(side)
            data_dict[key] = {k: side[k] for k in SIDE_PROCESSOR_KEYS if k in side}
        return data_dict

    def prepare_data(self, data_dict):
        """Process one raw sample.

        Args:
            data_dict: ``frame_id``, ``points`` (N, C_src), optional ``gt_boxes`` (M, 7) LiDAR boxes and
                ``gt_names`` (M,) str, plus dataset extras (``calib``, ...).
        Returns:
            dict with ``points`` (N', C_used), ``gt_boxes`` (M', 8) with the 1-based class id in column 8,
            ``voxels`` / ``voxel_coords`` / ``voxel_num_points`` / ``voxel_num_points_raw`` when voxelizing,
            ``use_lead_xyz`` and the extras. In training a scene left without boxes is replaced by a random other
            sample (``self[np.random.randint(len(self))]``), as OpenPCDet does.
        """
        frame_id = data_dict.get(K.FRAME_ID)
        points = np.asarray(data_dict[K.POINTS], dtype=np.float32)
        data_dict[K.POINTS] = drop_invalid_points(points, frame_id, self.logger)
        if data_dict.get(K.GT_BOXES) is not None:
            gt_boxes = np.asarray(data_dict[K.GT_BOXES], dtype=np.float32)
            data_dict[K.GT_BOXES] = gt_boxes.reshape(0, 7) if gt_boxes.size == 0 else gt_boxes
            data_dict[K.GT_NAMES] = np.asarray(data_dict[K.GT_NAMES]).astype(str)

        if self.training:
            if data_dict.get(K.GT_BOXES) is None:
                raise KeyError(f"{type(self).__name__}: training sample {frame_id} has no 'gt_boxes'")
            if self.data_augmentor is not None:
                gt_boxes_mask = np.array([n in self.class_names for n in data_dict[K.GT_NAMES]], dtype=bool)
                data_dict["gt_boxes_mask"] = gt_boxes_mask
                data_dict = self.data_augmentor.forward(data_dict)

        if data_dict.get(K.GT_BOXES) is not None:
            selected = common_utils.keep_arrays_by_name(data_dict[K.GT_NAMES], self.class_names)
            gt_boxes = data_dict[K.GT_BOXES][selected]
            gt_names = data_dict[K.GT_NAMES][selected]
            gt_classes = np.array([self.class_names.index(n) + 1 for n in gt_names], dtype=np.float32)
            data_dict[K.GT_BOXES] = np.concatenate((gt_boxes, gt_classes.reshape(-1, 1)), axis=1).astype(np.float32)
            data_dict[K.GT_NAMES] = gt_names

        data_dict = self.point_feature_encoder.forward(data_dict)
        data_dict = self._run_side_processors(data_dict)
        data_dict = self.data_processor.forward(data_dict)

        if self.training and len(data_dict[K.GT_BOXES]) == 0:
            return self._resample_empty_scene(frame_id)
        self._empty_resamples = 0
        data_dict.pop(K.GT_NAMES, None)
        return data_dict

    def _resample_empty_scene(self, frame_id):
        self._empty_resamples = getattr(self, "_empty_resamples", 0) + 1
        if self._empty_resamples > MAX_EMPTY_RESAMPLES:
            self._empty_resamples = 0
            raise RuntimeError(
                f"{type(self).__name__}: {MAX_EMPTY_RESAMPLES} training samples in a row (last: frame {frame_id}) "
                f"had no box of {self.class_names} inside POINT_CLOUD_RANGE after augmentation; check the labels, "
                f"CLASS_NAMES and POINT_CLOUD_RANGE")
        return self[np.random.randint(len(self))]

    @staticmethod
    def collate_batch(batch_list):
        """Stack a list of sample dicts into a ``batch_dict``.

        ``points`` and ``voxel_coords`` get the batch index prepended ((N, 1 + C), (V, 4)); ``voxels`` and the
        voxel point counts are concatenated; ``gt_boxes`` are zero padded to (B, max(M_b, 1), 8); ``frame_id``
        becomes a (B,) array, ``calib`` a list, ``image_shape`` (B, 2); nested dicts (side processors such as
        ``kd_teacher_inputs``) are collated recursively the same way; other arrays are stacked.
        """
        data_dict = defaultdict(list)
        for cur_sample in batch_list:
            for key, val in cur_sample.items():
                data_dict[key].append(val)
        batch_size = len(batch_list)
        ret = {}
        for key, val in data_dict.items():
            if len(val) != batch_size:
                raise KeyError(f"collate_batch: key '{key}' is present in {len(val)} of {batch_size} samples")
            try:
                ret[key] = DatasetTemplate._collate_key(key, val)
            except ValueError as exc:
                shapes = [getattr(v, "shape", type(v).__name__) for v in val]
                raise ValueError(f"collate_batch: cannot collate key '{key}' with per-sample shapes {shapes}: "
                                 f"{exc}") from exc
        ret[K.BATCH_SIZE] = batch_size
        return ret

    @staticmethod
    def _collate_key(key, val):
        if isinstance(val[0], dict):
            nested = DatasetTemplate.collate_batch(val)
            nested.pop(K.BATCH_SIZE)
            return nested
        if key in (K.VOXELS, K.VOXEL_NUM_POINTS, K.VOXEL_NUM_POINTS_RAW):
            return np.concatenate(val, axis=0)
        if key in (K.POINTS, K.VOXEL_COORDS):
            padded = [np.pad(np.asarray(v), ((0, 0), (1, 0)), mode="constant", constant_values=i)
                      for i, v in enumerate(val)]
            return np.concatenate(padded, axis=0)
        if key == K.GT_BOXES:
            max_gt = max(1, max(len(x) for x in val))
            width = val[0].shape[-1]
            out = np.zeros((len(val), max_gt, width), dtype=np.float32)
            for i, boxes in enumerate(val):
                out[i, :len(boxes)] = boxes
            return out
        if key == K.FRAME_ID:
            return np.array(val)
        if key in (K.CALIB, K.GT_NAMES):
            return list(val)
        if key == K.IMAGE_SHAPE:
            return np.stack([np.asarray(v, dtype=np.int32) for v in val], axis=0)
        return np.stack(val, axis=0)

    def generate_prediction_dicts(self, batch_dict, pred_dicts, class_names, output_path=None):
        """Turn network outputs into per-frame annotation dicts.

        Args:
            batch_dict: the collated batch (``frame_id``, and ``calib`` / ``image_shape`` for KITTI-format data).
            pred_dicts: list of B dicts ``pred_boxes`` (K, 7) LiDAR, ``pred_scores`` (K,), ``pred_labels`` (K,)
                1-based.
            class_names: list of class names indexed by ``pred_labels - 1``.
            output_path: directory for KITTI ``<frame_id>.txt`` result files (KITTI-format data only).
        Returns:
            list of B dicts. With a calibration: KITTI annos (``name``, ``truncated``, ``occluded``, ``alpha``,
            ``bbox`` (K, 4), ``dimensions`` (K, 3) camera l, h, w, ``location`` (K, 3), ``rotation_y``, ``score``,
            ``boxes_lidar`` (K, 7), ``frame_id``); otherwise ``name``, ``score``, ``boxes_lidar``,
            ``pred_labels``, ``frame_id``.
        """
        annos = []
        for index, box_dict in enumerate(pred_dicts):
            scores = _to_numpy(box_dict["pred_scores"]).astype(np.float32)
            boxes = _to_numpy(box_dict["pred_boxes"]).astype(np.float32).reshape(-1, 7)
            labels = _to_numpy(box_dict["pred_labels"]).astype(np.int64)
            frame_id = batch_dict[K.FRAME_ID][index]
            num = boxes.shape[0]
            names = np.array(class_names)[labels - 1] if num > 0 else np.zeros(0, dtype="<U10")
            calib = batch_dict[K.CALIB][index] if K.CALIB in batch_dict else None
            if calib is None:
                annos.append({"name": names, "score": scores, "boxes_lidar": boxes, "pred_labels": labels,
                              "frame_id": frame_id})
                continue
            image_shape = _to_numpy(batch_dict[K.IMAGE_SHAPE][index])
            boxes_camera = box_utils.boxes3d_lidar_to_kitti_camera(boxes, calib).reshape(-1, 7)
            boxes_img = box_utils.boxes3d_kitti_camera_to_imageboxes(boxes_camera, calib,
                                                                     image_shape=image_shape).reshape(-1, 4)
            anno = {
                "name": names,
                "truncated": np.zeros(num),
                "occluded": np.zeros(num),
                "alpha": -np.arctan2(-boxes[:, 1], boxes[:, 0]) + boxes_camera[:, 6],
                "bbox": boxes_img,
                "dimensions": boxes_camera[:, 3:6],
                "location": boxes_camera[:, 0:3],
                "rotation_y": boxes_camera[:, 6],
                "score": scores,
                "boxes_lidar": boxes,
                "frame_id": frame_id,
            }
            annos.append(anno)
            if output_path is not None:
                write_kitti_result_file(Path(output_path) / f"{frame_id}.txt", anno)
        return annos

    def evaluation(self, det_annos, class_names, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluation")


def _to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def write_kitti_result_file(path, anno):
    """Write one frame's KITTI annos as a KITTI result file (``type -1 -1 alpha bbox h w l x y z ry score``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(anno["name"])):
        l, h, w = anno["dimensions"][i]
        x, y, z = anno["location"][i]
        b = anno["bbox"][i]
        lines.append(f"{anno['name'][i]} -1 -1 {anno['alpha'][i]:.4f} {b[0]:.4f} {b[1]:.4f} {b[2]:.4f} {b[3]:.4f} "
                     f"{h:.4f} {w:.4f} {l:.4f} {x:.4f} {y:.4f} {z:.4f} {anno['rotation_y'][i]:.4f} "
                     f"{anno['score'][i]:.4f}")
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
