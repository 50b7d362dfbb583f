"""itKD (Cho et al., CVPR 2023): interchange-transfer autoencoder + head relation-aware attention loss."""
import torch
import torch.nn as nn

from ..adapters import ConvStack, FusionLinear, conv1x1, resample_to
from ..losses import head_relation_inputs, masked_l1, relation_attention_loss
from ..losses.feature import zero_like_graph
from .base import KD_HEADS, KDHead, bev_box_mask, box_centre_cells, box_centre_pixels, channels_of, map_stride
from ...config_schema import opt, req


def center_head_groups(model_cfg, class_names, who):
    """Per task group of a CenterHead config: (head keys in channel order, channels per key, 1-based class ids).

    Reads DENSE_HEAD.CLASS_NAMES_EACH_HEAD and SEPARATE_HEAD_CFG.HEAD_DICT (+ 'hm' with one channel per class).
    """
    head_cfg = model_cfg.get("DENSE_HEAD", {}) if model_cfg else {}
    if "CLASS_NAMES_EACH_HEAD" not in head_cfg or "SEPARATE_HEAD_CFG" not in head_cfg:
        raise KeyError(f"{who}: head attention needs a CenterHead config with CLASS_NAMES_EACH_HEAD and "
                       f"SEPARATE_HEAD_CFG.HEAD_DICT (got DENSE_HEAD keys {sorted(head_cfg)})")
    head_dict = head_cfg["SEPARATE_HEAD_CFG"]["HEAD_DICT"]
    groups = []
    for names in head_cfg["CLASS_NAMES_EACH_HEAD"]:
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise KeyError(f"{who}: CLASS_NAMES_EACH_HEAD has {unknown} not in CLASS_NAMES {list(class_names)}")
        keys = ["hm"] + [k for k in head_dict if k != "hm"]
        sizes = [len(names)] + [int(head_dict[k]["out_channels"]) for k in keys[1:]]
        ids = [class_names.index(n) + 1 for n in names]
        groups.append((keys, sizes, ids))
    return groups


# weight of the relation-matrix guard; provisional (its gradient is under 1% of the detection loss's, docs/KD.md):
# not yet chosen on a tuning split
DEFAULT_RELATION_WEIGHT = 1.0


@KD_HEADS.register(name="ITKD")
class ITKDHead(KDHead):
    """Interchange transfer on the dense-head input map and relation-aware attention on the head outputs.

    Config (KD.HEADS item): TEACHER_TAP / STUDENT_TAP (BEV map, (B, C, H, W)); AE: {WEIGHT, ENCODER_WIDTHS (ends at
    C_z), FG_MASK, CENTER_MSE_WEIGHT, NORM ('bn' default or 'none')}; ATTN: {ENABLED, WEIGHT, TEACHER_TAP /
    STUDENT_TAP (per-task SeparateHead, may end in '.*'), RELATION_WEIGHT (weight of the mean |A_S - A_T| guard),
    FUSION ('frozen' default, 'normalized', 'trainable': see adapters.FusionLinear), TEMPERATURE (tau; default
    sqrt(TARGET_ASSIGNER_CONFIG.NUM_MAX_OBJS)), HM_ACTIVATION ('none': heatmap logits, as the authors; 'sigmoid')}.
    Terms: kd_itkd_t2s, kd_itkd_s2t, kd_itkd_cr (each * AE.WEIGHT), kd_itkd_center_mse (optional),
    kd_itkd_attn (fused-feature term * ATTN.WEIGHT), kd_itkd_attn_rel (relation guard * ATTN.WEIGHT *
    RELATION_WEIGHT, when > 0).
    """
    CONFIG_SCHEMA = {
        "TEACHER_TAP": req(str, list), "STUDENT_TAP": req(str, list),
        "AE": opt(dict, keys={"WEIGHT": opt(float), "ENCODER_WIDTHS": opt(list), "FG_MASK": opt(bool),
                              "CENTER_MSE_WEIGHT": opt(float), "NORM": opt(str)}),
        "ATTN": opt(dict, keys={"ENABLED": opt(bool), "WEIGHT": opt(float), "TEACHER_TAP": opt(str, list),
                                "STUDENT_TAP": opt(str, list), "RELATION_WEIGHT": opt(float), "FUSION": opt(str),
                                "TEMPERATURE": opt(float), "HM_ACTIVATION": opt(str)}),
    }
    HM_ACTIVATIONS = ("none", "sigmoid")

    @staticmethod
    def tap_requests(cfg):
        req = {"map": (KDHead.require(cfg, "TEACHER_TAP", "ITKD"), KDHead.require(cfg, "STUDENT_TAP", "ITKD"))}
        attn = cfg.get("ATTN", {})
        if attn.get("ENABLED", True):
            req["heads"] = (attn.get("TEACHER_TAP", "dense_head.heads_list.*"),
                            attn.get("STUDENT_TAP", "dense_head.heads_list.*"))
        return req

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        t_shape, s_shape = ctx.shapes["map"][0][0], ctx.shapes["map"][1][0]
        c_t, c_s = channels_of(t_shape, "ITKD teacher map"), channels_of(s_shape, "ITKD student map")
        ae = cfg.get("AE", {})
        widths = [int(w) for w in ae.get("ENCODER_WIDTHS", [128, 64, 32])]
        if not widths:
            raise ValueError("ITKD: AE.ENCODER_WIDTHS must list at least C_z")
        self.ae_weight = float(ae.get("WEIGHT", 1.0))
        self.fg_mask = bool(ae.get("FG_MASK", False))
        self.center_mse_weight = float(ae.get("CENTER_MSE_WEIGHT", 0.0))
        self.adapter = conv1x1(c_s, c_t)
        # NORM 'bn' (default): conv -> BN -> ReLU in the hidden layers. With plain conv -> ReLU the shared encoder's
        # units died in our runs, the code became constant, L_cr reached exactly 0 and L_t2s pulled the student's
        # map towards the decoder's constant output.
        self.ae_norm = str(ae.get("NORM", "bn"))
        self.encoder = ConvStack([c_t] + widths, norm=self.ae_norm)
        self.decoder = ConvStack(list(reversed(widths)) + [c_s], norm=self.ae_norm)
        if tuple(s_shape[-2:]) != tuple(t_shape[-2:]):
            ctx.log(f"ITKD: student map {tuple(s_shape[-2:])} resampled to the teacher grid {tuple(t_shape[-2:])}")
        self.teacher_grid = ctx.teacher
        self.student_grid = ctx.student
        ctx.log(f"ITKD: C_S={c_s} C_T={c_t} encoder {self.encoder.widths} decoder {self.decoder.widths} "
                f"(hidden norm {self.ae_norm})")

        attn = cfg.get("ATTN", {})
        self.attn_enabled = bool(attn.get("ENABLED", True))
        if self.attn_enabled:
            self.attn_weight = float(attn.get("WEIGHT", 1.0))
            self.relation_weight = float(attn.get("RELATION_WEIGHT", DEFAULT_RELATION_WEIGHT))
            self.hm_activation = str(attn.get("HM_ACTIVATION", "none"))
            if self.hm_activation not in self.HM_ACTIVATIONS:
                raise ValueError(f"ITKD: ATTN.HM_ACTIVATION must be one of {self.HM_ACTIVATIONS}, got "
                                 f"'{self.hm_activation}'")
            groups_s = center_head_groups(ctx.student.model_cfg, ctx.student.class_names, "ITKD student")
            groups_t = center_head_groups(ctx.teacher.model_cfg, ctx.teacher.class_names, "ITKD teacher")
            if [g[:2] for g in groups_s] != [g[:2] for g in groups_t]:
                raise ValueError(f"ITKD: teacher and student head layouts differ: {groups_t} vs {groups_s}")
            n_taps = len(ctx.taps["heads"][1])
            if n_taps != len(groups_s) or len(ctx.taps["heads"][0]) != n_taps:
                raise ValueError(f"ITKD: {len(groups_s)} task groups in the head config but head taps "
                                 f"{ctx.taps['heads']}")
            for side, shapes in zip(("teacher", "student"), ctx.shapes["heads"]):
                for (keys, sizes, _), shape in zip(groups_s, shapes):
                    got = {k: shape.get(k, (None, None))[1] for k in keys} if isinstance(shape, dict) else shape
                    if got != dict(zip(keys, sizes)):
                        raise ValueError(f"ITKD: {side} head outputs {got} do not match the head config "
                                         f"{dict(zip(keys, sizes))}")
            self.groups = groups_s
            self.head_stride = int(ctx.student.model_cfg["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"]
                                   ["FEATURE_MAP_STRIDE"])
            self.teacher_head_stride = int(ctx.teacher.model_cfg["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"]
                                           ["FEATURE_MAP_STRIDE"])
            # tau = sqrt(object slots) as the authors (500 slots: tau 22.4), not sqrt(objects present)
            slots = int(ctx.student.model_cfg["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"].get("NUM_MAX_OBJS", 500))
            tau = attn.get("TEMPERATURE", None)
            self.tau = float(tau) if tau is not None else float(slots) ** 0.5
            if self.tau <= 0:
                raise ValueError(f"ITKD: ATTN.TEMPERATURE must be > 0, got {self.tau}")
            self.fusion_mode = str(attn.get("FUSION", "frozen"))
            if self.fusion_mode not in FusionLinear.MODES:
                raise ValueError(f"ITKD: ATTN.FUSION must be one of {FusionLinear.MODES}, got '{self.fusion_mode}'")
            self.fusion = nn.ModuleList(FusionLinear(2 * sum(sizes), sum(sizes), self.fusion_mode)
                                        for _, sizes, _ in self.groups)
            ctx.log(f"ITKD attention: {len(self.groups)} task group(s), per-sample relations, tau={self.tau:.3g}, "
                    f"heatmap {self.hm_activation}, relation guard weight {self.relation_weight}, "
                    f"fusion {self.fusion_mode}")

    # -- autoencoder -------------------------------------------------------------------------------------------
    def ae_losses(self, f_t, f_s, weight=None):
        """f_t (B, C_T, H, W), f_s (B, C_S, H, W) on the same grid -> dict of unweighted t2s, s2t, cr (+ maps)."""
        # one pass of the shared encoder / decoder over [teacher; student] so normalisation layers see both sides
        b = f_t.shape[0]
        z_t, z_s = self.encoder(torch.cat([f_t, self.adapter(f_s)], dim=0)).split(b, dim=0)
        d_t, d_s = self.decoder(torch.cat([z_t, z_s], dim=0)).split(b, dim=0)
        s2t = self.adapter(d_s)
        return {
            "t2s": masked_l1(d_t, f_s, weight),
            "s2t": masked_l1(s2t, f_t, weight),
            "cr": masked_l1(z_s, z_t, weight),
            "pairs": ((d_t, f_s), (s2t, f_t), (z_s, z_t)),
        }

    # -- head attention ------------------------------------------------------------------------------------------
    def _gather(self, out, keys, iy, ix):
        """dict of (B, C_k, H, W) -> (B, M, sum C_k) at the cells (iy, ix) (B, M); heatmap logits or sigmoid."""
        b = torch.arange(iy.shape[0], device=iy.device)[:, None].expand_as(iy)
        h, w = out["hm"].shape[-2:]
        iy, ix = iy.clamp(0, h - 1), ix.clamp(0, w - 1)  # padded slots: any cell, masked out by the caller
        parts = []
        for k in keys:
            v = out[k][b, :, iy, ix]
            if k == "hm" and self.hm_activation == "sigmoid":
                v = torch.sigmoid(v)
            parts.append(v)
        return torch.cat(parts, dim=-1)

    def attention_terms(self, gt_boxes, heads_t, heads_s):
        """L_attn averaged over the task groups that hold objects; returns (loss, per-group fused terms,
        per-group relation terms (unweighted; loss = mean over groups of fused + RELATION_WEIGHT * relation),
        number of objects). Objects are the real GT boxes of the group's classes centred
        on both maps; relations are computed per sample (B, C, C), never over the objects of the batch pooled."""
        losses, fused_terms, rel_terms, total_objects = [], [], [], 0
        for g, ((keys, sizes, ids), out_t, out_s) in enumerate(zip(self.groups, heads_t, heads_s)):
            keep_s, iy_s, ix_s = box_centre_cells(gt_boxes, self.student_grid, self.head_stride,
                                                  *out_s["hm"].shape[-2:], ids)
            keep_t, iy_t, ix_t = box_centre_cells(gt_boxes, self.teacher_grid, self.teacher_head_stride,
                                                  *out_t["hm"].shape[-2:], ids)
            mask = keep_s & keep_t  # (B, M): the same objects in the same slots on both sides
            n = int(mask.sum())
            total_objects += n
            if n == 0:
                continue
            x_s = self._gather(out_s, keys, iy_s, ix_s)
            x_t = self._gather(out_t, keys, iy_t, ix_t)
            cat_s, rel_s = head_relation_inputs(x_s, sizes, self.tau, mask)
            cat_t, rel_t = head_relation_inputs(x_t, sizes, self.tau, mask)
            fuse = self.fusion[g]
            loss, fused_term, rel_term = relation_attention_loss(fuse(cat_s), fuse(cat_t), rel_s, rel_t, mask,
                                                                 self.relation_weight)
            losses.append(loss)
            fused_terms.append(fused_term)
            rel_terms.append(rel_term)
        if not losses:
            zero = zero_like_graph(*[o[k] for o in heads_s for k in o], *self.fusion.parameters())
            return zero, fused_terms, rel_terms, 0
        return torch.stack(losses).mean(), fused_terms, rel_terms, total_objects

    def forward(self, feats, batch_dict, teacher_batch=None):
        f_t, f_s = feats["map"][0][0], feats["map"][1][0]
        f_s = resample_to(f_s, f_t.shape[-2:])
        gt_boxes = batch_dict.get("gt_boxes")
        weight = None
        if self.fg_mask or self.center_mse_weight > 0 or self.attn_enabled:
            if gt_boxes is None:
                raise KeyError("ITKD: batch_dict lacks 'gt_boxes' (needed by FG_MASK / CENTER_MSE / ATTN)")
        if self.fg_mask or self.center_mse_weight > 0:
            stride_t = map_stride(self.teacher_grid, f_t.shape[-1], "ITKD teacher map")
        if self.fg_mask:
            weight = bev_box_mask(gt_boxes, self.teacher_grid, stride_t, *f_t.shape[-2:])
        ae = self.ae_losses(f_t, f_s, weight)
        terms = {f"kd_{self.name}_{k}": self.ae_weight * ae[k] for k in ("t2s", "s2t", "cr")}
        if self.center_mse_weight > 0:
            b, iy, ix, _ = box_centre_pixels(gt_boxes, self.teacher_grid, stride_t, *f_t.shape[-2:])
            mse = f_s.new_zeros(())
            for pred, target in ae["pairs"]:
                if len(b) == 0:
                    mse = mse + zero_like_graph(pred)
                    continue
                mse = mse + ((pred[b, :, iy, ix] - target[b, :, iy, ix]) ** 2).mean()
            terms[f"kd_{self.name}_center_mse"] = self.center_mse_weight * mse
        if self.attn_enabled:
            loss, fused, rel, _ = self.attention_terms(gt_boxes, feats["heads"][0], feats["heads"][1])
            if not fused:  # no object in the batch: a zero that keeps the graph
                terms[f"kd_{self.name}_attn"] = self.attn_weight * loss
            else:
                # logged apart: the fused-feature term and the fusion-independent relation guard
                terms[f"kd_{self.name}_attn"] = self.attn_weight * torch.stack(fused).mean()
                if self.relation_weight > 0:
                    terms[f"kd_{self.name}_attn_rel"] = (self.attn_weight * self.relation_weight
                                                         * torch.stack(rel).mean())
        return terms
