"""Official KITTI object evaluation (numba CPU port of the devkit's evaluate_object.cpp protocol)."""
from .eval import evaluate_self_check, get_official_eval_result
from .kitti_common import get_label_anno, get_label_annos

__all__ = ["evaluate_self_check", "get_official_eval_result", "get_label_anno", "get_label_annos"]
