"""Evaluate one checkpoint (--ckpt) or every checkpoint of a folder (--eval_all).

Single process:   python test.py --cfg_file cfgs/kitti_models/pointpillar.yaml --ckpt CKPT
Distributed:      bash scripts/dist_test.sh 2 --cfg_file ... --ckpt CKPT
Results: ``<repo>/output/<cfg path under cfgs/>/<extra_tag>/eval/epoch_N/<split>/<eval_tag>/{result.pkl, log}``.
For a distillation config only the student is evaluated.
"""
import argparse
import datetime
import os
import time
from pathlib import Path

from eval_utils import eval_utils
from pcdet.config import cfg_from_list, cfg_from_yaml_file, log_config
from pcdet.config_schema import validate_config
from pcdet.utils import checkpoint_utils, common_utils, dist_utils
from train_utils.optimization import OPTIMIZATION_SCHEMA
from train_utils.train_utils import experiment_output_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_config(argv=None):
    parser = argparse.ArgumentParser(description="evaluate 3D detector checkpoints")
    parser.add_argument("--cfg_file", type=str, required=True, help="config file")
    parser.add_argument("--batch_size", type=int, default=None, help="batch size per process "
                        "(default OPTIMIZATION.BATCH_SIZE_PER_GPU)")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers per process")
    parser.add_argument("--extra_tag", type=str, default="default", help="extra tag of the experiment")
    parser.add_argument("--ckpt", type=str, default=None, help="checkpoint to evaluate")
    parser.add_argument("--ckpt_dir", type=str, default=None, help="checkpoint folder for --eval_all "
                        "(default: the experiment's ckpt folder)")
    parser.add_argument("--eval_all", action="store_true", default=False,
                        help="evaluate every checkpoint_epoch_N.pth of --ckpt_dir not evaluated yet")
    parser.add_argument("--start_epoch", type=int, default=0, help="--eval_all skips epochs below this")
    parser.add_argument("--max_waiting_mins", type=float, default=0.0,
                        help="--eval_all keeps polling for new checkpoints this long")
    parser.add_argument("--save_to_file", action="store_true", default=False, help="write KITTI-format txt files")
    parser.add_argument("--eval_tag", type=str, default="default", help="tag of this evaluation")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--tcp_port", type=int, default=18888, help="master port when the launcher sets none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by torch.distributed.launch; torchrun uses LOCAL_RANK instead")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--output_root", type=str, default=str(REPO_ROOT / "output"),
                        help="root of the output tree (default <repo>/output)")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER,
                        help="override config keys: --set DATA_CONFIG.DATA_PATH ../data")
    args = parser.parse_args(argv)

    if not args.eval_all and args.ckpt is None:
        parser.error("give --ckpt CKPT, or --eval_all to evaluate a checkpoint folder")
    cfg = cfg_from_yaml_file(args.cfg_file)
    cfg.TAG = Path(args.cfg_file).stem
    if args.set_cfgs is not None:
        cfg_from_list(args.set_cfgs, cfg)
    validate_config(cfg, OPTIMIZATION_SCHEMA)   # every key known, typed: fail before anything is built
    return args, cfg


def result_dir_for(output_dir, epoch_id, split, eval_tag):
    return Path(output_dir) / "eval" / f"epoch_{epoch_id}" / split / eval_tag


def eval_single_ckpt(cfg, args, test_set, test_loader, output_dir, dist_test, device, logger):
    epoch_id = checkpoint_utils.epoch_of(args.ckpt)
    epoch_id = "no_number" if epoch_id is None else epoch_id
    model = eval_utils.build_eval_model(cfg, test_set, args.ckpt, device, logger)
    result_dir = result_dir_for(output_dir, epoch_id, cfg.DATA_CONFIG.DATA_SPLIT["test"], args.eval_tag)
    return eval_utils.eval_one_epoch(cfg, args, model, test_loader, epoch_id, logger, dist_test=dist_test,
                                     result_dir=result_dir)


def _evaluated_epochs(record_file):
    if not record_file.is_file():
        return set()
    with open(record_file) as f:
        return {line.strip() for line in f if line.strip()}


def repeat_eval_ckpt(cfg, args, test_set, test_loader, output_dir, ckpt_dir, dist_test, device, logger):
    """Evaluate each ``checkpoint_epoch_N.pth`` of ``ckpt_dir`` (N >= --start_epoch) once; the epochs done are
    recorded in ``eval/eval_list_<split>_<eval_tag>.txt`` so a re-run skips them. Metrics go to tensorboard."""
    split = cfg.DATA_CONFIG.DATA_SPLIT["test"]
    record_file = Path(output_dir) / "eval" / f"eval_list_{split}_{args.eval_tag}.txt"
    rank, _ = dist_utils.get_dist_info()
    tb_log = None
    if rank == 0:
        from tensorboardX import SummaryWriter

        tb_log = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard" / f"eval_{split}_{args.eval_tag}"))
    deadline = time.time() + args.max_waiting_mins * 60
    results = {}
    done = set()
    while True:
        # rank 0 decides from its view of the folder so that every rank evaluates the same checkpoint
        pending = None
        if rank == 0:
            done = _evaluated_epochs(record_file)
            pending = [c for c in checkpoint_utils.list_epoch_checkpoints(ckpt_dir)
                       if checkpoint_utils.epoch_of(c) >= args.start_epoch
                       and str(checkpoint_utils.epoch_of(c)) not in done]
            if not pending and time.time() < deadline:
                time.sleep(min(30.0, max(deadline - time.time(), 0.0)))
                pending = "wait"
        pending = dist_utils.broadcast_object(pending)
        if pending == "wait":
            continue
        if not pending:
            break
        ckpt = pending[0]
        epoch_id = checkpoint_utils.epoch_of(ckpt)
        model = eval_utils.build_eval_model(cfg, test_set, ckpt, device, logger)
        ret = eval_utils.eval_one_epoch(cfg, args, model, test_loader, epoch_id, logger, dist_test=dist_test,
                                        result_dir=result_dir_for(output_dir, epoch_id, split, args.eval_tag))
        results[epoch_id] = ret
        if rank == 0:
            for key, value in ret.items():
                if isinstance(value, (int, float)):
                    tb_log.add_scalar(key, value, epoch_id)
            with open(record_file, "a") as f:
                f.write(f"{epoch_id}\n")
        dist_utils.barrier()
        logger.info(f"epoch {epoch_id} has been evaluated")
    if tb_log is not None:
        tb_log.close()
    if not results:
        if not checkpoint_utils.list_epoch_checkpoints(ckpt_dir):
            raise SystemExit(f"--eval_all: no checkpoint_epoch_*.pth in {ckpt_dir} (waited "
                             f"{args.max_waiting_mins} min); nothing was evaluated")
        logger.info(f"no checkpoint left to evaluate in {ckpt_dir} (already evaluated: {sorted(done)})")
    return results


def main(argv=None):
    args, cfg = parse_config(argv)
    device = dist_utils.resolve_device(args.device)
    dist_test, world_size, rank, device = dist_utils.init_launcher(
        args.launcher, device, tcp_port=args.tcp_port, local_rank=args.local_rank
    )
    try:
        return run(args, cfg, dist_test, world_size, rank, device)
    finally:
        dist_utils.destroy_dist()


def run(args, cfg, dist_test, world_size, rank, device):
    from pcdet.datasets import build_dataloader

    if args.batch_size is None:
        if "BATCH_SIZE_PER_GPU" not in cfg.get("OPTIMIZATION", {}):
            raise KeyError("OPTIMIZATION.BATCH_SIZE_PER_GPU is missing from the config and --batch_size was not given")
        args.batch_size = cfg.OPTIMIZATION.BATCH_SIZE_PER_GPU
    output_dir = Path(experiment_output_dir(args.cfg_file, args.extra_tag, args.output_root))
    split = cfg.DATA_CONFIG.DATA_SPLIT["test"]
    if args.eval_all:
        log_dir = output_dir / "eval" / f"eval_all_{args.eval_tag}"
    else:
        epoch_id = checkpoint_utils.epoch_of(args.ckpt)
        log_dir = result_dir_for(output_dir, "no_number" if epoch_id is None else epoch_id, split, args.eval_tag)
    if rank == 0:
        log_dir.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_file = log_dir / f"log_eval_{stamp}.txt" if rank == 0 else None
    logger = common_utils.create_logger(log_file, rank=rank)
    logger.info("**********************start logging**********************")
    logger.info(f"device {device}, {'distributed: %d processes' % world_size if dist_test else 'single process'}, "
                f"batch size per process {args.batch_size}")
    for key, val in vars(args).items():
        logger.info(f"{key:22s} {val}")
    log_config(cfg, logger)

    test_set, test_loader, _ = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, batch_size=args.batch_size, dist=dist_test,
        workers=args.workers, logger=logger, training=False,
    )
    if len(test_set) == 0:
        raise SystemExit(f"test.py: the '{split}' split of {cfg.DATA_CONFIG.get('DATA_PATH')} has 0 frames "
                         f"(INFO_PATH.test: {list(cfg.DATA_CONFIG.get('INFO_PATH', {}).get('test', []))}); "
                         f"nothing to evaluate")
    if args.eval_all:
        ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else output_dir / "ckpt"
        if not os.path.isdir(ckpt_dir):
            raise FileNotFoundError(f"--eval_all: checkpoint folder {ckpt_dir} does not exist")
        return repeat_eval_ckpt(cfg, args, test_set, test_loader, output_dir, ckpt_dir, dist_test, device, logger)
    return eval_single_ckpt(cfg, args, test_set, test_loader, output_dir, dist_test, device, logger)


if __name__ == "__main__":
    main()
