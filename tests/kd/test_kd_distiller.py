"""End-to-end KD on a tiny CenterPoint-pillar teacher (width 1) and student (width 0.5), CPU."""
import copy

import pytest
import torch

import kd_tiny_setup as S
from pcdet.kd.teacher import TeacherError


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return S.build_setup(tmp_path_factory.mktemp("kd_itkd"))


def test_teacher_frozen_outside_module_tree_and_unchanged_by_training(setup):
    cfg, _, dataset, student, distiller, batch = setup
    teacher = distiller.teacher.model
    t_state = copy.deepcopy(teacher.state_dict())  # includes BN running stats
    s_before = copy.deepcopy(student.state_dict())
    assert not any(k.startswith("_teacher") or "teacher" in k for k in distiller.state_dict())
    assert {id(p) for p in distiller.parameters()}.isdisjoint({id(p) for p in teacher.parameters()})
    opt = torch.optim.AdamW(distiller.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        distiller.train()
        student.train()  # the student (or a trainer) switching to train must not reach the teacher
        teacher.train()  # even a direct call is undone before the teacher runs
        opt.zero_grad()
        ret, tb, _ = distiller(S.make_batch(dataset, 2, start=step))
        ret["loss"].backward()
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert all(not m.training for m in teacher.modules())
        opt.step()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_state[k]), f"teacher tensor {k} changed"
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, s_before[k])]
    assert any("backbone_2d" in k for k in changed)
    assert _hook_count(teacher) == 0 and _hook_count(student) == 0
    distiller.double()  # .to() / .double() of the distiller reach the teacher held outside the module tree
    assert next(teacher.parameters()).dtype == torch.float64
    distiller.float()
    assert next(teacher.parameters()).dtype == torch.float32 and not teacher.training


def test_total_loss_is_weighted_sum_and_gradients_reach_student_and_heads(setup):
    _, _, _, student, distiller, batch = setup
    distiller.zero_grad()
    ret, tb, _ = distiller(dict(batch))
    kd_terms = {k: v for k, v in tb.items() if k.startswith("kd_")}
    assert set(kd_terms) == {"kd_itkd_t2s", "kd_itkd_s2t", "kd_itkd_cr", "kd_itkd_attn", "kd_itkd_attn_rel"}
    assert ret["loss"].item() == pytest.approx(tb["det_loss"] + sum(kd_terms.values()), rel=1e-5)
    assert all(v > 0 for v in kd_terms.values())
    ret["loss"].backward()
    assert student.vfe.pfn_layers[0].linear.weight.grad.abs().sum() > 0
    head = distiller.kd_heads["itkd"]
    assert head.adapter.weight.grad.abs().sum() > 0
    assert head.fusion[0].weight.grad is None  # FUSION frozen: a fixed projection
    diag = {k: v for k, v in tb.items() if k.startswith("diag_grad_")}  # step 0: a GRAD_INTERVAL step
    assert diag["diag_grad_det"] > 0 and diag["diag_grad_kd_itkd_attn"] > 0
    assert diag["diag_grad_kd_itkd_attn/det"] == pytest.approx(diag["diag_grad_kd_itkd_attn"] / diag["diag_grad_det"])


def test_eval_delegates_to_student_without_teacher(setup, monkeypatch):
    _, _, dataset, student, distiller, _ = setup
    monkeypatch.setattr(distiller.teacher, "record", lambda *a, **k: pytest.fail("teacher ran in eval"))
    distiller.eval()
    try:
        with torch.no_grad():
            pred_dicts, _ = distiller(S.make_batch(dataset, 1))
        assert "pred_boxes" in pred_dicts[0]
    finally:
        distiller.train()
    assert not distiller.teacher.model.training


def test_teacher_runs_only_to_deepest_tapped_stage(tmp_path):
    head = {"NAME": "FitNet", "TEACHER_TAP": "map_to_bev_module@spatial_features",
            "STUDENT_TAP": "map_to_bev_module@spatial_features", "LOSS_WEIGHT": 1.0, "FG_MASK": True}
    _, _, _, _, distiller, batch = S.build_setup(tmp_path, kd_heads=[head])
    calls = []
    teacher = distiller.teacher.model
    handles = [getattr(teacher, n).register_forward_hook(lambda *a, n=n: calls.append(n))
               for n in ("vfe", "map_to_bev_module", "backbone_2d", "dense_head")]
    ret, tb, _ = distiller(dict(batch))
    for h in handles:
        h.remove()
    assert calls == ["vfe", "map_to_bev_module"]
    assert tb["kd_fitnet"] > 0


def test_mismatched_grid_uses_side_processor_and_resamples(tmp_path):
    t_data = copy.deepcopy(S.DATA_CONFIG)
    t_data["DATA_PROCESSOR"][2]["VOXEL_SIZE"] = [0.25, 0.25, 4.0]  # teacher 64 x 64, student 32 x 32
    _, _, dataset, student, distiller, batch = S.build_setup(tmp_path, teacher_data=t_data)
    assert "kd_teacher_inputs" in batch
    assert batch["kd_teacher_inputs"]["voxel_coords"].shape[0] > batch["voxel_coords"].shape[0]
    assert batch["kd_teacher_inputs"]["points"].shape == batch["points"].shape  # same augmented scene
    records = distiller.teacher.record(distiller.split_batch(batch)[0], ["backbone_2d@spatial_features_2d"])
    assert records["backbone_2d@spatial_features_2d"].shape[-2:] == (64, 64)
    ret, tb, _ = distiller(dict(batch))
    ret["loss"].backward()
    assert tb["kd_itkd_attn"] > 0 and student.backbone_2d.blocks[0][1].weight.grad is not None


def test_pointdistiller_on_pillar_features(tmp_path):
    head = {"NAME": "PointDistiller", "TEACHER_TAP": "vfe@pillar_features", "STUDENT_TAP": "vfe@pillar_features",
            "NUM_KEEP": 64, "K": 8, "TAU": 0.01, "LOSS_WEIGHT": 2.0, "GRAPH_CHANNELS": 8}
    _, _, _, student, distiller, batch = S.build_setup(tmp_path, kd_heads=[head], det_weight=0.5)
    ret, tb, _ = distiller(dict(batch))
    assert ret["loss"].item() == pytest.approx(0.5 * tb["det_loss"] + tb["kd_pointdistiller"], rel=1e-5)
    ret["loss"].backward()
    assert student.vfe.pfn_layers[0].linear.weight.grad.abs().sum() > 0


def test_teacher_checkpoint_errors_name_the_problem(tmp_path):
    import logging

    from pcdet.config import cfg_from_yaml_file
    from pcdet.kd import build_distiller
    from pcdet.models import build_network
    teacher_path, kd_path = S.write_configs(tmp_path)
    cfg = cfg_from_yaml_file(kd_path)
    dataset = S.make_dataset(cfg, tmp_path)
    student = build_network(cfg.MODEL, 3, dataset)
    log = logging.getLogger("kd_test")
    with pytest.raises(TeacherError, match="not found"):
        build_distiller(cfg, student, dataset, log, cfg_file=kd_path)
    (tmp_path / "teacher.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TeacherError, match="cannot read checkpoint"):
        build_distiller(cfg, student, dataset, log, cfg_file=kd_path)
    # a checkpoint of another architecture: the width-0.5 student's weights
    torch.save({"model_state": student.state_dict(), "epoch": 1}, tmp_path / "student.pth")
    with pytest.raises(TeacherError, match=r"shape mismatch: backbone_2d"):
        build_distiller(cfg, student, dataset, log, teacher_ckpt=str(tmp_path / "student.pth"), cfg_file=kd_path)
    state = S.save_teacher_ckpt(teacher_path, tmp_path)[1].state_dict()
    dropped = sorted(state)[0]
    state.pop(dropped)
    torch.save({"model_state": state}, tmp_path / "partial.pth")
    with pytest.raises(TeacherError, match=f"missing key: {dropped}"):
        build_distiller(cfg, student, dataset, log, teacher_ckpt=str(tmp_path / "partial.pth"), cfg_file=kd_path)
    cfg.KD.TEACHER.CFG_FILE = "nowhere.yaml"
    with pytest.raises(TeacherError, match="nowhere.yaml"):
        build_distiller(cfg, student, dataset, log, cfg_file=kd_path)


def test_wiring_errors_name_the_tap(tmp_path):
    head = {"NAME": "FitNet", "TEACHER_TAP": "backbone_2d@spatial_features_2d",
            "STUDENT_TAP": "backbone_2dd@spatial_features_2d", "LOSS_WEIGHT": 1.0}
    with pytest.raises(KeyError, match="backbone_2dd"):
        S.build_setup(tmp_path, kd_heads=[head])
    head["STUDENT_TAP"] = "backbone_2d@no_such_key"
    with pytest.raises(KeyError, match="no_such_key"):
        S.build_setup(tmp_path, kd_heads=[head])


def test_warmup_ramps_every_distillation_term_linearly(setup):
    _, _, _, student, distiller, batch = setup
    saved = (distiller.warmup, distiller.total_iters, student.global_step.clone())
    try:
        distiller.warmup = 0.25
        distiller.total_iters = None
        with pytest.raises(RuntimeError, match="set_schedule"):
            distiller.kd_scale()
        distiller.set_schedule(200)  # warm-up over the first 50 iterations
        assert [distiller.kd_scale(s) for s in (0, 10, 25, 50, 51, 199)] == [0.0, 0.2, 0.5, 1.0, 1.0, 1.0]
        torch.manual_seed(0)
        student.global_step.fill_(60)
        _, full, _ = distiller(dict(batch))
        torch.manual_seed(0)
        student.global_step.fill_(10)
        _, ramp, _ = distiller(dict(batch))
        assert ramp["diag_kd_scale"] == 0.2 and "diag_kd_scale" in full
        for term in ("kd_itkd_t2s", "kd_itkd_s2t", "kd_itkd_cr", "kd_itkd_attn", "kd_itkd_attn_rel"):
            assert ramp[term] == pytest.approx(0.2 * full[term], rel=1e-4), term
        assert ramp["det_loss"] == pytest.approx(full["det_loss"], rel=1e-5)
        student.global_step.fill_(0)  # factor 0, and a GRAD_INTERVAL step: the diagnostics measure full weights
        _, zero, _ = distiller(dict(batch))
        assert zero["diag_kd_scale"] == 0.0 and zero["kd_itkd_attn"] == 0.0
        assert zero["diag_grad_kd_itkd_attn"] > 0 and zero["diag_grad_kd_itkd_t2s"] > 0
        with pytest.raises(ValueError, match="WARMUP"):
            from pcdet.kd.distiller import Distiller
            Distiller(student, distiller.teacher, {"HEADS": [{"NAME": "FitNet", "TEACHER_TAP": "t", "STUDENT_TAP": "s",
                                                         "LOSS_WEIGHT": 1.0}], "WARMUP": 1.5},
                      distiller.teacher_grid, distiller.student_grid, batch)
    finally:
        distiller.warmup, distiller.total_iters = saved[0], saved[1]
        student.global_step.copy_(saved[2])


def test_score_stats_at_gt_centres_vs_background_hand_built():
    import numpy as np
    from pcdet.kd.diagnostics import class_score_stats
    from pcdet.kd.distill_heads import GridInfo
    grid = GridInfo(np.array([0, 0, -2, 4, 4, 2], dtype=np.float32), np.array([1.0, 1.0, 4.0], dtype=np.float32),
                    ["Car", "Pedestrian"], {})
    probs = torch.full((1, 2, 4, 4), 0.1)
    probs[0, 1, 3, 3] = 0.3  # the highest background cell
    probs[0, 0, 1, 2] = 0.9  # Car centre at x=2.5, y=1.5 -> cell (y=1, x=2)
    probs[0, 1, 0, 0] = 0.5  # Pedestrian centre at (0.2, 0.7) -> cell (0, 0)
    boxes = torch.zeros(1, 3, 8)
    boxes[0, 0] = torch.tensor([2.5, 1.5, 0, 2, 1, 1, 0, 1])
    boxes[0, 1] = torch.tensor([0.2, 0.7, 0, 1, 1, 1, 0, 2])
    stats = class_score_stats([(probs, [1, 2])], boxes, grid)
    assert stats["fg"] == pytest.approx(0.7) and stats["fg_Car"] == pytest.approx(0.9)
    assert stats["fg_Pedestrian"] == pytest.approx(0.5)
    # 14 background cells: max over classes is 0.1 except the 0.3 cell
    assert stats["bg"] == pytest.approx((13 * 0.1 + 0.3) / 14)


def test_epoch_end_diagnostics_cover_teacher_and_student(setup):
    _, _, _, _, distiller, _ = setup
    stats = distiller.on_epoch_end(1)
    assert set(stats) == {"teacher", "student"}
    for side in stats.values():
        assert 0.0 < side["bg"] < 1.0 and "bg_p99" in side
    assert distiller.training  # the student went back to train mode


@pytest.mark.parametrize("head", [
    {"NAME": "FitNet", "TEACHER_TAP": "backbone_2d@spatial_features_2d",
     "STUDENT_TAP": "backbone_2d@spatial_features_2d", "LOSS_WEIGHT": 1.0},
    {"NAME": "LogitKD", "TYPE": "heatmap", "TEACHER_TAP": "dense_head.heads_list.*@hm",
     "STUDENT_TAP": "dense_head.heads_list.*@hm", "LOSS_TYPE": "focal", "GAMMA": 2.0, "LOSS_WEIGHT": 1.0},
    {"NAME": "PointDistiller", "TEACHER_TAP": "vfe@pillar_features", "STUDENT_TAP": "vfe@pillar_features",
     "NUM_KEEP": 64, "K": 8, "TAU": 0.01, "LOSS_WEIGHT": 2.0, "GRAPH_CHANNELS": 8, "IMPORTANCE": "points"},
    S.ITKD_HEAD,
], ids=lambda h: h["NAME"])
def test_short_kd_run_of_each_method_logs_gradient_shares(head, tmp_path, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="kd_test"):
        _, _, dataset, student, distiller, batch = S.build_setup(tmp_path, kd_heads=[copy.deepcopy(head)])
        opt = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-3)
        distiller.diag.grad_interval = 2
        for step in range(3):
            ret, tb, _ = distiller(S.make_batch(dataset, 2, start=step % 2))
            opt.zero_grad()
            ret["loss"].backward()
            opt.step()
            distiller.update_global_step()
            terms = [k for k in tb if k.startswith("kd_")]
            assert terms
            if step in (0, 2):  # GRAD_INTERVAL steps
                assert tb["diag_grad_det"] > 0
                for term in terms:
                    assert tb[f"diag_grad_{term}"] >= 0 and f"diag_grad_{term}/det" in tb
            else:
                assert "diag_grad_det" not in tb
    text = caplog.text
    assert text.count("KD grad norms at step") == 2 and "x det)" in text
    assert "parameters per module" in text and "backbone_2d" in text


PIVOTAL_HEAD = {"NAME": "PivotalLogitKD", "TYPE": "heatmap", "TEACHER_TAP": "dense_head.heads_list.*@hm",
                "STUDENT_TAP": "dense_head.heads_list.*@hm", "TOPK": 16, "GT_CENTRES": True, "LOSS_WEIGHT": 1.0,
                "BOX": {"TEACHER_TAP": "dense_head.heads_list.*", "STUDENT_TAP": "dense_head.heads_list.*",
                        "LOSS_WEIGHT": 0.5}}


def test_composed_kd_heads_train_together_and_log_each_term(tmp_path):
    """PointDistiller + pivotal logit KD (with its box term) + plain logit KD + label KD in one config."""
    heads = [{"NAME": "PointDistiller", "TEACHER_TAP": "vfe@pillar_features", "STUDENT_TAP": "vfe@pillar_features",
              "NUM_KEEP": 64, "K": 8, "TAU": 1.0, "LOSS_WEIGHT": 2.0, "GRAPH_CHANNELS": 8},
             copy.deepcopy(PIVOTAL_HEAD),
             {"NAME": "LogitKD", "TYPE": "heatmap", "TEACHER_TAP": "dense_head.heads_list.*@hm",
              "STUDENT_TAP": "dense_head.heads_list.*@hm", "LOSS_WEIGHT": 0.5},
             {"NAME": "LabelKD", "SCORE_THRESH": 0.0, "LOSS_WEIGHT": 0.5}]
    _, _, dataset, student, distiller, _ = S.build_setup(tmp_path, kd_heads=heads)
    opt = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):
        ret, tb, _ = distiller(S.make_batch(dataset, 2, start=step))
        terms = {k: v for k, v in tb.items() if k.startswith("kd_")}
        assert set(terms) == {"kd_pointdistiller", "kd_pivotallogitkd", "kd_pivotallogitkd_box", "kd_logitkd",
                              "kd_labelkd"}
        assert distiller.kd_heads["labelkd"].stats["boxes"] > 0       # SCORE_THRESH 0: the teacher's boxes join
        assert all(v > 0 for v in terms.values()), terms
        assert ret["loss"].item() == pytest.approx(tb["det_loss"] + sum(terms.values()), rel=1e-5)
        opt.zero_grad()
        ret["loss"].backward()
        opt.step()
        distiller.update_global_step()
    assert distiller.kd_heads["pivotallogitkd"].stats["positions"] >= 16
