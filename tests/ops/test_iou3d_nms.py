"""Rotated BEV / 3D IoU and NMS against hand values and brute-force references."""
import math

import numpy as np
import pytest
import torch

from pcdet.ops.iou3d_nms import iou3d_nms_utils as iou_utils


def _box(x, y, dx, dy, heading, z=0.0, dz=2.0):
    return [x, y, z, dx, dy, dz, heading]


def _grid_bev_iou(box_a, box_b, steps=600):
    """Monte-Carlo-free grid estimate of the BEV IoU: fraction of grid cells inside both rectangles."""
    def inside(px, py, b):
        c, s = math.cos(b[6]), math.sin(b[6])
        lx = (px - b[0]) * c + (py - b[1]) * s
        ly = -(px - b[0]) * s + (py - b[1]) * c
        return (np.abs(lx) <= b[3] / 2) & (np.abs(ly) <= b[4] / 2)
    r = max(math.hypot(box_a[3], box_a[4]), math.hypot(box_b[3], box_b[4]))
    lo_x, hi_x = min(box_a[0], box_b[0]) - r, max(box_a[0], box_b[0]) + r
    lo_y, hi_y = min(box_a[1], box_b[1]) - r, max(box_a[1], box_b[1]) + r
    xs = np.linspace(lo_x, hi_x, steps)
    ys = np.linspace(lo_y, hi_y, steps)
    px, py = np.meshgrid(xs, ys)
    ia, ib = inside(px, py, box_a), inside(px, py, box_b)
    union = (ia | ib).sum()
    return (ia & ib).sum() / union if union else 0.0


def test_hand_cases():
    boxes = torch.tensor([
        _box(0, 0, 2, 2, 0.0),
        _box(0, 0, 2, 2, math.pi / 4),   # same square rotated 45 deg: octagon overlap
        _box(1, 0, 2, 2, 0.0),           # half-overlapping: IoU 2 / 6
        _box(10, 0, 1, 1, 0.3),          # disjoint
        _box(0, 0, 4, 2, math.pi / 2),   # 4x2 rotated 90 deg vs 2x4 unrotated below
        _box(0, 0, 2, 4, 0.0),
    ])
    iou = iou_utils.boxes_iou_bev(boxes, boxes)
    assert torch.allclose(torch.diagonal(iou), torch.ones(6), atol=1e-6)
    octagon = 8 * (math.sqrt(2) - 1)
    assert iou[0, 1].item() == pytest.approx(octagon / (8 - octagon), abs=1e-6)
    assert iou[0, 2].item() == pytest.approx(1 / 3, abs=1e-6)
    assert iou[0, 3].item() == 0.0
    assert iou[4, 5].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(iou, iou.T, atol=1e-6)


def test_random_boxes_match_grid_reference():
    rng = np.random.default_rng(0)
    for _ in range(12):
        a = _box(*rng.uniform(-1, 1, 2), *rng.uniform(0.5, 3, 2), rng.uniform(-np.pi, np.pi))
        b = _box(*rng.uniform(-1, 1, 2), *rng.uniform(0.5, 3, 2), rng.uniform(-np.pi, np.pi))
        got = iou_utils.boxes_bev_iou_cpu(np.array([a]), np.array([b]))[0, 0]
        assert got == pytest.approx(_grid_bev_iou(a, b), abs=0.01)


def test_iou3d_height_and_numpy_output():
    a = torch.tensor([_box(0, 0, 2, 2, 0.0, z=0.0, dz=2.0)])
    b = torch.tensor([_box(1, 0, 2, 2, 0.0, z=1.0, dz=2.0)])
    # BEV inter 2, height overlap 1 -> inter 2, union 8 + 8 - 2.
    assert iou_utils.boxes_iou3d(a, b).item() == pytest.approx(2 / 14, abs=1e-6)
    assert iou_utils.boxes_overlap_bev(a, b).item() == pytest.approx(2.0, abs=1e-6)
    out = iou_utils.boxes_bev_iou_cpu(a.numpy(), b.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (1, 1)
    assert out[0, 0] == pytest.approx(1 / 3, abs=1e-6)


def test_bad_shape_names_argument():
    with pytest.raises(ValueError, match="boxes_b"):
        iou_utils.boxes_iou_bev(torch.zeros(2, 7), torch.zeros(2, 5))


def _greedy_reference(iou, scores, thresh):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(iou[i, k] <= thresh for k in keep):
            keep.append(i)
    return keep


def test_nms_matches_brute_force_greedy():
    rng = np.random.default_rng(1)
    n = 60
    boxes = np.concatenate([rng.uniform(0, 8, (n, 2)), rng.uniform(-0.5, 0.5, (n, 1)),
                            rng.uniform(1, 3, (n, 3)), rng.uniform(-np.pi, np.pi, (n, 1))], axis=1)
    scores = rng.permutation(n).astype(np.float32) / n
    boxes_t, scores_t = torch.from_numpy(boxes).float(), torch.from_numpy(scores)
    iou = iou_utils.boxes_bev_iou_cpu(boxes_t, boxes_t).numpy()
    for thresh in (0.1, 0.3, 0.7):
        keep = iou_utils.nms(boxes_t, scores_t, thresh)
        assert keep.tolist() == _greedy_reference(iou, scores, thresh)
        assert len(keep) > 1
    keep_gpu_api, extra = iou_utils.nms_gpu(boxes_t, scores_t, 0.3, pre_maxsize=10)
    assert extra is None
    top10 = np.argsort(-scores, kind="stable")[:10]
    expected = top10[_greedy_reference(iou[top10][:, top10], scores[top10], 0.3)]
    assert keep_gpu_api.tolist() == expected.tolist()


def test_nms_normal_ignores_heading():
    boxes = torch.tensor([_box(0, 0, 4, 1, 0.0), _box(0, 0, 4, 1, math.pi / 2), _box(5, 5, 1, 1, 0.0)])
    scores = torch.tensor([0.5, 0.9, 0.1])
    # Axis-aligned both are the same 4x1 rectangle: the second (higher score) suppresses the first.
    assert iou_utils.nms_normal(boxes, scores, 0.5).tolist() == [1, 2]
    # Rotated IoU of the cross is 1 / 7 < 0.5: both kept.
    assert iou_utils.nms(boxes, scores, 0.5).tolist() == [1, 0, 2]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA device not available")
def test_cuda_tensors_match_cpu():
    rng = np.random.default_rng(2)
    boxes = torch.from_numpy(np.concatenate([rng.uniform(0, 6, (40, 3)), rng.uniform(1, 3, (40, 3)),
                                             rng.uniform(-np.pi, np.pi, (40, 1))], axis=1)).float()
    scores = torch.from_numpy(rng.uniform(size=40)).float()
    cuda_boxes, cuda_scores = boxes.to("cuda"), scores.to("cuda")
    iou = iou_utils.boxes_iou_bev(cuda_boxes, cuda_boxes)
    assert iou.is_cuda
    torch.testing.assert_close(iou.cpu(), iou_utils.boxes_iou_bev(boxes, boxes), atol=1e-4, rtol=0)
    torch.testing.assert_close(iou_utils.boxes_iou3d(cuda_boxes, cuda_boxes).cpu(),
                               iou_utils.boxes_iou3d(boxes, boxes), atol=1e-4, rtol=0)
    assert iou_utils.nms(cuda_boxes, cuda_scores, 0.3).cpu().tolist() == iou_utils.nms(boxes, scores, 0.3).tolist()
