"""YAML configs: ``_BASE_CONFIG_`` inheritance, EasyDict access and ``--set`` overrides.

There is no global config object: every function returns or takes the config explicitly.

``_BASE_CONFIG_`` may appear at any mapping level. Its path is resolved relative to the directory of the
including file; for OpenPCDet-style paths such as ``cfgs/dataset_configs/kitti_dataset.yaml`` the ancestors
of that directory are tried too, so configs written for OpenPCDet's ``tools/`` work unchanged.
The keys next to ``_BASE_CONFIG_`` override the base recursively.
"""
import copy
import os
import re
from pathlib import Path

import yaml
from easydict import EasyDict


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3``, ``3E5``, ``-2.5e+2`` and ``.5`` are numbers (YAML 1.1,
    PyYAML's default, reads an exponent without a dot as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text_or_stream):
    """``yaml.safe_load`` with YAML 1.2 floats (see ``_Loader``)."""
    return yaml.load(text_or_stream, Loader=_Loader)  # noqa: S506  a SafeLoader subclass

BASE_KEY = "_BASE_CONFIG_"


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


def _resolve_base(base, including_file):
    base = Path(base)
    if base.is_absolute():
        candidates = [base]
    else:
        here = Path(including_file).resolve().parent
        candidates = [here / base] + [p / base for p in here.parents]
    for cand in candidates:
        if cand.is_file():
            return cand
    raise ConfigError(
        f"{including_file}: {BASE_KEY} '{base}' not found (looked in {candidates[0].parent} and its parents)"
    )


def merge_dicts(base, override):
    """Recursively merge ``override`` into a deep copy of ``base`` and return it."""
    out = copy.deepcopy(base)
    for key, val in override.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def _expand(node, source_file):
    if isinstance(node, list):
        return [_expand(v, source_file) for v in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    base_path = node.pop(BASE_KEY, None)
    expanded = {k: _expand(v, source_file) for k, v in node.items()}
    if base_path is None:
        return expanded
    base_file = _resolve_base(base_path, source_file)
    base = load_yaml(base_file)
    return merge_dicts(base, expanded)


def load_yaml(path):
    """Load one YAML file with its ``_BASE_CONFIG_`` chain expanded, as a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "r") as f:
            raw = yaml_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return _expand(raw, path)


def key_origins(path, prefix="", out=None):
    """Dotted path (``MODEL.VFE.NAME``; list items as ``[i]``) -> the file of the ``_BASE_CONFIG_`` chain of
    ``path`` that set it last, for error messages (``pcdet.config_schema``)."""
    out = {} if out is None else out
    with open(path, "r") as f:
        raw = yaml_load(f) or {}
    out.setdefault(prefix, os.path.normpath(str(path)))
    _walk_origins(raw, Path(path), prefix, out)
    return out


def _walk_origins(node, source_file, prefix, out):
    if not isinstance(node, dict):
        return
    base = node.get(BASE_KEY)
    if base is not None:
        key_origins(_resolve_base(base, source_file), prefix, out)
    for key, val in node.items():
        if key == BASE_KEY:
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if not (isinstance(val, dict) and dotted in out):   # a mapping merges into its base's: keep both origins
            for stale in [k for k in out if k.startswith(dotted + ".") or k.startswith(dotted + "[")]:
                del out[stale]
        out[dotted] = os.path.normpath(str(source_file))
        _walk_origins(val, source_file, dotted, out)


def cfg_from_yaml_file(cfg_file, extra=None):
    """Return the EasyDict config of ``cfg_file`` (bases expanded), merged with the dict ``extra``.

    Every mapping of the result knows the file each of its keys came from (``pcdet.config_schema``), so a schema
    error names it; keys from ``extra`` name ``cfg_file``.
    """
    from .config_schema import annotate_origins

    data = load_yaml(cfg_file)
    if extra:
        data = merge_dicts(data, extra)
    cfg = EasyDict(data)
    annotate_origins(cfg, key_origins(cfg_file))
    return cfg


def _typed_value(key, old, text):
    try:
        new = yaml_load(text) if isinstance(text, str) else text
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value '{text}': {exc}") from exc
    if old is None or new is None:
        return new
    if key == "OPTIMIZATION.USE_AMP" and (str(new).lower() == "auto" or old == "auto"):
        if str(new).lower() == "auto" or isinstance(new, bool):
            return "auto" if str(new).lower() == "auto" else new
        raise ConfigError(f"--set {key}: expected true, false or auto, got '{text}'")
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
        raise ConfigError(f"--set {key}: expected {type(old).__name__}, got '{text}'")
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(new)
    if isinstance(old, str) and not isinstance(new, str):
        return str(text)
    if type(old) is not type(new) and not (isinstance(old, dict) and isinstance(new, dict)):
        raise ConfigError(
            f"--set {key}: expected {type(old).__name__} (current {old!r}), got {type(new).__name__} '{text}'"
        )
    return EasyDict(new) if isinstance(new, dict) else new


# optional keys that configs may leave out; ``--set`` accepts them (typed by the default) although absent
OPTIONAL_KEYS = {
    "OPTIMIZATION.USE_AMP": False,          # mixed precision (fp16 + loss scaling on CUDA, bf16 on CPU); or 'auto'
                                            # (CUDA, and CPUs with native bf16: common_utils.resolve_amp)
    "OPTIMIZATION.AMP_DTYPE": "bf16",       # 'bf16' or 'fp16'
    "OPTIMIZATION.CHANNELS_LAST": False,    # 2D conv weights in channels_last memory format
    "OPTIMIZATION.GRAD_NORM_CLIP": 10.0,
    "OPTIMIZATION.FIND_UNUSED_PARAMETERS": False,   # DDP's find_unused_parameters (default: True for KD runs)
}


def cfg_from_list(cfg_list, cfg):
    """Apply ``['A.B.C', 'value', ...]`` overrides in place; unknown keys and wrong types raise ConfigError.

    Keys of ``OPTIONAL_KEYS`` may be set although the config leaves them out.
    """
    if len(cfg_list) % 2 != 0:
        raise ConfigError(f"--set needs KEY VALUE pairs, got {len(cfg_list)} items: {cfg_list}")
    for key, text in zip(cfg_list[0::2], cfg_list[1::2]):
        node = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"--set {key}: no key '{'.'.join(parts[:depth + 1])}' in the config")
            node = node[part]
        leaf = parts[-1]
        if isinstance(node, dict) and leaf not in node and key in OPTIONAL_KEYS:
            node[leaf] = OPTIONAL_KEYS[key]
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"--set {key}: no key '{key}' in the config")
        node[leaf] = _typed_value(key, node[leaf], text)
    return cfg


def cfg_to_dict(cfg):
    """Plain-dict copy of an EasyDict (for checkpoints and YAML dumps)."""
    if isinstance(cfg, dict):
        return {k: cfg_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [cfg_to_dict(v) for v in cfg]
    return cfg


def log_config(cfg, logger, prefix="cfg"):
    """Log every leaf as ``prefix.KEY: value``."""
    for key, val in cfg.items():
        if isinstance(val, dict):
            log_config(val, logger, prefix=f"{prefix}.{key}")
        else:
            logger.info(f"{prefix}.{key}: {val}")
