"""torch.distributed helpers: process-group set-up for torchrun and slurm, rank info, gathers, DDP wrapping.

Backend: ``nccl`` when the job trains on CUDA, ``gloo`` on CPU. Every process group is created with a timeout so
that a rank waiting on a dead peer raises instead of blocking forever; ``destroy_dist`` tears it down on exit.
"""
import datetime
import hashlib
import os
import random
import subprocess

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

DEFAULT_TIMEOUT_S = 1800


class DistSetupError(RuntimeError):
    """The launcher's environment does not describe a distributed job; the message names the variable."""


def _env_int(name, environ=None):
    environ = os.environ if environ is None else environ
    if name not in environ:
        raise DistSetupError(
            f"environment variable {name} is not set: launch with torchrun (tools/scripts/dist_train.sh) "
            f"or srun (tools/scripts/slurm_train.sh), or use --launcher none"
        )
    try:
        return int(environ[name])
    except ValueError as exc:
        raise DistSetupError(f"environment variable {name}={environ[name]!r} is not an integer") from exc


def default_backend(device):
    """``'nccl'`` for a CUDA device, ``'gloo'`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _init_group(backend, rank, world_size, timeout_s):
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def init_dist_pytorch(tcp_port=None, local_rank=None, backend="gloo", timeout_s=DEFAULT_TIMEOUT_S):
    """Join the process group described by torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    ``tcp_port`` is used only when MASTER_PORT is unset, ``local_rank`` only when LOCAL_RANK is unset.
    On ``nccl`` the process binds to GPU ``local_rank % device_count``. Returns ``(world_size, rank)``.
    """
    rank = _env_int("RANK")
    world_size = _env_int("WORLD_SIZE")
    if "LOCAL_RANK" in os.environ:
        local_rank = _env_int("LOCAL_RANK")
    elif local_rank is None:
        raise DistSetupError("environment variable LOCAL_RANK is not set and no --local_rank was given")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if tcp_port is None:
            raise DistSetupError("environment variable MASTER_PORT is not set and no --tcp_port was given")
        os.environ["MASTER_PORT"] = str(tcp_port)
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    _init_group(backend, rank, world_size, timeout_s)
    return world_size, rank


def _slurm_master_addr(node_list):
    try:
        out = subprocess.run(["scontrol", "show", "hostname", node_list], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DistSetupError(f"cannot expand SLURM_NODELIST={node_list!r} with scontrol: {exc}") from exc
    hosts = out.stdout.split()
    if not hosts:
        raise DistSetupError(f"scontrol returned no host for SLURM_NODELIST={node_list!r}")
    return hosts[0]


def init_dist_slurm(tcp_port, local_rank=None, backend="gloo", timeout_s=DEFAULT_TIMEOUT_S):
    """Join the process group of an ``srun`` job (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODELIST).

    The first host of the node list is the master; ``tcp_port`` its port. Exports the torchrun variables so that
    later code sees one convention. Returns ``(world_size, rank)``.
    """
    rank = _env_int("SLURM_PROCID")
    world_size = _env_int("SLURM_NTASKS")
    local_rank = _env_int("SLURM_LOCALID") if "SLURM_LOCALID" in os.environ else (local_rank or 0)
    if "MASTER_ADDR" not in os.environ:
        if "SLURM_NODELIST" not in os.environ:
            raise DistSetupError("environment variable SLURM_NODELIST is not set (needed to find the master node)")
        os.environ["MASTER_ADDR"] = _slurm_master_addr(os.environ["SLURM_NODELIST"])
    os.environ.setdefault("MASTER_PORT", str(tcp_port))
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(local_rank)
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    _init_group(backend, rank, world_size, timeout_s)
    return world_size, rank


def resolve_device(name="auto"):
    """``torch.device`` for ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DistSetupError("--device cuda was requested but torch.cuda.is_available() is False")
    if name not in ("cpu", "cuda"):
        raise DistSetupError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def init_launcher(launcher, device, tcp_port=None, local_rank=None, timeout_s=DEFAULT_TIMEOUT_S):
    """Set up the process group for ``--launcher`` none|pytorch|slurm.

    Returns ``(distributed, world_size, rank, device)``; on CUDA the device gets this rank's GPU index.
    """
    if launcher == "none":
        return False, 1, 0, device
    backend = default_backend(device)
    if launcher == "pytorch":
        world_size, rank = init_dist_pytorch(tcp_port, local_rank, backend, timeout_s)
    elif launcher == "slurm":
        world_size, rank = init_dist_slurm(tcp_port, local_rank, backend, timeout_s)
    else:
        raise DistSetupError(f"--launcher must be none, pytorch or slurm, got {launcher!r}")
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return True, world_size, rank, device


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_dist_info():
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier():
    if is_dist():
        dist.barrier()


def destroy_dist():
    """Leave the process group if one exists (safe to call more than once).

    All ranks meet at a barrier first, so no rank tears its gloo connections down while a peer may still be reading
    from them.
    """
    if is_dist():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def all_gather_object(obj):
    """List of ``obj`` from every rank, in rank order (``[obj]`` outside a process group)."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """``obj`` of rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def set_rank_seed(seed, rank):
    """Seed python, numpy and torch with ``seed + rank`` so ranks draw different augmentations."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)
    return s


def unwrap_model(model):
    """The module inside a DistributedDataParallel / DataParallel wrapper (or ``model`` itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def convert_sync_bn(model, device, logger=None):
    """Replace BatchNorm layers by SyncBatchNorm on CUDA; on other devices return ``model`` unchanged and log why."""
    if torch.device(device).type != "cuda":
        if logger is not None:
            logger.info("--sync_bn ignored: SyncBatchNorm needs CUDA (nccl); BatchNorm statistics stay per rank")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model, device, find_unused_parameters=False):
    """DistributedDataParallel around ``model`` on ``device`` (device_ids only for CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[index], output_device=index, find_unused_parameters=find_unused_parameters
        )
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def model_digest(model, buffers=False):
    """SHA-1 over the names and bytes of the unwrapped model's parameters (and buffers when ``buffers``).

    Ranks of a DDP job hold bit-identical parameters, so their digests are equal; any drift changes it.
    Buffers are left out by default: BatchNorm running statistics are updated locally by each rank's last
    forward. A frozen teacher is digested with its buffers: nothing may change them.
    """
    sha = hashlib.sha1()
    module = unwrap_model(model)
    named = list(module.named_parameters()) + (list(module.named_buffers()) if buffers else [])
    for name, tensor in named:
        if torch.is_tensor(tensor):
            sha.update(name.encode())
            sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
