"""``build_distiller``: teacher config -> dataset side processor -> frozen teacher -> dry run -> Distiller."""
import contextlib
import copy
import random

import numpy as np
import torch

from ..batch_keys import KD_TEACHER_INPUTS
from ..config_schema import check
from .distiller import Distiller, grid_info
from .kd_dataset import prepare_kd_dataset
from .teacher import build_teacher, load_teacher_cfg


def _model_device(model):
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def dataset_state_kept(dataset):
    """Read frames of ``dataset`` without changing what training later draws from it.

    A frame read in the main process advances the python / numpy / torch random streams and stateful
    augmentors (the GT-database sampler's pointers), which DataLoader workers inherit; restoring them keeps a
    distillation run's data identical to the student-alone run of the same seed (the benchmark's pairing).
    """
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    augmentor = getattr(dataset, "data_augmentor", None)
    saved = copy.deepcopy(augmentor) if augmentor is not None else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if augmentor is not None:
            dataset.data_augmentor = saved


def build_distiller(cfg, student, dataset, logger=None, teacher_ckpt=None, example_batch=None, cfg_file=None):
    """Wrap ``student`` for distillation according to ``cfg.KD``.

    Args:
        cfg: the full KD config (student MODEL, CLASS_NAMES, DATA_CONFIG and the KD block).
        student: the student detector, already built on ``dataset``.
        dataset: the training DatasetTemplate; a teacher side processor is registered on it when the grids differ.
        teacher_ckpt: overrides KD.TEACHER.CKPT.
        example_batch: a collated batch for the dry forward; default ``collate_batch([dataset[0]])``.
        cfg_file: path of the KD config (to resolve KD.TEACHER.CFG_FILE); default cfg.CFG_FILE if set.
    Returns:
        Distiller on the student's device; with ``KD.HEADS: []`` and ``KD.INIT_FROM_TEACHER: True`` (teacher-guided
        initialisation alone) the student itself, initialised from the teacher, which is then released.
    """
    if "KD" not in cfg:
        raise KeyError("build_distiller: the config has no KD block")
    check(cfg.KD, Distiller.CONFIG_SCHEMA, "KD", "Distiller")   # before the teacher is built
    teacher_cfg, teacher_cfg_path = load_teacher_cfg(cfg, cfg_file)
    teacher_view = prepare_kd_dataset(cfg, dataset, logger, teacher_cfg=teacher_cfg)
    ckpt = teacher_ckpt or cfg.KD.TEACHER.get("CKPT")
    teacher = build_teacher(teacher_cfg, teacher_cfg_path, ckpt, teacher_view, logger,
                            precision=cfg.KD.TEACHER.get("PRECISION"),
                            channels_last=bool(cfg.KD.TEACHER.get("CHANNELS_LAST", False)))
    if cfg.KD.get("INIT_FROM_TEACHER", False):
        # SparseKD's teacher-guided initialisation: the student starts from the teacher's strongest channels
        from .inherit import inherit_from_teacher
        inherit_from_teacher(student, teacher.model, logger)
        if not cfg.KD.HEADS:
            getattr(dataset, "side_processors", {}).pop(KD_TEACHER_INPUTS, None)   # no teacher inputs from now on
            if logger is not None:
                logger.info("KD.HEADS is empty: teacher-guided initialisation only; the student trains alone from here")
            return student
    device = _model_device(student)
    teacher.to(device)
    if example_batch is None:
        from ..models import load_data_to_device
        with dataset_state_kept(dataset):
            example_batch = load_data_to_device(dataset.collate_batch([dataset[0]]), device)
    return Distiller(student, teacher, cfg.KD, grid_info(teacher.model, teacher_cfg.MODEL, teacher_cfg.CLASS_NAMES),
                     grid_info(student, cfg.MODEL, cfg.CLASS_NAMES), example_batch, logger)
