"""AnchorHeadTemplate: anchors, target assignment, losses and box decoding shared by the anchor heads."""
import numpy as np
import torch
import torch.nn as nn

from ...utils import box_coder_utils, common_utils, loss_utils
from .target_assigner.anchor_generator import AnchorGenerator
from .target_assigner.axis_aligned_target_assigner import AxisAlignedTargetAssigner
from ...config_schema import opt, req  # noqa: F401

_BOX_CODERS = {"ResidualCoder": box_coder_utils.ResidualCoder}
_REG_LOSSES = {"WeightedSmoothL1Loss": loss_utils.WeightedSmoothL1Loss, "WeightedL1Loss": loss_utils.WeightedL1Loss}


class AnchorHeadTemplate(nn.Module):
    """Base of the anchor-based dense heads.

    Config keys (``MODEL.DENSE_HEAD``): ``ANCHOR_GENERATOR_CONFIG`` (per class), ``TARGET_ASSIGNER_CONFIG``
    (NAME, POS_FRACTION, SAMPLE_SIZE, NORM_BY_NUM_EXAMPLES, MATCH_HEIGHT, BOX_CODER), ``LOSS_CONFIG``
    (LOSS_WEIGHTS: cls_weight, loc_weight, dir_weight, code_weights; REG_LOSS_TYPE), ``DIR_OFFSET``,
    ``DIR_LIMIT_OFFSET``, ``NUM_DIR_BINS``.

    After ``forward`` the raw outputs stay in ``self.forward_ret_dict``: ``cls_preds`` (B, H, W, A_loc *
    num_class), ``box_preds`` (B, H, W, A_loc * code_size), ``dir_cls_preds`` (B, H, W, A_loc * NUM_DIR_BINS) or
    None, and in training the targets ``box_cls_labels`` (B, A), ``box_reg_targets`` (B, A, code_size),
    ``reg_weights`` (B, A).
    """

    CONFIG_SCHEMA = {
        "CLASS_AGNOSTIC": opt(bool), "USE_MULTIHEAD": opt(bool), "USE_DIRECTION_CLASSIFIER": opt(bool),
        "NUM_DIR_BINS": opt(int), "DIR_OFFSET": opt(float), "DIR_LIMIT_OFFSET": opt(float), "INPUT_FEATURES": opt(int),
        "WIDTH": opt(float),
        "ANCHOR_GENERATOR_CONFIG": req(list, items={
            "class_name": req(str), "anchor_sizes": req(list), "anchor_rotations": req(list),
            "anchor_bottom_heights": req(list), "align_center": opt(bool), "feature_map_stride": req(int),
            "matched_threshold": req(float), "unmatched_threshold": req(float)}),
        "TARGET_ASSIGNER_CONFIG": req(dict, keys={
            "NAME": req(str), "POS_FRACTION": opt(float), "SAMPLE_SIZE": opt(int), "NORM_BY_NUM_EXAMPLES": opt(bool),
            "MATCH_HEIGHT": opt(bool), "BOX_CODER": req(str), "BOX_CODER_CONFIG": opt(dict, keys=None),
            "NUM_DIR_BINS": opt(int)}),
        "LOSS_CONFIG": req(dict, keys={
            "REG_LOSS_TYPE": opt(str),
            "LOSS_WEIGHTS": req(dict, keys={"cls_weight": req(float), "loc_weight": req(float),
                                            "dir_weight": opt(float), "code_weights": req(list)})}),
    }

    def __init__(self, model_cfg, num_class, class_names, grid_size, point_cloud_range, predict_boxes_when_training):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.class_names = class_names
        self.predict_boxes_when_training = bool(predict_boxes_when_training)
        self.use_multihead = self.model_cfg.get("USE_MULTIHEAD", False)
        if self.use_multihead:
            raise NotImplementedError("MODEL.DENSE_HEAD.USE_MULTIHEAD is not supported by AnchorHeadTemplate")

        anchor_target_cfg = self.model_cfg.TARGET_ASSIGNER_CONFIG
        coder_name = anchor_target_cfg.BOX_CODER
        if coder_name not in _BOX_CODERS:
            raise KeyError(f"TARGET_ASSIGNER_CONFIG.BOX_CODER: unknown '{coder_name}' (known: {sorted(_BOX_CODERS)})")
        self.box_coder = _BOX_CODERS[coder_name](
            num_dir_bins=anchor_target_cfg.get("NUM_DIR_BINS", 6), **anchor_target_cfg.get("BOX_CODER_CONFIG", {})
        )

        anchor_generator_cfg = self.model_cfg.ANCHOR_GENERATOR_CONFIG
        anchors, self.num_anchors_per_location = self.generate_anchors(
            anchor_generator_cfg, grid_size=grid_size, point_cloud_range=point_cloud_range,
            anchor_ndim=self.box_coder.code_size,
        )
        # non-persistent buffers: they follow .to(device) but are not part of OpenPCDet's state_dict
        self.num_anchor_sets = len(anchors)
        for idx, anchor in enumerate(anchors):
            self.register_buffer(f"anchors_{idx}", anchor, persistent=False)
        self.target_assigner = self.get_target_assigner(anchor_target_cfg)
        self.forward_ret_dict = {}
        self.build_losses(self.model_cfg.LOSS_CONFIG)

    @property
    def anchors(self):
        """List per class of (nz, ny, nx, S, R, code_size) anchors on the head's device."""
        return [getattr(self, f"anchors_{idx}") for idx in range(self.num_anchor_sets)]

    @staticmethod
    def generate_anchors(anchor_generator_cfg, grid_size, point_cloud_range, anchor_ndim=7):
        """Anchors per class on the feature map ``grid_size[:2] // feature_map_stride``; zero-padded to
        ``anchor_ndim`` columns."""
        anchor_generator = AnchorGenerator(anchor_range=point_cloud_range,
                                           anchor_generator_config=anchor_generator_cfg)
        grid_size = np.asarray(grid_size, dtype=np.int64)
        feature_map_size = [grid_size[:2] // config["feature_map_stride"] for config in anchor_generator_cfg]
        anchors_list, num_anchors_per_location_list = anchor_generator.generate_anchors(feature_map_size)
        if anchor_ndim != 7:
            anchors_list = [torch.cat((a, a.new_zeros([*a.shape[:-1], anchor_ndim - 7])), dim=-1)
                            for a in anchors_list]
        return anchors_list, num_anchors_per_location_list

    def get_target_assigner(self, anchor_target_cfg):
        if anchor_target_cfg.NAME != "AxisAlignedTargetAssigner":
            raise KeyError(f"TARGET_ASSIGNER_CONFIG.NAME: unknown '{anchor_target_cfg.NAME}' "
                           f"(known: ['AxisAlignedTargetAssigner'])")
        return AxisAlignedTargetAssigner(model_cfg=self.model_cfg, class_names=self.class_names,
                                         box_coder=self.box_coder,
                                         match_height=anchor_target_cfg.get("MATCH_HEIGHT", False))

    def build_losses(self, losses_cfg):
        self.add_module("cls_loss_func", loss_utils.SigmoidFocalClassificationLoss(alpha=0.25, gamma=2.0))
        reg_loss_name = losses_cfg.get("REG_LOSS_TYPE", None) or "WeightedSmoothL1Loss"
        if reg_loss_name not in _REG_LOSSES:
            raise KeyError(f"LOSS_CONFIG.REG_LOSS_TYPE: unknown '{reg_loss_name}' (known: {sorted(_REG_LOSSES)})")
        self.add_module("reg_loss_func",
                        _REG_LOSSES[reg_loss_name](code_weights=losses_cfg.LOSS_WEIGHTS["code_weights"]))
        self.add_module("dir_loss_func", loss_utils.WeightedCrossEntropyLoss())

    def assign_targets(self, gt_boxes):
        """gt_boxes (B, M, 8) -> dict of box_cls_labels (B, A), box_reg_targets (B, A, code_size), reg_weights."""
        return self.target_assigner.assign_targets(self.anchors, gt_boxes)

    def _flat_anchors(self):
        return torch.cat(self.anchors, dim=-3)

    def get_cls_layer_loss(self):
        cls_preds = self.forward_ret_dict["cls_preds"]
        box_cls_labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(cls_preds.shape[0])
        cared = box_cls_labels >= 0
        positives = box_cls_labels > 0
        negatives = box_cls_labels == 0
        cls_weights = (negatives * 1.0 + positives * 1.0).float()
        if self.num_class == 1:
            box_cls_labels = torch.where(positives, torch.ones_like(box_cls_labels), box_cls_labels)
        pos_normalizer = positives.sum(1, keepdim=True).float()
        cls_weights = cls_weights / torch.clamp(pos_normalizer, min=1.0)

        cls_targets = (box_cls_labels * cared.type_as(box_cls_labels)).long()
        one_hot_targets = torch.zeros(*cls_targets.shape, self.num_class + 1, dtype=cls_preds.dtype,
                                      device=cls_targets.device)
        one_hot_targets.scatter_(-1, cls_targets.unsqueeze(-1), 1.0)
        cls_preds = cls_preds.view(batch_size, -1, self.num_class)
        one_hot_targets = one_hot_targets[..., 1:]
        cls_loss_src = self.cls_loss_func(cls_preds, one_hot_targets, weights=cls_weights)
        cls_loss = cls_loss_src.sum() / batch_size * self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS["cls_weight"]
        return cls_loss, {"rpn_loss_cls": cls_loss.item()}

    @staticmethod
    def add_sin_difference(boxes1, boxes2, dim=6):
        """Replace column ``dim`` by sin(a) cos(b) and cos(a) sin(b), so the loss sees sin(a - b)."""
        rad_pred_encoding = torch.sin(boxes1[..., dim:dim + 1]) * torch.cos(boxes2[..., dim:dim + 1])
        rad_tg_encoding = torch.cos(boxes1[..., dim:dim + 1]) * torch.sin(boxes2[..., dim:dim + 1])
        boxes1 = torch.cat([boxes1[..., :dim], rad_pred_encoding, boxes1[..., dim + 1:]], dim=-1)
        boxes2 = torch.cat([boxes2[..., :dim], rad_tg_encoding, boxes2[..., dim + 1:]], dim=-1)
        return boxes1, boxes2

    @staticmethod
    def get_direction_target(anchors, reg_targets, one_hot=True, dir_offset=0, num_bins=2):
        """Heading bin of each target: (B, A, num_bins) one-hot, or (B, A) long when ``one_hot`` is False."""
        batch_size = reg_targets.shape[0]
        anchors = anchors.view(batch_size, -1, anchors.shape[-1])
        rot_gt = reg_targets[..., 6] + anchors[..., 6]
        offset_rot = common_utils.limit_period(rot_gt - dir_offset, 0, 2 * np.pi)
        dir_cls_targets = torch.floor(offset_rot / (2 * np.pi / num_bins)).long()
        dir_cls_targets = torch.clamp(dir_cls_targets, min=0, max=num_bins - 1)
        if one_hot:
            dir_targets = torch.zeros(*dir_cls_targets.shape, num_bins, dtype=anchors.dtype,
                                      device=dir_cls_targets.device)
            dir_targets.scatter_(-1, dir_cls_targets.unsqueeze(-1), 1.0)
            dir_cls_targets = dir_targets
        return dir_cls_targets

    def get_box_reg_layer_loss(self):
        box_preds = self.forward_ret_dict["box_preds"]
        box_dir_cls_preds = self.forward_ret_dict.get("dir_cls_preds", None)
        box_reg_targets = self.forward_ret_dict["box_reg_targets"]
        box_cls_labels = self.forward_ret_dict["box_cls_labels"]
        batch_size = int(box_preds.shape[0])
        loss_weights = self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS

        positives = box_cls_labels > 0
        reg_weights = positives.float()
        pos_normalizer = positives.sum(1, keepdim=True).float()
        reg_weights = reg_weights / torch.clamp(pos_normalizer, min=1.0)

        anchors = self._flat_anchors()
        anchors = anchors.view(1, -1, anchors.shape[-1]).repeat(batch_size, 1, 1)
        box_preds = box_preds.view(batch_size, -1, box_preds.shape[-1] // self.num_anchors_per_location)
        box_preds_sin, reg_targets_sin = self.add_sin_difference(box_preds, box_reg_targets)
        loc_loss_src = self.reg_loss_func(box_preds_sin, reg_targets_sin, weights=reg_weights)
        loc_loss = loc_loss_src.sum() / batch_size * loss_weights["loc_weight"]
        box_loss = loc_loss
        tb_dict = {"rpn_loss_loc": loc_loss.item()}

        if box_dir_cls_preds is not None:
            num_bins = self.model_cfg.NUM_DIR_BINS
            dir_targets = self.get_direction_target(anchors, box_reg_targets, dir_offset=self.model_cfg.DIR_OFFSET,
                                                    num_bins=num_bins)
            dir_logits = box_dir_cls_preds.view(batch_size, -1, num_bins)
            weights = positives.type_as(dir_logits)
            weights = weights / torch.clamp(weights.sum(-1, keepdim=True), min=1.0)
            dir_loss = self.dir_loss_func(dir_logits, dir_targets, weights=weights)
            dir_loss = dir_loss.sum() / batch_size * loss_weights["dir_weight"]
            box_loss = box_loss + dir_loss
            tb_dict["rpn_loss_dir"] = dir_loss.item()
        return box_loss, tb_dict

    def get_loss(self):
        """Returns (rpn_loss scalar tensor, tb_dict with rpn_loss_cls / rpn_loss_loc / rpn_loss_dir / rpn_loss)."""
        if "box_cls_labels" not in self.forward_ret_dict:
            raise RuntimeError(f"{type(self).__name__}.get_loss: no targets; call forward in training mode first")
        cls_loss, tb_dict = self.get_cls_layer_loss()
        box_loss, tb_dict_box = self.get_box_reg_layer_loss()
        tb_dict.update(tb_dict_box)
        rpn_loss = cls_loss + box_loss
        tb_dict["rpn_loss"] = rpn_loss.item()
        return rpn_loss, tb_dict

    def generate_predicted_boxes(self, batch_size, cls_preds, box_preds, dir_cls_preds=None):
        """Decode the raw head outputs.

        Args:
            cls_preds: (B, H, W, A_loc * num_class); box_preds: (B, H, W, A_loc * code_size);
            dir_cls_preds: (B, H, W, A_loc * NUM_DIR_BINS) or None.
        Returns:
            batch_cls_preds: (B, A, num_class) logits; batch_box_preds: (B, A, 7 + C) boxes.
        """
        anchors = self._flat_anchors()
        num_anchors = anchors.view(-1, anchors.shape[-1]).shape[0]
        batch_anchors = anchors.view(1, -1, anchors.shape[-1]).repeat(batch_size, 1, 1)
        batch_cls_preds = cls_preds.view(batch_size, num_anchors, -1).float()
        batch_box_preds = self.box_coder.decode_torch(box_preds.view(batch_size, num_anchors, -1), batch_anchors)

        if dir_cls_preds is not None:
            dir_offset = self.model_cfg.DIR_OFFSET
            dir_limit_offset = self.model_cfg.DIR_LIMIT_OFFSET
            dir_labels = torch.max(dir_cls_preds.view(batch_size, num_anchors, -1), dim=-1)[1]
            period = 2 * np.pi / self.model_cfg.NUM_DIR_BINS
            dir_rot = common_utils.limit_period(batch_box_preds[..., 6] - dir_offset, dir_limit_offset, period)
            heading = dir_rot + dir_offset + period * dir_labels.to(batch_box_preds.dtype)
            batch_box_preds = torch.cat([batch_box_preds[..., :6], heading.unsqueeze(-1), batch_box_preds[..., 7:]],
                                        dim=-1)
        return batch_cls_preds, batch_box_preds

    def forward(self, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(data_dict)")
