"""AnchorGenerator, AxisAlignedTargetAssigner, AnchorHeadSingle and the template's NMS post-processing."""
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models.dense_heads.anchor_head_single import AnchorHeadSingle
from pcdet.models.dense_heads.target_assigner.anchor_generator import AnchorGenerator
from pcdet.models.detectors.detector3d_template import Detector3DTemplate

REPO = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["Car", "Pedestrian", "Cyclist"]
PC_RANGE = np.array([0.0, -4.0, -3.0, 8.0, 4.0, 1.0], dtype=np.float32)
GRID = np.array([16, 16, 1])  # feature_map_stride 2 -> 8 x 8 head map with 1 m cells


def head_cfg():
    cfg = cfg_from_yaml_file(REPO / "tools" / "cfgs" / "kitti_models" / "pointpillar.yaml")
    return cfg.MODEL.DENSE_HEAD


def make_head():
    return AnchorHeadSingle(model_cfg=head_cfg(), input_channels=8, num_class=3, class_names=CLASS_NAMES,
                            grid_size=GRID, point_cloud_range=PC_RANGE, predict_boxes_when_training=False)


def test_anchor_generator_layout():
    cfg = [{"class_name": "Car", "anchor_sizes": [[3.9, 1.6, 1.56]], "anchor_rotations": [0, 1.57],
            "anchor_bottom_heights": [-1.78], "align_center": False}]
    anchors, per_loc = AnchorGenerator(PC_RANGE, cfg).generate_anchors([[5, 3]])
    assert per_loc == [2]
    a = anchors[0]
    assert a.shape == (1, 3, 5, 1, 2, 7)
    torch.testing.assert_close(a[0, 0, 0, 0, 0, :3], torch.tensor([0.0, -4.0, -1.78 + 1.56 / 2]))
    torch.testing.assert_close(a[0, 2, 4, 0, 1], torch.tensor([8.0, 4.0, -1.0, 3.9, 1.6, 1.56, 1.57]))
    torch.testing.assert_close(a[0, 1, 2, 0, :, 0], torch.tensor([4.0, 4.0]))  # x follows the last grid axis

    cfg[0]["align_center"] = True
    centred = AnchorGenerator(PC_RANGE, cfg).generate_anchors([[4, 4]])[0][0]
    torch.testing.assert_close(centred[0, 0, 0, 0, 0, :2], torch.tensor([1.0, -3.0]))


def test_target_assignment_labels_and_targets():
    head = make_head()
    anchors = head._flat_anchors().view(-1, 7)  # (8 * 8 * 6, 7): per cell Car(0, 90), Ped(0, 90), Cyc(0, 90)
    # a car exactly on the anchor of cell (y=3, x=2) with heading 90 deg; a pedestrian box rotated by 90 deg
    car = anchors[(3 * 8 + 2) * 6 + 1].clone()
    ped = anchors[(5 * 8 + 6) * 6 + 2].clone()
    ped[6] = math.pi / 2
    gt = torch.stack([torch.cat([car, torch.tensor([1.0])]), torch.cat([ped, torch.tensor([2.0])]),
                      torch.zeros(8)]).unsqueeze(0)
    targets = head.assign_targets(gt)
    labels = targets["box_cls_labels"][0]
    assert labels.shape == (384,)
    assert labels[(3 * 8 + 2) * 6 + 1] == 1
    # the 90-degree pedestrian matches both aligned pedestrian anchors of its cell (nearest-BEV IoU 1)
    assert labels[(5 * 8 + 6) * 6 + 2] == 2 and labels[(5 * 8 + 6) * 6 + 3] == 2
    # the 0-degree car anchor of that cell overlaps a 90-degree car by nearest-BEV IoU 0.26 < 0.45: background
    assert labels[(3 * 8 + 2) * 6 + 0] == 0
    assert sorted(torch.nonzero(labels > 0).view(-1).tolist()) == [157, 278, 279]
    assert (labels[[(0 * 8 + 0) * 6 + k for k in range(6)]] == 0).all()  # far away: background
    assert (labels == -1).any()  # partial overlaps between the thresholds are ignored
    pos = (3 * 8 + 2) * 6 + 1
    torch.testing.assert_close(targets["box_reg_targets"][0, pos], torch.zeros(7), atol=1e-6, rtol=0)
    assert targets["reg_weights"][0, pos] == 1.0
    assert (targets["box_reg_targets"][0][labels <= 0] == 0).all()

    empty = head.assign_targets(torch.zeros(1, 2, 8))
    assert (empty["box_cls_labels"] == 0).all()


def test_head_forward_outputs_hooks_loss_and_decoding():
    torch.manual_seed(0)
    head = make_head()
    seen = {}
    handles = [getattr(head, n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.shape))
               for n in ("conv_cls", "conv_box", "conv_dir_cls")]
    feats = torch.randn(2, 8, 8, 8)
    gt = torch.tensor([[[4.0, 0.0, -1.0, 3.9, 1.6, 1.56, 0.2, 1.0]], [[2.0, 2.0, -1.0, 0.8, 0.6, 1.7, 0.0, 2.0]]])
    head.train()
    head({"spatial_features_2d": feats, "batch_size": 2, "gt_boxes": gt})
    for h in handles:
        h.remove()
    assert seen == {"conv_cls": (2, 18, 8, 8), "conv_box": (2, 42, 8, 8), "conv_dir_cls": (2, 12, 8, 8)}
    ret = head.forward_ret_dict
    assert ret["cls_preds"].shape == (2, 8, 8, 18) and ret["box_preds"].shape == (2, 8, 8, 42)
    assert ret["dir_cls_preds"].shape == (2, 8, 8, 12)
    loss, tb = head.get_loss()
    assert torch.isfinite(loss)
    assert math.isclose(tb["rpn_loss"], tb["rpn_loss_cls"] + tb["rpn_loss_loc"] + tb["rpn_loss_dir"], rel_tol=1e-5)
    loss.backward()
    assert head.conv_dir_cls.weight.grad.abs().sum() > 0

    # zero regression decodes to the anchors; direction bin 1 covers [DIR_OFFSET + pi, DIR_OFFSET + 2 pi)
    cls_preds, box_preds = head.generate_predicted_boxes(
        1, torch.zeros(1, 8, 8, 18), torch.zeros(1, 8, 8, 42),
        dir_cls_preds=torch.tensor([0.0, 1.0]).repeat(1, 8, 8, 6))
    anchors = head._flat_anchors().view(-1, 7)
    assert cls_preds.shape == (1, 384, 3)
    torch.testing.assert_close(box_preds[0, :, :6], anchors[:, :6])
    expected_heading = torch.where(anchors[:, 6] > 0.78539, anchors[:, 6] + math.pi, anchors[:, 6] + 2 * math.pi)
    torch.testing.assert_close(box_preds[0, :, 6], expected_heading, atol=1e-5, rtol=0)


def test_head_rejects_wrong_feature_map():
    head = make_head().eval()
    with pytest.raises(ValueError, match=r"anchors were built for \(8, 8\)"):
        head({"spatial_features_2d": torch.randn(1, 8, 4, 4), "batch_size": 1})


def post_processor(multi_classes):
    cfg = EasyDict(POST_PROCESSING=dict(
        RECALL_THRESH_LIST=[0.3, 0.7], SCORE_THRESH=0.1, OUTPUT_RAW_SCORE=False,
        NMS_CONFIG=dict(MULTI_CLASSES_NMS=multi_classes, NMS_TYPE="nms_gpu", NMS_THRESH=0.1,
                        NMS_PRE_MAXSIZE=100, NMS_POST_MAXSIZE=10)))
    dataset = SimpleNamespace(class_names=CLASS_NAMES)
    return Detector3DTemplate(cfg, 3, dataset)


def nms_batch():
    boxes = torch.tensor([[[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],
                           [0.2, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],     # overlaps box 0
                           [10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],
                           [20.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]]])  # below the score threshold
    logits = torch.logit(torch.tensor([[[0.9, 0.05, 0.05], [0.05, 0.8, 0.05], [0.05, 0.05, 0.6],
                                        [0.05, 0.05, 0.05]]]))
    gt = torch.tensor([[[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 1], [10.0, 0.5, 0.0, 4.0, 2.0, 1.5, 0.0, 3],
                        [0, 0, 0, 0, 0, 0, 0, 0]]])
    return {"batch_size": 1, "batch_box_preds": boxes, "batch_cls_preds": logits, "cls_preds_normalized": False,
            "gt_boxes": gt}


def test_post_processing_class_agnostic_nms_and_recall():
    pred_dicts, recall = post_processor(False).post_processing(nms_batch())
    pred = pred_dicts[0]
    torch.testing.assert_close(pred["pred_scores"], torch.tensor([0.9, 0.6]))
    assert pred["pred_labels"].tolist() == [1, 3]
    torch.testing.assert_close(pred["pred_boxes"][:, 0], torch.tensor([0.0, 10.0]))
    assert recall["gt"] == 2
    assert recall["rcnn_0.3"] == 2 and recall["rcnn_0.7"] == 1  # 0.5 m offset: 3D IoU 0.6
    assert recall["roi_0.3"] == 0


def test_post_processing_multi_class_nms_keeps_other_class():
    pred = post_processor(True).post_processing(nms_batch())[0][0]
    order = torch.argsort(pred["pred_boxes"][:, 0] + pred["pred_labels"] * 0.01)
    assert pred["pred_labels"][order].tolist() == [1, 2, 3]  # the overlapping pedestrian survives per-class NMS
    torch.testing.assert_close(pred["pred_scores"][order], torch.tensor([0.9, 0.8, 0.6]))
