"""The distiller (mmrazor's "distiller" role): student + distillation heads; the teacher is held outside.

``Distiller.forward`` in training returns ``({'loss'}, tb_dict, disp_dict)`` like a detector, with
loss = DET_LOSS_WEIGHT * det_loss + sum of the heads' weighted kd_* terms; in eval it is the student.
"""
import numpy as np
import torch
import torch.nn as nn

from ..models.batch_keys import KD_TEACHER_INPUTS
from ..utils.common_utils import autocast_off, to_float32
from .distill_heads import KD_HEADS, GridInfo, KDContext
from .recorders import RecorderManager, expand_taps
from .teacher import record_truncated


def _shape_of(value):
    if torch.is_tensor(value):
        return tuple(value.shape)
    if isinstance(value, dict):
        return {k: tuple(v.shape) for k, v in value.items()}
    return tuple(value.features.shape)  # sparse tensor: its active rows


def grid_info(model, model_cfg, class_names):
    """GridInfo of a built detector (its dataset view carries the grid)."""
    ds = model.dataset
    return GridInfo(np.asarray(ds.point_cloud_range, dtype=np.float32), np.asarray(ds.voxel_size, dtype=np.float32),
                    list(class_names), model_cfg)


class Distiller(nn.Module):
    """Student + ``kd_heads`` (ModuleDict). ``teacher`` is a FrozenTeacher (not a submodule).

    Args:
        student: the student detector (trained).
        teacher: FrozenTeacher.
        kd_cfg: the ``KD`` config block (DET_LOSS_WEIGHT, HEADS: list of head blocks with NAME and taps).
        teacher_grid, student_grid: GridInfo of each network.
        example_batch: a collated batch on the student's device, used once for a dry forward that checks every
            tap fires and measures channel sizes.
    """

    def __init__(self, student, teacher, kd_cfg, teacher_grid, student_grid, example_batch, logger=None):
        super().__init__()
        self.student = student
        self._teacher = teacher  # plain attribute: outside state_dict / parameters / DDP
        self.logger = logger
        self.det_loss_weight = float(kd_cfg.get("DET_LOSS_WEIGHT", 1.0))
        heads_cfg = kd_cfg.get("HEADS", [])
        if not heads_cfg:
            raise ValueError("KD.HEADS is empty: a KD config needs at least one distillation head")
        self.head_taps = {}
        plans = []
        for i, hcfg in enumerate(heads_cfg):
            if "NAME" not in hcfg:
                raise KeyError(f"KD.HEADS[{i}] has no NAME (has {sorted(hcfg)})")
            cls = KD_HEADS.get(hcfg.NAME)
            name = str(hcfg.get("TAG", hcfg.NAME)).lower()
            if name in self.head_taps:
                raise ValueError(f"KD.HEADS[{i}]: head name '{name}' used twice; give one a TAG")
            taps = {}
            for role, (t_tap, s_tap) in cls.tap_requests(hcfg).items():
                t_list = expand_taps(teacher.model, [t_tap], "KD teacher")
                s_list = expand_taps(student, [s_tap], "KD student")
                if len(t_list) != len(s_list):
                    raise ValueError(f"KD.HEADS[{i}] {hcfg.NAME} '{role}': teacher tap '{t_tap}' expands to "
                                     f"{len(t_list)} modules, student tap '{s_tap}' to {len(s_list)}")
                taps[role] = (t_list, s_list)
            self.head_taps[name] = taps
            plans.append((name, cls, hcfg, taps))
        self.teacher_taps = sorted({t for taps in self.head_taps.values() for tl, _ in taps.values() for t in tl})
        self.student_taps = sorted({s for taps in self.head_taps.values() for _, sl in taps.values() for s in sl})
        t_shapes, s_shapes = self._dry_run(example_batch)
        self.kd_heads = nn.ModuleDict()
        for name, cls, hcfg, taps in plans:
            shapes = {role: ([t_shapes[t] for t in tl], [s_shapes[s] for s in sl]) for role, (tl, sl) in taps.items()}
            ctx = KDContext(taps=taps, shapes=shapes, teacher=teacher_grid, student=student_grid, logger=logger)
            self.kd_heads[name] = cls(hcfg, ctx)
        self._log(f"KD: DET_LOSS_WEIGHT {self.det_loss_weight}; heads {list(self.kd_heads)}; teacher taps "
                  f"{self.teacher_taps}; student taps {self.student_taps}; distillation parameters "
                  f"{sum(p.numel() for p in self.kd_heads.parameters()):,}")

    def _log(self, msg):
        if self.logger is not None:
            self.logger.info(msg)

    @property
    def teacher(self):
        return self._teacher

    # ------------------------------------------------------------------ batch handling
    @staticmethod
    def split_batch(batch_dict):
        """Shallow copies (teacher_batch, student_batch); the teacher's voxel keys come from kd_teacher_inputs."""
        student_batch = {k: v for k, v in batch_dict.items() if k != KD_TEACHER_INPUTS}
        teacher_batch = dict(student_batch)
        side = batch_dict.get(KD_TEACHER_INPUTS)
        if side is not None:
            if any(not torch.is_tensor(v) for v in side.values()):
                from ..models import load_data_to_device
                device = batch_dict["voxels"].device if torch.is_tensor(batch_dict.get("voxels")) else None
                side = load_data_to_device(dict(side), device)
            teacher_batch.update(side)
        return teacher_batch, student_batch

    def _dry_run(self, example_batch):
        teacher_batch, student_batch = self.split_batch(example_batch)
        t_rec = self._teacher.record(teacher_batch, self.teacher_taps)
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                s_rec = record_truncated(self.student, student_batch, self.student_taps, detach=True,
                                         who="KD student")
        finally:
            self.student.train(was_training)
        t_shapes = {t: _shape_of(v) for t, v in t_rec.items()}
        s_shapes = {s: _shape_of(v) for s, v in s_rec.items()}
        self._log(f"KD: teacher tap shapes {t_shapes}; student tap shapes {s_shapes}")
        return t_shapes, s_shapes

    # ------------------------------------------------------------------ nn.Module plumbing
    def train(self, mode=True):
        super().train(mode)
        self._teacher.model.eval()
        return self

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._teacher.model._apply(fn)
        return self

    def update_global_step(self):
        self.student.update_global_step()

    def load_params_from_file(self, filename, logger, to_cpu=False):
        """Initialise the student from a plain or KD checkpoint (``--pretrained_model``); heads are untouched."""
        from .checkpoint import load_student_weights
        load_student_weights(self.student, filename, logger)

    def load_params_with_optimizer(self, filename, to_cpu=False, optimizer=None, logger=None):
        """Resume KD training (student + kd_heads + optimizer), strict. Returns (it, epoch)."""
        from .checkpoint import load_distiller_state
        return load_distiller_state(self, filename, optimizer, logger)

    # ------------------------------------------------------------------ forward
    def forward(self, batch_dict):
        if not self.training:
            return self.student(batch_dict)
        teacher_batch, student_batch = self.split_batch(batch_dict)
        t_rec = self._teacher.record(teacher_batch, self.teacher_taps)
        with RecorderManager(self.student, self.student_taps, detach=False, who="KD student") as rec:
            ret_dict, tb_dict, disp_dict = self.student(student_batch)
        s_rec = rec.records
        det_loss = ret_dict["loss"]
        total = self.det_loss_weight * det_loss
        tb_dict = dict(tb_dict)
        tb_dict["det_loss"] = det_loss.item()
        # distillation losses in float32 whatever the autocast of the step (mixed-precision taps are upcast)
        t_rec, s_rec = to_float32(t_rec), to_float32(s_rec)
        for name, head in self.kd_heads.items():
            feats = {role: ([t_rec[t] for t in tl], [s_rec[s] for s in sl])
                     for role, (tl, sl) in self.head_taps[name].items()}
            with autocast_off(det_loss):
                terms = head(feats, student_batch, teacher_batch)
            for term, value in terms.items():
                total = total + value
                tb_dict[term] = value.item()
        tb_dict["loss"] = total.item()
        ret = dict(ret_dict)
        ret["loss"] = total
        return ret, tb_dict, disp_dict
