"""OpenPCDet state-dict parity of the shipped CenterPoint configs, and the width multiplier's shapes.

The reference lists (../shared/data/openpcdet_state_dicts/*.txt) give OpenPCDet's key, shape and dtype for each
config; identical lists mean an OpenPCDet checkpoint loads strictly as a teacher. The models are built from our
YAML with a fake dataset object carrying the config's dataset parameters (no data on disk).
"""
import ast
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network
from pcdet.models.model_utils.width import scaled

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
STATE_DICTS = SHARED / "data" / "openpcdet_state_dicts"
CFGS = REPO / "tools" / "cfgs"

CASES = [
    ("waymo_models/centerpoint.yaml", "waymo_models_centerpoint.txt"),
    ("waymo_models/centerpoint_pillar_1x.yaml", "waymo_models_centerpoint_pillar_1x.txt"),
    ("nuscenes_models/cbgs_voxel0075_res3d_centerpoint.yaml", "nuscenes_models_cbgs_voxel0075_res3d_centerpoint.txt"),
]


def _reference(name):
    path = STATE_DICTS / name
    if not path.is_file():
        pytest.skip(f"OpenPCDet state-dict fixture {path} absent (shared data not mounted)")
    lines = path.read_text().splitlines()
    total = int(re.search(r"(\d+) parameters", lines[0]).group(1))
    built = lines[1]
    params = {
        "class_names": ast.literal_eval(re.search(r"CLASS_NAMES=(\[.*?\])", built).group(1)),
        "point_cloud_range": ast.literal_eval(re.search(r"POINT_CLOUD_RANGE=(\[.*?\])", built).group(1)),
        "voxel_size": ast.literal_eval(re.search(r"VOXEL_SIZE=(\[.*?\])", built).group(1)),
        "grid_size": ast.literal_eval(re.search(r"GRID_SIZE=(\[.*?\])", built).group(1)),
        "num_point_features": int(re.search(r"NUM_POINT_FEATURES=(\d+)", built).group(1)),
    }
    entries = []
    for line in lines[2:]:
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        entries.append((key, tuple(ast.literal_eval(shape)), dtype))
    return entries, params, total


def fake_dataset(cfg):
    """Object with the dataset attributes models read, derived from ``cfg.DATA_CONFIG`` like DatasetTemplate."""
    data_cfg = cfg.DATA_CONFIG
    pc_range = np.array(data_cfg.POINT_CLOUD_RANGE, dtype=np.float32)
    voxel_cfg = [p for p in data_cfg.DATA_PROCESSOR if p.NAME == "transform_points_to_voxels"]
    assert len(voxel_cfg) == 1, "DATA_PROCESSOR must hold one transform_points_to_voxels"
    voxel_size = list(voxel_cfg[0].VOXEL_SIZE)
    grid_size = np.round((pc_range[3:6] - pc_range[0:3]) / np.array(voxel_size)).astype(np.int64)
    return SimpleNamespace(
        class_names=list(cfg.CLASS_NAMES),
        point_cloud_range=pc_range,
        voxel_size=voxel_size,
        grid_size=grid_size,
        point_feature_encoder=SimpleNamespace(
            num_point_features=len(data_cfg.POINT_FEATURE_ENCODING.used_feature_list)),
        depth_downsample_factor=None,
        training=True,
        dataset_cfg=data_cfg,
    )


def _build(cfg_rel, width=None):
    cfg = cfg_from_yaml_file(CFGS / cfg_rel)
    if width is not None:
        cfg.MODEL.WIDTH = width
    dataset = fake_dataset(cfg)
    return build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset), dataset


def _entries(model):
    return [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("cfg_rel,ref_name", CASES)
def test_config_dataset_parameters_match_reference(cfg_rel, ref_name):
    _, params, _ = _reference(ref_name)
    dataset = fake_dataset(cfg_from_yaml_file(CFGS / cfg_rel))
    assert dataset.class_names == params["class_names"]
    assert np.allclose(dataset.point_cloud_range, params["point_cloud_range"])
    assert dataset.voxel_size == pytest.approx(params["voxel_size"])
    assert dataset.grid_size.tolist() == params["grid_size"]
    assert dataset.point_feature_encoder.num_point_features == params["num_point_features"]


@pytest.mark.parametrize("cfg_rel,ref_name", CASES)
def test_state_dict_matches_openpcdet(cfg_rel, ref_name):
    reference, _, total = _reference(ref_name)
    model, _ = _build(cfg_rel)
    ours = _entries(model)
    ref_keys, our_keys = [e[0] for e in reference], [e[0] for e in ours]
    assert sorted(set(ref_keys) - set(our_keys)) == [], "keys missing from our model"
    assert sorted(set(our_keys) - set(ref_keys)) == [], "keys OpenPCDet does not have"
    assert ours == reference
    assert sum(p.numel() for p in model.parameters()) == total


def _scaled_reference(reference, width):
    """Reference shapes at ``width``: every channel dimension (>= 16) scales; kernel sizes, the point-feature
    inputs (5, 11) and the head's output channels (1 to 3) do not."""
    out = []
    for key, shape, dtype in reference:
        if key == "global_step" or key.endswith("num_batches_tracked"):
            out.append((key, shape, dtype))
            continue
        out.append((key, tuple(scaled(d, width) if d >= 16 else d for d in shape), dtype))
    return out


@pytest.mark.parametrize("width", [0.5, 0.25])
@pytest.mark.parametrize("cfg_rel,ref_name", CASES[:2])
def test_width_multiplier_scales_every_channel(cfg_rel, ref_name, width):
    reference, _, total = _reference(ref_name)
    model, _ = _build(cfg_rel, width=width)
    assert _entries(model) == _scaled_reference(reference, width)
    n_params = sum(p.numel() for p in model.parameters())
    # convs dominate: parameters shrink roughly with width squared
    assert width ** 2 * 0.8 * total < n_params < width ** 2 * 1.3 * total
