"""What a researcher needs to see why a distillation run helps or hurts.

- ``grad_norms``: the L2 norm of the gradient that the (weighted) detection loss and each (weighted) distillation
  term send to the student's parameters, and to each tapped student tensor, by ``torch.autograd.grad`` on the
  step's graph (retained; the step's own backward runs afterwards as usual). Costs one backward per term, so the
  distiller runs it every ``KD.DIAGNOSTICS.GRAD_INTERVAL`` steps.
- ``score_stats``: the teacher's and the student's class scores (sigmoid of CenterHead heatmaps or of anchor-head
  class logits, max over the anchors of a cell) at the GT centre cells, each for its own class, against the
  background cells (cells holding no GT centre), on a fixed batch, in eval mode.

Config (``KD.DIAGNOSTICS``): ``GRAD_INTERVAL`` (steps; default 50, 0 = off), ``SCORE_STATS`` (default True).
"""
from dataclasses import dataclass

import torch

from .distill_heads.base import box_centre_cells, map_stride
from .recorders import expand_taps
from .teacher import record_truncated


@dataclass
class DiagnosticsConfig:
    grad_interval: int = 50
    score_stats: bool = True

    KEYS = ("GRAD_INTERVAL", "SCORE_STATS")  # also in Distiller.CONFIG_SCHEMA

    @classmethod
    def from_cfg(cls, cfg):
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.KEYS))
        if unknown:
            raise KeyError(f"KD.DIAGNOSTICS: unknown keys {unknown} (known: {sorted(cls.KEYS)})")
        interval = int(cfg.get("GRAD_INTERVAL", cls.grad_interval))
        if interval < 0:
            raise ValueError(f"KD.DIAGNOSTICS.GRAD_INTERVAL must be >= 0, got {interval}")
        return cls(grad_interval=interval, score_stats=bool(cfg.get("SCORE_STATS", cls.score_stats)))


def _norm(grads):
    total = None
    for g in grads:
        if g is None:
            continue
        sq = g.detach().float().pow(2).sum()
        total = sq if total is None else total + sq
    return 0.0 if total is None else float(total.sqrt())


def _tensors(value):
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [v for v in value.values() if torch.is_tensor(v)]
    feats = getattr(value, "features", None)  # sparse tensor
    return [feats] if torch.is_tensor(feats) else []


def grad_norms(student, det_loss, terms, taps=None):
    """Gradient norms of ``det_loss`` and each of ``terms`` ({name: scalar}) w.r.t. the student's parameters.

    ``taps`` ({tap name: recorded value}, optional): also the norm w.r.t. each tapped student tensor.
    Returns {'det': n, name: n, name + '/det': ratio, 'tap:<tap>:det' / 'tap:<tap>:<name>': n} as floats.
    """
    params = [p for p in student.parameters() if p.requires_grad]
    tap_tensors = {}
    for tap, value in (taps or {}).items():
        ts = [t for t in _tensors(value) if t.requires_grad]
        if ts:
            tap_tensors[tap] = ts
    flat_taps = [t for ts in tap_tensors.values() for t in ts]
    out = {}
    for name, value in [("det", det_loss)] + list(terms.items()):
        if not torch.is_tensor(value) or not value.requires_grad:
            out[name] = 0.0
            continue
        grads = torch.autograd.grad(value, params + flat_taps, retain_graph=True, allow_unused=True)
        out[name] = _norm(grads[:len(params)])
        i = len(params)
        for tap, ts in tap_tensors.items():
            out[f"tap:{tap}:{name}"] = _norm(grads[i:i + len(ts)])
            i += len(ts)
    det = out["det"]
    for name in terms:
        out[f"{name}/det"] = out[name] / det if det > 0 else float("inf")
    return out


def format_grad_norms(norms):
    parts = [f"det {norms['det']:.3g}"]
    for key, value in norms.items():
        if key == "det" or key.startswith("tap:") or key.endswith("/det"):
            continue
        parts.append(f"{key} {value:.3g} ({norms.get(key + '/det', float('nan')):.3g}x det)")
    taps = {}
    for key, value in norms.items():
        if key.startswith("tap:"):
            tap, name = key[4:].rsplit(":", 1)
            taps.setdefault(tap, []).append(f"{name} {value:.3g}")
    text = "; ".join(parts)
    if taps:
        text += " | at the student taps: " + "; ".join(f"{tap}: {', '.join(v)}" for tap, v in taps.items())
    return text


# ---------------------------------------------------------------------- class-score statistics
def _score_taps(model):
    """(taps, kind) of a detector's class-score outputs: CenterHead task groups or an anchor head's conv_cls."""
    head = getattr(model, "dense_head", None)
    if head is None:
        return None, None
    if hasattr(head, "heads_list"):
        return expand_taps(model, ["dense_head.heads_list.*"], "KD diagnostics"), "center"
    if hasattr(head, "conv_cls"):
        return ["dense_head.conv_cls"], "anchor"
    return None, None


def _class_maps(records, taps, kind, model_cfg, class_names):
    """List of ((B, K, H, W) class probabilities, 1-based class ids of the K channels)."""
    maps = []
    if kind == "center":
        names_each = model_cfg["DENSE_HEAD"]["CLASS_NAMES_EACH_HEAD"]
        for tap, names in zip(taps, names_each):
            maps.append((torch.sigmoid(records[tap]["hm"].float()), [class_names.index(n) + 1 for n in names]))
    else:
        logits = records[taps[0]].float()
        b, ak, h, w = logits.shape
        k = len(class_names)
        # OpenPCDet's anchor heads order conv_cls channels anchor-major: channel = anchor * K + class
        probs = torch.sigmoid(logits.view(b, ak // k, k, h, w)).max(dim=1).values
        maps.append((probs, list(range(1, k + 1))))
    return maps


def class_score_stats(maps, gt_boxes, grid):
    """Mean class score at GT centre cells (own class) vs background cells, per class and overall.

    maps: list of ((B, K, H, W) probabilities, class ids); gt_boxes (B, M, 8); grid: the network's GridInfo.
    Returns {'fg': mean over objects, 'bg': mean over background cells of the max score, 'bg_p99', 'fg_<class>'}.
    """
    fg_all, bg_max = [], None
    per_class = {}
    for probs, ids in maps:
        b, k, h, w = probs.shape
        stride = map_stride(grid, w, "KD diagnostics")
        keep, iy, ix = box_centre_cells(gt_boxes.float(), grid, stride, h, w)
        centre = torch.zeros(b, h, w, dtype=torch.bool, device=probs.device)
        bi, mi = torch.nonzero(keep, as_tuple=True)
        centre[bi, iy[bi, mi], ix[bi, mi]] = True
        cls = gt_boxes[..., 7].long()
        for c, cid in enumerate(ids):
            sel = keep & (cls == cid)
            bb, mm = torch.nonzero(sel, as_tuple=True)
            if bb.numel():
                vals = probs[bb, c, iy[bb, mm], ix[bb, mm]]
                fg_all.append(vals)
                per_class.setdefault(cid, []).append(vals)
        group_max = probs.max(dim=1).values[~centre]
        bg_max = group_max if bg_max is None else torch.maximum(bg_max, group_max)
    stats = {}
    if fg_all:
        stats["fg"] = float(torch.cat(fg_all).mean())
    if bg_max is not None and bg_max.numel():
        stats["bg"] = float(bg_max.mean())
        stats["bg_p99"] = float(torch.quantile(bg_max, 0.99)) if bg_max.numel() > 1 else float(bg_max.max())
    for cid, vals in sorted(per_class.items()):
        stats[f"fg_{grid.class_names[cid - 1]}"] = float(torch.cat(vals).mean())
    return stats


@torch.no_grad()
def score_stats(distiller, batch_dict):
    """{'teacher': stats, 'student': stats} of ``class_score_stats`` on ``batch_dict`` (eval mode), or {}."""
    teacher_batch, student_batch = distiller.split_batch(batch_dict)
    gt_boxes = student_batch.get("gt_boxes")
    if gt_boxes is None:
        return {}
    out = {}
    sides = (("teacher", distiller.teacher.model, teacher_batch, distiller.teacher_grid),
             ("student", distiller.student, student_batch, distiller.student_grid))
    for side, model, batch, grid in sides:
        taps, kind = _score_taps(model)
        if taps is None:
            continue
        if side == "teacher":
            records = distiller.teacher.record(batch, taps)
        else:
            was_training = model.training
            model.eval()
            try:
                records = record_truncated(model, dict(batch), taps, detach=True, who="KD diagnostics student")
            finally:
                model.train(was_training)
        maps = _class_maps(records, taps, kind, grid.model_cfg, list(grid.class_names))
        out[side] = class_score_stats(maps, gt_boxes, grid)
    return out


def format_score_stats(stats):
    parts = []
    for side, values in stats.items():
        parts.append(side + " " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return "; ".join(parts)


def measure_grad_norms(distiller, batch_dict):
    """One training forward of ``distiller`` on ``batch_dict`` and ``grad_norms`` of its terms (no optimizer step).

    The distillation terms are taken at full weight (no warm-up factor), as the periodic diagnostics take them.
    """
    ret_dict, _, _, terms, taps = distiller.distillation_terms(batch_dict)
    return grad_norms(distiller.student, distiller.det_loss_weight * ret_dict["loss"], terms, taps=taps)
