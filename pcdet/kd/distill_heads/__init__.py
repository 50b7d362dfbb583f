"""Distillation heads, registered by config NAME in ``KD_HEADS``."""
from .base import KD_HEADS, GridInfo, KDContext, KDHead
from . import fitnet, itkd, label_kd, logit_kd, pivotal_kd, point_distiller  # noqa: F401  (registration)

__all__ = ["KD_HEADS", "GridInfo", "KDContext", "KDHead"]
