"""CUDA kernels of pcdet.ops against the CPU reference paths (same random inputs, results compared on CPU)."""
import pytest
import torch

from pcdet.ops import _loader

CUDA_REASON = "needs a CUDA device and pcdet built with CUDA (pip install --no-build-isolation -e . on a CUDA machine)"


pytestmark = pytest.mark.cuda   # scripts/gpu_check.sh runs `pytest -m cuda`

def cuda_ext(name):
    ext = _loader.load_extension(name) if torch.cuda.is_available() else None
    return ext if _loader.cuda_supported(ext) else None


requires_voxel = pytest.mark.skipif(cuda_ext("pcdet.ops.voxel_count.voxel_count_ext") is None, reason=CUDA_REASON)
requires_knn = pytest.mark.skipif(cuda_ext("pcdet.ops.knn.knn_ext") is None, reason=CUDA_REASON)
requires_iou = pytest.mark.skipif(cuda_ext("pcdet.ops.iou3d_nms.iou3d_nms_ext") is None, reason=CUDA_REASON)


@requires_voxel
@pytest.mark.parametrize("with_batch_idx", [False, True])
def test_voxel_counts_cuda_matches_reference(with_batch_idx):
    from pcdet.ops.voxel_count import voxel_point_counts
    pc_range, voxel = [-2.0, -1.0, -0.5, 2.0, 3.0, 1.5], [0.1, 0.1, 0.25]
    points = torch.rand(5000, 5) * 5 - torch.tensor([2.5, 1.5, 1.0, 0.0, 0.0])
    points[:100, 1:4] = torch.tensor([2.0, 3.0, 1.5])  # on the max boundary: outside
    if with_batch_idx:
        points[:, 0] = torch.randint(0, 3, (5000,)).float()
    got = voxel_point_counts(points.cuda(), pc_range, voxel, with_batch_idx=with_batch_idx)
    want = voxel_point_counts(points, pc_range, voxel, with_batch_idx=with_batch_idx, use_reference=True)
    for g, w in zip(got, want):
        assert g.is_cuda and torch.equal(g.cpu(), w)


@requires_knn
def test_knn_cuda_matches_reference():
    from pcdet.ops.knn import knn_in_scans
    features = torch.randint(-2, 3, (800, 6)).float()  # exact distances, many ties
    batch = torch.randint(0, 4, (800,))
    batch[batch == 2] = 3  # scan 2 empty
    query = torch.randint(0, 800, (300,))
    got = knn_in_scans(features.cuda(), batch.cuda(), 40, query.cuda())
    want = knn_in_scans(features, batch, 40, query, use_reference=True)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@requires_knn
@pytest.mark.parametrize("mode", ["concat", "diff"])
def test_edge_features_cuda_matches_reference(mode):
    from pcdet.ops.knn import edge_features
    features = torch.randn(50, 7, dtype=torch.float64, requires_grad=True)
    features_cuda = features.detach().cuda().requires_grad_()
    query = torch.randint(0, 50, (20,))
    idx = torch.randint(0, 50, (20, 5))
    weight = torch.randn(20, 5, 14, dtype=torch.float64)
    want = edge_features(features, query, idx, mode=mode, use_reference=True)
    (want * weight).sum().backward()
    got = edge_features(features_cuda, query.cuda(), idx.cuda(), mode=mode)
    (got * weight.cuda()).sum().backward()
    torch.testing.assert_close(got.detach().cpu(), want.detach())
    torch.testing.assert_close(features_cuda.grad.cpu(), features.grad)


def random_boxes(n):
    boxes = torch.rand(n, 7)
    boxes[:, :3] = boxes[:, :3] * 10
    boxes[:, 3:6] = boxes[:, 3:6] * 3 + 0.5
    boxes[:, 6] = (boxes[:, 6] - 0.5) * 6.3
    return boxes


@requires_iou
def test_iou_bev_and_overlap_cuda_match_cpu():
    from pcdet.ops.iou3d_nms import iou3d_nms_cuda_wrap as wrap
    from pcdet.ops.iou3d_nms import iou3d_nms_utils as utils
    a, b = random_boxes(60), random_boxes(45)
    b[:10] = a[:10]  # identical boxes: IoU 1
    torch.testing.assert_close(wrap.boxes_iou_bev_cuda(a.cuda(), b.cuda()).cpu(), utils.boxes_bev_iou_cpu(a, b),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(wrap.boxes_overlap_bev_cuda(a.cuda(), b.cuda()).cpu(), utils.boxes_overlap_bev(a, b),
                               atol=1e-4, rtol=1e-4)


@requires_iou
@pytest.mark.parametrize("rotated", [True, False])
def test_nms_cuda_matches_cpu(rotated):
    from pcdet.ops.iou3d_nms import iou3d_nms_cuda_wrap as wrap
    from pcdet.ops.iou3d_nms import iou3d_nms_utils as utils
    boxes, scores = random_boxes(300), torch.rand(300)
    cuda_fn, cpu_fn = (wrap.nms_cuda, utils.nms) if rotated else (wrap.nms_normal_cuda, utils.nms_normal)
    keep = cuda_fn(boxes.cuda(), scores.cuda(), 0.3)
    assert torch.equal(keep.cpu(), cpu_fn(boxes, scores, 0.3))


requires_pd = pytest.mark.skipif(cuda_ext("pcdet.ops.pd_edge_loss.pd_edge_loss_ext") is None, reason=CUDA_REASON)


@requires_pd
@pytest.mark.parametrize("teacher_grad", [False, True])
def test_pd_edge_loss_cuda_matches_reference(teacher_grad):
    from pcdet.ops.pd_edge_loss import pd_edge_loss, pd_edge_loss_reference
    g = torch.Generator().manual_seed(7)
    m, q, k, c = 500, 300, 24, 8
    idx = torch.randint(0, m, (q, k), generator=g)
    valid = torch.rand(q, k, generator=g) > 0.1
    phi = torch.rand(q, generator=g) * 2
    base = [torch.randn(m, c, generator=g), torch.randn(q, c, generator=g), torch.rand(c, generator=g) + 0.5,
            torch.randn(c, generator=g) * 0.1]
    base_t = [2 * base[0] + 1, torch.randn(q, c, generator=g), torch.ones(c), torch.zeros(c)]

    def run(device, fn):
        s = [t.to(device).requires_grad_(True) for t in base]
        t_ = [t.to(device).requires_grad_(teacher_grad) for t in base_t]
        loss, stats = fn(s, t_, idx.to(device), valid.to(device), phi.to(device), 2.0)
        loss.backward()
        return loss.detach().cpu(), stats.cpu(), [None if x.grad is None else x.grad.cpu() for x in s + t_]

    got, want = run("cuda", pd_edge_loss), run("cpu", pd_edge_loss_reference)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[2], want[2]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
