"""Small helpers shared by datasets, models and tools (OpenPCDet names and semantics)."""
import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist


def check_numpy_to_torch(x):
    """Return ``(tensor, was_numpy)``: a numpy array becomes a float tensor, a tensor is returned as is."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x).float(), True
    return x, False


def limit_period(val, offset=0.5, period=np.pi):
    """Wrap angles into ``[-offset * period, (1 - offset) * period)``; numpy array or tensor, any shape."""
    val, is_numpy = check_numpy_to_torch(val)
    ans = val - torch.floor(val / period + offset) * period
    return ans.numpy() if is_numpy else ans


def rotate_points_along_z(points, angle):
    """Rotate points about +z by ``angle`` (counter-clockwise seen from above, x towards y).

    Args:
        points: (B, N, 3 + C) numpy array or tensor.
        angle: (B,) radians, one angle per batch entry.
    Returns:
        (B, N, 3 + C), same type as ``points``; extra channels are copied unchanged.
    """
    points, is_numpy = check_numpy_to_torch(points)
    angle, _ = check_numpy_to_torch(angle)
    if points.dim() != 3 or points.shape[-1] < 3:
        raise ValueError(f"rotate_points_along_z: points must be (B, N, 3 + C), got {tuple(points.shape)}")
    angle = angle.to(points.dtype).reshape(-1)
    if angle.numel() != points.shape[0]:
        raise ValueError(
            f"rotate_points_along_z: {angle.numel()} angles for a batch of {points.shape[0]} point sets")
    cosa, sina = torch.cos(angle), torch.sin(angle)
    zeros, ones = torch.zeros_like(angle), torch.ones_like(angle)
    # Row-vector convention: p' = p @ R with R = [[c, s, 0], [-s, c, 0], [0, 0, 1]].
    rot = torch.stack((cosa, sina, zeros, -sina, cosa, zeros, zeros, zeros, ones), dim=1).view(-1, 3, 3)
    rotated = torch.matmul(points[:, :, 0:3], rot)
    out = torch.cat((rotated, points[:, :, 3:]), dim=-1)
    return out.numpy() if is_numpy else out


def mask_points_by_range(points, limit_range):
    """Boolean (N,) mask of points whose x and y lie inside ``limit_range`` (6,) ``[x0, y0, z0, x1, y1, z1]``.

    As in OpenPCDet only x and y are tested (bounds inclusive); the voxelizer drops points outside the z range.
    """
    return ((points[:, 0] >= limit_range[0]) & (points[:, 0] <= limit_range[3])
            & (points[:, 1] >= limit_range[1]) & (points[:, 1] <= limit_range[4]))


def drop_info_with_name(info, name):
    """Copy of the annotation dict ``info`` without the entries whose ``info['name']`` equals ``name``.

    Every value must be an array indexed by object along axis 0 (e.g. ``annos`` of a KITTI info).
    """
    keep = np.array([i for i, n in enumerate(info["name"]) if n != name], dtype=np.int64)
    return {key: np.asarray(val)[keep] for key, val in info.items()}


def keep_arrays_by_name(gt_names, used_classes):
    """(K,) int64 indices of the entries of ``gt_names`` that are in ``used_classes``."""
    return np.array([i for i, n in enumerate(gt_names) if n in used_classes], dtype=np.int64)


def get_dist_info():
    """``(rank, world_size)`` of torch.distributed, or ``(0, 1)`` when it is not available or not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def create_logger(log_file=None, rank=0, log_level=logging.INFO):
    """Logger ``pcdet`` writing to the console and, when given, to ``log_file``; ranks > 0 only log errors."""
    logger = logging.getLogger("pcdet")
    logger.setLevel(log_level if rank == 0 else logging.ERROR)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s  %(levelname)5s  %(message)s")
    console = logging.StreamHandler()
    console.setLevel(log_level if rank == 0 else logging.ERROR)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if log_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(filename=log_file)
        file_handler.setLevel(log_level if rank == 0 else logging.ERROR)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    return logger


def set_random_seed(seed):
    """Seed python, numpy and torch (all devices) and make cuDNN deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def worker_init_fn(worker_id, seed=None, rank=0):
    """DataLoader ``worker_init_fn``: give every worker its own python, numpy and torch random stream.

    With ``seed`` the stream is a function of (seed, rank, epoch, worker id), the epoch being the one the
    training sampler stamped on the dataset (``pcdet.datasets.EPOCH_ATTR``; 0 otherwise): reproducible, different
    every epoch, and the same after a resume. Without ``seed`` it derives from torch's per-worker seed, so
    forked workers never share the numpy state inherited from the parent.
    """
    if seed is None:
        worker_seed = torch.initial_seed() % (2 ** 32)
    else:
        info = torch.utils.data.get_worker_info()
        epoch = int(getattr(info.dataset, "_loader_epoch", 0)) if info is not None else 0
        worker_seed = int(np.random.SeedSequence([int(seed), int(rank), epoch, int(worker_id)]).generate_state(1)[0])
        torch.manual_seed(worker_seed)
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def get_pad_params(desired_size, cur_size):
    """``(0, desired_size - cur_size)``: the ``np.pad`` width that pads axis 0 at the end up to ``desired_size``."""
    if desired_size < cur_size:
        raise ValueError(f"get_pad_params: current size {cur_size} exceeds the desired size {desired_size}")
    return 0, desired_size - cur_size


class AverageMeter:
    """Running average: ``update(val, n)`` then read ``val`` (last), ``sum``, ``count`` and ``avg``."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count if self.count > 0 else 0.0


# ---------------------------------------------------------------------- mixed precision
AMP_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def amp_dtype(name, who):
    """Map a config string ('bf16', 'fp16', ...) to a torch dtype; an unknown name raises naming ``who``."""
    key = str(name).lower()
    if key not in AMP_DTYPES:
        raise ValueError(f"{who}: unknown mixed-precision dtype '{name}' (use one of {sorted(AMP_DTYPES)})")
    return AMP_DTYPES[key]


CPU_BF16_ENV = "PCDET_CPU_BF16"


def cpu_has_native_bf16():
    """Whether this CPU runs bf16 convolutions and matmuls natively (AVX512-BF16 or AMX, as oneDNN reports it).

    ``PCDET_CPU_BF16=off`` in the environment answers False on any CPU, so that 'auto' trains in float32 as on a
    CPU without native bf16 (the benchmark's ``--cpu_kind fp32`` sets it: runs that pair with that kind's runs).

    Without it (an AVX2-only CPU) bf16 autocast falls back to slow reference kernels: measured here on a 2-core
    AMD EPYC (AVX2), a PointPillars training step took 6.3 s under bf16 autocast against 1.4 s in float32.
    """
    setting = os.environ.get(CPU_BF16_ENV, "auto").strip().lower()
    if setting not in ("auto", "off", ""):
        raise ValueError(f"{CPU_BF16_ENV}: expected 'off' or 'auto', got {os.environ[CPU_BF16_ENV]!r}")
    if setting == "off":
        return False
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    # oneDNN also reports bf16 on AVX512-core CPUs, where it is emulated: ask for the instructions themselves
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        return onednn
    return onednn and ("avx512_bf16" in flags or "amx_bf16" in flags)


def resolve_amp(value, device_type, dtype, who="OPTIMIZATION.USE_AMP"):
    """Whether to train under autocast for the config value ``value`` (True, False or 'auto').

    'auto': on CUDA always; on CPU only for bf16 on a CPU with native bf16 (``cpu_has_native_bf16``), where it is
    faster; elsewhere float32. True / False are obeyed as given. Any other value raises naming ``who``.
    """
    if isinstance(value, str) and value.lower() == "auto":
        if device_type == "cuda":
            return True
        return device_type == "cpu" and dtype == torch.bfloat16 and cpu_has_native_bf16()
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ValueError(f"{who}: expected true, false or 'auto', got {value!r}")


def to_float32(obj):
    """Copy of ``obj`` (tensor, or dict / list / tuple of them) with every fp16 / bf16 tensor cast to float32.

    Used where mixed-precision outputs enter fp32-only work (detection losses, distillation losses).
    """
    if torch.is_tensor(obj):
        return obj.float() if obj.dtype in (torch.float16, torch.bfloat16) else obj
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float32(v) for v in obj)
    if hasattr(obj, "features") and hasattr(obj, "replace_feature") and torch.is_tensor(obj.features):
        return obj.replace_feature(to_float32(obj.features))  # spconv SparseConvTensor
    return obj


def autocast_off(tensor_or_module):
    """A context that disables autocast for the device of a tensor or a module's first parameter."""
    device = tensor_or_module.device if torch.is_tensor(tensor_or_module) else \
        next(tensor_or_module.parameters(), torch.empty(0)).device
    return torch.autocast(device_type=device.type, enabled=False)


def to_channels_last(module):
    """Put the 4-D parameters of ``module`` (2D conv weights) in channels_last memory format, in place.

    ``nn.Module.to(memory_format=...)`` refuses models that also hold 5-D (3D / sparse conv) weights; this touches
    only 4-D tensors. Values, names and shapes are unchanged (state_dicts load either way). Returns ``module``.
    """
    for param in module.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return module
