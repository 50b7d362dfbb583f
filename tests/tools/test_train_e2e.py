"""tools/train.py and tools/test.py end to end on a tiny synthetic KITTI-format dataset (CPU subprocesses).

Slow (marked ``slow``): each test runs the tools as a user would, from ``tools/``.
"""
import json
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pcdet.utils import checkpoint_utils

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
CFG = "cfgs/synthetic_models/centerpoint_pillar.yaml"
EXP = Path("synthetic_models") / "centerpoint_pillar"

pytestmark = pytest.mark.slow


def _run(args, timeout=120):
    proc = subprocess.run([sys.executable] + args, cwd=TOOLS, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:2]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    _run(["-m", "pcdet.datasets.synthetic.generate", "--out", str(root), "--num_frames", "8", "--seed", "0",
          "--workers", "0"])
    _run(["-c", "import sys; from pcdet.datasets.kitti.kitti_dataset import main; main(sys.argv[1:])",
          "create_kitti_infos", str(TOOLS / "cfgs" / "dataset_configs" / "synthetic_kitti_dataset.yaml"),
          "--data_path", str(root), "--workers", "1"])
    return root


def _common(out, data_root, tag):
    return ["--cfg_file", CFG, "--batch_size", "2", "--workers", "0", "--device", "cpu", "--extra_tag", tag,
            "--output_root", str(out)]


def _set(data_root):
    return ["--set", "DATA_CONFIG.DATA_PATH", str(data_root)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("train") / "output"
    _run(["train.py"] + _common(out, data_root, "e2e")
         + ["--epochs", "1", "--max_iters_per_epoch", "2"] + _set(data_root))
    return out, out / EXP / "e2e"


def test_train_writes_openpcdet_layout_and_evaluates(trained):
    _, exp = trained
    assert sorted(p.name for p in exp.iterdir()) == ["ckpt", "eval", "log", "tensorboard"]
    ckpt = checkpoint_utils.load_checkpoint(exp / "ckpt" / "checkpoint_epoch_1.pth")
    assert (ckpt["epoch"], ckpt["it"]) == (1, 2)
    assert any(p.name.startswith("events.out.tfevents") for p in (exp / "tensorboard").iterdir())
    log = next((exp / "log").glob("train_*.log")).read_text()
    assert "Performance of EPOCH 1" in log and "Car AP" in log
    assert (exp / "eval" / "eval_with_train" / "epoch_1" / "val" / "result.pkl").is_file()


def test_test_py_single_and_eval_all(trained, data_root):
    out, exp = trained
    with open(exp / "eval" / "eval_with_train" / "epoch_1" / "val" / "result.pkl", "rb") as f:
        with_train = pickle.load(f)

    _run(["test.py"] + _common(out, data_root, "e2e")
         + ["--ckpt", str(exp / "ckpt" / "checkpoint_epoch_1.pth"), "--eval_tag", "single"] + _set(data_root))
    result_dir = exp / "eval" / "epoch_1" / "val" / "single"
    with open(result_dir / "result.pkl", "rb") as f:
        det_annos = pickle.load(f)
    assert len(list(result_dir.glob("log_eval_*.txt"))) == 1
    val_ids = (data_root / "ImageSets" / "val.txt").read_text().split()
    assert [a["frame_id"] for a in det_annos] == val_ids
    for a, b in zip(det_annos, with_train):
        assert torch.allclose(torch.as_tensor(a["boxes_lidar"]), torch.as_tensor(b["boxes_lidar"]))

    # --eval_all evaluates the one checkpoint, records it, and a second call skips it
    _run(["test.py"] + _common(out, data_root, "e2e") + ["--eval_all", "--eval_tag", "all"] + _set(data_root))
    assert (exp / "eval" / "eval_list_val_all.txt").read_text().split() == ["1"]
    proc = _run(["test.py"] + _common(out, data_root, "e2e") + ["--eval_all", "--eval_tag", "all"]
                + _set(data_root))
    assert "no checkpoint left to evaluate" in proc.stdout + proc.stderr


def _fails(args, timeout=120):
    proc = subprocess.run([sys.executable] + args, cwd=TOOLS, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode != 0, f"{args[:2]} should have failed:\n{proc.stdout[-2000:]}"
    return proc.stdout + proc.stderr


def test_test_py_refuses_missing_infos_empty_split_and_empty_ckpt_folder(trained, data_root, tmp_path):
    out, exp = trained
    ckpt = ["--ckpt", str(exp / "ckpt" / "checkpoint_epoch_1.pth")]
    text = _fails(["test.py"] + _common(out, data_root, "bad") + ckpt + _set(data_root)
                  + ["DATA_CONFIG.INFO_PATH.test", "['kitti_infos_nope.pkl']"])
    assert "kitti_infos_nope.pkl not found" in text and "create_kitti_infos" in text
    empty = data_root / "kitti_infos_empty.pkl"
    empty.write_bytes(pickle.dumps([]))
    text = _fails(["test.py"] + _common(out, data_root, "bad") + ckpt + _set(data_root)
                  + ["DATA_CONFIG.INFO_PATH.test", "['kitti_infos_empty.pkl']"])
    assert "split of" in text and "has 0 frames" in text
    (data_root / "kitti_infos_torn.pkl").write_bytes((data_root / "kitti_infos_val.pkl").read_bytes()[:200])
    text = _fails(["test.py"] + _common(out, data_root, "bad") + ckpt + _set(data_root)
                  + ["DATA_CONFIG.INFO_PATH.test", "['kitti_infos_torn.pkl']"])
    assert "kitti_infos_torn.pkl is truncated or not a pickle" in text
    (tmp_path / "no_ckpt").mkdir()
    text = _fails(["test.py"] + _common(out, data_root, "bad") + ["--eval_all", "--ckpt_dir", str(tmp_path / "no_ckpt")]
                  + _set(data_root))
    assert "no checkpoint_epoch_*.pth in" in text and "nothing was evaluated" in text


def test_demo_on_npy_points_writes_png_and_json(trained, data_root, tmp_path):
    _, exp = trained
    points = np.fromfile(data_root / "training" / "velodyne" / "000001.bin", dtype=np.float32).reshape(-1, 4)
    np.save(tmp_path / "scan.npy", points)
    _run(["demo.py", "--cfg_file", CFG, "--ckpt", str(exp / "ckpt" / "checkpoint_epoch_1.pth"), "--data_path",
          str(tmp_path / "scan.npy"), "--ext", ".npy", "--out_dir", str(tmp_path / "demo"), "--device", "cpu",
          "--score_thresh", "0", "--set", "MODEL.DENSE_HEAD.POST_PROCESSING.SCORE_THRESH", "0.0"])
    assert (tmp_path / "demo" / "scan.png").stat().st_size > 1000
    detections = json.loads((tmp_path / "demo" / "detections.json").read_text())
    assert detections, "with every score threshold at 0 the head's top-K peaks are all reported"
    assert all(d["frame_id"] == "scan" and len(d["box_lidar"]) == 7 and d["name"] in ("Car", "Pedestrian", "Cyclist")
               for d in detections)
    np.save(tmp_path / "bad.npy", points[:, :3])
    proc = subprocess.run([sys.executable, "demo.py", "--cfg_file", CFG, "--ckpt",
                           str(exp / "ckpt" / "checkpoint_epoch_1.pth"), "--data_path", str(tmp_path / "bad.npy"),
                           "--ext", ".npy", "--out_dir", str(tmp_path / "demo_bad"), "--device", "cpu"],
                          cwd=TOOLS, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "bad.npy: expected an (N, 4) array" in proc.stderr


def test_killed_run_resumes_from_latest_complete_checkpoint(tmp_path, data_root):
    out = tmp_path / "output"
    args = ["train.py"] + _common(out, data_root, "resume") + ["--epochs", "3", "--max_iters_per_epoch", "1",
                                                               "--skip_eval"] + _set(data_root)
    ckpt_dir = out / EXP / "resume" / "ckpt"
    proc = subprocess.Popen([sys.executable] + args, cwd=TOOLS, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 90
    while not (ckpt_dir / "checkpoint_epoch_1.pth").exists():
        assert proc.poll() is None, f"train.py ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint after 90 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = [checkpoint_utils.epoch_of(p) for p in checkpoint_utils.list_epoch_checkpoints(ckpt_dir)]
    assert done and max(done) < 3, f"the run finished before it was killed ({done})"

    result = _run(args)
    log = result.stdout + result.stderr
    assert f"resumed from {ckpt_dir / f'checkpoint_epoch_{max(done)}.pth'}: epoch {max(done)}, iteration {max(done)}" \
        in log
    assert f"epochs {max(done)}->3" in log
    final = checkpoint_utils.load_checkpoint(ckpt_dir / "checkpoint_epoch_3.pth")
    assert (final["epoch"], final["it"]) == (3, 3) and final["it_per_epoch"] == 1
    assert not list(ckpt_dir.glob("*.tmp"))
    assert (ckpt_dir / "checkpoint_epoch_3.pth").stat().st_mode & 0o777 == checkpoint_utils.file_mode()

    # another number of iterations per epoch cannot continue the schedule: refused, nothing written
    longer = [a for a in args]
    longer[longer.index("--epochs") + 1] = "5"
    longer[longer.index("--max_iters_per_epoch") + 1] = "2"
    proc = subprocess.run([sys.executable] + longer, cwd=TOOLS, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "cannot resume: it was trained with 1 iterations per epoch (epoch 3, iteration 3), this run has 2" \
        in proc.stdout + proc.stderr
    assert checkpoint_utils.epoch_of(checkpoint_utils.list_epoch_checkpoints(ckpt_dir)[-1]) == 3
    # a torn newer checkpoint is skipped with a warning, and a killed save's temp file is removed
    (ckpt_dir / "checkpoint_epoch_4.pth").write_bytes(b"torn")
    (ckpt_dir / "checkpoint_epoch_4.pth.abc123.tmp").write_bytes(b"partial")
    longer[longer.index("--epochs") + 1] = "4"
    longer[longer.index("--max_iters_per_epoch") + 1] = "1"
    _run(longer)
    log = "".join(p.read_text() for p in (out / EXP / "resume" / "log").glob("train_*.log"))
    assert "skipping unreadable checkpoint while looking for one to resume" in log and "checkpoint_epoch_4.pth" in log
    assert "the temporary file of an interrupted checkpoint save" in log
    assert not list(ckpt_dir.glob("*.tmp"))
    assert checkpoint_utils.load_checkpoint(ckpt_dir / "checkpoint_epoch_4.pth")["it"] == 4


def test_non_finite_loss_stops_training_without_checkpoint(tmp_path, data_root):
    out = tmp_path / "output"
    args = ["train.py"] + _common(out, data_root, "nan") + ["--epochs", "1", "--max_iters_per_epoch", "2",
                                                            "--skip_eval"] + _set(data_root)
    # a learning rate of 1e30 turns the weights and so the loss of the second iteration into NaN
    args += ["OPTIMIZATION.LR", "1.0e+30", "OPTIMIZATION.OPTIMIZER", "sgd"]
    proc = subprocess.run([sys.executable] + args, cwd=TOOLS, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "NonFiniteLossError" in proc.stderr and "iteration 1 (epoch 0)" in proc.stderr, proc.stderr[-3000:]
    assert not list((out / EXP / "nan" / "ckpt").iterdir())


def test_distillation_trains_student_and_test_py_evaluates_it(trained, data_root):
    out, exp = trained
    teacher = exp / "ckpt" / "checkpoint_epoch_1.pth"
    kd_cfg = "cfgs/kd/itkd_centerpoint_pillar.yaml"
    common = _common(out, data_root, "kd")
    common[common.index(CFG)] = kd_cfg
    _run(["train.py"] + common + ["--epochs", "1", "--max_iters_per_epoch", "1", "--skip_eval",
                                  "--teacher_ckpt", str(teacher)] + _set(data_root))
    kd_exp = out / "kd" / "itkd_centerpoint_pillar" / "kd"
    ckpt = checkpoint_utils.load_checkpoint(kd_exp / "ckpt" / "checkpoint_epoch_1.pth")
    keys = list(ckpt["model_state"])
    teacher_keys = list(checkpoint_utils.load_checkpoint(teacher)["model_state"])
    assert keys and not any(k.startswith("teacher") for k in keys)
    assert len([k for k in keys if k.startswith("student.")]) == len(teacher_keys)
    assert len(keys) > len(teacher_keys), "the itKD heads are trained and saved with the student"
    log = "".join(p.read_text() for p in (kd_exp / "log").glob("train_*.log"))
    assert "KD grad norms at step 0: det" in log and "kd_itkd_attn" in log  # gradient shares, step 0
    assert "KD diagnostics epoch 1: teacher fg" in log or "KD diagnostics epoch 1: teacher bg" in log
    assert "parameters per module" in log

    _run(["test.py"] + common + ["--ckpt", str(kd_exp / "ckpt" / "checkpoint_epoch_1.pth")] + _set(data_root))
    with open(kd_exp / "eval" / "epoch_1" / "val" / "default" / "result.pkl", "rb") as f:
        det_annos = pickle.load(f)
    assert [a["frame_id"] for a in det_annos] == (data_root / "ImageSets" / "val.txt").read_text().split()


def test_kd_run_with_zero_kd_weights_trains_the_student_alone_bit_for_bit(trained, data_root, tmp_path):
    """Seeds are paired: with every KD term at weight 0, a distillation run of seed s trains exactly the student
    alone of seed s (same initialisation, data order and augmentation; the teacher and KD modules consume no
    randomness the student sees). The benchmark's paired gains rely on it. Gradient clipping is lifted here:
    its global norm also sums the KD modules' (zero) gradients, which changes its rounding in the last bits."""
    import yaml

    _, exp = trained
    base = str(TOOLS / CFG)
    student = {"_BASE_CONFIG_": base, "MODEL": {"BACKBONE_2D": {"WIDTH": 0.25}}}
    kd_block = yaml.safe_load((TOOLS / "cfgs" / "kd" / "itkd_centerpoint_pillar.yaml").read_text())["KD"]
    kd_block["TEACHER"] = {"CFG_FILE": base, "CKPT": str(exp / "ckpt" / "checkpoint_epoch_1.pth")}
    kd_block["DET_LOSS_WEIGHT"] = 1.0
    kd_block["HEADS"][0]["AE"]["WEIGHT"] = 0.0
    kd_block["HEADS"][0]["ATTN"]["WEIGHT"] = 0.0
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    (cfgs / "alone.yaml").write_text(yaml.safe_dump(student))
    (cfgs / "kd.yaml").write_text(yaml.safe_dump(dict(student, KD=kd_block)))
    states = {}
    for name in ("alone", "kd"):
        out = tmp_path / "out"
        _run(["train.py", "--cfg_file", str(cfgs / f"{name}.yaml"), "--batch_size", "2", "--workers", "1",
              "--device", "cpu", "--extra_tag", "pair", "--output_root", str(out), "--epochs", "1",
              "--max_iters_per_epoch", "3", "--skip_eval", "--fix_random_seed", "--seed", "3"] + _set(data_root)
             + ["OPTIMIZATION.GRAD_NORM_CLIP", "1000000000"], timeout=300)
        state = checkpoint_utils.load_checkpoint(out / name / "pair" / "ckpt" / "checkpoint_epoch_1.pth")
        states[name] = state["model_state"]
    alone, kd = states["alone"], {k[len("student."):]: v for k, v in states["kd"].items() if k.startswith("student.")}
    assert sorted(alone) == sorted(kd)
    moved = [k for k in alone if alone[k].is_floating_point() and not torch.equal(alone[k], kd[k])]
    assert moved == [], f"student tensors differ between the paired runs: {moved[:5]}"
