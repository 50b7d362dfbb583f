"""Reproducible distillation benchmark on the synthetic KITTI-format dataset.

For each detector family of the preset it trains the teacher, the compact students alone (no KD) and with each
distillation method, for several seeds; evaluates every model with the KITTI metric (3D and BEV AP R40,
easy/moderate/hard per class); measures parameters, FLOPs and inference latency of every architecture in the same
run; and writes a markdown table (``docs/results_<preset>.md``) and a plot (moderate 3D mAP vs FLOPs).

Every training run is a real ``tools/train.py`` subprocess on a config file derived from the shipped ones (the
derived YAML only overrides DATA_PATH, widths, epochs and the teacher), so the benchmark exercises exactly what a
user runs. Nothing is tuned on the evaluation split: schedules are fixed per preset before any run.

    python tools/benchmark_kd.py --preset main     # README main job: CenterPoint teacher, 1/4 student, itKD
    python tools/benchmark_kd.py --preset mini     # CPU benchmark (~1 h on 2 cores): PointPillars + CenterPoint
    python tools/benchmark_kd.py --preset full     # GPU preset, adds SECOND and longer schedules
"""
import argparse
import concurrent.futures as futures
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent
CFGS = TOOLS_DIR / "cfgs"

# family -> the plain model config (teachers and students-alone use it as is).
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
}
METHOD_LABELS = {"teacher": "Teacher", "none": "Student alone", "logit_kd": "Logit KD", "fitnet": "FitNet",
                 "pointdistiller": "PointDistiller", "itkd": "itKD"}

PRESETS = {
    # The README main job: small and quick, one seed; it demonstrates the whole path, it is not the benchmark.
    "main": dict(
        num_frames=160, val_fraction=0.25, data_preset="default", seeds=[0], jobs=2,
        families={"centerpoint_pillar": dict(teacher_width=0.5, student_rel_widths=[0.25],
                                             methods=["none", "itkd"])},
        teacher_epochs=4, student_epochs=4, batch_size=2,
    ),
    # CPU benchmark (about 1 h on 2 cores): lighter teachers (half of OpenPCDet's widths) on the CPU-sized synthetic
    # grids; the students keep the papers' 16x ratio to their teacher (quarter widths). The half-width (4x) students
    # are in the `full` preset: the 2-core budget does not fit both.
    "mini": dict(
        num_frames=360, val_fraction=0.25, data_preset="default", seeds=[0, 1], jobs=2,
        families={
            "pointpillar": dict(teacher_width=0.5, student_rel_widths=[0.25],
                                methods=["none", "logit_kd", "fitnet", "pointdistiller"]),
            "centerpoint_pillar": dict(teacher_width=0.5, student_rel_widths=[0.25],
                                       methods=["none", "logit_kd", "fitnet", "pointdistiller", "itkd"]),
        },
        teacher_epochs=5, student_epochs=5, batch_size=2,
    ),
    # GPU preset: OpenPCDet widths for the teachers, 4x and 16x students, SECOND and voxel CenterPoint added.
    "full": dict(
        num_frames=3000, val_fraction=0.25, data_preset="default", seeds=[0, 1, 2], jobs=1,
        families={
            "pointpillar": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25],
                                methods=["none", "logit_kd", "fitnet", "pointdistiller"]),
            "second": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25], methods=["none", "pointdistiller"]),
            "centerpoint": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25],
                                methods=["none", "logit_kd", "fitnet", "pointdistiller", "itkd"]),
            "centerpoint_pillar": dict(teacher_width=1.0, student_rel_widths=[0.5, 0.25],
                                       methods=["none", "fitnet", "itkd"]),
        },
        teacher_epochs=40, student_epochs=40, batch_size=4,
    ),
}


@dataclass
class Run:
    """One training run: a derived config, its output directory, and the run it distils from."""

    name: str
    family: str
    method: str          # "teacher", "none" or a KD method
    width: float         # absolute MODEL.WIDTH
    seed: int
    epochs: int
    teacher: "Run" = None
    deps: list = field(default_factory=list)

    @property
    def is_kd(self):
        return self.teacher is not None


def _write_yaml(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


class Benchmark:
    def __init__(self, preset_name, preset, work_dir, data_dir, python, device, threads):
        self.preset_name = preset_name
        self.preset = preset
        self.work_dir = Path(work_dir)
        self.data_dir = Path(data_dir)
        self.python = python
        self.device = device
        self.threads = threads
        self.runs = self._plan()

    # ------------------------------------------------------------------ planning
    def _plan(self):
        p = self.preset
        runs = []
        for family, fam in p["families"].items():
            for seed in p["seeds"]:
                teacher = Run(f"{family}_teacher_w{fam['teacher_width']}_s{seed}", family, "teacher",
                              fam["teacher_width"], seed, p["teacher_epochs"])
                runs.append(teacher)
                for rel in fam["student_rel_widths"]:
                    width = round(fam["teacher_width"] * rel, 6)
                    for method in fam["methods"]:
                        run = Run(f"{family}_{method}_w{width}_s{seed}", family, method, width, seed,
                                  p["student_epochs"], teacher=teacher if method != "none" else None)
                        if run.teacher is not None:
                            run.deps.append(teacher)
                        runs.append(run)
        return runs

    def cfg_path(self, run):
        return self.work_dir / "cfgs" / f"{run.name}.yaml"

    def run_dir(self, run):
        # train.py's layout: <output_root>/<cfg stem>/<extra_tag> (the derived configs live outside tools/cfgs)
        return self.work_dir / "runs" / run.name / "bench"

    def ckpt_path(self, run):
        return self.run_dir(run) / "ckpt" / f"checkpoint_epoch_{run.epochs}.pth"

    def result_path(self, run):
        return self.work_dir / "results" / f"{run.name}.json"

    def write_cfg(self, run):
        data = {
            "_BASE_CONFIG_": str(CFGS / MODEL_CFGS[run.family]),
            "DATA_CONFIG": {"DATA_PATH": str(self.data_dir)},
            "MODEL": {"WIDTH": run.width},
            "OPTIMIZATION": {"NUM_EPOCHS": run.epochs, "BATCH_SIZE_PER_GPU": self.preset["batch_size"]},
        }
        if run.is_kd:
            from pcdet.config import load_yaml

            kd_block = load_yaml(CFGS / KD_BLOCKS[run.method][run.family])["KD"]
            kd_block["TEACHER"] = {"CFG_FILE": str(self.cfg_path(run.teacher)),
                                   "CKPT": str(self.ckpt_path(run.teacher))}
            data["KD"] = kd_block
        return _write_yaml(self.cfg_path(run), data)

    # ------------------------------------------------------------------ data
    def prepare_data(self, log):
        marker = self.data_dir / "kitti_infos_val.pkl"
        if marker.is_file():
            log(f"data: reusing {self.data_dir}")
            return
        t0 = time.time()
        self._check_call([self.python, "-m", "pcdet.datasets.synthetic.generate", "--out", str(self.data_dir),
                          "--num_frames", str(self.preset["num_frames"]), "--seed", "0",
                          "--val_fraction", str(self.preset["val_fraction"]),
                          "--preset", self.preset["data_preset"]], "generate")
        t1 = time.time()
        cfg_file = _write_yaml(self.work_dir / "cfgs" / "dataset.yaml", {
            "_BASE_CONFIG_": str(CFGS / "dataset_configs" / "synthetic_kitti_dataset.yaml"),
            "DATA_PATH": str(self.data_dir)})
        self._check_call([self.python, "-m", "pcdet.datasets.kitti.kitti_dataset", "create_kitti_infos",
                          str(cfg_file)], "create_kitti_infos")
        log(f"data: {self.preset['num_frames']} frames generated in {t1 - t0:.1f} s, infos in {time.time() - t1:.1f} s")

    def _check_call(self, cmd, what, log_file=None):
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        out = open(log_file, "w") if log_file else None
        try:
            proc = subprocess.run(cmd, cwd=str(TOOLS_DIR), env=env, stdout=out or subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        finally:
            if out:
                out.close()
        if proc.returncode != 0:
            tail = proc.stdout[-4000:] if proc.stdout else Path(log_file).read_text()[-4000:]
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")

    # ------------------------------------------------------------------ training and evaluation
    def train_and_eval(self, run, log):
        if self.result_path(run).is_file():
            log(f"{run.name}: done before, reusing {self.result_path(run)}")
            return
        cfg = self.write_cfg(run)
        log_dir = self.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        if not self.ckpt_path(run).is_file():
            cmd = [self.python, str(TOOLS_DIR / "train.py"), "--cfg_file", str(cfg), "--extra_tag", "bench",
                   "--workers", "1", "--fix_random_seed", "--seed", str(run.seed), "--skip_eval",
                   "--max_ckpt_save_num", "1", "--output_root", str(self.work_dir / "runs"),
                   "--device", self.device]
            self._check_call(cmd, f"training {run.name}", log_file=log_dir / f"{run.name}.train.log")
        train_s = time.time() - t0
        t1 = time.time()
        cmd = [self.python, str(Path(__file__).resolve()), "_eval", "--cfg_file", str(cfg), "--ckpt",
               str(self.ckpt_path(run)), "--out", str(self.result_path(run)), "--device", self.device,
               "--train_seconds", f"{train_s:.1f}"]
        self._check_call(cmd, f"evaluating {run.name}", log_file=log_dir / f"{run.name}.eval.log")
        log(f"{run.name}: trained in {train_s / 60:.1f} min, evaluated in {time.time() - t1:.0f} s")

    def execute(self, log):
        done, pending = set(), list(self.runs)
        jobs = max(1, int(self.preset["jobs"]))
        with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            running = {}
            while pending or running:
                ready = [r for r in pending if all(d.name in done for d in r.deps)]
                while ready and len(running) < jobs:
                    run = ready.pop(0)
                    pending.remove(run)
                    running[pool.submit(self.train_and_eval, run, log)] = run
                finished, _ = futures.wait(list(running), return_when=futures.FIRST_COMPLETED)
                for fut in finished:
                    run = running.pop(fut)
                    fut.result()
                    done.add(run.name)


# ---------------------------------------------------------------------- evaluation subprocess
def _eval_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg_file", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train_seconds", type=float, default=0.0)
    parser.add_argument("--latency_frames", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(TOOLS_DIR))
    from eval_utils import eval_utils

    from pcdet.config import cfg_from_yaml_file
    from pcdet.datasets import build_dataloader
    from pcdet.models import load_data_to_device
    from pcdet.models.model_utils.model_summary import summarize
    from pcdet.utils import common_utils

    cfg = cfg_from_yaml_file(args.cfg_file)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logger = common_utils.create_logger(out.with_suffix(".log"), rank=0)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=1, dist=False, workers=0,
                                          logger=logger, training=False)
    model = eval_utils.build_eval_model(cfg, dataset, args.ckpt, device, logger)
    ns = argparse.Namespace(save_to_file=False)
    metrics = eval_utils.eval_one_epoch(cfg, ns, model, loader, int(cfg.OPTIMIZATION.NUM_EPOCHS), logger,
                                        result_dir=out.parent / (out.stem + "_eval"))

    # parameters, FLOPs (counted on one frame) and latency (batch 1, forward only, after warm-up)
    it = iter(loader)
    batch = next(it)
    load_data_to_device(batch, device)
    with torch.no_grad():
        summary = summarize(model, batch)
    times = []
    for i, batch in enumerate([batch] + [next(it) for _ in range(min(args.latency_frames, len(loader) - 1))]):
        load_data_to_device(batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    result = {
        "metrics": metrics,
        "params": int(summary["params"]),
        "flops": float(summary["flops"]),
        "latency_ms": 1000.0 * statistics.median(times) if times else float("nan"),
        "train_seconds": args.train_seconds,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


# ---------------------------------------------------------------------- reporting
def moderate_map(metrics, class_names, kind="3d"):
    vals = [metrics.get(f"{c}_{kind}/moderate_R40") for c in class_names]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def _mean_spread(values):
    if not values:
        return float("nan"), float("nan")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summarize_results(bench, class_names):
    """Group runs by (family, width, method) -> per-seed metrics; return rows for the table."""
    groups = {}
    for run in bench.runs:
        path = bench.result_path(run)
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        key = (run.family, run.width, run.method)
        groups.setdefault(key, []).append(res)
    rows = []
    for (family, width, method), results in groups.items():
        m3d = [moderate_map(r["metrics"], class_names, "3d") for r in results]
        mbev = [moderate_map(r["metrics"], class_names, "bev") for r in results]
        per_class = {c: statistics.fmean([r["metrics"].get(f"{c}_3d/moderate_R40", float("nan")) for r in results])
                     for c in class_names}
        rows.append(dict(
            family=family, width=width, method=method, seeds=len(results),
            map3d=_mean_spread(m3d), mapbev=_mean_spread(mbev), per_class=per_class, map3d_values=m3d,
            params=results[0]["params"], flops=results[0]["flops"],
            latency_ms=statistics.fmean([r["latency_ms"] for r in results]),
            train_min=statistics.fmean([r["train_seconds"] for r in results]) / 60.0,
            device=results[0]["device"],
        ))
    return rows


def _fmt(mean_spread, digits=2):
    mean, spread = mean_spread
    if spread != spread:  # NaN: a single seed
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def write_report(bench, rows, class_names, md_path, png_path, wall_s, log):
    order = ["teacher", "none", "logit_kd", "fitnet", "pointdistiller", "itkd"]
    lines = [f"# KD benchmark, preset `{bench.preset_name}`", "",
             f"Synthetic KITTI-format dataset ({bench.preset['num_frames']} frames, "
             f"{int(bench.preset['val_fraction'] * 100)}% val), seeds {bench.preset['seeds']}, "
             f"{bench.preset['teacher_epochs']} teacher / {bench.preset['student_epochs']} student epochs, "
             f"batch {bench.preset['batch_size']}; device {rows[0]['device'] if rows else '?'}; "
             f"wall time {wall_s / 60:.1f} min.", "",
             "mAP = mean over Car/Pedestrian/Cyclist of moderate AP R40 (KITTI metric, val split). "
             "`±` is the standard deviation over seeds. Gain = method - student alone (same width, same seeds); "
             "it is marked significant only when |gain| exceeds its spread sqrt(sd_alone^2 + sd_method^2). "
             "Gap closed = gain / (teacher - student alone). Latency: median forward time per frame at batch 1, "
             "measured in the same run on the same machine.", ""]
    for family in bench.preset["families"]:
        fam_rows = [r for r in rows if r["family"] == family]
        teacher = next((r for r in fam_rows if r["method"] == "teacher"), None)
        widths = sorted({r["width"] for r in fam_rows if r["method"] != "teacher"}, reverse=True)
        lines += [f"## {family}", "",
                  "| model | width | method | params | GFLOPs | latency ms | 3D mAP mod | BEV mAP mod | "
                  + " | ".join(f"{c} 3D mod" for c in class_names) + " | gain | gap closed | significant |",
                  "|" + "---|" * (11 + len(class_names))]
        for width in ([teacher["width"]] if teacher else []) + widths:
            alone = next((r for r in fam_rows if r["width"] == width and r["method"] == "none"), None)
            for method in order:
                r = next((x for x in fam_rows if x["width"] == width and x["method"] == method), None)
                if r is None or (method == "teacher") != (teacher is not None and r is teacher):
                    continue
                gain = gap = sig = ""
                if alone is not None and method not in ("teacher", "none"):
                    g = r["map3d"][0] - alone["map3d"][0]
                    sp = (r["map3d"][1] ** 2 + alone["map3d"][1] ** 2) ** 0.5
                    gain = f"{g:+.2f}"
                    sig = "n/a (1 seed)" if sp != sp else ("yes" if abs(g) > sp else "no")
                    if teacher is not None:
                        denom = teacher["map3d"][0] - alone["map3d"][0]
                        gap = f"{100 * g / denom:.0f}%" if abs(denom) > 1e-6 else "n/a"
                lines.append(
                    f"| {family} | {r['width']} | {METHOD_LABELS[method]} | {r['params'] / 1e6:.3f}M | "
                    f"{r['flops'] / 1e9:.2f} | {r['latency_ms']:.1f} | {_fmt(r['map3d'])} | {_fmt(r['mapbev'])} | "
                    + " | ".join(f"{r['per_class'][c]:.2f}" for c in class_names)
                    + f" | {gain} | {gap} | {sig} |")
        lines.append("")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines) + "\n")
    _plot(rows, png_path)
    log(f"wrote {md_path} and {png_path}")
    return "\n".join(lines)


def _plot(rows, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"teacher": "*", "none": "o", "logit_kd": "v", "fitnet": "s", "pointdistiller": "D", "itkd": "P"}
    colors = {"pointpillar": "tab:blue", "centerpoint": "tab:red", "second": "tab:green",
              "centerpoint_pillar": "tab:orange"}
    seen = set()
    for r in rows:
        label = f"{r['family']} {METHOD_LABELS[r['method']]}"
        ax.errorbar(r["flops"] / 1e9, r["map3d"][0], yerr=None if r["map3d"][1] != r["map3d"][1] else r["map3d"][1],
                    marker=markers[r["method"]], color=colors.get(r["family"], "k"), linestyle="none",
                    markersize=9 if r["method"] == "teacher" else 6, capsize=3,
                    label=label if label not in seen else None)
        seen.add(label)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per frame (counted)")
    ax.set_ylabel("moderate 3D mAP (R40)")
    ax.set_title("Synthetic KITTI-format benchmark: accuracy vs compute")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def eval_self_check(log):
    """The KITTI metric on ground truth as detections (AP 100) and on seeded noisy detections."""
    from pcdet.datasets.kitti.kitti_object_eval_python.eval import evaluate_self_check

    res = evaluate_self_check()
    for name in ("perfect", "noisy"):
        result_dict = res[name][1]
        vals = {c: result_dict.get(f"{c}_3d/moderate_R40") for c in ("Car", "Pedestrian", "Cyclist")}
        log(f"KITTI metric self-check, {name} detections: 3D moderate AP R40 "
            + ", ".join(f"{c} {v:.2f}" for c, v in vals.items()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_eval":
        return _eval_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mini")
    parser.add_argument("--work_dir", default=None, help="default: output/benchmark_kd/<preset>")
    parser.add_argument("--data_dir", default=None, help="default: data/synthetic_kitti_<preset>")
    parser.add_argument("--jobs", type=int, default=None, help="training runs in parallel (default: preset)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--docs_dir", default=str(REPO_ROOT / "docs"))
    args = parser.parse_args(argv)

    preset = dict(PRESETS[args.preset])
    if args.jobs is not None:
        preset["jobs"] = args.jobs
    work_dir = Path(args.work_dir or REPO_ROOT / "output" / "benchmark_kd" / args.preset)
    data_dir = Path(args.data_dir or REPO_ROOT / "data" / f"synthetic_kitti_{args.preset}")
    work_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(work_dir / "benchmark.log", "a")
    t_start = time.time()

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')} +{(time.time() - t_start) / 60:5.1f} min] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    bench = Benchmark(args.preset, preset, work_dir, data_dir, sys.executable, args.device, args.threads)
    log(f"preset {args.preset}: {len(bench.runs)} training runs, {preset['jobs']} in parallel")
    eval_self_check(log)
    bench.prepare_data(log)
    bench.execute(log)
    class_names = ["Car", "Pedestrian", "Cyclist"]
    rows = summarize_results(bench, class_names)
    docs = Path(args.docs_dir)
    table = write_report(bench, rows, class_names, docs / f"results_{args.preset}.md",
                         docs / f"results_{args.preset}.png", time.time() - t_start, log)
    print(table)
    log(f"total wall time {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
