"""The KD benchmark driver: run planning, derived configs (KD block added to the student config) and the table."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pcdet.config import cfg_from_yaml_file

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)   # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


bk = _load("benchmark_kd")


def _bench(tmp_path, preset="mini"):
    return bk.Benchmark(preset, bk.PRESETS[preset], tmp_path / "work", tmp_path / "data", "python", "cpu", 1)


def test_plan_has_teacher_per_seed_and_kd_runs_depend_on_it(tmp_path):
    bench = _bench(tmp_path)
    p = bk.PRESETS["mini"]
    n_students = sum(len(f["methods"]) * len(f["student_rel_widths"]) for f in p["families"].values())
    assert len(bench.runs) == len(p["seeds"]) * (len(p["families"]) + n_students)
    for run in bench.runs:
        if run.method in ("teacher", "none"):
            assert run.deps == [] and run.teacher is None
        else:
            assert run.deps == [run.teacher] and run.teacher.seed == run.seed and run.teacher.family == run.family
            rel = p["families"][run.family]["student_rel_widths"]
            assert any(run.width == pytest.approx(run.teacher.width * r) for r in rel)
    # scheduling: all teachers start first, then the longest runs (itKD, PointDistiller) before the cheap ones
    order = sorted(bench.runs, key=bk.run_priority)
    n_teachers = len(p["seeds"]) * len(p["families"])
    assert all(r.method == "teacher" for r in order[:n_teachers])
    assert order[n_teachers].method == "itkd" and order[-1].method == "none"


def test_derived_kd_config_is_student_config_plus_kd_block(tmp_path):
    bench = _bench(tmp_path)
    run = next(r for r in bench.runs if r.method == "pointdistiller" and r.family == "pointpillar")
    bench.write_cfg(run.teacher)
    cfg = cfg_from_yaml_file(bench.write_cfg(run))
    alone = cfg_from_yaml_file(bench.write_cfg(next(r for r in bench.runs if r.method == "none"
                                                    and r.family == "pointpillar" and r.seed == run.seed)))
    assert cfg.MODEL == alone.MODEL and cfg.DATA_CONFIG == alone.DATA_CONFIG
    assert cfg.MODEL.WIDTH == run.width and cfg.OPTIMIZATION.NUM_EPOCHS == run.epochs
    assert cfg.KD.TEACHER.CKPT == str(bench.ckpt_path(run.teacher))
    head = cfg.KD.HEADS[0]
    assert head.NAME == "PointDistiller" and head.NUM_KEEP == 2048 and head.K == 32   # preset compute override
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST == ["gt_sampling"]
    assert cfg.OPTIMIZATION.USE_AMP is True and cfg.OPTIMIZATION.CHANNELS_LAST is True
    assert alone.OPTIMIZATION.USE_AMP is True  # every run of the table trains the same way
    assert cfg.KD.TEACHER.CHANNELS_LAST is True
    teacher_cfg = cfg_from_yaml_file(cfg.KD.TEACHER.CFG_FILE)
    assert teacher_cfg.MODEL.WIDTH == run.teacher.width and "KD" not in teacher_cfg


def test_itkd_family_students_narrow_only_the_neck(tmp_path):
    bench = _bench(tmp_path)
    teacher = next(r for r in bench.runs if r.method == "teacher" and r.family == "centerpoint_pillar")
    assert cfg_from_yaml_file(bench.write_cfg(teacher)).MODEL.WIDTH == teacher.width
    for method in ("none", "itkd"):
        run = next(r for r in bench.runs if r.method == method and r.family == "centerpoint_pillar")
        cfg = cfg_from_yaml_file(bench.write_cfg(run))
        assert cfg.MODEL.WIDTH == teacher.width and cfg.MODEL.BACKBONE_2D.WIDTH == run.width < teacher.width
        assert "WIDTH" not in cfg.MODEL.VFE and "WIDTH" not in cfg.MODEL.DENSE_HEAD


def test_report_gain_gap_and_significance(tmp_path):
    bench = _bench(tmp_path, "main")
    classes = ["Car", "Pedestrian", "Cyclist"]
    values = {"teacher": 30.0, "none": 10.0, "itkd": 15.0}
    for run in bench.runs:
        metrics = {f"{c}_{k}/moderate_R40": values[run.method] for c in classes for k in ("3d", "bev")}
        path = bench.result_path(run)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metrics": metrics, "params": 1000, "flops": 2e9, "latency_ms": 5.0,
                                    "train_seconds": 60.0, "device": "cpu"}))
    rows = bk.summarize_results(bench, classes)
    assert {r["method"]: r["map3d"][0] for r in rows} == values
    text = bk.write_report(bench, rows, classes, tmp_path / "r.md", tmp_path / "r.png", 120.0, lambda m: None)
    itkd_line = next(line for line in text.splitlines() if "| itKD |" in line)
    assert "+5.00" in itkd_line and "25%" in itkd_line and "n/a (1 seed)" in itkd_line
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_moderate_map_averages_classes():
    m = {"Car_3d/moderate_R40": 60.0, "Pedestrian_3d/moderate_R40": 30.0, "Cyclist_3d/moderate_R40": 0.0}
    assert bk.moderate_map(m, ["Car", "Pedestrian", "Cyclist"]) == pytest.approx(30.0)


def test_visualize_model_spec_parsing():
    vis = _load("visualize")
    assert vis.parse_model_spec("t=cfgs/a.yaml,/x/t.pth,MODEL.WIDTH=0.5") == (
        "t", "cfgs/a.yaml", "/x/t.pth", ["MODEL.WIDTH", "0.5"])
    with pytest.raises(ValueError, match="NAME=CFG_FILE,CKPT"):
        vis.parse_model_spec("cfgs/a.yaml")
