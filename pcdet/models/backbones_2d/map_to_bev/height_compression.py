"""HeightCompression: stack the z slices of the sparse 3D output into BEV channels."""
import torch.nn as nn

from . import MAP_TO_BEV
from ....batch_keys import (ENCODED_SPCONV_TENSOR, ENCODED_SPCONV_TENSOR_STRIDE, SPATIAL_FEATURES,
                           SPATIAL_FEATURES_STRIDE, check_keys)
from ...model_utils.width import module_width
from ....config_schema import opt, req  # noqa: F401


@MAP_TO_BEV.register
class HeightCompression(nn.Module):
    """SparseConvTensor (B, C, D, H, W) dense -> (B, C * D, H, W).

    Config keys: ``NUM_BEV_FEATURES`` (C * D at width 1.0). With a width multiplier the BEV channels follow the
    3D backbone: ``num_point_features * D`` with D = NUM_BEV_FEATURES / unscaled backbone channels.

    Args:
        num_point_features: channels C of ``encoded_spconv_tensor`` (the 3D backbone's ``num_point_features``).
    """

    REQUIRED_KEYS = (ENCODED_SPCONV_TENSOR, ENCODED_SPCONV_TENSOR_STRIDE)
    PROVIDED_KEYS = (SPATIAL_FEATURES, SPATIAL_FEATURES_STRIDE)

    CONFIG_SCHEMA = {"NUM_BEV_FEATURES": req(int), "WIDTH": opt(float)}

    def __init__(self, model_cfg, num_point_features=None, width=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        width = module_width(None, model_cfg) if width is None else float(width)
        self.num_bev_features = int(self.model_cfg.NUM_BEV_FEATURES)
        if num_point_features is not None and width != 1.0:
            depth = max(1, int(round(self.num_bev_features / round(num_point_features / width))))
            self.num_bev_features = int(num_point_features) * depth

    def forward(self, batch_dict):
        """Reads ``encoded_spconv_tensor``; writes ``spatial_features`` (B, C * D, H, W) and
        ``spatial_features_stride``."""
        check_keys(batch_dict, self.REQUIRED_KEYS, type(self).__name__)
        spatial_features = batch_dict[ENCODED_SPCONV_TENSOR].dense()
        n, c, d, h, w = spatial_features.shape
        if c * d != self.num_bev_features:
            raise ValueError(
                f"HeightCompression: encoded_spconv_tensor dense shape {(n, c, d, h, w)} gives {c * d} BEV "
                f"channels, but MODEL.MAP_TO_BEV.NUM_BEV_FEATURES resolves to {self.num_bev_features}"
            )
        batch_dict[SPATIAL_FEATURES] = spatial_features.view(n, c * d, h, w)
        batch_dict[SPATIAL_FEATURES_STRIDE] = batch_dict[ENCODED_SPCONV_TENSOR_STRIDE]
        return batch_dict
