"""torch.distributed helpers on CPU/gloo: env parsing, 2-process DDP weight equality, ordered gathers, timeouts."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from pcdet.utils import dist_utils

EVAL_UTILS = Path(__file__).resolve().parents[2] / "tools" / "eval_utils" / "eval_utils.py"


def _load_eval_utils():
    spec = importlib.util.spec_from_file_location("tools_eval_utils", EVAL_UTILS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_outside_a_group():
    assert dist_utils.get_dist_info() == (0, 1)
    assert dist_utils.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist_utils.broadcast_object(7) == 7
    assert dist_utils.init_launcher("none", torch.device("cpu")) == (False, 1, 0, torch.device("cpu"))
    assert dist_utils.resolve_device("cpu") == torch.device("cpu")
    assert dist_utils.default_backend("cpu") == "gloo" and dist_utils.default_backend("cuda:0") == "nccl"
    with pytest.raises(dist_utils.DistSetupError, match="--device must be"):
        dist_utils.resolve_device("tpu")
    with pytest.raises(dist_utils.DistSetupError, match="--launcher must be"):
        dist_utils.init_launcher("mpi", torch.device("cpu"))


def test_missing_torchrun_variable_is_named(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(dist_utils.DistSetupError, match="environment variable RANK is not set"):
        dist_utils.init_dist_pytorch(tcp_port=12345)
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(dist_utils.DistSetupError, match="RANK='zero' is not an integer"):
        dist_utils.init_dist_pytorch(tcp_port=12345)


def test_model_digest_tracks_parameters_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    digest = dist_utils.model_digest(model)
    model[1].running_mean.add_(1.0)
    assert dist_utils.model_digest(model) == digest
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-6
    assert dist_utils.model_digest(model) != digest


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    assert dist_utils.init_dist_pytorch(backend="gloo", timeout_s=60) == (world_size, rank)
    try:
        torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
        initial_digest = dist_utils.model_digest(model)
        ddp = dist_utils.wrap_ddp(model, torch.device("cpu"))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(2):
            x = torch.randn(6, 3)  # rank-specific data
            opt.zero_grad()
            ddp(x).pow(2).mean().backward()
            opt.step()
        digests = dist_utils.all_gather_object(dist_utils.model_digest(ddp))
        eval_utils = _load_eval_utils()
        # a padding sampler: 5 samples over 2 ranks, rank 1 repeats sample 0
        indices = list(range(rank, 5, world_size)) + ([0] if rank == 1 else [])
        annos = [{"frame_id": f"{i:06d}", "rank": rank} for i in indices]
        merged = eval_utils.gather_in_dataset_order(indices, annos, 5)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"initial": initial_digest, "digests": digests,
                       "merged": [a["frame_id"] for a in merged], "from_rank": [a["rank"] for a in merged]}, f)
    finally:
        dist_utils.destroy_dist()
    # Leave without interpreter finalisation: inside the full suite (never alone, 0 of 12 isolated runs) a spawned
    # rank sometimes aborted after its work with "terminate called without an active exception", a C++ thread
    # still joinable when static destructors ran. Its results are written above; an exception still fails the test.
    os._exit(0)


def test_two_process_ddp_ends_with_identical_weights_and_ordered_gather(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["initial"] != r1["initial"]
    assert r0["digests"] == r1["digests"] and r0["digests"][0] == r0["digests"][1]
    assert r0["digests"][0] not in (r0["initial"], r1["initial"])
    assert r0["merged"] == r1["merged"] == ["000000", "000001", "000002", "000003", "000004"]
    assert r0["from_rank"] == [0, 1, 0, 1, 0]


def test_missing_peer_times_out_instead_of_blocking(tmp_path):
    script = textwrap.dedent(f"""
        import os
        from pcdet.utils import dist_utils
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{_free_port()}", RANK="0", WORLD_SIZE="2",
                          LOCAL_RANK="0")
        dist_utils.init_dist_pytorch(backend="gloo", timeout_s=3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "timeout" in proc.stderr.lower() or "timed out" in proc.stderr.lower(), proc.stderr[-2000:]


def test_slurm_env_is_translated_to_torchrun_variables(monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    try:
        assert dist_utils.init_dist_slurm(tcp_port=_free_port(), backend="gloo", timeout_s=30) == (1, 0)
        assert dist_utils.get_dist_info() == (0, 1)
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    finally:
        dist_utils.destroy_dist()
    assert not dist_utils.is_dist()
