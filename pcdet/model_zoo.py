"""The shipped model zoo: teacher checkpoints tagged with the data and config they were trained with.

A zoo checkpoint is an OpenPCDet checkpoint (``model_state``, ``epoch``, no optimizer state) with one more key,
``zoo``, the provenance tag::

    {"name", "family", "generator_version",          # pcdet.datasets.synthetic.GENERATOR_VERSION at training
     "data": {...},                                   # data_signature() of the training dataset
     "config_hash": "sha256 hex",                     # config_hash() of the training config
     "config": {...},                                 # the hashed sections, to name what differs
     "epochs", "dtype", ...}

``verify_zoo_tag`` refuses (``ZooMismatchError``) a tagged checkpoint used with another generator version, another
dataset (seed, frame counts, split lists) or a config whose hashed sections differ, naming the checkpoint, the
config file, the data folder and the first differing keys. Untagged checkpoints (OpenPCDet's, a user's own) are
not checked. ``model_zoo/manifest.json`` lists the shipped entries; ``tools/benchmark_kd.py --retrain-teachers``
rebuilds them.
"""
import copy
import hashlib
import json
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = REPO_ROOT / "model_zoo"
MANIFEST = ZOO_DIR / "manifest.json"
TAG_KEY = "zoo"
# config sections that decide what a checkpoint is; paths are dropped (the same data may live anywhere)
HASHED_SECTIONS = ("CLASS_NAMES", "DATA_CONFIG", "MODEL", "OPTIMIZATION")
_PATH_KEYS = {"DATA_PATH", "ROOT_DIR"}
_SPLIT_FILES = ("train", "val", "tune")


class ZooError(RuntimeError):
    """A zoo checkpoint or manifest cannot be used; the message names the file and what is wrong."""


class ZooMismatchError(ZooError):
    """A tagged checkpoint does not match the data or the config in use."""


def _plain(node):
    """EasyDict / tuples -> plain JSON-able dicts and lists, path keys dropped."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items() if k not in _PATH_KEYS}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def hashed_config(cfg):
    """The sections of ``cfg`` that identify a trained model (CLASS_NAMES, DATA_CONFIG, MODEL, OPTIMIZATION),
    as plain data without path keys and without the evaluation split (``DATA_SPLIT.test``, ``INFO_PATH.test``):
    evaluating on another split does not change what was trained."""
    missing = [s for s in HASHED_SECTIONS if s not in cfg]
    if missing:
        raise ZooError(f"config lacks the sections {missing} needed for its hash")
    out = {s: _plain(copy.deepcopy(cfg[s])) for s in HASHED_SECTIONS}
    for key in ("DATA_SPLIT", "INFO_PATH"):
        if isinstance(out["DATA_CONFIG"].get(key), dict):
            out["DATA_CONFIG"][key].pop("test", None)
    return out


def config_hash(cfg):
    """sha256 of the canonical JSON of ``hashed_config(cfg)``."""
    text = json.dumps(hashed_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def data_signature(data_root):
    """What identifies a synthetic dataset: its ``synthetic_meta.json`` (generator version, seed, preset, frame
    counts) and the sha256 of each ImageSets split list. Raises ZooError when the folder is not a generated set."""
    root = Path(data_root)
    meta_file = root / "synthetic_meta.json"
    if not meta_file.is_file():
        raise ZooError(f"{root}: no synthetic_meta.json; zoo teachers are trained on the generated synthetic "
                       f"dataset (python -m pcdet.datasets.synthetic.generate) and checked against it")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise ZooError(f"{meta_file}: unreadable ({exc})") from exc
    sig = {k: meta.get(k) for k in ("generator_version", "seed", "preset", "num_training_frames", "num_train",
                                    "num_val", "num_tune")}
    for split in _SPLIT_FILES:
        path = root / "ImageSets" / f"{split}.txt"
        sig[f"{split}_ids_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return sig


def _diff(a, b, prefix="", out=None, limit=8):
    """Dotted keys where the nested values ``a`` and ``b`` differ (at most ``limit``)."""
    out = [] if out is None else out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if len(out) >= limit:
                break
            _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.", out, limit)
    elif a != b:
        out.append(f"{prefix[:-1]}: {a!r} (trained) vs {b!r} (in use)")
    return out


def make_tag(name, family, cfg, data_root, epochs, dtype, extra=None):
    """The provenance tag of a checkpoint trained with ``cfg`` on the dataset at ``data_root``."""
    from .datasets.synthetic import GENERATOR_VERSION

    data = data_signature(data_root)
    if data["generator_version"] != GENERATOR_VERSION:
        raise ZooError(f"{data_root}: generated by version {data['generator_version']}, this code is "
                       f"{GENERATOR_VERSION}; regenerate the data before tagging a checkpoint trained on it")
    tag = {"name": name, "family": family, "generator_version": GENERATOR_VERSION, "data": data,
           "config_hash": config_hash(cfg), "config": hashed_config(cfg), "epochs": int(epochs), "dtype": dtype}
    tag.update(extra or {})
    return tag


def verify_zoo_tag(checkpoint, cfg, cfg_file, data_root, ckpt_file, sections=HASHED_SECTIONS):
    """Refuse a tagged checkpoint whose generator version, dataset or config differ from those in use.

    ``checkpoint``: the loaded dict; ``cfg``: the config the model is built from (``cfg_file`` names it);
    ``data_root``: the dataset folder in use; ``sections``: the config sections compared (all of them, so the
    whole config hash, for a teacher; evaluation passes CLASS_NAMES, DATA_CONFIG and MODEL, as its batch size
    and epoch count are its own). Returns the tag (None for an untagged checkpoint).
    """
    tag = checkpoint.get(TAG_KEY) if isinstance(checkpoint, dict) else None
    if tag is None:
        return None
    from .datasets.synthetic import GENERATOR_VERSION

    where = f"zoo checkpoint {ckpt_file} ('{tag.get('name')}')"
    if tag.get("generator_version") != GENERATOR_VERSION:
        raise ZooMismatchError(f"{where} was trained on synthetic data of generator version "
                               f"{tag.get('generator_version')}, this code generates version {GENERATOR_VERSION}; "
                               f"rebuild the zoo (tools/benchmark_kd.py --preset cpu --retrain-teachers)")
    try:
        in_use = data_signature(data_root)
    except ZooError as exc:
        raise ZooMismatchError(f"{where}: {exc}") from exc
    data_diff = _diff(tag.get("data", {}), in_use)
    if data_diff:
        raise ZooMismatchError(f"{where} was trained on another dataset than {data_root}: " + "; ".join(data_diff)
                               + ". Generate the dataset the zoo expects (model_zoo/README.md) or retrain.")
    trained = {s: tag.get("config", {}).get(s, "<absent>") for s in sections}
    in_use = {s: hashed_config(cfg)[s] for s in sections}
    full = set(sections) == set(HASHED_SECTIONS)
    if trained != in_use or (full and tag.get("config_hash") != config_hash(cfg)):
        raise ZooMismatchError(f"{where} was trained with another config than {cfg_file} (config hash "
                               f"{str(tag.get('config_hash'))[:12]} vs {config_hash(cfg)[:12]}): "
                               + "; ".join(_diff(trained, in_use) or ["hash differs"]))
    return tag


def export_zoo_checkpoint(ckpt_file, cfg, cfg_file, data_root, out_file, name, family, fp16=False, extra=None):
    """Write a zoo checkpoint: the model weights of ``ckpt_file`` (no optimizer state; floating tensors cast to
    fp16 with ``fp16``, BatchNorm statistics kept fp32) and the tag. Refuses a checkpoint that is not the last
    epoch of ``cfg``'s schedule. Returns (out path, tag)."""
    from .models.detectors.detector3d_template import read_checkpoint

    state, checkpoint = read_checkpoint(ckpt_file)
    epochs = int(cfg.OPTIMIZATION.NUM_EPOCHS)
    if checkpoint.get("epoch") != epochs:
        raise ZooError(f"{ckpt_file}: epoch {checkpoint.get('epoch')} is not the end of the {epochs}-epoch "
                       f"schedule of {cfg_file}; only a finished run goes into the zoo")

    def cast(key, t):
        if fp16 and t.is_floating_point() and "running_" not in key:
            return t.to(torch.float16)
        return t.clone()

    tag = make_tag(name, family, cfg, data_root, epochs, "fp16" if fp16 else "fp32", extra)
    out = {"model_state": {k: cast(k, v) for k, v in state.items()}, "epoch": epochs,
           "version": checkpoint.get("version"), TAG_KEY: tag}
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    from .utils.checkpoint_utils import save_checkpoint

    return Path(save_checkpoint(out, out_file)), tag


def load_manifest(path=MANIFEST):
    """``model_zoo/manifest.json``: {"teachers": [{"name", "family", "cfg_file", "ckpt", "sha256", ...}]}."""
    path = Path(path)
    if not path.is_file():
        return {"teachers": []}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise ZooError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest.get("teachers"), list):
        raise ZooError(f"{path}: expected a 'teachers' list")
    return manifest


def zoo_entry(name, path=MANIFEST):
    """The manifest entry called ``name``, with ``cfg_file`` and ``ckpt`` as absolute paths."""
    manifest = load_manifest(path)
    for entry in manifest["teachers"]:
        if entry.get("name") == name:
            entry = dict(entry)
            entry["cfg_file"] = str(REPO_ROOT / entry["cfg_file"])
            entry["ckpt"] = str(Path(path).parent / entry["ckpt"])
            return entry
    raise ZooError(f"{path}: no teacher '{name}' (have {[e.get('name') for e in manifest['teachers']]}); "
                   f"build it with tools/benchmark_kd.py --preset cpu --retrain-teachers")


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
