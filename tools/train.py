"""Train a detector (or distil a student when the config has a ``KD`` block), then evaluate it.

Single process:   python train.py --cfg_file cfgs/kitti_models/pointpillar.yaml
Distributed:      bash scripts/dist_train.sh 2 --cfg_file cfgs/kitti_models/pointpillar.yaml
Outputs go to ``<repo>/output/<cfg path under cfgs/ without .yaml>/<extra_tag>/{ckpt,tensorboard,eval,log}``.
Without ``--ckpt`` a run resumes from the most advanced complete checkpoint of its ``ckpt`` folder.
"""
import argparse
import datetime
import json
import os
import shutil
from pathlib import Path

import torch

from eval_utils import eval_utils
from pcdet.config import cfg_from_list, cfg_from_yaml_file, log_config
from pcdet.config_schema import validate_config
from pcdet.utils import checkpoint_utils, common_utils, dist_utils
from train_utils.optimization import OPTIMIZATION_SCHEMA, build_optimizer, build_scheduler
from train_utils.train_utils import experiment_output_dir, resume_state, train_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_config(argv=None):
    parser = argparse.ArgumentParser(description="train a 3D detector (optionally with knowledge distillation)")
    parser.add_argument("--cfg_file", type=str, required=True, help="config file")
    parser.add_argument("--batch_size", type=int, default=None, help="batch size per process "
                        "(default OPTIMIZATION.BATCH_SIZE_PER_GPU)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default OPTIMIZATION.NUM_EPOCHS)")
    parser.add_argument("--workers", type=int, default=4, help="dataloader workers per process")
    parser.add_argument("--extra_tag", type=str, default="default", help="extra tag of this experiment")
    parser.add_argument("--ckpt", type=str, default=None, help="checkpoint to resume from "
                        "(default: the latest complete one in the output ckpt folder)")
    parser.add_argument("--pretrained_model", type=str, default=None, help="weights to start from")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--tcp_port", type=int, default=18888, help="master port when the launcher sets none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by torch.distributed.launch; torchrun uses LOCAL_RANK instead")
    parser.add_argument("--sync_bn", action="store_true", default=False, help="SyncBatchNorm (CUDA only)")
    parser.add_argument("--fix_random_seed", action="store_true", default=False)
    parser.add_argument("--seed", type=int, default=666, help="base seed with --fix_random_seed (rank r uses seed + r)")
    parser.add_argument("--ckpt_save_interval", type=int, default=1, help="epochs between checkpoints")
    parser.add_argument("--ckpt_save_iter_interval", type=int, default=0,
                        help="write latest_model.pth every N iterations (0: never)")
    parser.add_argument("--max_ckpt_save_num", type=int, default=30, help="checkpoint_epoch_N.pth files kept")
    parser.add_argument("--max_iters_per_epoch", type=int, default=None, help="cap iterations per epoch "
                        "(smoke tests)")
    parser.add_argument("--num_epochs_to_eval", type=int, default=0,
                        help="after training evaluate the checkpoints of the last N epochs besides the final one")
    parser.add_argument("--skip_eval", action="store_true", default=False, help="do not evaluate after training")
    parser.add_argument("--teacher_ckpt", type=str, default=None, help="teacher weights (overrides KD.TEACHER.CKPT)")
    parser.add_argument("--init_from_teacher", action="store_true", default=False,
                        help="start the student from the teacher's weights, narrowed channel by channel by filter "
                             "L1 norm (sets KD.INIT_FROM_TEACHER)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--output_root", type=str, default=str(REPO_ROOT / "output"),
                        help="root of the output tree (default <repo>/output)")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER,
                        help="override config keys: --set OPTIMIZATION.LR 0.001 DATA_CONFIG.DATA_PATH ../data")
    args = parser.parse_args(argv)

    cfg = cfg_from_yaml_file(args.cfg_file)
    cfg.TAG = Path(args.cfg_file).stem
    if args.set_cfgs is not None:
        cfg_from_list(args.set_cfgs, cfg)
    validate_config(cfg, OPTIMIZATION_SCHEMA)   # every key known, typed: fail before anything is built
    return args, cfg


def _optim_value(cfg, key, arg_value):
    if arg_value is not None:
        return arg_value
    if key not in cfg.OPTIMIZATION:
        raise KeyError(f"OPTIMIZATION.{key} is missing from the config and no command-line value was given")
    return cfg.OPTIMIZATION[key]


def build_training_model(cfg, args, train_set, device, logger):
    """Student from ``cfg.MODEL``; wrapped by the distiller when ``cfg`` has a ``KD`` block."""
    from pcdet.models import build_network

    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=train_set)
    if args.pretrained_model is not None:
        model.load_params_from_file(filename=args.pretrained_model, logger=logger, to_cpu=True)
        model.global_step.zero_()  # a new run from pretrained weights: KD.WARMUP and diagnostics count from 0
    if args.init_from_teacher:
        if "KD" not in cfg:
            raise ValueError(f"--init_from_teacher needs a KD config with a teacher; {args.cfg_file} has no KD block")
        if args.pretrained_model is not None:
            raise ValueError("--init_from_teacher and --pretrained_model both set the student's initial weights; "
                             "choose one")
        cfg.KD.INIT_FROM_TEACHER = True
    if "KD" in cfg:
        from pcdet.kd import build_distiller

        model = build_distiller(cfg, model, train_set, logger, teacher_ckpt=args.teacher_ckpt)
    model = model.to(device)
    if cfg.OPTIMIZATION.get("CHANNELS_LAST", False):
        # NHWC weights (4-D only) let oneDNN / cuDNN pick their fastest dense-conv kernels; state_dict keys unchanged
        common_utils.to_channels_last(model)
        logger.info("OPTIMIZATION.CHANNELS_LAST: dense conv weights in channels_last memory format")
    return model


def evaluate_after_training(cfg, args, output_dir, ckpt_dir, total_epochs, dist_train, device, logger):
    """Evaluate the student of every saved checkpoint with epoch >= total_epochs - num_epochs_to_eval."""
    from pcdet.datasets import build_dataloader

    test_set, test_loader, _ = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, batch_size=args.batch_size, dist=dist_train,
        workers=args.workers, logger=logger, training=False,
    )
    first = max(total_epochs - args.num_epochs_to_eval, 0)
    ckpts = [c for c in checkpoint_utils.list_epoch_checkpoints(ckpt_dir) if checkpoint_utils.epoch_of(c) >= first]
    split = cfg.DATA_CONFIG.DATA_SPLIT["test"]
    results = {}
    for ckpt in ckpts:
        epoch_id = checkpoint_utils.epoch_of(ckpt)
        model = eval_utils.build_eval_model(cfg, test_set, ckpt, device, logger)
        result_dir = Path(output_dir) / "eval" / "eval_with_train" / f"epoch_{epoch_id}" / split
        results[epoch_id] = eval_utils.eval_one_epoch(
            cfg, args, model, test_loader, epoch_id, logger, dist_test=dist_train, result_dir=result_dir
        )
    return results


def main(argv=None):
    args, cfg = parse_config(argv)
    device = dist_utils.resolve_device(args.device)
    dist_train, world_size, rank, device = dist_utils.init_launcher(
        args.launcher, device, tcp_port=args.tcp_port, local_rank=args.local_rank
    )
    try:
        run(args, cfg, dist_train, world_size, rank, device)
    finally:
        dist_utils.destroy_dist()


def run(args, cfg, dist_train, world_size, rank, device):
    from pcdet.datasets import build_dataloader

    args.batch_size = _optim_value(cfg, "BATCH_SIZE_PER_GPU", args.batch_size)
    args.epochs = _optim_value(cfg, "NUM_EPOCHS", args.epochs)
    if args.fix_random_seed:
        common_utils.set_random_seed(args.seed + rank)

    output_dir = Path(experiment_output_dir(args.cfg_file, args.extra_tag, args.output_root))
    ckpt_dir = output_dir / "ckpt"
    if rank == 0:
        for sub in ("ckpt", "log", "tensorboard", "eval"):
            (output_dir / sub).mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    # only rank 0 writes a log file; other ranks print their errors to the console
    log_file = output_dir / "log" / f"train_{stamp}.log" if rank == 0 else None
    logger = common_utils.create_logger(log_file, rank=rank)
    logger.info("********************** start logging **********************")
    logger.info(f"device {device}, {'distributed: %d processes' % world_size if dist_train else 'single process'}, "
                f"batch size per process {args.batch_size}")
    for key, val in vars(args).items():
        logger.info(f"{key:22s} {val}")
    log_config(cfg, logger)
    if rank == 0:
        shutil.copy(args.cfg_file, output_dir / "log" / Path(args.cfg_file).name)

    tb_log = None
    if rank == 0:
        from tensorboardX import SummaryWriter

        tb_log = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    train_set, train_loader, train_sampler = build_dataloader(
        dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, batch_size=args.batch_size, dist=dist_train,
        workers=args.workers, logger=logger, training=True, total_epochs=args.epochs,
        seed=args.seed if args.fix_random_seed else None,
    )
    model = build_training_model(cfg, args, train_set, device, logger)
    if args.sync_bn:
        if dist_train:
            model = dist_utils.convert_sync_bn(model, device, logger)
        else:
            logger.info("--sync_bn ignored: single-process training")
    optimizer = build_optimizer(model, cfg.OPTIMIZATION)

    start_epoch, start_iter = 0, 0
    if rank == 0:
        for stale in checkpoint_utils.remove_stale_temp_files(ckpt_dir):
            logger.warning(f"removed {stale}: the temporary file of an interrupted checkpoint save")
    resume_from = resume_state(ckpt_dir, args.ckpt, logger=logger)
    if resume_from is not None:
        start_iter, start_epoch = checkpoint_utils.load_for_resume(
            model, optimizer, resume_from, map_location=device, logger=logger
        )

    teacher = getattr(model, "teacher", None)
    teacher_digest_start = dist_utils.model_digest(teacher.model, buffers=True) if teacher is not None else None
    model.train()
    if dist_train:
        find_unused = cfg.OPTIMIZATION.get("FIND_UNUSED_PARAMETERS", "KD" in cfg)
        model = dist_utils.wrap_ddp(model, device, find_unused_parameters=bool(find_unused))
    logger.info(model)

    total_it_each_epoch = len(train_loader)
    if args.max_iters_per_epoch is not None:
        total_it_each_epoch = min(total_it_each_epoch, args.max_iters_per_epoch)
    if resume_from is not None:
        saved = checkpoint_utils.load_checkpoint(resume_from).get("it_per_epoch")
        checkpoint_utils.check_resume_schedule(resume_from, start_iter, start_epoch, saved, total_it_each_epoch)
    kd_model = model.module if hasattr(model, "module") else model
    if hasattr(kd_model, "set_schedule"):
        kd_model.set_schedule(total_it_each_epoch * args.epochs)  # KD.WARMUP is a fraction of the whole run
    lr_scheduler = build_scheduler(optimizer, total_it_each_epoch, args.epochs, start_iter - 1, cfg.OPTIMIZATION)
    amp_dtype = common_utils.amp_dtype(cfg.OPTIMIZATION.get("AMP_DTYPE", "fp16" if device.type == "cuda" else "bf16"),
                                       "OPTIMIZATION.AMP_DTYPE")
    amp_value = cfg.OPTIMIZATION.get("USE_AMP", False)
    use_amp = common_utils.resolve_amp(amp_value, device.type, amp_dtype)
    if use_amp:
        logger.info(f"mixed precision: autocast {amp_dtype} on {device.type}"
                    f"{', loss scaling' if amp_dtype == torch.float16 else ''}; losses in float32")
        if device.type == "cpu" and amp_dtype == torch.bfloat16 and not common_utils.cpu_has_native_bf16():
            logger.warning("OPTIMIZATION.USE_AMP: bf16 autocast on a CPU without native bf16 (no AVX512-BF16 / "
                           "AMX): steps are several times slower than float32; set USE_AMP: auto")
    elif amp_value == "auto":
        forced = os.environ.get(common_utils.CPU_BF16_ENV, "").strip().lower() == "off"
        why = f", {common_utils.CPU_BF16_ENV}=off" if forced else ", no native bf16"
        logger.info(f"mixed precision: USE_AMP auto -> float32 ({device.type}{why if device.type == 'cpu' else ''})")

    from pcdet.models import model_fn_decorator

    logger.info(f"**********************start training {cfg.TAG}/{args.extra_tag} "
                f"(epochs {start_epoch}->{args.epochs}, {total_it_each_epoch} it/epoch)**********************")
    final_it = train_model(
        model, optimizer, train_loader, model_func=model_fn_decorator(), lr_scheduler=lr_scheduler,
        optim_cfg=cfg.OPTIMIZATION, start_epoch=start_epoch, total_epochs=args.epochs, start_iter=start_iter,
        rank=rank, tb_log=tb_log, ckpt_save_dir=ckpt_dir, train_sampler=train_sampler,
        ckpt_save_interval=args.ckpt_save_interval, max_ckpt_save_num=args.max_ckpt_save_num,
        total_it_each_epoch=total_it_each_epoch, use_amp=use_amp, device_type=device.type, amp_dtype=amp_dtype,
        ckpt_save_iter_interval=args.ckpt_save_iter_interval, logger=logger,
    )
    digests = dist_utils.all_gather_object(dist_utils.model_digest(model))
    teacher_digests = None
    if teacher_digest_start is not None:
        end = dist_utils.model_digest(teacher.model, buffers=True)
        teacher_digests = dist_utils.all_gather_object({"start": teacher_digest_start, "end": end})
    if rank == 0:
        for r, digest in enumerate(digests):
            logger.info(f"weights digest rank {r}: {digest}")
        record = {"digests": digests, "it": final_it, "world_size": world_size}
        if teacher_digests is not None:
            logger.info(f"teacher digest (parameters and buffers) before/after training per rank: {teacher_digests}")
            record["teacher_digests"] = teacher_digests
        with open(output_dir / "log" / "weights_digest.json", "w") as f:
            json.dump(record, f)
        if tb_log is not None:
            tb_log.close()
    logger.info(f"**********************end training {cfg.TAG}/{args.extra_tag}**********************")

    if not args.skip_eval:
        logger.info("**********************start evaluation**********************")
        evaluate_after_training(cfg, args, output_dir, ckpt_dir, args.epochs, dist_train, device, logger)
        logger.info("**********************end evaluation**********************")


if __name__ == "__main__":
    main()
