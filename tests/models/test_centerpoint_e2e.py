"""CenterPoint end to end on CPU: the synthetic voxel and pillar configs, two training steps and an eval pass on a
tiny hand-made batch (a few hundred points, three gt boxes in two scans) voxelised with numpy."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pcdet.config import cfg_from_yaml_file
from pcdet import batch_keys as K
from pcdet.models import build_network, load_data_to_device

CFGS = Path(__file__).resolve().parents[2] / "tools" / "cfgs"

GT = [
    np.array([[12.0, 3.0, -1.0, 3.9, 1.6, 1.5, 0.4, 1],     # Car
              [20.0, -6.0, -0.9, 0.8, 0.6, 1.7, -1.2, 2]],  # Pedestrian
             dtype=np.float32),
    np.array([[30.0, 10.0, -1.0, 1.8, 0.6, 1.7, 2.0, 3]], dtype=np.float32),  # Cyclist
]


def fake_dataset(cfg):
    data_cfg = cfg.DATA_CONFIG
    pc_range = np.array(data_cfg.POINT_CLOUD_RANGE, dtype=np.float32)
    voxel_cfg = [p for p in data_cfg.DATA_PROCESSOR if p.NAME == "transform_points_to_voxels"][0]
    voxel_size = list(voxel_cfg.VOXEL_SIZE)
    grid_size = np.round((pc_range[3:6] - pc_range[0:3]) / np.array(voxel_size)).astype(np.int64)
    return SimpleNamespace(
        class_names=list(cfg.CLASS_NAMES), point_cloud_range=pc_range, voxel_size=voxel_size, grid_size=grid_size,
        point_feature_encoder=SimpleNamespace(
            num_point_features=len(data_cfg.POINT_FEATURE_ENCODING.used_feature_list)),
        depth_downsample_factor=None, training=True, dataset_cfg=data_cfg,
        max_points_per_voxel=int(voxel_cfg.MAX_POINTS_PER_VOXEL),
    )


def scan_points(boxes, rng, n_per_box=120, n_ground=150):
    """Points on the surface-ish volume of each box plus scattered ground points: (N, 4) [x, y, z, intensity]."""
    parts = []
    for box in boxes:
        local = (rng.random((n_per_box, 3)) - 0.5) * box[3:6]
        c, s = np.cos(box[6]), np.sin(box[6])
        xy = local[:, :2] @ np.array([[c, s], [-s, c]], dtype=np.float32)
        parts.append(np.concatenate([xy + box[:2], local[:, 2:3] + box[2]], axis=1))
    ground = np.stack([rng.uniform(1, 50, n_ground), rng.uniform(-30, 30, n_ground), np.full(n_ground, -1.7)], 1)
    xyz = np.concatenate(parts + [ground], axis=0).astype(np.float32)
    return np.concatenate([xyz, rng.random((xyz.shape[0], 1)).astype(np.float32)], axis=1)


def voxelize(points, pc_range, voxel_size, max_points):
    """Plain numpy voxelisation: voxels (V, P, C), coords (V, 3) [z, y, x], num_points (V,)."""
    voxel_size = np.asarray(voxel_size, dtype=np.float32)
    idx = np.floor((points[:, :3] - pc_range[:3]) / voxel_size).astype(np.int64)
    grid = np.round((pc_range[3:] - pc_range[:3]) / voxel_size).astype(np.int64)
    keep = np.all((idx >= 0) & (idx < grid), axis=1)
    points, idx = points[keep], idx[keep]
    keys, inverse = np.unique(idx[:, ::-1], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    voxels = np.zeros((len(keys), max_points, points.shape[1]), dtype=np.float32)
    num = np.zeros(len(keys), dtype=np.int32)
    for p, v in zip(points, inverse):
        if num[v] < max_points:
            voxels[v, num[v]] = p
            num[v] += 1
    return voxels, keys.astype(np.int32), num


def make_batch(dataset, seed=0):
    rng = np.random.default_rng(seed)
    points, voxels, coords, nums = [], [], [], []
    for b, boxes in enumerate(GT):
        pts = scan_points(boxes, rng)
        v, c, n = voxelize(pts, dataset.point_cloud_range, dataset.voxel_size, dataset.max_points_per_voxel)
        points.append(np.concatenate([np.full((len(pts), 1), b, np.float32), pts], axis=1))
        voxels.append(v)
        coords.append(np.concatenate([np.full((len(c), 1), b, np.int32), c], axis=1))
        nums.append(n)
    gt_boxes = np.zeros((len(GT), max(len(g) for g in GT), 8), dtype=np.float32)
    for b, boxes in enumerate(GT):
        gt_boxes[b, :len(boxes)] = boxes
    batch = {
        K.BATCH_SIZE: len(GT), K.POINTS: np.concatenate(points), K.VOXELS: np.concatenate(voxels),
        K.VOXEL_COORDS: np.concatenate(coords), K.VOXEL_NUM_POINTS: np.concatenate(nums), K.GT_BOXES: gt_boxes,
        K.FRAME_ID: np.array(["000000", "000001"]),
    }
    return load_data_to_device(batch)


# Width 0.25 keeps the CPU time small; the graph (and so which parameters get gradients) is the same at any width.
@pytest.mark.parametrize("cfg_name,width", [("centerpoint.yaml", 0.25), ("centerpoint_pillar.yaml", 0.25)])
def test_centerpoint_trains_and_predicts(cfg_name, width):
    torch.manual_seed(0)
    cfg = cfg_from_yaml_file(CFGS / "synthetic_models" / cfg_name)
    cfg.MODEL.WIDTH = width
    dataset = fake_dataset(cfg)
    model = build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    model.train()
    for it in range(2):
        optimizer.zero_grad()
        ret_dict, tb_dict, _ = model(make_batch(dataset, seed=it))
        loss = ret_dict["loss"]
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert tb_dict["loss_rpn"] == pytest.approx(loss.item())
        assert tb_dict["hm_loss_head_0"] > 0 and tb_dict["loc_loss_head_0"] > 0
        loss.backward()
        for name, param in model.named_parameters():
            assert param.grad is not None, f"no gradient reaches {name}"
            assert torch.isfinite(param.grad).all(), f"non-finite gradient in {name}"
            if param.dim() > 1:
                assert param.grad.abs().sum() > 0, f"zero gradient in {name}"
        optimizer.step()

    model.eval()
    with torch.no_grad():
        batch = make_batch(dataset, seed=5)
        pred_dicts, recall_dict = model(batch)
    assert len(pred_dicts) == 2
    for pred in pred_dicts:
        assert set(pred) == {"pred_boxes", "pred_scores", "pred_labels"}
        n = pred["pred_boxes"].shape[0]
        assert pred["pred_boxes"].shape == (n, 7) and pred["pred_scores"].shape == (n,)
        assert pred["pred_labels"].shape == (n,) and pred["pred_labels"].dtype == torch.long
        if n:
            assert pred["pred_labels"].min() >= 1 and pred["pred_labels"].max() <= 3
            assert (pred["pred_scores"] > cfg.MODEL.DENSE_HEAD.POST_PROCESSING.SCORE_THRESH).all()
    assert recall_dict["gt"] == 3
    assert batch[K.FINAL_BOX_DICTS] is pred_dicts


def test_voxel_res_backbone_shapes_and_cpu_eval_bias():
    from pcdet.models.backbones_3d.spconv_backbone_res import VoxelResBackBone8x
    from pcdet.utils.spconv_utils import spconv

    torch.manual_seed(0)
    grid = np.array([64, 48, 40])
    backbone = VoxelResBackBone8x(model_cfg={}, input_channels=4, grid_size=grid, width=0.5)
    assert backbone.num_point_features == 64
    assert backbone.backbone_channels == {"x_conv1": 8, "x_conv2": 16, "x_conv3": 32, "x_conv4": 64}
    rng = np.random.default_rng(0)
    coords = np.unique(np.stack([rng.integers(0, 2, 300), rng.integers(0, 40, 300), rng.integers(0, 48, 300),
                                 rng.integers(0, 64, 300)], 1), axis=0)
    batch = {K.VOXEL_FEATURES: torch.randn(len(coords), 4), K.VOXEL_COORDS: torch.from_numpy(coords).int(),
             K.BATCH_SIZE: 2}
    out = backbone.eval()(batch)
    assert out[K.ENCODED_SPCONV_TENSOR].dense().shape == (2, 64, 2, 6, 8)  # 41 z planes -> 2; 48 x 64 -> 6 x 8
    assert out[K.ENCODED_SPCONV_TENSOR_STRIDE] == 8
    assert set(out[K.MULTI_SCALE_3D_FEATURES]) == {"x_conv1", "x_conv2", "x_conv3", "x_conv4"}

    # inference with a biased sparse conv on CPU: same as the bias-free conv plus the bias
    conv = backbone.conv1[0].conv1
    x = spconv.SparseConvTensor(torch.randn(len(coords), 8), torch.from_numpy(coords).int(), [41, 48, 64], 2)
    with torch.no_grad():
        conv.bias.copy_(torch.arange(8, dtype=torch.float32))
        with_bias = conv.eval()(x).features  # plain call: spconv_utils patches the CPU inference bias path
        conv.bias.zero_()
        without = conv(x).features
    assert torch.allclose(with_bias, without + torch.arange(8, dtype=torch.float32), atol=1e-5)


@pytest.mark.parametrize("cfg_rel,grid,head_map", [
    ("kitti_models/centerpoint.yaml", [1408, 1600, 40], (200, 176)),
    ("kitti_models/centerpoint_pillar.yaml", [432, 496, 1], (248, 216)),
    ("synthetic_models/centerpoint.yaml", [640, 800, 40], (100, 80)),
    ("synthetic_models/centerpoint_pillar.yaml", [160, 200, 1], (100, 80)),
])
def test_kitti_and_synthetic_configs_build(cfg_rel, grid, head_map):
    cfg = cfg_from_yaml_file(CFGS / cfg_rel)
    dataset = fake_dataset(cfg)
    assert dataset.grid_size.tolist() == grid
    model = build_network(cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    head = model.dense_head
    assert head.class_names_each_head == [["Car", "Pedestrian", "Cyclist"]]
    stride = head.feature_map_stride
    assert (grid[1] // stride, grid[0] // stride) == head_map
    # the BEV backbone's output stride agrees with FEATURE_MAP_STRIDE
    bev_stride = 8 if model.backbone_3d is not None else 1
    strides = cfg.MODEL.BACKBONE_2D.LAYER_STRIDES
    assert bev_stride * strides[0] // cfg.MODEL.BACKBONE_2D.UPSAMPLE_STRIDES[0] == stride
