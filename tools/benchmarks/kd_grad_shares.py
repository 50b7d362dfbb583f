"""Gradient norm of each distillation term relative to the detection loss's, at initialisation and after training.

    python tools/benchmarks/kd_grad_shares.py --cfg_file KD.yaml --teacher_ckpt T.pth [--epochs 16]
        [--train_iters N] [--measure_batches 8] [--json out.json]

Builds the student and the distiller as tools/train.py does, measures on ``--measure_batches`` fixed training
batches (``pcdet.kd.diagnostics.measure_grad_norms``: the norm of the gradient each weighted term sends to the
student's parameters and to each tapped student tensor), trains ``--train_iters`` steps (default: one epoch) with
the config's optimizer and schedule for ``--epochs`` epochs, and measures again on the same batches. Prints one
row per term: its gradient norm / the detection loss's, at init and after training (mean over the batches).
The measuring forwards run in train mode (as the step does), so they also update BatchNorm running statistics:
16 extra forwards next to the trained steps.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))

from pcdet.config import cfg_from_yaml_file  # noqa: E402
from pcdet.datasets import build_dataloader  # noqa: E402
from pcdet.kd import build_distiller  # noqa: E402
from pcdet.kd.diagnostics import measure_grad_norms  # noqa: E402
from pcdet.models import build_network, load_data_to_device, model_fn_decorator  # noqa: E402
from pcdet.utils import common_utils  # noqa: E402
from train_utils.optimization import build_optimizer, build_scheduler  # noqa: E402


def mean_norms(distiller, batches):
    rows = [measure_grad_norms(distiller, dict(b)) for b in batches]
    keys = sorted({k for r in rows for k in r})  # a term or tap can be absent from a batch (e.g. no objects)
    return {k: float(np.mean([r.get(k, 0.0) for r in rows])) for k in keys}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg_file", required=True)
    parser.add_argument("--teacher_ckpt", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="schedule length (default: the config's)")
    parser.add_argument("--train_iters", type=int, default=None, help="steps to train (default: one epoch)")
    parser.add_argument("--measure_batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    cfg = cfg_from_yaml_file(args.cfg_file)
    logger = common_utils.create_logger(None)
    common_utils.set_random_seed(args.seed)
    epochs = args.epochs or int(cfg.OPTIMIZATION.NUM_EPOCHS)
    batch_size = int(cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU)
    train_set, loader, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size, dist=False, workers=1,
                                            logger=logger, training=True, total_epochs=epochs, seed=args.seed)
    student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), train_set)
    distiller = build_distiller(cfg, student, train_set, logger, teacher_ckpt=args.teacher_ckpt,
                                cfg_file=args.cfg_file)
    iters = args.train_iters or len(loader)
    if hasattr(distiller, "set_schedule"):
        distiller.set_schedule(len(loader) * epochs)
    use_amp = common_utils.resolve_amp(cfg.OPTIMIZATION.get("USE_AMP", False), "cpu", torch.bfloat16)
    fixed = [load_data_to_device(train_set.collate_batch([train_set[i] for i in range(k, k + batch_size)]))
             for k in range(0, args.measure_batches * batch_size, batch_size)]
    distiller.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_amp):
        at_init = mean_norms(distiller, fixed)
    optimizer = build_optimizer(distiller, cfg.OPTIMIZATION)
    scheduler = build_scheduler(optimizer, len(loader), epochs, -1, cfg.OPTIMIZATION)
    model_func = model_fn_decorator()
    it, data = 0, iter(loader)
    while it < iters:
        try:
            batch = next(data)
        except StopIteration:
            data = iter(loader)
            continue
        scheduler.step(it)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_amp):
            loss, _, _ = model_func(distiller, batch)
        loss.backward()
        clip = cfg.OPTIMIZATION.get("GRAD_NORM_CLIP")
        if clip:
            torch.nn.utils.clip_grad_norm_(distiller.parameters(), float(clip))
        optimizer.step()
        it += 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_amp):
        trained = mean_norms(distiller, fixed)
    keys = ["det"] + [k for k in at_init if k != "det" and not k.startswith("tap:") and not k.endswith("/det")]
    print(f"{'term':28s} {'|grad| init':>12s} {'/det init':>10s} {'|grad| ' + str(iters) + ' it':>14s} "
          f"{'/det':>8s}")
    for k in keys:
        print(f"{k:28s} {at_init[k]:12.4g} {at_init.get(k + '/det', 1.0):10.3g} {trained.get(k, 0.0):14.4g} "
              f"{trained.get(k + '/det', 1.0):8.3g}")
    taps = sorted({k[4:].rsplit(":", 1)[0] for k in at_init if k.startswith("tap:")})
    for tap in taps:
        det0, det1 = at_init.get(f"tap:{tap}:det", 0.0), trained.get(f"tap:{tap}:det", 0.0)
        for k in keys[1:]:
            if f"tap:{tap}:{k}" in at_init:
                print(f"  at {tap}: {k} / det = {at_init[f'tap:{tap}:{k}'] / max(det0, 1e-30):.3g} (init), "
                      f"{trained.get(f'tap:{tap}:{k}', 0.0) / max(det1, 1e-30):.3g} (after)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cfg_file": args.cfg_file, "train_iters": iters, "epochs": epochs,
                                               "init": at_init, "trained": trained}, indent=1))


if __name__ == "__main__":
    main()
