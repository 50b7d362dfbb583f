"""Install pcdet. Build with ``pip install --no-build-isolation -e .`` so the installed torch compiles the ops.

C++ CPU kernels always build (g++ only); CUDA kernels are added when torch has CUDA. Importing pcdet never
requires a build: each op falls back to its PyTorch reference path with a one-line notice.
"""
import os
import sys

from setuptools import find_packages, setup


def get_extensions():
    """Compiled ops (see pcdet/ops/*/src). Empty when torch's extension helpers are unavailable."""
    if os.environ.get("PCDET_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        return [], {}
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pcdet_ops_ext_list", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pcdet", "ops", "ext_list.py"))
    ext_list = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext_list)   # by path: importing pcdet would need the extensions being built
    extension_specs = ext_list.extension_specs

    with_cuda = torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1"
    # at::parallel_for only runs threads in code compiled with OpenMP when torch itself uses OpenMP.
    omp = ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform.startswith("linux") else []
    exts = []
    for name, cpu_sources, cuda_sources in extension_specs():
        if with_cuda and cuda_sources:
            exts.append(CUDAExtension(name, cpu_sources + cuda_sources,
                                      define_macros=[("WITH_CUDA", None)],
                                      extra_compile_args={"cxx": ["-O3"] + omp, "nvcc": ["-O3"]},
                                      extra_link_args=omp))
        else:
            exts.append(CppExtension(name, cpu_sources, extra_compile_args=["-O3"] + omp, extra_link_args=omp))
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=False)}


def read_requirements():
    with open(os.path.join(os.path.dirname(__file__), "requirements.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    ext_modules, cmdclass = get_extensions()
    version = {}
    with open(os.path.join("pcdet", "version.py")) as f:
        exec(f.read(), version)
    setup(
        name="pcdet",
        version=version["__version__"],
        description="OpenPCDet-shaped LiDAR 3D detection with knowledge distillation (itKD, PointDistiller)",
        packages=find_packages(exclude=("tests", "tools", "docs")),
        python_requires=">=3.9",
        install_requires=read_requirements(),
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
