"""Knowledge distillation for pcdet detectors.

``build_distiller(cfg, student, dataset, logger, teacher_ckpt=None)`` wraps a student according to ``cfg.KD``;
``load_student_weights(model, ckpt_path, logger)`` loads a plain or KD training checkpoint into a plain student;
``export_student_state(state_or_distiller)`` returns the bare student ``model_state``.
"""
from .distiller import Distiller
from .checkpoint import (KD_HEADS_PREFIX, STUDENT_PREFIX, StudentCheckpointError, export_student_checkpoint,
                         export_student_state, load_student_weights, save_student_checkpoint)
from .builder import build_distiller

__all__ = ["Distiller", "build_distiller", "load_student_weights", "export_student_state", "save_student_checkpoint",
           "export_student_checkpoint", "StudentCheckpointError", "STUDENT_PREFIX", "KD_HEADS_PREFIX"]
