"""points_in_boxes_cpu / points_in_boxes against a per-point brute-force loop and hand cases."""
import math

import numpy as np
import torch

from pcdet.ops.roiaware_pool3d import roiaware_pool3d_utils as pib


def _brute_force(points, boxes):
    out = np.zeros((len(boxes), len(points)), dtype=np.int32)
    for m, b in enumerate(boxes):
        c, s = math.cos(b[6]), math.sin(b[6])
        for n, p in enumerate(points):
            lx = (p[0] - b[0]) * c + (p[1] - b[1]) * s
            ly = -(p[0] - b[0]) * s + (p[1] - b[1]) * c
            out[m, n] = abs(lx) < b[3] / 2 and abs(ly) < b[4] / 2 and abs(p[2] - b[2]) <= b[5] / 2
    return out


def test_hand_case_rotated_box():
    box = np.array([[0, 0, 0, 4, 1, 2, math.pi / 2]], dtype=np.float32)  # long side along y after rotation
    points = np.array([[0, 1.9, 0], [1.9, 0, 0], [0, 0, 0.99], [0, 0, 1.01], [0.4, -1.5, -0.5]], np.float32)
    mask = pib.points_in_boxes_cpu(points, box)
    assert isinstance(mask, np.ndarray) and mask.dtype == np.int32
    assert mask.tolist() == [[1, 0, 1, 0, 1]]


def test_random_matches_brute_force_and_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    points = rng.uniform(-5, 5, (300, 4)).astype(np.float32)
    boxes = np.concatenate([rng.uniform(-3, 3, (7, 3)), rng.uniform(1, 4, (7, 3)),
                            rng.uniform(-np.pi, np.pi, (7, 1))], axis=1).astype(np.float32)
    expected = _brute_force(points, boxes)
    assert expected.sum() > 20
    got = pib.points_in_boxes_cpu(torch.from_numpy(points), torch.from_numpy(boxes))
    assert got.tolist() == expected.tolist()
    monkeypatch.setattr(pib, "_CHUNK_ELEMENTS", 600)  # 2 boxes per chunk
    assert pib.points_in_boxes_cpu(points, boxes).tolist() == expected.tolist()


def test_batched_first_box_index():
    boxes = torch.tensor([[[0, 0, 0, 2, 2, 2, 0], [0.5, 0, 0, 2, 2, 2, 0]],
                          [[5, 5, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]]], dtype=torch.float32)
    points = torch.tensor([[[0, 0, 0], [1.2, 0, 0], [3, 0, 0]],
                           [[5, 5, 0], [0, 0, 0], [5.4, 5.4, 0.4]]], dtype=torch.float32)
    idx = pib.points_in_boxes(points, boxes)
    assert idx.dtype == torch.int32
    assert idx.tolist() == [[0, 1, -1], [0, -1, 0]]
