"""The frozen teacher: built from ``KD.TEACHER.CFG_FILE``, strictly loaded from ``KD.TEACHER.CKPT``.

The teacher is held by ``FrozenTeacher``, a plain object (not an ``nn.Module``), so it never appears in the
distiller's ``state_dict``, ``parameters()`` or DDP's module tree. It runs in eval mode under ``torch.no_grad``
and only as far as the deepest tapped module.
"""
import contextlib
from pathlib import Path

import numpy as np
import torch

from ..config import cfg_from_yaml_file
from ..model_zoo import verify_zoo_tag
from ..utils.common_utils import amp_dtype, to_channels_last
from .recorders import RecorderManager, get_submodule, parse_tap

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"


class TeacherError(RuntimeError):
    """The teacher cannot be built or loaded; the message names the config file, checkpoint and what is wrong."""


def resolve_teacher_cfg_file(cfg, cfg_file=None):
    """Path of ``cfg.KD.TEACHER.CFG_FILE``: absolute, or relative to the KD config's directory, then tools/.

    The KD config's directory is ``cfg_file`` if given, else ``cfg.CFG_FILE`` / ``cfg.EXP_GROUP_PATH`` (set by
    tools/train.py) when present.
    """
    rel = Path(str(cfg.KD.TEACHER.CFG_FILE))
    if rel.is_absolute():
        candidates = [rel]
    else:
        dirs = []
        own = cfg_file or cfg.get("CFG_FILE")
        if own:
            dirs.append(Path(own).resolve().parent)
        if cfg.get("EXP_GROUP_PATH"):
            dirs.append(TOOLS_DIR / "cfgs" / str(cfg.EXP_GROUP_PATH))
        dirs += [TOOLS_DIR, Path.cwd()]
        candidates = [d / rel for d in dirs]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise TeacherError(f"KD.TEACHER.CFG_FILE '{rel}' not found; looked at {[str(c) for c in candidates]}")


def load_teacher_cfg(cfg, cfg_file=None):
    """The teacher's full config (EasyDict with MODEL, CLASS_NAMES, DATA_CONFIG) and its path."""
    path = resolve_teacher_cfg_file(cfg, cfg_file)
    tcfg = cfg_from_yaml_file(path)
    for key in ("MODEL", "CLASS_NAMES", "DATA_CONFIG"):
        if key not in tcfg:
            raise TeacherError(f"teacher config {path} lacks '{key}'")
    if list(tcfg.CLASS_NAMES) != list(cfg.CLASS_NAMES):
        raise TeacherError(f"teacher config {path}: CLASS_NAMES {list(tcfg.CLASS_NAMES)} differ from the "
                           f"student's {list(cfg.CLASS_NAMES)}")
    return tcfg, path


class GeometryView:
    """A dataset seen through another grid: forwards every attribute to ``dataset`` except the grid ones."""

    def __init__(self, dataset, point_cloud_range, voxel_size, grid_size):
        self._dataset = dataset
        self.point_cloud_range = np.asarray(point_cloud_range, dtype=np.float32)
        self.voxel_size = list(voxel_size)
        self.grid_size = np.asarray(grid_size, dtype=np.int64)

    def __getattr__(self, name):
        return getattr(self.__dict__["_dataset"], name)


def stage_index(model, module_path):
    """Index in ``model.module_list`` of the stage that contains the submodule at ``module_path``."""
    target = get_submodule(model, module_path, type(model).__name__)
    for i, stage in enumerate(model.module_list):
        if any(m is target for m in stage.modules()):
            return i
    raise KeyError(f"{type(model).__name__}: '{module_path}' is not inside any stage of module_list")


def run_stages(model, batch_dict, last_stage):
    """Run ``model.module_list[0..last_stage]`` on ``batch_dict`` (OpenPCDet modules take and return it)."""
    for i, stage in enumerate(model.module_list):
        batch_dict = stage(batch_dict)
        if i >= last_stage:
            break
    return batch_dict


def record_truncated(model, batch_dict, taps, detach, who):
    """Forward ``model`` only as far as needed to record ``taps``; returns ``{tap: value}``.

    Stops after the deepest tapped stage of ``module_list`` and, within it, as soon as every tap has fired.
    """
    if not taps:
        return {}
    last = max(stage_index(model, parse_tap(t)[0]) for t in taps)
    with RecorderManager(model, taps, detach=detach, who=who, stop_when_done=True) as rec:
        run_stages(model, batch_dict, last)
    return rec.records


class FrozenTeacher:
    """Holds the teacher model outside any module tree; frozen, eval-only, no-grad.

    ``model`` is the detector; ``to(device)`` moves it; ``record(batch_dict, taps)`` runs it truncated.
    """

    def __init__(self, model, cfg_file=None, ckpt=None, precision=None):
        self.model = model
        self.cfg_file = cfg_file
        self.ckpt = ckpt
        self.precision = self._check_precision(precision)
        self.freeze()

    @staticmethod
    def _check_precision(precision):
        """None: the step's own autocast; 'fp32': autocast off; 'bf16' / 'fp16': the teacher under that autocast."""
        if precision is None or str(precision).lower() in ("none", "null", "auto"):
            return None
        if str(precision).lower() in ("fp32", "float32"):
            return "fp32"
        amp_dtype(precision, "KD.TEACHER.PRECISION")
        return str(precision).lower()

    def _autocast(self):
        if self.precision is None:
            return contextlib.nullcontext()
        device_type = self.device.type
        if self.precision == "fp32":
            return torch.autocast(device_type=device_type, enabled=False)
        return torch.autocast(device_type=device_type, dtype=amp_dtype(self.precision, "KD.TEACHER.PRECISION"))

    def freeze(self):
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    @property
    def device(self):
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device):
        self.model.to(device)
        return self

    def num_parameters(self):
        return sum(p.numel() for p in self.model.parameters())

    def record(self, batch_dict, taps):
        """Teacher features at ``taps`` for ``batch_dict`` (its own shallow copy), detached."""
        self.model.eval()  # re-asserted every call: nothing the student does can put the teacher's BN in train
        with torch.no_grad(), self._autocast():
            return record_truncated(self.model, batch_dict, taps, detach=True, who="KD teacher")

    def record_and_predict(self, batch_dict, taps):
        """One full teacher forward: ``(records, pred_dicts)``, the features at ``taps`` (detached) and the
        teacher's post-processed detections (its own score threshold and NMS), one dict per sample."""
        self.model.eval()
        with torch.no_grad(), self._autocast():
            with RecorderManager(self.model, taps, detach=True, who="KD teacher") as rec:
                pred_dicts, _ = self.model(batch_dict)
        return rec.records, pred_dicts


def build_teacher(teacher_cfg, cfg_path, ckpt, dataset_view, logger=None, precision=None, channels_last=False):
    """Build the teacher from its config and strictly load ``ckpt``; never returns a randomly initialised teacher.

    ``dataset_view``: the dataset (or a GeometryView of it with the teacher's grid).
    Raises TeacherError naming the config and checkpoint on a missing / unreadable / mismatched checkpoint.
    """
    from ..models import build_network
    from ..models.detectors.detector3d_template import (CheckpointMismatchError, CheckpointReadError,
                                                        read_checkpoint)

    if not ckpt:
        raise TeacherError(f"KD teacher ({cfg_path}): no checkpoint given (KD.TEACHER.CKPT or --teacher_ckpt); "
                           f"refusing to distil from a random teacher")
    model = build_network(teacher_cfg.MODEL, num_class=len(teacher_cfg.CLASS_NAMES), dataset=dataset_view)
    try:
        _, checkpoint = read_checkpoint(ckpt)
        verify_zoo_tag(checkpoint, teacher_cfg, cfg_path, getattr(dataset_view, "root_path", None), ckpt)
        model.load_params_from_file(ckpt, logger=logger, to_cpu=True)
    except (CheckpointReadError, CheckpointMismatchError) as exc:
        raise TeacherError(f"KD teacher: cannot load checkpoint {ckpt} into {teacher_cfg.MODEL.NAME} built from "
                           f"{cfg_path}:\n{exc}") from exc
    teacher = FrozenTeacher(model, cfg_path, ckpt, precision=precision)
    if channels_last:
        to_channels_last(model)
    if logger is not None:
        logger.info(f"KD teacher: {teacher_cfg.MODEL.NAME} from {cfg_path} (WIDTH "
                    f"{teacher_cfg.MODEL.get('WIDTH', 1.0)}), checkpoint {ckpt} (epoch "
                    f"{checkpoint.get('epoch', 'n/a')}), {teacher.num_parameters():,} parameters, frozen; precision "
                    f"{teacher.precision or 'as the training step'}{', channels_last' if channels_last else ''}")
    return teacher
