"""Distillation heads on fake feature tensors (no detector needed)."""
import logging

import numpy as np
import pytest
import torch
from easydict import EasyDict

from pcdet.config import ConfigError

from pcdet.kd.distill_heads import KD_HEADS, GridInfo, KDContext

CENTER_CFG = {"DENSE_HEAD": {
    "CLASS_NAMES_EACH_HEAD": [["Car"], ["Pedestrian", "Cyclist"]],
    "SEPARATE_HEAD_CFG": {"HEAD_DICT": {"center": {"out_channels": 2}, "center_z": {"out_channels": 1},
                                        "dim": {"out_channels": 3}, "rot": {"out_channels": 2}}},
    "TARGET_ASSIGNER_CONFIG": {"FEATURE_MAP_STRIDE": 2},
}}
CLASSES = ["Car", "Pedestrian", "Cyclist"]
GROUP_SIZES = [[1, 2, 1, 3, 2], [2, 2, 1, 3, 2]]


def _grid(model_cfg=None):
    # 16 x 16 voxels of 0.5 m over [0, 8] x [0, 8]; stride-2 maps are 8 x 8
    return GridInfo(np.array([0, 0, -2, 8, 8, 2], dtype=np.float32), np.array([0.5, 0.5, 4.0], dtype=np.float32),
                    CLASSES, model_cfg or CENTER_CFG)


def _heads_out(b, seed):
    g = torch.Generator().manual_seed(seed)
    outs = []
    for sizes in GROUP_SIZES:
        keys = ["hm", "center", "center_z", "dim", "rot"]
        outs.append({k: torch.randn(b, c, 8, 8, generator=g) for k, c in zip(keys, sizes)})
    return outs


def _ctx(role_shapes, taps=None, logger=None):
    taps = taps or {r: (["t"] * len(v[0]), ["s"] * len(v[1])) for r, v in role_shapes.items()}
    return KDContext(taps=taps, shapes=role_shapes, teacher=_grid(), student=_grid(), logger=logger)


def _gt_boxes():
    # scan 0: a Car at pixel (x=1, y=2) and a Cyclist; scan 1: a Pedestrian; plus padding rows
    boxes = torch.zeros(2, 3, 8)
    boxes[0, 0] = torch.tensor([1.2, 2.3, 0, 4, 2, 1.5, 0.3, 1])
    boxes[0, 1] = torch.tensor([5.1, 6.9, 0, 1, 1, 1.5, 0.0, 3])
    boxes[1, 0] = torch.tensor([3.3, 0.4, 0, 1, 1, 1.5, 0.0, 2])
    return boxes


def _shape_dict(out):
    return {k: tuple(v.shape) for k, v in out.items()}


def _itkd(c_t, c_s, widths, attn=True, ae=None, **attn_cfg):
    cfg = EasyDict({"NAME": "ITKD", "TEACHER_TAP": "t", "STUDENT_TAP": "s",
                    "AE": dict({"WEIGHT": 1.0, "ENCODER_WIDTHS": widths}, **(ae or {})),
                    "ATTN": dict({"ENABLED": attn, "WEIGHT": 1.0}, **attn_cfg)})
    shapes = {"map": ([(2, c_t, 8, 8)], [(2, c_s, 8, 8)])}
    if attn:
        heads = [_shape_dict(o) for o in _heads_out(2, 0)]
        shapes["heads"] = (heads, heads)
    return KD_HEADS.get("ITKD")(cfg, _ctx(shapes))


def test_itkd_autoencoder_zero_through_identity_modules_and_hand_value():
    head = _itkd(4, 4, [4], attn=False)
    with torch.no_grad():
        for conv in (head.adapter, head.encoder[0], head.decoder[0]):
            conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            conv.bias.zero_()
    f = torch.randn(2, 4, 8, 8)
    terms = head({"map": ([f], [f.clone()])}, {})
    assert set(terms) == {"kd_itkd_t2s", "kd_itkd_s2t", "kd_itkd_cr"}
    assert all(v.item() == 0.0 for v in terms.values())
    terms = head({"map": ([f], [f + 0.5])}, {})
    # t2s = |T - (T+0.5)| = 0.5; s2t = |(T+0.5) - T| = 0.5; cr = 0.5
    assert all(torch.isclose(v, torch.tensor(0.5)) for v in terms.values())


def test_itkd_foreground_mask_and_centre_mse_options():
    head = _itkd(4, 4, [4], attn=False, ae={"FG_MASK": True, "CENTER_MSE_WEIGHT": 2.0, "WEIGHT": 0.5})
    with torch.no_grad():
        for conv in (head.adapter, head.encoder[0], head.decoder[0]):
            conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            conv.bias.zero_()
    f = torch.zeros(2, 4, 8, 8)
    shifted = f.clone()
    shifted[0, :, 2, 1] = 1.0  # inside the Car box of scan 0 (its centre pixel)
    shifted[1, :, 7, 7] = 5.0  # background: outside every box, ignored by the mask
    terms = head({"map": ([f], [shifted])}, {"gt_boxes": _gt_boxes()})
    from pcdet.kd.distill_heads.base import bev_box_mask
    n_fg = bev_box_mask(_gt_boxes(), head.teacher_grid, 2, 8, 8).sum()
    assert 0 < n_fg < 2 * 64
    assert torch.isclose(terms["kd_itkd_t2s"], 0.5 * 1.0 / n_fg)
    # centre MSE: 3 objects, only the Car centre differs (by 1 in 4 channels) -> mean 4 / (3 * 4) per pair
    assert torch.isclose(terms["kd_itkd_center_mse"], torch.tensor(2.0 * 3 * (1 / 3)))


def test_itkd_mismatched_widths_and_grid_resampling_gradient_to_student_only():
    head = _itkd(16, 4, [8, 3])
    assert head.encoder.widths == [16, 8, 3] and head.decoder.widths == [3, 8, 4]
    f_t = torch.randn(2, 16, 8, 8, requires_grad=True)
    f_s = torch.randn(2, 4, 4, 4, requires_grad=True)  # coarser student grid: resampled to 8 x 8
    heads_t = _heads_out(2, 1)
    heads_s = [{k: v.clone().requires_grad_(True) for k, v in o.items()} for o in _heads_out(2, 2)]
    terms = head({"map": ([f_t.detach()], [f_s]), "heads": (heads_t, heads_s)}, {"gt_boxes": _gt_boxes()})
    assert set(terms) == {"kd_itkd_t2s", "kd_itkd_s2t", "kd_itkd_cr", "kd_itkd_attn", "kd_itkd_attn_rel"}
    sum(terms.values()).backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    assert heads_s[0]["dim"].grad.abs().sum() > 0
    # gathered only at GT centres: the Car of scan 0 (x=1.2, y=2.3) sits at pixel (y=2, x=1) of the 1 m cells
    grad_hm0 = heads_s[0]["hm"].grad
    assert torch.count_nonzero(grad_hm0) == 1 and grad_hm0[0, 0, 2, 1] != 0


def test_itkd_attention_counts_each_group_once_and_only_its_classes():
    head = _itkd(4, 4, [4])
    heads_t, heads_s = _heads_out(2, 3), _heads_out(2, 4)
    boxes = _gt_boxes()
    loss, fused, rel, n = head.attention_terms(boxes, heads_t, heads_s)
    assert n == 3  # Car in group 0; Cyclist and Pedestrian in group 1; padding ignored
    per_group = [f + r for f, r in zip(fused, rel)]
    assert torch.isclose(loss, torch.stack(per_group).mean())


def _train_fusion_only(head, x_t, x_s, boxes, steps=150):
    opt = torch.optim.Adam(head.fusion.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.96)
    first = None
    for _ in range(steps):
        loss, _, rel, _ = head.attention_terms(boxes, x_t, x_s)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    loss, _, rel, _ = head.attention_terms(boxes, x_t, x_s)
    return first, loss.item(), sum(r.item() for r in rel) / len(rel)


def _many_boxes(b=2, m=24, seed=0):
    """(b, m, 8) real GT boxes at distinct random cells of the 8 x 8 stride-2 map, classes 1..3."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(b, m, 8)
    for i in range(b):
        cells = torch.randperm(64, generator=g)[:m]
        boxes[i, :, 0] = (cells % 8).float() + 0.5
        boxes[i, :, 1] = (cells // 8).float() + 0.5
        boxes[i, :, 3:6] = 1.0
        boxes[i, :, 7] = torch.randint(1, 4, (m,), generator=g).float()
    return boxes


def test_itkd_attention_not_minimisable_by_fusion_alone():
    torch.manual_seed(0)
    boxes = _many_boxes()  # 48 objects over two task groups
    x_t, x_s = _heads_out(2, 5), _heads_out(2, 6)
    guarded = _itkd(4, 4, [4])  # default: FUSION frozen, relation guard on
    assert all(not p.requires_grad for p in guarded.fusion.parameters())
    opt = torch.optim.Adam([p for p in guarded.parameters() if p.requires_grad] or [torch.zeros(1)], lr=0.05)
    start = guarded.attention_terms(boxes, x_t, x_s)[0].item()
    for _ in range(50):  # every distillation module that can learn, learns: the loss must not move
        loss = guarded.attention_terms(boxes, x_t, x_s)[0]
        opt.zero_grad()
        if loss.requires_grad:
            loss.backward()
        opt.step()
    assert guarded.attention_terms(boxes, x_t, x_s)[0].item() == pytest.approx(start, rel=1e-6)
    # unit-norm but learnable rows ('normalized'): with tau = sqrt(500) the attended features are close to channel
    # means, so the differences span few directions and the rows learn to be orthogonal to them on a fixed batch
    start_n, end_n, rel_n = _train_fusion_only(_itkd(4, 4, [4], FUSION="normalized"), x_t, x_s, boxes)
    assert end_n < 0.1 * start_n, (start_n, end_n)  # measured: 6.4 -> 0.29
    assert end_n >= 0.99 * rel_n > 0  # the relation term stays as a floor
    # the authors' defect (free fusion, no relation term) collapses to zero
    start_f, end_f, _ = _train_fusion_only(_itkd(4, 4, [4], FUSION="trainable", RELATION_WEIGHT=0.0), x_t, x_s,
                                           boxes)
    assert end_f < 0.05 * start_f, (start_f, end_f)  # measured: 3.8 -> 0.08
    with pytest.raises(ValueError, match="FUSION"):
        _itkd(4, 4, [4], FUSION="free")


def test_itkd_attention_zero_on_equal_outputs_and_gradient_reaches_student_head():
    head = _itkd(4, 4, [4])
    boxes = _many_boxes(m=10, seed=3)
    x_t = _heads_out(2, 7)
    x_same = [{k: v.clone().requires_grad_(True) for k, v in o.items()} for o in x_t]
    loss, fused, rel, n = head.attention_terms(boxes, x_t, x_same)
    assert n == 20 and loss.item() == 0.0
    x_s = [{k: v.clone().requires_grad_(True) for k, v in o.items()} for o in _heads_out(2, 8)]
    loss, _, _, _ = head.attention_terms(boxes, x_t, x_s)
    loss.backward()
    for group in x_s:
        for key, value in group.items():
            assert value.grad is not None and value.grad.abs().sum() > 0, key
            # only the object cells receive gradient: at most 10 cells per sample
            assert torch.count_nonzero(value.grad.abs().sum(1)) <= 20
    assert head.fusion[0].weight.grad is None  # frozen fusion: only the student learns from L_attn


def test_itkd_attention_per_sample_tau_and_sigmoid_option():
    head = _itkd(4, 4, [4])
    assert head.tau == pytest.approx(500 ** 0.5)  # default: sqrt(500 object slots)
    assert _itkd(4, 4, [4], TEMPERATURE=3.0).tau == 3.0
    boxes = _many_boxes(m=6, seed=4)
    boxes[..., 7] = 1  # all Cars: task group 0
    x_t, x_s = _heads_out(2, 1), _heads_out(2, 2)
    # per sample: sample 1's relations do not change when sample 0's outputs change
    from pcdet.kd.distill_heads.base import box_centre_cells
    from pcdet.kd.losses import head_relation_inputs
    keep, iy, ix = box_centre_cells(boxes, _grid(), 2, 8, 8, head.groups[0][2])
    x_s2 = [{k: v.clone() for k, v in o.items()} for o in x_s]
    x_s2[0]["dim"][0] += 5.0  # sample 0 only
    g0 = head._gather(x_s[0], head.groups[0][0], iy, ix)
    g1 = head._gather(x_s2[0], head.groups[0][0], iy, ix)
    _, r_a = head_relation_inputs(g0, head.groups[0][1], head.tau, keep)
    _, r_b = head_relation_inputs(g1, head.groups[0][1], head.tau, keep)
    assert torch.allclose(r_a[0][1], r_b[0][1]) and not torch.allclose(r_a[0][0], r_b[0][0])
    sig = _itkd(4, 4, [4], HM_ACTIVATION="sigmoid")
    raw = head._gather(x_s[0], head.groups[0][0], iy, ix)
    assert torch.allclose(sig._gather(x_s[0], head.groups[0][0], iy, ix)[..., :1], torch.sigmoid(raw[..., :1]))
    with pytest.raises(ValueError, match="HM_ACTIVATION"):
        _itkd(4, 4, [4], HM_ACTIVATION="softmax")


def test_itkd_rejects_head_config_that_does_not_match_outputs():
    cfg = EasyDict({"NAME": "ITKD", "TEACHER_TAP": "t", "STUDENT_TAP": "s", "AE": {"ENCODER_WIDTHS": [4]}})
    heads = [_shape_dict(o) for o in _heads_out(2, 0)]
    heads[1]["dim"] = (2, 7, 8, 8)
    ctx = _ctx({"map": ([(2, 4, 8, 8)], [(2, 4, 8, 8)]), "heads": (heads, heads)})
    with pytest.raises(ValueError, match="head outputs"):
        KD_HEADS.get("ITKD")(cfg, ctx)


def _pd(c_t, c_s, **kw):
    cfg = EasyDict(dict({"NAME": "PointDistiller", "TEACHER_TAP": "t", "STUDENT_TAP": "s", "NUM_KEEP": 3, "K": 2,
                         "TAU": 1.0, "LOSS_WEIGHT": 2.0, "GRAPH_CHANNELS": 5}, **kw))
    return KD_HEADS.get("PointDistiller")(cfg, _ctx({"feature": ([(10, c_t)], [(10, c_s)])},
                                                    logger=logging.getLogger("test_pd")))


def _pillar_batch():
    coords = torch.zeros(10, 4, dtype=torch.long)
    coords[6:, 0] = 1  # 6 pillars in scan 0, 4 in scan 1
    coords[:, 3] = torch.arange(10)
    counts = torch.tensor([5, 1, 9, 2, 7, 3, 4, 8, 1, 6])
    return {"voxel_coords": coords, "voxel_num_points_raw": counts, "voxel_num_points": counts.clamp(max=4)}


def test_pointdistiller_topn_knn_within_scans_and_phi(monkeypatch):
    import pcdet.ops.knn as knn
    seen = {}
    real_knn = knn.knn_in_scans

    def spy(features, batch_idx, k, query_index=None, **kw):
        idx, valid = real_knn(features, batch_idx, k, query_index=query_index, **kw)
        seen.update(query=query_index.clone(), idx=idx, batch=batch_idx.clone())
        return idx, valid

    monkeypatch.setattr(knn, "knn_in_scans", spy)
    head = _pd(6, 3)
    batch = _pillar_batch()
    f_t = torch.randn(10, 6)
    f_s = torch.randn(10, 3, requires_grad=True)
    out = head({"feature": ([f_t], [f_s])}, batch)
    # top-3 by the counts the detector sees (capped at 4): scan 0 rows {0, 2, 4}, scan 1 rows {6, 7, 9}
    assert sorted(seen["query"][:3].tolist()) == [0, 2, 4] and sorted(seen["query"][3:].tolist()) == [6, 7, 9]
    # the uncapped option ranks by the raw counts: scan 0 rows 2, 4, 0; scan 1 rows 7, 9, 6
    _pd(6, 3, IMPORTANCE="points_uncapped")({"feature": ([f_t], [f_s])}, batch)
    assert seen["query"].tolist() == [2, 4, 0, 7, 9, 6]
    assert (seen["batch"][seen["idx"]] == seen["batch"][seen["query"]][:, None]).all()
    assert (seen["idx"][:, 0] == seen["query"]).all()  # self is the nearest
    out["kd_pointdistiller"].backward()
    assert f_s.grad.abs().sum() > 0
    assert head.graph_s.conv.weight.grad is not None
    assert head.graph_t.conv.weight.grad is None  # default TEACHER_GRAPH 'frozen': a fixed random projection


def test_pointdistiller_loss_matches_formula_by_hand():
    head = _pd(4, 4, K=2, NUM_KEEP=2, TAU=0.5, EDGE_MODE="diff", IMPORTANCE="points_uncapped")
    head.eval()  # BN with running stats (identity at init) so the graph layer is a plain conv + ReLU
    batch = _pillar_batch()
    torch.manual_seed(1)
    f_t, f_s = torch.randn(10, 4), torch.randn(10, 4)
    loss = head({"feature": ([f_t], [f_s])}, batch)["kd_pointdistiller"]
    from pcdet.ops.knn import knn_in_scans
    counts = batch["voxel_num_points_raw"].float()
    query = torch.tensor([2, 4, 7, 9])  # top-2 per scan by the raw counts
    idx, valid = knn_in_scans(f_t, batch["voxel_coords"][:, 0], 2, query_index=query)
    bn_scale = 1 / (1 + 1e-5) ** 0.5

    def graph(layer, f):
        e = torch.cat([f[idx] - f[query][:, None], f[query][:, None].expand(-1, 2, -1)], dim=-1)
        return torch.relu(e @ layer.conv.weight.t() * bn_scale)

    from pcdet.ops.knn import edge_features
    for layer, f in ((head.graph_t, f_t), (head.graph_s, f_s)):
        fast = layer(f, query, idx, "diff")
        assert torch.allclose(fast, graph(layer, f), atol=1e-5)
        assert torch.allclose(fast, layer.forward_edges(edge_features(f, query, idx, mode="diff")), atol=1e-5)

    phi = torch.cat([2 * torch.softmax(counts[[2, 4]] / 0.5, 0), 2 * torch.softmax(counts[[7, 9]] / 0.5, 0)])
    err = (graph(head.graph_t, f_t) - graph(head.graph_s, f_s)) ** 2 * phi[:, None, None]
    assert torch.isclose(loss, 2.0 * err.mean(), rtol=1e-5)


def test_pointdistiller_effective_rows_of_capped_counts_and_warning(caplog):
    # one scan of 40 pillars; raw counts 1..40, capped at 20 (MAX_POINTS_PER_VOXEL): the 21 pillars with >= 20
    # points tie at the cap. N = 30 kept rows, tau = 0.01 (the authors')
    rows = 40
    coords = torch.zeros(rows, 4, dtype=torch.long)
    coords[:, 3] = torch.arange(rows)
    raw = torch.arange(1, rows + 1)
    batch = {"voxel_coords": coords, "voxel_num_points_raw": raw, "voxel_num_points": raw.clamp(max=20)}
    feats = {"feature": ([torch.randn(rows, 6)], [torch.randn(rows, 3)])}

    def run(importance):
        cfg = EasyDict({"NAME": "PointDistiller", "TEACHER_TAP": "t", "STUDENT_TAP": "s", "NUM_KEEP": 30, "K": 4,
                        "TAU": 0.01, "LOSS_WEIGHT": 2.0, "GRAPH_CHANNELS": 5, "IMPORTANCE": importance})
        head = KD_HEADS.get("PointDistiller")(cfg, _ctx({"feature": ([(rows, 6)], [(rows, 3)])},
                                                        logger=logging.getLogger("test_pd_phi")))
        head(feats, batch)
        return head.stats["effective_rows"]

    with caplog.at_level(logging.INFO, logger="test_pd_phi"):
        capped = run("points")
    # 21 capped rows share the weight uniformly (phi = 30/21), the 9 others (19..11 points) get ~0
    assert capped == pytest.approx(21 / 30, abs=1e-6)
    assert "21 of 30" in caplog.text and "phi concentrates" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="test_pd_phi"):
        uncapped = run("points_uncapped")
    assert uncapped == pytest.approx(1 / 30, abs=1e-6)  # one-hot on the densest pillar
    assert "phi concentrates on few rows" in caplog.text and "1.0 of 30 effective rows" in caplog.text


def test_pointdistiller_bev_mode_uses_teacher_max_and_config_checks():
    head = _pd(6, 3, NUM_KEEP=4, K=3)
    f_t = torch.randn(2, 6, 3, 3)
    f_s = torch.randn(2, 3, 3, 3, requires_grad=True)
    loss = head({"feature": ([f_t], [f_s])}, {})["kd_pointdistiller"]
    loss.backward()
    assert f_s.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="TAU: missing required key 'TAU' of PointDistillerHead"):
        KD_HEADS.get("PointDistiller")(EasyDict({"NAME": "PointDistiller", "TEACHER_TAP": "t", "STUDENT_TAP": "s",
                                                 "NUM_KEEP": 1, "K": 1, "LOSS_WEIGHT": 1, "GRAPH_CHANNELS": 2}),
                                       _ctx({"feature": ([(4, 2)], [(4, 2)])}))


def test_fitnet_hand_value_and_logit_kd_zero_when_equal():
    ctx = _ctx({"map": ([(1, 2, 8, 8)], [(1, 1, 8, 8)])})
    fit = KD_HEADS.get("FitNet")(EasyDict({"NAME": "FitNet", "TEACHER_TAP": "t", "STUDENT_TAP": "s",
                                           "LOSS_WEIGHT": 3.0}), ctx)
    with torch.no_grad():
        fit.adapter.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        fit.adapter.bias.zero_()
    f_s = torch.ones(1, 1, 8, 8)
    f_t = torch.zeros(1, 2, 8, 8)
    assert torch.isclose(fit({"map": ([f_t], [f_s])}, {})["kd_fitnet"], torch.tensor(3.0 * (1 + 4) / 2))
    heads = _heads_out(2, 0)
    ctx = _ctx({"logits": ([_shape_dict(h) for h in heads], [_shape_dict(h) for h in heads])})
    lkd = KD_HEADS.get("LogitKD")(EasyDict({"NAME": "LogitKD", "TEACHER_TAP": "t", "STUDENT_TAP": "s",
                                            "TYPE": "heatmap", "LOSS_WEIGHT": 1.0}), ctx)
    assert abs(lkd({"logits": (heads, heads)}, {})["kd_logitkd"].item()) < 1e-7
    assert lkd({"logits": (heads, _heads_out(2, 9))}, {})["kd_logitkd"].item() > 0


def test_pointdistiller_sparse_voxel_rows_align_and_stay_in_scan():
    import spconv.pytorch as spconv
    head = _pd(6, 3, NUM_KEEP=2, K=3)
    indices = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0], [1, 0, 1, 1]], dtype=torch.int32)
    f_t = torch.randn(5, 6)
    f_s = torch.randn(5, 3, requires_grad=True)
    sp_t = spconv.SparseConvTensor(f_t, indices, [2, 2, 2], 2)
    sp_s = spconv.SparseConvTensor(f_s, indices, [2, 2, 2], 2)
    loss = head({"feature": ([sp_t], [sp_s])}, {})["kd_pointdistiller"]
    loss.backward()
    assert f_s.grad.abs().sum() > 0
    other = spconv.SparseConvTensor(f_s.detach(), indices.flip(0), [2, 2, 2], 2)
    with pytest.raises(ValueError, match="different active voxels"):
        head({"feature": ([sp_t], [other])}, {})


def test_itkd_attention_uses_only_objects_on_both_maps():
    import copy
    student_cfg = copy.deepcopy(CENTER_CFG)
    student_cfg["DENSE_HEAD"]["TARGET_ASSIGNER_CONFIG"]["FEATURE_MAP_STRIDE"] = 1
    student = GridInfo(np.array([0, 0, -2, 4, 4, 2], dtype=np.float32), np.array([0.5, 0.5, 4.0], dtype=np.float32),
                       CLASSES, student_cfg)  # 4 m x 4 m at 0.5 m: the Cyclist at (5.1, 6.9) is off this map
    heads = [_shape_dict(o) for o in _heads_out(2, 0)]
    cfg = EasyDict({"NAME": "ITKD", "TEACHER_TAP": "t", "STUDENT_TAP": "s", "AE": {"ENCODER_WIDTHS": [4]}})
    ctx = KDContext(taps={"map": (["t"], ["s"]), "heads": (["t"] * 2, ["s"] * 2)},
                    shapes={"map": ([(2, 4, 8, 8)], [(2, 4, 8, 8)]), "heads": (heads, heads)},
                    teacher=_grid(), student=student)
    head = KD_HEADS.get("ITKD")(cfg, ctx)
    x_s = [{k: v.clone().requires_grad_(True) for k, v in o.items()} for o in _heads_out(2, 4)]
    loss, _, _, n = head.attention_terms(_gt_boxes(), _heads_out(2, 3), x_s)
    assert n == 2
    loss.backward()
    # the Pedestrian of scan 1 at (3.3, 0.4) lands on student cell (y=0, x=6) of the 0.5 m map
    assert torch.count_nonzero(x_s[1]["hm"].grad) == 2 and x_s[1]["hm"].grad[1, :, 0, 6].abs().sum() > 0


def _train_pd_modules_only(mode, steps=300, rows=400):
    """Train only PointDistiller's graph layers on fixed, unrelated teacher / student rows (nothing to learn)."""
    torch.manual_seed(0)
    cfg = EasyDict({"NAME": "PointDistiller", "TEACHER_TAP": "t", "STUDENT_TAP": "s", "NUM_KEEP": 150, "K": 8,
                    "TAU": 1.0, "LOSS_WEIGHT": 2.0, "GRAPH_CHANNELS": 8, "TEACHER_GRAPH": mode})
    head = KD_HEADS.get("PointDistiller")(cfg, _ctx({"feature": ([(rows, 16)], [(rows, 8)])}))
    coords = torch.zeros(rows, 4, dtype=torch.long)
    coords[rows // 2:, 0] = 1
    batch = {"voxel_coords": coords, "voxel_num_points": torch.randint(1, 30, (rows,))}
    f_t, f_s = torch.relu(torch.randn(rows, 16)), torch.relu(torch.randn(rows, 8))
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(steps):
        loss = head({"feature": ([f_t], [f_s])}, batch)["kd_pointdistiller"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head, losses[0], losses[-1]


def test_pointdistiller_graph_layers_cannot_zero_the_loss_alone():
    head, start, end = _train_pd_modules_only("frozen")
    assert not head.graph_t.conv.weight.requires_grad and not head.graph_t.bn.affine
    assert end > 0.25 * start, (start, end)  # measured: 1.25 -> 0.46 (36%)
    # the authors' two free layers learn a common near-constant output: the loss vanishes with nothing distilled
    _, start_free, end_free = _train_pd_modules_only("trainable")
    assert end_free < 0.01 * start_free, (start_free, end_free)  # measured: 1.25 -> 0.0004
    _, _, end_norm = _train_pd_modules_only("normalized")  # non-affine BN alone is not enough
    assert end_free < end_norm < end, (end_free, end_norm, end)  # measured: 0.0004 < 0.033 < 0.46
    with pytest.raises(ValueError, match="TEACHER_GRAPH"):
        _pd(6, 3, TEACHER_GRAPH="fixed")


@pytest.mark.parametrize("teacher_graph", ["frozen", "trainable"])
def test_pointdistiller_fused_loss_equals_the_reference_path(teacher_graph):
    from pcdet.ops import _loader
    from pcdet.ops.pd_edge_loss import EXT_NAME
    if _loader.load_extension(EXT_NAME) is None:
        pytest.skip(f"{EXT_NAME} is not built")
    rows = 300
    coords = torch.zeros(rows, 4, dtype=torch.long)
    coords[rows // 3:, 0] = 1
    batch = {"voxel_coords": coords, "voxel_num_points": torch.randint(1, 30, (rows,))}
    torch.manual_seed(3)
    f_t, f_s0 = torch.relu(torch.randn(rows, 12)), torch.relu(torch.randn(rows, 6))
    out = {}
    for impl in ("fused", "reference"):
        torch.manual_seed(0)
        cfg = EasyDict({"NAME": "PointDistiller", "TEACHER_TAP": "t", "STUDENT_TAP": "s", "NUM_KEEP": 80, "K": 16,
                        "TAU": 1.0, "LOSS_WEIGHT": 2.0, "GRAPH_CHANNELS": 6, "TEACHER_GRAPH": teacher_graph,
                        "EDGE_MODE": "diff", "IMPLEMENTATION": impl})
        head = KD_HEADS.get("PointDistiller")(cfg, _ctx({"feature": ([(rows, 12)], [(rows, 6)])}))
        f_s = f_s0.clone().requires_grad_(True)
        loss = head({"feature": ([f_t], [f_s])}, batch)["kd_pointdistiller"]
        loss.backward()
        out[impl] = (loss.detach(), f_s.grad, {n: p.grad for n, p in head.named_parameters() if p.grad is not None},
                     {n: b.clone() for n, b in head.named_buffers()})
    (lf, gf, pf, bf), (lr, gr, pr, br) = out["fused"], out["reference"]
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gf, gr, rtol=1e-4, atol=1e-6)
    assert pf.keys() == pr.keys() and ("graph_t.conv.weight" in pf) == (teacher_graph == "trainable")
    for name in pf:
        torch.testing.assert_close(pf[name], pr[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for name in bf:   # BatchNorm running averages advance alike
        torch.testing.assert_close(bf[name], br[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert int(bf["graph_s.bn.num_batches_tracked"]) == 1
