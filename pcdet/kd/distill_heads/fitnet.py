"""FitNet baseline: 1x1 adapter C_S -> C_T on a BEV map, MSE, optionally foreground-masked."""
from ..adapters import conv1x1, resample_to
from ..losses import masked_mse
from .base import KD_HEADS, KDHead, bev_box_mask, channels_of, map_stride
from ...config_schema import opt, req


@KD_HEADS.register(name="FitNet")
class FitNetHead(KDHead):
    """Config: TEACHER_TAP / STUDENT_TAP ((B, C, H, W) maps), LOSS_WEIGHT, FG_MASK. Term: kd_fitnet."""
    CONFIG_SCHEMA = {"TEACHER_TAP": req(str, list), "STUDENT_TAP": req(str, list), "LOSS_WEIGHT": req(float),
                     "FG_MASK": opt(bool)}

    @staticmethod
    def tap_requests(cfg):
        return {"map": (KDHead.require(cfg, "TEACHER_TAP", "FitNet"), KDHead.require(cfg, "STUDENT_TAP", "FitNet"))}

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        t_shape, s_shape = ctx.shapes["map"][0][0], ctx.shapes["map"][1][0]
        if len(t_shape) != 4 or len(s_shape) != 4:
            raise ValueError(f"FitNet: taps must be (B, C, H, W) maps, got {t_shape} / {s_shape}")
        self.adapter = conv1x1(channels_of(s_shape, "FitNet student"), channels_of(t_shape, "FitNet teacher"))
        self.loss_weight = float(self.require(cfg, "LOSS_WEIGHT", "FitNet"))
        self.fg_mask = bool(cfg.get("FG_MASK", False))
        self.teacher_grid = ctx.teacher
        if tuple(s_shape[-2:]) != tuple(t_shape[-2:]):
            ctx.log(f"FitNet: student map {tuple(s_shape[-2:])} resampled to the teacher grid {tuple(t_shape[-2:])}")

    def forward(self, feats, batch_dict, teacher_batch=None):
        f_t, f_s = feats["map"][0][0], feats["map"][1][0]
        pred = self.adapter(resample_to(f_s, f_t.shape[-2:]))
        weight = None
        if self.fg_mask:
            if "gt_boxes" not in batch_dict:
                raise KeyError("FitNet: FG_MASK needs batch key 'gt_boxes'")
            stride = map_stride(self.teacher_grid, f_t.shape[-1], "FitNet teacher map")
            weight = bev_box_mask(batch_dict["gt_boxes"], self.teacher_grid, stride, *f_t.shape[-2:])
        return {f"kd_{self.name}": self.loss_weight * masked_mse(pred, f_t, weight)}
