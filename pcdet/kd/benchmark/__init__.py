"""The reproducible distillation benchmark on the synthetic KITTI-format dataset.

``presets`` (what is run), ``plan`` (runs, derived configs, paths), ``runner`` (data, training / evaluation
subprocesses, job pool with a progress line, zoo export), ``evaluate`` (the evaluation subprocess), ``stats``
(paired gains, t-intervals), ``report`` (tables, JSON, plot) and ``cli`` (``tools/benchmark_kd.py``).
"""
from .plan import Benchmark, BenchmarkError, Run, run_priority
from .presets import PRESETS
from .stats import paired_gains, t_interval

__all__ = ["Benchmark", "BenchmarkError", "PRESETS", "Run", "paired_gains", "run_priority", "t_interval"]
