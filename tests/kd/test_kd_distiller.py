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
    assert set(kd_terms) == {"kd_itkd_t2s", "kd_itkd_s2t", "kd_itkd_cr", "kd_itkd_attn"}
    assert ret["loss"].item() == pytest.approx(tb["det_loss"] + sum(kd_terms.values()), rel=1e-5)
    assert all(v > 0 for v in kd_terms.values())
    ret["loss"].backward()
    assert student.vfe.pfn_layers[0].linear.weight.grad.abs().sum() > 0
    head = distiller.kd_heads["itkd"]
    assert head.adapter.weight.grad.abs().sum() > 0 and head.fusion[1].weight.grad.abs().sum() > 0


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
