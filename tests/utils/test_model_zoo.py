"""The model zoo's provenance tags: export, the checks against data and config, and their use by the teacher."""
import copy
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml

import pcdet.datasets.synthetic as synthetic
from pcdet import model_zoo as zoo
from pcdet.config import cfg_from_yaml_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kd"))
import kd_tiny_setup as tiny  # noqa: E402


def _data_root(tmp_path, seed=0):
    root = tmp_path / "data"
    (root / "ImageSets").mkdir(parents=True, exist_ok=True)
    meta = {"generator_version": synthetic.GENERATOR_VERSION, "seed": seed, "preset": "default",
            "num_training_frames": 10, "num_train": 5, "num_val": 3, "num_tune": 2}
    (root / "synthetic_meta.json").write_text(json.dumps(meta))
    for split, ids in (("train", [0, 1, 2, 3, 4]), ("val", [5, 6, 7]), ("tune", [8, 9])):
        (root / "ImageSets" / f"{split}.txt").write_text("".join(f"{i:06d}\n" for i in ids))
    return root


def _teacher(tmp_path, epochs=7):
    """A tiny CenterPoint-pillar teacher config with a schedule, and its (fixed, untrained) checkpoint."""
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    path = cfg_dir / "teacher.yaml"
    path.write_text(yaml.safe_dump({"CLASS_NAMES": tiny.CLASSES, "DATA_CONFIG": tiny.DATA_CONFIG,
                                    "MODEL": tiny.MODEL, "OPTIMIZATION": {"NUM_EPOCHS": epochs, "LR": 0.003}}))
    ckpt, _ = tiny.save_teacher_ckpt(path, tmp_path, epoch=epochs)
    return path, ckpt


def _export(tmp_path, fp16=True):
    cfg_path, ckpt = _teacher(tmp_path)
    cfg = cfg_from_yaml_file(cfg_path)
    out, tag = zoo.export_zoo_checkpoint(ckpt, cfg, cfg_path, _data_root(tmp_path), tmp_path / "zoo" / "t.pth",
                                         "tiny_teacher", "centerpoint_pillar", fp16=fp16, extra={"curve": [[7, 1.0]]})
    return cfg_path, cfg, out, tag


def test_export_writes_weights_and_tag_and_verifies(tmp_path):
    cfg_path, cfg, out, tag = _export(tmp_path)
    ck = torch.load(out, map_location="cpu", weights_only=True)
    assert "optimizer_state" not in ck and ck["epoch"] == 7 and ck["zoo"]["name"] == "tiny_teacher"
    state = ck["model_state"]
    weights = [k for k, v in state.items() if v.is_floating_point() and "running_" not in k]
    stats = [k for k in state if "running_" in k]
    assert weights and stats
    assert all(state[k].dtype == torch.float16 for k in weights) and all(state[k].dtype == torch.float32
                                                                          for k in stats)
    assert tag["generator_version"] == synthetic.GENERATOR_VERSION and tag["epochs"] == 7 and tag["curve"]
    assert tag["config_hash"] == zoo.config_hash(cfg) and len(tag["config_hash"]) == 64
    assert zoo.verify_zoo_tag(ck, cfg, cfg_path, tmp_path / "data", out) == ck["zoo"]
    # an untagged checkpoint is not checked
    assert zoo.verify_zoo_tag({"model_state": {}}, cfg, cfg_path, tmp_path / "nowhere", "x.pth") is None


def test_hash_ignores_paths_and_the_evaluation_split_only(tmp_path):
    cfg = cfg_from_yaml_file(_teacher(tmp_path)[0])
    h = zoo.config_hash(cfg)
    moved = copy.deepcopy(cfg)
    moved.DATA_CONFIG.DATA_PATH = "/elsewhere"
    moved.DATA_CONFIG.DATA_SPLIT = {"train": "train", "test": "tune"}
    changed = copy.deepcopy(cfg)
    changed.DATA_CONFIG.DATA_SPLIT = {"train": "trainval", "test": "val"}
    base = copy.deepcopy(cfg)
    base.DATA_CONFIG.DATA_SPLIT = {"train": "train", "test": "val"}
    assert zoo.config_hash(moved) == zoo.config_hash(base) != zoo.config_hash(changed)
    assert h == zoo.config_hash(copy.deepcopy(cfg))


def test_refuses_another_config_and_names_the_key(tmp_path):
    cfg_path, cfg, out, _ = _export(tmp_path)
    ck = torch.load(out, map_location="cpu", weights_only=True)
    other = copy.deepcopy(cfg)
    other.MODEL.BACKBONE_2D.NUM_FILTERS = [16, 64]
    with pytest.raises(zoo.ZooMismatchError, match=r"MODEL\.BACKBONE_2D\.NUM_FILTERS: \[16, 32\] \(trained\) vs "
                                                   r"\[16, 64\] \(in use\)"):
        zoo.verify_zoo_tag(ck, other, cfg_path, tmp_path / "data", out)
    longer = copy.deepcopy(cfg)
    longer.OPTIMIZATION.NUM_EPOCHS = 11
    with pytest.raises(zoo.ZooMismatchError, match="OPTIMIZATION.NUM_EPOCHS"):
        zoo.verify_zoo_tag(ck, longer, cfg_path, tmp_path / "data", out)
    # evaluation compares only what decides the model's outputs
    assert zoo.verify_zoo_tag(ck, longer, cfg_path, tmp_path / "data", out,
                              sections=("CLASS_NAMES", "DATA_CONFIG", "MODEL"))


def test_refuses_other_data_and_other_generator_version(tmp_path, monkeypatch):
    cfg_path, cfg, out, _ = _export(tmp_path)
    ck = torch.load(out, map_location="cpu", weights_only=True)
    (tmp_path / "data" / "ImageSets" / "val.txt").write_text("000005\n000006\n")
    with pytest.raises(zoo.ZooMismatchError, match="another dataset than .*val_ids_sha256"):
        zoo.verify_zoo_tag(ck, cfg, cfg_path, tmp_path / "data", out)
    with pytest.raises(zoo.ZooMismatchError, match="no synthetic_meta.json"):
        zoo.verify_zoo_tag(ck, cfg, cfg_path, tmp_path / "kitti", out)
    _data_root(tmp_path)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", "9.9.9")
    with pytest.raises(zoo.ZooMismatchError, match="generator version 1.0.0, this code generates version 9.9.9"):
        zoo.verify_zoo_tag(ck, cfg, cfg_path, tmp_path / "data", out)


def test_export_refuses_an_unfinished_run(tmp_path):
    cfg_path, ckpt = _teacher(tmp_path, epochs=7)
    cfg = cfg_from_yaml_file(cfg_path)
    cfg.OPTIMIZATION.NUM_EPOCHS = 12
    with pytest.raises(zoo.ZooError, match="epoch 7 is not the end of the 12-epoch schedule"):
        zoo.export_zoo_checkpoint(ckpt, cfg, cfg_path, _data_root(tmp_path), tmp_path / "t.pth", "t", "f")


def test_teacher_build_checks_the_tag(tmp_path):
    """A KD run whose teacher config differs from the zoo checkpoint's is refused before training."""
    from pcdet.kd import build_distiller
    from pcdet.models import build_network

    cfg_path, _, out, _ = _export(tmp_path, fp16=True)
    kd = {"_BASE_CONFIG_": "teacher.yaml", "MODEL": {"WIDTH": 0.5},
          "KD": {"TEACHER": {"CFG_FILE": "teacher.yaml", "CKPT": str(out)}, "DET_LOSS_WEIGHT": 1.0,
                 "HEADS": [copy.deepcopy(tiny.ITKD_HEAD)]}}
    kd_path = cfg_path.parent / "kd.yaml"
    kd_path.write_text(yaml.safe_dump(kd))
    cfg = cfg_from_yaml_file(kd_path)

    def build(root):
        dataset = tiny.TinyKDDataset(copy.deepcopy(cfg.DATA_CONFIG), tiny.CLASSES, root_path=root)
        student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
        return build_distiller(cfg, student, dataset, logging.getLogger("zoo_test"), cfg_file=kd_path)

    distiller = build(tmp_path / "data")      # fp16 weights load into the fp32 teacher
    t_state = distiller.teacher.model.state_dict()
    ref = torch.load(out, map_location="cpu", weights_only=True)["model_state"]
    key = next(k for k in ref if k.endswith("weight") and ref[k].dtype == torch.float16)
    assert t_state[key].dtype == torch.float32 and torch.equal(t_state[key], ref[key].float())
    with pytest.raises(zoo.ZooMismatchError, match="another dataset"):
        (tmp_path / "data" / "ImageSets" / "tune.txt").write_text("000009\n")
        build(tmp_path / "data")
    _data_root(tmp_path)
    t = yaml.safe_load(cfg_path.read_text())
    t["MODEL"]["DENSE_HEAD"]["NUM_HM_CONV"] = 3
    cfg_path.write_text(yaml.safe_dump(t))
    with pytest.raises(zoo.ZooMismatchError, match=r"MODEL\.DENSE_HEAD\.NUM_HM_CONV"):
        build(tmp_path / "data")


def test_manifest_entries_resolve_to_repo_paths(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"teachers": [{"name": "a", "cfg_file": "tools/cfgs/zoo/pointpillar_teacher.yaml",
                                              "ckpt": "a.pth"}]}))
    entry = zoo.zoo_entry("a", path=path)
    assert entry["cfg_file"] == str(zoo.REPO_ROOT / "tools/cfgs/zoo/pointpillar_teacher.yaml")
    assert entry["ckpt"] == str(tmp_path / "a.pth")
    with pytest.raises(zoo.ZooError, match=r"no teacher 'b' \(have \['a'\]\)"):
        zoo.zoo_entry("b", path=path)
    path.write_text("{")
    with pytest.raises(zoo.ZooError, match="not valid JSON"):
        zoo.load_manifest(path)
