"""Model entry points: ``build_network``, ``load_data_to_device`` and ``model_fn_decorator``."""
from collections import namedtuple

import numpy as np
import torch


# Keys whose values stay as they are (strings, calibration objects, shapes used on the host).
KEEP_ON_HOST_KEYS = ("frame_id", "metadata", "calib", "image_shape", "image_paths", "ori_shape", "img_process_infos")


def build_network(model_cfg, num_class, dataset):
    """Build the detector ``model_cfg.NAME`` from the DETECTORS registry.

    Args:
        model_cfg: the ``MODEL`` section of a config.
        num_class: int.
        dataset: a DatasetTemplate (or any object with its model-facing attributes).
    """
    from .detectors import DETECTORS

    return DETECTORS.get(model_cfg.NAME)(model_cfg=model_cfg, num_class=num_class, dataset=dataset)


def _to_device(key, val, device):
    if isinstance(val, torch.Tensor):
        return val.to(device)
    if isinstance(val, np.ndarray):
        if val.dtype.kind in ("U", "S", "O"):
            return val
        tensor = torch.from_numpy(val)
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.to(device)
    if isinstance(val, dict):
        return {k: (v if k in KEEP_ON_HOST_KEYS else _to_device(k, v, device)) for k, v in val.items()}
    return val


def load_data_to_device(batch_dict, device=None):
    """Move the numpy arrays and tensors of ``batch_dict`` to ``device`` in place and return it.

    Floating arrays become float32 tensors, integer and bool arrays keep their dtype; string
    arrays and the host-side keys (frame_id, metadata, calib, image_shape) stay untouched; nested dicts such
    as ``kd_teacher_inputs`` are converted recursively.

    Args:
        batch_dict: dict from ``DatasetTemplate.collate_batch``.
        device: torch.device or str; default CPU.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    for key, val in batch_dict.items():
        if key in KEEP_ON_HOST_KEYS:
            continue
        batch_dict[key] = _to_device(key, val, device)
    return batch_dict


def _model_device(model):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_fn_decorator():
    """Return ``model_func(model, batch_dict) -> ModelReturn(loss, tb_dict, disp_dict)`` for the train loop.

    The batch is moved to the model's device; the model's ``global_step`` is advanced when it has one.
    """
    ModelReturn = namedtuple("ModelReturn", ["loss", "tb_dict", "disp_dict"])

    def model_func(model, batch_dict):
        load_data_to_device(batch_dict, _model_device(model))
        ret_dict, tb_dict, disp_dict = model(batch_dict)
        loss = ret_dict["loss"].mean()
        target = model.module if hasattr(model, "module") else model
        if hasattr(target, "update_global_step"):
            target.update_global_step()
        return ModelReturn(loss, tb_dict, disp_dict)

    return model_func
