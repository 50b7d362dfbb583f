import logging
import random

import numpy as np
import pytest
import torch

from pcdet.utils import common_utils


def test_check_numpy_to_torch():
    t, was_numpy = common_utils.check_numpy_to_torch(np.array([1.5, 2.0], dtype=np.float64))
    assert was_numpy and isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t.tolist() == [1.5, 2.0]
    x = torch.tensor([3])
    out, was_numpy = common_utils.check_numpy_to_torch(x)
    assert out is x and not was_numpy


def test_limit_period_hand_values():
    vals = np.array([0.0, np.pi, -np.pi, 1.5 * np.pi, 3.0 * np.pi, -2.5 * np.pi], dtype=np.float32)
    got = common_utils.limit_period(vals, offset=0.5, period=2 * np.pi)
    # into [-pi, pi): pi -> -pi, 1.5pi -> -0.5pi, 3pi -> -pi, -2.5pi -> -0.5pi
    expected = np.array([0.0, -np.pi, -np.pi, -0.5 * np.pi, -np.pi, -0.5 * np.pi], dtype=np.float32)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # offset 0 maps into [0, period)
    got = common_utils.limit_period(torch.tensor([-0.5, 3.5]), offset=0.0, period=np.pi)
    np.testing.assert_allclose(got.numpy(), [np.pi - 0.5, 3.5 - np.pi], atol=1e-6)


def test_rotate_points_along_z_quarter_turn_keeps_features():
    pts = np.array([[[1.0, 0.0, 2.0, 7.0], [0.0, 2.0, -1.0, 8.0]]], dtype=np.float32)
    out = common_utils.rotate_points_along_z(pts, np.array([np.pi / 2]))
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 4)
    # counter-clockwise seen from above: +x -> +y, +y -> -x; z and features unchanged
    np.testing.assert_allclose(out[0], [[0.0, 1.0, 2.0, 7.0], [-2.0, 0.0, -1.0, 8.0]], atol=1e-6)
    t = common_utils.rotate_points_along_z(torch.from_numpy(pts).repeat(2, 1, 1), torch.tensor([0.0, np.pi]))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t[0].numpy(), pts[0], atol=1e-6)
    np.testing.assert_allclose(t[1, :, :2].numpy(), -pts[0, :, :2], atol=1e-6)


def test_rotate_points_along_z_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, N, 3 \+ C\)"):
        common_utils.rotate_points_along_z(np.zeros((5, 3), dtype=np.float32), np.zeros(1))
    with pytest.raises(ValueError, match="2 angles for a batch of 1"):
        common_utils.rotate_points_along_z(np.zeros((1, 5, 3), dtype=np.float32), np.zeros(2))


def test_mask_points_by_range_inclusive_xy_only():
    pts = np.array([[0, 0, 100], [70.4, 40, 0], [70.5, 0, 0], [1, -40.1, 0], [1, -40, -50]], dtype=np.float32)
    mask = common_utils.mask_points_by_range(pts, np.array([0, -40, -3, 70.4, 40, 1], dtype=np.float32))
    assert mask.tolist() == [True, True, False, False, True]


def test_drop_info_with_name_and_keep_arrays_by_name():
    info = {"name": np.array(["Car", "DontCare", "Pedestrian", "DontCare"]),
            "score": np.array([0.1, 0.2, 0.3, 0.4]),
            "bbox": np.arange(16).reshape(4, 4)}
    out = common_utils.drop_info_with_name(info, "DontCare")
    assert out["name"].tolist() == ["Car", "Pedestrian"]
    np.testing.assert_array_equal(out["score"], [0.1, 0.3])
    np.testing.assert_array_equal(out["bbox"], [[0, 1, 2, 3], [8, 9, 10, 11]])
    idx = common_utils.keep_arrays_by_name(["Van", "Car", "Cyclist", "Car"], ["Car", "Cyclist"])
    assert idx.dtype == np.int64 and idx.tolist() == [1, 2, 3]
    assert common_utils.keep_arrays_by_name([], ["Car"]).shape == (0,)


def test_get_dist_info_without_process_group():
    assert common_utils.get_dist_info() == (0, 1)


def test_get_pad_params():
    assert common_utils.get_pad_params(10, 7) == (0, 3)
    with pytest.raises(ValueError, match="exceeds"):
        common_utils.get_pad_params(3, 4)


def test_average_meter():
    meter = common_utils.AverageMeter()
    meter.update(2.0)
    meter.update(4.0, n=3)
    assert meter.val == 4.0 and meter.count == 4 and meter.sum == 14.0
    assert meter.avg == pytest.approx(3.5)


def test_set_random_seed_repeats_all_generators():
    common_utils.set_random_seed(123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    common_utils.set_random_seed(123)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b


def test_worker_init_fn_seeds_differ_by_worker_and_rank():
    draws = []
    for worker_id, rank in ((0, 0), (1, 0), (0, 1), (0, 0)):
        common_utils.worker_init_fn(worker_id, seed=7, rank=rank)
        draws.append(np.random.randint(1 << 30))
    assert draws[0] == draws[3]
    assert len({draws[0], draws[1], draws[2]}) == 3
    np.random.seed(int(np.random.SeedSequence([7, 0, 0, 1]).generate_state(1)[0]))
    assert draws[1] == np.random.randint(1 << 30)


def test_training_order_and_worker_streams_depend_on_seed_and_epoch_only():
    """A resumed run (a fresh loader set to epoch e) draws the same order and augmentation randomness as the
    uninterrupted run at epoch e; epochs differ from each other."""
    import torch.utils.data as tud

    from pcdet.datasets import EpochShuffleSampler

    class Draws(tud.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.tensor([i, np.random.randint(1 << 30), torch.randint(1 << 30, (1,)).item()])

    def loader(seed):
        ds = Draws()
        sampler = EpochShuffleSampler(ds, seed)
        from functools import partial
        return sampler, tud.DataLoader(ds, batch_size=2, sampler=sampler, num_workers=1,
                                       worker_init_fn=partial(common_utils.worker_init_fn, seed=seed))

    sampler, dl = loader(5)
    run = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        run.append(torch.cat(list(dl)))
    assert not torch.equal(run[0][:, 0], run[1][:, 0]) and not torch.equal(run[1][:, 1], run[2][:, 1])
    assert sorted(run[2][:, 0].tolist()) == list(range(6))
    fresh_sampler, fresh = loader(5)
    fresh_sampler.set_epoch(2)
    assert torch.equal(torch.cat(list(fresh)), run[2])
    other_sampler, other = loader(6)
    other_sampler.set_epoch(2)
    assert not torch.equal(torch.cat(list(other)), run[2])


def test_create_logger_writes_file_and_rank_filter(tmp_path):
    log_file = tmp_path / "sub" / "log.txt"
    logger = common_utils.create_logger(log_file, rank=0)
    logger.info("hello from rank 0")
    for h in logger.handlers:
        h.flush()
    assert "hello from rank 0" in log_file.read_text()
    logger = common_utils.create_logger(None, rank=1)
    assert logger.level == logging.ERROR
    common_utils.create_logger(None, rank=0)


def test_to_channels_last_only_touches_4d_weights_and_keeps_values():
    import torch.nn as nn

    from pcdet.utils.common_utils import to_channels_last, to_float32
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv3d(4, 2, 1), nn.Linear(2, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="rank 4"):
        model.to(memory_format=torch.channels_last)  # why the helper exists: 5-D weights refuse
    to_channels_last(model)
    w = model[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert model[1].weight.is_contiguous()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    out = to_float32({"a": torch.ones(2, dtype=torch.bfloat16), "b": [torch.ones(1, dtype=torch.float16)],
                      "c": torch.ones(1, dtype=torch.int64)})
    assert out["a"].dtype == torch.float32 and out["b"][0].dtype == torch.float32 and out["c"].dtype == torch.int64


def test_pcdet_cpu_bf16_off_makes_any_cpu_one_without_native_bf16(monkeypatch):
    from pcdet.utils import common_utils as cu

    monkeypatch.setenv(cu.CPU_BF16_ENV, "off")
    assert cu.cpu_has_native_bf16() is False
    assert cu.resolve_amp("auto", "cpu", torch.bfloat16) is False
    monkeypatch.setenv(cu.CPU_BF16_ENV, "maybe")
    with pytest.raises(ValueError, match="PCDET_CPU_BF16: expected 'off' or 'auto', got 'maybe'"):
        cu.cpu_has_native_bf16()
    monkeypatch.setenv(cu.CPU_BF16_ENV, "auto")    # the hardware's answer, whatever it is
    assert isinstance(cu.cpu_has_native_bf16(), bool)


def test_resolve_amp_follows_the_value_and_the_hardware(monkeypatch):
    from pcdet.utils import common_utils as cu

    assert cu.resolve_amp(True, "cpu", torch.bfloat16) is True
    assert cu.resolve_amp(False, "cuda", torch.float16) is False
    assert cu.resolve_amp(None, "cpu", torch.bfloat16) is False
    assert cu.resolve_amp("auto", "cuda", torch.float16) is True
    monkeypatch.setattr(cu, "cpu_has_native_bf16", lambda: False)
    assert cu.resolve_amp("auto", "cpu", torch.bfloat16) is False      # AVX2 only: float32
    monkeypatch.setattr(cu, "cpu_has_native_bf16", lambda: True)
    assert cu.resolve_amp("AUTO", "cpu", torch.bfloat16) is True       # AMX / AVX512-BF16
    assert cu.resolve_amp("auto", "cpu", torch.float16) is False       # fp16 autocast on CPU is never chosen
    with pytest.raises(ValueError, match="OPTIMIZATION.USE_AMP: expected true, false or 'auto', got 'yes'"):
        cu.resolve_amp("yes", "cpu", torch.bfloat16)
