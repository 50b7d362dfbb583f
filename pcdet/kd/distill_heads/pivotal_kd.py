"""Pivotal-position logit KD (SparseKD, Yang et al., NeurIPS 2022): the dense head's class scores (and optionally
its box regression) distilled only at the teacher's most confident positions of each sample."""
import torch

from ..losses import bernoulli_kd, heatmap_kd
from .base import KD_HEADS, KDHead, box_centre_cells, check_same_shapes, map_stride
from .logit_kd import _as_map
from ...config_schema import opt, req

LOSS_TYPES = ("kl", "mse", "focal")
BOX_LOSSES = ("l1", "smooth_l1")


def pivotal_mask(confidence, topk, extra=None):
    """(B, P) bool: the ``topk`` most confident positions of each sample (ties: lower index), or'ed with ``extra``.

    Args:
        confidence: (B, P) teacher confidence per position.
        extra: optional (B, P) bool positions always kept (e.g. the GT centres).
    """
    b, p = confidence.shape
    mask = torch.zeros(b, p, dtype=torch.bool, device=confidence.device)
    k = min(int(topk), p)
    if k > 0:
        # stable: sort by descending confidence, ties by ascending index
        order = torch.sort(confidence.float(), dim=1, descending=True, stable=True).indices[:, :k]
        mask.scatter_(1, order, True)
    if extra is not None:
        mask |= extra
    return mask


@KD_HEADS.register(name="PivotalLogitKD")
class PivotalLogitKDHead(KDHead):
    """Config: TEACHER_TAP / STUDENT_TAP (class logits: 'dense_head.conv_cls' for anchor heads, laid out
    (B, A * num_classes, H, W) as OpenPCDet's; 'dense_head.heads_list.*@hm' for CenterPoint), TYPE ('anchor' |
    'heatmap'), TOPK (positions per sample and tap: anchors for 'anchor', cells for 'heatmap'; the teacher's
    confidence is its max sigmoid score over classes), GT_CENTRES (also every position at the cell of a GT box
    centre; default False), LOSS_TYPE ('kl' with TEMPERATURE, default for anchors; 'mse'; 'focal': the quality-focal
    form with GAMMA, default for heatmaps), LOSS_WEIGHT, and optionally BOX: {TEACHER_TAP, STUDENT_TAP, LOSS_WEIGHT,
    LOSS_TYPE 'l1' | 'smooth_l1', KEYS (heatmap: the head outputs concatenated, default center, center_z, dim,
    rot)}: box regression distilled at the same positions. Terms: kd_<tag> (and kd_<tag>_box). Statistic:
    ``stats['positions']``, the mean number of distilled positions per sample and tap.
    """
    CONFIG_SCHEMA = {"TEACHER_TAP": req(str, list), "STUDENT_TAP": req(str, list), "TYPE": req(str),
                     "TOPK": req(int), "LOSS_WEIGHT": req(float), "GT_CENTRES": opt(bool), "LOSS_TYPE": opt(str),
                     "TEMPERATURE": opt(float), "GAMMA": opt(float),
                     "BOX": opt(dict, keys={"TEACHER_TAP": req(str, list), "STUDENT_TAP": req(str, list),
                                              "LOSS_WEIGHT": req(float), "LOSS_TYPE": opt(str),
                                              "KEYS": opt(list)})}

    @staticmethod
    def tap_requests(cfg):
        who = "PivotalLogitKD"
        taps = {"logits": (KDHead.require(cfg, "TEACHER_TAP", who), KDHead.require(cfg, "STUDENT_TAP", who))}
        if cfg.get("BOX"):
            taps["boxes"] = (KDHead.require(cfg.BOX, "TEACHER_TAP", who + ".BOX"),
                             KDHead.require(cfg.BOX, "STUDENT_TAP", who + ".BOX"))
        return taps

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        who = "PivotalLogitKD"
        self.kind = str(cfg.TYPE)
        if self.kind not in ("anchor", "heatmap"):
            raise ValueError(f"{who}: TYPE must be 'anchor' or 'heatmap', got '{self.kind}'")
        self.topk = int(cfg.TOPK)
        if self.topk < 0:
            raise ValueError(f"{who}: TOPK must be >= 0, got {self.topk}")
        self.gt_centres = bool(cfg.get("GT_CENTRES", False))
        if self.topk == 0 and not self.gt_centres:
            raise ValueError(f"{who}: TOPK 0 without GT_CENTRES distils nothing")
        self.loss_weight = float(cfg.LOSS_WEIGHT)
        self.loss_type = str(cfg.get("LOSS_TYPE", "kl" if self.kind == "anchor" else "focal"))
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"{who}: LOSS_TYPE must be one of {LOSS_TYPES}, got '{self.loss_type}'")
        if "TEMPERATURE" in cfg and self.loss_type != "kl":
            raise ValueError(f"{who}: TEMPERATURE applies to LOSS_TYPE 'kl' only")
        if "GAMMA" in cfg and self.loss_type != "focal":
            raise ValueError(f"{who}: GAMMA applies to LOSS_TYPE 'focal' only")
        self.temperature = float(cfg.get("TEMPERATURE", 1.0))
        self.gamma = float(cfg.get("GAMMA", 2.0))
        self.num_classes = len(ctx.student.class_names)
        self.grid = ctx.student
        t_shapes, s_shapes = ctx.shapes["logits"]
        check_same_shapes(t_shapes, s_shapes, who, "class logits")
        for shape in s_shapes:
            shape = shape.get("hm") if isinstance(shape, dict) else shape
            if self.kind == "anchor" and (len(shape) != 4 or shape[1] % self.num_classes):
                raise ValueError(f"{who}: anchor class logits must be (B, A * {self.num_classes}, H, W), got {shape}")
        self.box = cfg.get("BOX") or None
        if self.box:
            self.box_weight = float(self.box.LOSS_WEIGHT)
            self.box_loss = str(self.box.get("LOSS_TYPE", "l1"))
            if self.box_loss not in BOX_LOSSES:
                raise ValueError(f"{who}: BOX.LOSS_TYPE must be one of {BOX_LOSSES}, got '{self.box_loss}'")
            self.box_keys = list(self.box.get("KEYS", ["center", "center_z", "dim", "rot"]))
            bt, bs = ctx.shapes["boxes"]
            check_same_shapes(bt, bs, who, "box maps")
            if len(bs) != len(s_shapes):
                raise ValueError(f"{who}: {len(s_shapes)} class taps but {len(bs)} BOX taps (one per head)")
        self.stats = {}

    def _positions(self, t_logits, batch_dict):
        """(B, A, H, W) bool mask of the distilled positions (A = 1 for heatmaps) and the logits as
        (B, A, K, H, W)."""
        b, c, h, w = t_logits.shape
        a = c // self.num_classes if self.kind == "anchor" else 1
        view = t_logits.view(b, a, c // a, h, w)
        conf = torch.sigmoid(view.detach().float()).amax(dim=2)  # (B, A, H, W)
        extra = None
        if self.gt_centres:
            gt = batch_dict.get("gt_boxes")
            if gt is None:
                raise KeyError("PivotalLogitKD: GT_CENTRES needs batch key 'gt_boxes'")
            stride = map_stride(self.grid, w, "PivotalLogitKD")
            keep, iy, ix = box_centre_cells(gt, self.grid, stride, h, w)
            cells = torch.zeros(b, h, w, dtype=torch.bool, device=t_logits.device)
            bi, mi = torch.nonzero(keep, as_tuple=True)
            cells[bi, iy[bi, mi], ix[bi, mi]] = True
            extra = cells[:, None].expand(b, a, h, w).reshape(b, -1)
        mask = pivotal_mask(conf.reshape(b, -1), self.topk, extra).view(b, a, h, w)
        return mask, view

    def _box_map(self, value, who):
        if self.kind == "heatmap":
            if not isinstance(value, dict):
                raise ValueError(f"{who}: heatmap BOX taps must be head output dicts (tap 'dense_head.heads_list.*')")
            missing = [k for k in self.box_keys if k not in value]
            if missing:
                raise KeyError(f"{who}: head output has no {missing} (has {sorted(value)})")
            return torch.cat([value[k] for k in self.box_keys], dim=1)
        if not torch.is_tensor(value) or value.dim() != 4:
            raise ValueError(f"{who}: expected (B, A * D, H, W) box maps, got {getattr(value, 'shape', type(value))}")
        return value

    def forward(self, feats, batch_dict, teacher_batch=None):
        cls_losses, box_losses, counts = [], [], []
        box_pairs = list(zip(*feats["boxes"])) if self.box else [None] * len(feats["logits"][0])
        for i, ((v_t, v_s), boxes) in enumerate(zip(zip(*feats["logits"]), box_pairs)):
            t = _as_map(v_t, "hm", f"PivotalLogitKD teacher tap {i}")
            s = _as_map(v_s, "hm", f"PivotalLogitKD student tap {i}")
            mask, t_view = self._positions(t, batch_dict)
            b, a, k, h, w = t_view.shape
            s_view = s.view(b, a, k, h, w)
            # (P, K) logits at the kept positions
            t_sel = t_view.permute(0, 1, 3, 4, 2)[mask]
            s_sel = s_view.permute(0, 1, 3, 4, 2)[mask]
            counts.append(mask.sum().item() / b)
            if t_sel.shape[0] == 0:
                cls_losses.append(s.sum() * 0.0)
            elif self.loss_type == "focal":
                cls_losses.append(heatmap_kd(s_sel, t_sel.detach(), "focal", self.gamma))
            else:
                cls_losses.append(bernoulli_kd(s_sel, t_sel.detach(), self.temperature, self.loss_type))
            if boxes is not None:
                bt = self._box_map(boxes[0], f"PivotalLogitKD teacher BOX tap {i}")
                bs = self._box_map(boxes[1], f"PivotalLogitKD student BOX tap {i}")
                d = bt.shape[1] // a
                bt_sel = bt.view(b, a, d, h, w).permute(0, 1, 3, 4, 2)[mask].detach()
                bs_sel = bs.view(b, a, d, h, w).permute(0, 1, 3, 4, 2)[mask]
                if bs_sel.shape[0] == 0:
                    box_losses.append(bs.sum() * 0.0)
                elif self.box_loss == "l1":
                    box_losses.append((bs_sel - bt_sel).abs().mean())
                else:
                    box_losses.append(torch.nn.functional.smooth_l1_loss(bs_sel, bt_sel, beta=1.0 / 9.0))
        self.stats = {"positions": sum(counts) / max(len(counts), 1)}
        out = {f"kd_{self.name}": self.loss_weight * torch.stack(cls_losses).mean()}
        if self.box:
            out[f"kd_{self.name}_box"] = self.box_weight * torch.stack(box_losses).mean()
        return out
