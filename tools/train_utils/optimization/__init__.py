"""Optimizers and learning-rate schedules from ``cfg.OPTIMIZATION`` (OpenPCDet keys).

OPTIMIZER: ``adam_onecycle`` (AdamW with betas (MOMS[0], 0.99) and the one-cycle schedule, as OpenPCDet's
fastai wrapper with true weight decay), ``adam``, ``adamw``, ``sgd`` (MOMENTUM).
SCHEDULER (optional): ``onecycle`` (default for adam_onecycle; LR, MOMS, DIV_FACTOR, PCT_START), ``step``
(default otherwise; DECAY_STEP_LIST in epochs, LR_DECAY, LR_CLIP) or ``cosine`` (LR_CLIP as the floor).
LR_WARMUP / WARMUP_EPOCH add a cosine warm-up to ``step`` and ``cosine``.
"""
import torch

from .learning_schedules_fastai import CosineWithWarmup, OneCycle, StepDecay

from pcdet.config_schema import check, opt, req

OPTIMIZERS = ("adam_onecycle", "adam", "adamw", "sgd")
SCHEDULERS = ("onecycle", "step", "cosine")

# every key of OPTIMIZATION that the optimizer, the schedules and the training loop read
OPTIMIZATION_SCHEMA = {
    "OPTIMIZER": req(str, choices=OPTIMIZERS), "LR": req(float), "WEIGHT_DECAY": opt(float),
    "MOMENTUM": opt(float), "MOMS": opt(list), "PCT_START": opt(float), "DIV_FACTOR": opt(float),
    "SCHEDULER": opt(str), "DECAY_STEP_LIST": opt(list), "LR_DECAY": opt(float), "LR_CLIP": opt(float),
    "LR_WARMUP": opt(bool), "WARMUP_EPOCH": opt(float), "GRAD_NORM_CLIP": opt(float),
    "BATCH_SIZE_PER_GPU": opt(int), "NUM_EPOCHS": opt(int),
    "USE_AMP": opt(bool, str, choices=(True, False, "auto")), "AMP_DTYPE": opt(str), "CHANNELS_LAST": opt(bool),
    "FIND_UNUSED_PARAMETERS": opt(bool),        # DDP (tools/train.py)
}


def _require(optim_cfg, key, who):
    if key not in optim_cfg:
        raise KeyError(f"OPTIMIZATION.{key} is required by {who}; present keys: {sorted(optim_cfg)}")
    return optim_cfg[key]


def trainable_parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model, optim_cfg):
    """Optimizer over the trainable parameters of ``model`` (a frozen teacher is not among them)."""
    check(optim_cfg, OPTIMIZATION_SCHEMA, "OPTIMIZATION", "build_optimizer")
    name = _require(optim_cfg, "OPTIMIZER", "build_optimizer")
    params = trainable_parameters(model)
    if not params:
        raise ValueError(f"build_optimizer: {type(model).__name__} has no trainable parameter")
    lr = float(_require(optim_cfg, "LR", name))
    wd = float(optim_cfg.get("WEIGHT_DECAY", 0.0))
    if name == "adam_onecycle":
        moms = optim_cfg.get("MOMS", [0.95, 0.85])
        return torch.optim.AdamW(params, lr=lr, betas=(float(moms[0]), 0.99), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(optim_cfg.get("MOMENTUM", 0.9)))
    raise ValueError(f"OPTIMIZATION.OPTIMIZER '{name}' is unknown; choose one of {OPTIMIZERS}")


def build_scheduler(optimizer, total_iters_each_epoch, total_epochs, last_epoch, optim_cfg):
    """Schedule over ``total_iters_each_epoch * total_epochs`` steps; ``last_epoch`` is the last step taken
    (-1 for a fresh run, the checkpoint's ``it`` when resuming) and sets the current lr accordingly.
    """
    total_steps = int(total_iters_each_epoch) * int(total_epochs)
    default = "onecycle" if optim_cfg.get("OPTIMIZER") == "adam_onecycle" else "step"
    name = str(optim_cfg.get("SCHEDULER", default)).lower()
    lr = float(_require(optim_cfg, "LR", name))
    warmup_steps = 0
    if optim_cfg.get("LR_WARMUP", False):
        warmup_steps = int(float(optim_cfg.get("WARMUP_EPOCH", 1)) * total_iters_each_epoch)
    div_factor = float(optim_cfg.get("DIV_FACTOR", 10.0))
    if name == "onecycle":
        return OneCycle(
            optimizer, total_steps, lr_max=lr, moms=optim_cfg.get("MOMS", [0.95, 0.85]), div_factor=div_factor,
            pct_start=float(optim_cfg.get("PCT_START", 0.4)), last_step=last_epoch,
        )
    if name == "cosine":
        return CosineWithWarmup(
            optimizer, total_steps, lr=lr, lr_clip=float(optim_cfg.get("LR_CLIP", 0.0)),
            warmup_steps=warmup_steps, div_factor=div_factor, last_step=last_epoch,
        )
    if name == "step":
        return StepDecay(
            optimizer, total_steps, total_iters_each_epoch, lr=lr,
            decay_step_list=optim_cfg.get("DECAY_STEP_LIST", []), lr_decay=float(optim_cfg.get("LR_DECAY", 0.1)),
            lr_clip=float(optim_cfg.get("LR_CLIP", 0.0)), warmup_steps=warmup_steps, div_factor=div_factor,
            last_step=last_epoch,
        )
    raise ValueError(f"OPTIMIZATION.SCHEDULER '{name}' is unknown; choose one of {SCHEDULERS}")
