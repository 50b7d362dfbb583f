"""Label KD (SparseKD, Yang et al., NeurIPS 2022): the teacher's confident detections join the GT boxes as extra
targets of the student's own assigner.

The teacher's post-processed boxes (its own score threshold and NMS) above ``SCORE_THRESH`` whose class the
student also detects, and that lie in the student's point-cloud range, are appended to ``gt_boxes``; a teacher box
whose BEV IoU with any real GT box exceeds ``GT_IOU`` is dropped, so the GT wins wherever the two overlap. The
student's dense head then assigns targets for GT + teacher boxes and computes its own loss on its current
predictions; the term is ``LOSS_WEIGHT`` times that loss. The plain detection loss on the GT alone stays, weighted
by ``KD.DET_LOSS_WEIGHT``: ``DET_LOSS_WEIGHT: 0`` with ``LOSS_WEIGHT: 1`` trains on the merged labels only, and
``1 - w`` / ``w`` interpolates between GT-only (w = 0) and merged labels (w = 1), a teacher box counting w as much
as a GT box. No head is edited: the targets are swapped into the head's ``forward_ret_dict`` for one ``get_loss``
call and restored.
"""
import torch

from ... import batch_keys as K
from ...config_schema import opt, req
from .base import KD_HEADS, KDHead


def merge_teacher_boxes(gt_boxes, pred_dicts, class_map, score_thresh, gt_iou, point_cloud_range):
    """GT boxes with the teacher's confident detections appended (GT first), and the count kept per sample.

    Args:
        gt_boxes: (B, M, 8) student GT, class id (1-based, 0 = padding) in column 7.
        pred_dicts: B dicts ``pred_boxes`` (K, 7+), ``pred_scores`` (K,), ``pred_labels`` (K,) 1-based in the
            teacher's classes.
        class_map: {teacher class id: student class id}; teacher boxes of other classes are dropped.
        score_thresh: float, or {student class id: float}; a box is kept when its score is >= the threshold.
        gt_iou: a teacher box is dropped when its BEV IoU with a real GT box of the sample is > ``gt_iou``.
        point_cloud_range: (6,) the student's range; teacher boxes whose centre lies outside are dropped.
    Returns:
        merged (B, M + P, 8) (P = most teacher boxes kept in a sample; zero rows pad), kept (B,) int64.
    """
    from ...ops.iou3d_nms import boxes_iou_bev

    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] < 8:
        raise ValueError(f"LabelKD: gt_boxes must be (B, M, 8), got {tuple(gt_boxes.shape)}")
    if len(pred_dicts) != gt_boxes.shape[0]:
        raise ValueError(f"LabelKD: {len(pred_dicts)} teacher prediction dicts for a batch of {gt_boxes.shape[0]}")
    device, dtype = gt_boxes.device, gt_boxes.dtype
    lo = torch.as_tensor(point_cloud_range[:3], dtype=dtype, device=device)
    hi = torch.as_tensor(point_cloud_range[3:6], dtype=dtype, device=device)
    t_ids = torch.as_tensor(sorted(class_map), dtype=torch.long, device=device)
    s_ids = torch.as_tensor([class_map[t] for t in sorted(class_map)], dtype=torch.long, device=device)
    extra = []
    for b, pred in enumerate(pred_dicts):
        boxes = pred["pred_boxes"][:, :7].to(device=device, dtype=dtype)
        scores = pred["pred_scores"].to(device=device, dtype=torch.float32)
        labels = pred["pred_labels"].to(device=device, dtype=torch.long)
        hit = labels[:, None] == t_ids[None]                       # (K, classes kept)
        keep = hit.any(1)
        student_cls = (hit.long() * s_ids[None]).sum(1)            # 0 where the class is not mapped
        if isinstance(score_thresh, dict):
            thr = torch.tensor([float(score_thresh.get(int(c), float("inf"))) for c in student_cls.tolist()],
                               dtype=torch.float32, device=device)
        else:
            thr = torch.full_like(scores, float(score_thresh))
        keep &= scores >= thr
        keep &= ((boxes[:, :3] >= lo) & (boxes[:, :3] < hi)).all(1)
        real_gt = gt_boxes[b][gt_boxes[b, :, 7] > 0]
        if keep.any() and len(real_gt):
            iou = boxes_iou_bev(boxes[keep], real_gt[:, :7].contiguous())    # (K_kept, M_real)
            clash = (iou > float(gt_iou)).any(1)
            idx = torch.nonzero(keep).flatten()
            keep[idx[clash]] = False
        extra.append(torch.cat([boxes[keep], student_cls[keep, None].to(dtype)], dim=1))
    kept = torch.tensor([len(e) for e in extra], dtype=torch.long, device=device)
    p = int(kept.max()) if len(extra) else 0
    merged = gt_boxes.new_zeros(gt_boxes.shape[0], gt_boxes.shape[1] + p, 8)
    merged[:, :gt_boxes.shape[1]] = gt_boxes[..., :8]
    for b, e in enumerate(extra):
        merged[b, gt_boxes.shape[1]:gt_boxes.shape[1] + len(e)] = e
    return merged, kept


def _head_kind(head):
    """'anchor' or 'center'; TypeError naming the class for a dense head whose assigner LabelKD cannot drive."""
    from ...models.dense_heads.anchor_head_template import AnchorHeadTemplate
    from ...models.dense_heads.center_head import CenterHead

    if isinstance(head, AnchorHeadTemplate):
        return "anchor"
    if isinstance(head, CenterHead):
        return "center"
    raise TypeError(f"LabelKD: the student's dense head {type(head).__name__} is not supported (anchor heads and "
                    f"CenterHead are)")


def head_targets(head, gt_boxes):
    """The entries of ``head.forward_ret_dict`` that its own assigner builds for ``gt_boxes`` (after a training
    forward of ``head``): anchor heads' box_cls_labels / box_reg_targets / reg_weights, CenterHead's target_dicts."""
    if _head_kind(head) == "anchor":
        return head.assign_targets(gt_boxes=gt_boxes)
    hw = head.forward_ret_dict["pred_dicts"][0]["hm"].shape[2:]
    return {"target_dicts": head.assign_targets(gt_boxes, feature_map_size=hw)}


@KD_HEADS.register(name="LabelKD")
class LabelKDHead(KDHead):
    """Config: SCORE_THRESH (a float, or {class name: float} over the student's classes; teacher boxes scored
    below are not used), LOSS_WEIGHT, GT_IOU (default 0.0: a teacher box overlapping any GT box in BEV is dropped).
    No taps: it reads the teacher's detections (``kd_teacher_pred_dicts``) and the student's dense head. Term:
    kd_<tag>. Statistic: ``stats['boxes']``, the teacher boxes added per sample (batch mean).
    """
    NEEDS_TEACHER_PREDICTIONS = True
    CONFIG_SCHEMA = {"SCORE_THRESH": req(float, dict), "LOSS_WEIGHT": req(float), "GT_IOU": opt(float)}

    @staticmethod
    def tap_requests(cfg):
        return {}

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        who = "LabelKD"
        t_names, s_names = list(ctx.teacher.class_names), list(ctx.student.class_names)
        self.class_map = {t_names.index(n) + 1: s_names.index(n) + 1 for n in t_names if n in s_names}
        if not self.class_map:
            raise ValueError(f"{who}: the teacher's classes {t_names} and the student's {s_names} share none")
        thr = cfg.SCORE_THRESH
        if isinstance(thr, dict):
            unknown = sorted(set(thr) - set(s_names))
            if unknown:
                raise KeyError(f"{who}: SCORE_THRESH names classes {unknown} the student lacks ({s_names})")
            thr = {s_names.index(n) + 1: float(v) for n, v in thr.items()}
        else:
            thr = float(thr)
        self.score_thresh = thr
        self.gt_iou = float(cfg.get("GT_IOU", 0.0))
        self.loss_weight = float(cfg.LOSS_WEIGHT)
        self.point_cloud_range = [float(v) for v in ctx.student.point_cloud_range]
        self._student = []          # a plain list: the student is not a submodule of its own KD head
        self.stats = {}
        ctx.log(f"{who}: teacher boxes with score >= {cfg.SCORE_THRESH} (classes {sorted(self.class_map)} -> "
                f"{[self.class_map[k] for k in sorted(self.class_map)]}) join the GT unless their BEV IoU with a GT "
                f"box is > {self.gt_iou}; weight {self.loss_weight}")

    def bind_student(self, student):
        dense_head = getattr(student, "dense_head", None)
        if dense_head is None:
            raise TypeError(f"LabelKD: the student {type(student).__name__} has no dense_head")
        _head_kind(dense_head)
        self._student = [student]

    def forward(self, feats, batch_dict, teacher_batch=None):
        if not self._student:
            raise RuntimeError("LabelKD: no student bound (the Distiller calls bind_student)")
        if teacher_batch is None or K.KD_TEACHER_PRED_DICTS not in teacher_batch:
            raise KeyError(f"LabelKD: the teacher batch lacks '{K.KD_TEACHER_PRED_DICTS}' (the Distiller adds it "
                           f"for heads with NEEDS_TEACHER_PREDICTIONS)")
        gt = batch_dict[K.GT_BOXES]
        with torch.no_grad():
            merged, kept = merge_teacher_boxes(gt, teacher_batch[K.KD_TEACHER_PRED_DICTS], self.class_map,
                                               self.score_thresh, self.gt_iou, self.point_cloud_range)
        self.stats = {"boxes": float(kept.float().mean())}
        head = self._student[0].dense_head
        saved = head.forward_ret_dict
        try:
            with torch.no_grad():
                targets = head_targets(head, merged)
            head.forward_ret_dict = {**saved, **targets}
            loss, _ = head.get_loss()
        finally:
            head.forward_ret_dict = saved
        return {f"kd_{self.name}": self.loss_weight * loss}
