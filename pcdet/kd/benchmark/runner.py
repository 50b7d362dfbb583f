"""Running: data preparation, training and evaluation subprocesses, the job pool with its progress line, and the
zoo export of trained teachers. Everything is resumable: a finished checkpoint or result of the same config is
reused, an interrupted training resumes from its last checkpoint (train.py's own resume)."""
import concurrent.futures as futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .plan import TOOLS_DIR, BenchmarkError, run_priority, write_yaml


class Runner:
    """Executes the runs of a ``Benchmark``; ``log(msg)`` receives every line of progress."""

    def __init__(self, bench, python=sys.executable, device="cpu", threads=1, jobs=None, log=print,
                 eval_splits=("val",)):
        self.bench = bench
        self.python = python
        self.device = device
        self.threads = threads
        self.jobs = max(1, int(jobs or bench.preset.get("jobs", 1)))
        self.log = log
        self.eval_splits = tuple(eval_splits)
        self.t_start = time.time()

    # ------------------------------------------------------------------ subprocesses
    def _check_call(self, cmd, what, log_file=None):
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        env["PYTHONPATH"] = os.pathsep.join([str(TOOLS_DIR.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
        out = open(log_file, "w") if log_file else None
        try:
            proc = subprocess.run(cmd, cwd=str(TOOLS_DIR), env=env, stdout=out or subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        finally:
            if out:
                out.close()
        if proc.returncode != 0:
            tail = proc.stdout[-4000:] if proc.stdout else Path(log_file).read_text()[-4000:]
            raise BenchmarkError(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")

    # ------------------------------------------------------------------ data
    def prepare_data(self):
        """Generate the preset's synthetic set and its infos unless ``data_dir`` already holds exactly it."""
        d = self.bench.preset["data"]
        data_dir = self.bench.data_dir
        meta_file = data_dir / "synthetic_meta.json"
        wanted = {"num_training_frames": d["num_frames"], "seed": d["seed"], "preset": d["preset"],
                  "num_val": int(round(d["val_fraction"] * d["num_frames"])),
                  "num_tune": int(round(d.get("tune_fraction", 0.0) * d["num_frames"]))}
        ready = data_dir / ".benchmark_data_ready"   # written after the infos: a killed preparation is redone
        if ready.is_file() and (data_dir / "kitti_infos_val.pkl").is_file() and meta_file.is_file():
            from ...datasets.synthetic import GENERATOR_VERSION

            meta = json.loads(meta_file.read_text())
            have = {k: meta.get(k, 0 if k == "num_tune" else None) for k in wanted}
            if have == wanted and meta.get("generator_version") == GENERATOR_VERSION:
                self.log(f"data: reusing {data_dir}")
                return
            self.log(f"data: {data_dir} holds another dataset ({have}), regenerating")
        if ready.is_file():
            ready.unlink()
        t0 = time.time()
        self._check_call([self.python, "-m", "pcdet.datasets.synthetic.generate", "--out", str(data_dir),
                          "--num_frames", str(d["num_frames"]), "--seed", str(d["seed"]),
                          "--val_fraction", str(d["val_fraction"]), "--tune_fraction", str(d.get("tune_fraction", 0)),
                          "--preset", d["preset"], "--workers", str(max(1, self.jobs * self.threads))], "generate")
        t1 = time.time()
        cfg_file = write_yaml(self.bench.work_dir / "cfgs" / "dataset.yaml", {
            "_BASE_CONFIG_": str(TOOLS_DIR / "cfgs" / "dataset_configs" / "synthetic_kitti_dataset.yaml"),
            "DATA_PATH": str(data_dir)})
        self._check_call([self.python, "-m", "pcdet.datasets.kitti.kitti_dataset", "create_kitti_infos",
                          str(cfg_file)], "create_kitti_infos")
        ready.write_text(json.dumps(wanted) + "\n")
        self.log(f"data: {d['num_frames']} frames generated in {t1 - t0:.1f} s, infos in {time.time() - t1:.1f} s")

    # ------------------------------------------------------------------ one run
    def splits_of(self, run):
        return ("val",) if run.longer else self.eval_splits

    def curve_epochs(self, run):
        return self.bench.curve_epochs(run)

    def evaluate(self, run, split, epoch=None, summary=False, train_s=0.0):
        bench = self.bench
        old = bench.load_result(run, split, epoch)
        if old is not None:
            return old
        out = bench.result_path(run, split, epoch)   # named by the config hash: only a stale copy of this one
        log_dir = bench.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{run.name}.{split}" + (f".e{epoch}" if epoch else "")
        cmd = [self.python, "-m", "pcdet.kd.benchmark.evaluate", "--cfg_file", str(bench.cfg_path(run)),
               "--ckpt", str(bench.ckpt_path(run, epoch)), "--split", split, "--out", str(out),
               "--log_dir", str(bench.work_dir / "eval" / tag), "--device", self.device,
               "--train_seconds", f"{train_s:.1f}", "--cfg_hash", bench.cfg_hash(run),
               "--data_signature", json.dumps(bench.data_signature())] \
            + (["--summary"] if summary else [])
        self._check_call(cmd, f"evaluating {tag}", log_file=log_dir / f"{tag}.eval.log")
        return json.loads(out.read_text())

    def results_complete(self, run):
        """Whether every result the run needs (each split, each curve epoch) exists for its current config."""
        return all(self.bench.load_result(run, split, epoch) is not None
                   for split in self.splits_of(run) for epoch in [None] + self.curve_epochs(run))

    def train(self, run):
        """Train ``run`` unless its final checkpoint exists; returns its training seconds: from its train logs
        (every start of a resumed run, or the run that trained a reused checkpoint), else this call's wall time
        (0 for a reused checkpoint without logs or a zoo teacher)."""
        bench = self.bench
        if run.zoo:
            return 0.0
        cfg = bench.write_cfg(run)
        if bench.ckpt_path(run).is_file():
            return training_minutes(bench.run_dir(run)) * 60.0
        log_dir = bench.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        keep = run.epochs if (run.curve or run.method == "teacher") else 1
        t0 = time.time()
        cmd = [self.python, str(TOOLS_DIR / "train.py"), "--cfg_file", str(cfg), "--extra_tag", "bench",
               "--workers", "1", "--fix_random_seed", "--seed", str(run.seed), "--skip_eval",
               "--max_ckpt_save_num", str(keep), "--output_root", str(bench.work_dir / "runs"),
               "--device", self.device]
        cap = bench.preset.get("max_iters_per_epoch")
        if cap and run.method != "teacher":
            cmd += ["--max_iters_per_epoch", str(int(cap))]
        self._check_call(cmd, f"training {run.name}", log_file=log_dir / f"{run.name}.train.log")
        if not bench.ckpt_path(run).is_file():
            raise BenchmarkError(f"training {run.name} ended without {bench.ckpt_path(run)}")
        return max(time.time() - t0, training_minutes(bench.run_dir(run)) * 60.0)

    def train_and_eval(self, run):
        bench = self.bench
        bench.write_cfg(run)
        # a trained teacher is still trained when its checkpoint is gone: its students need it
        needed = run.method == "teacher" and not run.zoo and not bench.ckpt_path(run).is_file()
        if self.results_complete(run) and not needed:
            self.log(f"{run.name}: every result present for config {bench.cfg_hash(run)}, reused")
            return
        # a checkpoint already there (another split's run of the same config, an interrupted evaluation) is
        # reused: the time logged for it is its training log's, the evaluation is timed here
        reused = run.zoo is not None or bench.ckpt_path(run).is_file()
        train_s = self.train(run)
        t_eval = time.time()
        for split in self.splits_of(run):
            self.evaluate(run, split, summary=True, train_s=train_s)
            for epoch in self.curve_epochs(run):
                self.evaluate(run, split, epoch=epoch)
        self.log(f"{run.name}: trained in {train_s / 60:.1f} min" + (" (checkpoint reused)" if reused else "")
                 + f", evaluated on {'/'.join(self.splits_of(run))} in {time.time() - t_eval:.0f} s")

    # ------------------------------------------------------------------ the pool
    def progress_line(self, done_runs, all_runs):
        cost_done = sum(r.cost for r in done_runs)
        cost_all = sum(r.cost for r in all_runs)
        elapsed = time.time() - self.t_start
        left = f"{elapsed / cost_done * (cost_all - cost_done) / 60:.1f} min" if cost_done > 0 else "unknown"
        return (f"progress: {len(done_runs)}/{len(all_runs)} runs done, elapsed {elapsed / 60:.1f} min, "
                f"estimate left {left}")

    def execute(self):
        runs = self.bench.runs
        done, pending = [], sorted(runs, key=run_priority)
        with futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            running = {}
            while pending or running:
                ready = [r for r in pending if all(d in done for d in r.deps)]
                while ready and len(running) < self.jobs:
                    run = ready.pop(0)
                    pending.remove(run)
                    running[pool.submit(self.train_and_eval, run)] = run
                if not running:
                    raise BenchmarkError(f"runs {[r.name for r in pending]} wait on runs that never finish")
                finished, _ = futures.wait(list(running), return_when=futures.FIRST_COMPLETED)
                for fut in finished:
                    run = running.pop(fut)
                    fut.result()
                    done.append(run)
                    self.log(self.progress_line(done, runs))

    # ------------------------------------------------------------------ zoo
    def export_teachers(self, zoo_dir, manifest_path, fp16=False):
        """After mode 'teachers': export each base teacher to ``zoo_dir`` with its tag, val curve and the 1.5x run's
        val mAP, and write the manifest."""
        from ...config import cfg_from_yaml_file
        from ...model_zoo import export_zoo_checkpoint, file_sha256, load_manifest
        from .report import moderate_map

        bench = self.bench
        manifest = load_manifest(manifest_path)
        entries = {e["name"]: e for e in manifest["teachers"]}
        classes = None
        for run in [r for r in bench.runs if r.method == "teacher" and not r.longer]:
            final = bench.load_result(run, "val")
            if final is None:
                self.log(f"zoo: {run.name} has no val result yet, not exported")
                continue
            longer = next(r for r in bench.runs if r.longer and r.family == run.family)
            fam = bench.preset["families"][run.family]
            name = str(fam["teacher"]).split(":", 1)[1]
            cfg = cfg_from_yaml_file(bench.cfg_path(run))
            classes = list(cfg.CLASS_NAMES)
            curve = []
            for epoch in self.curve_epochs(run) + [run.epochs]:
                res = bench.load_result(run, "val", epoch)
                curve.append([epoch, round(moderate_map(res["metrics"], classes), 3)])
            longer_map = None       # the 1.5x run may still be training: exported again once it is done
            res_longer = bench.load_result(longer, "val")
            if res_longer is not None:
                longer_map = round(moderate_map(res_longer["metrics"], classes), 3)
            extra = {"curve": curve, "longer": {"epochs": longer.epochs, "map3d_mod": longer_map},
                     "val_map3d_mod": curve[-1][1],
                     "val_per_class_3d_mod": {c: round(final["metrics"][f"{c}_3d/moderate_R40"], 3) for c in classes},
                     "train_minutes": round(training_minutes(bench.run_dir(run))
                                            or final.get("train_seconds", 0.0) / 60.0, 1)}
            rel_cfg = bench.base_cfg_file(run).relative_to(TOOLS_DIR.parent)
            out = Path(zoo_dir) / f"{name}.pth"
            # the training checkpoint is gone when its results came from the repository's result store (a later
            # session): the exported weights are then kept if their tag matches
            source = file_sha256(bench.ckpt_path(run)) if bench.ckpt_path(run).is_file() else None
            tag = _existing_tag(out, cfg, bench.data_dir, source)
            if tag is None and source is None:
                raise BenchmarkError(f"zoo: {run.name} has results but neither its checkpoint "
                                     f"{bench.ckpt_path(run)} nor a matching {out} to export")
            if tag is None:     # results (curve, 1.5x run) live in the manifest: the weights are written once
                _, tag = export_zoo_checkpoint(bench.ckpt_path(run), cfg, rel_cfg, bench.data_dir, out, name,
                                               run.family, fp16=fp16, extra={"source_sha256": source})
            entries[name] = {"name": name, "family": run.family, "width": run.width, "cfg_file": str(rel_cfg),
                             "ckpt": out.name, "sha256": file_sha256(out), "size_bytes": out.stat().st_size,
                             "generator_version": tag["generator_version"], "config_hash": tag["config_hash"],
                             "data": tag["data"], **extra}
            self.log(f"zoo: {name} -> {out} ({out.stat().st_size / 1e6:.1f} MB), val 3D mAP mod {curve[-1][1]:.2f}, "
                     f"{longer.epochs} epochs: {longer_map}")
        manifest["teachers"] = sorted(entries.values(), key=lambda e: e["name"])
        Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(manifest_path) + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.replace(manifest_path)
        from .report import zoo_readme

        (Path(manifest_path).parent / "README.md").write_text(zoo_readme(manifest))
        if classes is None:
            raise BenchmarkError("export_teachers: no teacher run of the plan has a val result")


def _existing_tag(path, cfg, data_dir, source_sha256):
    """The tag of an already exported zoo checkpoint at ``path`` if it was exported from the training checkpoint
    with sha256 ``source_sha256`` and matches ``cfg`` and the data, else None."""
    from ...model_zoo import ZooError, config_hash, data_signature
    from ...models.detectors.detector3d_template import CheckpointReadError, read_checkpoint

    if not Path(path).is_file():
        return None
    try:
        tag = read_checkpoint(path)[1].get("zoo")
        if tag and tag.get("config_hash") == config_hash(cfg) and tag.get("data") == data_signature(data_dir) \
                and (source_sha256 is None or tag.get("source_sha256") in (source_sha256, None)):
            return tag
    except (CheckpointReadError, ZooError):
        pass
    return None


def training_minutes(run_dir):
    """Wall minutes of training from a run's train_*.log files: from each log's "start training" line to its last
    timestamped line, summed over the logs (a resumed run has one per start)."""
    import datetime
    import re

    stamp = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),\d+")
    total = 0.0
    for log in sorted((Path(run_dir) / "log").glob("train_*.log")):
        start = last = None
        for line in log.read_text(errors="replace").splitlines():
            m = stamp.match(line)
            if not m:
                continue
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
            if start is None and "start training" in line:
                start = t
            last = t
        if start is not None and last is not None:
            total += (last - start).total_seconds() / 60.0
    return total
