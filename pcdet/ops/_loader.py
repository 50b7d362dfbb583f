"""Lazy loading of the compiled extensions of ``pcdet.ops``.

Importing an op never requires a build: ``load_extension`` returns ``None`` when the extension module is missing
or fails to load, and the op falls back to its PyTorch reference path. The notice is logged once per extension
so a forgotten build is visible without flooding the log.
"""
import importlib
import logging

logger = logging.getLogger("pcdet.ops")

_MODULES = {}
_NOTICES = set()


def notice_once(key, message):
    """Log ``message`` at WARNING level the first time ``key`` is seen in this process."""
    if key in _NOTICES:
        return
    _NOTICES.add(key)
    logger.warning(message)


def load_extension(name):
    """Import the compiled module ``name`` (e.g. 'pcdet.ops.knn.knn_ext') once.

    Returns:
        The module, or None when it is not built or cannot be loaded (a one-line notice says which and why).
    """
    if name in _MODULES:
        return _MODULES[name]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        module = None
        notice_once(name, f"{name} is not built; using the PyTorch reference path "
                          f"(build with `pip install --no-build-isolation -e .`)")
    except ImportError as err:
        module = None
        notice_once(name, f"{name} failed to load ({err}); using the PyTorch reference path")
    _MODULES[name] = module
    return module


def extension_for(name, tensor):
    """The compiled module ``name`` when it serves tensors on ``tensor``'s device (CPU, or CUDA when built with its
    kernels), else None; a missing kernel for the device is noticed once."""
    ext = load_extension(name)
    if ext is None:
        return None
    if tensor.device.type == "cpu" or (tensor.is_cuda and cuda_supported(ext)):
        return ext
    notice_once(name + tensor.device.type,
                f"{name} has no kernel for {tensor.device.type} tensors; using the PyTorch reference path")
    return None


def cuda_supported(module):
    """True when the compiled ``module`` was built with its CUDA kernels."""
    return module is not None and bool(module.with_cuda())


def cuda_status():
    """{extension name: built with its CUDA kernels} for every op that has CUDA sources (scripts/gpu_check.sh)."""
    from .ext_list import extension_specs

    return {name: cuda_supported(load_extension(name)) for name, _, cuda in extension_specs() if cuda}
