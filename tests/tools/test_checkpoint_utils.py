"""Atomic checkpoint writes, keep-last-N and the choice of the checkpoint to resume from."""
import os

import pytest
import torch
import torch.nn as nn

from pcdet.utils import checkpoint_utils as cu


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def _save(path, model, epoch, it):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return cu.save_checkpoint(cu.checkpoint_state(model, opt, epoch, it), path)


def test_checkpoint_state_layout_and_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    path = cu.save_checkpoint(cu.checkpoint_state(model, opt, epoch=3, it=30, it_per_epoch=10), tmp_path / "checkpoint_epoch_3")
    assert path.endswith("checkpoint_epoch_3.pth")
    ckpt = cu.load_checkpoint(path)
    assert set(ckpt) == {"model_state", "optimizer_state", "epoch", "it", "it_per_epoch", "version"}
    assert ckpt["version"].startswith("pcdet+")
    other = _model(seed=1)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.01)
    assert cu.load_for_resume(other, other_opt, path) == (30, 3)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "latest_model.pth"
    _save(path, model, epoch=1, it=10)
    before = path.read_bytes()

    def crashing_save(obj, f):
        f.write(b"PARTIAL")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(cu.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        _save(path, _model(seed=3), epoch=2, it=20)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["latest_model.pth"]
    assert cu.load_checkpoint(path)["it"] == 10


def test_resume_ignores_temp_and_truncated_files_and_picks_most_advanced(tmp_path):
    model = _model()
    _save(tmp_path / "checkpoint_epoch_1.pth", model, epoch=1, it=10)
    _save(tmp_path / "checkpoint_epoch_2.pth", model, epoch=2, it=20)
    # a process killed inside save_checkpoint leaves only its temporary file behind
    (tmp_path / "checkpoint_epoch_3.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    assert cu.find_resume_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch_2.pth")
    # a truncated .pth (e.g. copied in by hand) is skipped with a warning
    (tmp_path / "checkpoint_epoch_4.pth").write_bytes(b"\x80\x02garbage")
    warnings = []

    class Log:
        def warning(self, msg):
            warnings.append(msg)

    assert cu.find_resume_checkpoint(tmp_path, logger=Log()) == str(tmp_path / "checkpoint_epoch_2.pth")
    assert len(warnings) == 1 and "checkpoint_epoch_4.pth" in warnings[0]
    # a mid-epoch latest_model ahead of the last epoch checkpoint wins
    _save(tmp_path / "latest_model.pth", model, epoch=2, it=25)
    assert cu.find_resume_checkpoint(tmp_path) == str(tmp_path / "latest_model.pth")
    assert cu.find_resume_checkpoint(tmp_path / "missing") is None


def test_prune_keeps_newest_n_by_epoch_number(tmp_path):
    model = _model()
    for epoch in (1, 2, 10, 3):
        _save(tmp_path / f"checkpoint_epoch_{epoch}.pth", model, epoch=epoch, it=epoch)
    _save(tmp_path / "latest_model.pth", model, epoch=0, it=0)
    deleted = cu.prune_checkpoints(tmp_path, 2)
    assert sorted(os.path.basename(p) for p in deleted) == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_epoch_10.pth", "checkpoint_epoch_3.pth", "latest_model.pth"]
    assert cu.prune_checkpoints(tmp_path, 5) == []


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(cu.CheckpointError, match="checkpoint not found: .*nope.pth"):
        cu.load_checkpoint(tmp_path / "nope.pth")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(cu.CheckpointError, match="foreign.pth: not a training checkpoint"):
        cu.load_checkpoint(tmp_path / "foreign.pth")
    _save(tmp_path / "small.pth", _model(), epoch=1, it=1)
    bigger = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(cu.CheckpointError, match="small.pth: model state does not fit"):
        cu.load_for_resume(bigger, None, tmp_path / "small.pth")


def test_resume_schedule_check_and_umask(tmp_path):
    import os

    import pytest

    from pcdet.utils import checkpoint_utils as cu

    cu.check_resume_schedule("x/checkpoint_epoch_2.pth", 20, 2, 10, 10)            # same: fine
    cu.check_resume_schedule("x/checkpoint_epoch_2.pth", 20, 2, None, 10)          # legacy, inferred 20 / 2
    with pytest.raises(cu.CheckpointError, match="trained with 10 iterations per epoch .* this run has 7"):
        cu.check_resume_schedule("x/checkpoint_epoch_2.pth", 20, 2, None, 7)
    with pytest.raises(cu.CheckpointError, match="trained with 10 iterations per epoch"):
        cu.check_resume_schedule("x/latest_model.pth", 25, 2, 10, 12)
    cu.check_resume_schedule("x/latest_model.pth", 25, 2, None, 12)                # legacy mid-epoch: unknown
    old = os.umask(0o027)
    try:
        path = cu.save_checkpoint({"model_state": {}}, tmp_path / "c.pth")
        assert os.stat(path).st_mode & 0o777 == 0o640 == cu.file_mode()
    finally:
        os.umask(old)
    (tmp_path / "c.pth.zz.tmp").write_bytes(b"x")
    assert cu.remove_stale_temp_files(tmp_path) == [str(tmp_path / "c.pth.zz.tmp")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]
