"""Pivotal-position logit KD: positions on hand-built maps, the anchor layout, GT centres, and the loss being
blind to everything outside the positions."""
import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.kd.distill_heads import KD_HEADS, GridInfo, KDContext
from pcdet.kd.distill_heads.pivotal_kd import pivotal_mask

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def _grid():
    # 10 x 8 voxels of 1 m over [0, 10] x [0, 8]; stride-2 maps are 4 x 5 (H x W)
    return GridInfo(np.array([0, 0, -2, 10, 8, 2], dtype=np.float32), np.array([1.0, 1.0, 4.0], dtype=np.float32),
                    CLASSES, {})


def _head(shapes, box_shapes=None, **kw):
    cfg = EasyDict(dict({"NAME": "PivotalLogitKD", "TEACHER_TAP": "t", "STUDENT_TAP": "s", "TYPE": "heatmap",
                         "TOPK": 2, "LOSS_WEIGHT": 1.0}, **kw))
    role_shapes = {"logits": ([shapes], [shapes])}
    if box_shapes is not None:
        role_shapes["boxes"] = ([box_shapes], [box_shapes])
    taps = {r: (["t"], ["s"]) for r in role_shapes}
    return KD_HEADS.get("PivotalLogitKD")(cfg, KDContext(taps=taps, shapes=role_shapes, teacher=_grid(),
                                                         student=_grid()))


def test_pivotal_mask_topk_ties_and_extra():
    conf = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2]])
    # the two 0.9s (indices 1 and 3); a tie at the k-th place goes to the lower index
    assert pivotal_mask(conf, 2).tolist() == [[False, True, False, True, False]]
    assert pivotal_mask(conf, 1).tolist() == [[False, True, False, False, False]]
    extra = torch.tensor([[True, False, False, False, False]])
    assert pivotal_mask(conf, 1, extra).tolist() == [[True, True, False, False, False]]
    assert pivotal_mask(conf, 10).all()


def test_heatmap_positions_are_the_teachers_most_confident_cells():
    head = _head((1, 2, 4, 5), TOPK=2)
    t = torch.full((1, 2, 4, 5), -5.0)
    t[0, 0, 1, 3] = 2.0      # most confident cell (class 0)
    t[0, 1, 2, 0] = 1.0      # second (class 1): the max over classes decides
    t[0, 1, 1, 3] = -1.0
    mask, _ = head._positions(t, {})
    assert torch.nonzero(mask[0, 0]).tolist() == [[1, 3], [2, 0]]
    # the student matches the teacher on both cells: loss 0 whatever it does elsewhere
    s = t.clone()
    s[0, :, 3, 4] = 7.0
    s.requires_grad_(True)
    loss = head({"logits": ([t], [s])}, {})["kd_pivotallogitkd"]
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert s.grad[0, :, 3, 4].abs().sum() == 0
    # a change at a distilled cell is seen
    s2 = t.clone()
    s2[0, 0, 2, 0] = 3.0
    assert head({"logits": ([t], [s2])}, {})["kd_pivotallogitkd"].item() > 1e-3
    assert head.stats["positions"] == 2


def test_gt_centres_join_the_positions():
    head = _head((1, 2, 4, 5), TOPK=1, GT_CENTRES=True)
    t = torch.full((1, 2, 4, 5), -5.0)
    t[0, 0, 0, 0] = 3.0
    gt = torch.zeros(1, 2, 8)
    gt[0, 0] = torch.tensor([7.5, 5.1, 0, 2, 1, 1, 0, 2])   # x 7.5 m -> column 3, y 5.1 m -> row 2 (2 m cells)
    mask, _ = head._positions(t, {"gt_boxes": gt})
    assert torch.nonzero(mask[0, 0]).tolist() == [[0, 0], [2, 3]]
    with pytest.raises(KeyError, match="gt_boxes"):
        head._positions(t, {})


def test_anchor_layout_per_anchor_positions_and_box_term():
    # 2 anchors x 3 classes = 6 channels laid out anchor-major, as OpenPCDet's conv_cls; boxes 2 x 7
    head = _head((1, 6, 4, 5), box_shapes=(1, 14, 4, 5), TYPE="anchor", TOPK=1, LOSS_TYPE="kl", TEMPERATURE=2.0,
                 BOX={"TEACHER_TAP": "tb", "STUDENT_TAP": "sb", "LOSS_WEIGHT": 0.5})
    t = torch.full((1, 6, 4, 5), -5.0)
    t[0, 3 + 2, 1, 4] = 4.0   # anchor 1, class 2 (Cyclist) at row 1, column 4
    mask, view = head._positions(t, {})
    assert view.shape == (1, 2, 3, 4, 5)
    assert torch.nonzero(mask).tolist() == [[0, 1, 1, 4]]
    bt = torch.randn(1, 14, 4, 5)
    bs = bt.clone()
    bs[0, 0:7] += 1.0            # anchor 0 differs everywhere: not distilled
    out = head({"logits": ([t], [t.clone()]), "boxes": ([bt], [bs])}, {})
    assert out["kd_pivotallogitkd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["kd_pivotallogitkd_box"].item() == pytest.approx(0.0, abs=1e-6)
    bs[0, 7 + 3, 1, 4] += 2.0    # anchor 1's 4th box value at the distilled position
    out = head({"logits": ([t], [t.clone()]), "boxes": ([bt], [bs])}, {})
    assert out["kd_pivotallogitkd_box"].item() == pytest.approx(0.5 * 2.0 / 7, rel=1e-5)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="TYPE must be"):
        _head((1, 2, 4, 5), TYPE="dense")
    with pytest.raises(ValueError, match="anchor class logits must be"):
        _head((1, 5, 4, 5), TYPE="anchor")
    with pytest.raises(ValueError, match="TEMPERATURE applies"):
        _head((1, 2, 4, 5), TEMPERATURE=2.0)
    with pytest.raises(ValueError, match="distils nothing"):
        _head((1, 2, 4, 5), TOPK=0)
