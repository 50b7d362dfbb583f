"""Statistics of the benchmark: paired gains over seeds with Student-t confidence intervals."""
import math
import statistics


def t_interval(values, confidence=0.95):
    """(mean, low, high) of the two-sided Student-t interval of the mean of ``values``.

    One value gives (value, nan, nan); an empty list gives three NaNs.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if n == 1:
        return mean, math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2.0, df=n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_gains(method_by_seed, base_by_seed):
    """Per-seed differences method - base over the seeds both have, sorted by seed: [(seed, gain)]."""
    seeds = sorted(set(method_by_seed) & set(base_by_seed))
    return [(s, float(method_by_seed[s]) - float(base_by_seed[s])) for s in seeds]


def fmt_interval(mean, low, high, digits=2):
    """'+1.23 [+0.40, +2.06]' (or just the mean when the interval is undefined)."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
