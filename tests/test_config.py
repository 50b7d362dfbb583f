import pytest

from pcdet.config import ConfigError, cfg_from_list, cfg_from_yaml_file
from pcdet.registry import Registry


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_config_relative_to_including_file_and_override(tmp_path):
    _write(tmp_path / "cfgs" / "dataset_configs" / "d.yaml", "A: 1\nB: {C: 2, D: [1, 2]}\n")
    child = _write(tmp_path / "cfgs" / "models" / "m.yaml",
                   "DATA_CONFIG:\n  _BASE_CONFIG_: ../dataset_configs/d.yaml\n  B: {C: 5}\nX: 0.5\n")
    cfg = cfg_from_yaml_file(child)
    assert cfg.DATA_CONFIG.A == 1
    assert cfg.DATA_CONFIG.B.C == 5
    assert cfg.DATA_CONFIG.B.D == [1, 2]


def test_openpcdet_style_base_path_found_in_ancestor(tmp_path):
    _write(tmp_path / "tools" / "cfgs" / "dataset_configs" / "d.yaml", "A: 3\n")
    child = _write(tmp_path / "tools" / "cfgs" / "kitti_models" / "m.yaml",
                   "DATA_CONFIG:\n  _BASE_CONFIG_: cfgs/dataset_configs/d.yaml\n")
    assert cfg_from_yaml_file(child).DATA_CONFIG.A == 3


def test_missing_base_names_the_including_file(tmp_path):
    child = _write(tmp_path / "m.yaml", "_BASE_CONFIG_: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"m\.yaml.*nope\.yaml"):
        cfg_from_yaml_file(child)
    with pytest.raises(ConfigError, match="not found"):
        cfg_from_yaml_file(tmp_path / "absent.yaml")


def test_set_overrides_with_type_checking(tmp_path):
    cfg = cfg_from_yaml_file(_write(tmp_path / "m.yaml", "OPT: {LR: 0.01, EPOCHS: 3, NAME: adam, FLAG: true}\n"))
    cfg_from_list(["OPT.LR", "1", "OPT.EPOCHS", "7", "OPT.NAME", "sgd", "OPT.FLAG", "false"], cfg)
    assert cfg.OPT.LR == 1.0 and isinstance(cfg.OPT.LR, float)
    assert cfg.OPT.EPOCHS == 7 and cfg.OPT.NAME == "sgd" and cfg.OPT.FLAG is False
    with pytest.raises(ConfigError, match="OPT.EPOCH"):
        cfg_from_list(["OPT.EPOCH", "2"], cfg)
    with pytest.raises(ConfigError, match="OPT.EPOCHS.*expected int"):
        cfg_from_list(["OPT.EPOCHS", "abc"], cfg)


def test_set_accepts_documented_optional_keys_only(tmp_path):
    cfg = cfg_from_yaml_file(_write(tmp_path / "m.yaml", "OPTIMIZATION: {LR: 0.01}\n"))
    cfg_from_list(["OPTIMIZATION.USE_AMP", "true", "OPTIMIZATION.AMP_DTYPE", "fp16",
                   "OPTIMIZATION.CHANNELS_LAST", "True"], cfg)
    assert cfg.OPTIMIZATION.USE_AMP is True and cfg.OPTIMIZATION.AMP_DTYPE == "fp16"
    assert cfg.OPTIMIZATION.CHANNELS_LAST is True
    with pytest.raises(ConfigError, match="OPTIMIZATION.USE_AMP.*expected bool"):
        cfg_from_list(["OPTIMIZATION.USE_AMP", "maybe"], cfg)
    with pytest.raises(ConfigError, match="no key 'OPTIMIZATION.USE_AMPS'"):
        cfg_from_list(["OPTIMIZATION.USE_AMPS", "true"], cfg)


def test_registry_did_you_mean():
    reg = Registry("demo")

    @reg.register
    class PillarVFE:  # noqa: D401
        pass

    assert reg.get("PillarVFE") is PillarVFE
    with pytest.raises(KeyError, match="did you mean.*PillarVFE"):
        reg.get("PilarVFE")


def test_numbers_parse_as_numbers_in_files_and_in_set(tmp_path):
    """YAML 1.2 floats: 1e-3, 3E5, .5 and -2.5e+2 are numbers both in a config file and on --set (PyYAML's YAML 1.1
    reads an exponent without a dot as a string, so `--set OPTIMIZATION.LR 1e-3` was refused)."""
    from pcdet.config import ConfigError, cfg_from_list, cfg_from_yaml_file

    f = tmp_path / "c.yaml"
    f.write_text("OPTIMIZATION: {LR: 3e-3, WD: .5, N: -2, BIG: 3E5, NEG: -2.5e+2, NAME: 1e, FLAG: true}\n")
    cfg = cfg_from_yaml_file(f)
    o = cfg.OPTIMIZATION
    assert (o.LR, o.WD, o.N, o.BIG, o.NEG, o.NAME, o.FLAG) == (0.003, 0.5, -2, 300000.0, -250.0, "1e", True)
    assert isinstance(o.LR, float) and isinstance(o.N, int)
    cfg_from_list(["OPTIMIZATION.LR", "1e-3", "OPTIMIZATION.WD", "-.25", "OPTIMIZATION.N", "7"], cfg)
    assert (o.LR, o.WD, o.N) == (0.001, -0.25, 7)
    with pytest.raises(ConfigError, match="expected float"):
        cfg_from_list(["OPTIMIZATION.LR", "fast"], cfg)
