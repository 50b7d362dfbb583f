"""AnchorHeadSingle: one 1x1-conv head over all classes (PointPillars, SECOND)."""
import numpy as np
import torch.nn as nn

from . import DENSE_HEADS
from ... import batch_keys as K
from .anchor_head_template import AnchorHeadTemplate


@DENSE_HEADS.register
class AnchorHeadSingle(AnchorHeadTemplate):
    """``conv_cls``, ``conv_box`` and ``conv_dir_cls`` (when ``USE_DIRECTION_CLASSIFIER``), 1x1 convs on
    ``spatial_features_2d`` (B, C, H, W). The anchor head has no shared conv, so the width multiplier leaves it
    unchanged (its input width follows the BEV backbone).
    """

    # gt_boxes is needed in training only and checked there, so test splits without labels still build
    REQUIRED_KEYS = (K.SPATIAL_FEATURES_2D, K.BATCH_SIZE)
    PROVIDED_KEYS = (K.BATCH_CLS_PREDS, K.BATCH_BOX_PREDS, K.CLS_PREDS_NORMALIZED)

    def __init__(self, model_cfg, input_channels, num_class, class_names, grid_size, point_cloud_range,
                 predict_boxes_when_training=True, **kwargs):
        super().__init__(model_cfg=model_cfg, num_class=num_class, class_names=class_names, grid_size=grid_size,
                         point_cloud_range=point_cloud_range, predict_boxes_when_training=predict_boxes_when_training)
        self.num_anchors_per_location = sum(self.num_anchors_per_location)
        self.conv_cls = nn.Conv2d(input_channels, self.num_anchors_per_location * self.num_class, kernel_size=1)
        self.conv_box = nn.Conv2d(input_channels, self.num_anchors_per_location * self.box_coder.code_size,
                                  kernel_size=1)
        if self.model_cfg.get("USE_DIRECTION_CLASSIFIER", None):
            self.conv_dir_cls = nn.Conv2d(input_channels, self.num_anchors_per_location * self.model_cfg.NUM_DIR_BINS,
                                          kernel_size=1)
        else:
            self.conv_dir_cls = None
        self.init_weights()

    def init_weights(self):
        pi = 0.01
        nn.init.constant_(self.conv_cls.bias, -np.log((1 - pi) / pi))
        nn.init.normal_(self.conv_box.weight, mean=0, std=0.001)

    def forward(self, data_dict):
        """Reads ``spatial_features_2d`` (B, C, H, W) (and ``gt_boxes`` in training); writes
        ``batch_cls_preds`` (B, A, num_class), ``batch_box_preds`` (B, A, 7), ``cls_preds_normalized`` (False)
        at inference or when ``predict_boxes_when_training``."""
        K.check_keys(data_dict, self.REQUIRED_KEYS, type(self).__name__)
        spatial_features_2d = data_dict[K.SPATIAL_FEATURES_2D]
        cls_preds = self.conv_cls(spatial_features_2d).permute(0, 2, 3, 1).contiguous()
        box_preds = self.conv_box(spatial_features_2d).permute(0, 2, 3, 1).contiguous()
        expected = self.anchors_0.shape[1:3]
        if tuple(cls_preds.shape[1:3]) != tuple(expected):
            raise ValueError(
                f"AnchorHeadSingle: spatial_features_2d {tuple(spatial_features_2d.shape)} has a (H, W) of "
                f"{tuple(cls_preds.shape[1:3])} but the anchors were built for {tuple(expected)} "
                f"(grid_size // feature_map_stride)"
            )
        self.forward_ret_dict = {"cls_preds": cls_preds, "box_preds": box_preds}
        if self.conv_dir_cls is not None:
            dir_cls_preds = self.conv_dir_cls(spatial_features_2d).permute(0, 2, 3, 1).contiguous()
        else:
            dir_cls_preds = None
        self.forward_ret_dict["dir_cls_preds"] = dir_cls_preds

        if self.training:
            K.check_keys(data_dict, (K.GT_BOXES,), type(self).__name__)
            self.forward_ret_dict.update(self.assign_targets(gt_boxes=data_dict[K.GT_BOXES]))

        if not self.training or self.predict_boxes_when_training:
            batch_cls_preds, batch_box_preds = self.generate_predicted_boxes(
                batch_size=data_dict[K.BATCH_SIZE], cls_preds=cls_preds, box_preds=box_preds,
                dir_cls_preds=dir_cls_preds,
            )
            data_dict[K.BATCH_CLS_PREDS] = batch_cls_preds
            data_dict[K.BATCH_BOX_PREDS] = batch_box_preds
            data_dict[K.CLS_PREDS_NORMALIZED] = False
        return data_dict
