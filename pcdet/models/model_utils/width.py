"""Width multiplier for compact students: scale the channel counts of a module config.

``MODEL.WIDTH`` (default 1.0) applies to every module that supports it; a module config may carry its own
``WIDTH`` that overrides the model-level value. ``WIDTH: 1.0`` reproduces OpenPCDet's shapes exactly, so the
teacher configs and checkpoints are unaffected.
"""


def scaled(channels, width):
    """Channel count ``channels`` scaled by ``width``, rounded, never below 1.

    Args:
        channels: int, channel count at width 1.0.
        width: float > 0.
    Returns:
        int, ``max(1, round(channels * width))``.
    """
    if width <= 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    return max(1, int(round(channels * width)))


def scaled_list(channels, width):
    """``scaled`` applied to every entry of a list of channel counts."""
    return [scaled(int(c), width) for c in channels]


def module_width(model_cfg, module_cfg):
    """Width multiplier for one module: ``module_cfg.WIDTH`` if set, else ``model_cfg.WIDTH``, else 1.0.

    Either config may be None (a module built by hand).
    """
    if module_cfg is not None and module_cfg.get("WIDTH", None) is not None:
        return float(module_cfg["WIDTH"])
    if model_cfg is not None and model_cfg.get("WIDTH", None) is not None:
        return float(model_cfg["WIDTH"])
    return 1.0
