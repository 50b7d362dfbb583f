"""Our PointPillars / SECOND built from tools/cfgs/kitti_models/*.yaml have OpenPCDet's exact state_dict
(key, shape, dtype), so OpenPCDet checkpoints load with no renaming."""
import ast
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "data" / "openpcdet_state_dicts"


def read_fixture(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"OpenPCDet state-dict fixture {path} absent (../shared not mounted)")
    lines = path.read_text().splitlines()
    params = {}
    for key, val in re.findall(r"(\w+)=(\[[^\]]*\]|\d+)", lines[1]):
        params[key] = ast.literal_eval(val)
    entries = []
    for line in lines[3:]:
        if line.strip():
            key, shape, dtype = line.split("\t")
            entries.append((key, tuple(ast.literal_eval(shape)), dtype))
    return params, entries


def fake_dataset(params):
    return SimpleNamespace(
        class_names=params["CLASS_NAMES"],
        point_cloud_range=np.array(params["POINT_CLOUD_RANGE"], dtype=np.float32),
        voxel_size=params["VOXEL_SIZE"],
        grid_size=np.array(params["GRID_SIZE"], dtype=np.int64),
        point_feature_encoder=SimpleNamespace(num_point_features=params["NUM_POINT_FEATURES"]),
        depth_downsample_factor=None,
    )


def ours(model):
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("cfg_name,fixture,num_params", [
    ("pointpillar", "kitti_models_pointpillar.txt", 4834888),
    ("second", "kitti_models_second.txt", 5325576),
])
def test_state_dict_matches_openpcdet(cfg_name, fixture, num_params):
    params, expected = read_fixture(fixture)
    cfg = cfg_from_yaml_file(REPO / "tools" / "cfgs" / "kitti_models" / f"{cfg_name}.yaml")
    assert cfg.CLASS_NAMES == params["CLASS_NAMES"]
    np.testing.assert_allclose(cfg.DATA_CONFIG.POINT_CLOUD_RANGE, params["POINT_CLOUD_RANGE"], rtol=1e-6)
    voxel_cfg = [p for p in cfg.DATA_CONFIG.DATA_PROCESSOR if p.NAME == "transform_points_to_voxels"][0]
    np.testing.assert_allclose(voxel_cfg.VOXEL_SIZE, params["VOXEL_SIZE"])

    model = build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=fake_dataset(params))
    got = ours(model)
    missing = sorted(set(k for k, _, _ in expected) - set(k for k, _, _ in got))
    extra = sorted(set(k for k, _, _ in got) - set(k for k, _, _ in expected))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == num_params
