"""Logit KD baselines: sigmoid soft targets for anchor heads, heatmap distillation for center heads."""
import torch

from ..losses import bernoulli_kd, heatmap_kd
from .base import KD_HEADS, KDHead, check_same_shapes
from ...config_schema import opt, req


def _as_map(value, key, who):
    if isinstance(value, dict):
        if key not in value:
            raise KeyError(f"{who}: head output has no '{key}' (has {sorted(value)})")
        value = value[key]
    if not torch.is_tensor(value) or value.dim() != 4:
        raise ValueError(f"{who}: expected (B, C, H, W) logits, got {getattr(value, 'shape', type(value))}")
    return value


@KD_HEADS.register(name="LogitKD")
class LogitKDHead(KDHead):
    """Config: TEACHER_TAP / STUDENT_TAP (e.g. 'dense_head.conv_cls' or 'dense_head.heads_list.*@hm'), TYPE
    ('anchor': sigmoid soft targets with TEMPERATURE and LOSS_TYPE kl|bce|mse; 'heatmap': teacher sigmoid heatmap
    target with LOSS_TYPE focal|mse and GAMMA), LOSS_WEIGHT. Averaged over the taps (task groups). Term: kd_logitkd.
    """
    CONFIG_SCHEMA = {"TEACHER_TAP": req(str, list), "STUDENT_TAP": req(str, list), "TYPE": req(str),
                     "LOSS_WEIGHT": req(float), "LOSS_TYPE": opt(str), "TEMPERATURE": opt(float), "GAMMA": opt(float)}

    @staticmethod
    def tap_requests(cfg):
        return {"logits": (KDHead.require(cfg, "TEACHER_TAP", "LogitKD"),
                           KDHead.require(cfg, "STUDENT_TAP", "LogitKD"))}

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.kind = str(self.require(cfg, "TYPE", "LogitKD"))
        if self.kind not in ("anchor", "heatmap"):
            raise ValueError(f"LogitKD: TYPE must be 'anchor' or 'heatmap', got '{self.kind}'")
        self.loss_weight = float(self.require(cfg, "LOSS_WEIGHT", "LogitKD"))
        self.loss_type = str(cfg.get("LOSS_TYPE", "kl" if self.kind == "anchor" else "focal"))
        self.temperature = float(cfg.get("TEMPERATURE", 1.0))
        self.gamma = float(cfg.get("GAMMA", 2.0))
        if self.kind == "heatmap" and "TEMPERATURE" in cfg:
            raise ValueError("LogitKD: TEMPERATURE applies to TYPE 'anchor' only")
        if self.kind == "anchor" and "GAMMA" in cfg:
            raise ValueError("LogitKD: GAMMA applies to TYPE 'heatmap' only")
        check_same_shapes(*ctx.shapes["logits"], "LogitKD")

    def forward(self, feats, batch_dict, teacher_batch=None):
        losses = []
        for i, (v_t, v_s) in enumerate(zip(*feats["logits"])):
            t = _as_map(v_t, "hm", f"LogitKD teacher tap {i}")
            s = _as_map(v_s, "hm", f"LogitKD student tap {i}")
            if self.kind == "anchor":
                losses.append(bernoulli_kd(s, t, self.temperature, self.loss_type))
            else:
                losses.append(heatmap_kd(s, t, self.loss_type, self.gamma))
        return {f"kd_{self.name}": self.loss_weight * torch.stack(losses).mean()}
