"""BaseBEVBackbone: the SECOND / PointPillars 2D BEV backbone (down-sampling blocks + up-sampling deblocks)."""
import numpy as np
import torch
import torch.nn as nn

from . import BACKBONES_2D
from ...batch_keys import SPATIAL_FEATURES, SPATIAL_FEATURES_2D, check_keys
from ..model_utils.width import module_width, scaled_list
from ...config_schema import opt, req  # noqa: F401


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


@BACKBONES_2D.register
class BaseBEVBackbone(nn.Module):
    """Multi-level 2D CNN on the BEV map, levels up-sampled to a common stride and concatenated.

    Config keys: ``LAYER_NUMS``, ``LAYER_STRIDES``, ``NUM_FILTERS``, ``UPSAMPLE_STRIDES``,
    ``NUM_UPSAMPLE_FILTERS``, ``USE_CONV_FOR_NO_STRIDE`` (False). NUM_FILTERS and NUM_UPSAMPLE_FILTERS are scaled
    by ``width``.

    Args:
        input_channels: channels of ``spatial_features``.
    Output ``spatial_features_2d``: (B, sum(NUM_UPSAMPLE_FILTERS), H / s, W / s).
    """

    REQUIRED_KEYS = (SPATIAL_FEATURES,)
    PROVIDED_KEYS = (SPATIAL_FEATURES_2D,)

    CONFIG_SCHEMA = {
        "LAYER_NUMS": opt(list), "LAYER_STRIDES": opt(list), "NUM_FILTERS": opt(list), "UPSAMPLE_STRIDES": opt(list),
        "NUM_UPSAMPLE_FILTERS": opt(list), "USE_CONV_FOR_NO_STRIDE": opt(bool), "WIDTH": opt(float),
    }

    def __init__(self, model_cfg, input_channels, width=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.width = module_width(None, model_cfg) if width is None else float(width)

        if self.model_cfg.get("LAYER_NUMS", None) is not None:
            layer_nums = list(self.model_cfg.LAYER_NUMS)
            layer_strides = list(self.model_cfg.LAYER_STRIDES)
            num_filters = scaled_list(self.model_cfg.NUM_FILTERS, self.width)
            if not len(layer_nums) == len(layer_strides) == len(num_filters):
                raise ValueError(
                    f"MODEL.BACKBONE_2D: LAYER_NUMS {layer_nums}, LAYER_STRIDES {layer_strides} and NUM_FILTERS "
                    f"{list(self.model_cfg.NUM_FILTERS)} must have the same length"
                )
        else:
            layer_nums = layer_strides = num_filters = []

        if self.model_cfg.get("UPSAMPLE_STRIDES", None) is not None:
            upsample_strides = list(self.model_cfg.UPSAMPLE_STRIDES)
            num_upsample_filters = scaled_list(self.model_cfg.NUM_UPSAMPLE_FILTERS, self.width)
            if len(upsample_strides) != len(num_upsample_filters):
                raise ValueError(
                    f"MODEL.BACKBONE_2D: UPSAMPLE_STRIDES {upsample_strides} and NUM_UPSAMPLE_FILTERS "
                    f"{list(self.model_cfg.NUM_UPSAMPLE_FILTERS)} must have the same length"
                )
        else:
            upsample_strides = num_upsample_filters = []

        num_levels = len(layer_nums)
        c_in_list = [input_channels, *num_filters[:-1]]
        self.blocks = nn.ModuleList()
        self.deblocks = nn.ModuleList()
        for idx in range(num_levels):
            cur_layers = [
                nn.ZeroPad2d(1),
                nn.Conv2d(c_in_list[idx], num_filters[idx], kernel_size=3, stride=layer_strides[idx], padding=0,
                          bias=False),
                _bn(num_filters[idx]),
                nn.ReLU(),
            ]
            for _ in range(layer_nums[idx]):
                cur_layers.extend([
                    nn.Conv2d(num_filters[idx], num_filters[idx], kernel_size=3, padding=1, bias=False),
                    _bn(num_filters[idx]),
                    nn.ReLU(),
                ])
            self.blocks.append(nn.Sequential(*cur_layers))
            if len(upsample_strides) > 0:
                stride = upsample_strides[idx]
                if stride > 1 or (stride == 1 and not self.model_cfg.get("USE_CONV_FOR_NO_STRIDE", False)):
                    self.deblocks.append(nn.Sequential(
                        nn.ConvTranspose2d(num_filters[idx], num_upsample_filters[idx], int(stride),
                                           stride=int(stride), bias=False),
                        _bn(num_upsample_filters[idx]),
                        nn.ReLU(),
                    ))
                else:
                    down = int(np.round(1 / stride))
                    self.deblocks.append(nn.Sequential(
                        nn.Conv2d(num_filters[idx], num_upsample_filters[idx], down, stride=down, bias=False),
                        _bn(num_upsample_filters[idx]),
                        nn.ReLU(),
                    ))

        c_in = sum(num_upsample_filters) if len(num_upsample_filters) > 0 else (
            num_filters[-1] if num_filters else input_channels)
        if len(upsample_strides) > num_levels:
            self.deblocks.append(nn.Sequential(
                nn.ConvTranspose2d(c_in, c_in, upsample_strides[-1], stride=upsample_strides[-1], bias=False),
                _bn(c_in),
                nn.ReLU(),
            ))
        self.num_bev_features = c_in

    def forward(self, data_dict):
        """Reads ``spatial_features`` (B, C_in, H, W); writes ``spatial_features_2d`` (B, C_out, H', W')."""
        check_keys(data_dict, self.REQUIRED_KEYS, type(self).__name__)
        x = data_dict[SPATIAL_FEATURES]
        ups = []
        for i in range(len(self.blocks)):
            x = self.blocks[i](x)
            ups.append(self.deblocks[i](x) if len(self.deblocks) > 0 else x)
        if len(ups) > 1:
            x = torch.cat(ups, dim=1)
        elif len(ups) == 1:
            x = ups[0]
        if len(self.deblocks) > len(self.blocks):
            x = self.deblocks[-1](x)
        data_dict[SPATIAL_FEATURES_2D] = x
        return data_dict
