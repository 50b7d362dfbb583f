"""The config schema: every shipped config passes; unknown keys, missing keys and wrong types are refused by the
builders with the file, the dotted path and a "did you mean"."""
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.config_schema import check, opt, req, validate_config
from pcdet.datasets import DatasetTemplate
from pcdet.datasets.augmentor.data_augmentor import DataAugmentor
from pcdet.models import build_network

REPO = Path(__file__).resolve().parents[1]
CFGS = REPO / "tools" / "cfgs"
sys.path.insert(0, str(REPO / "tools"))
from train_utils.optimization import OPTIMIZATION_SCHEMA, build_optimizer  # noqa: E402

SHIPPED = sorted(CFGS.rglob("*.yaml"))


def test_there_are_shipped_configs_of_every_kind():
    kinds = {p.relative_to(CFGS).parts[0] for p in SHIPPED}
    assert {"dataset_configs", "kitti_models", "nuscenes_models", "waymo_models", "kd", "synthetic_models",
            "zoo"} <= kinds
    assert len(SHIPPED) >= 40


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(CFGS)) for p in SHIPPED])
def test_every_shipped_config_passes_the_schema(path):
    validate_config(cfg_from_yaml_file(path), OPTIMIZATION_SCHEMA)


def _user_cfg(tmp_path, text, base="synthetic_models/pointpillar.yaml"):
    path = tmp_path / "user.yaml"
    path.write_text(f"_BASE_CONFIG_: {CFGS / base}\n" + text)
    return path, cfg_from_yaml_file(path)


def _dataset(cfg, tmp_path):
    return DatasetTemplate(dataset_cfg=cfg.DATA_CONFIG, class_names=cfg.CLASS_NAMES, training=False,
                           root_path=tmp_path)


def test_misspelt_model_key_is_refused_by_the_builder_with_file_path_and_suggestion(tmp_path):
    # the case: LAYER_NUMZ used to be ignored and the first forward failed deep in a transposed conv
    path, cfg = _user_cfg(tmp_path, "MODEL:\n    BACKBONE_2D:\n        LAYER_NUMZ: [3, 5, 5]\n")
    with pytest.raises(ConfigError) as exc:
        build_network(cfg.MODEL, len(cfg.CLASS_NAMES), _dataset(cfg, tmp_path))
    msg = str(exc.value)
    assert msg.startswith(f"{path}: MODEL.BACKBONE_2D.LAYER_NUMZ: unknown key 'LAYER_NUMZ' for BaseBEVBackbone; "
                          f"did you mean 'LAYER_NUMS'?")


def test_an_error_names_the_base_file_that_holds_the_bad_value(tmp_path):
    path, cfg = _user_cfg(tmp_path, "MODEL:\n    WIDTH: 0.5\n")
    cfg.MODEL.VFE.NUM_FILTERS = 64           # a list is required
    with pytest.raises(ConfigError, match=r"synthetic_models/pointpillar\.yaml: MODEL\.VFE\.NUM_FILTERS: PillarVFE "
                                          r"expects list, got int 64"):
        build_network(cfg.MODEL, len(cfg.CLASS_NAMES), _dataset(cfg, tmp_path))


def test_missing_required_key_and_unknown_model_level_key(tmp_path):
    _, cfg = _user_cfg(tmp_path, "")
    del cfg.MODEL.MAP_TO_BEV["NUM_BEV_FEATURES"]
    with pytest.raises(ConfigError, match="MODEL.MAP_TO_BEV.NUM_BEV_FEATURES: missing required key "
                                          "'NUM_BEV_FEATURES' of PointPillarScatter"):
        build_network(cfg.MODEL, len(cfg.CLASS_NAMES), _dataset(cfg, tmp_path))
    _, cfg = _user_cfg(tmp_path, "MODEL:\n    WIDHT: 0.5\n")
    with pytest.raises(ConfigError, match="MODEL.WIDHT: unknown key 'WIDHT' for PointPillar; did you mean 'WIDTH'"):
        build_network(cfg.MODEL, len(cfg.CLASS_NAMES), _dataset(cfg, tmp_path))


def test_dataset_augmentor_and_processor_keys_are_checked(tmp_path):
    _, cfg = _user_cfg(tmp_path, "DATA_CONFIG:\n    POINT_CLOUD_RANG: [0, 0, 0, 1, 1, 1]\n")
    with pytest.raises(ConfigError, match="DATA_CONFIG.POINT_CLOUD_RANG: unknown key .* did you mean "
                                          "'POINT_CLOUD_RANGE'"):
        _dataset(cfg, tmp_path)
    _, cfg = _user_cfg(tmp_path, "")
    rot = next(a for a in cfg.DATA_CONFIG.DATA_AUGMENTOR.AUG_CONFIG_LIST if a.NAME == "random_world_rotation")
    rot["WORLD_ROT_ANGEL"] = rot.pop("WORLD_ROT_ANGLE")
    with pytest.raises(ConfigError, match=r"DATA_CONFIG\.DATA_AUGMENTOR\.AUG_CONFIG_LIST\[\d\]\.WORLD_ROT_ANGEL: "
                                          r"unknown key 'WORLD_ROT_ANGEL' for augmentation random_world_rotation; "
                                          r"did you mean 'WORLD_ROT_ANGLE'"):
        _dataset(cfg, tmp_path)
    _, cfg = _user_cfg(tmp_path, "")
    cfg.DATA_CONFIG.DATA_PROCESSOR[-1].NAME = "transform_points_to_voxel"
    with pytest.raises(ConfigError, match=r"DATA_PROCESSOR\[2\]\.NAME: unknown data processor "
                                          r"'transform_points_to_voxel'; did you mean 'transform_points_to_voxels'"):
        _dataset(cfg, tmp_path)


def test_optimizer_and_kd_blocks_are_checked(tmp_path):
    _, cfg = _user_cfg(tmp_path, "OPTIMIZATION:\n    LR_DECAYY: 0.1\n")
    import torch

    with pytest.raises(ConfigError, match="OPTIMIZATION.LR_DECAYY: unknown key 'LR_DECAYY' for build_optimizer; "
                                          "did you mean 'LR_DECAY'"):
        build_optimizer(torch.nn.Linear(2, 2), cfg.OPTIMIZATION)
    path = tmp_path / "kd.yaml"
    kd = yaml.safe_load((CFGS / "kd" / "pointdistiller_pointpillar.yaml").read_text())
    kd["_BASE_CONFIG_"] = str(CFGS / "kd" / "pointdistiller_pointpillar.yaml")
    path.write_text(yaml.safe_dump({"_BASE_CONFIG_": kd["_BASE_CONFIG_"]}))
    cfg = cfg_from_yaml_file(path)
    cfg.KD.HEADS[0]["NUM_KEPP"] = cfg.KD.HEADS[0].pop("NUM_KEEP")
    with pytest.raises(ConfigError, match=r"KD\.HEADS\[0\]\.NUM_KEPP: unknown key 'NUM_KEPP' for KD head "
                                          r"PointDistiller; did you mean 'NUM_KEEP'"):
        validate_config(cfg)


def test_check_types_nested_lists_and_free_mappings():
    schema = {"A": req(int), "B": opt(float), "C": opt(list, items={"X": req(str)}), "D": opt(dict, keys=None)}
    check({"A": 1, "B": 2, "C": [{"X": "a"}], "D": {"anything": 1}, "_BASE_CONFIG_": "x"}, schema, "T", "t")
    with pytest.raises(ConfigError, match="T.A: t expects int, got bool True"):
        check({"A": True}, schema, "T", "t")
    with pytest.raises(ConfigError, match=r"T\.C\[1\]\.X: missing required key 'X' of t"):
        check({"A": 1, "C": [{"X": "a"}, {}]}, schema, "T", "t")
    check({"A": 1, "B": None}, schema, "T", "t")        # optional keys may be null


def test_random_world_translation_shifts_points_and_boxes_alike():
    # listed by the shipped nuScenes CenterPoint config (OpenPCDet's augmentation), refused as unknown before
    aug = DataAugmentor(None, [type("C", (dict,), {"__getattr__": dict.__getitem__})(
        NAME="random_world_translation", NOISE_TRANSLATE_STD=[0.5, 0.5, 0.0])], ["Car"])
    np.random.seed(0)
    points = np.array([[1.0, 2.0, 3.0, 0.5], [4.0, 5.0, 6.0, 0.1]], dtype=np.float32)
    boxes = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.5, 0.3]], dtype=np.float32)
    out = aug.forward({"points": points.copy(), "gt_boxes": boxes.copy()})
    shift = out["points"][:, :3] - points[:, :3]
    assert np.allclose(shift[0], shift[1]) and np.allclose(out["gt_boxes"][0, :3] - boxes[0, :3], shift[0])
    assert abs(shift[0, 0]) > 1e-3 and shift[0, 2] == 0.0
    assert np.array_equal(out["points"][:, 3], points[:, 3]) and np.allclose(out["gt_boxes"][0, 3:6], boxes[0, 3:6])


def test_openpcdet_keys_we_do_not_use_are_accepted_with_a_warning_and_disabled_augmentations_unchecked(tmp_path):
    path, cfg = _user_cfg(tmp_path, "")
    aug = cfg.DATA_CONFIG.DATA_AUGMENTOR
    aug.AUG_CONFIG_LIST.append(type(aug)({"NAME": "random_local_noise", "LOCAL_ROT_RANGE": [-0.1, 0.1]}))
    aug.DISABLE_AUG_LIST = list(aug.DISABLE_AUG_LIST) + ["random_local_noise"]   # listed and disabled: skipped
    gt = next(a for a in aug.AUG_CONFIG_LIST if a.NAME == "gt_sampling")
    gt["BACKUP_DB_INFO"] = {"DB_INFO_PATH": "x"}
    with pytest.warns(UserWarning, match=r"AUG_CONFIG_LIST\[0\]\.BACKUP_DB_INFO: accepted for OpenPCDet "
                                         r"compatibility and not used here"):
        validate_config(cfg, OPTIMIZATION_SCHEMA)
    aug.DISABLE_AUG_LIST = [n for n in aug.DISABLE_AUG_LIST if n != "random_local_noise"]
    with pytest.raises(ConfigError, match="unknown augmentation 'random_local_noise'"):
        validate_config(cfg, OPTIMIZATION_SCHEMA)


def test_unknown_module_name_names_the_file(tmp_path):
    path, cfg = _user_cfg(tmp_path, "MODEL:\n    VFE:\n        NAME: PilarVFE\n")
    with pytest.raises(ConfigError, match=rf"{path}: MODEL\.VFE\.NAME: .*unknown NAME 'PilarVFE'.*PillarVFE"):
        validate_config(cfg, OPTIMIZATION_SCHEMA)
    with pytest.raises(ConfigError, match=rf"{path}: MODEL\.VFE\.NAME: .*unknown NAME 'PilarVFE'"):
        build_network(cfg.MODEL, len(cfg.CLASS_NAMES), _dataset(cfg, tmp_path))


def test_use_amp_auto_and_ddp_key_through_set(tmp_path):
    from pcdet.config import cfg_from_list

    _, cfg = _user_cfg(tmp_path, "")
    cfg_from_list(["OPTIMIZATION.USE_AMP", "auto", "OPTIMIZATION.FIND_UNUSED_PARAMETERS", "true"], cfg)
    assert cfg.OPTIMIZATION.USE_AMP == "auto" and cfg.OPTIMIZATION.FIND_UNUSED_PARAMETERS is True
    cfg_from_list(["OPTIMIZATION.USE_AMP", "false"], cfg)     # back from auto to a bool
    assert cfg.OPTIMIZATION.USE_AMP is False
    with pytest.raises(ConfigError, match="expected true, false or auto, got 'maybe'"):
        cfg_from_list(["OPTIMIZATION.USE_AMP", "auto", "OPTIMIZATION.USE_AMP", "maybe"], cfg)
    validate_config(cfg, OPTIMIZATION_SCHEMA)
    cfg.OPTIMIZATION.USE_AMP = "sometimes"
    with pytest.raises(ConfigError, match=r"OPTIMIZATION\.USE_AMP: the optimizer expects one of \[True, False, "
                                          r"'auto'\], got 'sometimes'"):
        validate_config(cfg, OPTIMIZATION_SCHEMA)


def test_origins_follow_nested_base_configs(tmp_path):
    from pcdet.config import key_origins

    (tmp_path / "a.yaml").write_text("X:\n    P: 1\n    Q: 2\nL: [1, 2]\n")
    (tmp_path / "data.yaml").write_text("R: 3\n")
    (tmp_path / "b.yaml").write_text("_BASE_CONFIG_: a.yaml\nX:\n    Q: 5\n    _BASE_CONFIG_: data.yaml\nL: [3]\n")
    origins = key_origins(tmp_path / "b.yaml")
    a, b, d = (str(tmp_path / n) for n in ("a.yaml", "b.yaml", "data.yaml"))
    assert origins["X.P"] == a and origins["X.Q"] == b and origins["X.R"] == d and origins["L"] == b
