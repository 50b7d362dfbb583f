"""Evaluation subprocess of the benchmark: one checkpoint on one split with the KITTI metric.

    python -m pcdet.kd.benchmark.evaluate --cfg_file C --ckpt P --split val --out R.json [--summary]

Writes ``{"metrics", "split", "epoch", "cfg_text", ...}``; with ``--summary`` also parameters, FLOPs (one frame)
and the median batch-1 forward latency. A distillation config evaluates its student only.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from .plan import TOOLS_DIR, repo_relative


def eval_split_overrides(split):
    """DATA_CONFIG keys that point the test loader at ``split`` (ImageSets/<split>.txt, kitti_infos_<split>.pkl)."""
    return {"DATA_SPLIT": {"test": split}, "INFO_PATH": {"test": [f"kitti_infos_{split}.pkl"]}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cfg_file", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train_seconds", type=float, default=0.0)
    parser.add_argument("--cfg_hash", default=None, help="the run's hash, stored for the reuse check")
    parser.add_argument("--data_signature", default=None, help="JSON of the dataset's signature, stored for reuse")
    parser.add_argument("--log_dir", default=None, help="evaluation log and detections (default: next to --out)")
    parser.add_argument("--summary", action="store_true", help="also params, FLOPs and latency")
    parser.add_argument("--latency_frames", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args(argv)

    import torch

    sys.path.insert(0, str(TOOLS_DIR))
    from eval_utils import eval_utils

    from ...config import cfg_from_yaml_file
    from ...datasets import build_dataloader
    from ...models import load_data_to_device
    from ...models.detectors.detector3d_template import read_checkpoint
    from ...models.model_utils.model_summary import summarize
    from ...utils import common_utils

    cfg = cfg_from_yaml_file(args.cfg_file, {"DATA_CONFIG": eval_split_overrides(args.split)})
    cfg.CFG_FILE = args.cfg_file
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = Path(args.log_dir) if args.log_dir else out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = common_utils.create_logger(log_dir / (out.stem + ".log"), rank=0)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=args.batch_size, dist=False,
                                          workers=0, logger=logger, training=False)
    if len(dataset) == 0:
        raise SystemExit(f"evaluate: split '{args.split}' of {cfg.DATA_CONFIG.DATA_PATH} has no frames")
    epoch = read_checkpoint(args.ckpt)[1].get("epoch")
    model = eval_utils.build_eval_model(cfg, dataset, args.ckpt, device, logger)
    t0 = time.time()
    ns = argparse.Namespace(save_to_file=False)
    metrics = eval_utils.eval_one_epoch(cfg, ns, model, loader, epoch, logger,
                                        result_dir=log_dir / (out.stem + "_eval"))
    result = {"metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
              "split": args.split, "num_frames": len(dataset), "epoch": epoch, "eval_seconds": time.time() - t0,
              "train_seconds": args.train_seconds, "device": str(device), "threads": torch.get_num_threads(),
              "cfg_text": repo_relative(Path(args.cfg_file).read_text()), "cfg_hash": args.cfg_hash,
              "data": json.loads(args.data_signature) if args.data_signature else None}
    if args.summary:
        _, loader1, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=1, dist=False, workers=0,
                                         logger=logger, training=False)
        it = iter(loader1)
        batch = next(it)
        load_data_to_device(batch, device)
        with torch.no_grad():
            summary = summarize(model, batch)
        times = []
        for i, batch in enumerate([batch] + [next(it) for _ in range(min(args.latency_frames, len(loader1) - 1))]):
            load_data_to_device(batch, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            with torch.no_grad():
                model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - t1)
        result.update(params=int(summary["params"]), flops=float(summary["flops"]),
                      latency_ms=1000.0 * statistics.median(times) if times else float("nan"))
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


if __name__ == "__main__":
    main()
