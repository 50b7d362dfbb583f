"""Training-time augmentation queue (``DATA_AUGMENTOR`` of the dataset config).

``AUG_CONFIG_LIST`` entries are run in order, each selected by ``NAME``; names in ``DISABLE_AUG_LIST`` are
skipped. Randomness comes from numpy's global RNG, seeded per dataloader worker by
``common_utils.worker_init_fn`` (seed + worker id + 1000 * rank), so runs with ``--fix_random_seed`` repeat.
"""
from functools import partial

import numpy as np

from ... import batch_keys as K
from ...config_schema import ignored, opt, req
from ...utils import common_utils
from . import augmentor_utils


class DataAugmentor:
    """Holds the augmentation callables; ``forward(data_dict)`` runs them.

    ``data_dict`` holds ``points`` (N, C), ``gt_boxes`` (M, 7 + C) LiDAR boxes, ``gt_names`` (M,) and
    ``gt_boxes_mask`` (M,) bool marking the boxes of the used classes. Boxes outside the mask take part in the
    gt-sampling collision check and are removed at the end.
    """

    # the keys of each augmentation's block of DATA_AUGMENTOR.AUG_CONFIG_LIST (besides NAME)
    STEP_SCHEMAS = {
        "gt_sampling": {
            "DB_INFO_PATH": req(list), "SAMPLE_GROUPS": req(list), "NUM_POINT_FEATURES": req(int),
            "PREPARE": opt(dict, keys={"filter_by_min_points": opt(list), "filter_by_difficulty": opt(list)}),
            "DATABASE_WITH_FAKELIDAR": opt(bool), "REMOVE_EXTRA_WIDTH": opt(list), "LIMIT_WHOLE_SCENE": opt(bool),
            "USE_ROAD_PLANE": opt(bool),
            "DB_DATA_PATH": ignored("the database points are read from the paths in DB_INFO_PATH's infos"),
            "BACKUP_DB_INFO": ignored("no shared-memory database")},
        "random_world_flip": {"ALONG_AXIS_LIST": req(list)},
        "random_world_rotation": {"WORLD_ROT_ANGLE": req(list, float)},
        "random_world_scaling": {"WORLD_SCALE_RANGE": req(list)},
        "random_world_translation": {"NOISE_TRANSLATE_STD": req(list, float)},
    }
    AUGMENTATIONS = tuple(STEP_SCHEMAS)

    def __init__(self, root_path, augmentor_configs, class_names, logger=None):
        self.root_path = root_path
        self.class_names = class_names
        self.logger = logger
        self.data_augmentor_queue = []
        if isinstance(augmentor_configs, (list, tuple)):
            aug_config_list, disabled = augmentor_configs, []
        else:
            aug_config_list = augmentor_configs.get("AUG_CONFIG_LIST", [])
            disabled = augmentor_configs.get("DISABLE_AUG_LIST", []) or []
        for cur_cfg in aug_config_list:
            if cur_cfg.NAME in disabled:
                continue
            if cur_cfg.NAME not in self.AUGMENTATIONS:
                raise ValueError(f"DATA_AUGMENTOR.AUG_CONFIG_LIST: unknown NAME '{cur_cfg.NAME}' "
                                 f"(known: {self.AUGMENTATIONS})")
            self.data_augmentor_queue.append(getattr(self, cur_cfg.NAME)(config=cur_cfg))

    def __getstate__(self):
        d = dict(self.__dict__)
        d["logger"] = None
        return d

    def gt_sampling(self, config):
        from .database_sampler import DataBaseSampler

        return DataBaseSampler(root_path=self.root_path, sampler_cfg=config, class_names=self.class_names,
                               logger=self.logger)

    def random_world_flip(self, config):
        axes = list(config.ALONG_AXIS_LIST)
        unknown = [a for a in axes if a not in ("x", "y")]
        if unknown:
            raise ValueError(f"random_world_flip.ALONG_AXIS_LIST: unknown axes {unknown} (use 'x', 'y')")
        return partial(self._world_flip, axes=axes)

    @staticmethod
    def _world_flip(data_dict, axes):
        gt_boxes, points = data_dict[K.GT_BOXES], data_dict[K.POINTS]
        for axis in axes:
            func = augmentor_utils.random_flip_along_x if axis == "x" else augmentor_utils.random_flip_along_y
            gt_boxes, points, _ = func(gt_boxes, points)
        data_dict[K.GT_BOXES], data_dict[K.POINTS] = gt_boxes, points
        return data_dict

    def random_world_rotation(self, config):
        rot_range = config.WORLD_ROT_ANGLE
        if not isinstance(rot_range, (list, tuple)):
            rot_range = [-rot_range, rot_range]
        return partial(self._world_rotation, rot_range=list(rot_range))

    @staticmethod
    def _world_rotation(data_dict, rot_range):
        gt_boxes, points, _ = augmentor_utils.global_rotation(data_dict[K.GT_BOXES], data_dict[K.POINTS], rot_range)
        data_dict[K.GT_BOXES], data_dict[K.POINTS] = gt_boxes, points
        return data_dict

    def random_world_scaling(self, config):
        return partial(self._world_scaling, scale_range=list(config.WORLD_SCALE_RANGE))

    @staticmethod
    def _world_scaling(data_dict, scale_range):
        gt_boxes, points, _ = augmentor_utils.global_scaling(data_dict[K.GT_BOXES], data_dict[K.POINTS], scale_range)
        data_dict[K.GT_BOXES], data_dict[K.POINTS] = gt_boxes, points
        return data_dict

    def random_world_translation(self, config):
        std = config.NOISE_TRANSLATE_STD
        std = [float(std)] * 3 if not isinstance(std, (list, tuple)) else [float(v) for v in std]
        if len(std) != 3 or min(std) < 0:
            raise ValueError(f"random_world_translation.NOISE_TRANSLATE_STD: expected 3 non-negative stds (x, y, z) "
                             f"or one, got {config.NOISE_TRANSLATE_STD}")
        return partial(self._world_translation, std=np.asarray(std, dtype=np.float32))

    @staticmethod
    def _world_translation(data_dict, std):
        """Shift the scene (points and boxes) by one offset drawn from N(0, std) per axis."""
        offset = np.random.normal(0.0, std).astype(np.float32)
        data_dict[K.POINTS][:, :3] += offset
        data_dict[K.GT_BOXES][:, :3] += offset
        return data_dict

    def forward(self, data_dict):
        """Run the queue; wrap headings into [-pi, pi); keep only the boxes in ``gt_boxes_mask``."""
        for cur_augmentor in self.data_augmentor_queue:
            data_dict = cur_augmentor(data_dict)
        gt_boxes = data_dict[K.GT_BOXES]
        gt_boxes[:, 6] = common_utils.limit_period(gt_boxes[:, 6].astype(np.float32), offset=0.5, period=2 * np.pi)
        data_dict.pop("road_plane", None)
        if "gt_boxes_mask" in data_dict:
            mask = data_dict.pop("gt_boxes_mask")
            data_dict[K.GT_BOXES] = gt_boxes[mask]
            data_dict[K.GT_NAMES] = data_dict[K.GT_NAMES][mask]
        return data_dict
