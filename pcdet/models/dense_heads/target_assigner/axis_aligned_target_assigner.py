"""AxisAlignedTargetAssigner: SECOND-style anchor labelling by nearest-BEV (or 3D) IoU, per class."""
import numpy as np
import torch

from ....ops.iou3d_nms import iou3d_nms_utils
from ....utils import box_utils


class AxisAlignedTargetAssigner:
    """Assigns each anchor a class label (>0 foreground, 0 background, -1 ignored) and a box target.

    An anchor is foreground when its IoU with a gt box of its class is >= ``matched_threshold``, or when it is the
    best anchor of a gt box; background when its best IoU is < ``unmatched_threshold``. The IoU is that of the
    nearest axis-aligned BEV boxes (rotated anchors are aligned as OpenPCDet), or 3D IoU with ``MATCH_HEIGHT``.

    Args:
        model_cfg: the dense-head config (ANCHOR_GENERATOR_CONFIG, TARGET_ASSIGNER_CONFIG).
        class_names: list of str, 1-based ids in ``gt_boxes[..., 7]``.
        box_coder: e.g. ResidualCoder.
        match_height: bool.
    """

    def __init__(self, model_cfg, class_names, box_coder, match_height=False):
        anchor_generator_cfg = model_cfg.ANCHOR_GENERATOR_CONFIG
        anchor_target_cfg = model_cfg.TARGET_ASSIGNER_CONFIG
        self.box_coder = box_coder
        self.match_height = match_height
        self.class_names = np.array(class_names)
        self.anchor_class_names = [config["class_name"] for config in anchor_generator_cfg]
        unknown = [n for n in self.anchor_class_names if n not in list(class_names)]
        if unknown:
            raise ValueError(f"ANCHOR_GENERATOR_CONFIG: class_name {unknown} not in CLASS_NAMES {list(class_names)}")
        pos_fraction = anchor_target_cfg.get("POS_FRACTION", -1.0)
        self.pos_fraction = pos_fraction if pos_fraction >= 0 else None
        self.sample_size = anchor_target_cfg.get("SAMPLE_SIZE", 512)
        self.norm_by_num_examples = anchor_target_cfg.get("NORM_BY_NUM_EXAMPLES", False)
        self.matched_thresholds = {c["class_name"]: c["matched_threshold"] for c in anchor_generator_cfg}
        self.unmatched_thresholds = {c["class_name"]: c["unmatched_threshold"] for c in anchor_generator_cfg}
        if model_cfg.get("USE_MULTIHEAD", False):
            raise NotImplementedError("AxisAlignedTargetAssigner: USE_MULTIHEAD anchor heads are not supported")

    def assign_targets(self, all_anchors, gt_boxes_with_classes):
        """Args:
            all_anchors: list per class of (nz, ny, nx, S, R, code_size) anchors.
            gt_boxes_with_classes: (B, M, 7 + C + 1) with the 1-based class id last; all-zero rows are padding.
        Returns:
            dict ``box_cls_labels`` (B, A) int32, ``box_reg_targets`` (B, A, code_size), ``reg_weights`` (B, A),
            with A the anchors of all classes in the order of the concatenated anchors.
        """
        bbox_targets, cls_labels, reg_weights = [], [], []
        batch_size = gt_boxes_with_classes.shape[0]
        gt_classes = gt_boxes_with_classes[:, :, -1]
        gt_boxes = gt_boxes_with_classes[:, :, :-1]
        for k in range(batch_size):
            valid = gt_classes[k] > 0
            cur_gt = gt_boxes[k][valid]
            cur_gt_classes = gt_classes[k][valid].long()
            names = self.class_names[(cur_gt_classes.cpu().numpy() - 1).astype(np.int64)]
            target_list = []
            feature_map_size = None
            for anchor_class_name, anchors in zip(self.anchor_class_names, all_anchors):
                mask = torch.from_numpy(np.asarray(names == anchor_class_name, dtype=bool)).to(cur_gt.device)
                feature_map_size = anchors.shape[:3]
                single_target = self.assign_targets_single(
                    anchors.view(-1, anchors.shape[-1]), cur_gt[mask], gt_classes=cur_gt_classes[mask],
                    matched_threshold=self.matched_thresholds[anchor_class_name],
                    unmatched_threshold=self.unmatched_thresholds[anchor_class_name],
                )
                target_list.append(single_target)
            code_size = self.box_coder.code_size
            box_cls = torch.cat([t["box_cls_labels"].view(*feature_map_size, -1) for t in target_list], dim=-1)
            box_reg = torch.cat([t["box_reg_targets"].view(*feature_map_size, -1, code_size) for t in target_list],
                                dim=-2)
            reg_w = torch.cat([t["reg_weights"].view(*feature_map_size, -1) for t in target_list], dim=-1)
            cls_labels.append(box_cls.view(-1))
            bbox_targets.append(box_reg.view(-1, code_size))
            reg_weights.append(reg_w.view(-1))
        return {
            "box_cls_labels": torch.stack(cls_labels, dim=0),
            "box_reg_targets": torch.stack(bbox_targets, dim=0),
            "reg_weights": torch.stack(reg_weights, dim=0),
        }

    def assign_targets_single(self, anchors, gt_boxes, gt_classes, matched_threshold=0.6, unmatched_threshold=0.45):
        """Args:
            anchors: (A, code_size); gt_boxes: (G, 7 + C); gt_classes: (G,) 1-based.
        Returns:
            dict ``box_cls_labels`` (A,) int32, ``box_reg_targets`` (A, code_size), ``reg_weights`` (A,).
        """
        device = anchors.device
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        labels = torch.full((num_anchors,), -1, dtype=torch.int32, device=device)
        gt_classes = gt_classes.to(torch.int32)
        anchor_to_gt_argmax = None
        if num_gt > 0 and num_anchors > 0:
            if self.match_height:
                overlap = iou3d_nms_utils.boxes_iou3d(anchors[:, 0:7], gt_boxes[:, 0:7])
            else:
                overlap = box_utils.boxes3d_nearest_bev_iou(anchors[:, 0:7], gt_boxes[:, 0:7])
            overlap = overlap.to(device)
            anchor_to_gt_max, anchor_to_gt_argmax = overlap.max(dim=1)
            gt_to_anchor_max = overlap.max(dim=0)[0]
            # a gt box nobody overlaps must not force-match every zero-IoU anchor
            gt_to_anchor_max = torch.where(gt_to_anchor_max == 0, torch.full_like(gt_to_anchor_max, -1),
                                           gt_to_anchor_max)
            anchors_with_max_overlap = torch.nonzero(overlap == gt_to_anchor_max[None, :], as_tuple=False)[:, 0]
            gt_inds_force = anchor_to_gt_argmax[anchors_with_max_overlap]

            pos_inds = anchor_to_gt_max >= matched_threshold
            labels[pos_inds] = gt_classes[anchor_to_gt_argmax[pos_inds]]
            labels[anchors_with_max_overlap] = gt_classes[gt_inds_force]
            bg_inds = torch.nonzero(anchor_to_gt_max < unmatched_threshold, as_tuple=False)[:, 0]
        else:
            bg_inds = torch.arange(num_anchors, device=device)

        if self.pos_fraction is not None:
            num_fg = int(self.pos_fraction * self.sample_size)
            fg_inds = torch.nonzero(labels > 0, as_tuple=False)[:, 0]
            if len(fg_inds) > num_fg:
                drop = fg_inds[torch.randperm(len(fg_inds), device=device)[: len(fg_inds) - num_fg]]
                labels[drop] = -1
            num_bg = self.sample_size - int((labels > 0).sum())
            if len(bg_inds) > 0:
                enable = bg_inds[torch.randint(0, len(bg_inds), size=(max(num_bg, 0),), device=device)]
                labels[enable] = 0
        elif num_gt == 0 or num_anchors == 0:
            labels[:] = 0
        else:
            labels[bg_inds] = 0
            labels[anchors_with_max_overlap] = gt_classes[gt_inds_force]

        fg_inds = torch.nonzero(labels > 0, as_tuple=False)[:, 0]
        bbox_targets = anchors.new_zeros((num_anchors, self.box_coder.code_size))
        if num_gt > 0 and num_anchors > 0 and len(fg_inds) > 0:
            fg_gt_boxes = gt_boxes[anchor_to_gt_argmax[fg_inds], :]
            bbox_targets[fg_inds, :] = self.box_coder.encode_torch(fg_gt_boxes, anchors[fg_inds, :]).to(anchors.dtype)

        reg_weights = anchors.new_zeros((num_anchors,))
        if self.norm_by_num_examples:
            num_examples = max(float((labels >= 0).sum()), 1.0)
            reg_weights[labels > 0] = 1.0 / num_examples
        else:
            reg_weights[labels > 0] = 1.0
        return {"box_cls_labels": labels, "box_reg_targets": bbox_targets, "reg_weights": reg_weights}
