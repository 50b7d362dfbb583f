"""MeanVFE: the feature of a voxel is the mean of its points (SECOND, CenterPoint voxel)."""
import torch

from . import VFE
from ....batch_keys import VOXELS, VOXEL_NUM_POINTS, VOXEL_FEATURES, check_keys
from .vfe_template import VFETemplate
from ....config_schema import opt, req  # noqa: F401


@VFE.register
class MeanVFE(VFETemplate):
    """Mean of the points of each voxel.

    Args:
        model_cfg: ``MODEL.VFE`` (no keys besides NAME).
        num_point_features: int C_pt, channels of a point ``[x, y, z, intensity, ...]``.
    """

    REQUIRED_KEYS = (VOXELS, VOXEL_NUM_POINTS)
    PROVIDED_KEYS = (VOXEL_FEATURES,)

    CONFIG_SCHEMA = {}

    def __init__(self, model_cfg, num_point_features, **kwargs):
        super().__init__(model_cfg=model_cfg, **kwargs)
        self.num_point_features = num_point_features

    def get_output_feature_dim(self):
        return self.num_point_features

    def forward(self, batch_dict, **kwargs):
        """Reads ``voxels`` (V, P, C_pt) and ``voxel_num_points`` (V,); writes ``voxel_features`` (V, C_pt)."""
        check_keys(batch_dict, self.REQUIRED_KEYS, type(self).__name__)
        voxels, voxel_num_points = batch_dict[VOXELS], batch_dict[VOXEL_NUM_POINTS]
        points_sum = voxels.sum(dim=1)  # padded slots are zeros
        normalizer = torch.clamp_min(voxel_num_points.view(-1, 1).type_as(voxels), 1.0)
        batch_dict[VOXEL_FEATURES] = (points_sum / normalizer).contiguous()
        return batch_dict
