"""pcdet/utils/spconv_utils.py makes spconv 2.x sparse convolutions correct on CPU: every layer type, forward and
backward, matches a dense torch reference with the default (multi-threaded) torch settings, run after run."""
import pytest
import torch
import torch.nn.functional as F

from pcdet.utils import spconv_utils
from pcdet.utils.spconv_utils import spconv

SHAPE = (11, 96, 96)  # large enough for the unpatched multi-threaded CPU kernels to go wrong


@pytest.fixture(autouse=True)
def multi_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(max(2, previous))
    yield
    torch.set_num_threads(previous)


def sparse_input(channels, seed=0, density=0.08, batch_size=2):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch_size, *SHAPE, generator=gen) < density
    # spconv needs row-major (V, 4) indices; nonzero() alone returns a column-major view
    indices = mask.nonzero().int().contiguous()
    feats = torch.randn(indices.shape[0], channels, generator=gen)
    return feats, indices


def gather(dense, indices):
    """(B, C, D, H, W) at (V, 4) [b, z, y, x] -> (V, C)."""
    i = indices.long()
    return dense[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]]


def dense_weight(layer):
    """spconv 2.x weight (out, k0, k1, k2, in) -> torch conv3d weight (out, in, k0, k1, k2)."""
    return layer.weight.permute(0, 4, 1, 2, 3)


def run_sparse(layer, feats, indices, grad_seed=1, pre=None):
    feats = feats.clone().requires_grad_(True)
    layer.zero_grad()
    x = spconv.SparseConvTensor(feats, indices, list(SHAPE), 2)
    if pre is not None:
        x = pre(x)
    out = layer(x)
    r = torch.randn(out.features.shape, generator=torch.Generator().manual_seed(grad_seed))
    (out.features * r).sum().backward()
    return out, r, feats.grad.clone(), layer.weight.grad.clone()


def dense_input(feats, indices):
    x = torch.zeros(2, feats.shape[1], *SHAPE)
    i = indices.long()
    x[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]] = feats
    return x


def assert_weight_grad_close(got, ref):
    # a weight gradient sums over thousands of sites: allow float32 summation-order error relative to its scale
    scale = float(ref.abs().max())
    torch.testing.assert_close(got, ref, atol=1e-5 * scale, rtol=1e-4)


def check_against_dense(layer, dense_fn, feats, indices, out_sites_fn=None):
    """Compare forward, input grad and weight grad of ``layer`` with ``dense_fn(x_dense, w)`` twice."""
    threads = torch.get_num_threads()
    runs = []
    for _ in range(2):
        out, r, gfeat, gw = run_sparse(layer, feats, indices)
        assert torch.get_num_threads() == threads
        x = dense_input(feats, indices).requires_grad_(True)
        w = dense_weight(layer).detach().clone().requires_grad_(True)
        ref = dense_fn(x, w)
        ref_sites = gather(ref, out.indices)
        torch.testing.assert_close(out.features, ref_sites, atol=1e-5, rtol=1e-5)
        (ref_sites * r).sum().backward()
        torch.testing.assert_close(gfeat, gather(x.grad, indices), atol=1e-5, rtol=1e-5)
        assert_weight_grad_close(gw, w.grad.permute(0, 2, 3, 4, 1))
        runs.append((out.features.detach(), gfeat, gw))
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=0, rtol=0)
    return runs[0]


def test_threads_are_more_than_one():
    assert torch.get_num_threads() > 1


def test_subm_conv3d_forward_backward():
    feats, indices = sparse_input(8)
    layer = spconv.SubMConv3d(8, 16, 3, padding=1, bias=False, indice_key="subm1")
    mask = dense_input(torch.ones(feats.shape[0], 1), indices)

    def ref(x, w):
        return F.conv3d(x, w, padding=1) * mask

    out_feats, _, _ = check_against_dense(layer, ref, feats, indices)
    assert out_feats.shape == (indices.shape[0], 16)


def test_sparse_conv3d_strided_forward_backward():
    feats, indices = sparse_input(8, seed=2)
    layer = spconv.SparseConv3d(8, 16, 3, stride=2, padding=1, bias=False, indice_key="spconv2")
    out_feats, _, _ = check_against_dense(layer, lambda x, w: F.conv3d(x, w, stride=2, padding=1), feats, indices)
    # every output site with a nonzero dense response is an active sparse site
    x = dense_input(feats, indices)
    dense_active = (F.conv3d(x, dense_weight(layer).detach(), stride=2, padding=1).abs().sum(1) > 0).sum()
    assert out_feats.shape[0] == int(dense_active)


def test_sparse_inverse_conv3d_forward_backward():
    feats, indices = sparse_input(8, seed=3)
    down = spconv.SparseConv3d(8, 8, 3, stride=2, padding=1, bias=False, indice_key="down")
    layer = spconv.SparseInverseConv3d(8, 4, 3, indice_key="down", bias=False)
    for p in down.parameters():
        p.requires_grad_(False)

    def ref(x, w):
        y = F.conv3d(x, dense_weight(down), stride=2, padding=1)
        out_pad = [SHAPE[d] - ((y.shape[2 + d] - 1) * 2 - 2 + 3) for d in range(3)]
        # the inverse of a strided sparse conv is its transpose; torch wants (in, out, k) weights
        return F.conv_transpose3d(y, w.transpose(0, 1), stride=2, padding=1, output_padding=out_pad)

    threads = torch.get_num_threads()
    results = []
    for _ in range(2):
        out, r, gfeat, gw = run_sparse(layer, feats, indices, pre=down)
        assert torch.get_num_threads() == threads
        assert torch.equal(out.indices, indices)
        x = dense_input(feats, indices).requires_grad_(True)
        w = dense_weight(layer).detach().clone().requires_grad_(True)
        ref_sites = gather(ref(x, w), indices)
        torch.testing.assert_close(out.features, ref_sites, atol=1e-5, rtol=1e-5)
        (ref_sites * r).sum().backward()
        torch.testing.assert_close(gfeat, gather(x.grad, indices), atol=1e-5, rtol=1e-5)
        assert_weight_grad_close(gw, w.grad.permute(0, 2, 3, 4, 1))
        results.append(out.features.detach())
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA-stream defect only exists on CPU-only torch")
def test_unpatched_backward_calls_cuda_stream(monkeypatch):
    """Without the fix, spconv's CPU backward asks torch for a CUDA stream and fails."""
    monkeypatch.setattr(spconv_utils._spconv_ops, "get_current_stream",
                        spconv_utils._ORIGINAL_GET_CURRENT_STREAM)
    feats, indices = sparse_input(4, density=0.01)
    layer = spconv.SubMConv3d(4, 4, 3, padding=1, bias=False)
    x = spconv.SparseConvTensor(feats.requires_grad_(True), indices, list(SHAPE), 2)
    out = layer(x)
    with pytest.raises((RuntimeError, AssertionError), match="CUDA"):
        out.features.sum().backward()


def test_patch_is_installed_once():
    for name in spconv_utils.PATCHED_OPS:
        func = getattr(spconv_utils._spconv_ops, name)
        assert func._pcdet_cpu_single_thread
        assert not getattr(func._pcdet_original, "_pcdet_cpu_single_thread", False)
    assert spconv_utils._spconv_ops.get_current_stream is spconv_utils._safe_get_current_stream


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_conv_with_bias_runs_in_eval_on_cpu_and_matches_training_mode(kind):
    """The wheel rejects a fused bias at CPU inference; the patch adds it after the GEMM, as training does."""
    assert getattr(spconv.conv.SparseConvolution.forward, "_pcdet_cpu_bias", False)
    feats, indices = sparse_input(4, seed=7)
    torch.manual_seed(0)
    layer = (spconv.SubMConv3d(4, 6, 3, padding=1, bias=True) if kind == "subm"
             else spconv.SparseConv3d(4, 6, 3, stride=2, padding=1, bias=True))
    x = spconv.SparseConvTensor(feats, indices, list(SHAPE), 2)
    train_out = layer.train()(x).features.detach()
    with torch.no_grad():
        eval_out = layer.eval()(spconv.SparseConvTensor(feats, indices, list(SHAPE), 2)).features
    assert torch.allclose(eval_out, train_out, atol=1e-6)
    no_bias = layer.bias.detach().clone()
    with torch.no_grad():
        layer.bias.zero_()
        shifted = layer(spconv.SparseConvTensor(feats, indices, list(SHAPE), 2)).features
    assert torch.allclose(eval_out - shifted, no_bias.expand_as(shifted), atol=1e-5)  # the bias is really added
