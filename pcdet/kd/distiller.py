"""The distiller (mmrazor's "distiller" role): student + distillation heads; the teacher is held outside.

``Distiller.forward`` in training returns ``({'loss'}, tb_dict, disp_dict)`` like a detector, with
loss = DET_LOSS_WEIGHT * det_loss + warm-up factor * sum of the heads' weighted kd_* terms; in eval it is the
student. ``KD.WARMUP`` (fraction of the total iterations, 0 = off) ramps the factor linearly from 0 to 1; the
schedule comes from ``set_schedule(total_iters)`` (tools/train.py calls it). ``KD.DIAGNOSTICS`` (see
``pcdet.kd.diagnostics``) logs, every ``GRAD_INTERVAL`` steps, the gradient norm that the detection loss and each
distillation term send to the student's parameters, and at every epoch end the teacher's and the student's
class-score statistics at GT centres and on the background of a fixed batch.
"""
import copy

import numpy as np
import torch
import torch.nn as nn

from ..batch_keys import KD_TEACHER_INPUTS, KD_TEACHER_PRED_DICTS
from ..config_schema import by_registry, check, opt, req
from ..models.model_utils.model_summary import format_param_table, module_param_counts
from ..utils.common_utils import autocast_off, to_float32
from . import diagnostics
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

    # the KD block; each head's block is checked by its class (KDHead.check_keys)
    CONFIG_SCHEMA = {
        "TEACHER": opt(dict, keys={"CFG_FILE": req(str), "CKPT": opt(str), "PRECISION": opt(str),
                                   "CHANNELS_LAST": opt(bool)}),
        "DET_LOSS_WEIGHT": opt(float), "WARMUP": opt(float), "INIT_FROM_TEACHER": opt(bool), "HEADS": req(list, items=by_registry(KD_HEADS, "KD head")),
        "DIAGNOSTICS": opt(dict, keys={"GRAD_INTERVAL": opt(int), "SCORE_STATS": opt(bool)}),
    }

    def __init__(self, student, teacher, kd_cfg, teacher_grid, student_grid, example_batch, logger=None):
        super().__init__()
        self.student = student
        self._teacher = teacher  # plain attribute: outside state_dict / parameters / DDP
        self.logger = logger
        check(kd_cfg, self.CONFIG_SCHEMA, "KD", "Distiller")
        self.det_loss_weight = float(kd_cfg.get("DET_LOSS_WEIGHT", 1.0))
        self.warmup = float(kd_cfg.get("WARMUP", 0.0))
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"KD.WARMUP must be a fraction of the total iterations in [0, 1], got {self.warmup}")
        self.total_iters = None
        self.teacher_grid, self.student_grid = teacher_grid, student_grid
        self.diag = diagnostics.DiagnosticsConfig.from_cfg(kd_cfg.get("DIAGNOSTICS", {}))
        self._diag_batch = None
        heads_cfg = kd_cfg.get("HEADS", [])
        if not heads_cfg:
            raise ValueError("KD.HEADS is empty: a KD config needs at least one distillation head, or "
                             "KD.INIT_FROM_TEACHER: True for teacher-guided initialisation alone")
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
        if self.diag.score_stats:
            self._diag_batch = example_batch
        self.kd_heads = nn.ModuleDict()
        for name, cls, hcfg, taps in plans:
            shapes = {role: ([t_shapes[t] for t in tl], [s_shapes[s] for s in sl]) for role, (tl, sl) in taps.items()}
            ctx = KDContext(taps=taps, shapes=shapes, teacher=teacher_grid, student=student_grid, logger=logger)
            self.kd_heads[name] = cls(hcfg, ctx)
            if hasattr(self.kd_heads[name], "bind_student"):   # heads that reuse the student's own head (LabelKD)
                self.kd_heads[name].bind_student(student)
        # heads that read the teacher's detections make its forward run through post-processing
        self.needs_teacher_predictions = any(getattr(h, "NEEDS_TEACHER_PREDICTIONS", False)
                                             for h in self.kd_heads.values())
        self.param_counts = {"teacher": module_param_counts(teacher.model), "student": module_param_counts(student)}
        self._log("KD: parameters per module\n" + format_param_table(self.param_counts))
        self._log(f"KD: DET_LOSS_WEIGHT {self.det_loss_weight}; WARMUP {self.warmup}; heads {list(self.kd_heads)}; "
                  f"teacher taps {self.teacher_taps}; student taps {self.student_taps}; distillation parameters "
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

    # ------------------------------------------------------------------ schedule and diagnostics
    def set_schedule(self, total_iters):
        """Total optimizer steps of the run (for ``KD.WARMUP``)."""
        if int(total_iters) <= 0:
            raise ValueError(f"Distiller.set_schedule: total_iters must be positive, got {total_iters}")
        self.total_iters = int(total_iters)
        if self.warmup > 0:
            self._log(f"KD: distillation weights ramp linearly from 0 over the first "
                      f"{self.warmup_iters()} of {self.total_iters} iterations (KD.WARMUP {self.warmup})")

    def warmup_iters(self):
        return int(round(self.warmup * self.total_iters)) if self.total_iters else 0

    def kd_scale(self, step=None):
        """Factor on every distillation term at ``step`` (default: the student's global_step): min(1, step / W)."""
        if self.warmup <= 0:
            return 1.0
        if self.total_iters is None:
            raise RuntimeError("KD.WARMUP > 0 needs the run's length: call Distiller.set_schedule(total_iters) "
                               "before training (tools/train.py does)")
        step = int(self.student.global_step.item()) if step is None else int(step)
        w = self.warmup_iters()
        return 1.0 if w <= 0 else min(1.0, step / w)

    def on_epoch_end(self, epoch, tb_log=None):
        """Class-score statistics of teacher and student on the fixed diagnostics batch (``KD.DIAGNOSTICS``)."""
        if self._diag_batch is None:
            return None
        from ..models import load_data_to_device
        device = next(self.student.buffers()).device  # the batch was built before the model moved (e.g. to CUDA)
        batch = load_data_to_device(copy.copy(self._diag_batch), device)  # nested kd_teacher_inputs too
        stats = diagnostics.score_stats(self, batch)
        if stats:
            self._log(f"KD diagnostics epoch {epoch}: " + diagnostics.format_score_stats(stats))
            if tb_log is not None:
                for side, values in stats.items():
                    for key, value in values.items():
                        tb_log.add_scalar(f"kd_diag/{side}_{key}", value, epoch)
        return stats

    def load_params_from_file(self, filename, logger, to_cpu=False):
        """Initialise the student from a plain or KD checkpoint (``--pretrained_model``); heads are untouched."""
        from .checkpoint import load_student_weights
        load_student_weights(self.student, filename, logger)

    def load_params_with_optimizer(self, filename, to_cpu=False, optimizer=None, logger=None):
        """Resume KD training (student + kd_heads + optimizer), strict. Returns (it, epoch)."""
        from .checkpoint import load_distiller_state
        return load_distiller_state(self, filename, optimizer, logger)

    # ------------------------------------------------------------------ forward
    def distillation_terms(self, batch_dict):
        """Teacher record, student training forward with its taps recorded, and every head's terms.

        Returns ``(ret_dict, tb_dict, disp_dict, terms, student_taps)``: the student's own outputs, ``terms``
        {kd_*: scalar} at full weight (no warm-up factor) and the recorded student tap values (in the graph).
        """
        teacher_batch, student_batch = self.split_batch(batch_dict)
        if self.needs_teacher_predictions:
            t_rec, teacher_batch[KD_TEACHER_PRED_DICTS] = self._teacher.record_and_predict(teacher_batch,
                                                                                           self.teacher_taps)
        else:
            t_rec = self._teacher.record(teacher_batch, self.teacher_taps)
        with RecorderManager(self.student, self.student_taps, detach=False, who="KD student") as rec:
            ret_dict, tb_dict, disp_dict = self.student(student_batch)
        s_raw = rec.records
        # distillation losses in float32 whatever the autocast of the step (mixed-precision taps are upcast)
        t_rec, s_rec = to_float32(t_rec), to_float32(s_raw)
        terms = {}
        for name, head in self.kd_heads.items():
            feats = {role: ([t_rec[t] for t in tl], [s_rec[s] for s in sl])
                     for role, (tl, sl) in self.head_taps[name].items()}
            with autocast_off(ret_dict["loss"]):
                terms.update(head(feats, student_batch, teacher_batch))
        return ret_dict, tb_dict, disp_dict, terms, s_raw

    def forward(self, batch_dict):
        if not self.training:
            return self.student(batch_dict)
        ret_dict, tb_dict, disp_dict, terms, s_raw = self.distillation_terms(batch_dict)
        det_loss = ret_dict["loss"]
        total = self.det_loss_weight * det_loss
        tb_dict = dict(tb_dict)
        tb_dict["det_loss"] = det_loss.item()
        step = int(self.student.global_step.item())
        scale = self.kd_scale(step)
        for term, value in terms.items():
            value = value * scale if scale != 1.0 else value
            total = total + value
            tb_dict[term] = value.item()
        for name, head in self.kd_heads.items():
            for key, value in getattr(head, "stats", {}).items():
                tb_dict[f"diag_{name}_{key}"] = float(value)
        if self.warmup > 0:
            tb_dict["diag_kd_scale"] = scale
        if self.diag.grad_interval and step % self.diag.grad_interval == 0:
            norms = diagnostics.grad_norms(self.student, self.det_loss_weight * det_loss, terms, taps=s_raw)
            tb_dict.update({f"diag_grad_{k}": v for k, v in norms.items() if not k.startswith("tap:")})
            self._log(f"KD grad norms at step {step}"
                      + (f" (KD terms at full weight; warm-up factor now {scale:.3g})" if self.warmup > 0 else "")
                      + ": " + diagnostics.format_grad_norms(norms))
        tb_dict["loss"] = total.item()
        ret = dict(ret_dict)
        ret["loss"] = total
        return ret, tb_dict, disp_dict
