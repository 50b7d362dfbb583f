"""Student weights from plain or KD training checkpoints; export of a bare student checkpoint."""
import os

import torch

STUDENT_PREFIX = "student."
KD_HEADS_PREFIX = "kd_heads."
DDP_PREFIX = "module."


class StudentCheckpointError(RuntimeError):
    """A checkpoint holds keys that are neither student nor distillation-head weights; names them."""


def export_student_state(source):
    """The bare student ``model_state`` (keys as in the plain student model).

    ``source``: a Distiller, or a state dict that is plain (returned as is), KD (``student.*`` kept with the
    prefix stripped, ``kd_heads.*`` dropped) or DDP-wrapped (``module.`` stripped first).
    """
    if isinstance(source, torch.nn.Module):
        source = source.state_dict()
    state = dict(source)
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    if not any(k.startswith(STUDENT_PREFIX) for k in state):
        return state
    stray = sorted(k for k in state if not k.startswith((STUDENT_PREFIX, KD_HEADS_PREFIX)))
    if stray:
        raise StudentCheckpointError(f"KD checkpoint has keys outside '{STUDENT_PREFIX}*' / '{KD_HEADS_PREFIX}*': "
                                     f"{stray[:10]}{' ...' if len(stray) > 10 else ''}")
    return {k[len(STUDENT_PREFIX):]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}


def load_student_weights(model, ckpt_path, logger=None):
    """Strictly load a plain or KD training checkpoint into the plain student ``model`` (or a Distiller's student).

    Raises CheckpointReadError / CheckpointMismatchError (pcdet.models) naming the file and keys.
    Returns the loaded checkpoint dict (epoch, it, ... when present).
    """
    from ..models.detectors.detector3d_template import read_checkpoint

    target = getattr(model, "student", model)
    state, checkpoint = read_checkpoint(ckpt_path)
    student_state = export_student_state(state)
    if logger is not None:
        kind = "KD training" if len(student_state) != len(state) or any(k.startswith(STUDENT_PREFIX) for k in state) \
            else "plain"
        logger.info(f"==> Loading student weights from {kind} checkpoint {ckpt_path} "
                    f"(epoch {checkpoint.get('epoch', 'n/a')}, {len(student_state)} tensors)")
    target._load_state_dict(student_state, logger=logger, filename=os.fspath(ckpt_path))
    return checkpoint


def save_student_checkpoint(path, student_state, epoch=None, it=None, version=None):
    """Write ``{'model_state', 'epoch', 'it', 'version'}`` atomically (temporary file + os.replace)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"model_state": {k: v.detach().cpu() for k, v in student_state.items()}, "optimizer_state": None,
               "epoch": epoch, "it": it, "version": version}
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def build_plain_student(cfg, root_path="."):
    """The plain student detector of a (KD or plain) config, built on a data-free DatasetTemplate (eval mode)."""
    from ..datasets.dataset import DatasetTemplate
    from ..models import build_network

    geometry = DatasetTemplate(dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, training=False,
                               root_path=root_path)
    return build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=geometry)


def export_student_checkpoint(cfg, ckpt_path, out_path, logger=None):
    """Write the bare student of ``ckpt_path`` (plain or KD training checkpoint) to ``out_path``.

    The state is verified by a strict load into the plain student built from ``cfg.MODEL`` before it is written,
    so the output loads with ``load_params_from_file`` of the plain student config. Returns ``out_path``.
    """
    from ..models.detectors.detector3d_template import read_checkpoint

    state, checkpoint = read_checkpoint(ckpt_path)
    student_state = export_student_state(state)
    model = build_plain_student(cfg)
    model._load_state_dict(student_state, logger=logger, filename=os.fspath(ckpt_path))
    save_student_checkpoint(out_path, student_state, checkpoint.get("epoch"), checkpoint.get("it"),
                            checkpoint.get("version"))
    if logger is not None:
        logger.info(f"exported {len(student_state)} student tensors (dropped {len(state) - len(student_state)} "
                    f"distillation tensors) from {ckpt_path} to {out_path}")
    return out_path


def load_distiller_state(distiller, filename, optimizer=None, logger=None):
    """Resume KD training: strictly load student + kd_heads (and the optimizer state when given and present).

    Returns (it, epoch) stored in the checkpoint (0 and -1 when absent). Raises CheckpointMismatchError listing
    missing / unexpected / mis-shaped keys.
    """
    from ..models.detectors.detector3d_template import CheckpointMismatchError, read_checkpoint

    state, checkpoint = read_checkpoint(filename)
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    own = distiller.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        lines = [f"{filename}: checkpoint does not match the distiller ({len(missing)} missing, {len(unexpected)} "
                 f"unexpected, {len(mismatched)} shape mismatches)"]
        lines += [f"  missing key: {k}" for k in missing] + [f"  unexpected key: {k}" for k in unexpected]
        lines += [f"  shape mismatch: {k}: checkpoint {c} vs model {m}" for k, c, m in mismatched]
        raise CheckpointMismatchError("\n".join(lines))
    distiller.load_state_dict(state, strict=True)
    if optimizer is not None and checkpoint.get("optimizer_state") is not None:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
    if logger is not None:
        logger.info(f"==> Resumed KD training from {filename} (epoch {checkpoint.get('epoch', -1)})")
    return checkpoint.get("it", 0), checkpoint.get("epoch", -1)
