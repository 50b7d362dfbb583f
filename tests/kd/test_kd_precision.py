"""Mixed precision: a bf16 teacher, a KD step under bf16 autocast, channels_last weights (CPU)."""
import logging

import pytest
import torch

import kd_tiny_setup as S
from pcdet.config import ConfigError, cfg_from_yaml_file
from pcdet.kd import build_distiller
from pcdet.models import build_network
from pcdet.utils.common_utils import to_channels_last


def _distiller(tmp_path, precision=None, channels_last=False):
    teacher_path, kd_path = S.write_configs(tmp_path)
    S.save_teacher_ckpt(teacher_path, tmp_path)
    cfg = cfg_from_yaml_file(kd_path)
    if precision is not None:
        cfg.KD.TEACHER.PRECISION = precision
    cfg.KD.TEACHER.CHANNELS_LAST = channels_last
    dataset = S.make_dataset(cfg, tmp_path)
    torch.manual_seed(1)
    student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset).train()
    distiller = build_distiller(cfg, student, dataset, logging.getLogger("kd_test"), cfg_file=kd_path).train()
    return cfg, dataset, distiller


def test_bf16_teacher_taps_close_to_fp32_and_losses_float32(tmp_path):
    _, dataset, fp32 = _distiller(tmp_path / "a", precision="fp32")
    _, _, bf16 = _distiller(tmp_path / "b", precision="bf16", channels_last=True)
    batch = S.make_batch(dataset, 2)
    taps = fp32.teacher_taps
    ref = fp32.teacher.record(fp32.split_batch(dict(batch))[0], taps)
    low = bf16.teacher.record(bf16.split_batch(dict(batch))[0], taps)
    bev = "backbone_2d@spatial_features_2d"
    assert ref[bev].dtype == torch.float32 and low[bev].dtype == torch.bfloat16
    rel = (low[bev].float() - ref[bev]).norm() / ref[bev].norm()
    assert 0 < rel < 0.03, rel  # same weights: bf16 rounding only
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
               and not p.is_contiguous() for p in bf16.teacher.model.parameters())
    ret, tb, _ = bf16(dict(batch))
    assert ret["loss"].dtype == torch.float32 and torch.isfinite(ret["loss"])
    assert set(k for k in tb if k.startswith("kd_")) == {"kd_itkd_t2s", "kd_itkd_s2t", "kd_itkd_cr", "kd_itkd_attn",
                                                        "kd_itkd_attn_rel"}


def test_kd_step_under_bf16_autocast_trains_student_in_float32(tmp_path):
    _, dataset, distiller = _distiller(tmp_path)
    to_channels_last(distiller)
    student = distiller.student
    before = {k: v.clone() for k, v in student.state_dict().items()}
    opt = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ret, tb, _ = distiller(S.make_batch(dataset, 2))
    assert ret["loss"].dtype == torch.float32 and tb["det_loss"] > 0
    ret["loss"].backward()
    opt.step()
    assert all(p.dtype == torch.float32 for p in distiller.parameters())
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert any("backbone_2d" in k for k in changed) and any("dense_head" in k for k in changed)


def test_teacher_precision_and_unknown_teacher_key_errors(tmp_path):
    with pytest.raises(ValueError, match="KD.TEACHER.PRECISION.*'int8'"):
        _distiller(tmp_path / "a", precision="int8")
    teacher_path, kd_path = S.write_configs(tmp_path / "b")
    S.save_teacher_ckpt(teacher_path, tmp_path / "b")
    cfg = cfg_from_yaml_file(kd_path)
    cfg.KD.TEACHER.PRECISON = "bf16"
    dataset = S.make_dataset(cfg, tmp_path / "b")
    student = build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)
    with pytest.raises(ConfigError, match=r"KD\.TEACHER\.PRECISON: unknown key 'PRECISON' for Distiller; "
                                          r"did you mean 'PRECISION'\?"):
        build_distiller(cfg, student, dataset, cfg_file=kd_path)
