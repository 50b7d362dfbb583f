"""Compile every CUDA kernel and every op's C++ file (with ``WITH_CUDA``) with nvcc, without a GPU.

    python -m pcdet.ops.cuda_build_check --nvcc PATH/bin/nvcc [--arch 75 80 86 89 90] [--jobs 2] [--sources F ...]

Run by ``scripts/check_cuda_build.sh``, which installs nvcc and the CUDA headers from PyPI wheels into a cache.
Each source is compiled to an object file (``-c``) against the installed torch's headers as
``torch.utils.cpp_extension`` would compile it for ``pip install -e .`` with CUDA: the same defines and nvcc
flags, ``-std=c++20`` like the CPU build, and one ``-gencode`` per architecture (a ``.cpp`` holds no device code
and is compiled for the first architecture only: each architecture re-parses torch's headers). Our own code is compiled with
warnings as errors (``-Werror all-warnings`` for nvcc's device code, ``-Werror`` for the host compiler); the
warnings of torch's and CUDA's headers are not ours and are silenced by including them as system headers.

CPU wheels of torch lack the generated header ``c10/cuda/impl/cuda_cmake_macros.h`` (it only defines
``C10_CUDA_BUILD_SHARED_LIBS``); a one-line stand-in is written to a temporary include folder.

Prints one line per file (``ok`` / ``FAILED`` with the compiler's first error lines) and exits 1 on any failure.
"""
import argparse
import concurrent.futures as futures
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# architectures we claim (docs/INSTALL.md). CUDA 13's nvcc no longer targets Volta (sm_70/72); a CUDA 12 toolkit
# builds it, and the check then passes --arch 70 too.
DEFAULT_ARCHS = ("75", "80", "86", "89", "90")


def extension_specs():
    spec = importlib.util.spec_from_file_location("pcdet_ops_ext_list", Path(__file__).with_name("ext_list.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.extension_specs()


def all_sources():
    """[(extension name, source path)] of every .cu and .cpp of the compiled ops."""
    out = []
    for name, cpp, cuda in extension_specs():
        out += [(name, REPO_ROOT / s) for s in cuda + cpp]
    return out


def stand_in_includes(folder):
    """A folder with the headers that CPU wheels of torch lack (see the module docstring)."""
    header = Path(folder) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return Path(folder)


def compile_command(nvcc, source, ext_name, archs, system_includes, out_obj):
    import sysconfig

    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    cuda_root = Path(nvcc).resolve().parents[1]
    cmd = [str(nvcc), "-c", str(source), "-o", str(out_obj), "-std=c++20", "-O2", "-DWITH_CUDA",
           "-DTORCH_API_INCLUDE_EXTENSION_H", f"-DTORCH_EXTENSION_NAME={ext_name.rsplit('.', 1)[-1]}",
           "-Xcompiler", "-fPIC", "-Xcompiler", "-Wall", "-Xcompiler", "-Werror",
           "-Werror", "all-warnings", "-isystem", str(cuda_root / "include")]
    cmd += list(COMMON_NVCC_FLAGS)
    if Path(source).suffix == ".cpp":
        cmd += ["-x", "cu"]     # the op's .cpp with WITH_CUDA: host code that includes the CUDA declarations
        archs = list(archs)[:1]  # it holds no device code: every architecture would re-parse the same headers
    for inc in system_includes + [sysconfig.get_paths()["include"]]:
        cmd += ["-isystem", str(inc)]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return cmd


def check_one(nvcc, ext_name, source, archs, includes, work, index=0):
    obj = Path(work) / f"{index:03d}_{source.stem}{source.suffix.replace('.', '_')}.o"   # unique per source
    cmd = compile_command(nvcc, source, ext_name, archs, includes, obj)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return source, proc.returncode, proc.stdout, time.time() - t0, cmd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nvcc", required=True, help="path of nvcc (its ../include must hold the CUDA headers)")
    parser.add_argument("--arch", nargs="+", default=list(DEFAULT_ARCHS), help="SM architectures, e.g. 80 90")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sources", nargs="*", default=None,
                        help="compile these files instead of the ops' (the script's own test uses it)")
    parser.add_argument("--verbose", action="store_true", help="print each compile command")
    args = parser.parse_args(argv)
    if not Path(args.nvcc).is_file():
        print(f"check_cuda_build: nvcc not found at {args.nvcc}", file=sys.stderr)
        return 2
    from torch.utils.cpp_extension import include_paths

    sources = ([("pcdet.ops.check.check_ext", Path(s).resolve()) for s in args.sources] if args.sources is not None
               else all_sources())
    if not sources:
        print("check_cuda_build: no sources to compile", file=sys.stderr)
        return 2
    failures = 0
    with tempfile.TemporaryDirectory(prefix="pcdet_cuda_check_") as work:
        includes = [stand_in_includes(Path(work) / "stand_in")] + [Path(p) for p in include_paths("cpu")]
        print(f"nvcc {args.nvcc}; architectures sm_{', sm_'.join(args.arch)}; {len(sources)} files", flush=True)
        with futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            jobs = [pool.submit(check_one, args.nvcc, name, src, args.arch, includes, work, i)
                    for i, (name, src) in enumerate(sources)]
            for job in jobs:
                source, rc, output, seconds, cmd = job.result()
                rel = source.relative_to(REPO_ROOT) if source.is_relative_to(REPO_ROOT) else source
                if args.verbose:
                    print(" ".join(cmd))
                if rc == 0:
                    print(f"ok      {rel} ({seconds:.1f} s)", flush=True)
                else:
                    failures += 1
                    errors = [line for line in output.splitlines() if "error" in line or "warning" in line]
                    print(f"FAILED  {rel} (exit {rc}):\n    " + "\n    ".join((errors or output.splitlines())[:8]),
                          flush=True)
    print(f"check_cuda_build: {len(sources) - failures}/{len(sources)} files compiled"
          + ("" if not failures else f", {failures} failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
