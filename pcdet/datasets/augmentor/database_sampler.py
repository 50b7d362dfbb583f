"""Ground-truth sampling ("gt_sampling", SECOND's GT-AUG): paste objects from the GT database into a scene.

Config keys (OpenPCDet): ``DB_INFO_PATH`` (list of pickles relative to the dataset root),
``PREPARE: {filter_by_min_points: ['Car:5', ...], filter_by_difficulty: [-1]}``,
``SAMPLE_GROUPS: ['Car:15', ...]``, ``NUM_POINT_FEATURES``, ``REMOVE_EXTRA_WIDTH: [dx, dy, dz]``,
``LIMIT_WHOLE_SCENE``, ``DATABASE_WITH_FAKELIDAR`` (must be False), ``USE_ROAD_PLANE`` (must be False).
Each database entry (``kitti_dbinfos_train.pkl``) is a dict with ``name``, ``path`` (object points relative
to the box centre), ``box3d_lidar`` (7,), ``num_points_in_gt``, ``difficulty``.
"""
from pathlib import Path

import numpy as np

from ..info_io import read_pickle
from ... import batch_keys as K
from ...ops.iou3d_nms import iou3d_nms_utils
from ...ops.roiaware_pool3d import roiaware_pool3d_utils
from ...utils import box_utils


def _parse_name_number(text, key):
    try:
        name, num = text.split(":")
        return name, int(num)
    except ValueError as exc:
        raise ValueError(f"gt_sampling.{key}: entry '{text}' is not of the form 'Class:number'") from exc


def points_in_any_box(points, boxes):
    """(N,) bool: points (N, 3+) inside at least one LiDAR box (M, 7+).

    A cheap bird's-eye-view test against each box's bounding square (half side = half the box diagonal) picks
    the candidate points first, so the exact rotated test runs on a small subset of the scan.
    """
    mask = np.zeros(points.shape[0], dtype=bool)
    if points.shape[0] == 0 or boxes.shape[0] == 0:
        return mask
    radius = 0.5 * np.sqrt(boxes[:, 3] ** 2 + boxes[:, 4] ** 2)
    near = np.zeros(points.shape[0], dtype=bool)
    for box, r in zip(boxes, radius):
        near |= (np.abs(points[:, 0] - box[0]) <= r) & (np.abs(points[:, 1] - box[1]) <= r)
    candidates = np.nonzero(near)[0]
    if candidates.size:
        inside = roiaware_pool3d_utils.points_in_boxes_cpu(
            np.ascontiguousarray(points[candidates, 0:3], dtype=np.float32), boxes[:, 0:7].astype(np.float32))
        mask[candidates] = np.asarray(inside).sum(axis=0) > 0
    return mask


class DataBaseSampler:
    """Samples database objects per class and pastes the ones that do not collide in bird's-eye view."""

    def __init__(self, root_path, sampler_cfg, class_names, logger=None):
        self.root_path = Path(root_path)
        self.class_names = class_names
        self.sampler_cfg = sampler_cfg
        self.logger = logger
        if sampler_cfg.get("USE_ROAD_PLANE", False):
            raise NotImplementedError("gt_sampling.USE_ROAD_PLANE is not supported; set it to False")
        if sampler_cfg.get("DATABASE_WITH_FAKELIDAR", False):
            raise NotImplementedError("gt_sampling.DATABASE_WITH_FAKELIDAR is not supported; set it to False")
        self.num_point_features = int(sampler_cfg.NUM_POINT_FEATURES)
        self.remove_extra_width = list(sampler_cfg.get("REMOVE_EXTRA_WIDTH", [0.0, 0.0, 0.0]))
        self.limit_whole_scene = bool(sampler_cfg.get("LIMIT_WHOLE_SCENE", False))

        self.db_infos = {name: [] for name in class_names}
        for db_info_path in sampler_cfg.DB_INFO_PATH:
            infos = read_pickle(self.root_path / db_info_path, dict, "gt_sampling.DB_INFO_PATH database file")
            for name in class_names:
                self.db_infos[name].extend(infos.get(name, []))

        for func_name, val in sampler_cfg.get("PREPARE", {}).items():
            self.db_infos = getattr(self, func_name)(self.db_infos, val)

        self.sample_groups = {}
        self.sample_class_num = {}
        for text in sampler_cfg.SAMPLE_GROUPS:
            name, num = _parse_name_number(text, "SAMPLE_GROUPS")
            if name not in class_names:
                continue
            self.sample_class_num[name] = num
            self.sample_groups[name] = {
                "sample_num": num,
                "pointer": len(self.db_infos[name]),
                "indices": np.arange(len(self.db_infos[name])),
            }

    def __getstate__(self):
        d = dict(self.__dict__)
        d["logger"] = None
        return d

    def _log(self, msg):
        if self.logger is not None:
            self.logger.info(msg)

    def filter_by_difficulty(self, db_infos, removed_difficulty):
        """Drop entries whose ``difficulty`` is in ``removed_difficulty``."""
        out = {}
        for key, infos in db_infos.items():
            out[key] = [info for info in infos if info["difficulty"] not in removed_difficulty]
            self._log(f"Database filter by difficulty {key}: {len(infos)} => {len(out[key])}")
        return out

    def filter_by_min_points(self, db_infos, min_gt_points_list):
        """Drop entries of class ``Name`` with fewer than ``n`` points, for every ``'Name:n'`` in the list."""
        for text in min_gt_points_list:
            name, min_num = _parse_name_number(text, "PREPARE.filter_by_min_points")
            if min_num > 0 and name in db_infos:
                before = len(db_infos[name])
                db_infos[name] = [info for info in db_infos[name] if info["num_points_in_gt"] >= min_num]
                self._log(f"Database filter by min points {name}: {before} => {len(db_infos[name])}")
        return db_infos

    def sample_with_fixed_number(self, class_name, sample_group):
        """Next ``sample_num`` entries of a per-class permutation, reshuffled when exhausted."""
        sample_num, pointer, indices = sample_group["sample_num"], sample_group["pointer"], sample_group["indices"]
        if len(indices) == 0 or sample_num <= 0:
            return []
        sample_num = min(sample_num, len(indices))
        if pointer + sample_num > len(indices):
            indices = np.random.permutation(len(self.db_infos[class_name]))
            pointer = 0
        sampled = [self.db_infos[class_name][idx] for idx in indices[pointer:pointer + sample_num]]
        sample_group["pointer"] = pointer + sample_num
        sample_group["indices"] = indices
        return sampled

    def _load_object_points(self, info):
        path = self.root_path / info["path"]
        if not path.is_file():
            raise FileNotFoundError(f"gt_sampling: database object file {path} not found (entry {info['name']} "
                                    f"of frame {info.get('image_idx')})")
        raw = np.fromfile(str(path), dtype=np.float32)
        if raw.size % self.num_point_features != 0:
            raise ValueError(f"gt_sampling: {path} holds {raw.size} floats, not a multiple of "
                             f"NUM_POINT_FEATURES={self.num_point_features}")
        points = raw.reshape(-1, self.num_point_features)
        points[:, 0:3] += np.asarray(info["box3d_lidar"][0:3], dtype=np.float32)
        return points

    def add_sampled_boxes_to_scene(self, data_dict, sampled_gt_boxes, total_valid_sampled_dict):
        """Remove scene points inside the (enlarged) sampled boxes and add the objects' points and boxes."""
        gt_boxes_mask = data_dict["gt_boxes_mask"]
        gt_boxes = data_dict[K.GT_BOXES][gt_boxes_mask]
        gt_names = data_dict[K.GT_NAMES][gt_boxes_mask]
        points = data_dict[K.POINTS]

        obj_points = [self._load_object_points(info) for info in total_valid_sampled_dict]
        obj_points = np.concatenate(obj_points, axis=0) if obj_points else \
            np.zeros((0, self.num_point_features), dtype=np.float32)
        if obj_points.shape[1] != points.shape[1]:
            raise ValueError(f"gt_sampling: database points have {obj_points.shape[1]} features but the scene "
                             f"{data_dict.get(K.FRAME_ID)} has {points.shape[1]}")
        sampled_names = np.array([info["name"] for info in total_valid_sampled_dict])

        large_boxes = box_utils.enlarge_box3d(sampled_gt_boxes[:, 0:7], extra_width=self.remove_extra_width)
        points = points[~points_in_any_box(points, large_boxes)]
        data_dict[K.POINTS] = np.concatenate([obj_points, points], axis=0).astype(points.dtype)
        data_dict[K.GT_NAMES] = np.concatenate([gt_names, sampled_names], axis=0)
        data_dict[K.GT_BOXES] = np.concatenate([gt_boxes, sampled_gt_boxes.astype(gt_boxes.dtype)], axis=0)
        data_dict["gt_boxes_mask"] = np.ones(data_dict[K.GT_BOXES].shape[0], dtype=bool)
        return data_dict

    def __call__(self, data_dict):
        """``data_dict`` holds ``points`` (N, C), ``gt_boxes`` (M, 7 + C), ``gt_names`` (M,), ``gt_boxes_mask``
        (M,) bool; returns it with sampled objects added (mask all True afterwards)."""
        gt_boxes = data_dict[K.GT_BOXES]
        gt_names = np.asarray(data_dict[K.GT_NAMES]).astype(str)
        existed_boxes = gt_boxes[:, 0:7].astype(np.float32)
        total_valid_sampled = []
        sampled_boxes_list = []
        for class_name, sample_group in self.sample_groups.items():
            if self.limit_whole_scene:
                num_gt = int(np.sum(gt_names == class_name))
                sample_group["sample_num"] = self.sample_class_num[class_name] - num_gt
            if sample_group["sample_num"] <= 0:
                continue
            sampled = self.sample_with_fixed_number(class_name, sample_group)
            if not sampled:
                continue
            sampled_boxes = np.stack([np.asarray(x["box3d_lidar"], dtype=np.float32) for x in sampled], axis=0)
            valid = self._collision_free(sampled_boxes[:, 0:7], existed_boxes)
            sampled_boxes = sampled_boxes[valid]
            total_valid_sampled.extend(sampled[i] for i in valid)
            sampled_boxes_list.append(sampled_boxes)
            existed_boxes = np.concatenate((existed_boxes, sampled_boxes[:, 0:7]), axis=0)

        if total_valid_sampled:
            sampled_gt_boxes = np.concatenate(sampled_boxes_list, axis=0)
            if sampled_gt_boxes.shape[1] != gt_boxes.shape[1]:
                raise ValueError(f"gt_sampling: database boxes have {sampled_gt_boxes.shape[1]} values, scene "
                                 f"{data_dict.get(K.FRAME_ID)} boxes have {gt_boxes.shape[1]}")
            data_dict = self.add_sampled_boxes_to_scene(data_dict, sampled_gt_boxes, total_valid_sampled)
        return data_dict

    @staticmethod
    def _collision_free(sampled_boxes, existed_boxes):
        """Indices of the sampled (S, 7) boxes that overlap neither an existing box nor another sampled box in
        bird's-eye view (rotated IoU)."""
        iou_sampled = np.array(iou3d_nms_utils.boxes_bev_iou_cpu(sampled_boxes, sampled_boxes), dtype=np.float64)
        iou_sampled[np.arange(sampled_boxes.shape[0]), np.arange(sampled_boxes.shape[0])] = 0
        overlap = iou_sampled.max(axis=1)
        if existed_boxes.shape[0] > 0:
            iou_existed = np.asarray(iou3d_nms_utils.boxes_bev_iou_cpu(sampled_boxes, existed_boxes))
            overlap = overlap + iou_existed.max(axis=1)
        return np.nonzero(overlap <= 0)[0]
