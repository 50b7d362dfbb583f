"""KD training step (teacher forward included) vs student-only step, side by side in one run.

    python tools/benchmarks/bench_kd_step.py [--iters 3] [--batch_size 2] [--device cpu|cuda]

For itKD CenterPoint (tools/cfgs/kd/itkd_centerpoint.yaml) and PointDistiller PointPillars
(tools/cfgs/kd/pointdistiller_pointpillar.yaml) on synthetic-generator frames (no files needed): builds the
student and the distiller (teacher weights: a fixed random checkpoint, the cost does not depend on them), times
forward + backward + optimizer step, and prints the ratio and peak memory (CUDA: max allocated; CPU: peak RSS).
"""
import argparse
import copy
import logging
import resource
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

TOOLS = Path(__file__).resolve().parents[1]
CASES = (("itKD CenterPoint", "cfgs/kd/itkd_centerpoint.yaml"),
         ("PointDistiller PointPillars", "cfgs/kd/pointdistiller_pointpillar.yaml"))


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


def _step(model, opt, batch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    ret, _, _ = model(dict(batch))
    opt.zero_grad(set_to_none=True)
    ret["loss"].backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def time_interleaved(student, distiller, batches, iters, device):
    """Median seconds of student-only and KD steps, alternated on the same batches so load drift cancels."""
    opt_s, opt_kd = _optimizer(student), _optimizer(distiller)
    distiller.train()
    t_s, t_kd = [], []
    for i in range(iters + 1):  # the first pair warms up allocators and lazy kernels
        batch = batches[i % len(batches)]
        a, b = _step(student, opt_s, batch, device), _step(distiller, opt_kd, batch, device)
        if i > 0:
            t_s.append(a)
            t_kd.append(b)
    return float(np.median(t_s)), float(np.median(t_kd))


def run_case(name, cfg_rel, args, device, logger, tmp):
    cfg_path = TOOLS / cfg_rel
    cfg = cfg_from_yaml_file(cfg_path)
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
    # peak memory of each kind of step, student first (CPU peak RSS only grows)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _step(student.train(), _optimizer(student), batches[0], device)
    mem_student = peak_memory_mb(device)
    distiller = build_distiller(cfg, student, dataset, logger, teacher_ckpt=str(teacher_ckpt),
                                example_batch=batches[0], cfg_file=cfg_path)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _step(distiller.train(), _optimizer(distiller), batches[0], device)
    mem_kd = peak_memory_mb(device)
    t_student, t_kd = time_interleaved(student, distiller, batches, args.iters, device)
    voxels = int(batches[0]["voxel_coords"].shape[0])
    return name, voxels, t_student, t_kd, mem_student, mem_kd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", nargs="*", default=None, help="subset of case names (substring match)")
    parser.add_argument("--verbose", action="store_true", help="log the distiller's construction")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    logger = logging.getLogger("bench_kd_step")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg_rel in CASES:
            if args.cases and not any(c.lower() in name.lower() for c in args.cases):
                continue
            rows.append(run_case(name, cfg_rel, args, device, logger, tmp))
    mem_label = "peak alloc MiB" if device.type == "cuda" else "peak RSS MiB (process)"
    print(f"device {device}, batch {args.batch_size}, median of {args.iters} interleaved steps (fwd + bwd + AdamW)")
    print(f"{'case':<30}{'voxels':>8}{'student s':>11}{'KD s':>9}{'ratio':>7}   {mem_label}: student / KD")
    for name, voxels, t_s, t_kd, m_s, m_kd in rows:
        flag = "" if t_kd / t_s <= 1.3 else "  (> 1.3x target)"
        print(f"{name:<30}{voxels:>8}{t_s:>11.3f}{t_kd:>9.3f}{t_kd / t_s:>7.2f}   {m_s:.0f} / {m_kd:.0f}{flag}")


if __name__ == "__main__":
    main()
