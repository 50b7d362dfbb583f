"""Label KD: teacher boxes join the GT (GT precedence, thresholds, class mapping) and the term is the student
head's own loss on the merged targets."""
import pytest
import torch

import kd_tiny_setup as S
from pcdet import batch_keys as K
from pcdet.kd.distill_heads.label_kd import head_targets, merge_teacher_boxes

RANGE = [0.0, -8.0, -3.0, 16.0, 8.0, 1.0]
LABEL_HEAD = {"NAME": "LabelKD", "SCORE_THRESH": 0.3, "LOSS_WEIGHT": 0.5}


def _pred(boxes, scores, labels):
    return {"pred_boxes": torch.tensor(boxes, dtype=torch.float32), "pred_scores": torch.tensor(scores),
            "pred_labels": torch.tensor(labels)}


def _box(x, y, dx=4.0, dy=2.0):
    return [x, y, -1.0, dx, dy, 1.5, 0.0]


def test_teacher_boxes_join_the_gt_and_the_gt_wins_where_they_overlap():
    gt = torch.zeros(2, 2, 8)
    gt[0, 0] = torch.tensor(_box(5.0, 0.0) + [1.0])           # sample 0: one real GT box and a padding row
    preds = [
        _pred([_box(5.5, 0.2),          # overlaps the GT: dropped (GT precedence)
               _box(12.0, 4.0),         # kept, teacher class 2 -> student class 1
               _box(12.0, -4.0),        # score below the threshold: dropped
               _box(30.0, 0.0),         # centre outside the student's range: dropped
               _box(2.0, -6.0)],        # teacher class 3 has no student class: dropped
              [0.9, 0.8, 0.2, 0.9, 0.9], [1, 2, 1, 1, 3]),
        _pred([_box(8.0, 0.0, 1.0, 1.0), _box(3.0, 3.0)], [0.5, 0.95], [1, 1]),   # no GT here: both kept
    ]
    class_map = {1: 2, 2: 1}                                     # teacher ids -> student ids
    merged, kept = merge_teacher_boxes(gt, preds, class_map, 0.3, 0.0, RANGE)
    assert kept.tolist() == [1, 2]
    assert merged.shape == (2, 4, 8)
    torch.testing.assert_close(merged[:, :2], gt)                 # the GT first, unchanged
    torch.testing.assert_close(merged[0, 2], torch.tensor(_box(12.0, 4.0) + [1.0]))
    assert merged[0, 3].abs().sum() == 0                          # padding
    torch.testing.assert_close(merged[1, 2:, 7], torch.tensor([2.0, 2.0]))
    # a looser GT_IOU keeps the overlapping box (IoU of the two is about 0.66)
    merged, kept = merge_teacher_boxes(gt, preds, class_map, 0.3, 0.9, RANGE)
    assert kept.tolist() == [2, 2]
    # per-class thresholds over the student's ids; a class without one is not used
    merged, kept = merge_teacher_boxes(gt, preds, class_map, {2: 0.6}, 0.0, RANGE)
    assert kept.tolist() == [0, 1] and merged[1, 2, 0] == 3.0


def test_label_kd_term_is_the_student_heads_loss_on_gt_plus_teacher_boxes(tmp_path):
    _, _, dataset, student, distiller, batch = S.build_setup(tmp_path, kd_heads=[dict(LABEL_HEAD)])
    head = distiller.kd_heads["labelkd"]
    assert distiller.needs_teacher_predictions and distiller.teacher_taps == []
    ret, tb, _ = distiller(batch)
    assert set(k for k in tb if k.startswith("kd_")) == {"kd_labelkd"}
    assert ret["loss"].item() == pytest.approx(tb["det_loss"] + tb["kd_labelkd"], rel=1e-5)
    # now with hand-made teacher detections: one far from every GT box
    dense = student.dense_head
    saved_targets = dense.forward_ret_dict["target_dicts"]
    preds = [_pred([_box(14.0, 7.0, 1.0, 1.0)], [0.9], [1]) for _ in range(2)]
    terms = head({}, batch, {K.KD_TEACHER_PRED_DICTS: preds})
    assert dense.forward_ret_dict["target_dicts"] is saved_targets          # the head's own targets restored
    assert head.stats["boxes"] >= 0.5
    merged, _ = merge_teacher_boxes(batch[K.GT_BOXES], preds, head.class_map, 0.3, 0.0, RANGE)
    expected_targets = head_targets(dense, merged)
    saved = dense.forward_ret_dict
    dense.forward_ret_dict = {**saved, **expected_targets}
    expected, _ = dense.get_loss()
    dense.forward_ret_dict = saved
    assert terms["kd_labelkd"].item() == pytest.approx(0.5 * expected.item(), rel=1e-6)
    gt_only, _ = dense.get_loss()
    assert abs(expected.item() - gt_only.item()) > 1e-4                   # the teacher box changed the targets
    # nothing above the threshold: the term is the weighted GT-only loss
    terms = head({}, batch, {K.KD_TEACHER_PRED_DICTS: [_pred([_box(14.0, 7.0)], [0.1], [1])] * 2})
    assert terms["kd_labelkd"].item() == pytest.approx(0.5 * gt_only.item(), rel=1e-6)
    terms["kd_labelkd"].backward()                                          # gradients reach the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dense.parameters())


def test_label_kd_config_errors(tmp_path):
    with pytest.raises(KeyError, match="SCORE_THRESH names classes \\['Truck'\\]"):
        S.build_setup(tmp_path, kd_heads=[dict(LABEL_HEAD, SCORE_THRESH={"Truck": 0.5})])
