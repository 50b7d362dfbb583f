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
EXPECTED = {"itkd_centerpoint", "itkd_centerpoint_pillar", "itkd_centerpoint_half", "itkd_centerpoint_pillar_half",
            "pointdistiller_pointpillar", "pointdistiller_pointpillar_16x", "pointdistiller_second",
            "pointdistiller_centerpoint", "fitnet_pointpillar", "fitnet_centerpoint", "logit_kd_pointpillar",
            "logit_kd_centerpoint", "pivotal_kd_pointpillar", "pivotal_kd_centerpoint", "label_kd_pointpillar",
            "label_kd_centerpoint", "inherit_pointpillar", "inherit_centerpoint"}


def _widths(model_cfg):
    """{'MODEL': WIDTH, '<module>': WIDTH} of the width keys a config sets."""
    out = {"MODEL": model_cfg.get("WIDTH")} if "WIDTH" in model_cfg else {}
    out.update({k: v["WIDTH"] for k, v in model_cfg.items() if isinstance(v, dict) and "WIDTH" in v})
    return out


def test_every_method_has_a_synthetic_config_and_a_kitti_twin():
    assert {p.stem for p in KD_DIR.glob("*.yaml")} == EXPECTED
    assert {p.stem for p in (KD_DIR / "kitti").glob("*.yaml")} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_kd_block_is_detachable_and_teacher_resolves(path):
    raw = load_yaml(path)
    cfg = cfg_from_yaml_file(path)
    tcfg, tpath = load_teacher_cfg(cfg, cfg_file=path)
    # without its KD block the config is the teacher's model config with only width keys changed
    plain = {k: v for k, v in raw.items() if k != "KD"}
    base = load_yaml(tpath)
    widths = _widths(raw["MODEL"])
    for key, value in widths.items():
        if key == "MODEL":
            base["MODEL"]["WIDTH"] = value
        else:
            base["MODEL"][key]["WIDTH"] = value
    assert plain == base
    assert tcfg.MODEL.NAME == cfg.MODEL.NAME and tcfg.MODEL.get("WIDTH", 1.0) == 1.0
    assert widths and min(widths.values()) < 1.0
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


def _module_params(path, tmp_path, teacher=False):
    from pcdet.models.model_utils.model_summary import module_param_counts
    cfg = cfg_from_yaml_file(path)
    if teacher:
        cfg = EasyDict(load_teacher_cfg(cfg, cfg_file=path)[0])
    return module_param_counts(_build(cfg, tmp_path))


@pytest.mark.parametrize("stem,neck_ratio", [("itkd_centerpoint_pillar", 16), ("itkd_centerpoint_pillar_half", 4)])
def test_itkd_students_narrow_only_the_2d_neck(stem, neck_ratio, tmp_path):
    path = KD_DIR / f"{stem}.yaml"
    t, s = _module_params(path, tmp_path, teacher=True), _module_params(path, tmp_path)
    assert s["vfe"] == t["vfe"] and s["map_to_bev_module"] == t["map_to_bev_module"] == 0
    # the CenterHead keeps its widths; only the input of its 3x3 shared conv (the neck's 3 x 128 output, narrowed
    # like the neck) shrinks: 64 x (384 - 384 / sqrt(neck_ratio)) x 9 weights fewer, nothing else
    neck_out_t = 3 * 128
    assert t["dense_head"] - s["dense_head"] == 64 * (neck_out_t - neck_out_t // int(neck_ratio ** 0.5)) * 9
    assert neck_ratio * 0.9 < t["backbone_2d"] / s["backbone_2d"] < neck_ratio * 1.1, (t, s)


def test_pointdistiller_students_scale_every_module(tmp_path):
    t = _module_params(KD_DIR / "pointdistiller_pointpillar.yaml", tmp_path, teacher=True)
    for stem, ratio in (("pointdistiller_pointpillar", 4), ("pointdistiller_pointpillar_16x", 16)):
        s = _module_params(KD_DIR / f"{stem}.yaml", tmp_path)
        assert 0.85 * ratio < t["backbone_2d"] / s["backbone_2d"] < 1.05 * ratio
        assert t["vfe"] > s["vfe"] and 0.8 * ratio < t["total"] / s["total"] < 1.1 * ratio, (stem, t, s)
