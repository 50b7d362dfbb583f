"""Base class of the voxel feature encoders (VFE family)."""
import torch.nn as nn

from ...model_utils.width import module_width
from ....config_schema import opt, req  # noqa: F401


class VFETemplate(nn.Module):
    """Encodes the points of each voxel / pillar into one feature vector.

    Args:
        model_cfg: the ``MODEL.VFE`` config.
        width: width multiplier for the encoder's filters; None reads ``model_cfg.WIDTH`` (default 1.0).
    """

    REQUIRED_KEYS = ()
    PROVIDED_KEYS = ()

    CONFIG_SCHEMA = {"WIDTH": opt(float)}

    def __init__(self, model_cfg, width=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.width = module_width(None, model_cfg) if width is None else float(width)

    def get_output_feature_dim(self):
        """Number of channels C of the per-voxel output feature."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_output_feature_dim()")

    def forward(self, batch_dict, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch_dict)")
