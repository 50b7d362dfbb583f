"""PointPillarScatter: scatter pillar features onto the dense BEV grid."""
import torch.nn as nn

from . import MAP_TO_BEV
from ....batch_keys import (BATCH_SIZE, PILLAR_FEATURES, SPATIAL_FEATURES, SPATIAL_FEATURES_STRIDE, VOXEL_COORDS,
                           check_keys)
from ...model_utils.width import module_width, scaled
from ....config_schema import opt, req  # noqa: F401


@MAP_TO_BEV.register
class PointPillarScatter(nn.Module):
    """Pillars (V, C) at ``voxel_coords`` [b, z, y, x] -> BEV map (B, C, ny, nx).

    Config keys: ``NUM_BEV_FEATURES`` (C at width 1.0, scaled by ``width``).

    Args:
        grid_size: [nx, ny, nz] with nz == 1.
        num_point_features: channels of ``pillar_features`` from the VFE; when given it must equal the scaled
            NUM_BEV_FEATURES.
    """

    REQUIRED_KEYS = (PILLAR_FEATURES, VOXEL_COORDS, BATCH_SIZE)
    PROVIDED_KEYS = (SPATIAL_FEATURES, SPATIAL_FEATURES_STRIDE)

    CONFIG_SCHEMA = {"NUM_BEV_FEATURES": req(int), "WIDTH": opt(float)}

    def __init__(self, model_cfg, grid_size, num_point_features=None, width=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        width = module_width(None, model_cfg) if width is None else float(width)
        self.num_bev_features = scaled(self.model_cfg.NUM_BEV_FEATURES, width)
        if num_point_features is not None and num_point_features != self.num_bev_features:
            raise ValueError(
                f"MODEL.MAP_TO_BEV.NUM_BEV_FEATURES={self.model_cfg.NUM_BEV_FEATURES} (x width {width} = "
                f"{self.num_bev_features}) differs from the VFE output channels {num_point_features}"
            )
        self.nx, self.ny, self.nz = (int(g) for g in grid_size)
        if self.nz != 1:
            raise ValueError(f"PointPillarScatter: grid_size {list(grid_size)} must have nz == 1")

    def forward(self, batch_dict, **kwargs):
        """Reads ``pillar_features`` (V, C), ``voxel_coords`` (V, 4), ``batch_size``; writes
        ``spatial_features`` (B, C, ny, nx) and ``spatial_features_stride`` (1)."""
        check_keys(batch_dict, self.REQUIRED_KEYS, type(self).__name__)
        pillar_features, coords = batch_dict[PILLAR_FEATURES], batch_dict[VOXEL_COORDS]
        batch_size = int(batch_dict[BATCH_SIZE])
        if pillar_features.shape[-1] != self.num_bev_features:
            raise ValueError(
                f"PointPillarScatter: pillar_features {tuple(pillar_features.shape)} has "
                f"{pillar_features.shape[-1]} channels, expected NUM_BEV_FEATURES={self.num_bev_features}"
            )
        coords = coords.long()
        flat = coords[:, 0] * (self.ny * self.nx) + coords[:, 2] * self.nx + coords[:, 3]
        canvas = pillar_features.new_zeros(batch_size * self.ny * self.nx, self.num_bev_features)
        canvas = canvas.index_copy(0, flat, pillar_features)
        spatial = canvas.view(batch_size, self.ny, self.nx, self.num_bev_features).permute(0, 3, 1, 2)
        batch_dict[SPATIAL_FEATURES] = spatial.contiguous()
        batch_dict[SPATIAL_FEATURES_STRIDE] = 1
        return batch_dict
