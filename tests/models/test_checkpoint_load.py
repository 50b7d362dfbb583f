"""Strict checkpoint loading of Detector3DTemplate: round trip, OpenPCDet and bare layouts, and errors that
list every missing key, unexpected key and shape mismatch."""
import logging
import sys
from pathlib import Path

import pytest
import torch

from pcdet.models.detectors.detector3d_template import CheckpointMismatchError, CheckpointReadError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_width import build  # noqa: E402

LOGGER = logging.getLogger("test_checkpoint_load")


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen))


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_openpcdet_layout_with_optimizer(tmp_path):
    src = build("pointpillar", 0.25)
    randomize(src, 0)
    optimizer = torch.optim.Adam(src.parameters(), lr=1e-3)
    for p in src.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    path = tmp_path / "checkpoint_epoch_3.pth"
    torch.save({"model_state": src.state_dict(), "optimizer_state": optimizer.state_dict(), "epoch": 3, "it": 120,
                "version": "pcdet+test"}, path)

    dst = build("pointpillar", 0.25)
    dst_opt = torch.optim.Adam(dst.parameters(), lr=5e-2)
    it, epoch = dst.load_params_with_optimizer(path, to_cpu=True, optimizer=dst_opt, logger=LOGGER)
    assert (it, epoch) == (120, 3)
    assert_same_state(src, dst)
    assert dst_opt.param_groups[0]["lr"] == 1e-3
    assert len(dst_opt.state) == len(list(dst.parameters()))

    fresh = build("pointpillar", 0.25)
    fresh.load_params_from_file(path, logger=LOGGER, to_cpu=True)
    assert_same_state(src, fresh)


def test_bare_state_dict(tmp_path):
    src = build("second", 0.25)
    randomize(src, 1)
    path = tmp_path / "bare.pth"
    torch.save(src.state_dict(), path)
    dst = build("second", 0.25)
    dst.load_params_from_file(path, logger=None)
    assert_same_state(src, dst)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    src = build("pointpillar", 0.25)
    state = dict(src.state_dict())
    del state["dense_head.conv_dir_cls.bias"]
    state["dense_head.conv_extra.weight"] = torch.zeros(3)
    state["dense_head.conv_cls.weight"] = torch.zeros(18, 7, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save({"model_state": state}, path)
    dst = build("pointpillar", 0.25)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        dst.load_params_from_file(path, logger=LOGGER)
    msg = str(info.value)
    assert str(path) in msg
    assert "missing key: dense_head.conv_dir_cls.bias" in msg
    assert "unexpected key: dense_head.conv_extra.weight" in msg
    assert "shape mismatch: dense_head.conv_cls.weight: checkpoint (18, 7, 1, 1) vs model (18, 96, 1, 1)" in msg
    assert isinstance(info.value, RuntimeError)
    for key, val in dst.state_dict().items():  # nothing was loaded
        assert torch.equal(val, before[key])


def test_width_mismatch_is_reported(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model_state": build("pointpillar", 0.5).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"vfe\.pfn_layers\.0\.linear\.weight: checkpoint \(32, 10\) "
                                                      r"vs model \(16, 10\)"):
        build("pointpillar", 0.25).load_params_from_file(path, logger=LOGGER)


def test_missing_and_corrupt_files(tmp_path):
    model = build("pointpillar", 0.25)
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointReadError, match="not found: .*nope.pth"):
        model.load_params_from_file(missing, logger=LOGGER)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(CheckpointReadError, match="corrupt.pth: cannot read checkpoint"):
        model.load_params_from_file(corrupt, logger=LOGGER)
    truncated = tmp_path / "truncated.pth"
    torch.save({"model_state": model.state_dict()}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(CheckpointReadError, match="truncated.pth"):
        model.load_params_with_optimizer(truncated, logger=LOGGER)
    other = tmp_path / "other.pth"
    torch.save({"weights": {"a": torch.zeros(1)}, "note": "x"}, other)
    with pytest.raises(CheckpointReadError, match="no 'model_state'"):
        model.load_params_from_file(other, logger=LOGGER)


def test_spconv1_weight_layout_is_converted(tmp_path):
    src = build("second", 0.25)
    randomize(src, 2)
    state = dict(src.state_dict())
    for key in ("backbone_3d.conv2.0.0.weight", "backbone_3d.conv2.1.0.weight"):  # in != out and in == out
        state[key] = state[key].permute(1, 2, 3, 4, 0).contiguous()  # spconv 2.x -> 1.x (kx, ky, kz, in, out)
    path = tmp_path / "spconv1.pth"
    torch.save({"model_state": state}, path)
    dst = build("second", 0.25)
    dst.load_params_from_file(path, logger=LOGGER)
    assert_same_state(src, dst)
