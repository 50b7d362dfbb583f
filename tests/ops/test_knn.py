"""knn_in_scans and edge_features (reference and compiled CPU kernel) against brute force on fresh random inputs."""
import pytest
import torch

from pcdet.ops import _loader
from pcdet.ops.knn import EXT_NAME, edge_features, knn_in_scans, resolve_algorithm

COMPILED = _loader.load_extension(EXT_NAME) is not None
PATHS = [True, pytest.param(False, marks=pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built"))]


def brute_force(features, batch_idx, k, query_index):
    """Full float64 distance matrix, lexicographic (distance, row) order within the scan."""
    f = features.double()
    idx, valid = [], []
    for i in query_index.tolist():
        rows = (batch_idx == batch_idx[i]).nonzero().squeeze(1)   # ascending: a stable sort breaks ties by row
        ranked = rows[torch.argsort(((f[rows] - f[i]) ** 2).sum(1), stable=True)][:k].tolist()
        idx.append(ranked + [i] * (k - len(ranked)))
        valid.append([True] * len(ranked) + [False] * (k - len(ranked)))
    return torch.tensor(idx, dtype=torch.long).view(-1, k), torch.tensor(valid).view(-1, k)


def integer_features(m, c, low=-2, high=3):
    """Small-integer features: distances are exact in float32 and ties (duplicate rows) are frequent."""
    return torch.randint(low, high, (m, c)).float()


def scans_with_gaps(m, num_scans=5):
    """Unsorted batch indices where scan 1 is empty and scan 3 holds a single row."""
    batch = torch.randint(0, num_scans, (m,))
    batch[batch == 1] = 0
    batch[batch == 3] = 4
    batch[torch.randint(0, m, (1,))] = 3
    return batch


@pytest.mark.parametrize("use_reference", PATHS)
@pytest.mark.parametrize("tile", [5, 64])
def test_ties_gaps_and_subset_match_brute_force(use_reference, tile):
    features = integer_features(90, 3)
    batch = scans_with_gaps(90)
    query = torch.randperm(90)[:40]
    k = 12
    idx, valid = knn_in_scans(features, batch, k, query, tile=tile, use_reference=use_reference)
    want_idx, want_valid = brute_force(features, batch, k, query)
    assert idx.dtype == torch.long and valid.dtype == torch.bool and idx.shape == (40, k)
    assert torch.equal(idx, want_idx)
    assert torch.equal(valid, want_valid)


@pytest.mark.parametrize("use_reference", PATHS)
def test_fewer_rows_than_k_and_single_point(use_reference):
    features = torch.randn(4, 6)
    batch = torch.tensor([2, 0, 2, 2])
    idx, valid = knn_in_scans(features, batch, 5, use_reference=use_reference)
    assert idx[1].tolist() == [1] * 5 and valid[1].tolist() == [True] + [False] * 4
    for q in (0, 2, 3):
        assert idx[q, 0] == q and sorted(idx[q, :3].tolist()) == [0, 2, 3]
        assert idx[q, 3:].tolist() == [q, q] and valid[q].tolist() == [True] * 3 + [False] * 2


@pytest.mark.parametrize("use_reference", PATHS)
def test_continuous_features_distances_match(use_reference):
    features = torch.randn(300, 16, dtype=torch.float64)
    batch = torch.sort(torch.randint(0, 3, (300,))).values
    idx, valid = knn_in_scans(features, batch, 20, tile=32, use_reference=use_reference)
    want_idx, _ = brute_force(features, batch, 20, torch.arange(300))
    got_d = ((features[idx] - features[:, None]) ** 2).sum(-1)
    want_d = ((features[want_idx] - features[:, None]) ** 2).sum(-1)
    torch.testing.assert_close(got_d, want_d)
    assert bool(valid.all()) and torch.equal(idx[:, 0], torch.arange(300))


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_compiled_equals_reference_with_duplicates():
    features = torch.randn(600, 8)
    features[300:450] = features[torch.randint(0, 300, (150,))]  # exact duplicate rows: exact ties
    batch = torch.randint(0, 2, (600,))
    query = torch.randint(0, 600, (200,))
    got = knn_in_scans(features, batch, 32, query, tile=100)
    want = knn_in_scans(features, batch, 32, query, tile=100, use_reference=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _check_both_screens(features, batch, k, query, tile):
    """The compiled kernel with float32 and with bf16 screening returns exactly the float64 brute force."""
    want_idx, want_valid = brute_force(features, batch, k, query)
    for low_precision in (False, True):
        idx, valid = knn_in_scans(features, batch, k, query, tile=tile, low_precision=low_precision)
        assert torch.equal(valid, want_valid), low_precision
        assert torch.equal(idx, want_idx), (low_precision, (idx != want_idx).any(1).nonzero().squeeze(1)[:5])


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_sampled_threshold_path_is_exact_on_large_scans():
    # scans of ~450 rows with tile 16: the first 64 rows are the threshold sample, the rest is screened against it
    torch.manual_seed(3)
    features = torch.randn(900, 24) * torch.logspace(-1, 1, 24)   # channels of very different scales
    batch = torch.randint(0, 2, (900,))
    query = torch.randperm(900)[:150]
    _check_both_screens(features, batch, 20, query, tile=16)


@pytest.mark.parametrize("k", [3, 48])
@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_sample_threshold_selection_both_ways_is_exact(k):
    # one scan of 3000 rows, tile 16, sample 64 rows: k 3 gives a sample rank of 3 (the running heap, rank * 16 <
    # 64); k 48 a rank of 7 (the selection on a copy); ties: every value is on a coarse grid. Either way the result
    # must be the brute force
    torch.manual_seed(6)
    features = torch.randint(-3, 4, (3000, 16)).float()
    batch = torch.zeros(3000, dtype=torch.long)
    query = torch.randperm(3000)[:120]
    _check_both_screens(features, batch, k, query, tile=16)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_a_misleading_sample_falls_back_to_exact_ranking():
    # 58 copies of the query point (fewer than k 60): rows 0-39 and every 8th row from 40 to 176. The threshold
    # sample of the GEMM blocks (the scan's first 64 rows at tile 16: 43 copies, rank 22) and that of the fused path
    # (every 8th row of the 540: 23 copies, rank 23) both estimate a threshold that admits only the copies, fewer
    # than k, so the estimate is detected as too low and every row is ranked
    torch.manual_seed(4)
    features = torch.randn(540, 32) * 5 + 3
    copies = torch.cat([torch.arange(40), torch.arange(40, 177, 8)])
    assert len(copies) == 58
    features[copies] = 1.0
    features[0] += 1e-3
    batch = torch.zeros(540, dtype=torch.long)
    query = torch.tensor([0, 1, 45, 300])
    _check_both_screens(features, batch, 60, query, tile=16)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_near_duplicate_cluster_within_the_bf16_margin_stays_exact():
    # a cluster of 600 rows far from the scan mean (a second cluster of 100 rows sits opposite) whose spread is far
    # below bf16 resolution at that distance, with 100 exact duplicates: the bf16 keys cannot separate them, so the
    # error margin admits the whole cluster; the buffer overflows into the heap and then the exact regime
    torch.manual_seed(5)
    base = torch.randn(1, 48) * 10 + 50
    features = torch.cat([base + 1e-3 * torch.randn(600, 48), -base + torch.randn(100, 48)])
    features[500:600] = features[torch.randint(0, 500, (100,))]
    features = features[torch.randperm(700)]
    batch = torch.zeros(700, dtype=torch.long)
    query = torch.randint(0, 700, (60,))
    _check_both_screens(features, batch, 32, query, tile=64)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_float64_and_tie_heavy_integer_features_with_sampling():
    torch.manual_seed(6)
    f64 = torch.randn(500, 20, dtype=torch.float64) * 1e3
    _check_both_screens(f64, torch.zeros(500, dtype=torch.long), 25, torch.randperm(500)[:80], tile=16)
    ints = integer_features(600, 16, low=-1, high=2)   # many exact ties at every distance
    _check_both_screens(ints, torch.randint(0, 2, (600,)), 40, torch.randperm(600)[:100], tile=16)


@pytest.mark.parametrize("c", [4, 13, 64])
@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_fused_screening_past_the_sample_is_exact(c):
    # tile 8: a scan's first 32 rows are the threshold sample; the rows after them go through the fused GEMM +
    # screening (on CPUs with AVX2 + FMA) in panels of 16 rows, the last one padded. Scans of 33 rows (one row past
    # the sample), 48 (one full panel), 81 and 300; tiles of 8 queries (groups of 6 padded); k 40 exceeds the rows
    # past the sample of the small scans, whose queries then start the fused part with an infinite threshold (the
    # running heap). Every 7th row duplicates its successor (exact ties).
    torch.manual_seed(11)
    sizes = [33, 48, 81, 300]
    batch = torch.cat([torch.full((n,), s) for s, n in enumerate(sizes)])
    batch = batch[torch.randperm(len(batch))]
    features = torch.randn(len(batch), c) * torch.logspace(-1, 1, c)
    dup = torch.arange(0, len(batch) - 1, 7)
    features[dup] = features[dup + 1]
    query = torch.randperm(len(batch))[:101]
    for k in (5, 40):
        _check_both_screens(features, batch, k, query, tile=8)


def _tree_and_gemm(features, batch, k, query):
    tree = knn_in_scans(features, batch, k, query, algorithm="tree")
    gemm = knn_in_scans(features, batch, k, query, algorithm="gemm")
    assert torch.equal(tree[0], gemm[0]) and torch.equal(tree[1], gemm[1])
    return tree


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 7, 40, 300])
def test_tree_path_is_the_brute_force_on_tie_heavy_scans_with_gaps(channels, k):
    # small-integer coordinates: exact distances, many ties; scans of ~700 rows (trees several levels deep), an
    # empty scan, a single-row scan, unsorted batch indices; k 300 exceeds the smaller scans
    torch.manual_seed(10 + channels)
    features = integer_features(1500, channels, low=-4, high=5)
    batch = scans_with_gaps(1500, num_scans=5)
    others = (batch != 3).nonzero().squeeze(1)
    batch[others[torch.randperm(others.numel())[:400]]] = 2
    query = torch.randperm(1500)[:120]
    query[0] = int((batch == 3).nonzero()[0])   # the single-row scan
    idx, valid = _tree_and_gemm(features, batch, k, query)
    want_idx, want_valid = brute_force(features, batch, k, query)
    assert torch.equal(valid, want_valid)
    assert torch.equal(idx, want_idx)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_tree_path_with_duplicate_clusters_continuous_float64_and_many_channels():
    torch.manual_seed(11)
    # 200 copies of one point (more than a leaf: the median splits cut through equal values) among spread points
    xyz = torch.randn(3000, 3) * 20
    xyz[torch.randperm(3000)[:200]] = torch.tensor([1.5, -2.0, 0.25])
    query = torch.randperm(3000)[:150]
    idx, _ = _tree_and_gemm(xyz, torch.zeros(3000, dtype=torch.long), 64, query)
    want, _ = brute_force(xyz, torch.zeros(3000, dtype=torch.long), 64, query)
    assert torch.equal(idx, want)
    # continuous float64 coordinates, and the tree forced on 8 channels (its row-major leaf path)
    f64 = torch.randn(2500, 3, dtype=torch.float64)
    batch = torch.randint(0, 2, (2500,))
    _tree_and_gemm(f64, batch, 33, torch.randperm(2500)[:200])
    ints8 = integer_features(1200, 8, low=-1, high=2)
    idx8, _ = _tree_and_gemm(ints8, torch.zeros(1200, dtype=torch.long), 25, torch.arange(0, 1200, 13))
    want8, _ = brute_force(ints8, torch.zeros(1200, dtype=torch.long), 25, torch.arange(0, 1200, 13))
    assert torch.equal(idx8, want8)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_tree_path_is_independent_of_threads_and_the_default_for_one_to_three_channels():
    torch.manual_seed(12)
    xyz = torch.rand(4000, 3) * torch.tensor([70.0, 80.0, 4.0])
    batch = torch.sort(torch.randint(0, 3, (4000,))).values
    query = torch.randperm(4000)[:500]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = knn_in_scans(xyz, batch, 48, query)
        torch.set_num_threads(2)
        two = knn_in_scans(xyz, batch, 48, query)
    finally:
        torch.set_num_threads(threads)
    tree = knn_in_scans(xyz, batch, 48, query, algorithm="tree")
    assert torch.equal(one[0], two[0]) and torch.equal(one[0], tree[0])
    d = ((xyz[one[0]] - xyz[query][:, None]) ** 2).sum(-1)
    assert bool((d[:, 1:] >= d[:, :-1]).all())   # ascending
    with pytest.raises(ValueError, match="algorithm must be one of"):
        knn_in_scans(xyz, batch, 4, algorithm="kdtree")
    assert [resolve_algorithm(torch.zeros(2, c)) for c in (0, 1, 3, 4, 64)] == ["gemm", "tree", "tree", "gemm", "gemm"]
    assert resolve_algorithm(torch.zeros(2, 64), "tree") == "tree"


@pytest.mark.parametrize("use_reference", PATHS)
def test_zero_channels_and_non_finite_features(use_reference):
    # zero channels: every row is at distance 0, so ties give the lowest rows (the tree is not used for C = 0)
    idx, valid = knn_in_scans(torch.zeros(100, 0), torch.zeros(100, dtype=torch.long), 3, use_reference=use_reference)
    assert idx[:, 0].tolist() == [0] * 100 and idx[5].tolist() == [0, 1, 2] and bool(valid.all())
    for bad in (float("nan"), float("inf")):
        features = torch.randn(300, 3)
        features[7, 1] = bad
        with pytest.raises(ValueError, match="features must be finite: row 7 of 300"):
            knn_in_scans(features, torch.zeros(300, dtype=torch.long), 8, torch.tensor([2, 7]),
                         use_reference=use_reference)


@pytest.mark.parametrize("use_reference", PATHS)
def test_no_gradient_through_idx_and_empty_query(use_reference):
    features = torch.randn(20, 4, requires_grad=True)
    batch = torch.zeros(20, dtype=torch.long)
    idx, valid = knn_in_scans(features, batch, 3, use_reference=use_reference)
    assert not idx.requires_grad and not valid.requires_grad
    idx, valid = knn_in_scans(features, batch, 3, torch.zeros(0, dtype=torch.long), use_reference=use_reference)
    assert idx.shape == (0, 3) and valid.shape == (0, 3)


@pytest.mark.parametrize("use_reference", PATHS)
@pytest.mark.parametrize("mode", ["concat", "diff"])
@pytest.mark.parametrize("with_query", [False, True])
def test_edge_features_values_and_gradients(use_reference, mode, with_query):
    features = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    query = torch.randint(0, 30, (12,)) if with_query else None
    num_q = 12 if with_query else 30
    idx = torch.randint(0, 30, (num_q, 4))
    out = edge_features(features, query, idx, mode=mode, use_reference=use_reference)
    rows = torch.arange(30) if query is None else query
    f = features.detach()
    for a in range(num_q):
        for j in range(4):
            neighbour = f[idx[a, j]] - (f[rows[a]] if mode == "diff" else 0)
            torch.testing.assert_close(out[a, j], torch.cat([neighbour, f[rows[a]]]))
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    expected = torch.zeros_like(f)
    for a in range(num_q):
        for j in range(4):
            expected[idx[a, j]] += weight[a, j, :5]
            expected[rows[a]] += weight[a, j, 5:] - (weight[a, j, :5] if mode == "diff" else 0)
    torch.testing.assert_close(features.grad, expected)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_edge_features_gradcheck_compiled():
    features = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    query = torch.tensor([0, 3, 3, 7])
    idx = torch.randint(0, 8, (4, 3))
    assert torch.autograd.gradcheck(lambda f: edge_features(f, query, idx, mode="diff"), (features,))


def test_argument_errors():
    features = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"batch_idx must be a \(M,\)"):
        knn_in_scans(features, torch.zeros(9, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="query_index must lie"):
        knn_in_scans(features, torch.zeros(10, dtype=torch.long), 2, torch.tensor([10]))
    with pytest.raises(ValueError, match="k must be"):
        knn_in_scans(features, torch.zeros(10, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="mode"):
        edge_features(features, None, torch.zeros(10, 2, dtype=torch.long), mode="sum")
    with pytest.raises(ValueError, match="idx has 3 rows"):
        edge_features(features, None, torch.zeros(3, 2, dtype=torch.long))


def _emulated_exact_distance(a, b, lanes):
    """An exact distance of the compiled CPU path, in numpy float32. lanes 4: four partial sums (channel i into sum
    i % 4, the last C % 4 channels into sum 0), reduced as (s0 + s1) + (s2 + s3); lanes 8: channel i into sum i % 8,
    reduced as ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))."""
    import numpy as np
    f = np.float32
    a, b = a.numpy(), b.numpy()
    c = a.shape[0]
    s = [f(0)] * lanes
    for i in range(c):
        d = f(a[i] - b[i])
        lane = i % 8 if lanes == 8 else (i % 4 if i < c - c % 4 else 0)
        s[lane] = f(s[lane] + f(d * d))
    if lanes == 4:
        return float(f(f(s[0] + s[1]) + f(s[2] + s[3])))
    return float(f(f(f(s[0] + s[4]) + f(s[2] + s[6])) + f(f(s[1] + s[5]) + f(s[3] + s[7]))))


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
@pytest.mark.parametrize("c", [3, 7, 8, 13, 64, 67])
def test_exact_distance_is_the_documented_sum_on_every_cpu_path(c):
    # the kept rows are ranked by this value: the CPU's vector path and the portable scalar one must give the same
    # bits (results must not depend on the CPU), and both the documented order of additions
    ext = _loader.load_extension(EXT_NAME)
    torch.manual_seed(c)
    a = torch.randn(40, c) * torch.logspace(-3, 3, c)
    b = torch.randn(40, c) * torch.logspace(-3, 3, c)
    native = ext.exact_distances(a, b, False)
    portable = ext.exact_distances(a, b, True)
    assert torch.equal(native, portable)
    lanes = 4 if c < 8 else 8   # documented: four sums below 8 channels (the k-d tree's order for C <= 3)
    want = torch.tensor([_emulated_exact_distance(a[i], b[i], lanes) for i in range(40)])
    assert torch.equal(native, want)
    if c >= 8:   # the two orders differ on these rows, so the check above can tell them apart
        other = torch.tensor([_emulated_exact_distance(a[i], b[i], 4) for i in range(40)])
        assert not torch.equal(native, other)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
@pytest.mark.parametrize("k", [100, 384, 385, 500])
def test_final_ranking_both_sides_of_the_rank_sort_limit(k):
    # a query's kept rows are ordered by counting ranks up to 384 of them and by a selection + sort above; tie-heavy
    # integer features (exact distances, many equal keys) with k on both sides of that limit
    torch.manual_seed(k)
    features = integer_features(1200, 16)
    batch = torch.zeros(1200, dtype=torch.long)
    batch[700:] = 1
    query = torch.randperm(1200)[:40]
    want_idx, want_valid = brute_force(features, batch, k, query)
    idx, valid = knn_in_scans(features, batch, k, query, algorithm="gemm")
    assert torch.equal(valid, want_valid) and torch.equal(idx, want_idx)


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
@pytest.mark.parametrize("n", [0, 1, 4, 5, 383, 384])
def test_rank_sort_of_the_kept_rows_at_its_sizes(n):
    # the kept rows' packed (distance bits, row) keys are ordered by counting ranks (AVX2) up to 384 of them:
    # padded vector tails (n not a multiple of 4), the full buffer, and kk below, at and above n
    ext = _loader.load_extension(EXT_NAME)
    torch.manual_seed(n)
    dist_bits = torch.randint(0, 50, (n,))          # many equal distances: the row in the low bits breaks ties
    keys = dist_bits * 2 ** 32 + torch.randperm(max(n, 1))[:n]
    for kk in sorted({0, 1, max(n - 1, 0), n, n + 3}):
        got = ext.rank_sorted(keys, kk)
        if got is None:
            pytest.skip("this CPU has no AVX2: the kept rows are sorted with std::sort")
        assert torch.equal(got, torch.sort(keys).values[:kk]), kk
    assert ext.rank_sorted(torch.arange(385), 10) is None   # above the limit the caller sorts
