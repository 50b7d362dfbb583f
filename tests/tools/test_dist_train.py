"""Two-process training and evaluation through tools/scripts/dist_*.sh (torchrun, gloo on CPU).

Slow (marked ``slow``): both ranks must end with identical weights, and distributed evaluation must give exactly
the detections of a single-process evaluation of the same checkpoint, in dataset order.
"""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
CFG = "cfgs/synthetic_models/centerpoint_pillar.yaml"
EXP = Path("synthetic_models") / "centerpoint_pillar"

pytestmark = pytest.mark.slow


def _run(args, timeout=150, env=None):
    proc = subprocess.run(args, cwd=TOOLS, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})
    assert proc.returncode == 0, f"{args[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    _run([sys.executable, "-m", "pcdet.datasets.synthetic.generate", "--out", str(root), "--num_frames", "8",
          "--seed", "0", "--workers", "0", "--val_fraction", "0.5"])
    _run([sys.executable, "-c", "import sys; from pcdet.datasets.kitti.kitti_dataset import main; main(sys.argv[1:])",
          "create_kitti_infos", str(TOOLS / "cfgs" / "dataset_configs" / "synthetic_kitti_dataset.yaml"),
          "--data_path", str(root), "--workers", "1"])
    return root


def _flags(out, data_root, tag):
    """(tool flags, --set overrides): overrides go last because --set takes the rest of the command line."""
    return (["--cfg_file", CFG, "--batch_size", "1", "--workers", "0", "--device", "cpu", "--extra_tag", tag,
             "--output_root", str(out)], ["--set", "DATA_CONFIG.DATA_PATH", str(data_root)])


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("dist") / "output"
    flags, sets = _flags(out, data_root, "dist")
    proc = _run(["bash", "scripts/dist_train.sh", "2"] + flags
                + ["--epochs", "1", "--max_iters_per_epoch", "2", "--fix_random_seed", "--skip_eval"] + sets)
    return out, out / EXP / "dist", proc


def test_two_ranks_end_with_identical_weights(dist_run):
    _, exp, proc = dist_run
    record = json.loads((exp / "log" / "weights_digest.json").read_text())
    assert record["world_size"] == 2 and record["it"] == 2
    assert len(record["digests"]) == 2 and record["digests"][0] == record["digests"][1]
    log = next((exp / "log").glob("train_*.log")).read_text()
    assert "distributed: 2 processes" in log
    assert f"weights digest rank 1: {record['digests'][1]}" in log
    assert sorted(p.name for p in (exp / "ckpt").iterdir()) == ["checkpoint_epoch_1.pth"]


def test_distributed_eval_equals_single_process_eval(dist_run, data_root):
    out, exp, _ = dist_run
    ckpt = str(exp / "ckpt" / "checkpoint_epoch_1.pth")
    flags, sets = _flags(out, data_root, "dist")
    _run(["bash", "scripts/dist_test.sh", "2"] + flags + ["--ckpt", ckpt, "--eval_tag", "two"] + sets)
    _run([sys.executable, "test.py"] + flags + ["--ckpt", ckpt, "--eval_tag", "one"] + sets)
    results = {}
    for tag in ("one", "two"):
        with open(exp / "eval" / "epoch_1" / "val" / tag / "result.pkl", "rb") as f:
            results[tag] = pickle.load(f)
    val_ids = (data_root / "ImageSets" / "val.txt").read_text().split()
    assert len(val_ids) >= 3, "need frames on both ranks to check the re-ordering"
    assert [a["frame_id"] for a in results["two"]] == [a["frame_id"] for a in results["one"]] == val_ids
    for single, dist in zip(results["one"], results["two"]):
        assert list(single["name"]) == list(dist["name"])
        np.testing.assert_allclose(single["boxes_lidar"], dist["boxes_lidar"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(single["score"], dist["score"], rtol=1e-5, atol=1e-6)
    logs = {tag: next((exp / "eval" / "epoch_1" / "val" / tag).glob("log_eval_*.txt")).read_text()
            for tag in ("one", "two")}
    assert "distributed: 2 processes" in logs["two"]
    table = {tag: [line.split("INFO", 1)[-1] for line in text.splitlines() if "AP:" in line]
             for tag, text in logs.items()}
    assert table["one"] and table["one"] == table["two"]


def test_a_failing_rank_stops_the_whole_job(tmp_path, data_root):
    out = tmp_path / "output"
    flags, sets = _flags(out, data_root, "fail")
    # a learning rate of 1e30 makes the second iteration's loss NaN; the job must end with an error, not hang
    proc = subprocess.run(["bash", "scripts/dist_train.sh", "2"] + flags
                          + ["--epochs", "1", "--max_iters_per_epoch", "3", "--skip_eval"] + sets
                          + ["OPTIMIZATION.LR", "1.0e+30", "OPTIMIZATION.OPTIMIZER", "sgd"],
                          cwd=TOOLS, capture_output=True, text=True, timeout=150,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode != 0
    assert "NonFiniteLossError" in proc.stderr and "iteration 1 (epoch 0)" in proc.stderr, proc.stderr[-3000:]
    assert not list((out / EXP / "fail" / "ckpt").iterdir())


def test_distillation_under_ddp_keeps_ranks_equal_and_teacher_untouched(tmp_path, data_root):
    out = tmp_path / "output"
    flags, sets = _flags(out, data_root, "teacher")
    _run([sys.executable, "train.py"] + flags + ["--epochs", "1", "--max_iters_per_epoch", "1", "--skip_eval",
                                                 "--fix_random_seed"] + sets)
    teacher_ckpt = out / EXP / "teacher" / "ckpt" / "checkpoint_epoch_1.pth"
    kd_flags, kd_sets = _flags(out, data_root, "kd")
    kd_flags[kd_flags.index(CFG)] = "cfgs/kd/itkd_centerpoint_pillar.yaml"
    _run(["bash", "scripts/dist_train.sh", "2"] + kd_flags
         + ["--epochs", "1", "--max_iters_per_epoch", "2", "--fix_random_seed", "--skip_eval",
            "--teacher_ckpt", str(teacher_ckpt)] + kd_sets)
    exp = out / "kd" / "itkd_centerpoint_pillar" / "kd"
    record = json.loads((exp / "log" / "weights_digest.json").read_text())
    assert record["world_size"] == 2 and record["it"] == 2
    assert record["digests"][0] == record["digests"][1], "student + distillation heads differ across ranks"
    teacher = record["teacher_digests"]
    assert len(teacher) == 2
    # teacher parameters and BatchNorm buffers: the same on both ranks, and unchanged by two KD steps
    assert teacher[0]["start"] == teacher[0]["end"] == teacher[1]["start"] == teacher[1]["end"]
    log = next((exp / "log").glob("train_*.log")).read_text()
    assert "distributed: 2 processes" in log and "heads ['itkd']" in log
