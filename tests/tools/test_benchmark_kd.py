"""The KD benchmark (pcdet/kd/benchmark): run planning, derived configs (KD block added to the student config),
paired gains with t-intervals, the reports and the JSON of the results."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.kd.benchmark import PRESETS, Benchmark, paired_gains, run_priority, t_interval
from pcdet.kd.benchmark.stats import fmt_interval
from pcdet.kd.benchmark.plan import recipe_key as rep_recipe
from pcdet.kd.benchmark.plan import RUN_COST, BenchmarkError
from pcdet.kd.benchmark import report as rep
from pcdet.kd.benchmark.cli import parse_args
from pcdet.kd.benchmark.runner import Runner

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)   # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def _manifest(tmp_path):
    """A zoo manifest naming the cpu preset's teachers (the files need not exist for planning)."""
    path = tmp_path / "zoo" / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    teachers = [{"name": f"{f}_w0.5", "family": f, "width": 0.5, "cfg_file": f"tools/cfgs/zoo/{f}_teacher.yaml",
                 "ckpt": f"{f}_w0.5.pth", "curve": [[2, 10.0], [4, 20.0]], "longer": {"epochs": 6, "map3d_mod": 20.5}}
                for f in ("pointpillar", "centerpoint_pillar")]
    path.write_text(json.dumps({"teachers": teachers}))
    return path


def _bench(tmp_path, preset="mini", mode="final", families=None):
    return Benchmark(preset, PRESETS[preset], tmp_path / "work", tmp_path / "data", mode=mode, families=families,
                     zoo_manifest=_manifest(tmp_path))


def test_plan_has_teacher_per_seed_and_kd_runs_depend_on_it(tmp_path):
    bench = _bench(tmp_path)
    p = PRESETS["mini"]
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
    order = sorted(bench.runs, key=run_priority)
    n_teachers = len(p["seeds"]) * len(p["families"])
    assert all(r.method == "teacher" for r in order[:n_teachers])
    assert order[n_teachers].method == "itkd" and order[-1].method == "none"


def test_cpu_plan_uses_zoo_teachers_and_pairs_seeds(tmp_path):
    bench = _bench(tmp_path, "cpu")
    p = PRESETS["cpu"]
    teachers = [r for r in bench.runs if r.method == "teacher"]
    assert [t.zoo for t in teachers] == ["pointpillar_w0.5", "centerpoint_pillar_w0.5"]
    assert all(r.deps == [] for r in bench.runs)          # zoo teachers are not trained: nothing waits
    for family, fam in p["families"].items():
        for method in fam["methods"]:
            runs = [r for r in bench.runs if r.family == family and r.method == method]
            assert sorted(r.seed for r in runs) == p["seeds"]
    # a KD run names the zoo teacher's shipped config and checkpoint (whose tag is checked at load time)
    run = next(r for r in bench.runs if r.method == "pointdistiller")
    cfg = cfg_from_yaml_file(bench.write_cfg(run))
    assert cfg.KD.TEACHER.CFG_FILE.endswith("tools/cfgs/zoo/pointpillar_teacher.yaml")
    assert cfg.KD.TEACHER.CKPT == str(tmp_path / "zoo" / "pointpillar_w0.5.pth")
    # student alone of seed 0 keeps its checkpoints for the learning curve, the others do not
    curve_runs = [r.name for r in bench.runs if r.curve]
    assert curve_runs == ["pointpillar_none_w0.25_s0", "centerpoint_pillar_none_w0.125_s0"]
    assert Runner(bench).curve_epochs(bench.runs[1]) == list(range(2, p["student_epochs"]["pointpillar"], 2))


def test_cpu_centerpoint_pillar_inherit_run_narrows_only_the_neck_and_inherits(tmp_path):
    # teacher-guided init on the itKD family's 1/4 student: the student is the teacher's config with the 2D neck
    # at 1/4 of its widths, initialised from the zoo teacher, with no distillation head
    bench = _bench(tmp_path, "cpu", families=["centerpoint_pillar"])
    run = next(r for r in bench.runs if r.method == "inherit" and r.seed == 0)
    cfg = cfg_from_yaml_file(bench.write_cfg(run))
    assert cfg.MODEL.WIDTH == 0.5 and cfg.MODEL.BACKBONE_2D.WIDTH == 0.125
    assert cfg.KD.INIT_FROM_TEACHER is True and list(cfg.KD.HEADS) == []
    assert cfg.KD.TEACHER.CKPT == str(tmp_path / "zoo" / "centerpoint_pillar_w0.5.pth")


def test_main_job_distils_with_the_cpu_benchmarks_frozen_pointdistiller_plus_init(tmp_path):
    # the README main job trains the student alone and the cpu benchmark's best PointPillars method: its distilled
    # run is PointDistiller + teacher-guided init with the KD block frozen there, on the short schedule
    main = _bench(tmp_path, "main")
    cpu = _bench(tmp_path, "cpu", families=["pointpillar"])
    assert sorted(r.method for r in main.runs) == ["none", "pd_inherit", "teacher"]
    run = next(r for r in main.runs if r.method == "pd_inherit")
    ref = next(r for r in cpu.runs if r.method == "pd_inherit" and r.seed == run.seed)
    kd, kd_ref = (cfg_from_yaml_file(b.write_cfg(r)).KD for b, r in ((main, run), (cpu, ref)))
    assert kd.INIT_FROM_TEACHER is True and kd.HEADS[0].NAME == "PointDistiller" and kd.HEADS[0].TAU == 4.0
    assert kd == kd_ref
    cfg = cfg_from_yaml_file(main.write_cfg(run))
    assert cfg.OPTIMIZATION.NUM_EPOCHS == 3 and cfg.MODEL.WIDTH == 0.25


def test_tune_mode_runs_each_setting_once_and_family_filter(tmp_path):
    bench = _bench(tmp_path, "cpu", mode="tune", families=["pointpillar"])
    p = PRESETS["cpu"]
    assert {r.family for r in bench.runs} == {"pointpillar"}
    # each setting on the first seed, unless it lists its own (the student-alone recipes)
    assert {r.seed for r in bench.runs if r.method != "none"} == {p["seeds"][0]}
    pd = [r for r in bench.runs if r.method == "pointdistiller"]
    assert [r.label for r in pd] == [s["label"] for s in p["tuning"]["pointdistiller"]["pointpillar"]]
    # overrides: the frozen compute overrides plus the setting's, merged into every head of the KD block
    run = next(r for r in pd if r.label == "tau1_w8")
    head = cfg_from_yaml_file(bench.write_cfg(run)).KD.HEADS[0]
    assert head.TAU == 1.0 and head.LOSS_WEIGHT == 8.0 and head.NUM_KEEP == 2048
    # methods without a sweep still get their default setting on the tuning split
    assert [r.label for r in bench.runs if r.method == "label_kd"] == ["default"]
    # the same training config shares one output folder (a tuning run reused by the final table): FitNet's 'e18'
    # setting is the final PointPillars config; its 12-epoch 'default' is not, nor is a weight of the sweep
    pp_final = _bench(tmp_path, "cpu", families=["pointpillar"])
    pp_fit = next(r for r in pp_final.runs if r.method == "fitnet" and r.seed == p["seeds"][0])
    fit = {r.label: r for r in bench.runs if r.method == "fitnet"}
    assert list(fit) == ["default", "e18", "w10_e18", "w100_e18"]
    assert pp_final.run_dir(pp_fit) == bench.run_dir(fit["e18"]) and pp_final.cfg_hash(pp_fit) == bench.cfg_hash(fit["e18"])
    assert (pp_fit.epochs, fit["default"].epochs) == (p["student_epochs"]["pointpillar"], 12)
    assert len({bench.run_dir(r) for r in fit.values()}) == 4
    assert cfg_from_yaml_file(bench.write_cfg(fit["w100_e18"])).KD.HEADS[0].LOSS_WEIGHT == 100.0
    cp_tune = _bench(tmp_path, "cpu", mode="tune", families=["centerpoint_pillar"])
    final = _bench(tmp_path, "cpu", families=["centerpoint_pillar"])
    same = next(r for r in final.runs if r.method == "fitnet" and r.seed == p["seeds"][0])
    tuned = next(r for r in cp_tune.runs if r.method == "fitnet")
    assert final.run_dir(same) == cp_tune.run_dir(tuned) and final.cfg_text(same) == cp_tune.cfg_text(tuned)
    assert final.result_path(same, "val") != cp_tune.result_path(tuned, "tune")
    other = next(r for r in pd if r.label == "tau1")
    assert bench.run_dir(other) != bench.run_dir(run) and bench.cfg_path(other) != bench.cfg_path(run)
    with pytest.raises(Exception, match="no families"):
        _bench(tmp_path, "cpu", families=["nope"])


def test_teachers_mode_plans_base_and_longer_schedule(tmp_path):
    bench = _bench(tmp_path, "cpu", mode="teachers")
    by = {r.name: r for r in bench.runs}
    base, longer = by["pointpillar_teacher_w0.5_s0"], by["pointpillar_teacher_w0.5_s0_longer"]
    assert longer.epochs == round(1.5 * base.epochs) and base.curve and not longer.curve
    cfg_b, cfg_l = (cfg_from_yaml_file(bench.write_cfg(r)) for r in (base, longer))
    zoo_cfg = cfg_from_yaml_file(TOOLS / "cfgs" / "zoo" / "pointpillar_teacher.yaml")
    assert cfg_b.MODEL == zoo_cfg.MODEL and cfg_b.OPTIMIZATION == zoo_cfg.OPTIMIZATION
    assert cfg_l.OPTIMIZATION.NUM_EPOCHS == longer.epochs and cfg_l.MODEL == zoo_cfg.MODEL
    assert cfg_b.DATA_CONFIG.DATA_PATH == str(tmp_path / "data")


def test_derived_kd_config_is_student_config_plus_kd_block(tmp_path):
    bench = _bench(tmp_path)
    run = next(r for r in bench.runs if r.method == "pointdistiller" and r.family == "pointpillar")
    bench.write_cfg(run.teacher)
    cfg = cfg_from_yaml_file(bench.write_cfg(run))
    alone = cfg_from_yaml_file(bench.write_cfg(next(r for r in bench.runs if r.method == "none"
                                                    and r.family == "pointpillar" and r.seed == run.seed)))
    assert cfg.MODEL == alone.MODEL and cfg.DATA_CONFIG == alone.DATA_CONFIG
    assert cfg.OPTIMIZATION == alone.OPTIMIZATION
    assert cfg.MODEL.WIDTH == run.width and cfg.OPTIMIZATION.NUM_EPOCHS == run.epochs
    assert cfg.KD.TEACHER.CKPT == str(bench.ckpt_path(run.teacher))
    head = cfg.KD.HEADS[0]
    assert head.NAME == "PointDistiller" and head.NUM_KEEP == 2048 and head.K == 32   # preset compute override
    assert cfg.DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST == ["gt_sampling"]
    assert cfg.OPTIMIZATION.USE_AMP == "auto" and cfg.OPTIMIZATION.CHANNELS_LAST is True
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


def test_t_interval_and_paired_gains_match_hand_values():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    # sd 1, n 3: t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3) = 2.484138
    assert mean == pytest.approx(2.0) and high - mean == pytest.approx(2.484138, abs=1e-6)
    assert low == pytest.approx(2.0 - 2.484138, abs=1e-6)
    m, lo, hi = t_interval([5.0])
    assert m == 5.0 and math.isnan(lo) and math.isnan(hi)
    assert paired_gains({0: 12.0, 1: 11.0, 2: 15.0}, {0: 10.0, 2: 14.0, 3: 1.0}) == [(0, 2.0), (2, 1.0)]


def _fake_results(bench, values, split="val", seeds_shift=None, seeds=None):
    classes = rep.CLASSES
    for run in bench.runs:
        if run.method not in values:      # a method not run yet: the report covers whatever results exist
            continue
        if seeds is not None and run.seed not in seeds and run.method != "teacher":
            continue
        v = values[run.method] + (seeds_shift or {}).get((run.method, run.seed), 0.0)
        metrics = {f"{c}_{k}/moderate_R40": v for c in classes for k in ("3d", "bev")}
        path = bench.result_path(run, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metrics": metrics, "params": 1000, "flops": 2e9, "latency_ms": 5.0,
                                    "train_seconds": 60.0, "device": "cpu", "cfg_hash": bench.cfg_hash(run),
                                    "data": bench.data_signature()}))


def test_report_paired_gain_interval_gap_and_json(tmp_path):
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    values = {"teacher": 30.0, "none": 10.0, "logit_kd": 11.0, "fitnet": 10.5, "pointdistiller": 13.0}
    # per-seed noise shared by the pair cancels in the paired gain: gains 3, 3, 3 -> interval of width 0
    shift = {(m, s): 2.0 * s for m in values for s in (0, 1, 2)}
    shift[("pointdistiller", 2)] += 3.0     # gains 3, 3, 6
    _fake_results(bench, values, seeds_shift=shift, seeds=(0, 1, 2))   # the preset has more seeds than have run
    records = rep.collect(bench, "val")
    teacher, rows = rep.gain_rows(records, "pointpillar")
    assert teacher["map3d_mod"] == 30.0
    pd = next(r for r in rows if r["method"] == "pointdistiller")
    assert pd["gains"] == [(0, 3.0), (1, 3.0), (2, 6.0)]
    mean, low, high = t_interval([3.0, 3.0, 6.0])
    assert pd["gain"] == pytest.approx((4.0, low, high)) and low < 4.0 < high
    assert pd["gap_closed"] == pytest.approx(4.0 / (30.0 - 12.0))
    teachers = json.loads(_manifest(tmp_path).read_text())["teachers"]
    text = rep.final_markdown(bench, records, teachers)
    line = next(l for l in text.splitlines() if "| PointDistiller |" in l)
    assert f"+4.00 [{low:+.2f}, {high:+.2f}]" in line and "s2: +6.00" in line and "22%" in line
    out = rep.results_json(records, teachers)
    assert {"family", "method", "width", "seed", "map3d_mod", "mapbev_mod"} <= set(out["runs"][0])
    assert sorted({r["method"] for r in out["runs"]}) == sorted(values)
    assert out["teachers"][0]["longer"] == {"epochs": 6, "map3d_mod": 20.5}
    rep.plot(bench, records, teachers, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_final_report_gives_distillation_over_init_paired_by_seed(tmp_path):
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    values = {"teacher": 30.0, "none": 10.0, "inherit": 14.0, "pd_inherit": 15.0}
    shift = {("none", s): 3.0 * s for s in (0, 1, 2)}
    shift.update({("inherit", s): 0.1 * s for s in (0, 1, 2)})
    shift.update({("pd_inherit", s): 0.1 * s + g for s, g in ((0, 1.0), (1, 0.5), (2, 0.0))})   # gains 2, 1.5, 1
    _fake_results(bench, values, seeds_shift=shift, seeds=(0, 1, 2))
    _, rows = rep.gain_rows(rep.collect(bench, "val"), "pointpillar")
    over = rep.over_init_rows(rows)
    assert len(over) == 1 and over[0]["method"] == "pd_inherit"
    assert over[0]["gains"] == [(0, pytest.approx(2.0)), (1, pytest.approx(1.5)), (2, pytest.approx(1.0))]
    assert over[0]["gain"] == pytest.approx(t_interval([2.0, 1.5, 1.0]))
    text = rep.final_markdown(bench, rep.collect(bench, "val"), [])
    line = next(l for l in text.splitlines() if l.startswith("| 0.25 | PointDistiller + teacher-guided init | 3 |"))
    assert fmt_interval(*t_interval([2.0, 1.5, 1.0])) in line
    assert "standard deviation 0.10 against 3.00" in text


def test_final_report_pairs_each_method_against_fitnet_and_logit_kd_on_their_shared_seeds(tmp_path):
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    values = {"teacher": 30.0, "none": 10.0, "fitnet": 11.0, "logit_kd": 12.0, "pd_inherit": 14.0}
    shift = {(m, s): 2.0 * s for m in values for s in (0, 1, 2)}     # shared per-seed noise cancels in the pairs
    shift[("pd_inherit", 1)] += 1.0                                   # pd_inherit - fitnet: 3, 4, 3
    _fake_results(bench, values, seeds_shift=shift, seeds=(0, 1, 2))
    records = [r for r in rep.collect(bench, "val") if not (r["method"] == "logit_kd" and r["seed"] == 2)]
    _, rows = rep.gain_rows(records, "pointpillar")
    against = {(o["method"], o["against"]): o for o in rep.over_baseline_rows(rows)}
    # neither the student alone nor one baseline against the other is paired
    assert set(against) == {("pd_inherit", "fitnet"), ("pd_inherit", "logit_kd")}
    fit = against[("pd_inherit", "fitnet")]
    assert fit["gains"] == [(0, pytest.approx(3.0)), (1, pytest.approx(4.0)), (2, pytest.approx(3.0))]
    assert fit["gain"] == pytest.approx(t_interval([3.0, 4.0, 3.0]))
    logit = against[("pd_inherit", "logit_kd")]     # logit KD has no seed 2: two pairs
    assert logit["gains"] == [(0, pytest.approx(2.0)), (1, pytest.approx(3.0))]
    text = rep.final_markdown(bench, records, [])
    line = next(l for l in text.splitlines() if l.startswith("| 0.25 | PointDistiller + teacher-guided init | Logit KD"))
    assert line.split(" | ")[3:5] == ["2", fmt_interval(*t_interval([2.0, 3.0]))] and "s1: +3.00" in line


def test_final_report_states_the_training_time_of_the_runs_shown_and_of_the_plan(tmp_path):
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    planned = [r for r in bench.runs if r.family == "pointpillar" and r.method != "teacher"]
    epochs = PRESETS["cpu"]["student_epochs"]["pointpillar"]
    rec = dict(family="pointpillar", epochs=epochs, device="cpu", threads=1)
    # none costs 3 units per epoch and takes 30 min, PointDistiller 6 per epoch and 60 min: 5/9 min per unit each
    records = [dict(rec, method="teacher", train_seconds=9999.0),
               dict(rec, method="none", train_seconds=1800.0),
               dict(rec, method="pointdistiller", train_seconds=3600.0),
               dict(rec, method="fitnet", train_seconds=0.0),                  # no recorded time: not averaged
               dict(rec, family="centerpoint_pillar", method="none", train_seconds=60.0)]
    assert RUN_COST["none"] == 3.0 and RUN_COST["pointdistiller"] == 6.0
    hours = 5.0 / 9.0 * sum(r.cost for r in planned) / PRESETS["cpu"]["jobs"] / 60.0
    note = rep.training_time_note(bench, records, "pointpillar")
    assert note.startswith("Training time of 2 of the 3 student runs shown (those with a recorded time): 45 min per "
                           "run on average (30-60), 1 thread(s) per run, measured with other runs beside them.")
    assert f"the family's {len(planned)} planned student runs take about {hours:.1f} h of training with 2 in" in note
    # a method's own timed runs set its estimate: none at 54 min moves the plan by its runs' share only
    slow = [dict(r, train_seconds=3240.0) if r["method"] == "none" else r for r in records]
    rate = (54.0 / 54.0 + 60.0 / 108.0) / 2
    n_none = sum(r.method == "none" for r in planned)
    expect = (54.0 * n_none + sum(rate * r.cost for r in planned if r.method not in ("none", "pointdistiller"))
              + 60.0 * sum(r.method == "pointdistiller" for r in planned)) / 2 / 60.0
    assert f"take about {expect:.1f} h of training" in rep.training_time_note(bench, slow, "pointpillar")
    assert rep.training_time_note(bench, records[:1] + records[3:4], "pointpillar") == ""


def test_collect_takes_the_training_time_of_the_split_that_trained_the_checkpoint(tmp_path):
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    _fake_results(bench, {"none": 10.0}, seeds=(0,))                       # val result, train_seconds 60
    run = next(r for r in bench.runs if r.method == "none" and r.seed == 0)
    val = bench.result_path(run, "val")
    data = json.loads(val.read_text())
    val.write_text(json.dumps(dict(data, train_seconds=0.0)))           # its checkpoint was reused
    assert rep.collect(bench, "val")[0]["train_seconds"] == 0.0
    tune = bench.result_path(run, "tune")
    tune.parent.mkdir(parents=True, exist_ok=True)
    tune.write_text(json.dumps(dict(data, train_seconds=2650.0)))
    assert [r["train_seconds"] for r in rep.collect(bench, "val")] == [2650.0]


def test_train_returns_the_logged_training_time_of_a_reused_checkpoint(tmp_path):
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    run = next(r for r in bench.runs if r.method == "none")
    ckpt = bench.ckpt_path(run)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"x")
    runner = Runner(bench, jobs=1, threads=1)
    assert runner.train(run) == 0.0                                          # no logs: nothing known
    log = bench.run_dir(run) / "log"
    log.mkdir(parents=True, exist_ok=True)
    (log / "train_a.log").write_text("2026-12-02 00:00:00,1   INFO  **start training x\n"
                                     "2026-12-02 00:44:30,1   INFO  **end training x\n")
    assert runner.train(run) == pytest.approx(44.5 * 60)


def test_train_and_eval_of_a_reused_checkpoint_logs_its_evaluation_time_not_a_negative_one(tmp_path, monkeypatch):
    """A checkpoint trained for another split (the tuning run of the setting later frozen) has its logged training
    time; the evaluation that follows is timed on its own (it was logged as minus the training time)."""
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    run = next(r for r in bench.runs if r.method == "none")
    ckpt = bench.ckpt_path(run)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"x")
    log = bench.run_dir(run) / "log"
    log.mkdir(parents=True, exist_ok=True)
    (log / "train_a.log").write_text("2026-12-02 00:00:00,1   INFO  **start training x\n"
                                     "2026-12-02 01:00:00,1   INFO  **end training x\n")
    runner = Runner(bench, jobs=1, threads=1)
    lines, evaluated = [], []
    monkeypatch.setattr(runner, "log", lines.append)
    monkeypatch.setattr(runner, "results_complete", lambda r: False)
    monkeypatch.setattr(runner, "evaluate", lambda r, split, epoch=None, **kw: evaluated.append((split, epoch)))
    runner.train_and_eval(run)
    assert ("val", None) in evaluated
    line = next(x for x in lines if x.startswith(run.name))
    assert "trained in 60.0 min (checkpoint reused), evaluated on" in line, line
    assert int(line.rsplit(" in ", 1)[1].split()[0]) >= 0, line


def test_a_filtered_invocation_does_not_record_its_wall_time_as_the_familys(tmp_path, monkeypatch):
    from pcdet.kd.benchmark import cli

    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    _fake_results(bench, {"teacher": 30.0, "none": 10.0}, seeds=(0,))
    monkeypatch.setattr(cli, "eval_self_check", lambda log: None)
    monkeypatch.setattr(Runner, "prepare_data", lambda self: None)
    monkeypatch.setattr(Runner, "execute", lambda self: None)
    monkeypatch.setattr(cli, "plot", lambda *args, **kwargs: None)
    results = tmp_path / "work" / "results"
    argv = ["--preset", "cpu", "--family", "pointpillar", "--work_dir", str(tmp_path / "work"), "--data_dir",
            str(tmp_path / "data"), "--results_dir", str(results), "--zoo_dir", str(tmp_path / "zoo"), "--docs_dir",
            str(tmp_path / "docs")]
    cli.main(argv + ["--methods", "none", "--seeds", "0"])
    assert not (results / "wall_times.json").exists()
    cli.main(argv)
    assert set(json.loads((results / "wall_times.json").read_text())) == {"final:pointpillar"}


def test_tuning_report_lists_each_setting_with_its_difference(tmp_path):
    bench = _bench(tmp_path, "cpu", mode="tune", families=["pointpillar"])
    _fake_results(bench, {"teacher": 30.0, "none": 10.0, "logit_kd": 9.0, "fitnet": 10.5, "pointdistiller": 12.0},
                  split="tune")
    text = rep.tuning_markdown(bench, rep.collect(bench, "tune"))
    rows = [l for l in text.splitlines() if "| PointDistiller |" in l]
    assert len(rows) == 4 and all("+2.00" in l for l in rows) and '"TAU": 1.0' in rows[1]
    assert sum('"TEACHER_GRAPH": "trainable"' in l for l in rows) == 1


def _preset_with(**changes):
    preset = json.loads(json.dumps(PRESETS["cpu"]))
    preset["tuning"] = dict(preset["tuning"], **changes)
    for method in changes:   # a replaced sweep has other labels: its decision rule goes with it
        preset["decisions"].pop(method, None)
    return preset


def test_tune_mode_student_recipes_run_their_seeds_and_set_only_the_optimizer(tmp_path):
    bench = _bench(tmp_path, "cpu", mode="tune", families=["pointpillar"])
    recipes = PRESETS["cpu"]["tuning"]["none"]["pointpillar"]
    alone = [r for r in bench.runs if r.method == "none"]
    assert sorted((r.label, r.seed) for r in alone) == sorted((s["label"], seed) for s in recipes
                                                              for seed in s["seeds"])
    # KD settings keep the single tuning seed
    assert {r.seed for r in bench.runs if r.method not in ("none", "teacher")} == {PRESETS["cpu"]["seeds"][0]}
    low = next(r for r in alone if r.label == "lr0.001" and r.seed == 0)
    base = next(r for r in alone if r.label == "e12" and r.seed == 0)
    cfg_base, cfg_low = (cfg_from_yaml_file(bench.write_cfg(r)) for r in (base, low))
    assert cfg_low.OPTIMIZATION.LR == 0.001 and cfg_base.OPTIMIZATION.LR == 0.003
    cfg_low.OPTIMIZATION.LR = 0.003
    assert cfg_low.OPTIMIZATION == cfg_base.OPTIMIZATION and cfg_low.MODEL == cfg_base.MODEL
    assert bench.cfg_hash(low) != bench.cfg_hash(base) and bench.run_dir(low) != bench.run_dir(base)
    # the preset's recipe on seed 1 is the final table's student alone of seed 1: one training, reused
    final = _bench(tmp_path, "cpu", families=["pointpillar"])
    same = next(r for r in final.runs if r.method == "none" and r.seed == 1)
    base1 = next(r for r in alone if r.label == "" and r.seed == 1)
    assert final.run_dir(same) == bench.run_dir(base1) and final.cfg_text(same) == bench.cfg_text(base1)
    e12 = [r for r in alone if r.label == "e12"]
    assert e12 and all(r.epochs == 12 and cfg_from_yaml_file(bench.write_cfg(r)).OPTIMIZATION.NUM_EPOCHS == 12
                       for r in e12)
    assert cfg_from_yaml_file(bench.write_cfg(base1)).OPTIMIZATION.NUM_EPOCHS == \
        PRESETS["cpu"]["student_epochs"]["pointpillar"]
    # the KD sweep of the 12-epoch recipe keeps its schedule and pairs with the 12-epoch student alone
    pd = next(r for r in bench.runs if r.method == "pointdistiller" and r.label == "tau1")
    assert pd.epochs == 12 and rep_recipe(pd) == rep_recipe(base)
    # a distillation setting with a recipe: OPTIMIZATION goes to the config, never into the KD block
    preset = _preset_with(fitnet={"pointpillar": [
        {"label": "lr", "overrides": {"OPTIMIZATION": {"LR": 0.001}, "LOSS_WEIGHT": 2.0}, "epochs": 6}]})
    b2 = Benchmark("cpu", preset, tmp_path / "w2", tmp_path / "data", mode="tune", families=["pointpillar"],
                   zoo_manifest=_manifest(tmp_path))
    fit = next(r for r in b2.runs if r.method == "fitnet")
    cfg = cfg_from_yaml_file(b2.write_cfg(fit))
    assert cfg.OPTIMIZATION.LR == 0.001 and cfg.OPTIMIZATION.NUM_EPOCHS == 6 and fit.epochs == 6
    assert cfg.KD.HEADS[0].LOSS_WEIGHT == 2.0 and "OPTIMIZATION" not in cfg.KD.HEADS[0]
    with pytest.raises(BenchmarkError, match="NUM_EPOCHS"):
        Benchmark("cpu", _preset_with(none={"pointpillar": [
            {"label": "x", "overrides": {"OPTIMIZATION": {"NUM_EPOCHS": 3}}}]}), tmp_path / "w3", tmp_path / "data",
            mode="tune", families=["pointpillar"], zoo_manifest=_manifest(tmp_path))
    with pytest.raises(BenchmarkError, match="sets only OPTIMIZATION keys"):
        Benchmark("cpu", _preset_with(none={"pointpillar": [{"label": "x", "overrides": {"TAU": 1.0}}]}),
                  tmp_path / "w5", tmp_path / "data", mode="tune", families=["pointpillar"],
                  zoo_manifest=_manifest(tmp_path))
    with pytest.raises(BenchmarkError, match=r"seeds \[9\]"):
        Benchmark("cpu", _preset_with(none={"pointpillar": [{"label": "", "overrides": {}, "seeds": [9]}]}),
                  tmp_path / "w4", tmp_path / "data", mode="tune", families=["pointpillar"],
                  zoo_manifest=_manifest(tmp_path))


def test_settings_filter_keeps_only_those_tuning_settings(tmp_path):
    bench = Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", tmp_path / "data", mode="tune",
                      families=["pointpillar"], zoo_manifest=_manifest(tmp_path), methods=["pointdistiller", "none"],
                      settings=["tau1", "e12"])
    assert sorted(r.name for r in bench.runs if r.method != "teacher") == sorted(
        [f"pointpillar_none_w0.25_s{s}_e12" for s in (0, 1, 2)] + ["pointpillar_pointdistiller_w0.25_s0_tau1"])
    assert any(r.method == "teacher" and r.zoo for r in bench.runs)
    fit = Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", tmp_path / "data", mode="tune",
                    families=["pointpillar"], zoo_manifest=_manifest(tmp_path), methods=["fitnet"],
                    settings=["default"])
    assert [r.label for r in fit.runs if r.method != "teacher"] == ["default"]
    # '' is the student alone's own recipe only, never a KD method's 'default'
    own = Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", tmp_path / "data", mode="tune",
                    families=["pointpillar"], zoo_manifest=_manifest(tmp_path), settings=[""])
    assert sorted(r.name for r in own.runs if r.method != "teacher") == [
        f"pointpillar_none_w0.25_s{s}" for s in (0, 1, 2)]
    with pytest.raises(BenchmarkError, match="no tuning settings"):
        Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", tmp_path / "data", mode="tune",
                  families=["pointpillar"], zoo_manifest=_manifest(tmp_path), settings=["nope"])
    with pytest.raises(BenchmarkError, match="needs --tune"):
        Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", tmp_path / "data", families=["pointpillar"],
                  zoo_manifest=_manifest(tmp_path), settings=["tau1"])


def test_tune_mode_drops_unused_teachers_and_frozen_recipes_are_refused(tmp_path):
    preset = json.loads(json.dumps(PRESETS["mini"]))
    preset["tuning"] = {"none": {"pointpillar": [{"label": "", "overrides": {}, "seeds": [0, 1]}]}}
    bench = Benchmark("mini", preset, tmp_path / "w", tmp_path / "d", mode="tune", families=["pointpillar"])
    teachers = [r.name for r in bench.runs if r.method == "teacher"]
    assert teachers == ["pointpillar_teacher_w0.5_s0"]      # seed 1 runs only the student alone
    assert {r.seed for r in bench.runs if r.method == "none"} == {0, 1}
    bad = json.loads(json.dumps(PRESETS["cpu"]))
    bad["kd_overrides"]["fitnet"] = {"pointpillar": {"OPTIMIZATION": {"LR": 0.001}}}
    with pytest.raises(BenchmarkError, match=r"kd_overrides\[fitnet\]\[pointpillar\] sets a training recipe"):
        Benchmark("cpu", bad, tmp_path / "w", tmp_path / "d", zoo_manifest=_manifest(tmp_path))


def test_committed_results_keep_their_config_hashes():
    """The result files committed for the cpu preset are found under the hashes the plan computes now (a change of
    the derived configs would orphan them)."""
    repo = TOOLS.parent
    for native, names in ((False, ["pointpillar_none_w0.25_s0", "pointpillar_none_w0.25_s2_e12",
                                    "pointpillar_none_w0.25_s0_lr0.001", "pointpillar_teacher_zoo",
                                    "pointpillar_pd_inherit_w0.25_s0_tau1_e18",
                                    "pointpillar_pd_inherit_w0.25_s0_tau4_e18"]),
                          (True, ["pointpillar_none_w0.25_s0_e12", "pointpillar_pointdistiller_w0.25_s0_tau1",
                                  "centerpoint_pillar_itkd_w0.125_s0_ae5_det1"])):
        bench = Benchmark("cpu", PRESETS["cpu"], repo / "output" / "benchmark_kd" / "cpu",
                          repo / "data" / "synthetic_kitti_cpu", mode="tune",
                          zoo_manifest=repo / "model_zoo" / "manifest.json",
                          results_dir=repo / "docs" / "benchmark_runs" / "cpu", native_bf16=native)
        for name in names:
            run = next(r for r in bench.runs if r.name == name)
            assert bench.result_path(run, "tune").is_file(), (native, name, bench.cfg_hash(run))


def test_tuning_report_pairs_recipes_and_methods_by_seed_and_recipe(tmp_path):
    preset = _preset_with(fitnet={"pointpillar": [
        {"label": "default", "overrides": {}, "seeds": [0, 1, 2]},
        {"label": "lr", "overrides": {"OPTIMIZATION": {"LR": 0.001}}, "seeds": [0, 1, 2]}]},
        none={"pointpillar": [{"label": "", "overrides": {}, "seeds": [0, 1, 2]},
                              {"label": "lr0.001", "overrides": {"OPTIMIZATION": {"LR": 0.001}}, "seeds": [0, 1, 2]}]})
    bench = Benchmark("cpu", preset, tmp_path / "work", tmp_path / "data", mode="tune", families=["pointpillar"],
                      zoo_manifest=_manifest(tmp_path))
    # student alone: 10 + seed (own recipe), 13 + 2 seed (lr0.001); FitNet = its recipe's student alone + 1 / - 2
    value = {("none", ""): lambda s: 10.0 + s, ("none", "lr0.001"): lambda s: 13.0 + 2 * s,
             ("fitnet", "default"): lambda s: 11.0 + s, ("fitnet", "lr"): lambda s: 11.0 + 2 * s,
             ("teacher", ""): lambda s: 40.0}
    for run in bench.runs:
        f = value.get((run.method, run.label))
        if f is None:
            continue
        metrics = {f"{c}_{k}/moderate_R40": f(run.seed) for c in rep.CLASSES for k in ("3d", "bev")}
        path = bench.result_path(run, "tune")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metrics": metrics, "device": "cpu", "cfg_hash": bench.cfg_hash(run),
                                    "data": bench.data_signature()}))
    records = [dict(r, native_bf16=False) for r in rep.collect(bench, "tune")]
    rows = {(r["method"], r["label"]): r for r in rep.tuning_rows(records, "pointpillar")}
    assert rows[("none", "lr0.001")]["diffs"] == [(0, 3.0), (1, 4.0), (2, 5.0)]
    assert rows[("none", "lr0.001")]["diff"] == pytest.approx(t_interval([3.0, 4.0, 5.0]))
    assert rows[("fitnet", "default")]["diffs"] == [(0, 1.0), (1, 1.0), (2, 1.0)]
    assert rows[("fitnet", "lr")]["diffs"] == [(0, -2.0), (1, -2.0), (2, -2.0)]   # against lr0.001 alone
    assert rows[("none", "")]["diff"] is None and rows[("none", "")]["per_seed"] == {0: 10.0, 1: 11.0, 2: 12.0}
    # a recipe that changes OPTIMIZATION keys pairs with the same schedule without them, not with another schedule
    recs = records + [dict(r, label="e6", recipe=[6, "{}"], epochs=6, map3d_mod=r["map3d_mod"] - 1.0)
                      for r in records if (r["method"], r["label"]) == ("none", "")]
    recs = [dict(r, recipe=[6, r["recipe"][1]]) if (r["method"], r["label"]) == ("none", "lr0.001") else r
            for r in recs]
    rows6 = {(r["method"], r["label"]): r for r in rep.tuning_rows(recs, "pointpillar")}
    assert rows6[("none", "lr0.001")]["diffs"] == [(0, 4.0), (1, 5.0), (2, 6.0)]      # against e6, not ''
    assert rows6[("none", "e6")]["diffs"] == [(0, -1.0), (1, -1.0), (2, -1.0)]         # a schedule: against ''
    
    text = rep.tuning_markdown(bench, records)
    assert "float32 runs" in text and "bf16 autocast runs" not in text
    # a run listed under both kinds (its hash does not depend on the kind) is shown once; the zoo teacher heads both
    both = rep.collect_all_cpu_kinds(bench, "tune", lambda bf16: bench)
    assert len(both) == len(records) + 1 and sum(r["method"] == "teacher" for r in both) == 2
    line = next(l for l in text.splitlines() if "| Student alone | lr0.001 |" in l)
    assert "s0: 13.00 s1: 15.00 s2: 17.00" in line and fmt_interval(*t_interval([3.0, 4.0, 5.0])) in line


def _rows(values, method="logit_kd", width=0.25):
    """Hand-built tuning rows from {label or (method, label): {seed: mAP}} (per-seed hashes 'h<label>')."""
    rows = []
    for key, per in values.items():
        m, lab = key if isinstance(key, tuple) else (method, key)
        rows.append(dict(method=m, label=lab, width=width, per_seed=per, hashes={s: f"h{lab}" for s in per}))
    return rows


def test_decision_rule_margin_keep_pending_and_also_beat():
    rule = dict(method="logit_kd", candidates=["e18", "w10", "w100"], keep="e18", margin=1.0)
    # pending while a candidate has no run of the rule's seed
    d = rep.decide(rule, _rows({"e18": {0: 30.0}, "w100": {0: 31.5}}), 0.25)
    assert d["chosen"] is None and d["missing"] == ["w10"] and d["means"]["w100"] == 31.5
    # the best beats keep by >= margin: chosen; by less: keep stays
    d = rep.decide(rule, _rows({"e18": {0: 30.0}, "w10": {0: 30.5}, "w100": {0: 31.0}}), 0.25)
    assert d["best"] == "w100" and d["chosen"] == "w100" and d["margins"] == {("logit_kd", "e18"): 1.0}
    d = rep.decide(rule, _rows({"e18": {0: 30.0}, "w10": {0: 30.5}, "w100": {0: 30.99}}), 0.25)
    assert d["best"] == "w100" and d["chosen"] == "e18"
    # means over the rule's seeds; a candidate lacking one of them is missing
    rule3 = dict(rule, seeds=[0, 1])
    d = rep.decide(rule3, _rows({"e18": {0: 30.0, 1: 34.0}, "w10": {0: 33.0, 1: 33.0}, "w100": {0: 40.0}}), 0.25)
    assert d["chosen"] is None and d["missing"] == ["w100"]
    d = rep.decide(rule3, _rows({"e18": {0: 30.0, 1: 34.0}, "w10": {0: 33.0, 1: 33.0}, "w100": {0: 1.0, 1: 1.0}}),
                   0.25)
    assert d["means"]["e18"] == 32.0 and d["chosen"] == "w10"
    # also_beat: the winner must also beat another method's setting by the margin
    rule_ab = dict(method="pd_inherit", candidates=["tau1", "tau4"], keep="tau1", margin=1.0,
                   also_beat=[["inherit", "e18"]])
    rows = _rows({("pd_inherit", "tau1"): {0: 34.0}, ("pd_inherit", "tau4"): {0: 36.0}, ("inherit", "e18"): {0: 35.5}})
    d = rep.decide(rule_ab, rows, 0.25)
    assert d["chosen"] == "tau1" and d["margins"][("inherit", "e18")] == pytest.approx(0.5)
    rows[2]["per_seed"] = {0: 34.5}
    assert rep.decide(rule_ab, rows, 0.25)["chosen"] == "tau4"
    # keep None: the highest wins; another width's rows are not mixed in
    rule_max = dict(method="itkd", candidates=["a", "b"], keep=None)
    rows = _rows({"a": {0: 2.0}, "b": {0: 1.0}}, method="itkd") + _rows({"b": {0: 9.0}}, method="itkd", width=0.5)
    assert rep.decide(rule_max, rows, 0.25)["chosen"] == "a"


def test_decision_lines_say_the_choice_and_whether_the_val_config_is_it(tmp_path):
    preset = _preset_with()
    bench = Benchmark("cpu", preset, tmp_path / "work", tmp_path / "data", mode="tune", families=["pointpillar"],
                      zoo_manifest=_manifest(tmp_path))
    rows = _rows({"e18": {0: 30.0}, "w10_e18": {0: 30.2}, "w100_e18": {0: 31.5}})
    lines = rep.decision_lines(bench, rows, "pointpillar", lambda m, f, w, s: "he18")
    assert len(lines) == 1 and "Chosen: **w100_e18** (w100_e18 - e18 +1.50)" in lines[0]
    assert "The val config is that of e18: it is not the rule's choice, the preset must be updated." in lines[0]
    lines = rep.decision_lines(bench, rows, "pointpillar", lambda m, f, w, s: "hw100_e18")
    assert lines[0].endswith("The val config is that of w100_e18.")
    lines = rep.decision_lines(bench, rows[:2], "pointpillar")
    assert "Pending: w100_e18 not run on these seeds." in lines[0] and "val config" not in lines[0]
    # a rule naming a setting the sweep does not have is refused with its names
    bad = _preset_with()
    bad["decisions"]["fitnet"]["pointpillar"]["candidates"].append("w1000")
    with pytest.raises(BenchmarkError, match=r"decisions\[fitnet\]\[pointpillar\] names settings \['w1000'\]"):
        Benchmark("cpu", bad, tmp_path / "work", tmp_path / "data", mode="tune", families=["pointpillar"],
                  zoo_manifest=_manifest(tmp_path))


def test_progress_line_estimates_from_finished_cost(tmp_path):
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    runner = Runner(bench, log=lambda m: None)
    runner.t_start -= 600.0     # ten minutes elapsed
    students = [r for r in bench.runs if r.method != "teacher"]
    done = [r for r in students if r.method == "none"]
    line = runner.progress_line(done, bench.runs)
    left = 10.0 * (sum(r.cost for r in bench.runs) - sum(r.cost for r in done)) / sum(r.cost for r in done)
    assert line.startswith(f"progress: {len(done)}/{len(bench.runs)} runs done, elapsed 10.0 min")
    assert f"estimate left {left:.1f} min" in line


def test_cli_modes():
    assert parse_args(["--preset", "cpu", "--tune", "--family", "pointpillar"]).tune
    assert parse_args(["--retrain-teachers"]).retrain_teachers
    with pytest.raises(SystemExit):
        parse_args(["--tune", "--retrain-teachers"])


def test_report_only_rewrites_the_report_and_runs_nothing(tmp_path, monkeypatch):
    from pcdet.kd.benchmark import cli

    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    _fake_results(bench, {"teacher": 30.0, "none": 10.0, "pointdistiller": 12.0}, seeds=(0, 1))

    def refuse(*args, **kwargs):
        raise AssertionError("--report_only must not prepare data or train")

    monkeypatch.setattr(Runner, "prepare_data", refuse)
    monkeypatch.setattr(Runner, "execute", refuse)
    monkeypatch.setattr(cli, "plot", lambda *args, **kwargs: None)   # matplotlib is not what is tested here
    docs = tmp_path / "docs"
    cli.main(["--preset", "cpu", "--family", "pointpillar", "--report_only", "--work_dir", str(tmp_path / "work"),
              "--data_dir", str(tmp_path / "data"), "--results_dir", str(tmp_path / "work" / "results"),
              "--zoo_dir", str(tmp_path / "zoo"), "--docs_dir", str(docs)])
    runs = json.loads((docs / "results_cpu.json").read_text())["runs"]
    got = sorted((r["method"], r["seed"], r["map3d_mod"]) for r in runs if r["family"] == "pointpillar")
    assert got == [("none", 0, 10.0), ("none", 1, 10.0), ("pointdistiller", 0, 12.0), ("pointdistiller", 1, 12.0),
                   ("teacher", 0, 30.0)]
    assert "PointDistiller" in (docs / "results_cpu.md").read_text()
    assert not (tmp_path / "work" / "wall_times.json").exists()   # a report-only invocation records no wall time


def test_cpu_kind_fp32_trains_and_hashes_as_a_cpu_without_native_bf16(tmp_path, monkeypatch):
    # a session on a bf16 CPU adds seeds to a table of float32 runs: --cpu_kind fp32 makes its runs those runs
    from pcdet.kd.benchmark import cli
    from pcdet.utils import common_utils as cu

    monkeypatch.setenv(cu.CPU_BF16_ENV, "auto")      # restored after the test, whatever the CLI sets
    kinds = {bf16: Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", tmp_path / "data", families=["pointpillar"],
                             zoo_manifest=_manifest(tmp_path), native_bf16=bf16) for bf16 in (False, True)}
    student = next(r for r in kinds[False].runs if r.method == "none")
    assert kinds[False].cfg_hash(student) != kinds[True].cfg_hash(student)
    assert parse_args(["--preset", "cpu"]).cpu_kind == "auto"
    cli.apply_cpu_kind(parse_args(["--preset", "cpu", "--cpu_kind", "fp32"]).cpu_kind)
    assert os.environ[cu.CPU_BF16_ENV] == "off"      # inherited by every training and evaluation subprocess
    assert cu.cpu_has_native_bf16() is False and cu.resolve_amp("auto", "cpu", torch.bfloat16) is False
    here = _bench(tmp_path, "cpu", families=["pointpillar"])    # no native_bf16 given: this machine, as set
    assert here.cfg_hash(student) == kinds[False].cfg_hash(student)


def test_report_shows_per_family_the_cpu_kind_with_more_runs_and_keeps_the_wall_times(tmp_path, monkeypatch):
    # 'auto' precision trains in bf16 on a CPU with native bf16 and in float32 elsewhere: the two kinds hash apart,
    # and a report rewritten on the other kind of machine must keep the table (not drop every row)
    from pcdet.kd.benchmark import cli

    here = _bench(tmp_path, "cpu", families=["pointpillar"])
    other = Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", tmp_path / "data", families=["pointpillar"],
                      zoo_manifest=_manifest(tmp_path), native_bf16=not here.cpu_native_bf16())
    student = next(r for r in here.runs if r.method == "none")
    assert here.cfg_hash(student) != other.cfg_hash(student)
    _fake_results(other, {"teacher": 30.0, "none": 10.0, "pointdistiller": 12.0}, seeds=(0, 1))
    _fake_results(here, {"none": 99.0}, seeds=(0,))        # fewer runs of this machine's kind
    results = tmp_path / "work" / "results"
    (results / "wall_times.json").write_text(json.dumps({"final:pointpillar": 600.0}))
    monkeypatch.setattr(cli, "plot", lambda *args, **kwargs: None)
    docs = tmp_path / "docs"
    argv = ["--preset", "cpu", "--family", "pointpillar", "--report_only", "--work_dir", str(tmp_path / "work"),
            "--data_dir", str(tmp_path / "data"), "--results_dir", str(results), "--zoo_dir", str(tmp_path / "zoo"),
            "--docs_dir", str(docs)]
    cli.main(argv)
    runs = json.loads((docs / "results_cpu.json").read_text())["runs"]
    got = sorted((r["method"], r["seed"], r["map3d_mod"]) for r in runs if r["family"] == "pointpillar")
    assert got == [("none", 0, 10.0), ("none", 1, 10.0), ("pointdistiller", 0, 12.0), ("pointdistiller", 1, 12.0),
                   ("teacher", 0, 30.0)]
    assert "pointpillar: 10.0 min" in (docs / "results_cpu.md").read_text()
    # once this machine's kind has more runs of the family, they are shown instead (never mixed with the other's)
    _fake_results(here, {"teacher": 31.0, "none": 99.0, "pointdistiller": 98.0, "fitnet": 97.0}, seeds=(0, 1))
    cli.main(argv)
    runs = json.loads((docs / "results_cpu.json").read_text())["runs"]
    assert sorted({r["map3d_mod"] for r in runs if r["family"] == "pointpillar"}) == [31.0, 97.0, 98.0, 99.0]


def test_collect_by_cpu_kind_prefers_the_kind_that_has_the_baseline(monkeypatch):
    class Stub:
        device, families = "cpu", ["f", "g"]

        def __init__(self, bf16):
            self.bf16 = bf16

        def cpu_native_bf16(self):
            return self.bf16

    recs = {False: [{"family": "f", "method": "none"}, {"family": "g", "method": "none"}],
            True: [{"family": "f", "method": "fitnet"}] * 3 + [{"family": "g", "method": m} for m in
                                                               ("none", "fitnet")]}
    monkeypatch.setattr(rep, "collect", lambda bench, split: recs[bench.bf16])
    got, kinds = rep.collect_by_cpu_kind(Stub(False), "val", Stub)
    # f: three KD runs of the other kind but no student alone there -> this machine's; g: the other kind's
    assert kinds == {"f": False, "g": True}
    assert got == [recs[False][0]] + recs[True][3:]


def test_moderate_map_averages_classes():
    m = {"Car_3d/moderate_R40": 60.0, "Pedestrian_3d/moderate_R40": 30.0, "Cyclist_3d/moderate_R40": 0.0}
    assert rep.moderate_map(m, ["Car", "Pedestrian", "Cyclist"]) == pytest.approx(30.0)


def test_visualize_model_spec_parsing():
    vis = _load("visualize")
    assert vis.parse_model_spec("t=cfgs/a.yaml,/x/t.pth,MODEL.WIDTH=0.5") == (
        "t", "cfgs/a.yaml", "/x/t.pth", ["MODEL.WIDTH", "0.5"])
    with pytest.raises(ValueError, match="NAME=CFG_FILE,CKPT"):
        vis.parse_model_spec("cfgs/a.yaml")


def test_zoo_readme_lists_each_teacher_with_its_convergence_check(tmp_path):
    manifest = json.loads(_manifest(tmp_path).read_text())
    manifest["teachers"][0].update(val_per_class_3d_mod={"Car": 30.0, "Pedestrian": 10.0, "Cyclist": 20.0},
                                   size_bytes=2_500_000, sha256="ab" * 32, train_minutes=12.5)
    manifest["teachers"][1]["longer"]["map3d_mod"] = None
    text = rep.zoo_readme(manifest)
    row = next(l for l in text.splitlines() if l.startswith("| pointpillar_w0.5 |"))
    assert "| 4 | 20.00 | 30.0 / 10.0 / 20.0 | 6: 20.50 (+0.50) | 2: 10.0, 4: 20.0 | 12.5 | 2.5 MB | `abababababab` |" in row
    assert "6: not run yet" in next(l for l in text.splitlines() if l.startswith("| centerpoint_pillar_w0.5 |"))


def test_training_minutes_sums_the_logs_of_a_resumed_run(tmp_path):
    from pcdet.kd.benchmark.runner import training_minutes

    log = tmp_path / "log"
    log.mkdir()
    (log / "train_a.log").write_text("2026-12-02 00:00:00,1   INFO  cfg\n2026-12-02 00:01:00,1   INFO  **start training x\n"
                                     "progress without a stamp\n2026-12-02 00:31:00,5   INFO  saved\n")
    (log / "train_b.log").write_text("2026-12-02 01:00:00,1   INFO  **start training x\n"
                                     "2026-12-02 01:15:30,1   INFO  **end training x\n")
    assert training_minutes(tmp_path) == pytest.approx(45.5)


def test_plan_refuses_two_runs_of_one_config_and_hash_sees_base_contents(tmp_path):
    import copy

    from pcdet.kd.benchmark import BenchmarkError

    preset = copy.deepcopy(PRESETS["cpu"])
    preset["tuning"]["pointpillar"] = None
    preset["tuning"]["pointdistiller"]["pointpillar"] = [{"label": "a", "overrides": {"TAU": 1.0}},
                                                        {"label": "b", "overrides": {"TAU": 1.0}}]
    preset["decisions"].pop("pointdistiller")   # its rule names the replaced sweep's labels
    with pytest.raises(BenchmarkError, match="runs .*_a and .*_b train the same config"):
        Benchmark("cpu", preset, tmp_path / "w", tmp_path / "d", mode="tune", families=["pointpillar"],
                  zoo_manifest=_manifest(tmp_path))
    # the hash covers the expanded base config, not just its path
    bench = _bench(tmp_path, "mini")
    run = next(r for r in bench.runs if r.method == "none")
    before = bench.cfg_hash(run)
    import pcdet.kd.benchmark.plan as plan_mod
    real = plan_mod.MODEL_CFGS[run.family]
    other = tmp_path / "edited.yaml"
    other.write_text(f"_BASE_CONFIG_: {plan_mod.CFGS / real}\nOPTIMIZATION: {{LR: 0.001}}\n")
    plan_mod.MODEL_CFGS[run.family] = str(other)
    try:
        assert bench.cfg_hash(run) != before
    finally:
        plan_mod.MODEL_CFGS[run.family] = real
    assert bench.cfg_hash(run) == before


def test_results_are_reused_only_for_the_same_config_data_and_device(tmp_path):
    data = tmp_path / "data"
    (data / "ImageSets").mkdir(parents=True)
    (data / "synthetic_meta.json").write_text(json.dumps({"generator_version": "1.0.0", "seed": 0}))
    (data / "ImageSets" / "val.txt").write_text("000001\n")
    bench = _bench(tmp_path, "cpu", families=["pointpillar"])
    run = next(r for r in bench.runs if r.method == "none")
    path = bench.result_path(run, "val")
    assert path.name == f"{run.name}.{bench.cfg_hash(run)}.json"     # one file per config hash
    path.parent.mkdir(parents=True)
    good = {"metrics": {}, "cfg_hash": bench.cfg_hash(run), "data": bench.data_signature(), "device": "cpu"}
    path.write_text(json.dumps(good))
    assert bench.load_result(run, "val") == good
    for key, value in (("cfg_hash", "0123456789"), ("device", "cuda:0"),
                       ("data", dict(good["data"], val_ids_sha256="x")), ("data", None)):
        path.write_text(json.dumps(dict(good, **{key: value})))
        assert bench.load_result(run, "val") is None, key
    path.write_text("{truncated")
    assert bench.load_result(run, "val") is None
    # regenerated data (another split list) invalidates the stored result
    path.write_text(json.dumps(good))
    (data / "ImageSets" / "val.txt").write_text("000002\n")
    fresh = Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", data, families=["pointpillar"],
                      zoo_manifest=_manifest(tmp_path))
    assert fresh.load_result(run, "val") is None
    cuda = Benchmark("cpu", PRESETS["cpu"], tmp_path / "work", data, families=["pointpillar"],
                     zoo_manifest=_manifest(tmp_path), device="cuda")
    assert cuda.cfg_hash(run) != bench.cfg_hash(run) or cuda.load_result(run, "val") is None


def test_config_hash_does_not_depend_on_the_clone_path():
    from pcdet.kd.benchmark import plan as plan_mod

    text = f"DATA_PATH: {plan_mod.REPO_ROOT}/data/x\nCKPT: {plan_mod.REPO_ROOT}/model_zoo/t.pth\n"
    assert plan_mod.repo_relative(text) == "DATA_PATH: <repo>/data/x\nCKPT: <repo>/model_zoo/t.pth\n"


def test_methods_filter_keeps_the_teachers_its_runs_need(tmp_path):
    bench = Benchmark("mini", PRESETS["mini"], tmp_path / "w", tmp_path / "d", methods=["fitnet"],
                      zoo_manifest=_manifest(tmp_path))
    assert {r.method for r in bench.runs} == {"fitnet", "teacher"}
    for run in bench.runs:
        assert all(dep in bench.runs for dep in run.deps)
    only_none = Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", methods=["none"],
                          zoo_manifest=_manifest(tmp_path))
    assert {(r.method, bool(r.zoo)) for r in only_none.runs} == {("none", False), ("teacher", True)}
    with pytest.raises(BenchmarkError, match=r"no methods \['itdk'\]"):
        Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", methods=["itdk"],
                  zoo_manifest=_manifest(tmp_path))
    with pytest.raises(BenchmarkError, match="--retrain-teachers trains every teacher"):
        Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", mode="teachers", methods=["none"],
                  zoo_manifest=_manifest(tmp_path))


def test_seeds_filter_plans_only_those_seeds_and_keeps_their_configs(tmp_path):
    kw = dict(families=["centerpoint_pillar"], zoo_manifest=_manifest(tmp_path))
    full = Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", methods=["none", "fitnet"], **kw)
    part = Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", methods=["none", "fitnet"],
                     seeds=[2, 1], **kw)
    assert sorted({r.seed for r in part.runs if r.method != "teacher"}) == [1, 2]
    assert len([r for r in part.runs if r.method != "teacher"]) == 4
    by_name = {r.name: r for r in full.runs}
    for run in part.runs:                 # same runs as in the full plan: same config hash, same curve flag
        assert part.cfg_hash(run) == full.cfg_hash(by_name[run.name]), run.name
        assert run.curve is False
    assert by_name["centerpoint_pillar_none_w0.125_s0"].curve is True
    with pytest.raises(BenchmarkError, match=r"no seeds \[7\]"):
        Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", seeds=[7], **kw)
    with pytest.raises(BenchmarkError, match="--seeds selects student runs"):
        Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", mode="teachers", seeds=[0], **kw)
    # tune mode: the settings' own seeds, restricted to those asked for (same configs as the full sweep)
    kw = dict(families=["pointpillar"], zoo_manifest=kw["zoo_manifest"])
    tune_full = Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", mode="tune", **kw)
    tune_part = Benchmark("cpu", PRESETS["cpu"], tmp_path / "w", tmp_path / "d", mode="tune", seeds=[1], **kw)
    assert {r.name for r in tune_part.runs} == {"pointpillar_teacher_zoo", "pointpillar_none_w0.25_s1",
                                                "pointpillar_none_w0.25_s1_e12"}
    for run in tune_part.runs:
        assert tune_part.cfg_hash(run) == next(tune_full.cfg_hash(x) for x in tune_full.runs if x.name == run.name)
