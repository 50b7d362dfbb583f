"""End to end on a tiny hand-made batch: PointPillars and SECOND train (finite loss, gradients reach every
parameter) and predict (pred_dicts with the documented keys and shapes)."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet.models import build_network, load_data_to_device, model_fn_decorator

REPO = Path(__file__).resolve().parents[2]
CLASS_NAMES = ["Car", "Pedestrian", "Cyclist"]
PC_RANGE = [0.0, -5.12, -3.0, 10.24, 5.12, 1.0]


def fake_dataset(voxel_size):
    grid = np.round((np.array(PC_RANGE[3:]) - np.array(PC_RANGE[:3])) / np.array(voxel_size)).astype(np.int64)
    return SimpleNamespace(
        class_names=CLASS_NAMES, point_cloud_range=np.array(PC_RANGE, dtype=np.float32), voxel_size=voxel_size,
        grid_size=grid, point_feature_encoder=SimpleNamespace(num_point_features=4), depth_downsample_factor=None,
    )


def voxelize(points, voxel_size, max_points):
    """points (N, 4) -> voxels (V, P, 4), coords (V, 3) [z, y, x], num_points (V,)."""
    coords = np.floor((points[:, :3] - np.array(PC_RANGE[:3])) / np.array(voxel_size)).astype(np.int64)
    keys, inverse = np.unique(coords, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    voxels = np.zeros((len(keys), max_points, points.shape[1]), dtype=np.float32)
    counts = np.zeros(len(keys), dtype=np.int32)
    for i, v in enumerate(inverse):
        if counts[v] < max_points:
            voxels[v, counts[v]] = points[i]
            counts[v] += 1
    return voxels, keys[:, ::-1].astype(np.int32).copy(), counts


def make_batch(voxel_size, max_points, seed=0):
    rng = np.random.default_rng(seed)
    gt = np.array([[[4.0, 2.0, -1.0, 3.9, 1.6, 1.56, 0.3, 1], [8.0, -2.0, -0.8, 0.8, 0.6, 1.73, 0.0, 2]],
                   [[6.0, -1.0, -1.0, 4.2, 1.7, 1.5, 1.2, 1], [0, 0, 0, 0, 0, 0, 0, 0]]], dtype=np.float32)
    all_points, all_voxels, all_coords, all_counts = [], [], [], []
    for b in range(2):
        pts = rng.uniform(PC_RANGE[:3], np.array(PC_RANGE[3:]) - 1e-3, size=(200, 3))
        for box in gt[b]:
            if box[7] > 0:  # points inside each gt box so targets are learnable
                pts = np.concatenate([pts, box[:3] + rng.uniform(-0.4, 0.4, size=(80, 3)) * box[3:6]])
        pts = np.concatenate([pts, rng.uniform(0, 1, size=(len(pts), 1))], axis=1).astype(np.float32)
        voxels, coords, counts = voxelize(pts, voxel_size, max_points)
        all_points.append(np.pad(pts, ((0, 0), (1, 0)), constant_values=b))
        all_voxels.append(voxels)
        all_coords.append(np.pad(coords, ((0, 0), (1, 0)), constant_values=b))
        all_counts.append(counts)
    return {
        "frame_id": np.array(["000000", "000001"]), "batch_size": 2,
        "points": np.concatenate(all_points), "voxels": np.concatenate(all_voxels),
        "voxel_coords": np.concatenate(all_coords), "voxel_num_points": np.concatenate(all_counts),
        "gt_boxes": gt,
    }


CASES = {
    "pointpillar": ([0.32, 0.32, 4.0], 32),
    "second": ([0.16, 0.16, 0.1], 5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_and_predict(name):
    torch.manual_seed(0)
    voxel_size, max_points = CASES[name]
    cfg = cfg_from_yaml_file(REPO / "tools" / "cfgs" / "synthetic_models" / f"{name}.yaml")
    model = build_network(cfg.MODEL, num_class=3, dataset=fake_dataset(voxel_size))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model_func = model_fn_decorator()
    for it in range(2):
        optimizer.zero_grad()
        loss, tb_dict, disp_dict = model_func(model, make_batch(voxel_size, max_points))
        assert torch.isfinite(loss)
        assert {"loss_rpn", "rpn_loss_cls", "rpn_loss_loc", "rpn_loss_dir"} <= set(tb_dict)
        loss.backward()
        if it == 0:
            no_grad = [n for n, p in model.named_parameters()
                       if p.requires_grad and (p.grad is None or float(p.grad.abs().sum()) == 0)]
            assert no_grad == []
        optimizer.step()
    assert int(model.global_step) == 2
    assert model.dense_head.forward_ret_dict["box_cls_labels"].gt(0).sum() > 0

    model.eval()
    batch = load_data_to_device(make_batch(voxel_size, max_points, seed=1))
    with torch.no_grad():
        pred_dicts, recall_dict = model(batch)
    assert len(pred_dicts) == 2
    for pred in pred_dicts:
        assert set(pred) == {"pred_boxes", "pred_scores", "pred_labels"}
        k = pred["pred_scores"].shape[0]
        assert pred["pred_boxes"].shape == (k, 7)
        assert pred["pred_labels"].shape == (k,)
        assert pred["pred_labels"].dtype == torch.int64
        if k:
            assert pred["pred_labels"].min() >= 1 and pred["pred_labels"].max() <= 3
            assert pred["pred_scores"].min() >= cfg.MODEL.POST_PROCESSING.SCORE_THRESH
    assert recall_dict["gt"] == 3
    assert set(recall_dict) == {"gt"} | {f"{p}_{t}" for p in ("roi", "rcnn") for t in (0.3, 0.5, 0.7)}


def test_build_time_batch_key_check_names_module_and_key():
    cfg = cfg_from_yaml_file(REPO / "tools" / "cfgs" / "synthetic_models" / "pointpillar.yaml")
    del cfg.MODEL["MAP_TO_BEV"]  # nothing writes spatial_features for the BEV backbone
    with pytest.raises(KeyError, match=r"module 'backbone_2d' \(BaseBEVBackbone\) requires batch_dict keys "
                                       r"\['spatial_features'\]"):
        build_network(cfg.MODEL, num_class=3, dataset=fake_dataset(CASES["pointpillar"][0]))


def test_load_data_to_device_converts_recursively():
    batch = make_batch(*CASES["pointpillar"])
    batch["voxels"] = batch["voxels"].astype(np.float64)
    batch["image_shape"] = np.array([[375, 1242], [375, 1242]])
    batch["kd_teacher_inputs"] = {"voxel_coords": batch["voxel_coords"].copy(), "frame_id": batch["frame_id"]}
    out = load_data_to_device(batch, "cpu")
    assert out["voxels"].dtype == torch.float32
    assert out["voxel_coords"].dtype == torch.int32
    assert out["gt_boxes"].shape == (2, 2, 8)
    assert isinstance(out["frame_id"], np.ndarray) and isinstance(out["image_shape"], np.ndarray)
    assert out["batch_size"] == 2
    assert torch.is_tensor(out["kd_teacher_inputs"]["voxel_coords"])
    assert isinstance(out["kd_teacher_inputs"]["frame_id"], np.ndarray)


def test_pillar_vfe_point_features_and_scatter_positions():
    from easydict import EasyDict
    from pcdet.models.backbones_2d.map_to_bev.pointpillar_scatter import PointPillarScatter
    from pcdet.models.backbones_3d.vfe.pillar_vfe import PillarVFE

    cfg = EasyDict(NAME="PillarVFE", WITH_DISTANCE=False, USE_ABSLOTE_XYZ=True, USE_NORM=True, NUM_FILTERS=[8])
    vfe = PillarVFE(cfg, num_point_features=4, voxel_size=[0.5, 0.5, 4.0], point_cloud_range=PC_RANGE).eval()
    voxels = torch.zeros(2, 3, 4)
    voxels[0, :2] = torch.tensor([[1.1, -4.9, -1.0, 0.5], [1.3, -4.7, 0.0, 0.1]])  # pillar x=2, y=0
    voxels[1, :1] = torch.tensor([[0.2, 0.3, -2.0, 0.9]])                         # pillar x=0, y=10, batch 1
    coords = torch.tensor([[0, 0, 0, 2], [1, 0, 10, 0]], dtype=torch.int32)
    seen = {}
    vfe.pfn_layers[0].linear.register_forward_pre_hook(lambda m, i: seen.update({"in": i[0].clone()}))
    batch = vfe({"voxels": voxels, "voxel_num_points": torch.tensor([2, 1]), "voxel_coords": coords})
    feats = seen["in"]
    assert feats.shape == (2, 3, 10)
    # [x, y, z, i, x - mean, y - mean, z - mean, x - centre_x, y - centre_y, z - centre_z]; pillar (2, 0) has its
    # centre at (0 + 2.5 * 0.5, -5.12 + 0.25, -3 + 2)
    torch.testing.assert_close(feats[0, 0], torch.tensor([1.1, -4.9, -1.0, 0.5, -0.1, -0.1, -0.5, -0.15, -0.03, 0.0]))
    assert torch.equal(feats[0, 2], torch.zeros(10))  # padded slot masked
    assert batch["pillar_features"].shape == (2, 8)

    scatter = PointPillarScatter(EasyDict(NAME="PointPillarScatter", NUM_BEV_FEATURES=8), grid_size=[30, 20, 1],
                                 num_point_features=8)
    batch["batch_size"] = 2
    spatial = scatter(batch)["spatial_features"]
    assert spatial.shape == (2, 8, 20, 30)
    torch.testing.assert_close(spatial[0, :, 0, 2], batch["pillar_features"][0])
    torch.testing.assert_close(spatial[1, :, 10, 0], batch["pillar_features"][1])
    assert int((spatial.abs().sum(1) > 0).sum()) <= 2


@pytest.mark.parametrize("last_layer", [True, False])
def test_pfn_layer_norm_matches_openpcdet_permuted_batchnorm(last_layer):
    """PFNLayer normalises the (V * P, C) rows; OpenPCDet normalises the (V, C, P) permute. Same statistics, same
    outputs, gradients and running buffers (train mode), same outputs in eval mode."""
    import copy
    from pcdet.models.backbones_3d.vfe.pillar_vfe import PFNLayer

    torch.manual_seed(0)
    layer = PFNLayer(10, 16, use_norm=True, last_layer=last_layer)
    with torch.no_grad():
        layer.norm.weight.uniform_(-1.5, 1.5)   # negative scales: the max must come after BN + ReLU
        layer.norm.bias.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(layer)

    def reference(m, inputs):  # OpenPCDet's formulation
        x = m.linear(inputs)
        x = m.norm(x.permute(0, 2, 1)).permute(0, 2, 1)
        x = torch.relu(x)
        x_max = torch.max(x, dim=1, keepdim=True)[0]
        return x_max if m.last_vfe else torch.cat([x, x_max.expand(-1, inputs.shape[1], -1)], dim=2)

    inputs = torch.randn(50, 7, 10) * 3.0
    inputs[:, 4:] = 0.0  # padded point slots, as PillarVFE masks them
    x1 = inputs.clone().requires_grad_(True)
    x2 = inputs.clone().requires_grad_(True)
    out, out_ref = layer(x1), reference(ref, x2)
    assert out.shape == out_ref.shape == ((50, 1, 16) if last_layer else (50, 7, 16))
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    (out_ref * weight).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.linear.weight.grad, ref.linear.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.norm.weight.grad, ref.norm.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.norm.running_mean, ref.norm.running_mean)
    torch.testing.assert_close(layer.norm.running_var, ref.norm.running_var)
    assert not torch.equal(layer.norm.running_mean, torch.zeros(16))  # the statistics did move
    layer.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(inputs), reference(ref, inputs), rtol=1e-5, atol=1e-6)
