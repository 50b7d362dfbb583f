"""Width multiplier (pcdet/models/model_utils/width.py) and the model summary (model_summary.py)."""
import itertools
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from easydict import EasyDict

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network, load_data_to_device
from pcdet.models.model_utils.model_summary import summarize
from pcdet.models.model_utils.width import module_width, scaled
from pcdet.utils.spconv_utils import spconv

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pointpillar_second_e2e import CASES, fake_dataset, make_batch  # noqa: E402


def test_scaled_and_module_width():
    assert scaled(64, 1.0) == 64
    assert scaled(64, 0.5) == 32
    assert scaled(64, 0.25) == 16
    assert scaled(10, 0.33) == 3
    assert scaled(3, 0.1) == 1
    with pytest.raises(ValueError, match="width"):
        scaled(64, 0.0)
    assert module_width(EasyDict(WIDTH=0.5), EasyDict(NAME="X")) == 0.5
    assert module_width(EasyDict(WIDTH=0.5), EasyDict(NAME="X", WIDTH=0.25)) == 0.25
    assert module_width(EasyDict(), EasyDict(NAME="X")) == 1.0
    assert module_width(None, None) == 1.0


def build(name, width=None, extra=None):
    cfg = cfg_from_yaml_file(REPO / "tools" / "cfgs" / "synthetic_models" / f"{name}.yaml")
    if width is not None:
        cfg.MODEL.WIDTH = width
    for key, val in (extra or {}).items():
        cfg.MODEL[key].WIDTH = val
    voxel_size, _ = CASES[name]
    return build_network(cfg.MODEL, num_class=3, dataset=fake_dataset(voxel_size))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,full", [("pointpillar", 4834888), ("second", 5325576)])
def test_width_compression(name, full):
    assert n_params(build(name)) == full == n_params(build(name, 1.0))
    half, quarter = n_params(build(name, 0.5)), n_params(build(name, 0.25))
    # conv weights scale with width^2; the head's output channels and the VFE's input do not
    assert 3.6 < full / half < 4.1
    assert 12.0 < full / quarter < 16.5


def test_width_shapes_pointpillar():
    model = build("pointpillar", 0.5)
    assert model.vfe.pfn_layers[0].linear.weight.shape == (32, 10)
    assert model.map_to_bev_module.num_bev_features == 32
    assert [b[1].weight.shape[0] for b in model.backbone_2d.blocks] == [32, 64, 128]
    assert model.backbone_2d.num_bev_features == 192
    assert model.dense_head.conv_cls.weight.shape == (18, 192, 1, 1)


def test_module_width_overrides_model_width():
    model = build("second", 0.5, extra={"BACKBONE_2D": 1.0})
    assert model.backbone_3d.num_point_features == 64
    assert model.map_to_bev_module.num_bev_features == 128
    assert model.backbone_2d.blocks[0][1].weight.shape == (128, 128, 3, 3)
    assert model.backbone_2d.num_bev_features == 512


@pytest.mark.parametrize("name", ["pointpillar", "second"])
def test_width_models_run(name):
    voxel_size, max_points = CASES[name]
    model = build(name, 0.25)
    model.eval()
    with torch.no_grad():
        pred_dicts, _ = model(load_data_to_device(make_batch(voxel_size, max_points)))
    assert len(pred_dicts) == 2


def test_summary_dense_conv_flops_hand_formula():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.head = nn.Linear(8, 2)

        def forward(self, batch):
            x = self.conv(batch["x"])
            return self.head(x.mean(dim=(2, 3)))

    model = Tiny()
    out = summarize(model, {"x": torch.randn(2, 3, 10, 12)}, print_table=False)
    conv = 2 * (2 * 10 * 12) * 8 * 3 * 9
    linear = 2 * 2 * 8 * 2
    assert out["per_module"]["conv"]["flops"] == conv
    assert out["per_module"]["head"]["flops"] == linear
    assert out["flops"] == conv + linear
    assert out["params"] == 3 * 8 * 9 + 8 * 2 + 2


def test_summary_sparse_conv_pairs_hand_count():
    shape = (6, 7, 8)
    indices = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2], [0, 2, 2, 2], [0, 4, 5, 6], [1, 1, 1, 1]], dtype=torch.int32)
    feats = torch.randn(len(indices), 4)

    class TinySparse(nn.Module):
        def __init__(self):
            super().__init__()
            self.subm = spconv.SubMConv3d(4, 6, 3, padding=1, bias=False, indice_key="s1")
            self.down = spconv.SparseConv3d(6, 5, 3, stride=2, padding=1, bias=False, indice_key="d1")

        def forward(self, batch):
            x = spconv.SparseConvTensor(batch["f"], batch["i"], list(shape), 2)
            return self.down(self.subm(x))

    active = {tuple(r) for r in indices.tolist()}
    subm_pairs = sum((b, z + dz, y + dy, x + dx) in active
                     for b, z, y, x in active for dz, dy, dx in itertools.product((-1, 0, 1), repeat=3))
    down_pairs = 0
    for b, z, y, x in active:
        for kz, ky, kx in itertools.product(range(3), repeat=3):
            oz, oy, ox = z + 1 - kz, y + 1 - ky, x + 1 - kx  # output o receives input o * 2 - 1 + k
            if oz % 2 == 0 and oy % 2 == 0 and ox % 2 == 0 and all(
                    0 <= o // 2 < (s + 1) // 2 for o, s in zip((oz, oy, ox), shape)) and min(oz, oy, ox) >= 0:
                down_pairs += 1
    out = summarize(TinySparse(), {"f": feats, "i": indices}, print_table=False)
    assert out["sparse_layers"]["subm"]["pairs"] == subm_pairs == 5 + 6  # every site itself + 3 neighbour pairs both ways
    assert out["sparse_layers"]["down"]["pairs"] == down_pairs
    assert out["per_module"]["subm"]["flops"] == 2 * subm_pairs * 4 * 6
    assert out["per_module"]["down"]["flops"] == 2 * down_pairs * 6 * 5
    assert out["flops"] == 2 * subm_pairs * 4 * 6 + 2 * down_pairs * 6 * 5


def test_summary_of_detector_per_module():
    voxel_size, max_points = CASES["second"]
    model = build("second", 0.5)
    out = summarize(model, load_data_to_device(make_batch(voxel_size, max_points)), print_table=False)
    assert out["params"] == n_params(model)
    assert set(out["per_module"]) == {"vfe", "backbone_3d", "map_to_bev_module", "backbone_2d", "dense_head"}
    assert out["per_module"]["backbone_3d"]["flops"] == sum(v["flops"] for v in out["sparse_layers"].values())
    assert out["flops"] >= sum(row["flops"] for row in out["per_module"].values()) > 0


@pytest.mark.parametrize("name", ["pointpillar", "second"])
def test_training_step_under_bf16_autocast(name):
    """OPTIMIZATION.USE_AMP on CPU: bf16 autocast; spconv (no bf16 kernels) runs its part in float32, losses are
    float32 and every parameter gets a finite gradient."""
    from pcdet.utils.common_utils import to_channels_last
    voxel_size, max_points = CASES[name]
    torch.manual_seed(0)
    model = to_channels_last(build(name, 0.25)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ret, tb, _ = model(load_data_to_device(make_batch(voxel_size, max_points)))
    loss = ret["loss"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if name == "second":  # the sparse backbone learned in float32 under the bf16 autocast
        assert model.backbone_3d.conv_input[0].weight.grad.abs().sum() > 0
