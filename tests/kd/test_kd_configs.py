"""The shipped KD configs: KD block is detachable, teacher config resolves, taps exist in both networks."""
from pathlib import Path

import pytest
import yaml
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file, load_yaml
from pcdet.datasets.dataset import DatasetTemplate
from pcdet.kd.distill_heads import KD_HEADS
from pcdet.kd.recorders import expand_taps, get_submodule, parse_tap
from pcdet.kd.teacher import load_teacher_cfg
from pcdet.models import build_network

KD_DIR = Path(__file__).resolve().parents[2] / "tools" / "cfgs" / "kd"
CONFIGS = sorted(KD_DIR.glob("*.yaml")) + sorted((KD_DIR / "kitti").glob("*.yaml"))
EXPECTED = {"itkd_centerpoint", "itkd_centerpoint_pillar", "pointdistiller_pointpillar", "pointdistiller_second",
            "pointdistiller_centerpoint", "fitnet_pointpillar", "fitnet_centerpoint", "logit_kd_pointpillar",
            "logit_kd_centerpoint"}


def test_every_method_has_a_synthetic_config_and_a_kitti_twin():
    assert {p.stem for p in KD_DIR.glob("*.yaml")} == EXPECTED
    assert {p.stem for p in (KD_DIR / "kitti").glob("*.yaml")} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_kd_block_is_detachable_and_teacher_resolves(path):
    raw = load_yaml(path)
    base = load_yaml(path.parent / yaml.safe_load(path.read_text())["_BASE_CONFIG_"])
    plain = {k: v for k, v in raw.items() if k != "KD"}
    base["MODEL"]["WIDTH"] = raw["MODEL"]["WIDTH"]
    assert plain == base
    cfg = cfg_from_yaml_file(path)
    tcfg, tpath = load_teacher_cfg(cfg, cfg_file=path)
    assert tcfg.MODEL.NAME == cfg.MODEL.NAME and tcfg.MODEL.get("WIDTH", 1.0) == 1.0
    assert cfg.MODEL.WIDTH < 1.0
    assert (path.parent.name == "kitti") == ("kitti_models" in str(tpath))
    for head in cfg.KD.HEADS:
        KD_HEADS.get(head.NAME).check_keys(head)


def _build(cfg, tmp_path):
    ds = DatasetTemplate(dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, training=False,
                         root_path=tmp_path)
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), ds)


@pytest.mark.parametrize("path", sorted(KD_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_taps_exist_in_teacher_and_student(path, tmp_path):
    cfg = cfg_from_yaml_file(path)
    tcfg, _ = load_teacher_cfg(cfg, cfg_file=path)
    student, teacher = _build(cfg, tmp_path), _build(EasyDict(tcfg), tmp_path)
    for head in cfg.KD.HEADS:
        for role, (t_tap, s_tap) in KD_HEADS.get(head.NAME).tap_requests(head).items():
            t_list, s_list = expand_taps(teacher, [t_tap]), expand_taps(student, [s_tap])
            assert len(t_list) == len(s_list) >= 1
            for tap in t_list:
                get_submodule(teacher, parse_tap(tap)[0])
            for tap in s_list:
                get_submodule(student, parse_tap(tap)[0])
