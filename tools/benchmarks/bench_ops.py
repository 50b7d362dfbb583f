"""Benchmark of the compiled pcdet.ops against their strongest available peers, side by side in one run.

    python tools/benchmarks/bench_ops.py [--reps 5] [--threads 2]

Each method runs in a fresh subprocess on the same seeded inputs: one warm-up call, then the peak resident set
size is reset (``/proc/self/clear_refs``, value 5) and the growth of the peak RSS (VmHWM) over the RSS before the
measured call is reported as its peak extra memory (tracemalloc does not see torch allocations). Time is the
minimum wall time over ``--reps`` calls (the machine may be shared). Prints one table; ratios are against the
row marked as baseline of each case.
"""
import argparse
import json
import os
import subprocess
import sys
import time

KNN_ROWS, KNN_QUERIES, KNN_K = 20000, 6000, 128
VOXEL_POINTS = 120000
VOXEL_RANGE = [0.0, -40.0, -3.0, 70.4, 40.0, 1.0]
VOXEL_SIZE = [0.05, 0.05, 0.1]

# (case, method, baseline?) in print order.
CASES = [
    ("knn C=64", "cdist+topk", True),
    ("knn C=64", "pcdet knn_in_scans", False),
    ("knn C=64", "faiss IndexFlatL2", False),
    ("knn C=3 (xyz)", "cdist+topk", True),
    ("knn C=3 (xyz)", "pcdet knn_in_scans", False),
    ("knn C=3 (xyz)", "scipy cKDTree", False),
    ("knn C=3 (xyz)", "faiss IndexFlatL2", False),
    ("point counts", "torch.unique count", True),
    ("point counts", "pcdet voxel_point_counts", False),
    ("point counts", "spconv PointToVoxel", False),
]


def _rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _knn_inputs(channels):
    import torch
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(KNN_ROWS, channels, generator=gen)
    query = torch.randperm(KNN_ROWS, generator=gen)[:KNN_QUERIES]
    return features, torch.zeros(KNN_ROWS, dtype=torch.long), query


def _voxel_inputs():
    import torch
    gen = torch.Generator().manual_seed(0)
    lo = torch.tensor(VOXEL_RANGE[:3])
    hi = torch.tensor(VOXEL_RANGE[3:])
    xyz = torch.rand(VOXEL_POINTS, 3, generator=gen) * (hi - lo) * 1.05 + lo - 0.02 * (hi - lo)
    return torch.cat([xyz, torch.rand(VOXEL_POINTS, 1, generator=gen)], dim=1)


def _build(case, method):
    """Returns a zero-argument callable running `method` on the inputs of `case`."""
    import torch
    if case.startswith("knn"):
        features, batch, query = _knn_inputs(3 if "xyz" in case else 64)
        if method == "cdist+topk":
            return lambda: torch.cdist(features[query], features).topk(KNN_K, dim=1, largest=False)
        if method == "pcdet knn_in_scans":
            from pcdet.ops.knn import knn_in_scans
            return lambda: knn_in_scans(features, batch, KNN_K, query)
        if method == "scipy cKDTree":
            from scipy.spatial import cKDTree
            pts = features.numpy()
            workers = torch.get_num_threads()
            return lambda: cKDTree(pts).query(pts[query.numpy()], k=KNN_K, workers=workers)
        if method == "faiss IndexFlatL2":
            import faiss
            faiss.omp_set_num_threads(torch.get_num_threads())
            rows = features.numpy()
            queries = rows[query.numpy()]

            def run():
                index = faiss.IndexFlatL2(rows.shape[1])
                index.add(rows)
                return index.search(queries, KNN_K)
            return run
    points = _voxel_inputs()
    if method == "torch.unique count":
        from pcdet.ops.voxel_count import voxel_point_counts
        return lambda: voxel_point_counts(points, VOXEL_RANGE, VOXEL_SIZE, use_reference=True)
    if method == "pcdet voxel_point_counts":
        from pcdet.ops.voxel_count import voxel_point_counts
        return lambda: voxel_point_counts(points, VOXEL_RANGE, VOXEL_SIZE)
    if method == "spconv PointToVoxel":
        from spconv.pytorch.utils import PointToVoxel
        gen = PointToVoxel(vsize_xyz=VOXEL_SIZE, coors_range_xyz=VOXEL_RANGE, num_point_features=4,
                           max_num_voxels=VOXEL_POINTS, max_num_points_per_voxel=32)
        return lambda: gen(points)
    raise ValueError(f"unknown benchmark method {method!r} for case {case!r}")


def _child(case, method, reps, threads):
    import torch
    torch.set_num_threads(threads)
    fn = _build(case, method)
    fn()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kb("VmRSS")
    fn()
    peak_mb = (_rss_kb("VmHWM") - before) / 1024.0
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(json.dumps({"ms": min(times) * 1e3, "peak_mb": peak_mb}))


def _missing(method):
    """Name of the missing optional package for `method`, or None."""
    module = {"faiss IndexFlatL2": "faiss", "spconv PointToVoxel": "spconv", "scipy cKDTree": "scipy"}.get(method)
    if module is None:
        return None
    import importlib.util
    return None if importlib.util.find_spec(module) else module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write every row (case, method, time, peak memory, "
                                                     "ratios) to this JSON file")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.reps, args.threads)
        return

    from pcdet.ops import _loader
    compiled = {name: _loader.load_extension(f"pcdet.ops.{name}.{name}_ext") is not None
                for name in ("knn", "voxel_count")}
    print(f"kNN: {KNN_QUERIES} queries among {KNN_ROWS} rows of one scan, k={KNN_K}; point counts: "
          f"{VOXEL_POINTS} points, voxel {VOXEL_SIZE}, range {VOXEL_RANGE}; {args.threads} threads; "
          f"compiled: {compiled}")
    header = f"{'case':<15} {'method':<26} {'time ms':>9} {'peak MB':>9} {'speed-up':>9} {'mem ratio':>10}"
    print(header)
    print("-" * len(header))
    base = {}
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for case, method, is_base in CASES:
        missing = _missing(method)
        if missing:
            print(f"{case:<15} {method:<26} {'(' + missing + ' not installed)':>40}")
            rows.append({"case": case, "method": method, "missing": missing})
            continue
        proc = subprocess.run([sys.executable, __file__, "--child", case, method, "--reps", str(args.reps),
                               "--threads", str(args.threads)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{case:<15} {method:<26} failed: {proc.stderr.strip().splitlines()[-1]}")
            rows.append({"case": case, "method": method, "failed": proc.stderr.strip()[-2000:]})
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if is_base:
            base[case] = res
        ref = base.get(case, res)
        speed = ref["ms"] / res["ms"]
        mem = ref["peak_mb"] / max(res["peak_mb"], 0.1)
        print(f"{case:<15} {method:<26} {res['ms']:>9.1f} {res['peak_mb']:>9.1f} {speed:>8.2f}x {mem:>9.1f}x")
        rows.append({"case": case, "method": method, "baseline": is_base, "ms": res["ms"],
                     "peak_mb": res["peak_mb"], "speedup_vs_baseline": speed, "memory_ratio_vs_baseline": mem})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "reps": args.reps, "compiled": compiled, "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
