"""The fused PointDistiller graph loss against its PyTorch reference: loss, BatchNorm statistics and every
gradient, on random, tie-heavy, padded, empty and single-row cases; thread-count independence on CPU."""
import pytest
import torch

from pcdet.ops import _loader
from pcdet.ops.pd_edge_loss import EXT_NAME, pd_edge_loss, pd_edge_loss_reference

requires_ext = pytest.mark.skipif(_loader.load_extension(EXT_NAME) is None,
                                  reason=f"{EXT_NAME} is not built (pip install --no-build-isolation -e .)")


def _case(m=60, q=25, k=7, c=5, seed=0, ties=False, padded=False, teacher_grad=True, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    if ties:   # few distinct rows, repeated neighbours: many identical edges
        base = torch.randint(-2, 3, (4, c), generator=g).float()
        rows_s = base[torch.randint(0, 4, (m,), generator=g)]
        rows_t = 2 * base[torch.randint(0, 4, (m,), generator=g)]
    else:
        rows_s, rows_t = torch.randn(m, c, generator=g), torch.randn(m, c, generator=g) * 2 + 0.5
    rows_s, rows_t = rows_s + offset, rows_t + offset    # a channel mean far from 0 against its spread
    centre_s, centre_t = torch.randn(q, c, generator=g), torch.randn(q, c, generator=g)
    idx = torch.randint(0, m, (q, k), generator=g)
    if ties:
        idx[:, k // 2:] = idx[:, :1]
    valid = torch.ones(q, k, dtype=torch.bool)
    if padded:
        valid[::3, k - 3:] = False
    phi = torch.rand(q, generator=g) * 2
    gamma_s, beta_s = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.1
    gamma_t, beta_t = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.1
    side_s = [t.clone().requires_grad_(True) for t in (rows_s, centre_s, gamma_s, beta_s)]
    side_t = [t.clone().requires_grad_(teacher_grad) for t in (rows_t, centre_t, gamma_t, beta_t)]
    return side_s, side_t, idx, valid, phi


def _run(fn, side_s, side_t, idx, valid, phi, lam=2.0):
    s = [t.detach().clone().requires_grad_(t.requires_grad) for t in side_s]
    t_ = [t.detach().clone().requires_grad_(t.requires_grad) for t in side_t]
    loss, stats = fn(s, t_, idx, valid, phi, lam)
    loss.backward()
    return loss.detach(), stats, [x.grad for x in s + t_]


@requires_ext
@pytest.mark.parametrize("c", [5, 16])   # 16: the AVX2 query pass (C a multiple of 8, where the CPU has AVX2)
@pytest.mark.parametrize("kind", ["random", "ties", "padded", "frozen_teacher", "offset"])
def test_fused_loss_stats_and_gradients_match_the_reference(kind, c):
    case = _case(seed={"random": 0, "ties": 1, "padded": 2, "frozen_teacher": 3, "offset": 8}[kind],
                 ties=kind == "ties", padded=kind == "padded", teacher_grad=kind != "frozen_teacher",
                 offset=300.0 if kind == "offset" else 0.0, c=c)
    loss, stats, grads = _run(pd_edge_loss, *case)
    ref_loss, ref_stats, ref_grads = _run(pd_edge_loss_reference, *case)
    assert loss.item() > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats, ref_stats, rtol=1e-5, atol=1e-6)
    for name, g, r in zip(["rows_s", "centre_s", "gamma_s", "beta_s", "rows_t", "centre_t", "gamma_t", "beta_t"],
                          grads, ref_grads):
        if r is None:
            assert g is None, name
            continue
        assert r.abs().sum() > 0, name
        # with the offset every pre-activation is ~300 where float32 steps are 3e-5: both paths round alike only
        # to ~1e-3 of the (unit-spread) normalised values
        tol = dict(rtol=1e-3, atol=1e-5) if kind == "offset" else dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g, r, **tol, msg=lambda m: f"{name}: {m}")


def test_the_reference_passes_gradcheck():
    # the oracle itself is checked against finite differences (float64), so the fused gradients it is compared
    # with are anchored to numbers
    side_s, side_t, idx, valid, phi = _case(m=12, q=5, k=3, c=2, seed=4, padded=True)
    s64 = [t.detach().double().requires_grad_(True) for t in side_s]
    t64 = [t.detach().double().requires_grad_(True) for t in side_t]
    assert torch.autograd.gradcheck(lambda *xs: pd_edge_loss_reference(xs[:4], xs[4:], idx, valid, phi.double(),
                                                                       2.0)[0], (*s64, *t64))


@requires_ext
def test_empty_and_single_row_cases():
    # no query: loss 0, zero gradients, no error
    side_s, side_t, _, _, _ = _case(m=4, q=0, k=3, c=3)
    idx, valid, phi = torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.bool), torch.zeros(0)
    loss, stats, grads = _run(pd_edge_loss, side_s, side_t, idx, valid, phi)
    assert loss.item() == 0.0 and stats.shape == (4, 3)
    assert all(g is None or not g.any() for g in grads)
    # one row, k 4: the slots a scan of one row cannot fill hold the row itself and are invalid
    side_s, side_t, _, _, _ = _case(m=1, q=1, k=4, c=3, seed=5)
    idx = torch.zeros(1, 4, dtype=torch.long)
    valid = torch.tensor([[True, False, False, False]])
    phi = torch.ones(1)
    got, want = _run(pd_edge_loss, side_s, side_t, idx, valid, phi), \
        _run(pd_edge_loss_reference, side_s, side_t, idx, valid, phi)
    torch.testing.assert_close(got[0], want[0])
    # every edge is the same: the batch variance is 0 up to rounding and rstd = 1 / sqrt(eps) = 316 magnifies
    # float32 rounding of the (exactly zero) normalised values, so the gradients agree to 1e-4 here
    for g, r in zip(got[2], want[2]):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4)


@requires_ext
@pytest.mark.parametrize("c", [5, 8])     # the portable query pass and (where the CPU has it) the AVX2 one
def test_fused_results_do_not_depend_on_the_thread_count(c):
    # q 1100: 35 blocks of 32 queries whose partial sums are added in block order, and a row pass over 400 rows
    # that every block reaches (each row's edges in a fixed order), whatever the number of threads
    case = _case(m=400, q=1100, k=16, c=c, seed=6, padded=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(pd_edge_loss, *case)
        torch.set_num_threads(max(2, threads))
        many = _run(pd_edge_loss, *case)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
    for a, b in zip(one[2], many[2]):
        assert torch.equal(a, b)
    ref = _run(pd_edge_loss_reference, *case)      # and the blocked sums are the reference's
    torch.testing.assert_close(one[0], ref[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(one[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bad_arguments_are_named():
    side_s, side_t, idx, valid, phi = _case()
    with pytest.raises(ValueError, match=r"valid must be a \(25, 7\) bool"):
        pd_edge_loss(side_s, side_t, idx, valid.float(), phi, 1.0)
    with pytest.raises(ValueError, match="idx must lie in"):
        pd_edge_loss(side_s, side_t, idx + 100, valid, phi, 1.0)
    with pytest.raises(ValueError, match="must be on the device of idx"):
        pd_edge_loss(side_s, side_t, idx, valid, phi.to("meta"), 1.0)
    with pytest.raises(ValueError, match="teacher gamma / beta"):
        pd_edge_loss(side_s, [side_t[0], side_t[1], side_t[2][:2], side_t[3]], idx, valid, phi, 1.0)


@requires_ext
@pytest.mark.parametrize("c", [6, 8])
@pytest.mark.parametrize("need", ["both", "student", "teacher"])
def test_cached_backward_equals_the_recomputing_backward(need, c):
    # the CPU forward keeps the loss sweep's per-query and per-row sums for the backward (which then sweeps no
    # edge); the backward without them (ext.backward, which reruns that sweep) gives the same gradients bit for
    # bit, for every side that needs them, and the autograd path equals the reference
    ext = _loader.load_extension(EXT_NAME)
    if not hasattr(ext, "forward_train"):
        pytest.skip(f"{EXT_NAME} predates forward_train: rebuild (pip install --no-build-isolation -e .)")
    side_s, side_t, idx, valid, phi = _case(m=80, q=40, k=9, c=c, seed=11, padded=True)
    need_s, need_t = need in ("both", "student"), need in ("both", "teacher")
    f32 = [t.detach().float().contiguous() for t in (*side_s, *side_t)]
    loss, stats, *cache = ext.forward_train(f32[:4], f32[4:], idx, valid, phi, 2.0, 1e-5, need_s, need_t)
    grad = torch.tensor(0.7)
    cached = ext.backward_cached(grad, f32[:4], f32[4:], idx, valid, phi, stats, 2.0, 1e-5, need_s, need_t, cache)
    plain = ext.backward(grad, f32[:4], f32[4:], idx, valid, phi, stats, 2.0, 1e-5, need_s, need_t)
    for x, (a, b) in enumerate(zip(cached, plain)):
        if need_s if x < 4 else need_t:
            assert a is not None and a.numel() > 0 and torch.equal(a, b), x
        else:
            assert a is None and b is None, x
    s = [t.detach().clone().requires_grad_(need_s) for t in side_s]
    t_ = [t.detach().clone().requires_grad_(need_t) for t in side_t]
    ref_s = [t.detach().clone().requires_grad_(need_s) for t in side_s]
    ref_t = [t.detach().clone().requires_grad_(need_t) for t in side_t]
    (pd_edge_loss(s, t_, idx, valid, phi, 2.0)[0] * 0.7).backward()
    (pd_edge_loss_reference(ref_s, ref_t, idx, valid, phi, 2.0)[0] * 0.7).backward()
    for a, b in zip(s + t_, ref_s + ref_t):
        if b.grad is None:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    # a cache of the wrong shape (a forward run without that side's gradient) is refused by name
    _, _, *no_cache = ext.forward_train(f32[:4], f32[4:], idx, valid, phi, 2.0, 1e-5, False, False)
    with pytest.raises(RuntimeError, match="cache of the student side does not fit"):
        ext.backward_cached(grad, f32[:4], f32[4:], idx, valid, phi, stats, 2.0, 1e-5, True, False, no_cache)
    # the recomputing backward checks its arguments before its sweep, which scatters into the rows of idx
    with pytest.raises(RuntimeError, match="idx holds 80 outside"):
        ext.backward(grad, f32[:4], f32[4:], idx.clamp(max=0) + 80, valid, phi, stats, 2.0, 1e-5, True, False)
    with pytest.raises(RuntimeError, match="stats must hold"):
        ext.backward(grad, f32[:4], f32[4:], idx, valid, phi, stats[:2], 2.0, 1e-5, True, False)


@requires_ext
@pytest.mark.parametrize("need", [(True, False), (True, True), (False, False)])
def test_avx2_passes_equal_the_portable_loops_on_one_input(need):
    # C' 16 takes the AVX2 query and row passes where the CPU has them; the test hook forbids them, so the portable
    # loops run on the same input: same loss, statistics and backward sums to float rounding (the portable clones
    # may contract a multiply-add into an FMA), tie-heavy and padded edges included
    ext = _loader.load_extension(EXT_NAME)
    if not hasattr(ext, "set_avx2"):
        pytest.skip(f"{EXT_NAME} predates set_avx2: rebuild (pip install --no-build-isolation -e .)")
    if not ext.set_avx2(True):
        pytest.skip("no AVX2 path on this CPU / build: only the portable loops exist")
    need_s, need_t = need
    for seed, ties in ((12, False), (13, True)):
        side_s, side_t, idx, valid, phi = _case(m=120, q=70, k=11, c=16, seed=seed, ties=ties, padded=True)
        f32 = [t.detach().float().contiguous() for t in (*side_s, *side_t)]
        outs = []
        try:
            for allow in (True, False):
                ext.set_avx2(allow)
                outs.append(ext.forward_train(f32[:4], f32[4:], idx, valid, phi, 2.0, 1e-5, need_s, need_t))
        finally:
            ext.set_avx2(True)
        fast, portable = outs
        assert len(fast) == len(portable) == 12
        assert fast[0].item() > 0
        for x, (a, b) in enumerate(zip(fast, portable)):
            assert a.shape == b.shape, x
            if a.numel():
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"output {x}: {m}")
        if need_s:
            assert fast[2].abs().sum() > 0 and fast[5].abs().sum() > 0     # da_q and da_r of the student
