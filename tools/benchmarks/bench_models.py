"""Training throughput, inference latency and peak memory of detectors at several widths, side by side.

python benchmarks/bench_models.py                         (from tools/; a few iterations per cell)
python benchmarks/bench_models.py --cfg_files cfgs/synthetic_models/pointpillar.yaml --widths 1 0.5 --iters 10

Inputs are synthetic scenes (uniform points in the point-cloud range plus a few boxes of the configured classes)
processed by the config's own data pipeline, so voxel counts are realistic for the range but not for real LiDAR.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident-set growth during the
measurement, sampled from /proc/self/statm (``ru_maxrss`` growth where /proc is missing).
"""
import argparse
import copy
import os
import resource
import threading
import time
from pathlib import Path

import numpy as np
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.datasets import DatasetTemplate
from pcdet.utils import dist_utils

TOOLS_DIR = Path(__file__).resolve().parents[1]
DEFAULT_CFGS = ["cfgs/synthetic_models/pointpillar.yaml", "cfgs/synthetic_models/centerpoint_pillar.yaml",
                "cfgs/synthetic_models/second.yaml", "cfgs/synthetic_models/centerpoint.yaml"]


class SyntheticScenes(DatasetTemplate):
    """``num_scenes`` random scenes: ``num_points`` uniform points and ``num_boxes`` labelled boxes each."""

    def __init__(self, dataset_cfg, class_names, num_scenes, num_points, num_boxes=6, seed=0):
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=False, root_path=TOOLS_DIR)
        rng = np.random.default_rng(seed)
        low, high = self.point_cloud_range[:3], self.point_cloud_range[3:]
        num_features = len(dataset_cfg.POINT_FEATURE_ENCODING.src_feature_list)
        self.scenes = []
        for index in range(num_scenes):
            xyz = rng.uniform(low, high, size=(num_points, 3))
            extra = rng.uniform(0, 1, size=(num_points, num_features - 3))
            centres = rng.uniform(low + 0.2 * (high - low), high - 0.2 * (high - low), size=(num_boxes, 3))
            dims = rng.uniform([3.5, 1.5, 1.4], [4.5, 2.0, 1.7], size=(num_boxes, 3))
            heading = rng.uniform(-np.pi, np.pi, size=(num_boxes, 1))
            self.scenes.append({
                "frame_id": f"{index:06d}",
                "points": np.concatenate([xyz, extra], axis=1).astype(np.float32),
                "gt_boxes": np.concatenate([centres, dims, heading], axis=1).astype(np.float32),
                "gt_names": np.array([class_names[i % len(class_names)] for i in range(num_boxes)]),
            })

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, index):
        return self.prepare_data(copy.deepcopy(self.scenes[index]))


class PeakMemory:
    """Context manager measuring the peak memory growth (bytes) of the block on ``device``."""

    def __init__(self, device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.is_set():
            self._max_rss = max(self._max_rss, self._rss())
            self._stop.wait(0.002)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._base = self._max_rss = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max_rss, self._rss()) - self._base
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(dataset, start, batch_size, device):
    from pcdet.models import load_data_to_device

    samples = [dataset[(start + i) % len(dataset)] for i in range(batch_size)]
    return load_data_to_device(dataset.collate_batch(samples), device)


def bench_one(cfg, width, args, device):
    """``{params_m, train_fps, train_mem_mb, infer_ms, infer_mem_mb}`` of ``cfg.MODEL`` at ``width``."""
    from pcdet.models import build_network, model_fn_decorator

    cfg = copy.deepcopy(cfg)
    cfg.MODEL.WIDTH = float(width)
    dataset = SyntheticScenes(cfg.DATA_CONFIG, cfg.CLASS_NAMES, num_scenes=max(args.batch_size, 2),
                              num_points=args.num_points)
    torch.manual_seed(0)
    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset).to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model_func = model_fn_decorator()
    batches = [_batch(dataset, i * args.batch_size, args.batch_size, device) for i in range(2)]

    def train_step(i):
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = model_func(model, copy.copy(batches[i % 2]))
        loss.backward()
        optimizer.step()

    model.train()
    for i in range(args.warmup):
        train_step(i)
    _sync(device)
    with PeakMemory(device) as train_mem:
        start = time.perf_counter()
        for i in range(args.iters):
            train_step(i)
        _sync(device)
        train_time = time.perf_counter() - start

    model.eval()
    single = [_batch(dataset, i, 1, device) for i in range(2)]
    with torch.no_grad():
        for i in range(args.warmup):
            model(copy.copy(single[i % 2]))
        _sync(device)
        with PeakMemory(device) as infer_mem:
            start = time.perf_counter()
            for i in range(args.iters):
                model(copy.copy(single[i % 2]))
            _sync(device)
            infer_time = time.perf_counter() - start
    return {
        "params_m": params,
        "train_fps": args.iters * args.batch_size / train_time,
        "train_mem_mb": train_mem.peak / 2 ** 20,
        "infer_ms": 1000.0 * infer_time / args.iters,
        "infer_mem_mb": infer_mem.peak / 2 ** 20,
    }


def format_table(rows):
    """Rows of dicts with cfg, width and the bench_one keys, plus ratios against width 1 of the same config."""
    header = ["config", "width", "params (M)", "train frames/s", "x w=1", "infer ms/frame", "x w=1",
              "train peak MB", "infer peak MB"]
    lines = []
    for row in rows:
        ref = next((r for r in rows if r["cfg"] == row["cfg"] and r["width"] == 1.0), None)
        fps_ratio = f"{row['train_fps'] / ref['train_fps']:.2f}" if ref else "-"
        lat_ratio = f"{ref['infer_ms'] / row['infer_ms']:.2f}" if ref else "-"
        lines.append([row["cfg"], f"{row['width']:g}", f"{row['params_m']:.3f}", f"{row['train_fps']:.2f}",
                      fps_ratio, f"{row['infer_ms']:.1f}", lat_ratio, f"{row['train_mem_mb']:.0f}",
                      f"{row['infer_mem_mb']:.0f}"])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description="benchmark detectors at several widths")
    parser.add_argument("--cfg_files", nargs="+", default=DEFAULT_CFGS, help="model configs (relative to tools/)")
    parser.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.5, 0.25])
    parser.add_argument("--batch_size", type=int, default=2, help="training batch size (inference uses 1)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per cell")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per cell")
    parser.add_argument("--num_points", type=int, default=20000, help="points per synthetic scene")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    device = dist_utils.resolve_device(args.device)

    rows = []
    for cfg_file in args.cfg_files:
        path = Path(cfg_file)
        path = path if path.is_absolute() or path.exists() else TOOLS_DIR / path
        cfg = cfg_from_yaml_file(path)
        for width in args.widths:
            result = bench_one(cfg, width, args, device)
            rows.append({"cfg": path.stem, "width": float(width), **result})
            print(f"{path.stem} width {width:g}: {result['train_fps']:.2f} frames/s train, "
                  f"{result['infer_ms']:.1f} ms/frame inference", flush=True)
    print(f"\ndevice {device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.iters} timed iterations, {args.num_points} points per scene")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
