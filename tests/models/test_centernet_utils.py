"""CenterNet targets, losses and decoding on hand-built cases (pcdet/models/model_utils/centernet_utils.py)."""
import math

import pytest
import torch

from pcdet.models.model_utils import centernet_utils as cu

# A 8 x 8 BEV map of 1 m pixels: range x [0, 8), y [-4, 4), voxel 0.5 m, stride 2.
PC_RANGE = [0.0, -4.0, -3.0, 8.0, 4.0, 1.0]
VOXEL = [0.5, 0.5, 4.0]
STRIDE = 2


def test_gaussian_radius_matches_cornernet_formula_by_hand():
    # h = w = 10, overlap 0.1: the third case wins, a3 = 0.4, b3 = -4, c3 = -90,
    # r3 = (-4 + sqrt(16 + 144)) / 2 (r1 = 14.26, r2 = 26.32).
    r = cu.gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), min_overlap=0.1)
    assert r.item() == pytest.approx((-4 + math.sqrt(160.0)) / 2, rel=1e-6)
    assert r.item() == pytest.approx(4.324555, rel=1e-5)
    # h = 4, w = 2: r1 = 4.567, r2 = 8.683, r3 = (-1.2 + sqrt(1.44 + 11.52)) / 2 = 1.2.
    r = cu.gaussian_radius(torch.tensor([4.0]), torch.tensor([2.0]), min_overlap=0.1)
    assert r.item() == pytest.approx(1.2, rel=1e-5)


def test_draw_gaussian_peak_and_neighbours():
    heatmap = torch.zeros(11, 11)
    cu.draw_gaussian_to_heatmap(heatmap, torch.tensor([5.3, 4.7]), radius=2)
    sigma = 5.0 / 6.0  # (2 r + 1) / 6
    assert heatmap[4, 5].item() == 1.0
    assert heatmap.max().item() == 1.0
    for drow, dcol in [(0, 1), (1, 1), (0, 2), (2, 2), (-2, -1)]:
        expected = math.exp(-(drow * drow + dcol * dcol) / (2 * sigma * sigma))
        assert heatmap[4 + drow, 5 + dcol].item() == pytest.approx(expected, rel=1e-5)
    # nothing beyond the radius
    assert heatmap[4, 8].item() == 0.0 and heatmap[7, 5].item() == 0.0
    assert (heatmap > 0).sum().item() == 25

    # a weaker splat does not lower existing values (element-wise max)
    before = heatmap.clone()
    cu.draw_gaussian_to_heatmap(heatmap, torch.tensor([6.0, 4.0]), radius=2, k=0.5)
    assert torch.all(heatmap >= before)
    assert heatmap[4, 5].item() == 1.0
    assert heatmap[4, 7].item() == pytest.approx(max(before[4, 7].item(), 0.5 * math.exp(-1 / (2 * sigma ** 2))))


def test_draw_gaussian_clips_at_the_border():
    heatmap = torch.zeros(4, 5)
    cu.draw_gaussian_to_heatmap(heatmap, [0, 0], radius=2)
    sigma = 5.0 / 6.0
    assert heatmap[0, 0].item() == 1.0
    assert heatmap[0, 2].item() == pytest.approx(math.exp(-4 / (2 * sigma ** 2)), rel=1e-5)
    assert heatmap[0, 3].item() == 0.0 and heatmap[3, 0].item() == 0.0


def _box(x, y, z, dx, dy, dz, heading, *rest):
    return [x, y, z, dx, dy, dz, heading, *rest]


def test_assign_target_of_single_head_hand_built_box():
    gt = torch.tensor([
        _box(3.25, 0.75, -1.0, 4.0, 2.0, 1.5, 0.3, 2),
        _box(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0),  # padding row
    ])
    heatmap, ret_boxes, inds, mask = cu.assign_target_of_single_head(
        gt, num_classes=2, feature_map_size=[8, 8], point_cloud_range=PC_RANGE, voxel_size=VOXEL,
        feature_map_stride=STRIDE, num_max_objs=4, gaussian_overlap=0.1, min_radius=2,
    )
    assert heatmap.shape == (2, 8, 8) and ret_boxes.shape == (4, 8)
    # centre pixel: col int(3.25) = 3, row int(0.75 + 4) = 4
    assert heatmap[1, 4, 3].item() == 1.0
    assert heatmap[0].abs().sum().item() == 0.0
    # radius: gaussian_radius(4, 2) = 1.2 -> int 1 -> MIN_RADIUS 2, so sigma = 5 / 6
    sigma = 5.0 / 6.0
    assert heatmap[1, 4, 4].item() == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-5)
    assert heatmap[1, 6, 5].item() == pytest.approx(math.exp(-8 / (2 * sigma ** 2)), rel=1e-5)
    assert heatmap[1, 4, 6].item() == 0.0
    assert inds.tolist() == [4 * 8 + 3, 0, 0, 0]
    assert mask.tolist() == [1, 0, 0, 0]
    expected = torch.tensor([0.25, 0.75, -1.0, math.log(4.0), math.log(2.0), math.log(1.5), math.cos(0.3),
                             math.sin(0.3)])
    assert torch.allclose(ret_boxes[0], expected, atol=1e-6)
    assert ret_boxes[1:].abs().sum().item() == 0.0


def test_assign_target_velocity_columns_and_max_objs():
    gt = torch.tensor([
        _box(1.5, -2.5, 0.0, 2.0, 2.0, 2.0, 0.0, 3.0, -1.0, 1),
        _box(6.5, 2.5, 0.5, 2.0, 2.0, 2.0, 0.0, 0.5, 0.25, 1),
        _box(4.5, 0.5, 0.5, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 1),
    ])
    heatmap, ret_boxes, inds, mask = cu.assign_target_of_single_head(
        gt, num_classes=1, feature_map_size=[8, 8], point_cloud_range=PC_RANGE, voxel_size=VOXEL,
        feature_map_stride=STRIDE, num_max_objs=2,
    )
    assert ret_boxes.shape == (2, 10)
    assert mask.tolist() == [1, 1]
    assert inds.tolist() == [1 * 8 + 1, 6 * 8 + 6]
    assert ret_boxes[0, 8:].tolist() == [3.0, -1.0]
    assert ret_boxes[1, 8:].tolist() == [0.5, 0.25]
    # the third object exceeds NUM_MAX_OBJS: no regression row and no heatmap peak
    assert heatmap[0, 4, 4].item() < 1.0


def test_assign_target_rejects_class_out_of_range():
    gt = torch.tensor([_box(1.5, 0.5, 0.0, 2.0, 2.0, 2.0, 0.0, 3)])
    with pytest.raises(ValueError, match="num_classes=2"):
        cu.assign_target_of_single_head(gt, 2, [8, 8], PC_RANGE, VOXEL, STRIDE)


def test_focal_loss_centernet_hand_computed_2x2():
    pred = torch.tensor([[[[0.9, 0.2], [0.3, 0.6]]]])
    gt = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    pos = math.log(0.9) * 0.1 ** 2
    neg = math.log(0.8) * 0.2 ** 2 * 0.5 ** 4 + math.log(0.7) * 0.3 ** 2 + math.log(0.4) * 0.6 ** 2
    loss = cu.FocalLossCenterNet()(pred, gt)
    assert loss.item() == pytest.approx(-(pos + neg) / 1.0, rel=1e-5)
    assert loss.item() == pytest.approx(0.363577, rel=1e-4)

    # no positive: the negative term is not normalised
    gt_neg = torch.tensor([[[[0.0, 0.5], [0.0, 0.0]]]])
    neg_all = math.log(0.1) * 0.9 ** 2 + neg
    assert cu.FocalLossCenterNet()(pred, gt_neg).item() == pytest.approx(-neg_all, rel=1e-5)


def test_reg_loss_masked_l1():
    output = torch.arange(16, dtype=torch.float32).view(1, 2, 2, 4)  # (B, C, H, W)
    ind = torch.tensor([[5, 0]])   # row 1, col 1 -> channel values 5 and 13
    mask = torch.tensor([[1, 0]])
    target = torch.tensor([[[4.0, 15.0], [100.0, -100.0]]])
    loss = cu.RegLossCenterNet()(output, mask, ind, target)
    assert loss.tolist() == [1.0, 2.0]  # masked row ignored, divided by one valid object

    mask2 = torch.tensor([[1, 1]])
    target2 = torch.tensor([[[4.0, 15.0], [2.0, float("nan")]]])  # second row: pixel 0 -> values 0, 8
    loss2 = cu.RegLossCenterNet()(output, mask2, ind, target2)
    assert loss2.tolist() == pytest.approx([(1.0 + 2.0) / 2, (2.0 + 0.0) / 2])

    with pytest.raises(ValueError, match="HEAD_ORDER"):
        cu.RegLossCenterNet()(output, mask, ind, torch.zeros(1, 2, 3))


def _planted_maps(num_class=2, h=8, w=8):
    heatmap = torch.full((1, num_class, h, w), 0.01)
    heatmap[0, 1, 4, 3] = 0.9
    heatmap[0, 1, 4, 4] = 0.8  # not a local maximum
    center = torch.zeros(1, 2, h, w)
    center[0, :, 4, 3] = torch.tensor([0.25, 0.75])
    center_z = torch.full((1, 1, h, w), -1.0)
    dim = torch.ones(1, 3, h, w)
    dim[0, :, 4, 3] = torch.tensor([4.0, 2.0, 1.5])
    rot = torch.zeros(1, 2, h, w)
    rot[0, 0] = 1.0
    rot[0, :, 4, 3] = torch.tensor([math.cos(0.3), math.sin(0.3)])
    return heatmap, center, center_z, dim, rot


def test_decode_returns_planted_box():
    heatmap, center, center_z, dim, rot = _planted_maps()
    out = cu.decode_bbox_from_heatmap(
        heatmap, rot[:, 0:1], rot[:, 1:2], center, center_z, dim, point_cloud_range=PC_RANGE, voxel_size=VOXEL,
        feature_map_stride=STRIDE, K=10, score_thresh=0.1, peak_kernel=3,
    )
    assert len(out) == 1
    assert out[0]["pred_boxes"].shape == (1, 7)
    assert torch.allclose(out[0]["pred_boxes"][0], torch.tensor([3.25, 0.75, -1.0, 4.0, 2.0, 1.5, 0.3]), atol=1e-5)
    assert out[0]["pred_scores"].tolist() == pytest.approx([0.9])
    assert out[0]["pred_labels"].tolist() == [1]

    # without peak extraction (the default, as OpenPCDet) the neighbour survives too
    out = cu.decode_bbox_from_heatmap(
        heatmap, rot[:, 0:1], rot[:, 1:2], center, center_z, dim, point_cloud_range=PC_RANGE, voxel_size=VOXEL,
        feature_map_stride=STRIDE, K=10, score_thresh=0.1,
    )
    assert out[0]["pred_scores"].tolist() == pytest.approx([0.9, 0.8])
    assert out[0]["pred_boxes"][1, 0].item() == pytest.approx(4.0)  # pixel col 4, no offset -> x = 4 m


def test_decode_velocity_and_center_limit():
    heatmap, center, center_z, dim, rot = _planted_maps()
    vel = torch.zeros(1, 2, 8, 8)
    vel[0, :, 4, 3] = torch.tensor([1.5, -0.5])
    out = cu.decode_bbox_from_heatmap(
        heatmap, rot[:, 0:1], rot[:, 1:2], center, center_z, dim, point_cloud_range=PC_RANGE, voxel_size=VOXEL,
        feature_map_stride=STRIDE, vel=vel, K=10, score_thresh=0.1, peak_kernel=3,
    )
    assert out[0]["pred_boxes"].shape == (1, 9)
    assert out[0]["pred_boxes"][0, 7:].tolist() == [1.5, -0.5]
    out = cu.decode_bbox_from_heatmap(
        heatmap, rot[:, 0:1], rot[:, 1:2], center, center_z, dim, point_cloud_range=PC_RANGE, voxel_size=VOXEL,
        feature_map_stride=STRIDE, K=10, score_thresh=0.1, peak_kernel=3,
        post_center_limit_range=torch.tensor([3.5, -4.0, -3.0, 8.0, 4.0, 1.0]),
    )
    assert out[0]["pred_boxes"].shape == (0, 7)


def test_topk_orders_across_classes():
    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 2, 1, 0] = 0.7
    scores[0, 0, 0, 1] = 0.9
    scores[0, 1, 1, 1] = 0.8
    score, inds, classes, ys, xs = cu._topk(scores, K=3)
    assert score.tolist() == [pytest.approx([0.9, 0.8, 0.7])]
    assert classes.tolist() == [[0, 1, 2]]
    assert inds.tolist() == [[1, 3, 2]]
    assert ys.tolist() == [[0.0, 1.0, 1.0]] and xs.tolist() == [[1.0, 1.0, 0.0]]


def test_circle_nms_suppresses_by_centre_distance():
    centers = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [3.2, 0.1]])
    scores = torch.tensor([0.5, 0.9, 0.4, 0.8])
    keep = cu.circle_nms(centers, scores, min_radius=1.0)
    assert keep.tolist() == [1, 3]
    assert cu.circle_nms(centers, scores, min_radius=1.0, post_max_size=1).tolist() == [1]
