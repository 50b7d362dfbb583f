"""Training checkpoints in the OpenPCDet layout, written atomically, and the search for the one to resume from.

A checkpoint is ``{'model_state', 'optimizer_state', 'epoch', 'it', 'version'}``: ``epoch`` counts the epochs
completed and ``it`` the optimizer steps taken when it was written. Files are written to a temporary name in the
same directory, fsynced and renamed with ``os.replace``, so a crash leaves either the old file or the new one,
never a truncated ``.pth``; leftover temporary files never match the ``*.pth`` patterns used to resume.
"""
import glob
import os
import pickle
import re

import torch

from pcdet.version import __version__

from .dist_utils import unwrap_model
from .file_utils import TMP_SUFFIX, atomic_write, file_mode  # noqa: F401  (file_mode: part of this API)

CKPT_PREFIX = "checkpoint_epoch_"
LATEST_NAME = "latest_model.pth"
_EPOCH_RE = re.compile(r"checkpoint_epoch_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or does not fit; the message names the file."""


def _cpu_state(state_dict):
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}


def checkpoint_state(model=None, optimizer=None, epoch=None, it=None, it_per_epoch=None):
    """The checkpoint dict for ``model`` (DDP unwrapped, tensors moved to CPU) and ``optimizer``.

    ``it_per_epoch``: optimizer steps per epoch of the run (batch size, processes and --max_iters_per_epoch fix
    it); resuming checks it, since the schedule and the position in the epoch depend on it.
    """
    model_state = _cpu_state(unwrap_model(model).state_dict()) if model is not None else None
    optim_state = optimizer.state_dict() if optimizer is not None else None
    return {
        "model_state": model_state,
        "optimizer_state": optim_state,
        "epoch": epoch,
        "it": it,
        "it_per_epoch": it_per_epoch,
        "version": f"pcdet+{__version__}",
    }


def remove_stale_temp_files(ckpt_dir):
    """Delete the temporary files of interrupted saves (``*.pth.*.tmp``) in ``ckpt_dir``; return them.

    Called when a run starts, before it writes any checkpoint of its own."""
    doomed = glob.glob(os.path.join(str(ckpt_dir), "*.pth.*" + TMP_SUFFIX))
    for f in doomed:
        os.remove(f)
    return sorted(doomed)


def check_resume_schedule(filename, it, epoch, saved_it_per_epoch, it_per_epoch):
    """Refuse to resume when the run's iterations per epoch differ from the checkpoint's.

    The one-cycle / step schedules are functions of the global step over ``it_per_epoch * epochs`` steps, and the
    batches to skip in a mid-epoch checkpoint are counted in iterations: with another batch size (or process
    count, or --max_iters_per_epoch) neither can be continued. Checkpoints written before ``it_per_epoch`` was
    stored are checked through ``it / epoch`` when they end an epoch. Raises CheckpointError.
    """
    saved = saved_it_per_epoch
    if saved is None and epoch and it % epoch == 0 and epoch_of(filename) == epoch:
        saved = it // epoch
    if saved is None or int(saved) == int(it_per_epoch):
        return
    raise CheckpointError(
        f"{filename}: cannot resume: it was trained with {saved} iterations per epoch (epoch {epoch}, iteration "
        f"{it}), this run has {it_per_epoch} (another --batch_size, number of processes or "
        f"--max_iters_per_epoch); its learning-rate schedule and its place in the epoch cannot be continued. "
        f"Resume with the original settings, or start a new run (another --extra_tag, or --pretrained_model "
        f"{filename} to start from its weights)")


def save_checkpoint(state, filename):
    """Write ``state`` to ``filename`` atomically (temp file in the same dir, fsync, ``os.replace``).

    ``filename`` gets a ``.pth`` suffix when it has none (OpenPCDet passes names without it).
    Returns the final path.
    """
    filename = str(filename)
    if not filename.endswith(".pth"):
        filename += ".pth"
    return atomic_write(filename, lambda f: torch.save(state, f))


def epoch_of(path):
    """Epoch number in a ``checkpoint_epoch_N.pth`` name, or None for other names."""
    match = _EPOCH_RE.search(os.path.basename(str(path)))
    return int(match.group(1)) if match else None


def list_epoch_checkpoints(ckpt_dir):
    """``checkpoint_epoch_N.pth`` files of ``ckpt_dir`` sorted by N."""
    files = glob.glob(os.path.join(str(ckpt_dir), CKPT_PREFIX + "*.pth"))
    files = [f for f in files if epoch_of(f) is not None]
    return sorted(files, key=epoch_of)


def prune_checkpoints(ckpt_dir, max_keep):
    """Delete the oldest ``checkpoint_epoch_N.pth`` files so that at most ``max_keep`` remain; return the deleted."""
    files = list_epoch_checkpoints(ckpt_dir)
    if max_keep is None or max_keep <= 0 or len(files) <= max_keep:
        return []
    doomed = files[: len(files) - max_keep]
    for f in doomed:
        os.remove(f)
    return doomed


def load_checkpoint(filename, map_location="cpu"):
    """Read a checkpoint dict; CheckpointError names the file when it is unreadable or lacks ``model_state``."""
    filename = str(filename)
    if not os.path.isfile(filename):
        raise CheckpointError(f"checkpoint not found: {filename}")
    try:
        ckpt = torch.load(filename, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{filename}: cannot read checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{filename}: not a training checkpoint (needs 'model_state'; has {keys})")
    return ckpt


def _progress(ckpt):
    return (ckpt.get("it") or 0, ckpt.get("epoch") or 0)


def find_resume_checkpoint(ckpt_dir, logger=None):
    """Path of the checkpoint in ``ckpt_dir`` with the most training progress that loads, or None.

    Candidates are the newest loadable ``checkpoint_epoch_N.pth`` and ``latest_model.pth`` (whichever has more
    iterations wins); temporary files are ignored, and a file that fails to load is skipped with a warning
    (it cannot be a complete checkpoint).
    """
    def loadable(path):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            if logger is not None:
                logger.warning(f"skipping unreadable checkpoint while looking for one to resume: {exc}")
            return None

    best, best_key = None, None
    for path in reversed(list_epoch_checkpoints(ckpt_dir)):
        ckpt = loadable(path)
        if ckpt is not None:
            best, best_key = path, _progress(ckpt)
            break
    latest = os.path.join(str(ckpt_dir), LATEST_NAME)
    if os.path.isfile(latest):
        ckpt = loadable(latest)
        if ckpt is not None and (best_key is None or _progress(ckpt) > best_key):
            best = latest
    return best


def load_for_resume(model, optimizer, filename, map_location="cpu", logger=None):
    """Load model (strict) and optimizer state from a training checkpoint; return ``(it, epoch)``.

    The learning-rate schedule is a function of the global step, so restoring ``it`` restores it exactly.
    """
    ckpt = load_checkpoint(filename, map_location=map_location)
    target = unwrap_model(model)
    try:
        target.load_state_dict(ckpt["model_state"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{filename}: model state does not fit {type(target).__name__}: {exc}") from exc
    if optimizer is not None:
        if ckpt.get("optimizer_state") is None:
            raise CheckpointError(f"{filename}: has no 'optimizer_state' to resume from")
        optimizer.load_state_dict(ckpt["optimizer_state"])
    it, epoch = ckpt.get("it"), ckpt.get("epoch")
    if it is None or epoch is None:
        raise CheckpointError(f"{filename}: lacks 'it' or 'epoch' (it={it}, epoch={epoch})")
    if logger is not None:
        logger.info(f"resumed from {filename}: epoch {epoch}, iteration {it} ({ckpt.get('version')})")
    return int(it), int(epoch)
