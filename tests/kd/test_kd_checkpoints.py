"""Student weights out of KD training checkpoints: load_student_weights, export_student_state, export tool."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kd_tiny_setup as S
from pcdet.config import cfg_from_yaml_file
from pcdet.kd import StudentCheckpointError, export_student_state, load_student_weights
from pcdet.models import build_network
from pcdet.models.detectors.detector3d_template import CheckpointMismatchError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd_ckpt")
    cfg, kd_path, dataset, student, distiller, batch = S.build_setup(tmp)
    opt = torch.optim.SGD(distiller.parameters(), lr=1e-3)
    ret, _, _ = distiller(batch)
    ret["loss"].backward()
    opt.step()
    path = tmp / "kd_epoch_1.pth"
    torch.save({"model_state": distiller.state_dict(), "optimizer_state": opt.state_dict(), "epoch": 1, "it": 1,
                "version": "test"}, path)
    return tmp, cfg, kd_path, dataset, distiller, path


def _fresh_student(cfg, dataset, seed=5):
    torch.manual_seed(seed)
    return build_network(cfg.MODEL, len(cfg.CLASS_NAMES), dataset)


def test_kd_checkpoint_has_student_and_heads_but_no_teacher(trained):
    _, _, _, _, distiller, path = trained
    keys = torch.load(path, weights_only=True)["model_state"].keys()
    assert all(k.startswith(("student.", "kd_heads.")) for k in keys)
    assert any(k.startswith("kd_heads.itkd.fusion") for k in keys)


def test_load_student_weights_from_kd_and_plain_checkpoints(trained):
    tmp, cfg, _, dataset, distiller, path = trained
    student = _fresh_student(cfg, dataset)
    ckpt = load_student_weights(student, path)
    assert ckpt["epoch"] == 1
    for k, v in distiller.student.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k
    plain_path = tmp / "plain.pth"
    torch.save({"model_state": student.state_dict(), "epoch": 2}, plain_path)
    other = _fresh_student(cfg, dataset, seed=9)
    load_student_weights(other, plain_path)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in student.state_dict().items())
    ddp_path = tmp / "ddp.pth"
    torch.save({"model_state": {"module." + k: v for k, v in distiller.state_dict().items()}}, ddp_path)
    load_student_weights(_fresh_student(cfg, dataset), ddp_path)


def test_load_student_weights_is_strict_and_names_keys(trained):
    tmp, cfg, _, dataset, distiller, path = trained
    state = distiller.state_dict()
    state["stray.weight"] = torch.zeros(1)
    with pytest.raises(StudentCheckpointError, match="stray.weight"):
        export_student_state(state)
    state.pop("stray.weight")
    dropped = sorted(k for k in state if k.startswith("student."))[0]
    state.pop(dropped)
    bad = tmp / "bad.pth"
    torch.save({"model_state": state}, bad)
    with pytest.raises(CheckpointMismatchError, match=dropped[len("student."):]):
        load_student_weights(_fresh_student(cfg, dataset), bad)


def test_export_tool_round_trip_loads_into_plain_student_config(trained, tmp_path):
    tmp, cfg, kd_path, dataset, distiller, path = trained
    out = tmp_path / "student.pth"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "export_student.py"), "--cfg_file", str(kd_path),
                           "--ckpt", str(path), "--out", str(out)], capture_output=True, text=True, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    exported = torch.load(out, weights_only=True)
    assert exported["epoch"] == 1
    assert not any(k.startswith(("student.", "kd_heads.")) for k in exported["model_state"])
    # the plain student config: the KD config without its KD block
    plain_cfg = cfg_from_yaml_file(kd_path)
    del plain_cfg["KD"]
    student = build_network(plain_cfg.MODEL, len(plain_cfg.CLASS_NAMES), S.make_dataset(plain_cfg, tmp))
    student.load_params_from_file(str(out), logger=None, to_cpu=True)
    for k, v in distiller.student.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k


def test_resume_restores_student_heads_and_optimizer(trained):
    tmp, cfg, kd_path, dataset, distiller, path = trained
    _, _, _, _, fresh, _ = S.build_setup(tmp / "resume")
    opt = torch.optim.SGD(fresh.parameters(), lr=1e-3)
    it, epoch = fresh.load_params_with_optimizer(str(path), optimizer=opt)
    assert (it, epoch) == (1, 1)
    for k, v in distiller.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    state = torch.load(path, weights_only=True)
    state["model_state"].pop("kd_heads.itkd.adapter.weight")
    torch.save(state, tmp / "no_head.pth")
    with pytest.raises(CheckpointMismatchError, match="missing key: kd_heads.itkd.adapter.weight"):
        fresh.load_params_with_optimizer(str(tmp / "no_head.pth"))
