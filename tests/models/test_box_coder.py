"""ResidualCoder (pcdet/utils/box_coder_utils.py): known encodings and encode/decode round trips."""
import math

import torch

from pcdet.utils.box_coder_utils import ResidualCoder


def test_known_encoding():
    anchors = torch.tensor([[0.0, 0.0, 0.0, 3.0, 4.0, 1.0, 0.0]])
    boxes = torch.tensor([[5.0, -2.5, 1.0, 6.0, 4.0, 2.0, 0.5]])
    enc = ResidualCoder().encode_torch(boxes, anchors)
    expected = torch.tensor([[1.0, -0.5, 1.0, math.log(2.0), 0.0, math.log(2.0), 0.5]])
    torch.testing.assert_close(enc, expected)


def test_round_trip_with_extra_columns():
    gen = torch.Generator().manual_seed(0)
    anchors = torch.cat([torch.randn(50, 3, generator=gen), torch.rand(50, 3, generator=gen) + 0.5,
                         torch.rand(50, 1, generator=gen) * 3, torch.randn(50, 2, generator=gen)], dim=1)
    boxes = torch.cat([torch.randn(50, 3, generator=gen), torch.rand(50, 3, generator=gen) + 0.5,
                       torch.rand(50, 1, generator=gen) * 3, torch.randn(50, 2, generator=gen)], dim=1)
    coder = ResidualCoder(code_size=9)
    enc = coder.encode_torch(boxes, anchors)
    assert enc.shape == (50, 9)
    torch.testing.assert_close(coder.decode_torch(enc, anchors), boxes, atol=1e-5, rtol=1e-5)


def test_round_trip_sincos_and_batched_decode():
    gen = torch.Generator().manual_seed(1)
    anchors = torch.cat([torch.randn(2, 10, 3, generator=gen), torch.rand(2, 10, 3, generator=gen) + 0.5,
                         (torch.rand(2, 10, 1, generator=gen) - 0.5) * 6], dim=-1)
    boxes = torch.cat([torch.randn(2, 10, 3, generator=gen), torch.rand(2, 10, 3, generator=gen) + 0.5,
                       (torch.rand(2, 10, 1, generator=gen) - 0.5) * 6], dim=-1)
    coder = ResidualCoder(encode_angle_by_sincos=True)
    assert coder.code_size == 8
    enc = coder.encode_torch(boxes.view(-1, 7), anchors.view(-1, 7)).view(2, 10, 8)
    dec = coder.decode_torch(enc, anchors)
    torch.testing.assert_close(dec[..., :6], boxes[..., :6], atol=1e-5, rtol=1e-5)
    # the heading comes back through atan2, i.e. modulo 2 pi
    diff = torch.remainder(dec[..., 6] - boxes[..., 6] + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-5


def test_encode_does_not_modify_inputs():
    anchors = torch.tensor([[0.0, 0.0, 0.0, 0.0, 4.0, 1.0, 0.0]])
    boxes = torch.tensor([[1.0, 1.0, 1.0, 2.0, 4.0, 1.0, 0.0]])
    a0, b0 = anchors.clone(), boxes.clone()
    enc = ResidualCoder().encode_torch(boxes, anchors)
    assert torch.isfinite(enc).all()
    assert torch.equal(anchors, a0) and torch.equal(boxes, b0)
