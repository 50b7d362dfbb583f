"""voxel_point_counts (reference and compiled CPU kernel) against a per-point brute force on fresh random inputs."""
import math

import pytest
import torch

from pcdet.ops import _loader
from pcdet.ops.voxel_count import EXT_NAME, voxel_point_counts

COMPILED = _loader.load_extension(EXT_NAME) is not None
PATHS = [True, pytest.param(False, marks=pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built"))]

RANGE = [-2.0, -1.0, -0.5, 2.0, 3.0, 1.5]
VOXEL = [0.5, 0.25, 0.5]


def brute_force(points, pc_range, voxel_size, with_batch_idx):
    """Dict {(b, z, y, x): sorted point list} built point by point with Python floats (float32 arithmetic)."""
    off = 1 if with_batch_idx else 0
    grid = [round((pc_range[a + 3] - pc_range[a]) / voxel_size[a]) for a in range(3)]
    lo = torch.tensor(pc_range[:3], dtype=points.dtype)
    vs = torch.tensor(voxel_size, dtype=points.dtype)
    voxels, where = {}, []
    for i, p in enumerate(points):
        cell = [math.floor(float(v)) for v in (p[off:off + 3] - lo) / vs]
        if all(0 <= cell[a] < grid[a] for a in range(3)):
            key = (int(p[0]),) * with_batch_idx + (cell[2], cell[1], cell[0])
            voxels.setdefault(key, []).append(i)
            where.append(key)
        else:
            where.append(None)
    return voxels, where


def random_points(n, with_batch_idx, num_batches=3, dtype=torch.float32):
    lo = torch.tensor(RANGE[:3]) - 0.6
    hi = torch.tensor(RANGE[3:]) + 0.6
    xyz = torch.rand(n, 3) * (hi - lo) + lo
    # Snap a third of the points onto voxel boundaries (range min/max included) to exercise the floor rule.
    snap = torch.rand(n) < 0.33
    xyz[snap] = torch.round(xyz[snap] / torch.tensor(VOXEL)) * torch.tensor(VOXEL)
    cols = [xyz, torch.rand(n, 1)]
    if with_batch_idx:
        batch = torch.randint(0, num_batches, (n, 1)).float()
        batch[batch == 1] = 2  # batch 1 stays empty
        cols.insert(0, batch)
    return torch.cat(cols, dim=1).to(dtype)


def check_against_brute_force(points, coords, counts, p2v, with_batch_idx):
    voxels, where = brute_force(points, RANGE, VOXEL, with_batch_idx)
    keys = sorted(voxels)
    assert coords.dtype == counts.dtype == p2v.dtype == torch.int64
    assert [tuple(c) for c in coords.tolist()] == keys
    assert counts.tolist() == [len(voxels[k]) for k in keys]
    expected = [-1 if key is None else keys.index(key) for key in where]
    assert p2v.tolist() == expected


@pytest.mark.parametrize("use_reference", PATHS)
@pytest.mark.parametrize("with_batch_idx", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_brute_force(use_reference, with_batch_idx, dtype):
    points = random_points(300, with_batch_idx, dtype=dtype)
    out = voxel_point_counts(points, RANGE, VOXEL, with_batch_idx=with_batch_idx, use_reference=use_reference)
    check_against_brute_force(points, *out, with_batch_idx)
    assert int(out[1].sum()) == int((out[2] >= 0).sum())


@pytest.mark.parametrize("use_reference", PATHS)
def test_boundaries(use_reference):
    points = torch.tensor([[-2.0, -1.0, -0.5],   # range min: inside, voxel (0, 0, 0)
                           [2.0, 0.0, 0.0],      # x == xmax: outside
                           [1.999, 2.999, 1.499],  # last voxel
                           [-2.0001, 0.0, 0.0],  # just below xmin: outside
                           [0.0, 0.0, 1.5],      # z == zmax: outside
                           [-1.5, -1.0, -0.5]])  # on an inner boundary: voxel x = 1
    coords, counts, p2v = voxel_point_counts(points, RANGE, VOXEL, use_reference=use_reference)
    assert coords.tolist() == [[0, 0, 0], [0, 0, 1], [3, 15, 7]]
    assert counts.tolist() == [1, 1, 1]
    assert p2v.tolist() == [0, -1, 2, -1, -1, 1]


@pytest.mark.parametrize("use_reference", PATHS)
def test_uncapped_counts_and_single_point(use_reference):
    points = torch.zeros(1000, 4)
    coords, counts, p2v = voxel_point_counts(points, RANGE, VOXEL, use_reference=use_reference)
    assert counts.tolist() == [1000] and coords.tolist() == [[1, 4, 4]] and bool((p2v == 0).all())
    coords, counts, p2v = voxel_point_counts(points[:1], RANGE, VOXEL, use_reference=use_reference)
    assert counts.tolist() == [1] and p2v.tolist() == [0]


@pytest.mark.parametrize("use_reference", PATHS)
def test_empty_and_all_outside(use_reference):
    for points in (torch.zeros(0, 4), torch.full((5, 4), 100.0)):
        coords, counts, p2v = voxel_point_counts(points, RANGE, VOXEL, with_batch_idx=True,
                                                 use_reference=use_reference)
        assert coords.shape == (0, 4) and counts.shape == (0,)
        assert p2v.tolist() == [-1] * points.shape[0]


@pytest.mark.skipif(not COMPILED, reason=f"{EXT_NAME} is not built")
def test_compiled_equals_reference_large():
    points = random_points(20000, True, num_batches=4)
    fine = [0.05, 0.05, 0.1]
    got = voxel_point_counts(points, RANGE, fine, with_batch_idx=True)
    want = voxel_point_counts(points, RANGE, fine, with_batch_idx=True, use_reference=True)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_argument_errors():
    with pytest.raises(ValueError, match="at least 4 columns"):
        voxel_point_counts(torch.zeros(3, 3), RANGE, VOXEL, with_batch_idx=True)
    with pytest.raises(ValueError, match="voxel_size"):
        voxel_point_counts(torch.zeros(3, 3), RANGE, [0.1, 0.1])
    with pytest.raises(ValueError, match="point_cloud_range"):
        voxel_point_counts(torch.zeros(3, 3), RANGE[:5], VOXEL)
