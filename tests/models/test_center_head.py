"""CenterHead and SeparateHead: module layout, targets of task groups, loss terms, decoding and NMS options."""
import copy
import math

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet import batch_keys as K
from pcdet.models.dense_heads.center_head import CenterHead, SeparateHead
from pcdet.models.model_utils import centernet_utils as cu

CLASS_NAMES = ["car", "truck", "pedestrian"]
PC_RANGE = np.array([0.0, -4.0, -3.0, 8.0, 4.0, 1.0], dtype=np.float32)
VOXEL = [0.5, 0.5, 4.0]
GRID = np.array([16, 16, 1])
STRIDE = 2  # head map 8 x 8 of 1 m pixels


def head_cfg(groups=(("car",), ("pedestrian", "truck")), vel=False, nms_type="nms_gpu", nms_thresh=0.5):
    head_dict = {
        "center": {"out_channels": 2, "num_conv": 2},
        "center_z": {"out_channels": 1, "num_conv": 2},
        "dim": {"out_channels": 3, "num_conv": 2},
        "rot": {"out_channels": 2, "num_conv": 2},
    }
    order = ["center", "center_z", "dim", "rot"]
    if vel:
        head_dict["vel"] = {"out_channels": 2, "num_conv": 2}
        order.append("vel")
    return EasyDict({
        "NAME": "CenterHead",
        "CLASS_NAMES_EACH_HEAD": [list(g) for g in groups],
        "SHARED_CONV_CHANNEL": 16,
        "USE_BIAS_BEFORE_NORM": True,
        "NUM_HM_CONV": 2,
        "SEPARATE_HEAD_CFG": {"HEAD_ORDER": order, "HEAD_DICT": head_dict},
        "TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": STRIDE, "NUM_MAX_OBJS": 4, "GAUSSIAN_OVERLAP": 0.1,
                                   "MIN_RADIUS": 2},
        "LOSS_CONFIG": {"LOSS_WEIGHTS": {"cls_weight": 1.0, "loc_weight": 2.0,
                                         "code_weights": [1.0] * (10 if vel else 8)}},
        "POST_PROCESSING": {"SCORE_THRESH": 0.1, "POST_CENTER_LIMIT_RANGE": [-1, -5, -5, 9, 5, 5],
                            "MAX_OBJ_PER_SAMPLE": 20,
                            "NMS_CONFIG": {"NMS_TYPE": nms_type, "NMS_THRESH": nms_thresh, "NMS_PRE_MAXSIZE": 100,
                                           "NMS_POST_MAXSIZE": 50}},
    })


def make_head(cfg=None, input_channels=8, width=None):
    torch.manual_seed(0)
    return CenterHead(cfg or head_cfg(), input_channels=input_channels, num_class=len(CLASS_NAMES),
                      class_names=CLASS_NAMES, grid_size=GRID, point_cloud_range=PC_RANGE, voxel_size=VOXEL,
                      width=width)


def test_separate_head_outputs_and_init():
    sep = SeparateHead(8, {"center": {"out_channels": 2, "num_conv": 2}, "hm": {"out_channels": 3, "num_conv": 2}},
                       init_bias=-2.19, use_bias=True)
    out = sep(torch.randn(2, 8, 5, 6))
    assert list(out) == ["center", "hm"]
    assert out["center"].shape == (2, 2, 5, 6) and out["hm"].shape == (2, 3, 5, 6)
    assert torch.all(sep.hm[-1].bias == -2.19)
    assert torch.all(sep.center[-1].bias == 0)
    assert sep.center[0][0].bias is not None
    assert set(k for k, _ in sep.named_parameters()) >= {"center.0.0.weight", "center.0.1.weight", "center.1.weight"}


def test_head_layout_task_groups_and_width():
    head = make_head()
    assert head.class_names_each_head == [["car"], ["pedestrian", "truck"]]
    assert head.class_id_mapping_each_head == [[0], [2, 1]]
    assert len(head.heads_list) == 2
    assert head.heads_list[1].hm[-1].out_channels == 2
    assert head.shared_conv[0].out_channels == 16

    half = make_head(width=0.5)
    assert half.shared_conv[0].out_channels == 8
    assert half.heads_list[0].center[0][0].in_channels == 8
    # shared conv: 3x3 conv with bias + BN; per branch: conv-BN (with bias) + final conv, for C shared channels
    def expected(c, cin=8, outs=(2, 1, 3, 2)):
        shared = cin * c * 9 + c + 2 * c
        branch = lambda o: c * c * 9 + c + 2 * c + c * o * 9 + o
        return shared + sum(branch(o) for o in outs + (1,)) + sum(branch(o) for o in outs + (2,))
    assert sum(p.numel() for p in head.parameters()) == expected(16)
    assert sum(p.numel() for p in half.parameters()) == expected(8)


def test_head_config_errors_name_the_key():
    cfg = head_cfg(groups=(("car",), ("truck",)))
    with pytest.raises(ValueError, match="CLASS_NAMES_EACH_HEAD"):
        make_head(cfg)
    cfg = head_cfg()
    cfg.LOSS_CONFIG.LOSS_WEIGHTS.code_weights = [1.0] * 7
    with pytest.raises(ValueError, match="code_weights"):
        make_head(cfg)
    cfg = head_cfg()
    cfg.SEPARATE_HEAD_CFG.HEAD_ORDER = ["center", "center_z", "dim", "rot", "vel"]
    with pytest.raises(ValueError, match="HEAD_DICT"):
        make_head(cfg)
    head = make_head()
    with pytest.raises(ValueError, match="class ids"):
        head.assign_targets(torch.tensor([[[1.0, 0, 0, 1, 1, 1, 0, 4]]]), feature_map_size=(8, 8))
    with pytest.raises(ValueError, match="FEATURE_MAP_STRIDE"):
        head.eval()({K.SPATIAL_FEATURES_2D: torch.zeros(1, 8, 16, 16), K.BATCH_SIZE: 1})


def _gt():
    # [x, y, z, dx, dy, dz, heading, class]; truck (global 2) and pedestrian (global 3)
    return torch.tensor([[
        [3.25, 0.75, -1.0, 4.0, 2.0, 1.5, 0.3, 2],
        [6.5, -2.5, -0.5, 0.8, 0.6, 1.7, -1.0, 3],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ]])


def test_assign_targets_routes_classes_to_task_groups():
    head = make_head()
    targets = head.assign_targets(_gt(), feature_map_size=(8, 8))
    hm0, hm1 = targets["heatmaps"]
    assert hm0.shape == (1, 1, 8, 8) and hm1.shape == (1, 2, 8, 8)
    assert hm0.abs().sum().item() == 0.0            # no car
    assert hm1[0, 1, 4, 3].item() == 1.0            # truck: channel 1 of ['pedestrian', 'truck']
    assert hm1[0, 0, 1, 6].item() == 1.0            # pedestrian: col 6, row int(-2.5 + 4) = 1
    assert hm1[0, 0, 4, 3].item() < 1.0
    assert targets["masks"][0].tolist() == [[0, 0, 0, 0]]
    assert targets["masks"][1].tolist() == [[1, 1, 0, 0]]
    assert targets["inds"][1][0, :2].tolist() == [4 * 8 + 3, 1 * 8 + 6]
    tb = targets["target_boxes"][1][0, 1]
    expected = [0.5, 0.5, -0.5, math.log(0.8), math.log(0.6), math.log(1.7), math.cos(-1.0), math.sin(-1.0)]
    assert tb.tolist() == pytest.approx(expected, abs=1e-6)


def test_assign_targets_velocity_columns():
    head = make_head(head_cfg(vel=True))
    gt = torch.tensor([[[3.25, 0.75, -1.0, 4.0, 2.0, 1.5, 0.3, 1.5, -2.0, 1]]])
    targets = head.assign_targets(gt, feature_map_size=(8, 8))
    assert targets["target_boxes"][0].shape == (1, 4, 10)
    assert targets["target_boxes"][0][0, 0, 8:].tolist() == [1.5, -2.0]
    with pytest.raises(ValueError, match="HEAD_ORDER"):
        head.assign_targets(_gt(), feature_map_size=(8, 8))
    # velocities in gt without a vel branch: the 7-DoF box is regressed
    plain = make_head()
    t = plain.assign_targets(gt, feature_map_size=(8, 8))
    assert t["target_boxes"][0].shape == (1, 4, 8)
    assert t["masks"][0].tolist() == [[1, 0, 0, 0]]


def _perfect_predictions(head, targets, logit=8.0):
    """Predictions equal to the regression targets everywhere at the object pixels, heatmap logits from targets."""
    preds = []
    for idx, sep in enumerate(head.heads_list):
        hm_t = targets["heatmaps"][idx]
        pred = {"hm": torch.where(hm_t == 1, torch.full_like(hm_t, logit), torch.full_like(hm_t, -logit))}
        code = torch.zeros(1, head.code_size, 8, 8)
        for row in range(targets["masks"][idx].shape[1]):
            if targets["masks"][idx][0, row]:
                ind = targets["inds"][idx][0, row].item()
                code[0, :, ind // 8, ind % 8] = targets["target_boxes"][idx][0, row]
        start = 0
        for name in head.head_order:
            n = head.separate_head_cfg.HEAD_DICT[name]["out_channels"]
            pred[name] = code[:, start:start + n]
            start += n
        preds.append(pred)
    return preds


def test_loss_terms_weights_and_zero_regression():
    head = make_head()
    targets = head.assign_targets(_gt(), feature_map_size=(8, 8))
    preds = _perfect_predictions(head, targets)
    head.forward_ret_dict = {"pred_dicts": preds, "target_dicts": targets}
    loss, tb = head.get_loss()
    assert tb["loc_loss_head_0"] == 0.0 and tb["loc_loss_head_1"] == 0.0
    expected_hm = sum(
        cu.neg_loss_cornernet(head.sigmoid(p["hm"]), t).item() for p, t in zip(preds, targets["heatmaps"])
    )
    assert loss.item() == pytest.approx(expected_hm, rel=1e-6)
    assert tb["rpn_loss"] == pytest.approx(loss.item())

    # offset dim (channels 3..5) by +0.5 at the truck and the pedestrian: L1 = 3 * 0.5 per object,
    # mean over 2 objects, times code weight 1 and loc_weight 2 -> 3.0
    preds[1]["dim"] = preds[1]["dim"].clone()
    preds[1]["dim"][0, :, 4, 3] += 0.5
    preds[1]["dim"][0, :, 1, 6] += 0.5
    _, tb = head.get_loss()
    assert tb["loc_loss_head_1"] == pytest.approx(2.0 * 1.5, rel=1e-6)
    head.model_cfg.LOSS_CONFIG.LOSS_WEIGHTS.code_weights = [1, 1, 1, 0.1, 0.1, 0.1, 1, 1]
    _, tb = head.get_loss()
    assert tb["loc_loss_head_1"] == pytest.approx(2.0 * 0.15, rel=1e-5)


def test_decoding_maps_task_group_labels_to_global_ids():
    head = make_head().eval()
    targets = head.assign_targets(_gt(), feature_map_size=(8, 8))
    preds = _perfect_predictions(head, targets)
    out = head.generate_predicted_boxes(1, preds)[0]
    order = torch.argsort(out["pred_boxes"][:, 0])
    boxes, labels = out["pred_boxes"][order], out["pred_labels"][order]
    assert labels.tolist() == [2, 3]  # truck, pedestrian: 1-based global ids
    assert boxes[0].tolist() == pytest.approx([3.25, 0.75, -1.0, 4.0, 2.0, 1.5, 0.3], abs=1e-5)
    assert boxes[1].tolist() == pytest.approx([6.5, -2.5, -0.5, 0.8, 0.6, 1.7, -1.0], abs=1e-5)
    assert out["pred_scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(8.0)).item()] * 2)


def _two_overlapping_groups_preds(head):
    """Task group 0 (car) and task group 1 (truck) both predict the same box at pixel (4, 3)."""
    preds = []
    for idx, sep in enumerate(head.heads_list):
        n_cls = sep.hm[-1].out_channels
        hm = torch.full((1, n_cls, 8, 8), -8.0)
        hm[0, n_cls - 1, 4, 3] = 3.0 if idx == 0 else 2.0
        rot = torch.zeros(1, 2, 8, 8)
        rot[:, 0] = 1.0
        preds.append({"hm": hm, "center": torch.full((1, 2, 8, 8), 0.5), "center_z": torch.zeros(1, 1, 8, 8),
                      "dim": torch.full((1, 3, 8, 8), math.log(2.0)), "rot": rot})
    return preds


@pytest.mark.parametrize("nms_type,expected_labels", [
    ("nms_gpu", [1, 2]),             # NMS runs per task group: both survive
    ("class_specific_nms", [1, 2]),
    ("circle_nms", [1, 2]),
])
def test_nms_runs_within_each_task_group(nms_type, expected_labels):
    head = make_head(head_cfg(groups=(("car",), ("pedestrian", "truck")), nms_type=nms_type,
                              nms_thresh=0.5)).eval()
    out = head.generate_predicted_boxes(1, _two_overlapping_groups_preds(head))[0]
    assert sorted(out["pred_labels"].tolist()) == expected_labels


def test_nms_options_inside_one_task_group():
    cfg = head_cfg(groups=(("car", "truck", "pedestrian"),), nms_type="nms_gpu", nms_thresh=0.5)
    head = make_head(cfg).eval()
    hm = torch.full((1, 3, 8, 8), -8.0)
    hm[0, 0, 4, 3] = 3.0   # car
    hm[0, 1, 4, 3] = 2.0   # truck, same box
    hm[0, 0, 1, 6] = 1.0   # car far away
    rot = torch.zeros(1, 2, 8, 8)
    rot[:, 0] = 1.0
    preds = [{"hm": hm, "center": torch.full((1, 2, 8, 8), 0.5), "center_z": torch.zeros(1, 1, 8, 8),
              "dim": torch.full((1, 3, 8, 8), math.log(2.0)), "rot": rot}]
    out = head.generate_predicted_boxes(1, copy.deepcopy(preds))[0]
    assert sorted(out["pred_labels"].tolist()) == [1, 1]            # class-agnostic: the truck is suppressed

    head.model_cfg.POST_PROCESSING.NMS_CONFIG.NMS_TYPE = "class_specific_nms"
    out = head.generate_predicted_boxes(1, copy.deepcopy(preds))[0]
    assert sorted(out["pred_labels"].tolist()) == [1, 1, 2]         # per class: the truck survives

    head.model_cfg.POST_PROCESSING.NMS_CONFIG.NMS_THRESH = [0.5, 0.5]  # one entry short for class 'pedestrian'
    hm[0, 2, 7, 0] = 2.0   # pedestrian at (0.5, 3.5), 4.2 m from the first car
    with pytest.raises(ValueError, match="NMS_THRESH"):
        head.generate_predicted_boxes(1, copy.deepcopy(preds))

    head.model_cfg.POST_PROCESSING.NMS_CONFIG.NMS_TYPE = "circle_nms"
    head.model_cfg.POST_PROCESSING.NMS_CONFIG.NMS_THRESH = 4.0  # metres: boxes 4.2 m from the first car survive
    out = head.generate_predicted_boxes(1, copy.deepcopy(preds))[0]
    assert sorted(out["pred_labels"].tolist()) == [1, 1, 3]


def test_forward_train_and_eval_keys():
    head = make_head()
    feats = torch.randn(1, 8, 8, 8)
    batch = {K.SPATIAL_FEATURES_2D: feats, K.BATCH_SIZE: 1, K.GT_BOXES: _gt()}
    head.train()
    out = head(batch)
    assert K.FINAL_BOX_DICTS not in out
    assert set(head.forward_ret_dict) == {"pred_dicts", "target_dicts"}
    assert set(head.forward_ret_dict["pred_dicts"][1]) == {"center", "center_z", "dim", "rot", "hm"}
    loss, tb = head.get_loss()
    assert torch.isfinite(loss) and set(tb) == {"hm_loss_head_0", "loc_loss_head_0", "hm_loss_head_1",
                                                "loc_loss_head_1", "rpn_loss"}
    head.eval()
    out = head({K.SPATIAL_FEATURES_2D: feats, K.BATCH_SIZE: 1})
    final = out[K.FINAL_BOX_DICTS]
    assert len(final) == 1 and set(final[0]) == {"pred_boxes", "pred_scores", "pred_labels"}
    assert final[0]["pred_boxes"].shape[1] == 7
    if final[0]["pred_labels"].numel():
        assert final[0]["pred_labels"].min() >= 1 and final[0]["pred_labels"].max() <= 3
    head.train()
    with pytest.raises(KeyError, match="gt_boxes"):
        head({K.SPATIAL_FEATURES_2D: feats, K.BATCH_SIZE: 1})


def test_peak_kernel_defaults_to_openpcdet_decoding():
    """Default PEAK_KERNEL 1: a pixel next to a stronger one is still a candidate (OpenPCDet decodes every pixel);
    3 keeps only the local maximum."""
    cfg = head_cfg(nms_type="nms_gpu", nms_thresh=0.99)
    assert "PEAK_KERNEL" not in cfg["POST_PROCESSING"]
    preds = _two_overlapping_groups_preds(make_head(cfg).eval())  # one box per group at (4, 3)
    preds[0]["hm"][0, 0, 4, 5] = 1.0  # a weaker neighbour two cells away in x (no box overlap at 0.99 IoU)
    preds[0]["hm"][0, 0, 4, 4] = 2.0  # and a stronger-than-it neighbour next to the peak
    default = make_head(cfg).eval().generate_predicted_boxes(1, preds)[0]
    assert len(default["pred_scores"]) == 3 + 1
    cfg["POST_PROCESSING"]["PEAK_KERNEL"] = 3
    pooled = make_head(cfg).eval().generate_predicted_boxes(1, preds)[0]
    assert len(pooled["pred_scores"]) == 1 + 1  # (4, 3) suppresses (4, 4), which suppresses (4, 5)
