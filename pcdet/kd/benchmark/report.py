"""Reporting: per-run records, the paired-gain table with 95% t-intervals, the JSON of the results, the tuning
sweep table and the plot (paired gains; teacher and student-alone learning curves)."""
import json
import math
import statistics
from pathlib import Path

from .plan import recipe_key, run_cost
from .presets import METHOD_LABELS, METHOD_ORDER
from .stats import fmt_interval, paired_gains, t_interval

CLASSES = ["Car", "Pedestrian", "Cyclist"]


def moderate_map(metrics, class_names=CLASSES, kind="3d", suffix=""):
    """Mean over classes of moderate AP R40 (``suffix='_loose'``: the loose overlap set 0.5 / 0.25 / 0.25)."""
    vals = [metrics.get(f"{c}_{kind}/moderate_R40{suffix}") for c in class_names]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def collect(bench, split, class_names=CLASSES):
    """One record per run of ``bench`` with a result on ``split``: family, method, label, width, seed, map3d_mod,
    mapbev_mod, maploose_mod, per_class, params, flops, latency_ms, train_seconds (a run whose checkpoint was
    trained by the other split's invocation takes that result's), threads (of the evaluation process), device,
    curve ([[epoch, map3d]])."""
    records = []
    for run in bench.runs:
        res = bench.load_result(run, split)
        if res is None:
            continue
        m = res["metrics"]
        train_seconds = res.get("train_seconds") or 0.0
        if not train_seconds:   # the checkpoint was trained for the other split's invocation (same config)
            other = bench.load_result(run, "tune" if split == "val" else "val")
            train_seconds = (other or {}).get("train_seconds") or 0.0
        curve = []
        if run.curve and bench.preset.get("curve_every"):
            for epoch in bench.curve_epochs(run):
                res_e = bench.load_result(run, split, epoch)
                if res_e is not None:
                    curve.append([epoch, moderate_map(res_e["metrics"], class_names)])
            curve.append([run.epochs, moderate_map(m, class_names)])
        records.append(dict(
            family=run.family, method=run.method, label=run.label, width=run.width, seed=run.seed,
            recipe=list(recipe_key(run)), name=run.name, cfg_hash=res["cfg_hash"],
            zoo=run.zoo, map3d_mod=moderate_map(m, class_names), mapbev_mod=moderate_map(m, class_names, "bev"),
            maploose_mod=moderate_map(m, class_names, "3d", "_loose"),
            per_class={c: m.get(f"{c}_3d/moderate_R40", float("nan")) for c in class_names},
            params=res.get("params"), flops=res.get("flops"), latency_ms=res.get("latency_ms"),
            train_seconds=train_seconds, threads=res.get("threads"), epochs=run.epochs, curve=curve,
            device=res.get("device")))
    return records


def collect_by_cpu_kind(bench, split, bench_for_kind):
    """``collect`` with, per family, the runs of one CPU kind: with 'auto' precision a CPU with native bf16 trains
    in bf16 and one without in float32, and their run hashes differ (never paired). Each family shows the kind
    that has student-alone runs (the baseline of every paired gain) and more results, this machine's on a tie, so
    a report rewritten on the other kind of machine keeps the table.
    ``bench_for_kind(native_bf16)`` builds the same benchmark hashed for that kind. Returns (records,
    {family: native_bf16 of the runs shown})."""
    here = bench.cpu_native_bf16() if bench.device == "cpu" else None
    records = collect(bench, split)
    kinds = {family: here for family in bench.families}
    if here is None:
        return records, kinds
    other = collect(bench_for_kind(not here), split)

    def score(recs):
        return any(r["method"] == "none" for r in recs), len(recs)

    chosen = []
    for family in bench.families:
        mine = [r for r in records if r["family"] == family]
        theirs = [r for r in other if r["family"] == family]
        if score(theirs) > score(mine):
            chosen += theirs
            kinds[family] = not here
        else:
            chosen += mine
    return chosen, kinds


def collect_all_cpu_kinds(bench, split, bench_for_kind):
    """``collect`` over both CPU kinds (on a CPU device), each record tagged ``native_bf16`` (None off the CPU):
    the tuning report shows each kind's sweep apart, never pairing runs of different kinds."""
    here = bench.cpu_native_bf16() if bench.device == "cpu" else None
    records = [dict(r, native_bf16=here) for r in collect(bench, split)]
    if here is not None:
        # a run whose hash does not depend on the kind (no 'auto' precision) is listed once; a zoo teacher, the
        # same checkpoint for both kinds, heads each kind's table
        seen = {(r["name"], r["cfg_hash"]) for r in records if r["method"] != "teacher"}
        records += [dict(r, native_bf16=not here) for r in collect(bench_for_kind(not here), split)
                    if (r["name"], r["cfg_hash"]) not in seen]
    return records


def _by_seed(records, family, width, method, label=""):
    return {r["seed"]: r for r in records if r["family"] == family and r["width"] == width
            and r["method"] == method and r["label"] == label}


def gain_rows(records, family):
    """Per student width and method: mean mAP with its t-interval, paired gain over the student alone with its
    t-interval and per-seed gains, and the share of the teacher - student gap closed."""
    teacher = next((r for r in records if r["family"] == family and r["method"] == "teacher"), None)
    widths = sorted({r["width"] for r in records if r["family"] == family and r["method"] != "teacher"},
                    reverse=True)
    rows = []
    for width in widths:
        alone = _by_seed(records, family, width, "none")
        alone_map = {s: r["map3d_mod"] for s, r in alone.items()}
        for method in METHOD_ORDER[1:]:
            runs = _by_seed(records, family, width, method)
            if not runs:
                continue
            maps = {s: r["map3d_mod"] for s, r in runs.items()}
            bevs = [r["mapbev_mod"] for r in runs.values()]
            row = dict(family=family, width=width, method=method, seeds=sorted(maps), per_seed=maps,
                       map3d=t_interval(list(maps.values())), mapbev=t_interval(bevs),
                       per_class={c: statistics.fmean(r["per_class"][c] for r in runs.values()) for c in CLASSES},
                       any=next(iter(runs.values())))
            if method != "none":
                gains = paired_gains(maps, alone_map)
                row["gains"] = gains
                row["gain"] = t_interval([g for _, g in gains])
                if teacher is not None and alone_map:
                    gap = teacher["map3d_mod"] - statistics.fmean(alone_map.values())
                    row["gap_closed"] = row["gain"][0] / gap if abs(gap) > 1e-6 else float("nan")
            rows.append(row)
    return teacher, rows


def paired_rows(rows, base_method, keep):
    """For each row of ``gain_rows`` whose method passes ``keep`` (and is not ``base_method``): its paired
    difference to ``base_method`` (method - base of the same seed and width, over the seeds both have) with the
    t-interval. Rows without a shared seed are left out."""
    out = []
    for row in rows:
        if row["method"] == base_method or not keep(row["method"]):
            continue
        base = next((r for r in rows if r["method"] == base_method and r["width"] == row["width"]), None)
        if base is None:
            continue
        gains = paired_gains(row["per_seed"], base["per_seed"])
        if gains:
            out.append(dict(width=row["width"], method=row["method"], against=base_method, gains=gains,
                            gain=t_interval([g for _, g in gains])))
    return out


def over_init_rows(rows):
    """For each method that adds distillation to teacher-guided init (``<x>_inherit``): its paired gain over the
    init alone (method - 'inherit' of the same seed and width) with the t-interval, from ``gain_rows``' rows."""
    return paired_rows(rows, "inherit", lambda m: m.endswith("_inherit"))


BASELINES = ("fitnet", "logit_kd")


def over_baseline_rows(rows):
    """Every method other than the student alone and the baselines, paired by seed against each baseline (FitNet,
    logit KD) that shares seeds with it: the issue's 'at or above FitNet and logit KD', seed by seed."""
    return [o for b in BASELINES for o in paired_rows(rows, b, lambda m: m not in ("none",) + BASELINES)]


def _seed_gains(gains):
    """'s0: +1.23 s1: -0.40' from [(seed, gain), ...]."""
    return " ".join(f"s{s}: {g:+.2f}" for s, g in gains)


def _num(v, digits=2):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(mean, low, high):
    return _num(mean) if math.isnan(low) else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def training_time_note(bench, records, family):
    """One sentence on what the student runs of ``family`` shown cost to train (their ``train_seconds``) and what
    the family's whole plan takes at those rates, or '' without timed student runs.

    A planned run is estimated by the mean time of its method's timed runs; a method without one, by the plan's
    relative cost (``plan.run_cost``) at the mean rate of the timed runs."""
    students = [r for r in records if r["family"] == family and r["method"] != "teacher"]
    timed = [r for r in students if r.get("train_seconds")]
    if not timed:
        return ""
    minutes = [r["train_seconds"] / 60 for r in timed]
    by_method = {}
    for r in timed:
        by_method.setdefault(r["method"], []).append(r["train_seconds"] / 60)
    rate = statistics.mean(r["train_seconds"] / 60 / run_cost(r["method"], r["epochs"]) for r in timed)
    planned = [run for run in bench.runs if run.family == family and run.method != "teacher"]
    total = sum(statistics.mean(by_method[run.method]) if run.method in by_method else rate * run.cost
                for run in planned)
    jobs = max(1, int(bench.preset.get("jobs", 1)))
    threads = {r.get("threads") for r in timed}
    on_cpu = all(r.get("device") == "cpu" for r in timed)
    return (f"Training time of {len(timed)} of the {len(students)} student runs shown (those with a recorded time): "
            f"{statistics.mean(minutes):.0f} min per run on average ({min(minutes):.0f}-{max(minutes):.0f})"
            + (f", {threads.pop()} thread(s) per run" if on_cpu and len(threads) == 1 and None not in threads else "")
            + f", measured with other runs beside them. At these rates (per method; scaled by the plan's relative "
            f"cost for a method without a timed run) the family's {len(planned)} planned student runs take about "
            f"{total / jobs / 60:.1f} h of training with {jobs} in parallel.")


def final_markdown(bench, records, teachers, wall_note=""):
    """The markdown of the final table (val split)."""
    p = bench.preset
    d = p["data"]
    lines = [f"# KD benchmark, preset `{bench.preset_name}` (val split)", ""]
    if p.get("note"):
        lines += [p["note"], ""]
    lines += [f"Synthetic KITTI-format dataset, generator seed {d['seed']}: {d['num_frames']} frames = "
             f"{int(round(d['val_fraction'] * d['num_frames']))} val, "
             f"{int(round(d.get('tune_fraction', 0) * d['num_frames']))} tune, the rest train. Students train on "
             f"train only" + ("" if p.get("note") else f", every choice was made on the tuning split (docs/results_"
                                                        f"{bench.preset_name}_tuning.md), and val is used for this "
                                                        f"table alone") + f". Seeds {p['seeds']}, paired: a seed fixes the student's "
             f"initialisation and data order for every method. Batch {p['batch_size']}. {wall_note}", "",
             "mAP = mean over Car / Pedestrian / Cyclist of moderate AP R40 at the strict overlaps (0.7 / 0.5 / 0.5), "
             "in percent. Intervals are 95% Student-t intervals over seeds; the gain is the paired difference "
             "method - student alone of the same seed, averaged over seeds. Gap closed = mean gain / (teacher - "
             "mean student alone).", ""]
    for family in bench.families:
        teacher, rows = gain_rows(records, family)
        if not rows and teacher is None:
            continue
        lines += [f"## {family}", ""]
        note = bench.preset["families"].get(family, {}).get("note")
        if note:
            lines += [note, ""]
        cost = training_time_note(bench, records, family)
        if cost:
            lines += [cost, ""]
        if teacher is not None:
            t = next((e for e in teachers if e.get("family") == family), None)
            lines.append(f"Teacher (width {teacher['width']}{', zoo ' + teacher['zoo'] if teacher['zoo'] else ''}): "
                         f"3D mAP {teacher['map3d_mod']:.2f}, BEV mAP {teacher['mapbev_mod']:.2f}, params "
                         f"{teacher['params'] / 1e6:.3f}M, {teacher['flops'] / 1e9:.2f} GFLOPs"
                         + (f"; its {t['longer']['epochs']}-epoch run reaches {t['longer']['map3d_mod']:.2f}" if t
                            and (t.get("longer") or {}).get("map3d_mod") is not None else "") + ".")
            lines.append("")
        lines += ["| student width | method | epochs | params | GFLOPs | 3D mAP mod [95% CI] | BEV mAP mod | "
                  + " | ".join(f"{c} 3D" for c in CLASSES) + " | paired gain [95% CI] | per-seed gains | gap closed |",
                  "|" + "---|" * (10 + len(CLASSES))]
        for row in rows:
            a = row["any"]
            gains = _seed_gains(row.get("gains", [])) or \
                " ".join(f"s{s}: {v:.2f}" for s, v in sorted(row["per_seed"].items()))
            gap = row.get("gap_closed")
            lines.append(f"| {row['width']} | {METHOD_LABELS[row['method']]} | {a['epochs']} | "
                         f"{a['params'] / 1e6:.3f}M | {a['flops'] / 1e9:.2f} | {_ci(*row['map3d'])} | "
                         f"{_num(row['mapbev'][0])} | " + " | ".join(_num(row["per_class"][c]) for c in CLASSES)
                         + f" | {fmt_interval(*row['gain']) if 'gain' in row else '-'} | {gains} | "
                         + (f"{100 * gap:.0f}%" if gap is not None and not math.isnan(gap) else "-") + " |")
        over = over_init_rows(rows)
        if over:
            sd = {m: statistics.stdev(r["per_seed"].values()) for r in rows for m in [r["method"]]
                  if m in ("none", "inherit") and len(r["per_seed"]) > 1}
            lines += ["", "Distillation on top of teacher-guided init, paired by seed against the init alone"
                      + (f" (its seeds spread less: standard deviation {sd['inherit']:.2f} against "
                         f"{sd['none']:.2f} for the students alone)" if {"none", "inherit"} <= set(sd) else "")
                      + ":", "", "| student width | method | seeds | paired gain over init [95% CI] | per-seed gains |",
                      "|---|---|---|---|---|"]
            for o in over:
                lines.append(f"| {o['width']} | {METHOD_LABELS[o['method']]} | {len(o['gains'])} | "
                             f"{fmt_interval(*o['gain'])} | "
                             + _seed_gains(o["gains"]) + " |")
        against = over_baseline_rows(rows)
        if against:
            lines += ["", "Against the baselines, paired by seed (method - baseline of the same seed, over the seeds "
                      "both have):", "", "| student width | method | against | seeds | paired difference [95% CI] | "
                      "per-seed differences |", "|---|---|---|---|---|---|"]
            for o in against:
                lines.append(f"| {o['width']} | {METHOD_LABELS[o['method']]} | {METHOD_LABELS[o['against']]} | "
                             f"{len(o['gains'])} | {fmt_interval(*o['gain'])} | "
                             + _seed_gains(o["gains"]) + " |")
        curve = next((r["curve"] for r in records if r["family"] == family and r["method"] == "none" and r["curve"]),
                     None)
        if curve:
            lines += ["", "Student-alone learning curve (seed %d, val 3D mAP by epoch): " % min(
                r["seed"] for r in records if r["family"] == family and r["method"] == "none")
                + ", ".join(f"{e}: {v:.2f}" for e, v in curve)]
        lines.append("")
    if teachers:
        lines += ["## Teachers (model_zoo/)", "", "| teacher | epochs | val 3D mAP by epoch | 1.5x epochs: val 3D mAP |",
                  "|---|---|---|---|"]
        for t in teachers:
            lines.append(f"| {t['name']} | {t['curve'][-1][0]} | "
                         + ", ".join(f"{e}: {v:.1f}" for e, v in t["curve"])
                         + f" | {t['longer']['epochs']}: {_num(t['longer']['map3d_mod'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def results_json(records, teachers):
    """The documented JSON: {"runs": [{family, method, width, seed, map3d_mod, mapbev_mod, ...}], "teachers": [...]}
    (val, strict IoU, percent)."""
    runs = [{"family": r["family"], "method": r["method"], "width": r["width"], "seed": r["seed"],
             "map3d_mod": round(r["map3d_mod"], 4), "mapbev_mod": round(r["mapbev_mod"], 4),
             "per_class_3d_mod": {c: round(v, 4) for c, v in r["per_class"].items()},
             "epochs": r["epochs"], "train_seconds": round(r["train_seconds"] or 0.0, 1)}
            for r in records if not r["label"]]
    teach = [{"family": t["family"], "width": t["width"], "name": t["name"], "curve": t["curve"],
              "longer": t["longer"]} for t in teachers]
    return {"split": "val", "runs": runs, "teachers": teach}


def _kind_label(native_bf16):
    if native_bf16 is None:
        return ""
    return ("bf16 autocast runs (CPUs with native bf16)" if native_bf16 else
            "float32 runs (CPUs without native bf16)")


def tuning_rows(records, family):
    """One row per (width, method, label) of ``family`` (records of one CPU kind): its seeds, per-seed 3D mAP,
    means, and the paired difference per seed from its baseline: a student-alone recipe that changes OPTIMIZATION
    keys from the student alone of the same schedule without them, one that changes only the schedule from the
    preset's own recipe (label ''), a distilled run from the student alone trained with the same recipe."""
    fam = [r for r in records if r["family"] == family]
    groups = {}
    for r in fam:
        groups.setdefault((r["width"], r["method"], r["label"]), []).append(r)
    rows = []
    for (width, method, label), recs in sorted(groups.items(), key=lambda kv: (
            -kv[0][0] if kv[0][1] != "teacher" else -1e9, METHOD_ORDER.index(kv[0][1]), kv[0][2])):
        maps = {r["seed"]: r["map3d_mod"] for r in recs}
        diffs = []
        if method != "teacher" and not (method == "none" and label == ""):
            for r in recs:
                if method != "none":
                    want = r.get("recipe")                      # the student alone of the same recipe
                elif r.get("recipe") and r["recipe"][1] != "{}":
                    want = [r["recipe"][0], "{}"]               # OPTIMIZATION keys: the same schedule without them
                else:
                    want = None                                 # a schedule: the preset's own recipe (label '')
                base = [b for b in fam if b["method"] == "none" and b["width"] == width and b["seed"] == r["seed"]
                        and (b["label"] == "" if want is None else (b.get("recipe") == want and b is not r))]
                if base:
                    diffs.append((r["seed"], r["map3d_mod"] - base[0]["map3d_mod"]))
        rows.append(dict(width=width, method=method, label=label, epochs=recs[0]["epochs"],
                         per_seed=dict(sorted(maps.items())),
                         map3d=t_interval(list(maps.values())),
                         mapbev=statistics.fmean(r["mapbev_mod"] for r in recs), diffs=sorted(diffs),
                         diff=t_interval([d for _, d in diffs]) if diffs else None,
                         curve=next((r["curve"] for r in recs if r.get("curve")), None),
                         hashes={r["seed"]: r.get("cfg_hash") for r in recs}))
    return rows


def decide(rule, rows, width):
    """Apply a tuning decision rule (``preset['decisions'][method][family]``) to the ``tuning_rows`` of one
    family, CPU kind and student ``width``. Each candidate is ranked by its mean tune mAP over the rule's seeds.
    Returns {"means": {label: mean or None}, "missing": [labels without a run of every rule seed], "chosen": the
    label, or None while a candidate (or an ``also_beat`` row) is missing, "margins": {(method, label): best mean
    - that row's mean}, "best"}: the best candidate is chosen when it beats ``keep`` (and each ``also_beat``) by at
    least ``margin``, else ``keep``; with ``keep`` None the best is chosen."""
    seeds = rule.get("seeds", [0])

    def mean_of(method, label):
        row = next((r for r in rows if r["method"] == method and r["label"] == label and r["width"] == width), None)
        if row is None or any(s not in row["per_seed"] for s in seeds):
            return None
        return statistics.fmean(row["per_seed"][s] for s in seeds)

    method = rule["method"]
    means = {label: mean_of(method, label) for label in rule["candidates"]}
    missing = [label for label, m in means.items() if m is None]
    others = {(m, label): mean_of(m, label) for m, label in rule.get("also_beat", [])}
    missing += [f"{m}/{label}" for (m, label), v in others.items() if v is None]
    out = dict(means=means, missing=missing, chosen=None, margins={}, best=None)
    if missing:
        return out
    best = max(rule["candidates"], key=lambda label: (means[label], label == rule.get("keep")))
    keep = rule.get("keep")
    margin = float(rule.get("margin", 0.0))
    refs = ({(method, keep): means[keep]} if keep is not None else {}) | others
    out["best"] = best
    out["margins"] = {k: means[best] - v for k, v in refs.items()}
    wins = best != keep and all(d >= margin for d in out["margins"].values())
    out["chosen"] = best if keep is None or wins else keep
    return out


def _lab(label):
    """A tuning label as the decision lines print it ('' is the preset's own setting)."""
    return label if label else "''"


def decision_lines(bench, rows, family, frozen_hash=None):
    """Markdown lines applying each of the preset's decision rules for ``family`` to ``rows`` (one CPU kind):
    the candidates' means, the margins and the choice, or what is still missing; with ``frozen_hash(method,
    family, width, seed)`` (the hash of the final config's run; None when the final plan has no such run), which
    candidate the val config is."""
    lines = []
    for method, per_family in bench.preset.get("decisions", {}).items():
        rule = per_family.get(family)
        if rule is None:
            continue
        # a rule without seeds ranks on the preset's first seed
        rule = dict(rule, method=method, seeds=rule.get("seeds", bench.preset["seeds"][:1]))
        widths = sorted({r["width"] for r in rows if r["method"] == method and r["label"] in rule["candidates"]},
                        reverse=True)
        for width in widths:
            d = decide(rule, rows, width)
            if all(m is None for m in d["means"].values()):
                continue    # no candidate has run on the rule's seeds in this CPU kind
            seeds = rule["seeds"]
            means = ", ".join(f"{_lab(label)} " + (f"{m:.2f}" if m is not None else "not run")
                              for label, m in d["means"].items())
            keep = rule.get("keep")
            margin = float(rule.get("margin", 0.0))
            how = ("the highest wins" if keep is None else
                   f"the highest replaces {_lab(keep)} if it beats it" +
                   (" and " + ", ".join(f"{METHOD_LABELS[m]} {_lab(lab)}" for m, lab in rule.get("also_beat", []))
                    if rule.get("also_beat") else "") + f" by at least {margin:.1f} mAP")
            text = (f"- {METHOD_LABELS[method]} (width {width}), mean over seeds {seeds}: {means}. Rule: {how}"
                    + (f" ({rule['note']})" if rule.get("note") else "") + ". ")
            if d["chosen"] is None:
                text += f"Pending: {', '.join(_lab(x) for x in d['missing'])} not run on these seeds."
            else:
                diffs = ", ".join(f"{_lab(d['best'])} - {METHOD_LABELS[m] + ' ' if m != method else ''}"
                                  f"{_lab(lab)} {v:+.2f}" for (m, lab), v in d["margins"].items())
                text += f"Chosen: **{_lab(d['chosen'])}**" + (f" ({diffs})" if diffs else "") + "."
            if frozen_hash is not None:
                row = {r["label"]: r for r in rows if r["method"] == method and r["width"] == width}
                seed = seeds[0]
                want = frozen_hash(method, family, width, seed)
                same = [label for label in rule["candidates"]
                        if label in row and row[label]["hashes"].get(seed) == want]
                if same:
                    text += f" The val config is that of {_lab(same[0])}" + (
                        "." if d["chosen"] is None or same[0] == d["chosen"] else
                        ": it is not the rule's choice, the preset must be updated.")
                elif want is not None:
                    text += " The val config is that of none of these candidates (of those run on this CPU kind)."
            lines.append(text)
    return lines


def tuning_markdown(bench, records, frozen_hash=None):
    """The sweep on the tuning split, per family and CPU kind: each setting's seeds, per-seed and mean mAP, and its
    paired difference from its baseline (``tuning_rows``) with a 95% t-interval where it has several seeds; then
    the preset's decision rules applied to them (``decision_lines``; ``frozen_hash(native_bf16)`` gives, per CPU
    kind, the ``frozen_hash`` callable that says which candidate the val config is)."""
    lines = [f"# KD benchmark, preset `{bench.preset_name}`: tuning sweep (tune split)", "",
             f"Each setting is trained on train and evaluated on the tuning split, on the seeds its row lists; the "
             f"settings frozen into the preset "
             f"(`kd_overrides`, the student recipe) are chosen from these tables. The difference is paired by seed: "
             f"a student-alone recipe that changes OPTIMIZATION keys against the student alone of the same schedule "
             f"without them, one that changes only the schedule against the preset's own recipe ('-'), a distilled "
             f"run against the student alone trained with the same recipe. Runs of the two CPU kinds (bf16 "
             f"autocast where the CPU has native bf16, float32 elsewhere) are different runs and are never "
             f"paired.", ""]
    for family in bench.families:
        kinds = []
        for r in records:
            if r["family"] == family and r.get("native_bf16") not in kinds:
                kinds.append(r.get("native_bf16"))
        for kind in sorted(kinds, key=lambda k: (k is None, not k)):
            recs = [r for r in records if r["family"] == family and r.get("native_bf16") == kind]
            if not any(r["method"] != "teacher" for r in recs):
                continue
            title = f"## {family}" + (f": {_kind_label(kind)}" if kind is not None else "")
            lines += [title, "", "| width | method | setting | overrides | epochs | seeds | 3D mAP mod (per seed) | "
                      "3D mAP mod mean | BEV mAP mod mean | paired difference [95% CI] | per-seed differences |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            rows = tuning_rows(recs, family)
            for row in rows:
                run = next((x for x in bench.runs if x.family == family and x.method == row["method"]
                            and x.label == row["label"] and x.width == row["width"]), None)
                ov = run.overrides if run is not None else {}
                baseline = row["method"] == "teacher" or (row["method"] == "none" and not row["label"])
                diff = fmt_interval(*row["diff"]) if row["diff"] is not None else (
                    "-" if baseline else "its baseline recipe has no run of these seeds yet" if row["method"] == "none"
                    else "no student alone of this recipe and seed yet")
                per = " ".join(f"s{s}: {v:.2f}" for s, v in row["per_seed"].items())
                dper = " ".join(f"s{s}: {d:+.2f}" for s, d in row["diffs"]) or "-"
                lines.append(f"| {row['width']} | {METHOD_LABELS[row['method']]} | {row['label'] or '-'} | "
                             f"`{json.dumps(ov) if ov else '-'}` | {row['epochs']} | {len(row['per_seed'])} | {per} | "
                             f"{_ci(*row['map3d'])} | {row['mapbev']:.2f} | {diff} | {dper} |")
            decided = decision_lines(bench, rows, family, frozen_hash(kind) if frozen_hash is not None else None)
            if decided:
                lines += ["", "Decisions (the preset's rules, each written down with its sweep before its runs):", ""]
                lines += decided
            for row in rows:
                if row["method"] == "none" and row["curve"]:
                    name = "the preset's recipe" if not row["label"] else f"recipe {row['label']}"
                    lines += ["", f"Student-alone learning curve on the tuning split ({name}, seed "
                              f"{bench.preset['seeds'][0]}): " + ", ".join(f"{e}: {v:.2f}" for e, v in row["curve"])]
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(bench, records, teachers, png_path):
    """Two panels: paired gains with 95% intervals per family and method; teacher / student-alone curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs, labels = 0, []
    for family in bench.families:
        _, rows = gain_rows(records, family)
        for row in rows:
            if "gain" not in row:
                continue
            mean, low, high = row["gain"]
            err = None if math.isnan(low) else [[mean - low], [high - mean]]
            ax1.errorbar([xs], [mean], yerr=err, marker="o", capsize=4, color="tab:blue")
            for _, g in row["gains"]:
                ax1.plot([xs + 0.15], [g], ".", color="gray")
            labels.append(f"{family}\n{METHOD_LABELS[row['method']]} w{row['width']}")
            xs += 1
    ax1.axhline(0.0, color="k", lw=0.8)
    ax1.set_xticks(range(len(labels)))
    ax1.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax1.set_ylabel("paired gain over student alone (3D mAP mod)")
    ax1.set_title("gains, 95% t-intervals (grey: per seed)")
    for t in teachers:
        e, v = zip(*t["curve"])
        ax2.plot(e, v, "-o", label=f"teacher {t['name']}")
        if t["longer"].get("map3d_mod") is not None:
            ax2.plot([t["longer"]["epochs"]], [t["longer"]["map3d_mod"]], "*", markersize=10,
                     label=f"{t['name']}, 1.5x schedule")
    for r in records:
        if r["method"] == "none" and r["curve"]:
            e, v = zip(*r["curve"])
            ax2.plot(e, v, "--s", label=f"{r['family']} student alone w{r['width']} (seed {r['seed']})")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val 3D mAP mod")
    ax2.set_title("learning curves (each point: the run's checkpoint of that epoch)")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def zoo_readme(manifest):
    """model_zoo/README.md from the manifest: what the files are, the tag, how to rebuild, one row per teacher."""
    lines = ["# Model zoo: the shipped teachers", "",
             "Teachers of the `cpu` KD benchmark (docs/KD.md, \"Results\"), trained here by this project's own code "
             "on the synthetic KITTI-format set that `pcdet.datasets.synthetic.generate` writes (seed 0, 1500 "
             "frames: 800 train, 200 tune, 500 val); trained on train only. Each `.pth` is an OpenPCDet checkpoint "
             "(`model_state`, `epoch`; no optimizer state) with a provenance tag under the key `zoo`: the generator "
             "version, the dataset's signature (seed, frame counts, sha256 of each ImageSets list) and the sha256 "
             "of the training config. Loading one as a teacher or evaluating it with other data or another config "
             "is refused with a message naming what differs (`pcdet/model_zoo.py`).", "",
             "Use: `KD.TEACHER.CFG_FILE: cfgs/zoo/<family>_teacher.yaml` and `KD.TEACHER.CKPT: "
             "../model_zoo/<name>.pth` (or `--teacher_ckpt`). Rebuild everything: "
             "`python tools/benchmark_kd.py --preset cpu --retrain-teachers` (trains each config of "
             "`tools/cfgs/zoo/` and the same config at 1.5x the epochs, evaluates the val curve every 2 epochs, "
             "exports the weights and rewrites `manifest.json` and this file).", "",
             "Val = the 500 val frames, moderate AP R40 at the strict overlaps (0.7 / 0.5 / 0.5), percent. The "
             "convergence check compares schedules: the same config trained for 1.5x the epochs.", "",
             "| name | family | width | config | epochs | val 3D mAP | Car / Ped / Cyc | 1.5x epochs: val 3D mAP | "
             "val curve (epoch: mAP) | train min | size | sha256 |", "|" + "---|" * 12]
    for t in manifest.get("teachers", []):
        pc = t.get("val_per_class_3d_mod", {})
        longer = t.get("longer") or {}
        lm = longer.get("map3d_mod")
        lines.append(
            f"| {t['name']} | {t['family']} | {t.get('width')} | `{t['cfg_file']}` | {t['curve'][-1][0]} | "
            f"{t['curve'][-1][1]:.2f} | " + " / ".join(f"{pc[c]:.1f}" for c in CLASSES if c in pc) + " | "
            + (f"{longer.get('epochs')}: {lm:.2f} ({lm - t['curve'][-1][1]:+.2f})" if lm is not None
               else f"{longer.get('epochs')}: not run yet")
            + " | " + ", ".join(f"{e}: {v:.1f}" for e, v in t["curve"]) + f" | {t.get('train_minutes', 'n/a')} | "
            f"{t.get('size_bytes', 0) / 1e6:.1f} MB | `{str(t.get('sha256', ''))[:12]}` |")
    return "\n".join(lines) + "\n"
