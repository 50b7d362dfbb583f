"""spconv import point for every module that uses sparse convolutions; exports ``spconv`` and
``replace_feature``.

Importing this module neutralises two defects of the spconv 2.3.8 CPU wheel, for CPU tensors only:

* ``spconv.pytorch.ops.indice_conv_backward`` calls ``get_current_stream()`` (``torch.cuda.current_stream()``)
  before its CPU branch, so the backward of SparseConv3d / SubMConv3d / SparseInverseConv3d raises
  "Torch not compiled with CUDA enabled" on CPU-only torch. ``get_current_stream`` is replaced in
  ``spconv.pytorch.ops`` by a version that returns the null stream (0) when CUDA is unavailable and defers to
  the original otherwise.
* The CPU gather-GEMM-scatter kernels and the CPU indice-pair generation give wrong, run-to-run varying results
  when torch uses more than one intra-op thread. The CPU paths of ``get_indice_pairs``, ``indice_conv``,
  ``indice_conv_backward``, ``indice_maxpool`` and ``indice_maxpool_backward`` are wrapped to run with one torch
  thread, restoring the caller's thread count afterwards, so the rest of the program keeps every core.

* At inference spconv fuses a conv's bias into its kernels, which the CPU path rejects ("cpu don't support act
  and bias"): every model whose sparse convs carry a bias (OpenPCDet's residual blocks) crashed in eval on CPU.
  ``SparseConvolution.forward`` is wrapped to add the bias after the GEMM on CPU, as spconv itself does in training.

CUDA tensors take the original code paths unchanged. ``torch.set_num_threads`` is process-wide, so torch work
in other Python threads runs single-threaded while a CPU sparse conv is in flight.

Measured with the wheel (2 torch threads, ~20k active sites): unpatched SparseConv3d / SubMConv3d outputs differed
from dense conv3d by up to 0.6 and changed between identical calls; patched they match to 4e-7
(tests/models/test_spconv_compat.py). Unrelated to threads: spconv reads ``indices`` as row-major memory, so
callers must pass ``indices.contiguous()`` (``nonzero().int()`` keeps a column-major layout and silently gives
wrong rulebooks).
"""
import contextlib
import functools

import torch
import spconv.pytorch as spconv
from cumm.tensorview.gemm import Activation as _Activation
from spconv.pytorch import ops as _spconv_ops

__all__ = ["spconv", "replace_feature", "single_thread", "PATCHED_OPS"]

_ORIGINAL_GET_CURRENT_STREAM = _spconv_ops.get_current_stream
# ops whose first tensor argument decides CPU vs CUDA
PATCHED_OPS = ("get_indice_pairs", "indice_conv", "indice_conv_backward", "indice_maxpool", "indice_maxpool_backward")


@contextlib.contextmanager
def single_thread():
    """Run the body with ``torch.set_num_threads(1)``, restoring the previous count on exit."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _safe_get_current_stream():
    if torch.cuda.is_available():
        return _ORIGINAL_GET_CURRENT_STREAM()
    return 0


def _first_tensor(args, kwargs):
    for val in list(args) + list(kwargs.values()):
        if isinstance(val, torch.Tensor):
            return val
    return None


def _cpu_single_thread(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        tensor = _first_tensor(args, kwargs)
        if tensor is not None and tensor.device.type == "cpu":
            with single_thread():
                return func(*args, **kwargs)
        return func(*args, **kwargs)

    wrapper._pcdet_cpu_single_thread = True
    wrapper._pcdet_original = func
    return wrapper


def _cpu_bias_in_eval(forward):
    """spconv 2.3.8 fuses a conv's bias into its GEMM at inference, which the CPU kernels reject ("cpu don't support
    act and bias"); in training mode it adds the bias after the GEMM, which works on every device and gives the
    same features. Route CPU inference of convs with a bias (and no fused activation) through that path."""
    @functools.wraps(forward)
    def wrapper(self, input, add_input=None):
        if (not self.training and self.bias is not None and not input.features.is_cuda
                and self.act_type == _Activation.None_):
            return self._conv_forward(True, input, self.weight, self.bias, add_input, name=self.name,
                                      sparse_unique_name=self._sparse_unique_name)
        return forward(self, input, add_input)

    wrapper._pcdet_cpu_bias = True
    return wrapper


def _patch_spconv_cpu():
    _spconv_ops.get_current_stream = _safe_get_current_stream
    for name in PATCHED_OPS:
        func = getattr(_spconv_ops, name)
        if not getattr(func, "_pcdet_cpu_single_thread", False):
            setattr(_spconv_ops, name, _cpu_single_thread(func))
    conv_cls = spconv.conv.SparseConvolution
    if not getattr(conv_cls.forward, "_pcdet_cpu_bias", False):
        conv_cls.forward = _cpu_bias_in_eval(conv_cls.forward)


_patch_spconv_cpu()


def replace_feature(out, new_features):
    """Return the SparseConvTensor ``out`` with its (V, C) features replaced by ``new_features`` (V, C')."""
    if hasattr(out, "replace_feature"):
        return out.replace_feature(new_features)
    out.features = new_features
    return out


def sparse_precision(features):
    """(context, features) for running spconv layers on ``features`` under the ambient autocast.

    spconv has no bfloat16 kernels (and none for half on CPU), so where autocast would hand them such a dtype the
    sparse part runs in float32 with autocast off; CUDA fp16 autocast is left alone (spconv supports it there).
    """
    device_type = features.device.type
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext(), features
    if device_type == "cuda" and torch.get_autocast_dtype("cuda") == torch.float16:
        return contextlib.nullcontext(), features
    return torch.autocast(device_type=device_type, enabled=False), features.float()
