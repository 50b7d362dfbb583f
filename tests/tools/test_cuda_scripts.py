"""scripts/check_cuda_build.sh (nvcc on every kernel, without a GPU) and scripts/gpu_check.sh (CPU-side parts)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcdet.ops import cuda_build_check as cbc

REPO = Path(__file__).resolve().parents[2]
GPU_CHECK = REPO / "scripts" / "gpu_check.sh"


def _nvcc():
    """nvcc from $NVCC, or the wheel cache that scripts/check_cuda_build.sh fills (CI runs it before the tests)."""
    if os.environ.get("NVCC"):
        return Path(os.environ["NVCC"])
    cache = Path(os.environ.get("PCDET_CUDA_CACHE", Path.home() / ".cache" / "pcdet" / "cuda-13.0"))
    return cache / "nvidia" / "cu13" / "bin" / "nvcc"


def test_the_check_covers_every_cuda_and_cpp_source_of_the_ops():
    listed = {src.relative_to(REPO) for _, src in cbc.all_sources()}
    on_disk = {p.relative_to(REPO) for p in (REPO / "pcdet" / "ops").glob("*/src/*") if p.suffix in (".cu", ".cpp")}
    assert listed == on_disk and any(p.suffix == ".cu" for p in listed) and len(listed) >= 6


def test_compile_command_has_cuda_defines_werror_and_every_arch(tmp_path):
    cmd = cbc.compile_command(tmp_path / "cuda" / "bin" / "nvcc", REPO / "pcdet/ops/knn/src/knn.cpp",
                              "pcdet.ops.knn.knn_ext", ["75", "90"], [tmp_path / "inc"], tmp_path / "o.o")
    text = " ".join(map(str, cmd))
    assert "-DWITH_CUDA" in cmd and "-DTORCH_EXTENSION_NAME=knn_ext" in cmd and "-x cu" in text
    assert "-Werror all-warnings" in text and "-Xcompiler -Werror" in text
    assert "arch=compute_75,code=sm_75" in cmd and "arch=compute_90,code=sm_90" not in cmd   # host code: one arch
    cu = cbc.compile_command(tmp_path / "cuda" / "bin" / "nvcc", REPO / "pcdet/ops/knn/src/knn_kernel.cu",
                             "pcdet.ops.knn.knn_ext", ["75", "90"], [tmp_path / "inc"], tmp_path / "o.o")
    assert "arch=compute_75,code=sm_75" in cu and "arch=compute_90,code=sm_90" in cu and "-x" not in cu


def test_missing_nvcc_is_a_named_error(tmp_path, capsys):
    assert cbc.main(["--nvcc", str(tmp_path / "nope" / "nvcc")]) == 2
    assert f"nvcc not found at {tmp_path / 'nope' / 'nvcc'}" in capsys.readouterr().err


@pytest.mark.skipif(not _nvcc().is_file(), reason="nvcc not installed: run `bash scripts/check_cuda_build.sh` once "
                                                  "(it installs nvcc from PyPI wheels into ~/.cache/pcdet)")
def test_a_broken_copy_of_a_kernel_fails_the_check(tmp_path):
    broken = tmp_path / "voxel_count_kernel_broken.cu"
    text = (REPO / "pcdet" / "ops" / "voxel_count" / "src" / "voxel_count_kernel.cu").read_text()
    broken.write_text(text + '\nstatic int pcdet_broken_kernel_check = "not an int";  // a type error\n')
    proc = subprocess.run([sys.executable, "-m", "pcdet.ops.cuda_build_check", "--nvcc", str(_nvcc()), "--arch", "80",
                           "--sources", str(broken)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAILED  {broken}" in proc.stdout
    assert 'error: a value of type "const char *" cannot be used to initialize an entity of type "int"' in proc.stdout
    assert "0/1 files compiled, 1 failed" in proc.stdout


def _gpu_check(*args, env=None):
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, **(env or {})))


def test_gpu_check_arguments():
    proc = _gpu_check("--help")
    assert proc.returncode == 0 and "--require-gpu" in proc.stdout and "--wheels DIR" in proc.stdout
    proc = _gpu_check("--bogus")
    assert proc.returncode == 2 and "gpu_check: unknown argument '--bogus'" in proc.stderr
    proc = _gpu_check("--python")
    assert proc.returncode == 2 and "--python needs a path" in proc.stderr
    proc = _gpu_check("--python", "/nonexistent/python3")
    assert proc.returncode == 2 and "no Python at '/nonexistent/python3'" in proc.stderr


def test_gpu_check_without_a_gpu_skips_with_a_message():
    proc = _gpu_check(env={"PCDET_GPU_CHECK_FAKE_NO_GPU": "1"})
    assert proc.returncode == 0 and "gpu_check: SKIPPED: no CUDA GPU" in proc.stdout
    assert "nothing was checked" in proc.stdout and "PASSED" not in proc.stdout
    proc = _gpu_check("--require-gpu", env={"PCDET_GPU_CHECK_FAKE_NO_GPU": "1"})
    assert proc.returncode == 1 and "SKIPPED" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the skip path is not reached")
def test_gpu_check_with_a_driver_but_a_cpu_torch_skips_naming_the_torch(tmp_path):
    # nvidia-smi present (a stand-in), torch without CUDA: the script stops before building anything
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho fake\n")
    (fake / "nvidia-smi").chmod(0o755)
    proc = _gpu_check("--python", sys.executable, "--out", str(tmp_path / "out"),
                      env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"gpu_check: SKIPPED: torch of {sys.executable} sees no CUDA device ({torch.__version__})" in proc.stdout
    assert not (tmp_path / "out" / "build.log").exists()


def test_scripts_are_executable_bash():
    for name in ("check_cuda_build.sh", "gpu_check.sh"):
        path = REPO / "scripts" / name
        assert path.read_text().startswith("#!/usr/bin/env bash\n") and os.access(path, os.X_OK)
        assert shutil.which("bash") and subprocess.run(["bash", "-n", str(path)]).returncode == 0
