"""Planning: the runs of a preset, their derived configs, output folders and dependencies.

Every training run is a ``tools/train.py`` subprocess on a YAML derived from the shipped configs: the model config
of the family (``_BASE_CONFIG_``) with DATA_PATH, widths, epochs and the preset's compute overrides, plus, for a
distillation run, the ``KD:`` block of the method's shipped KD config pointed at the run's teacher. Deleting the
``KD:`` block gives exactly the student-alone run of the same seed (the pairing of seeds).

A run's output folder is named by its name and a hash of its training config, so a run of the same config (for
example the tuning run of the setting that was then frozen) is trained once and evaluated on each split asked for.
"""
import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...config import load_yaml, merge_dicts
from .presets import KD_BLOCKS, MODEL_CFGS, epochs_of

REPO_ROOT = Path(__file__).resolve().parents[3]
TOOLS_DIR = REPO_ROOT / "tools"
CFGS = TOOLS_DIR / "cfgs"
ZOO_PREFIX = "zoo:"
# relative cost of a training run per epoch (CPU, bf16): the order in which ready runs start (teachers first,
# then the longest first, so the last runs are short) and the progress line's estimate
RUN_COST = {"teacher": 9.0, "itkd": 8.0, "pointdistiller": 6.0, "fitnet": 5.5, "logit_kd": 4.5, "none": 3.0}


def run_cost(method, epochs):
    """Relative training cost of a run of ``method`` for ``epochs`` (``RUN_COST`` per epoch, 5 for other methods)."""
    return RUN_COST.get(method, 5.0) * epochs


class BenchmarkError(RuntimeError):
    """A preset, a run or a result cannot be used; the message names it."""


@dataclass
class Run:
    """One training run (or, for a zoo teacher, one evaluated checkpoint)."""

    name: str
    family: str
    method: str          # "teacher", "none" or a KD method
    width: float         # absolute width of the narrowed part (MODEL.WIDTH, or the ``narrow`` module's)
    seed: int
    epochs: int
    teacher: "Run" = None
    deps: list = field(default_factory=list)
    label: str = ""      # tuning setting
    overrides: dict = field(default_factory=dict)
    zoo: str = None      # zoo teacher name: not trained, its shipped checkpoint is used
    curve: bool = False  # keep every checkpoint and evaluate a learning curve
    longer: bool = False  # the 1.5x-epochs run of a zoo teacher (convergence check)

    @property
    def is_kd(self):
        return self.teacher is not None

    @property
    def cost(self):
        return 0.0 if self.zoo else run_cost(self.method, self.epochs)


def run_priority(run):
    """Sort key of ``Run``s: teachers first, then longest-expected first; ties keep the plan's order."""
    return (run.method != "teacher", -run.cost)


def repo_relative(text):
    """``text`` with this checkout's absolute path replaced by ``<repo>``: config hashes and stored configs do not
    depend on where the repository was cloned."""
    return str(text).replace(str(REPO_ROOT), "<repo>")


def write_yaml(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def recipe_overrides(run):
    """The OPTIMIZATION keys a run's setting overrides (its training recipe; {} for the preset's own)."""
    return dict((run.overrides or {}).get("OPTIMIZATION", {}))


def recipe_key(run):
    """A run's training recipe: (schedule length, OPTIMIZATION overrides as sorted JSON). The tuning report pairs
    a distilled run with the student alone of the same seed, width and recipe."""
    return run.epochs, json.dumps(recipe_overrides(run), sort_keys=True)


def merge_kd_overrides(kd_block, overrides):
    """The KD block with ``overrides`` merged: key ``KD`` into the block's top level, the rest into every head."""
    kd_block = copy.deepcopy(kd_block)
    overrides = dict(overrides or {})
    top = overrides.pop("KD", {})
    kd_block = merge_dicts(kd_block, top)
    kd_block["HEADS"] = [merge_dicts(h, overrides) for h in kd_block["HEADS"]]
    return kd_block


class Benchmark:
    """The runs of ``preset`` under ``work_dir`` on the dataset at ``data_dir``.

    ``mode``: 'final' (every method with the frozen overrides, every seed), 'tune' (each tuning setting on its
    ``seeds``, by default ``seeds[0]``) or 'teachers' (train the zoo teachers and their 1.5x-epochs runs).
    ``families`` restricts the plan to those families, ``methods`` to those methods' runs, ``seeds`` to those of
    the preset's seeds (in 'tune' mode: of the settings' own seeds) and ``settings`` ('tune' mode) to the tuning
    settings with those labels.
    """

    def __init__(self, preset_name, preset, work_dir, data_dir, mode="final", families=None, zoo_manifest=None,
                 results_dir=None, methods=None, device="cpu", seeds=None, native_bf16=None, settings=None):
        if mode not in ("final", "tune", "teachers"):
            raise BenchmarkError(f"benchmark mode must be final, tune or teachers, got {mode!r}")
        self.preset_name = preset_name
        self.preset = preset
        self.work_dir = Path(work_dir).resolve()   # subprocesses run in tools/
        self.data_dir = Path(data_dir).resolve()
        self.mode = mode
        unknown = sorted(set(families or []) - set(preset["families"]))
        if unknown:
            raise BenchmarkError(f"preset {preset_name}: no families {unknown} (has {sorted(preset['families'])})")
        self.families = list(families) if families else list(preset["families"])
        self.zoo_manifest = Path(zoo_manifest).resolve() if zoo_manifest else None   # subprocesses run in tools/
        # the result files (metrics per run, split and curve epoch); outside work_dir when they are kept in the
        # repository (the cpu preset: docs/benchmark_runs/cpu), so a later session reuses what has run
        self.results_dir = Path(results_dir).resolve() if results_dir else self.work_dir / "results"
        self.device = device        # training / evaluation device type: a result is reused on the same one only
        # the CPU kind that 'auto' precision hashes for (None: this machine's); the report reads the other kind's
        # results through it
        self.native_bf16 = native_bf16
        self._data_sig = None
        if seeds is not None:
            if mode == "teachers":
                raise BenchmarkError("--seeds selects student runs; --retrain-teachers trains every teacher")
            unknown_seeds = sorted(set(seeds) - set(preset["seeds"]))
            if unknown_seeds:
                raise BenchmarkError(f"preset {preset_name}: no seeds {unknown_seeds} (has {preset['seeds']})")
        for method, per_family in preset.get("kd_overrides", {}).items():
            for family, ov in per_family.items():
                if "OPTIMIZATION" in ov or "epochs" in ov:
                    raise BenchmarkError(f"preset {preset_name}: kd_overrides[{method}][{family}] sets a training "
                                         f"recipe (OPTIMIZATION / epochs); a recipe is frozen for every method of a "
                                         f"family (student_epochs, optimization_overrides), so that the paired "
                                         f"student alone shares it")
        for method, per_family in preset.get("decisions", {}).items():
            for family, rule in per_family.items():
                labels = [st["label"] for st in preset.get("tuning", {}).get(method, {}).get(family, [])]
                named = list(rule["candidates"]) + [lab for m, lab in rule.get("also_beat", []) if m == method]
                if rule.get("keep") is not None:
                    named.append(rule["keep"])
                unknown = sorted({lab for lab in named if lab not in labels})
                if unknown:
                    raise BenchmarkError(f"preset {preset_name}: decisions[{method}][{family}] names settings "
                                         f"{unknown} that tuning[{method}][{family}] does not have ({labels})")
        self.seeds = [s for s in preset["seeds"] if seeds is None or s in seeds]
        self.runs = self._plan()
        if seeds is not None and mode == "tune":
            # the tuning settings name their own seeds; --seeds keeps those of them
            self._restrict(lambda r: r.seed in seeds)
        if methods:
            known = {m for f in self.families for m in preset["families"][f]["methods"]} | {"teacher"}
            unknown_methods = sorted(set(methods) - known)
            if unknown_methods:
                raise BenchmarkError(f"preset {preset_name}: no methods {unknown_methods} in families "
                                     f"{self.families} (has {sorted(known)})")
            if mode == "teachers":
                raise BenchmarkError("--methods selects student runs; --retrain-teachers trains every teacher")
            self._restrict(lambda r: r.method in methods)
        if settings is not None:
            if mode != "tune":
                raise BenchmarkError("--settings selects tuning settings: it needs --tune")
            # a KD method's own setting is 'default'; the student alone's own recipe is '' (also named 'default')
            def selected(r):
                return r.label in settings or (r.method == "none" and r.label == "" and "default" in settings)

            if not settings:
                raise BenchmarkError("--settings needs at least one label")
            labels = {r.label for r in self.runs if r.method != "teacher"}
            unknown = sorted(set(settings) - labels - ({"default"} if "" in labels else set()))
            if unknown:
                raise BenchmarkError(f"preset {preset_name}: no tuning settings {unknown} among the planned runs "
                                     f"(labels {sorted(labels)})")
            self._restrict(selected)
        self._check_distinct()

    def _restrict(self, wanted):
        """Keep the runs for which ``wanted(run)`` holds and the teachers they depend on; a zoo teacher always
        stays (it is evaluated, not trained) so the report has its row."""
        keep = [r for r in self.runs if wanted(r) or (r.method == "teacher" and r.zoo)]
        for r in list(keep):
            keep += [d for d in r.deps if d not in keep]
        self.runs = [r for r in self.runs if r in keep]

    # ------------------------------------------------------------------ planning
    def _teacher_run(self, family, fam, seed):
        spec = fam.get("teacher")
        if spec and str(spec).startswith(ZOO_PREFIX):
            # a zoo teacher's schedule is its config's (tools/cfgs/zoo/<family>_teacher.yaml)
            cfg_file = CFGS / "zoo" / f"{family}_teacher.yaml"
            epochs = int(load_yaml(cfg_file)["OPTIMIZATION"]["NUM_EPOCHS"])
            if self.mode != "teachers":
                name = str(spec)[len(ZOO_PREFIX):]
                return Run(f"{family}_teacher_zoo", family, "teacher", fam["teacher_width"], 0, epochs, zoo=name)
        else:
            epochs = epochs_of(self.preset, "teacher_epochs", family)
        return Run(f"{family}_teacher_w{fam['teacher_width']}_s{seed}", family, "teacher", fam["teacher_width"],
                   seed, epochs)

    def _plan(self):
        p = self.preset
        runs = []
        if self.mode == "teachers":
            for family in self.families:
                fam = p["families"][family]
                base = self._teacher_run(family, fam, 0)
                base.curve = True
                longer = Run(base.name + "_longer", family, "teacher", base.width, 0,
                             int(round(1.5 * base.epochs)), longer=True)
                runs += [base, longer]
            return runs
        for family in self.families:
            fam = p["families"][family]
            seeds = self.tune_seeds(family) if self.mode == "tune" else self.seeds
            zoo_teacher = None
            for seed in seeds:
                teacher = self._teacher_run(family, fam, seed)
                if teacher.zoo:
                    if zoo_teacher is None:
                        zoo_teacher = teacher
                        runs.append(teacher)
                    teacher = zoo_teacher
                else:
                    runs.append(teacher)
                default_epochs = epochs_of(p, "student_epochs", family)
                for rel in fam["student_rel_widths"]:
                    width = round(fam["teacher_width"] * rel, 6)
                    for method in fam["methods"]:
                        frozen = p.get("kd_overrides", {}).get(method, {}).get(family, {})
                        for setting in self.settings(method, family):
                            if seed not in self.setting_seeds(setting):
                                continue
                            label = setting["label"]
                            overrides = setting["overrides"] if method == "none" else merge_dicts(
                                frozen, setting["overrides"])
                            epochs = int(setting.get("epochs", default_epochs))
                            name = f"{family}_{method}_w{width}_s{seed}" + (f"_{label}" if label else "")
                            run = Run(name, family, method, width, seed, epochs,
                                      teacher=teacher if method != "none" else None, label=label,
                                      overrides=overrides, curve=(method == "none" and seed == p["seeds"][0]))
                            if run.teacher is not None and not run.teacher.zoo:
                                run.deps.append(run.teacher)
                            runs.append(run)
        if self.mode == "tune":
            # a trained teacher of a seed that only student-alone recipes run is not needed (seeds[0]'s stays)
            used = {id(d) for r in runs for d in r.deps}
            runs = [r for r in runs if not (r.method == "teacher" and not r.zoo and id(r) not in used
                                            and r.seed != p["seeds"][0])]
        return runs

    def settings(self, method, family):
        """The settings a method runs in this mode: in 'final' mode one (the frozen overrides); in 'tune' mode the
        preset's ``tuning[method][family]`` list (a KD method without one: its 'default'; the student alone
        without one: its unlabelled run). A student-alone setting is a training recipe: ``{"label", "overrides":
        {"OPTIMIZATION": {...}}, "epochs", "seeds"}``; its label '' is the preset's own recipe."""
        plain = [{"label": "", "overrides": {}}]
        if self.mode != "tune":
            return plain
        listed = self.preset.get("tuning", {}).get(method, {}).get(family)
        if listed:
            for s in listed:
                ov = s.get("overrides", {})
                if method == "none" and set(ov) - {"OPTIMIZATION"}:
                    raise BenchmarkError(f"preset {self.preset_name}: student-alone setting {family}/'{s['label']}' "
                                         f"overrides {sorted(set(ov) - {'OPTIMIZATION'})}: a student-alone recipe "
                                         f"sets only OPTIMIZATION keys (and 'epochs')")
                if "NUM_EPOCHS" in ov.get("OPTIMIZATION", {}) or "BATCH_SIZE_PER_GPU" in ov.get("OPTIMIZATION", {}):
                    raise BenchmarkError(f"preset {self.preset_name}: tuning setting {method}/{family}/"
                                         f"'{s['label']}' sets OPTIMIZATION.NUM_EPOCHS or BATCH_SIZE_PER_GPU: give "
                                         f"the schedule length as the setting's 'epochs' (the batch is the preset's)")
            return listed
        return plain if method == "none" else [{"label": "default", "overrides": {}}]

    def setting_seeds(self, setting):
        """The seeds a setting runs: in 'tune' mode its ``seeds`` (default the preset's first), else the plan's."""
        if self.mode != "tune":
            return self.seeds
        seeds = setting.get("seeds", self.preset["seeds"][:1])
        unknown = sorted(set(seeds) - set(self.preset["seeds"]))
        if unknown:
            raise BenchmarkError(f"preset {self.preset_name}: tuning setting '{setting['label']}' names seeds "
                                 f"{unknown} that the preset does not have ({self.preset['seeds']})")
        return list(seeds)

    def tune_seeds(self, family):
        """Every seed some tuning setting of ``family`` runs, in the preset's order."""
        wanted = {s for m in self.preset["families"][family]["methods"] for st in self.settings(m, family)
                  for s in self.setting_seeds(st)}
        return [s for s in self.preset["seeds"] if s in wanted]

    def _check_distinct(self):
        """Two planned runs must not train the same config into the same folder (e.g. two tuning settings that
        the frozen overrides make equal): refuse the plan."""
        from ...model_zoo import ZooError

        seen = {}
        for run in self.runs:
            if run.zoo:
                continue
            try:
                key = (self.cfg_hash(run), self.train_name(run))
            except ZooError:
                return      # the zoo is not built yet (teachers mode, tests without a manifest)
            if key in seen:
                raise BenchmarkError(f"preset {self.preset_name}: runs {seen[key]} and {run.name} train the same "
                                     f"config (hash {key[0]}); make their overrides differ")
            seen[key] = run.name

    # ------------------------------------------------------------------ configs and paths
    def cfg_text(self, run):
        return yaml.safe_dump(self.cfg_data(run), sort_keys=False)

    def cfg_hash(self, run):
        """Hash of what the run trains: its derived config with every ``_BASE_CONFIG_`` expanded (edits of a
        shipped config change it), and its teacher (a zoo teacher's checkpoint sha256 from the manifest, a trained
        teacher's own config hash)."""
        from ...config import _expand

        data = _expand(copy.deepcopy(self.cfg_data(run)), CFGS / "derived.yaml")
        extra = {}
        if run.zoo:
            extra["zoo_sha256"] = self._zoo_sha(run.zoo)
        if run.is_kd:
            t = run.teacher
            extra["teacher"] = self._zoo_sha(t.zoo) if t.zoo else self.cfg_hash(t)
            extra["teacher_cfg"] = load_yaml(self.teacher_cfg_file(t)) if t.zoo else None
        extra["max_iters_per_epoch"] = self.preset.get("max_iters_per_epoch") if run.method != "teacher" else None
        if self.device == "cpu" and str(data.get("OPTIMIZATION", {}).get("USE_AMP", "")).lower() == "auto":
            # 'auto' trains in bf16 or float32 by machine: runs of the two kinds are different runs (not paired)
            extra["cpu_native_bf16"] = self.cpu_native_bf16()
        text = json.dumps({"cfg": data, "extra": extra}, sort_keys=True, default=str)
        return hashlib.sha256(repo_relative(text).encode()).hexdigest()[:10]

    def cpu_native_bf16(self):
        """The CPU kind the run hashes are for: ``native_bf16`` if given, else whether this CPU has native bf16."""
        if self.native_bf16 is not None:
            return bool(self.native_bf16)
        from ...utils.common_utils import cpu_has_native_bf16

        return cpu_has_native_bf16()

    def _zoo_sha(self, name):
        from ...model_zoo import zoo_entry

        return zoo_entry(name, **self._manifest_kw()).get("sha256")

    def train_name(self, run):
        """The run's name without its tuning label: runs of the same training config share a folder."""
        return run.name[:-len(run.label) - 1] if run.label else run.name

    def cfg_path(self, run):
        """The derived config, one folder per config hash (its stem is train.py's output folder name)."""
        return self.work_dir / "cfgs" / self.cfg_hash(run) / f"{self.train_name(run)}.yaml"

    def run_dir(self, run):
        """train.py's layout for a config under a ``cfgs`` folder: <output_root>/<folders below cfgs>/<stem>/<tag>,
        here runs/<config hash>/<name>/bench."""
        return self.work_dir / "runs" / self.cfg_hash(run) / self.train_name(run) / "bench"

    def ckpt_path(self, run, epoch=None):
        if run.zoo:
            from ...model_zoo import zoo_entry

            return Path(zoo_entry(run.zoo, **self._manifest_kw())["ckpt"])
        return self.run_dir(run) / "ckpt" / f"checkpoint_epoch_{epoch or run.epochs}.pth"

    def curve_epochs(self, run):
        """The intermediate epochs whose checkpoints a curve run evaluates (every ``curve_every``), else []."""
        every = int(self.preset.get("curve_every", 0) or 0)
        if not run.curve or every <= 0:
            return []
        return list(range(every, run.epochs, every))

    def result_path(self, run, split, epoch=None):
        """One file per run, split, curve epoch and config hash: results of other configs (another machine kind,
        an edited config) stay beside it and are never overwritten."""
        suffix = "" if epoch in (None, run.epochs) else f"_e{epoch}"
        return self.results_dir / split / f"{run.name}{suffix}.{self.cfg_hash(run)}.json"

    def data_signature(self):
        """The dataset's identity (``model_zoo.data_signature``: generator version, seed, counts, sha256 of each
        split list), or None when ``data_dir`` is not a generated set."""
        if self._data_sig is None:       # not cached while the data is missing (prepare_data makes it)
            from ...model_zoo import ZooError, data_signature

            try:
                self._data_sig = data_signature(self.data_dir)
            except ZooError:
                return None
        return self._data_sig

    def load_result(self, run, split, epoch=None):
        """The result of ``run`` on ``split`` (at ``epoch``) if it was computed for the run's current config (same
        ``cfg_hash``), on the same dataset (same ``data_signature``) and device type, else None: a result of an
        edited config, of regenerated data or of another device is never reused or reported."""
        path = self.result_path(run, split, epoch)
        if not path.is_file():
            return None
        try:
            res = json.loads(path.read_text())
        except ValueError:
            return None
        same = (res.get("cfg_hash") == self.cfg_hash(run) and res.get("data") == self.data_signature()
                and str(res.get("device", "")).split(":")[0] == self.device)
        return res if same else None

    def _manifest_kw(self):
        return {"path": self.zoo_manifest} if self.zoo_manifest else {}

    def model_widths(self, run):
        """MODEL width keys of a run: every module at ``run.width``, or (family ``narrow: MODULE``, the itKD
        students) the teacher's width everywhere and ``run.width`` for that module alone."""
        fam = self.preset["families"][run.family]
        module = fam.get("narrow")
        if module is None or run.method == "teacher":
            return {"WIDTH": run.width}
        return {"WIDTH": fam["teacher_width"], module: {"WIDTH": run.width}}

    def base_cfg_file(self, run):
        """The config a run derives from: a zoo family's teacher config (tools/cfgs/zoo/<family>_teacher.yaml,
        the one its manifest entry names) for its teachers, else the family's model config."""
        if run.method == "teacher" and self.preset["families"][run.family].get("teacher"):
            return CFGS / "zoo" / f"{run.family}_teacher.yaml"
        return CFGS / MODEL_CFGS[run.family]

    def cfg_data(self, run):
        """The derived config of ``run`` as a dict (see the module docstring)."""
        if run.method == "teacher" and self.preset["families"][run.family].get("teacher"):
            # a zoo teacher is its shipped config as is; only the data folder (not hashed) and the epochs of the
            # 1.5x run differ
            data = {"_BASE_CONFIG_": str(self.base_cfg_file(run)), "DATA_CONFIG": {"DATA_PATH": str(self.data_dir)}}
            if run.longer:
                data["OPTIMIZATION"] = {"NUM_EPOCHS": run.epochs}
            return data
        data = {
            "_BASE_CONFIG_": str(self.base_cfg_file(run)),
            "DATA_CONFIG": dict(copy.deepcopy(self.preset.get("data_overrides", {})), DATA_PATH=str(self.data_dir)),
            "MODEL": self.model_widths(run),
            "OPTIMIZATION": dict(self.preset.get("optimization_overrides", {}), **recipe_overrides(run),
                                 NUM_EPOCHS=run.epochs, BATCH_SIZE_PER_GPU=self.preset["batch_size"]),
        }
        if run.is_kd:
            kd_block = load_yaml(CFGS / KD_BLOCKS[run.method][run.family])["KD"]
            kd_block = merge_kd_overrides(kd_block, {k: v for k, v in run.overrides.items() if k != "OPTIMIZATION"})
            teacher = run.teacher
            kd_block["TEACHER"] = dict(self.preset.get("teacher_overrides", {}),
                                       CFG_FILE=str(self.teacher_cfg_file(teacher)), CKPT=str(self.ckpt_path(teacher)))
            data["KD"] = kd_block
        return data

    def teacher_cfg_file(self, teacher):
        """The config a student's KD block names: a zoo teacher's shipped config (its hash is checked against the
        checkpoint's tag), else the derived config of the trained teacher."""
        return self.base_cfg_file(teacher) if teacher.zoo else self.cfg_path(teacher)

    def write_cfg(self, run):
        return write_yaml(self.cfg_path(run), self.cfg_data(run))
