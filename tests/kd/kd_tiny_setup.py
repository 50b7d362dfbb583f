"""Tiny CenterPoint-pillar teacher/student configs, an in-memory dataset and checkpoints for the KD tests."""
import copy
import logging

import numpy as np
import torch
import yaml
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.dataset import DatasetTemplate
from pcdet.models import build_network, load_data_to_device

CLASSES = ["Car", "Pedestrian", "Cyclist"]

DATA_CONFIG = {
    "DATASET": "TinyKDDataset",
    "DATA_PATH": ".",
    "POINT_CLOUD_RANGE": [0.0, -8.0, -3.0, 16.0, 8.0, 1.0],
    "POINT_FEATURE_ENCODING": {"encoding_type": "absolute_coordinates_encoding",
                               "used_feature_list": ["x", "y", "z", "intensity"],
                               "src_feature_list": ["x", "y", "z", "intensity"]},
    "DATA_PROCESSOR": [
        {"NAME": "mask_points_and_boxes_outside_range", "REMOVE_OUTSIDE_BOXES": True},
        {"NAME": "shuffle_points", "SHUFFLE_ENABLED": {"train": True, "test": False}},
        {"NAME": "transform_points_to_voxels", "VOXEL_SIZE": [0.5, 0.5, 4.0], "MAX_POINTS_PER_VOXEL": 4,
         "MAX_NUMBER_OF_VOXELS": {"train": 4000, "test": 4000}},
    ],
}

MODEL = {
    "NAME": "CenterPoint",
    "VFE": {"NAME": "PillarVFE", "WITH_DISTANCE": False, "USE_ABSLOTE_XYZ": True, "USE_NORM": True,
            "NUM_FILTERS": [16]},
    "MAP_TO_BEV": {"NAME": "PointPillarScatter", "NUM_BEV_FEATURES": 16},
    "BACKBONE_2D": {"NAME": "BaseBEVBackbone", "LAYER_NUMS": [1, 1], "LAYER_STRIDES": [1, 2],
                    "NUM_FILTERS": [16, 32], "UPSAMPLE_STRIDES": [1, 2], "NUM_UPSAMPLE_FILTERS": [16, 16]},
    "DENSE_HEAD": {
        "NAME": "CenterHead", "CLASS_AGNOSTIC": False,
        "CLASS_NAMES_EACH_HEAD": [["Car"], ["Pedestrian", "Cyclist"]],
        "SHARED_CONV_CHANNEL": 16, "USE_BIAS_BEFORE_NORM": True, "NUM_HM_CONV": 2,
        "SEPARATE_HEAD_CFG": {"HEAD_ORDER": ["center", "center_z", "dim", "rot"],
                              "HEAD_DICT": {"center": {"out_channels": 2, "num_conv": 2},
                                            "center_z": {"out_channels": 1, "num_conv": 2},
                                            "dim": {"out_channels": 3, "num_conv": 2},
                                            "rot": {"out_channels": 2, "num_conv": 2}}},
        "TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": 1, "NUM_MAX_OBJS": 50, "GAUSSIAN_OVERLAP": 0.1,
                                   "MIN_RADIUS": 2},
        "LOSS_CONFIG": {"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 2.0,
                                         "code_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]}},
        "POST_PROCESSING": {"SCORE_THRESH": 0.1, "POST_CENTER_LIMIT_RANGE": [-20, -20, -10.0, 20, 20, 10.0],
                            "MAX_OBJ_PER_SAMPLE": 50,
                            "NMS_CONFIG": {"NMS_TYPE": "nms_gpu", "NMS_THRESH": 0.7, "NMS_PRE_MAXSIZE": 200,
                                           "NMS_POST_MAXSIZE": 50}},
    },
    "POST_PROCESSING": {"RECALL_THRESH_LIST": [0.3, 0.5, 0.7], "EVAL_METRIC": "kitti"},
}

ITKD_HEAD = {"NAME": "ITKD", "TEACHER_TAP": "backbone_2d@spatial_features_2d",
             "STUDENT_TAP": "backbone_2d@spatial_features_2d",
             "AE": {"WEIGHT": 0.5, "ENCODER_WIDTHS": [16, 8]},
             "ATTN": {"ENABLED": True, "WEIGHT": 0.5, "TEACHER_TAP": "dense_head.heads_list.*",
                      "STUDENT_TAP": "dense_head.heads_list.*"}}


class TinyKDDataset(DatasetTemplate):
    """Deterministic random scenes (frame i seeded by i): ground clutter plus points inside 2-4 boxes."""

    def __init__(self, dataset_cfg, class_names, training=True, root_path=".", num_frames=4):
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=training, root_path=root_path)
        self.num_frames = num_frames

    def __len__(self):
        return self.num_frames

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        n_box = int(rng.integers(2, 5))
        boxes = np.zeros((n_box, 7), dtype=np.float32)
        boxes[:, 0] = rng.uniform(2, 14, n_box)
        boxes[:, 1] = rng.uniform(-6, 6, n_box)
        boxes[:, 2] = -1.0
        boxes[:, 3:6] = rng.uniform(0.8, 4.0, (n_box, 3))
        boxes[:, 6] = rng.uniform(-np.pi, np.pi, n_box)
        names = np.array([CLASSES[int(c)] for c in rng.integers(0, 3, n_box)])
        clutter = np.stack([rng.uniform(0, 16, 300), rng.uniform(-8, 8, 300), rng.uniform(-2.5, 0.5, 300),
                            rng.uniform(0, 1, 300)], axis=1)
        obj = [np.concatenate([b[:3] + rng.uniform(-0.4, 0.4, (40, 3)) * b[3:6], rng.uniform(0, 1, (40, 1))], 1)
               for b in boxes]
        points = np.concatenate([clutter] + obj).astype(np.float32)
        return self.prepare_data({"frame_id": f"{index:06d}", "points": points, "gt_boxes": boxes,
                                  "gt_names": names})


def write_configs(tmp_path, kd_heads=None, student_width=0.5, det_weight=1.0, teacher_data=None, student_data=None):
    """Write teacher.yaml and kd.yaml (student = _BASE_CONFIG_ teacher + WIDTH + KD block); return their paths."""
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    teacher = {"CLASS_NAMES": CLASSES, "DATA_CONFIG": teacher_data or DATA_CONFIG, "MODEL": MODEL}
    (cfg_dir / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    kd = {"_BASE_CONFIG_": "teacher.yaml", "MODEL": {"WIDTH": student_width},
          "KD": {"TEACHER": {"CFG_FILE": "teacher.yaml", "CKPT": str(tmp_path / "teacher.pth")},
                 "DET_LOSS_WEIGHT": det_weight, "HEADS": kd_heads or [copy.deepcopy(ITKD_HEAD)]}}
    if student_data is not None or teacher_data is not None:
        kd["DATA_CONFIG"] = student_data or DATA_CONFIG  # else the student inherits the teacher's grid
    (cfg_dir / "kd.yaml").write_text(yaml.safe_dump(kd))
    return cfg_dir / "teacher.yaml", cfg_dir / "kd.yaml"


def make_dataset(cfg, tmp_path, training=True):
    return TinyKDDataset(EasyDict(copy.deepcopy(cfg.DATA_CONFIG)), list(cfg.CLASS_NAMES), training=training,
                         root_path=tmp_path)


def save_teacher_ckpt(teacher_cfg_path, tmp_path, seed=0, epoch=7):
    """Build the teacher on its own dataset and save a randomly initialised but fixed checkpoint."""
    torch.manual_seed(seed)
    tcfg = cfg_from_yaml_file(teacher_cfg_path)
    model = build_network(tcfg.MODEL, len(tcfg.CLASS_NAMES), make_dataset(tcfg, tmp_path))
    path = tmp_path / "teacher.pth"
    torch.save({"model_state": model.state_dict(), "epoch": epoch, "it": 0, "version": "test"}, path)
    return path, model


def build_setup(tmp_path, batch_size=2, **cfg_kw):
    """Returns (cfg, kd_cfg_path, dataset, student, distiller, batch)."""
    from pcdet.kd import build_distiller
    teacher_path, kd_path = write_configs(tmp_path, **cfg_kw)
    save_teacher_ckpt(teacher_path, tmp_path)
    cfg = cfg_from_yaml_file(kd_path)
    dataset = make_dataset(cfg, tmp_path)
    torch.manual_seed(1)
    student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    student.train()
    distiller = build_distiller(cfg, student, dataset, logging.getLogger("kd_test"), cfg_file=kd_path)
    distiller.train()
    batch = make_batch(dataset, batch_size)
    return cfg, kd_path, dataset, student, distiller, batch


def make_batch(dataset, batch_size, start=0):
    return load_data_to_device(dataset.collate_batch([dataset[i] for i in range(start, start + batch_size)]))
