"""Optimizers, schedules and the training loop of tools/train_utils on a toy model (CPU, seconds)."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from easydict import EasyDict

from pcdet.utils import checkpoint_utils

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load(name, rel_path, package_dir=None):
    """Import a tools/ module from its file (tools/ is a script folder, not an installed package)."""
    if name in sys.modules:
        return sys.modules[name]
    kwargs = {"submodule_search_locations": [str(package_dir)]} if package_dir else {}
    spec = importlib.util.spec_from_file_location(name, TOOLS / rel_path, **kwargs)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


optimization = _load("tools_optimization", "train_utils/optimization/__init__.py",
                     TOOLS / "train_utils" / "optimization")
train_utils = _load("tools_train_utils", "train_utils/train_utils.py")


class ToyDetector(nn.Module):
    """Follows the detector contract: training forward -> ({'loss'}, tb_dict, disp_dict)."""

    def __init__(self, nan_at_call=None):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.calls = 0
        self.nan_at_call = nan_at_call

    def forward(self, batch_dict):
        out = self.bn(self.fc(batch_dict["x"]))
        loss_cls = ((out - batch_dict["y"]) ** 2).mean()
        loss_reg = out.abs().mean() * 0.1
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            loss_reg = loss_reg * float("nan")
        self.calls += 1
        loss = loss_cls + loss_reg
        tb_dict = {"loss_cls": loss_cls.item(), "loss_reg": loss_reg.item(), "kd_feat": 0.5}
        return {"loss": loss}, tb_dict, {}


def toy_model_func(model, batch_dict):
    ret_dict, tb_dict, disp_dict = model(batch_dict)
    return ret_dict["loss"].mean(), tb_dict, disp_dict


def toy_loader(num_batches=4, batch_size=4):
    gen = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(batch_size, 3, generator=gen), "y": torch.randn(batch_size, 2, generator=gen)}
            for _ in range(num_batches)]


def _optim_cfg(**kw):
    cfg = {"OPTIMIZER": "adam_onecycle", "LR": 0.003, "WEIGHT_DECAY": 0.01, "MOMENTUM": 0.9,
           "MOMS": [0.95, 0.85], "PCT_START": 0.4, "DIV_FACTOR": 10, "DECAY_STEP_LIST": [35, 45],
           "LR_DECAY": 0.1, "LR_CLIP": 1e-7, "LR_WARMUP": False, "WARMUP_EPOCH": 1, "GRAD_NORM_CLIP": 10}
    cfg.update(kw)
    return EasyDict(cfg)


def _sched(cfg, iters_per_epoch=10, epochs=10):
    model = ToyDetector()
    opt = optimization.build_optimizer(model, cfg)
    return opt, optimization.build_scheduler(opt, iters_per_epoch, epochs, -1, cfg)


def test_one_cycle_lr_and_momentum_at_start_peak_end():
    opt, sched = _sched(_optim_cfg())
    assert isinstance(opt, torch.optim.AdamW)
    total, warm = 100, 40
    sched.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0003)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.95, 0.99))
    sched.step(warm // 2)
    assert opt.param_groups[0]["lr"] == pytest.approx((0.0003 + 0.003) / 2)
    sched.step(warm)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.003)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.85)
    sched.step(total)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0003 / 1e4)
    assert opt.param_groups[0]["betas"][0] == pytest.approx(0.95)


def test_cosine_schedule_with_warmup():
    cfg = _optim_cfg(OPTIMIZER="adam", SCHEDULER="cosine", LR=0.01, LR_CLIP=0.001, LR_WARMUP=True, WARMUP_EPOCH=1)
    opt, sched = _sched(cfg)
    assert isinstance(opt, torch.optim.Adam)
    sched.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    sched.step(50)
    assert opt.param_groups[0]["lr"] == pytest.approx((0.01 + 0.001) / 2)
    sched.step(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    decayed_at_5 = 0.001 + (0.01 - 0.001) / 2 * (math.cos(math.pi * 0.05) + 1)
    sched.step(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001 + (decayed_at_5 - 0.001) / 2)


def test_step_decay_at_epoch_boundaries_and_clip():
    cfg = _optim_cfg(OPTIMIZER="sgd", LR=0.1, DECAY_STEP_LIST=[2, 4], LR_DECAY=0.1, LR_CLIP=0.002)
    opt, sched = _sched(cfg, iters_per_epoch=10, epochs=6)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    expected = {0: 0.1, 19: 0.1, 20: 0.01, 39: 0.01, 40: 0.002, 59: 0.002}
    for step, lr in expected.items():
        sched.step(step)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr), step


def test_unknown_optimizer_and_missing_key_are_named():
    with pytest.raises(ValueError, match=r"OPTIMIZATION.OPTIMIZER: build_optimizer expects one of \['adam_onecycle', "
                                         r"'adam', 'adamw', 'sgd'\], got 'rmsprop'"):
        optimization.build_optimizer(ToyDetector(), _optim_cfg(OPTIMIZER="rmsprop"))
    with pytest.raises(ValueError, match="OPTIMIZATION.LR: missing required key 'LR' of build_optimizer"):
        optimization.build_optimizer(ToyDetector(), EasyDict({"OPTIMIZER": "adam"}))
    opt = optimization.build_optimizer(ToyDetector(), _optim_cfg())
    with pytest.raises(ValueError, match="SCHEDULER 'linear'"):
        optimization.build_scheduler(opt, 10, 2, -1, _optim_cfg(SCHEDULER="linear"))


def test_frozen_parameters_are_not_optimised():
    model = ToyDetector()
    model.fc.weight.requires_grad_(False)
    opt = optimization.build_optimizer(model, _optim_cfg())
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.fc.weight) not in ids and id(model.fc.bias) in ids


def test_split_terms_separates_kd_terms():
    det, kd = train_utils.split_terms({"loss_cls": torch.tensor(1.5), "kd_logit": 0.25, "hm": torch.zeros(3)})
    assert det == {"loss_cls": 1.5} and kd == {"kd_logit": 0.25}


def _train(model, ckpt_dir, epochs, start_epoch=0, start_iter=0, optimizer=None, **kw):
    cfg = _optim_cfg()
    loader = toy_loader()
    optimizer = optimizer or optimization.build_optimizer(model, cfg)
    sched = optimization.build_scheduler(optimizer, len(loader), epochs, start_iter - 1, cfg)
    return train_utils.train_model(
        model, optimizer, loader, toy_model_func, sched, cfg, start_epoch=start_epoch, total_epochs=epochs,
        start_iter=start_iter, rank=0, tb_log=None, ckpt_save_dir=ckpt_dir, **kw
    ), optimizer


def test_non_finite_loss_raises_naming_term_and_writes_no_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ToyDetector(nan_at_call=6)
    with pytest.raises(train_utils.NonFiniteLossError) as info:
        _train(model, tmp_path, epochs=2, ckpt_save_iter_interval=1)
    msg = str(info.value)
    assert "iteration 6" in msg and "epoch 1" in msg and "loss_reg=nan" in msg and "loss_cls" not in msg
    # latest_model.pth holds the last good step; nothing was written from the step with the NaN loss
    latest = checkpoint_utils.load_checkpoint(tmp_path / "latest_model.pth")
    assert latest["it"] == 6 and latest["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in latest["model_state"].values() if v.is_floating_point())
    assert [checkpoint_utils.epoch_of(p) for p in checkpoint_utils.list_epoch_checkpoints(tmp_path)] == [1]


def test_keeps_last_n_epoch_checkpoints(tmp_path):
    torch.manual_seed(0)
    final_it, _ = _train(ToyDetector(), tmp_path, epochs=4, max_ckpt_save_num=2)
    assert final_it == 16
    kept = checkpoint_utils.list_epoch_checkpoints(tmp_path)
    assert [checkpoint_utils.epoch_of(p) for p in kept] == [3, 4]
    ckpt = checkpoint_utils.load_checkpoint(kept[-1])
    assert (ckpt["epoch"], ckpt["it"], ckpt["it_per_epoch"]) == (4, 16, 4)
    assert set(ckpt) == {"model_state", "optimizer_state", "epoch", "it", "it_per_epoch", "version"}


@pytest.mark.parametrize("resume_file", ["checkpoint_epoch_1.pth", "latest_model.pth"])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, resume_file):
    torch.manual_seed(0)
    reference = ToyDetector()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    _train(reference, tmp_path / "ref", epochs=3)

    interrupted = ToyDetector()
    interrupted.load_state_dict(initial)
    # stop mid-way through epoch 2 (iteration 6 of 12): epoch 1 checkpoint and a latest_model at it 6 exist
    with pytest.raises(train_utils.NonFiniteLossError):
        interrupted.nan_at_call = 6
        _train(interrupted, tmp_path / "run", epochs=3, ckpt_save_iter_interval=2)
    path = tmp_path / "run" / resume_file
    if resume_file == "checkpoint_epoch_1.pth":
        (tmp_path / "run" / "latest_model.pth").unlink()
    assert train_utils.resume_state(tmp_path / "run") == str(path)

    resumed = ToyDetector()
    optimizer = optimization.build_optimizer(resumed, _optim_cfg())
    it, epoch = checkpoint_utils.load_for_resume(resumed, optimizer, path)
    assert (it, epoch) == ((4, 1) if resume_file == "checkpoint_epoch_1.pth" else (6, 1))
    final_it, _ = _train(resumed, tmp_path / "run", epochs=3, start_epoch=epoch, start_iter=it, optimizer=optimizer)
    assert final_it == 12
    for key, value in reference.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key].float(), value.float(), atol=1e-6), key
