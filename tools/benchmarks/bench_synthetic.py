"""Benchmark the synthetic dataset generator (single process unless --workers).

    python tools/benchmarks/bench_synthetic.py [--num_frames 50] [--preset default] [--workers 0]

Warm-up (numba compilation or cache load, first frame) is excluded. Prints, per preset: frames/s of the full
generate-and-write path and of simulation only (scene + sweep + labels, no files), mean points per frame and mean
labelled objects per class per frame.
"""
import argparse
import json
import os
import tempfile
import time
from collections import Counter

import numpy as np

from pcdet.datasets.synthetic.generate import generate_dataset, generate_frame
from pcdet.datasets.synthetic.scene import get_preset


def bench(preset_name, num_frames, workers, seed):
    preset = get_preset(preset_name)
    generate_frame(seed, "training", 10 ** 6, preset)
    t0 = time.perf_counter()
    for i in range(num_frames):
        generate_frame(seed, "training", i, preset)
    sim_fps = num_frames / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_dataset(tmp, num_frames, seed, workers=workers, preset=preset_name, num_test_frames=0)
        full_fps = num_frames / (time.perf_counter() - t0)
        counts = Counter()
        points = []
        for i in range(num_frames):
            with open(os.path.join(tmp, "training", "label_2", f"{i:06d}.txt")) as f:
                counts.update(line.split(" ", 1)[0] for line in f if line.strip())
            with open(os.path.join(tmp, "training", "synth_meta", f"{i:06d}.json")) as f:
                points.append(json.load(f)["num_points"])
    return dict(preset=preset_name, full_fps=full_fps, sim_fps=sim_fps, points=float(np.mean(points)),
                per_class={k: counts[k] / num_frames for k in sorted(counts)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_frames", type=int, default=50)
    parser.add_argument("--preset", default="all", choices=["all", "default", "hard"])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    presets = ["default", "hard"] if args.preset == "all" else [args.preset]
    rows = [bench(p, args.num_frames, args.workers, args.seed) for p in presets]
    classes = sorted({k for r in rows for k in r["per_class"]})
    header = f"{'preset':<8} {'frames/s':>9} {'sim f/s':>8} {'pts/frame':>10} " + " ".join(f"{c:>10}" for c in classes)
    print(f"synthetic generator, {args.num_frames} frames, workers={args.workers} (objects per frame by class)")
    print(header)
    for r in rows:
        print(f"{r['preset']:<8} {r['full_fps']:>9.1f} {r['sim_fps']:>8.1f} {r['points']:>10.0f} "
              + " ".join(f"{r['per_class'].get(c, 0.0):>10.2f}" for c in classes))


if __name__ == "__main__":
    main()
