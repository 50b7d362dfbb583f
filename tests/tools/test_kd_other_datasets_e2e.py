"""End to end on the synthetic Waymo-like and nuScenes-like layouts: teacher, then a KD student, trained and evaluated
through tools/train.py (slow: real subprocesses, a few iterations each)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"

pytestmark = pytest.mark.slow


def _run(args, timeout=400):
    proc = subprocess.run(args, cwd=TOOLS, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, f"{args[:4]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _derived(path, base, data_path, width, extra=None):
    data = {"_BASE_CONFIG_": str(base), "DATA_CONFIG": {"DATA_PATH": str(data_path)}, "MODEL": {"WIDTH": width}}
    data.update(extra or {})
    path.write_text(yaml.safe_dump(data))
    return path


def _train(cfg, out, tag, extra_args=()):
    _run([sys.executable, "train.py", "--cfg_file", str(cfg), "--batch_size", "1", "--workers", "0", "--epochs", "1",
          "--max_iters_per_epoch", "2", "--device", "cpu", "--extra_tag", tag, "--output_root", str(out),
          "--fix_random_seed", *extra_args])
    exp = out / Path(cfg).stem / tag
    ckpt = exp / "ckpt" / "checkpoint_epoch_1.pth"
    assert ckpt.is_file()
    return exp, ckpt


def test_itkd_on_synthetic_waymo_layout(tmp_path):
    data = tmp_path / "waymo"
    _run([sys.executable, "-m", "pcdet.datasets.synthetic.export_layouts", "--layout", "waymo", "--out", str(data),
          "--num_frames", "4", "--seed", "0", "--val_fraction", "0.5"])
    sampled = {"SAMPLED_INTERVAL": {"train": 1, "test": 1}}
    teacher_cfg = _derived(tmp_path / "teacher.yaml", TOOLS / "cfgs/waymo_models/centerpoint_pillar_1x.yaml", data,
                           0.25, {"DATA_CONFIG": {"DATA_PATH": str(data), **sampled}})
    out = tmp_path / "out"
    _, teacher_ckpt = _train(teacher_cfg, out, "t", ["--skip_eval"])
    kd_cfg = _derived(tmp_path / "kd.yaml", TOOLS / "cfgs/kd/waymo/itkd_centerpoint_pillar_quarter.yaml", data,
                      0.125, {"DATA_CONFIG": {"DATA_PATH": str(data), **sampled},
                              "KD": {"TEACHER": {"CFG_FILE": str(teacher_cfg)}}})
    exp, _ = _train(kd_cfg, out, "kd", ["--teacher_ckpt", str(teacher_ckpt)])
    log = next((exp / "log").glob("train_*.log")).read_text()
    assert "heads ['itkd']" in log
    assert "Vehicle" in log and "LEVEL_2" in log, "Waymo-style evaluation of the distilled student ran"


def test_pointdistiller_on_synthetic_nuscenes_layout(tmp_path):
    data = tmp_path / "nuscenes"
    _run([sys.executable, "-m", "pcdet.datasets.synthetic.export_layouts", "--layout", "nuscenes", "--out",
          str(data), "--num_frames", "4", "--seed", "0", "--val_fraction", "0.5"])
    nus = {"DATA_PATH": str(data), "VERSION": "v1.0-mini", "BALANCED_RESAMPLING": False}
    teacher_cfg = _derived(tmp_path / "teacher.yaml", TOOLS / "cfgs/kd/nuscenes/cbgs_pp_centerpoint.yaml", data,
                           0.25, {"DATA_CONFIG": nus})
    out = tmp_path / "out"
    _, teacher_ckpt = _train(teacher_cfg, out, "t", ["--skip_eval"])
    kd_cfg = _derived(tmp_path / "kd.yaml", TOOLS / "cfgs/kd/nuscenes/pointdistiller_pointpillar_4x.yaml", data,
                      0.125, {"DATA_CONFIG": nus, "KD": {"TEACHER": {"CFG_FILE": str(teacher_cfg)}}})
    exp, _ = _train(kd_cfg, out, "kd", ["--teacher_ckpt", str(teacher_ckpt)])
    log = next((exp / "log").glob("train_*.log")).read_text()
    assert "heads ['pointdistiller']" in log
    assert "NDS" in log, "nuScenes-style evaluation of the distilled student ran"
