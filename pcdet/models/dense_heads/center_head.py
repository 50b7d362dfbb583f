"""CenterPoint's anchor-free head (OpenPCDet's ``CenterHead``): per task group, a class heatmap and box regression.

Config (``MODEL.DENSE_HEAD``), OpenPCDet keys:
    CLASS_NAMES_EACH_HEAD: list of task groups, each a list of class names; together exactly ``CLASS_NAMES``.
    SHARED_CONV_CHANNEL: int, channels of ``shared_conv`` (scaled by the width multiplier ``WIDTH``).
    USE_BIAS_BEFORE_NORM: bool, bias on the convs followed by BatchNorm.
    NUM_HM_CONV: int, convs of the heatmap branch.
    SEPARATE_HEAD_CFG: HEAD_ORDER (regression branches in code order, e.g. center, center_z, dim, rot[, vel]) and
        HEAD_DICT (branch -> {out_channels, num_conv}).
    TARGET_ASSIGNER_CONFIG: FEATURE_MAP_STRIDE, NUM_MAX_OBJS, GAUSSIAN_OVERLAP, MIN_RADIUS.
    LOSS_CONFIG.LOSS_WEIGHTS: cls_weight, loc_weight, code_weights (one per regression channel).
    POST_PROCESSING: SCORE_THRESH, POST_CENTER_LIMIT_RANGE, MAX_OBJ_PER_SAMPLE, optional PEAK_KERNEL (max-pool
        window of the peak extraction before top-K; default 1: every pixel is a candidate, as OpenPCDet decodes;
        3 keeps local maxima only),
        NMS_CONFIG (NMS_TYPE, NMS_THRESH, NMS_PRE_MAXSIZE, NMS_POST_MAXSIZE).
        NMS_TYPE: ``nms_gpu`` / ``nms_normal_gpu`` (or without ``_gpu``): class-agnostic NMS per task group;
        ``class_specific_nms``: NMS per class (``NMS_TYPE_PER_CLASS``, default ``nms_gpu``), where NMS_THRESH /
        NMS_PRE_MAXSIZE / NMS_POST_MAXSIZE may be lists indexed like ``CLASS_NAMES``; ``circle_nms``: greedy
        suppression by BEV centre distance with NMS_THRESH a radius in metres (scalar or one per task group).
    WIDTH (optional): channel multiplier of ``shared_conv`` and the branches, overriding ``MODEL.WIDTH``.
"""
import copy

import torch
import torch.nn as nn
from torch.nn.init import kaiming_normal_

from ... import batch_keys as K
from ..model_utils import centernet_utils, model_nms_utils
from ..model_utils.width import module_width, scaled
from . import DENSE_HEADS
from ...config_schema import opt, req  # noqa: F401


class SeparateHead(nn.Module):
    """One task group's branches: for each name in ``sep_head_dict``, ``num_conv - 1`` conv-BN-ReLU then a conv.

    Args:
        input_channels: int, channels of the shared feature map.
        sep_head_dict: ordered dict name -> {out_channels, num_conv}; ``hm`` is the heatmap branch.
        init_bias: float, initial bias of the heatmap logits (-2.19 = prior probability 0.1).
        use_bias: bool, bias on the intermediate convs.

    ``forward(x)``: x (B, C, H, W) -> dict name -> (B, out_channels, H, W) raw outputs (heatmap logits, not
    sigmoid); this is what forward hooks on ``dense_head.heads_list.<i>`` see.
    """

    def __init__(self, input_channels, sep_head_dict, init_bias=-2.19, use_bias=False):
        super().__init__()
        self.sep_head_dict = sep_head_dict
        for name, spec in self.sep_head_dict.items():
            out_channels, num_conv = int(spec["out_channels"]), int(spec["num_conv"])
            if num_conv < 1:
                raise ValueError(f"SeparateHead: HEAD_DICT['{name}'].num_conv must be >= 1, got {num_conv}")
            layers = [
                nn.Sequential(
                    nn.Conv2d(input_channels, input_channels, kernel_size=3, stride=1, padding=1, bias=use_bias),
                    nn.BatchNorm2d(input_channels),
                    nn.ReLU(),
                )
                for _ in range(num_conv - 1)
            ]
            layers.append(nn.Conv2d(input_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=True))
            branch = nn.Sequential(*layers)
            if name == "hm":
                nn.init.constant_(branch[-1].bias, init_bias)
            else:
                for m in branch.modules():
                    if isinstance(m, nn.Conv2d):
                        kaiming_normal_(m.weight)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
            setattr(self, name, branch)

    def forward(self, x):
        return {name: getattr(self, name)(x) for name in self.sep_head_dict}


def _per_class_value(value, index, key):
    """``value`` if scalar, else ``value[index]`` (config lists per class / per task group)."""
    if isinstance(value, (list, tuple)):
        if index >= len(value):
            raise ValueError(f"NMS_CONFIG.{key}: list of {len(value)} entries has no entry {index}")
        return value[index]
    return value


@DENSE_HEADS.register
class CenterHead(nn.Module):
    """Anchor-free head; see the module docstring for its config.

    Args:
        model_cfg: the DENSE_HEAD config.
        input_channels: int, channels of ``spatial_features_2d``.
        num_class: int, ``len(class_names)``.
        class_names: list of str (``CLASS_NAMES``).
        grid_size: np.ndarray ``[nx, ny, nz]``; point_cloud_range: (6,); voxel_size: (3,).
        predict_boxes_when_training: bool, also decode boxes in training mode.
        width: float channel multiplier of ``shared_conv`` (the template passes ``MODEL.WIDTH`` or
            ``DENSE_HEAD.WIDTH``); None reads ``model_cfg.WIDTH`` (default 1.0). The branches follow its width.

    Reads ``spatial_features_2d`` (B, C, H, W), ``batch_size`` and, in training, ``gt_boxes`` (B, M, 8 + C_extra)
    (class id last, 1-based global; velocities as C_extra when a ``vel`` branch exists).
    Writes ``final_box_dicts`` (B dicts ``pred_boxes`` (K, 7 [+2]), ``pred_scores`` (K,), ``pred_labels`` (K,)
    1-based global class ids) at inference. ``forward_ret_dict`` holds ``pred_dicts`` (one dict per task group,
    raw branch outputs) and, in training, ``target_dicts`` (``heatmaps``, ``target_boxes``, ``inds``, ``masks``:
    lists over task groups of (B, n_cls, H, W), (B, NUM_MAX_OBJS, code), (B, NUM_MAX_OBJS), (B, NUM_MAX_OBJS)).
    """

    REQUIRED_KEYS = (K.SPATIAL_FEATURES_2D, K.BATCH_SIZE)
    REQUIRED_TRAINING_KEYS = (K.GT_BOXES,)
    PROVIDED_KEYS = (K.FINAL_BOX_DICTS,)

    CONFIG_SCHEMA = {
        "CLASS_AGNOSTIC": opt(bool), "CLASS_NAMES_EACH_HEAD": req(list), "SHARED_CONV_CHANNEL": req(int),
        "USE_BIAS_BEFORE_NORM": opt(bool), "NUM_HM_CONV": req(int), "INPUT_FEATURES": opt(int), "WIDTH": opt(float),
        # HEAD_DICT: branch name -> {out_channels, num_conv}; its names are the user's
        "SEPARATE_HEAD_CFG": req(dict, keys={"HEAD_ORDER": req(list), "HEAD_DICT": req(dict, keys=None)}),
        "TARGET_ASSIGNER_CONFIG": req(dict, keys={
            "FEATURE_MAP_STRIDE": req(int), "NUM_MAX_OBJS": req(int), "GAUSSIAN_OVERLAP": req(float),
            "MIN_RADIUS": req(int)}),
        "LOSS_CONFIG": req(dict, keys={"LOSS_WEIGHTS": req(dict, keys={
            "cls_weight": req(float), "loc_weight": req(float), "code_weights": opt(list)})}),
        "POST_PROCESSING": req(dict, keys={
            "SCORE_THRESH": opt(float), "POST_CENTER_LIMIT_RANGE": opt(list), "MAX_OBJ_PER_SAMPLE": req(int),
            "PEAK_KERNEL": opt(int),
            "NMS_CONFIG": req(dict, keys={
                "NMS_TYPE": req(str), "NMS_TYPE_PER_CLASS": opt(str), "NMS_THRESH": req(float, list, dict),
                "NMS_PRE_MAXSIZE": req(int, list, dict), "NMS_POST_MAXSIZE": req(int, list, dict)})}),
    }

    def __init__(self, model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range,
                 voxel_size, predict_boxes_when_training=False, width=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.class_names = list(class_names)
        self.grid_size = grid_size
        self.point_cloud_range = [float(v) for v in point_cloud_range]
        self.voxel_size = [float(v) for v in voxel_size]
        self.feature_map_stride = int(model_cfg.TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE)
        self.predict_boxes_when_training = predict_boxes_when_training
        if len(self.class_names) != num_class:
            raise ValueError(f"CenterHead: num_class={num_class} but class_names has {len(self.class_names)}")

        self.class_names_each_head, self.class_id_mapping_each_head = self._parse_task_groups(
            model_cfg.CLASS_NAMES_EACH_HEAD, self.class_names
        )

        width = module_width(None, model_cfg) if width is None else float(width)
        use_bias = bool(model_cfg.get("USE_BIAS_BEFORE_NORM", False))
        shared_channels = scaled(int(model_cfg.SHARED_CONV_CHANNEL), width)
        self.shared_conv = nn.Sequential(
            nn.Conv2d(input_channels, shared_channels, 3, stride=1, padding=1, bias=use_bias),
            nn.BatchNorm2d(shared_channels),
            nn.ReLU(),
        )

        self.separate_head_cfg = model_cfg.SEPARATE_HEAD_CFG
        self.head_order = list(self.separate_head_cfg.HEAD_ORDER)
        head_dict = self.separate_head_cfg.HEAD_DICT
        missing = [name for name in self.head_order if name not in head_dict]
        if missing:
            raise ValueError(f"CenterHead: SEPARATE_HEAD_CFG.HEAD_ORDER names {missing} absent from HEAD_DICT")
        for name in ("center", "center_z", "dim", "rot"):
            if name not in self.head_order:
                raise ValueError(f"CenterHead: SEPARATE_HEAD_CFG.HEAD_ORDER lacks '{name}': {self.head_order}")
        self.code_size = sum(int(head_dict[name]["out_channels"]) for name in self.head_order)
        code_weights = model_cfg.LOSS_CONFIG.LOSS_WEIGHTS.get("code_weights", None)
        if code_weights is not None and len(code_weights) != self.code_size:
            raise ValueError(
                f"CenterHead: LOSS_CONFIG.LOSS_WEIGHTS.code_weights has {len(code_weights)} entries, HEAD_ORDER "
                f"{self.head_order} predicts {self.code_size} channels"
            )

        self.heads_list = nn.ModuleList()
        for cur_class_names in self.class_names_each_head:
            cur_head_dict = copy.deepcopy(dict(head_dict))
            cur_head_dict["hm"] = dict(out_channels=len(cur_class_names), num_conv=int(model_cfg.NUM_HM_CONV))
            self.heads_list.append(
                SeparateHead(input_channels=shared_channels, sep_head_dict=cur_head_dict, init_bias=-2.19,
                             use_bias=use_bias)
            )
        self.hm_loss_func = centernet_utils.FocalLossCenterNet()
        self.reg_loss_func = centernet_utils.RegLossCenterNet()
        self.forward_ret_dict = {}

    @staticmethod
    def _parse_task_groups(class_names_each_head, class_names):
        """Task-group class names and, per group, the 0-based global id of each of its classes.

        Classes of a group that are not in ``class_names`` are dropped (OpenPCDet behaviour); every class must
        end up in exactly one group.
        """
        names_each_head, mapping_each_head = [], []
        for group in class_names_each_head:
            kept = [name for name in group if name in class_names]
            if not kept:
                raise ValueError(f"CenterHead: task group {list(group)} has no class of CLASS_NAMES {class_names}")
            names_each_head.append(kept)
            mapping_each_head.append([class_names.index(name) for name in kept])
        flat = [name for group in names_each_head for name in group]
        if sorted(flat) != sorted(class_names):
            raise ValueError(
                f"CenterHead: CLASS_NAMES_EACH_HEAD {names_each_head} must cover each of CLASS_NAMES "
                f"{class_names} exactly once"
            )
        return names_each_head, mapping_each_head

    # ---- targets --------------------------------------------------------------------------------------------

    def assign_target_of_single_head(self, num_classes, gt_boxes, feature_map_size, feature_map_stride,
                                     num_max_objs=500, gaussian_overlap=0.1, min_radius=2):
        """Targets of one task group for one sample; see ``centernet_utils.assign_target_of_single_head``.

        Args:
            gt_boxes: (N, 8 + C_extra), class id last, 1-based within the task group.
            feature_map_size: ``[W, H]``.
        """
        return centernet_utils.assign_target_of_single_head(
            gt_boxes, num_classes, feature_map_size, self.point_cloud_range, self.voxel_size, feature_map_stride,
            num_max_objs=num_max_objs, gaussian_overlap=gaussian_overlap, min_radius=min_radius,
        )

    def assign_targets(self, gt_boxes, feature_map_size):
        """Targets of every task group.

        Args:
            gt_boxes: (B, M, 8 + C_extra), class id last (1-based global, 0 = padding).
            feature_map_size: ``(H, W)`` of the head's feature map.
        Returns:
            dict ``heatmaps``, ``target_boxes``, ``inds``, ``masks``: lists over task groups (shapes in the class
            docstring), on the device of ``gt_boxes``.
        """
        if gt_boxes.dim() != 3 or gt_boxes.shape[-1] < 8:
            raise ValueError(f"CenterHead: gt_boxes must be (B, M, >=8), got {tuple(gt_boxes.shape)}")
        if gt_boxes.shape[-1] > self.code_size == 8:
            # Extra gt columns (e.g. velocities) without a branch predicting them: regress the 7-DoF box only.
            gt_boxes = torch.cat((gt_boxes[..., :7], gt_boxes[..., -1:]), dim=-1)
        if gt_boxes.shape[-1] != self.code_size:
            raise ValueError(
                f"CenterHead: gt_boxes (B, M, {gt_boxes.shape[-1]}) give a regression code of "
                f"{gt_boxes.shape[-1]} values but HEAD_ORDER {self.head_order} predicts {self.code_size}"
            )
        cfg = self.model_cfg.TARGET_ASSIGNER_CONFIG
        size_xy = [int(feature_map_size[1]), int(feature_map_size[0])]
        device = gt_boxes.device
        # The per-object Gaussian splatting is a short Python loop: run it on the CPU copy.
        gt_cpu = gt_boxes.detach().cpu()
        global_cls = gt_cpu[..., -1].long()
        if global_cls.numel() and (global_cls.min() < 0 or global_cls.max() > self.num_class):
            raise ValueError(
                f"CenterHead: gt_boxes class ids must lie in [0, {self.num_class}] (0 = padding), got "
                f"[{global_cls.min().item()}, {global_cls.max().item()}]"
            )
        ret = {"heatmaps": [], "target_boxes": [], "inds": [], "masks": []}
        for mapping in self.class_id_mapping_each_head:
            to_local = torch.zeros(self.num_class + 1, dtype=torch.long)
            to_local[torch.as_tensor(mapping) + 1] = torch.arange(1, len(mapping) + 1)
            per_sample = []
            for b in range(gt_cpu.shape[0]):
                local = to_local[global_cls[b]]
                boxes = gt_cpu[b][local > 0].clone()
                boxes[:, -1] = local[local > 0].to(boxes.dtype)
                per_sample.append(self.assign_target_of_single_head(
                    len(mapping), boxes, size_xy, self.feature_map_stride, num_max_objs=int(cfg.NUM_MAX_OBJS),
                    gaussian_overlap=float(cfg.GAUSSIAN_OVERLAP), min_radius=int(cfg.MIN_RADIUS),
                ))
            for key, idx in (("heatmaps", 0), ("target_boxes", 1), ("inds", 2), ("masks", 3)):
                ret[key].append(torch.stack([t[idx] for t in per_sample], dim=0).to(device))
        return ret

    # ---- loss -----------------------------------------------------------------------------------------------

    @staticmethod
    def sigmoid(x):
        """Sigmoid clamped to [1e-4, 1 - 1e-4] so the focal loss's logs stay finite."""
        return torch.clamp(x.sigmoid(), min=1e-4, max=1 - 1e-4)

    def get_loss(self):
        """Sum over task groups of ``cls_weight * focal(hm) + loc_weight * sum(code_weights * L1)``.

        Returns:
            loss: scalar tensor; tb_dict: ``hm_loss_head_<i>``, ``loc_loss_head_<i>``, ``rpn_loss`` floats.
        """
        if "target_dicts" not in self.forward_ret_dict:
            raise RuntimeError("CenterHead.get_loss: no targets; call forward in training mode first")
        pred_dicts = self.forward_ret_dict["pred_dicts"]
        target_dicts = self.forward_ret_dict["target_dicts"]
        weights = self.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS
        tb_dict = {}
        loss = 0
        for idx, pred_dict in enumerate(pred_dicts):
            hm_loss = self.hm_loss_func(self.sigmoid(pred_dict["hm"]), target_dicts["heatmaps"][idx])
            hm_loss = hm_loss * weights["cls_weight"]

            pred_boxes = torch.cat([pred_dict[name] for name in self.head_order], dim=1)
            reg_loss = self.reg_loss_func(
                pred_boxes, target_dicts["masks"][idx], target_dicts["inds"][idx], target_dicts["target_boxes"][idx]
            )
            code_weights = weights.get("code_weights", None)
            if code_weights is not None:
                reg_loss = reg_loss * reg_loss.new_tensor(code_weights)
            loc_loss = reg_loss.sum() * weights["loc_weight"]

            loss = loss + hm_loss + loc_loss
            tb_dict[f"hm_loss_head_{idx}"] = hm_loss.item()
            tb_dict[f"loc_loss_head_{idx}"] = loc_loss.item()
        tb_dict["rpn_loss"] = loss.item()
        return loss, tb_dict

    # ---- inference ------------------------------------------------------------------------------------------

    def _nms_one_group(self, boxes, scores, labels, group_idx):
        """Indices kept by the configured NMS among one task group's decoded boxes (labels 0-based global)."""
        nms_cfg = self.model_cfg.POST_PROCESSING.NMS_CONFIG
        nms_type = nms_cfg.NMS_TYPE
        if nms_type == "circle_nms":
            radius = float(_per_class_value(nms_cfg.NMS_THRESH, group_idx, "NMS_THRESH"))
            return centernet_utils.circle_nms(boxes[:, 0:2], scores, radius,
                                              post_max_size=int(nms_cfg.NMS_POST_MAXSIZE))
        if nms_type == "class_specific_nms":
            kept = []
            for cls in torch.unique(labels).tolist():
                idx = torch.nonzero(labels == cls, as_tuple=False).view(-1)
                cls_cfg = {
                    "NMS_TYPE": nms_cfg.get("NMS_TYPE_PER_CLASS", "nms_gpu"),
                    "NMS_THRESH": float(_per_class_value(nms_cfg.NMS_THRESH, cls, "NMS_THRESH")),
                    "NMS_PRE_MAXSIZE": int(_per_class_value(nms_cfg.NMS_PRE_MAXSIZE, cls, "NMS_PRE_MAXSIZE")),
                    "NMS_POST_MAXSIZE": int(_per_class_value(nms_cfg.NMS_POST_MAXSIZE, cls, "NMS_POST_MAXSIZE")),
                }
                selected, _ = model_nms_utils.class_agnostic_nms(scores[idx], boxes[idx], cls_cfg)
                kept.append(idx[selected])
            if not kept:
                return torch.zeros(0, dtype=torch.long, device=scores.device)
            return torch.cat(kept, dim=0)
        selected, _ = model_nms_utils.class_agnostic_nms(scores, boxes, nms_cfg, score_thresh=None)
        return selected

    def generate_predicted_boxes(self, batch_size, pred_dicts):
        """Decode every task group, map labels to global ids, run NMS.

        Args:
            batch_size: int.
            pred_dicts: list over task groups of SeparateHead outputs (B, C, H, W).
        Returns:
            list of B dicts ``pred_boxes`` (K, 7 [+2]), ``pred_scores`` (K,), ``pred_labels`` (K,) long 1-based.
        """
        post_cfg = self.model_cfg.POST_PROCESSING
        limit = post_cfg.get("POST_CENTER_LIMIT_RANGE", None)
        ret = [{"pred_boxes": [], "pred_scores": [], "pred_labels": []} for _ in range(batch_size)]
        for idx, pred_dict in enumerate(pred_dicts):
            rot = pred_dict["rot"]
            decoded = centernet_utils.decode_bbox_from_heatmap(
                heatmap=pred_dict["hm"].sigmoid(),
                rot_cos=rot[:, 0:1], rot_sin=rot[:, 1:2],
                center=pred_dict["center"], center_z=pred_dict["center_z"], dim=pred_dict["dim"].exp(),
                vel=pred_dict["vel"] if "vel" in self.head_order else None,
                point_cloud_range=self.point_cloud_range, voxel_size=self.voxel_size,
                feature_map_stride=self.feature_map_stride,
                K=int(post_cfg.MAX_OBJ_PER_SAMPLE),
                score_thresh=post_cfg.get("SCORE_THRESH", None),
                post_center_limit_range=limit,
                peak_kernel=int(post_cfg.get("PEAK_KERNEL", 1)),
            )
            mapping = torch.as_tensor(self.class_id_mapping_each_head[idx], dtype=torch.long,
                                      device=rot.device)
            for b, box_dict in enumerate(decoded):
                labels = mapping[box_dict["pred_labels"]]
                keep = self._nms_one_group(box_dict["pred_boxes"], box_dict["pred_scores"], labels, idx)
                ret[b]["pred_boxes"].append(box_dict["pred_boxes"][keep])
                ret[b]["pred_scores"].append(box_dict["pred_scores"][keep])
                ret[b]["pred_labels"].append(labels[keep])
        for b in range(batch_size):
            ret[b]["pred_boxes"] = torch.cat(ret[b]["pred_boxes"], dim=0)
            ret[b]["pred_scores"] = torch.cat(ret[b]["pred_scores"], dim=0)
            ret[b]["pred_labels"] = torch.cat(ret[b]["pred_labels"], dim=0) + 1
        return ret

    def forward(self, data_dict):
        """Run the head; see the class docstring for keys and shapes."""
        K.check_keys(data_dict, self.REQUIRED_KEYS, type(self).__name__)
        spatial_features_2d = data_dict[K.SPATIAL_FEATURES_2D]
        feature_hw = spatial_features_2d.shape[2:]
        expected_w = self.grid_size[0] / self.feature_map_stride
        if abs(expected_w - feature_hw[1]) >= 1:
            raise ValueError(
                f"CenterHead: TARGET_ASSIGNER_CONFIG.FEATURE_MAP_STRIDE={self.feature_map_stride} implies a BEV "
                f"width of {expected_w:g} (grid nx={self.grid_size[0]}), but spatial_features_2d is "
                f"{tuple(spatial_features_2d.shape)}"
            )
        x = self.shared_conv(spatial_features_2d)
        pred_dicts = [head(x) for head in self.heads_list]
        self.forward_ret_dict = {"pred_dicts": pred_dicts}

        if self.training:
            K.check_keys(data_dict, self.REQUIRED_TRAINING_KEYS, type(self).__name__)
            self.forward_ret_dict["target_dicts"] = self.assign_targets(
                data_dict[K.GT_BOXES], feature_map_size=feature_hw
            )

        if not self.training or self.predict_boxes_when_training:
            with torch.no_grad():
                data_dict[K.FINAL_BOX_DICTS] = self.generate_predicted_boxes(data_dict[K.BATCH_SIZE], pred_dicts)
        return data_dict
