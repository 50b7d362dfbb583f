"""Benchmark presets: data, families (teacher, student widths, methods), schedules, and the tuning sweeps.

A preset is a plain dict; ``plan.Benchmark`` turns it into runs. Keys:

- ``data``: how the synthetic set is generated (frames, seed, val / tune fractions, generator preset).
- ``families``: family -> ``teacher_width``, ``student_rel_widths``, ``methods``, optionally ``narrow`` (only that
  MODEL module is narrowed: the itKD students), ``teacher`` (``"zoo:<name>"``: the shipped teacher of
  ``model_zoo/manifest.json``, evaluated but not trained; otherwise a teacher is trained per seed) and ``note``
  (printed under the family's heading in the final report).
- ``seeds``: the paired seeds (a seed fixes the student's initialisation and data order for every method).
- ``teacher_epochs`` (teachers trained by the preset; a zoo teacher's come from its config), ``student_epochs``
  (an int or a family -> int dict), ``batch_size``, ``jobs``.
- ``results_in_repo`` (optional): the result files are kept in docs/benchmark_runs/<preset> (committed), so runs
  that outlive one machine are not redone; a result is reused only under its run's config hash.
- ``max_iters_per_epoch`` (optional): caps the students' iterations per epoch (train.py's flag; the main job).
- ``data_overrides``, ``optimization_overrides``, ``teacher_overrides``: merged into every derived config.
- ``kd_overrides``: method -> family -> overrides of the KD block, frozen from the tuning sweep
  (``{"KD": {top-level KD keys}, <head keys>...}``; nested dicts merge).
- ``tuning``: method -> family -> list of {"label", "overrides"} settings tried on the tuning split with
  ``--tune`` (seed ``seeds[0]``), merged over ``kd_overrides``; each setting names every value it sweeps, so it
  means the same once a choice is frozen (a plan in which two runs train the same config is refused).
  ``curve_every``: epochs between the evaluated checkpoints of the student-alone learning curve.
- ``decisions`` (optional): method -> family -> the rule that chooses among tuning settings, written down with
  the sweep before its runs: ``candidates`` (labels), ``seeds`` (whose mean tune mAP ranks them; default the
  first seed), ``keep`` (the label that stays unless the best beats it by ``margin`` mAP; None: the highest
  wins), ``also_beat`` ([[method, label], ...] the winner must also beat by ``margin``), ``note``. The tuning
  report applies each rule to the results present (``report.decide``) and says which setting the val config is.
"""

MODEL_CFGS = {
    "pointpillar": "synthetic_models/pointpillar.yaml",
    "second": "synthetic_models/second.yaml",
    "centerpoint": "synthetic_models/centerpoint.yaml",
    "centerpoint_pillar": "synthetic_models/centerpoint_pillar.yaml",
}
# method -> family -> the shipped KD config whose `KD:` block is added to the student's model config. KD is
# additive: model config + KD block = the distillation run; the teacher entry is pointed at the run's teacher.
KD_BLOCKS = {
    "logit_kd": {"pointpillar": "kd/logit_kd_pointpillar.yaml", "centerpoint": "kd/logit_kd_centerpoint.yaml",
                 "centerpoint_pillar": "kd/logit_kd_centerpoint.yaml"},
    "fitnet": {"pointpillar": "kd/fitnet_pointpillar.yaml", "centerpoint": "kd/fitnet_centerpoint.yaml",
               "centerpoint_pillar": "kd/fitnet_centerpoint.yaml"},
    "pointdistiller": {"pointpillar": "kd/pointdistiller_pointpillar.yaml", "second": "kd/pointdistiller_second.yaml",
                       "centerpoint": "kd/pointdistiller_centerpoint.yaml",
                       "centerpoint_pillar": "kd/pointdistiller_centerpoint.yaml"},
    "itkd": {"centerpoint": "kd/itkd_centerpoint.yaml", "centerpoint_pillar": "kd/itkd_centerpoint_pillar.yaml"},
    "pivotal_kd": {"pointpillar": "kd/pivotal_kd_pointpillar.yaml", "centerpoint": "kd/pivotal_kd_centerpoint.yaml",
                   "centerpoint_pillar": "kd/pivotal_kd_centerpoint.yaml"},
    # teacher-guided initialisation alone, and with PointDistiller (its KD block + KD.INIT_FROM_TEACHER)
    "inherit": {"pointpillar": "kd/inherit_pointpillar.yaml", "centerpoint": "kd/inherit_centerpoint.yaml",
                "centerpoint_pillar": "kd/inherit_centerpoint.yaml"},
    "pd_inherit": {"pointpillar": "kd/pointdistiller_pointpillar.yaml"},
    "itkd_inherit": {"centerpoint_pillar": "kd/itkd_centerpoint_pillar.yaml"},
    "label_kd": {"pointpillar": "kd/label_kd_pointpillar.yaml", "centerpoint": "kd/label_kd_centerpoint.yaml",
                 "centerpoint_pillar": "kd/label_kd_centerpoint.yaml"},
}
METHOD_LABELS = {"teacher": "Teacher", "none": "Student alone", "logit_kd": "Logit KD", "fitnet": "FitNet",
                 "pointdistiller": "PointDistiller", "itkd": "itKD", "pivotal_kd": "Pivotal logit KD",
                 "label_kd": "Label KD", "inherit": "Teacher-guided init",
                 "pd_inherit": "PointDistiller + teacher-guided init", "itkd_inherit": "itKD + teacher-guided init"}
METHOD_ORDER = ["teacher", "none", "logit_kd", "fitnet", "pointdistiller", "itkd", "pivotal_kd", "label_kd",
                "inherit", "pd_inherit", "itkd_inherit"]

# fixed before any run, for CPU compute only: GT sampling dominates data loading on 2 cores; bf16 autocast with
# channels_last weights gave 1.5-1.9x faster steps on an AMX CPU, but 4.5x slower ones on an AVX2-only CPU, so the
# precision is 'auto' (bf16 where the CPU has native bf16, else float32) and the run hash records which it was
_CPU_DATA = {"DATA_AUGMENTOR": {"DISABLE_AUG_LIST": ["gt_sampling"]}}
_CPU_OPT = {"USE_AMP": "auto", "AMP_DTYPE": "bf16", "CHANNELS_LAST": True}

# the data of the `cpu` benchmark and of the shipped zoo teachers: 1500 frames, 500 val, 200 tune, 800 train
CPU_DATA = dict(num_frames=1500, seed=0, val_fraction=0.33334, tune_fraction=0.13334, preset="default")

# PointDistiller on the PointPillars 4x student of the `cpu` preset, as frozen from its sweep (below)
_PD_PP_FROZEN = {"NUM_KEEP": 2048, "K": 32, "GRAPH_CHANNELS": 16, "TAU": 1.0, "LOSS_WEIGHT": 2.0}
# PointDistiller + teacher-guided init on PointPillars as frozen by the cpu preset's TAU sweep (below); the main job
# distils with the same block
_PD_INHERIT_PP_FROZEN = dict(_PD_PP_FROZEN, TAU=4.0, KD={"INIT_FROM_TEACHER": True})

PRESETS = {
    # The README main job: the shipped PointPillars teacher, its 4x student alone and distilled, one
    # seed, a 3-epoch schedule; it demonstrates the whole path in minutes, it is not the benchmark.
    "main": dict(
        data=CPU_DATA, seeds=[0], jobs=2,
        # the distilled student is the cpu benchmark's best PointPillars method, PointDistiller on top of
        # teacher-guided init, at the setting frozen there (TAU 4 since 2026-12-07); until 2026-12-08 it was
        # PointDistiller alone, which at 330 iterations sat under 1 mAP like the student alone
        families={"pointpillar": dict(teacher="zoo:pointpillar_w0.5", teacher_width=0.5, student_rel_widths=[0.5],
                                      methods=["none", "pd_inherit"])},
        # 3 epochs of 110 iterations (of 200): the job fits 15 minutes with set-up on a 2-core AVX2 CPU in float32
        student_epochs=3, batch_size=4, max_iters_per_epoch=110,
        data_overrides=_CPU_DATA, optimization_overrides=_CPU_OPT, teacher_overrides={"CHANNELS_LAST": True},
        kd_overrides={"pd_inherit": {"pointpillar": _PD_INHERIT_PP_FROZEN}},
        note="A demonstration of the whole path (shipped teacher, one seed, 3-epoch students of 110 iterations "
             "each), not the benchmark: see docs/results_cpu.md. Most of the distilled student's lead at this "
             "length comes from its teacher-guided initialisation, not from the PointDistiller loss (the "
             "benchmark separates the two).",
    ),
    # The CPU benchmark: shipped teachers (model_zoo/), the papers' students, 5 paired seeds, val 500 frames.
    # One family at a time (--family) fits the 2-core budget; the table merges whatever has run.
    "cpu": dict(
        # seeds 3 and 4 were added on 2026-12-03 after the 3-seed val table (whose intervals touched 0); they run
        # the student alone and the teacher-initialised methods (the 3-seed figures are kept in docs/KD.md); on
        # 2026-12-08 PointPillars' logit KD (weight 100) and FitNet got seeds 3-4 too, decided before those runs, to
        # pair PointDistiller + init with the baselines over 5 seeds (their 3-seed figures: docs/KD.md)
        data=CPU_DATA, seeds=[0, 1, 2, 3, 4], jobs=2, results_in_repo=True,
        families={
            "pointpillar": dict(teacher="zoo:pointpillar_w0.5", teacher_width=0.5, student_rel_widths=[0.5],
                                methods=["none", "logit_kd", "fitnet", "pointdistiller", "inherit", "pd_inherit",
                                         "label_kd"],
                                note="Students at 18 epochs since 2026-12-07 (frozen from the recipe sweep on the "
                                     "tune split, docs/results_cpu_tuning.md). The family's 18-epoch val runs are "
                                     "incomplete: a method without a row has no 18-epoch run of the CPU kind shown "
                                     "yet, and each row's last columns list the seeds it has. The 12-epoch val "
                                     "table that this schedule supersedes (2026-12-02..04, bf16; that invocation "
                                     "took 63.4 min) is kept in docs/KD.md."),
            "centerpoint_pillar": dict(teacher="zoo:centerpoint_pillar_w0.5", teacher_width=0.5,
                                       student_rel_widths=[0.25], narrow="BACKBONE_2D",
                                       # teacher-guided init (issue 18): added 2026-12-03 before any of its runs
                                       # itKD + init: added 2026-12-04 before any of its runs, with the frozen itKD
                                       # setting unchanged (no new choice, so no tune run)
                                       # pivotal logit KD and label KD (issue 18): added 2026-12-08 before any of
                                       # their runs, screened on tune (seed 0, shipped defaults) first
                                       methods=["none", "logit_kd", "fitnet", "itkd", "inherit", "itkd_inherit",
                                                "pivotal_kd", "label_kd"]),
        },
        # PointPillars: 18 epochs since 2026-12-07, frozen from the recipe sweep on the tune split (below); the
        # 12-epoch val table of 2026-12-02..04 is kept in docs/KD.md, its result files stay under their hashes
        student_epochs={"pointpillar": 18, "centerpoint_pillar": 10},
        batch_size=4, curve_every=2,
        data_overrides=_CPU_DATA, optimization_overrides=_CPU_OPT, teacher_overrides={"CHANNELS_LAST": True},
        # PointDistiller's paper N / K are for 432 x 496 KITTI pillar grids, scaled to the 160 x 200 grid; its
        # graph width is the student's pillar-feature width (16 at width 0.25). TAU 1, LOSS_WEIGHT 2 frozen from the
        # sweep below (2026-12-02, tune split, seed 0: tau1 27.60 > tau0.01 25.60 > tau1_w8 25.09 > tau1_trainable
        # 23.06; the student alone 28.74), docs/results_cpu_tuning.md
        kd_overrides={"pointdistiller": {"pointpillar": _PD_PP_FROZEN},
                      # teacher-guided init alone and with PointDistiller, tune split seed 0 (2026-12-03): 30.03 and
                      # 31.83 against 28.74 alone; both go to val. TAU 4 since 2026-12-07, frozen by the registered
                      # rule of the TAU sweep below (tune, seed 0, 18 epochs: tau4_e18 36.91, tau16_e18 36.35,
                      # tau1_e18 34.10, init alone 34.08); the TAU 1 val runs (seeds 0-2) stay under their hash
                      "pd_inherit": {"pointpillar": _PD_INHERIT_PP_FROZEN},
                      # logit KD's weight, frozen by its registered rule (tune, seed 0, 18 epochs, 2026-12-07): weight
                      # 100 31.52 > 10 31.45 > 1 29.96 (the student alone 32.52); docs/results_cpu_tuning.md
                      "logit_kd": {"pointpillar": {"LOSS_WEIGHT": 100.0}},
                      # itKD on the CenterPoint-pillar 1/4 student, frozen from its sweep (2026-12-03, tune split,
                      # seed 0: ae5_det1 20.49 > ae5 18.62 > default 17.72; the student alone 23.34)
                      "itkd": {"centerpoint_pillar": {"AE": {"WEIGHT": 5.0}, "KD": {"DET_LOSS_WEIGHT": 1.0}}},
                      "itkd_inherit": {"centerpoint_pillar": {"AE": {"WEIGHT": 5.0},
                                                              "KD": {"DET_LOSS_WEIGHT": 1.0, "INIT_FROM_TEACHER": True}}}},
        tuning={
            # the student's training recipe (2026-12-07, registered before any of its runs): the preset's recipe
            # (OpenPCDet's LR 0.003, made for 8 GPUs x batch 4 = 32 frames a step, here at batch 4) against LR
            # 0.001 (0.003 / sqrt(8), the square-root scaling for Adam to an 8x smaller batch). Three seeds each:
            # the students alone spread over 5 mAP on val (21.9-28.7), and that spread, not the KD effects, sets
            # the width of every interval; the curve (seed 0) shows whether the recipe still sits near 0 mAP for
            # half of its schedule, as the preset's does (tune, seed 0: 2.90 at epoch 6 of 12)
            # Decision rule, fixed with the sweep (before any result): the recipe with the higher mean over the
            # three seeds is frozen for the students of the family; a difference under 0.5 mAP keeps the preset's.
            # The sweep's labels as run: 'e12' was the preset's recipe then (label '', 12 epochs), '' was 'e18'; the
            # result files were renamed with the freeze (their config hashes are unchanged).
            "none": {"pointpillar": [
                {"label": "e12", "overrides": {}, "epochs": 12, "seeds": [0, 1, 2]},
                # seeds 1-2 of lr0.001 were stopped after seed 0 (20.96 against 25.84 and 31.30 for the 12-epoch
                # recipe on seeds 0-1; its curve flattened, 20.78 at epoch 10): by the rule above only gains over
                # +3.2 on both remaining seeds could have chosen it. The compute went to the schedule length.
                {"label": "lr0.001", "overrides": {"OPTIMIZATION": {"LR": 0.001}}, "epochs": 12, "seeds": [0]},
                # 1.5x the 12 epochs (the convergence test, applied to the student alone; registered
                # 2026-12-07 before any of its runs as 'e18'), paired by seed: frozen by the rule, now the preset's
                {"label": "", "overrides": {}, "seeds": [0, 1, 2]},
            ]},
            # the PointPillars KD sweep of 2026-12-02..03 ran on the 12-epoch recipe: its settings keep 'epochs': 12
            # (same configs and hashes as then) and pair with the 12-epoch student alone ('e12')
            "pointdistiller": {"pointpillar": [
                {"label": "tau0.01", "overrides": {"TAU": 0.01, "LOSS_WEIGHT": 2.0}, "epochs": 12},
                {"label": "tau1", "overrides": {"TAU": 1.0, "LOSS_WEIGHT": 2.0}, "epochs": 12},
                {"label": "tau1_w8", "overrides": {"TAU": 1.0, "LOSS_WEIGHT": 8.0}, "epochs": 12},
                # KD_METHODS.md: the authors' trainable teacher-side layer against our 'frozen' default, decided here
                {"label": "tau1_trainable", "overrides": {"TAU": 1.0, "LOSS_WEIGHT": 2.0, "TEACHER_GRAPH": "trainable"},
                 "epochs": 12},
                # (tau1_lr0.001, the frozen setting with the LR 0.001 recipe, was registered on 2026-12-07 and
                # withdrawn unrun when that recipe was stopped)
            ]},
            "label_kd": {"pointpillar": [{"label": "default", "overrides": {}, "epochs": 12}]},
            # FitNet's weight at the 18-epoch recipe (registered 2026-12-07 before any of its runs, for the same
            # reason as logit KD's below): at LOSS_WEIGHT 1 (MSE over every entry of the BEV map through the 1x1
            # adapter) its gradient was 0.25-0.42 % of the detection loss's at step 950 of the val runs (seeds 0-1).
            # Same settings and decision rule as logit KD's. Decided 2026-12-07 (tune, seed 0): w10_e18 33.94, e18
            # 33.68, w100_e18 28.06: the best leads weight 1 by 0.26 < 1.0, so weight 1 stays.
            "fitnet": {"pointpillar": [{"label": "default", "overrides": {}, "epochs": 12},
                                       {"label": "e18", "overrides": {}},
                                       {"label": "w10_e18", "overrides": {"LOSS_WEIGHT": 10.0}},
                                       {"label": "w100_e18", "overrides": {"LOSS_WEIGHT": 100.0}}]},
            # Logit KD's weight at the 18-epoch recipe (registered 2026-12-07 before any of its runs). At LOSS_WEIGHT
            # 1 (KL at T 2, a mean over every anchor and class) its gradient at conv_cls was 0.45 % of the detection
            # loss's (median of the 67 logged steps of the val run, seed 0; 0.3-1.4 % over the run): the baseline
            # barely acts. Weights 10 and 100 span about 5 % to 45 %. Seed 0 on tune, each against the default
            # weight at 18 epochs ('e18'). Decision rule, fixed with the sweep: the weight with the highest tune
            # mAP is frozen for val if it beats 'e18' by at least 1.0 mAP; otherwise weight 1 stays.
            # Decided 2026-12-07 by that rule (tune, seed 0): w100_e18 31.52, w10_e18 31.45, e18 29.96, so weight 100
            # is frozen (kd_overrides); 'default' and 'e18' now state weight 1 (same hashes; the weight-1 val runs
            # stay under their hash)
            "logit_kd": {"pointpillar": [{"label": "default", "overrides": {"LOSS_WEIGHT": 1.0}, "epochs": 12},
                                         {"label": "e18", "overrides": {"LOSS_WEIGHT": 1.0}},
                                         {"label": "w10_e18", "overrides": {"LOSS_WEIGHT": 10.0}},
                                         {"label": "w100_e18", "overrides": {"LOSS_WEIGHT": 100.0}}]},
            # PointDistiller's TAU on top of teacher-guided init at the 18-epoch recipe (registered 2026-12-07 before
            # any of its runs). On val (18 epochs, seeds 0-2) PointDistiller + init gained -0.01 [-1.06, +1.04] over
            # init alone, and its logs show phi on 1.5-5 % of the kept pillars (TAU 1 on counts capped at 32):
            # TAU 4 and 16 spread phi. Seed 0 on tune, each against init alone at 18 epochs ('e18').
            # Decision rule, fixed with the sweep: TAU changes from 1 only for a setting that beats tau1_e18 by at
            # least 1.0 mAP and init alone by at least 1.0; otherwise TAU 1 stays and the sweep is reported.
            "inherit": {"pointpillar": [{"label": "default", "overrides": {}, "epochs": 12},
                                        {"label": "e18", "overrides": {}}]},
            # (the frozen TAU became 4 with the decision; 'default' and 'tau1_e18' now state TAU 1, same hashes)
            "pd_inherit": {"pointpillar": [{"label": "default", "overrides": {"TAU": 1.0}, "epochs": 12},
                                           {"label": "tau1_e18", "overrides": {"TAU": 1.0}},
                                           {"label": "tau4_e18", "overrides": {"TAU": 4.0}},
                                           {"label": "tau16_e18", "overrides": {"TAU": 16.0}}]},
            "itkd": {"centerpoint_pillar": [
                {"label": "default", "overrides": {"AE": {"WEIGHT": 0.5}, "KD": {"DET_LOSS_WEIGHT": 0.5}}},
                {"label": "ae5", "overrides": {"AE": {"WEIGHT": 5.0}, "KD": {"DET_LOSS_WEIGHT": 0.5}}},
                {"label": "ae5_det1", "overrides": {"AE": {"WEIGHT": 5.0}, "KD": {"DET_LOSS_WEIGHT": 1.0}}},
                # ablations of the frozen setting (added 2026-12-03 after the val table, before their runs; tune
                # split only, they choose nothing): the auto-encoder terms alone, the attention terms alone
                {"label": "ae5_det1_no_attn", "overrides": {"AE": {"WEIGHT": 5.0}, "KD": {"DET_LOSS_WEIGHT": 1.0},
                                                            "ATTN": {"ENABLED": False}}},
                {"label": "attn_only_det1", "overrides": {"AE": {"WEIGHT": 0.0}, "KD": {"DET_LOSS_WEIGHT": 1.0}}},
                # the attention term's weight (registered 2026-12-08 before any of its runs). The sweep above moved
                # the auto-encoder and detection weights only; w_attn stayed at the authors' 0.5, and the ablations
                # show that term costing most: its gradient is a median 1.16-1.27x the detection loss's (tune
                # attn_only_det1; val itkd_inherit seed 0), against ~4 % for the three auto-encoder terms. 0.05 and
                # 0.005 put it near 12 % and 1 %. Seed 0, against ae5_det1 (the frozen setting, same seed)
                {"label": "ae5_det1_attn0.05", "overrides": {"AE": {"WEIGHT": 5.0}, "KD": {"DET_LOSS_WEIGHT": 1.0},
                                                             "ATTN": {"WEIGHT": 0.05}}},
                {"label": "ae5_det1_attn0.005", "overrides": {"AE": {"WEIGHT": 5.0}, "KD": {"DET_LOSS_WEIGHT": 1.0},
                                                              "ATTN": {"WEIGHT": 0.005}}},
            ]},
        },
        # the rules that choose among the settings above (each written down with its sweep, before its runs, as
        # the comments above record; the report applies them: docs/results_cpu_tuning.md)
        decisions={
            "none": {"pointpillar": dict(candidates=["e12", ""], seeds=[0, 1, 2], keep="e12", margin=0.5,
                                         note="the recipe sweep ('e12' was the preset's recipe then)")},
            "pointdistiller": {"pointpillar": dict(candidates=["tau0.01", "tau1", "tau1_w8", "tau1_trainable"],
                                                   keep=None, margin=0.0)},
            "logit_kd": {"pointpillar": dict(candidates=["e18", "w10_e18", "w100_e18"], keep="e18", margin=1.0)},
            "fitnet": {"pointpillar": dict(candidates=["e18", "w10_e18", "w100_e18"], keep="e18", margin=1.0)},
            "pd_inherit": {"pointpillar": dict(candidates=["tau1_e18", "tau4_e18", "tau16_e18"], keep="tau1_e18",
                                               margin=1.0, also_beat=[["inherit", "e18"]])},
            # itKD: first (2026-12-03) the best of default / ae5 / ae5_det1 (ae5_det1, by 1.87); extended 2026-12-08,
            # before its runs, with the attention weights: a setting replaces ae5_det1 only if it beats it by
            # >= 1.0 (the same choice on the first three: none of them beats ae5_det1). A new choice applies to
            # itKD and to itKD + init alike
            "itkd": {"centerpoint_pillar": dict(candidates=["default", "ae5", "ae5_det1", "ae5_det1_attn0.05",
                                                            "ae5_det1_attn0.005"], keep="ae5_det1", margin=1.0)},
        },
    ),
    # Quick CPU benchmark (< 1 h on 2 cores) that trains its own teachers; kept for comparison with older runs.
    "mini": dict(
        data=dict(num_frames=400, seed=0, val_fraction=0.25, tune_fraction=0.0, preset="default"),
        seeds=[0, 1], jobs=2,
        families={
            "pointpillar": dict(teacher_width=0.5, student_rel_widths=[0.5],
                                methods=["none", "logit_kd", "fitnet", "pointdistiller"]),
            "centerpoint_pillar": dict(teacher_width=0.5, student_rel_widths=[0.25], narrow="BACKBONE_2D",
                                       methods=["none", "fitnet", "itkd"]),
        },
        teacher_epochs=10, student_epochs=8, batch_size=4,
        data_overrides=_CPU_DATA, optimization_overrides=_CPU_OPT, teacher_overrides={"CHANNELS_LAST": True},
        kd_overrides={"pointdistiller": {"pointpillar": {"NUM_KEEP": 2048, "K": 32, "GRAPH_CHANNELS": 16}}},
    ),
    # GPU preset: OpenPCDet widths for the teachers, 4x and 16x students, SECOND and voxel CenterPoint added.
    "full": dict(
        data=dict(num_frames=3000, seed=0, val_fraction=0.25, tune_fraction=0.1, preset="default"),
        seeds=[0, 1, 2], jobs=1,
        families={
            "pointpillar": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25],
                                methods=["none", "logit_kd", "fitnet", "pointdistiller"]),
            "second": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25], methods=["none", "pointdistiller"]),
            "centerpoint": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25],
                                methods=["none", "logit_kd", "fitnet", "pointdistiller", "itkd"]),
            "centerpoint_pillar": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25], narrow="BACKBONE_2D",
                                       methods=["none", "logit_kd", "fitnet", "itkd"]),
        },
        teacher_epochs=40, student_epochs=40, batch_size=4,
    ),
}


def epochs_of(preset, key, family):
    """``preset[key]`` for ``family`` (an int, or a family -> int dict)."""
    value = preset[key]
    return int(value[family]) if isinstance(value, dict) else int(value)
