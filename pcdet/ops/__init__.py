"""Compiled operators (C++ CPU and CUDA) with PyTorch reference paths; see docs/OPS.md."""
from ._loader import cuda_status

__all__ = ["cuda_status"]
