"""Command line of the benchmark (``tools/benchmark_kd.py``).

    python tools/benchmark_kd.py --preset cpu --retrain-teachers    # train + export the zoo teachers (once)
    python tools/benchmark_kd.py --preset cpu --tune --family pointpillar   # the sweep, on the tuning split
    python tools/benchmark_kd.py --preset cpu --family pointpillar  # the final runs (val), one family at a time
    python tools/benchmark_kd.py --preset main                      # README main job

Every invocation is resumable (finished runs and results of the same config are reused) and rewrites the report
from every result present, so families run in separate invocations merge into one table.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from .plan import REPO_ROOT, Benchmark
from .presets import PRESETS
from .report import (collect_all_cpu_kinds, collect_by_cpu_kind, final_markdown, plot, results_json,
                     tuning_markdown)
from .runner import Runner


def eval_self_check(log):
    """The KITTI metric on ground truth as detections (AP 100) and on seeded noisy detections."""
    from ...datasets.kitti.kitti_object_eval_python.eval import evaluate_self_check

    res = evaluate_self_check()
    for name in ("perfect", "noisy"):
        result_dict = res[name][1]
        vals = {c: result_dict.get(f"{c}_3d/moderate_R40") for c in ("Car", "Pedestrian", "Cyclist")}
        log(f"KITTI metric self-check, {name} detections: 3D moderate AP R40 "
            + ", ".join(f"{c} {v:.2f}" for c, v in vals.items()))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--family", nargs="*", default=None, help="only these families (default: all)")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="only these methods of each family (e.g. none: the student-alone runs, which need no "
                             "teacher); the report still covers every result present")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="only these of the preset's seeds (final runs; with --tune: of the tuning settings' "
                             "own seeds); the student-alone learning curve is evaluated for the first seed only")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="--tune only: only the tuning settings with these labels ('' or 'default' for a "
                             "method's own)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tune", action="store_true", help="run the tuning sweep, evaluated on the tune split")
    mode.add_argument("--retrain-teachers", dest="retrain_teachers", action="store_true",
                      help="train the zoo teachers and their 1.5x-epochs runs, export them to model_zoo/")
    parser.add_argument("--work_dir", default=None, help="default: output/benchmark_kd/<preset>")
    parser.add_argument("--data_dir", default=None, help="default: data/synthetic_kitti_<data name>")
    parser.add_argument("--results_dir", default=None,
                        help="where the result files go (default: docs/benchmark_runs/<preset> for a preset that "
                             "keeps its results in the repository, else <work_dir>/results)")
    parser.add_argument("--zoo_dir", default=str(REPO_ROOT / "model_zoo"))
    parser.add_argument("--fp16_zoo", action="store_true", help="export zoo weights in fp16")
    parser.add_argument("--jobs", type=int, default=None, help="training runs in parallel (default: preset)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--cpu_kind", default="auto", choices=["auto", "fp32"],
                        help="fp32: run, hash and report as on a CPU without native bf16 (USE_AMP 'auto' trains in "
                             "float32) even where this CPU has it, so the runs pair with that kind's; auto: this "
                             "CPU's kind")
    parser.add_argument("--docs_dir", default=str(REPO_ROOT / "docs"))
    parser.add_argument("--report_only", action="store_true",
                        help="train and evaluate nothing: rewrite the report from the results present")
    return parser.parse_args(argv)


def apply_cpu_kind(kind):
    """'fp32': this process and every training / evaluation subprocess (they inherit the environment) take this
    CPU for one without native bf16 (``PCDET_CPU_BF16=off``): the run hashes, the precision and the report's kind
    are those of that kind. 'auto': this CPU's own kind."""
    from ...utils.common_utils import CPU_BF16_ENV

    if kind == "fp32":
        os.environ[CPU_BF16_ENV] = "off"
    elif kind != "auto":
        raise ValueError(f"--cpu_kind: expected 'auto' or 'fp32', got {kind!r}")


def default_data_dir(preset_name, preset):
    """The cpu and main presets share the zoo's dataset (data/synthetic_kitti_cpu)."""
    from .presets import CPU_DATA

    name = "cpu" if preset["data"] == CPU_DATA else preset_name
    return REPO_ROOT / "data" / f"synthetic_kitti_{name}"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preset = PRESETS[args.preset]
    mode = "tune" if args.tune else "teachers" if args.retrain_teachers else "final"
    if mode == "teachers" and not any(str(f.get("teacher", "")).startswith("zoo:")
                                      for f in preset["families"].values()):
        raise SystemExit(f"--retrain-teachers: preset {args.preset} has no zoo teachers (its teachers are trained "
                         f"by the preset itself)")
    apply_cpu_kind(args.cpu_kind)
    work_dir = Path(args.work_dir or REPO_ROOT / "output" / "benchmark_kd" / args.preset)
    data_dir = Path(args.data_dir or default_data_dir(args.preset, preset))
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    manifest = Path(args.zoo_dir) / "manifest.json"
    results_dir = Path(args.results_dir) if args.results_dir else (
        REPO_ROOT / "docs" / "benchmark_runs" / args.preset if preset.get("results_in_repo") else work_dir / "results")
    t_start = time.time()
    with open(work_dir / "benchmark.log", "a") as log_file:
        def log(msg):
            line = f"[{time.strftime('%H:%M:%S')} +{(time.time() - t_start) / 60:5.1f} min] {msg}"
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

        bench = Benchmark(args.preset, preset, work_dir, data_dir, mode=mode, families=args.family,
                          zoo_manifest=manifest, results_dir=results_dir, methods=args.methods, device=device,
                          seeds=args.seeds, settings=args.settings)
        splits = ("tune",) if mode == "tune" else ("val",)
        runner = Runner(bench, device=device, threads=args.threads, jobs=args.jobs, log=log, eval_splits=splits)
        log(f"preset {args.preset}, mode {mode}, families {bench.families}: {len(bench.runs)} runs, "
            f"{runner.jobs} in parallel, evaluated on {'/'.join(splits)}")
        if not args.report_only:
            eval_self_check(log)
            runner.prepare_data()
            runner.execute()
        wall = time.time() - t_start
        log(f"this invocation: {wall / 60:.1f} min" + (" (report only)" if args.report_only else ""))
        docs = Path(args.docs_dir)
        docs.mkdir(parents=True, exist_ok=True)
        if mode == "teachers":
            runner.export_teachers(args.zoo_dir, manifest, fp16=args.fp16_zoo)
            return
        # the report covers every family of the preset that has results (earlier invocations included)
        full = Benchmark(args.preset, preset, work_dir, data_dir, mode=mode, zoo_manifest=manifest,
                         results_dir=results_dir, device=device)

        def for_kind(bf16):
            return Benchmark(args.preset, preset, work_dir, data_dir, mode=mode, zoo_manifest=manifest,
                             results_dir=results_dir, device=device, native_bf16=bf16)

        # a filtered invocation (--methods / --seeds / --settings) ran part of a family: its wall time is not the
        # family's
        filtered = bool(args.methods or args.seeds or args.settings)
        if filtered and not args.report_only:
            log("a filtered invocation (--methods / --seeds / --settings): its wall time is not recorded as the "
                "families'")
        walls = _record_wall(results_dir, work_dir, mode, bench.families,
                             None if args.report_only or filtered else wall)
        if mode == "tune":
            # the sweep shows each CPU kind's runs apart (never paired across kinds)
            records = collect_all_cpu_kinds(full, splits[0], for_kind)
            finals = {}

            def frozen_hash(kind):
                def get(method, family, width, seed):
                    if kind not in finals:   # the final (val) plan of that CPU kind: its configs are the frozen ones
                        finals[kind] = Benchmark(args.preset, preset, work_dir, data_dir, mode="final",
                                                 zoo_manifest=manifest, results_dir=results_dir, device=device,
                                                 native_bf16=kind)
                    b = finals[kind]
                    run = next((r for r in b.runs if r.family == family and r.method == method
                                and r.width == width and r.seed == seed), None)
                    return b.cfg_hash(run) if run is not None else None
                return get

            text = tuning_markdown(full, records, frozen_hash)
            (docs / f"results_{args.preset}_tuning.md").write_text(text)
            (docs / f"results_{args.preset}_tuning.json").write_text(json.dumps(
                {"split": "tune", "runs": records}, indent=1, default=str) + "\n")
        else:
            from ...model_zoo import load_manifest

            records, kinds = collect_by_cpu_kind(full, splits[0], for_kind)
            here = full.cpu_native_bf16() if device == "cpu" else None
            for family, kind in sorted(kinds.items()):
                if kind != here:
                    log(f"report: {family} shows the runs of a CPU {'with' if kind else 'without'} native bf16 "
                        f"(they include the student-alone runs, or outnumber this machine's kind's; the kinds are "
                        f"never paired)")

            teachers = [t for t in load_manifest(manifest)["teachers"]
                        if any(f"zoo:{t['name']}" == fam.get("teacher") for fam in preset["families"].values())]
            note = ("Wall time per invocation on the machine that ran it: " + "; ".join(
                f"{k}: {v / 60:.1f} min" for k, v in sorted(walls.items())) + ".") if walls else ""
            shown = [f for f in sorted(kinds) if kinds[f] is not None and any(r["family"] == f for r in records)]
            if shown:
                note += " Precision ('auto'): " + "; ".join(
                    f"{f}: " + ("bf16 autocast (a CPU with native bf16)" if kinds[f] else
                                "float32 (a CPU without native bf16)") for f in shown) + "."
            text = final_markdown(full, records, teachers, note)
            text += f"\n![gains and curves](results_{args.preset}.png)\n"
            (docs / f"results_{args.preset}.md").write_text(text)
            (docs / f"results_{args.preset}.json").write_text(json.dumps(results_json(records, teachers), indent=1)
                                                             + "\n")
            plot(full, records, teachers, docs / f"results_{args.preset}.png")
        print(text)
        log(f"wrote the report to {docs}; total wall time {(time.time() - t_start) / 60:.1f} min")


def _record_wall(results_dir, work_dir, mode, families, seconds):
    """Wall seconds per (mode, families) invocation, kept beside the results (results_dir/wall_times.json, the
    longest of each; an older work_dir/wall_times.json is read when that file is missing), so that a report
    rewritten on a fresh checkout keeps them; ``seconds`` None records nothing."""
    path = Path(results_dir) / "wall_times.json"
    old = Path(work_dir) / "wall_times.json"
    source = path if path.is_file() else old
    walls = json.loads(source.read_text()) if source.is_file() else {}
    key = f"{mode}:{'+'.join(families)}"
    if seconds is not None:   # None: a report-only invocation, which ran nothing
        walls[key] = max(seconds, walls.get(key, 0.0))   # the invocation that ran the most (reruns reuse results)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(walls, indent=1) + "\n")
    return {k.split(":", 1)[1]: v for k, v in walls.items() if k.startswith(mode + ":")}
