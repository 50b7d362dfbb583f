"""KD training step (teacher forward included) vs student-only step, side by side in one run.

    python tools/benchmarks/bench_kd_step.py [--iters 3] [--batch_size 2] [--device cpu|cuda]

For itKD CenterPoint (tools/cfgs/kd/itkd_centerpoint.yaml) and PointDistiller PointPillars
(tools/cfgs/kd/pointdistiller_pointpillar.yaml) on synthetic-generator frames (no files needed): builds the
student and the distiller (teacher weights: a fixed random checkpoint, the cost does not depend on them), times
forward + backward + optimizer step, and prints the ratio and peak memory (CUDA: max allocated; CPU: peak RSS).
"""
import argparse
import contextlib
import copy
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets.dataset import DatasetTemplate
from pcdet.kd import build_distiller
from pcdet.models import build_network, load_data_to_device
from pcdet.utils.common_utils import amp_dtype, to_channels_last

TOOLS = Path(__file__).resolve().parents[1]
CASES = (("itKD CenterPoint", "cfgs/kd/itkd_centerpoint.yaml"),
         ("PointDistiller PointPillars", "cfgs/kd/pointdistiller_pointpillar.yaml"),
         ("PointDistiller PP, PyTorch loss", "cfgs/kd/pointdistiller_pointpillar.yaml"))
# overrides of the PointDistiller heads of a case: the fused graph loss (IMPLEMENTATION auto) against the PyTorch
# path, side by side
HEAD_OVERRIDES = {"PointDistiller PP, PyTorch loss": {"IMPLEMENTATION": "reference"}}
# --all_methods adds every other shipped KD method and detector pairing (scripts/gpu_check.sh uses it)
MORE_CASES = (("FitNet PointPillars", "cfgs/kd/fitnet_pointpillar.yaml"),
              ("Logit KD PointPillars", "cfgs/kd/logit_kd_pointpillar.yaml"),
              ("FitNet CenterPoint", "cfgs/kd/fitnet_centerpoint.yaml"),
              ("Logit KD CenterPoint", "cfgs/kd/logit_kd_centerpoint.yaml"),
              ("PointDistiller SECOND", "cfgs/kd/pointdistiller_second.yaml"),
              ("PointDistiller CenterPoint", "cfgs/kd/pointdistiller_centerpoint.yaml"),
              ("itKD CenterPoint-pillar", "cfgs/kd/itkd_centerpoint_pillar.yaml"))
ALL_CASES = CASES + MORE_CASES


class SyntheticFrames(DatasetTemplate):
    """Frames simulated on the fly by pcdet.datasets.synthetic (same sensor model as the written dataset)."""

    def __init__(self, dataset_cfg, class_names, num_frames, seed=0):
        cfg = copy.deepcopy(dataset_cfg)
        cfg.pop("DATA_AUGMENTOR", None)  # gt_sampling needs a database on disk; the step cost is what we measure
        super().__init__(dataset_cfg=cfg, class_names=class_names, training=True, root_path=tempfile.gettempdir())
        self.num_frames, self.seed = num_frames, seed

    def __len__(self):
        return self.num_frames

    def __getitem__(self, index):
        from pcdet.datasets.synthetic.generate import generate_frame
        from pcdet.datasets.synthetic.scene import get_preset
        frame = generate_frame(self.seed, "training", index, get_preset("default"))
        objs = [o for o in frame["scene"].objects if o.labelled and o.cls in self.class_names]
        boxes = np.array([o.box for o in objs], dtype=np.float32).reshape(-1, 7)
        return self.prepare_data({"frame_id": f"{index:06d}", "points": frame["points"], "gt_boxes": boxes,
                                  "gt_names": np.array([o.cls for o in objs])})


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _autocast(device, amp):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _step(model, opt, batch, device, amp=None):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with _autocast(device, amp):
        ret, _, _ = model(dict(batch))
    opt.zero_grad(set_to_none=True)
    ret["loss"].backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def _teacher_forward(distiller, batch, device, amp=None):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with _autocast(device, amp):
        distiller.teacher.record(distiller.split_batch(dict(batch))[0], distiller.teacher_taps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_interleaved(student, distiller, batches, iters, device, amp=None):
    """Median seconds of student-only step, KD step and the teacher's truncated forward alone, alternated on the
    same batches so load drift cancels."""
    opt_s, opt_kd = _optimizer(student), _optimizer(distiller)
    distiller.train()
    t_s, t_kd, t_t = [], [], []
    for i in range(iters + 1):  # the first round warms up allocators and lazy kernels
        batch = batches[i % len(batches)]
        a = _step(student, opt_s, batch, device, amp)
        b = _step(distiller, opt_kd, batch, device, amp)
        c = _teacher_forward(distiller, batch, device, amp)
        if i > 0:
            t_s.append(a)
            t_kd.append(b)
            t_t.append(c)
    return float(np.median(t_s)), float(np.median(t_kd)), float(np.median(t_t))


# (label, teacher precision, step autocast): the student-only step is always the plain fp32 step of its mode
MODES = {
    "fp32": ("fp32 teacher, fp32 student", "fp32", None),
    "bf16-teacher": ("bf16 teacher, fp32 student", "bf16", None),
    "amp": ("AMP bf16 student and teacher", None, "bf16"),
}


def run_case(name, cfg_rel, mode, args, device, logger, tmp):
    """One (case, mode) in this process: returns a dict of times (s) and peak memory (MiB)."""
    label, precision, amp_name = MODES[mode]
    amp = None if amp_name is None else amp_dtype(amp_name, "bench_kd_step")
    if device.type == "cuda" and amp == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        amp = torch.float16
    cfg_path = TOOLS / cfg_rel
    cfg = cfg_from_yaml_file(cfg_path)
    for head in cfg.KD.HEADS:
        if head.NAME == "PointDistiller":
            head.update(HEAD_OVERRIDES.get(name, {}))
    if precision is not None:
        cfg.KD.TEACHER.PRECISION = precision
    cfg.KD.TEACHER.CHANNELS_LAST = mode != "fp32"
    dataset = SyntheticFrames(cfg.DATA_CONFIG, list(cfg.CLASS_NAMES), num_frames=args.batch_size * 2)
    batches = [load_data_to_device(dataset.collate_batch([dataset[j] for j in range(k, k + args.batch_size)]),
                                   device) for k in range(0, len(dataset), args.batch_size)]
    tcfg_path = TOOLS / cfg.KD.TEACHER.CFG_FILE
    tcfg = cfg_from_yaml_file(tcfg_path)
    torch.manual_seed(0)
    teacher_ckpt = Path(tmp) / f"{cfg_path.stem}_teacher.pth"
    torch.save({"model_state": build_network(tcfg.MODEL, len(tcfg.CLASS_NAMES), dataset).state_dict(), "epoch": 0},
               teacher_ckpt)
    student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset).to(device)
    if amp is not None:
        to_channels_last(student)
    # peak memory of each kind of step, student first (CPU peak RSS only grows)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _step(student.train(), _optimizer(student), batches[0], device, amp)
    mem_student = peak_memory_mb(device)
    # timings without the periodic diagnostics (extra backward passes every GRAD_INTERVAL steps)
    cfg.KD.DIAGNOSTICS = {"GRAD_INTERVAL": 0, "SCORE_STATS": False}
    distiller = build_distiller(cfg, student, dataset, logger, teacher_ckpt=str(teacher_ckpt),
                                example_batch=batches[0], cfg_file=cfg_path)
    distiller.set_schedule(max(1, args.iters))
    distiller.student.global_step.fill_(10 ** 9)  # past any KD.WARMUP: every distillation term at full weight
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _step(distiller.train(), _optimizer(distiller), batches[0], device, amp)
    mem_kd = peak_memory_mb(device)
    t_student, t_kd, t_teacher = time_interleaved(student, distiller, batches, args.iters, device, amp)
    return {"case": name, "mode": label, "voxels": int(batches[0]["voxel_coords"].shape[0]), "student_s": t_student,
            "kd_s": t_kd, "teacher_s": t_teacher, "mem_student": mem_student, "mem_kd": mem_kd}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", nargs="*", default=None, help="subset of case names (substring match)")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES),
                        help="fp32: everything fp32; bf16-teacher: KD.TEACHER.PRECISION bf16 + channels_last, "
                             "student fp32; amp: both steps under bf16 autocast (fp16 on GPUs without bf16)")
    parser.add_argument("--all_methods", action="store_true", help="also FitNet, logit KD and the other pairings")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="log the distiller's construction")
    parser.add_argument("--_one", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    logger = logging.getLogger("bench_kd_step")
    if args._one:
        case, mode = args._one
        with tempfile.TemporaryDirectory() as tmp:
            print("RESULT " + json.dumps(run_case(case, dict(ALL_CASES)[case], mode, args, device, logger, tmp)))
        return
    rows = []
    for name, _ in (ALL_CASES if args.all_methods else CASES):
        if args.cases and not any(c.lower() in name.lower() for c in args.cases):
            continue
        for mode in args.modes:  # one process per row: CPU peak RSS is per process
            cmd = [sys.executable, __file__, "--iters", str(args.iters), "--batch_size", str(args.batch_size),
                   "--device", args.device, "--_one", name, mode] + (["--verbose"] if args.verbose else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                raise RuntimeError(f"bench_kd_step: {name} / {mode} failed (exit {out.returncode}):\n"
                                   f"{out.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][len("RESULT "):]))
    mem_label = "peak alloc MiB" if device.type == "cuda" else "peak RSS MiB"
    print(f"device {device}, batch {args.batch_size}, median of {args.iters} interleaved steps (fwd + bwd + AdamW); "
          f"teacher fwd = the teacher's truncated forward alone; bound = 1 + teacher fwd / student step; "
          f"head = (KD step - student step - teacher fwd) / student step")
    print(f"{'case':<33}{'mode':<31}{'voxels':>7}{'student s':>10}{'KD s':>8}{'teacher fwd s':>14}{'ratio':>7}"
          f"{'bound':>7}{'head':>7}   {mem_label}: student / KD")
    for r in rows:
        ratio, bound = r["kd_s"] / r["student_s"], 1 + r["teacher_s"] / r["student_s"]
        r["ratio"], r["bound"] = ratio, bound
        r["head_share"] = (r["kd_s"] - r["student_s"] - r["teacher_s"]) / r["student_s"]
        flag = "" if ratio <= 1.3 else "  (> 1.3x target)"
        print(f"{r['case']:<33}{r['mode']:<31}{r['voxels']:>7}{r['student_s']:>10.3f}{r['kd_s']:>8.3f}"
              f"{r['teacher_s']:>14.3f}{ratio:>7.2f}{bound:>7.2f}{r['head_share']:>7.2f}   "
              f"{r['mem_student']:.0f} / {r['mem_kd']:.0f}{flag}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "batch_size": args.batch_size,
                                               "iters": args.iters, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
