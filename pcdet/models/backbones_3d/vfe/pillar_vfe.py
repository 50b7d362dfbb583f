"""PillarVFE (PointPillars' pillar feature net) and its PFNLayer."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import VFE
from ....batch_keys import PILLAR_FEATURES, VOXELS, VOXEL_COORDS, VOXEL_NUM_POINTS, check_keys
from ...model_utils.width import scaled_list
from .vfe_template import VFETemplate
from ....config_schema import opt, req  # noqa: F401


class PFNLayer(nn.Module):
    """Linear + BN + ReLU per point, then a max over the points of the pillar.

    A non-last layer outputs ``out_channels // 2`` point features concatenated with their pillar max
    (so ``out_channels`` in total); the last layer outputs the max only.
    Input (V, P, C_in) -> (V, P, out_channels) or (V, 1, out_channels) for the last layer.
    """

    def __init__(self, in_channels, out_channels, use_norm=True, last_layer=False):
        super().__init__()
        self.last_vfe = last_layer
        self.use_norm = use_norm
        if not self.last_vfe:
            out_channels = out_channels // 2
        if self.use_norm:
            self.linear = nn.Linear(in_channels, out_channels, bias=False)
            self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01)
        else:
            self.linear = nn.Linear(in_channels, out_channels, bias=True)

    def forward(self, inputs):
        x = self.linear(inputs)
        if self.use_norm:
            # BatchNorm1d over the (V * P, C) rows: the same statistics as OpenPCDet's norm of the (V, C, P)
            # permute (both reduce over every point slot of every pillar), without its two strided copies (about
            # half the layer's forward + backward time on the CPU)
            x = self.norm(x.reshape(-1, x.shape[-1])).view(x.shape)
        x = F.relu(x)
        x_max = torch.max(x, dim=1, keepdim=True)[0]
        if self.last_vfe:
            return x_max
        return torch.cat([x, x_max.expand(-1, inputs.shape[1], -1)], dim=2)


@VFE.register
class PillarVFE(VFETemplate):
    """Pillar feature net.

    Config keys: ``WITH_DISTANCE``, ``USE_ABSLOTE_XYZ`` (OpenPCDet's spelling), ``USE_NORM``, ``NUM_FILTERS``.
    Each point gets ``[x, y, z, feats..., x - mean, y - mean, z - mean, x - pillar centre, ...]`` (+ range when
    WITH_DISTANCE), then the PFN layers reduce each pillar to one vector.

    Args:
        num_point_features: int C_pt of the raw points.
        voxel_size: [vx, vy, vz]; point_cloud_range: [x_min, y_min, z_min, x_max, y_max, z_max].
        width: multiplier applied to NUM_FILTERS.
    """

    REQUIRED_KEYS = (VOXELS, VOXEL_NUM_POINTS, VOXEL_COORDS)
    PROVIDED_KEYS = (PILLAR_FEATURES,)

    CONFIG_SCHEMA = {
        "NUM_FILTERS": req(list), "USE_NORM": req(bool), "WITH_DISTANCE": req(bool), "USE_ABSLOTE_XYZ": req(bool),
    }

    def __init__(self, model_cfg, num_point_features, voxel_size, point_cloud_range, **kwargs):
        super().__init__(model_cfg=model_cfg, **kwargs)
        self.use_norm = self.model_cfg.USE_NORM
        self.with_distance = self.model_cfg.WITH_DISTANCE
        self.use_absolute_xyz = self.model_cfg.USE_ABSLOTE_XYZ
        num_point_features += 6 if self.use_absolute_xyz else 3
        if self.with_distance:
            num_point_features += 1

        self.num_filters = scaled_list(self.model_cfg.NUM_FILTERS, self.width)
        if len(self.num_filters) == 0:
            raise ValueError("MODEL.VFE.NUM_FILTERS: PillarVFE needs at least one filter count")
        num_filters = [num_point_features] + list(self.num_filters)
        self.pfn_layers = nn.ModuleList([
            PFNLayer(num_filters[i], num_filters[i + 1], self.use_norm, last_layer=(i >= len(num_filters) - 2))
            for i in range(len(num_filters) - 1)
        ])

        self.voxel_x, self.voxel_y, self.voxel_z = (float(v) for v in voxel_size[:3])
        self.x_offset = self.voxel_x / 2 + float(point_cloud_range[0])
        self.y_offset = self.voxel_y / 2 + float(point_cloud_range[1])
        self.z_offset = self.voxel_z / 2 + float(point_cloud_range[2])

    def get_output_feature_dim(self):
        return self.num_filters[-1]

    @staticmethod
    def get_paddings_indicator(actual_num, max_num, axis=0):
        """(V,) counts -> (V, max_num) bool, True where the slot holds a real point."""
        actual_num = torch.unsqueeze(actual_num, axis + 1)
        max_num_shape = [1] * len(actual_num.shape)
        max_num_shape[axis + 1] = -1
        slots = torch.arange(max_num, dtype=torch.int, device=actual_num.device).view(max_num_shape)
        return actual_num.int() > slots

    def forward(self, batch_dict, **kwargs):
        """Reads ``voxels`` (V, P, C_pt), ``voxel_num_points`` (V,), ``voxel_coords`` (V, 4) [b, z, y, x];
        writes ``pillar_features`` (V, C)."""
        check_keys(batch_dict, self.REQUIRED_KEYS, type(self).__name__)
        voxel_features = batch_dict[VOXELS]
        voxel_num_points = batch_dict[VOXEL_NUM_POINTS]
        coords = batch_dict[VOXEL_COORDS]
        dtype = voxel_features.dtype

        normalizer = torch.clamp_min(voxel_num_points.type_as(voxel_features), 1.0).view(-1, 1, 1)
        points_mean = voxel_features[:, :, :3].sum(dim=1, keepdim=True) / normalizer
        f_cluster = voxel_features[:, :, :3] - points_mean

        centers = torch.stack([
            coords[:, 3].to(dtype) * self.voxel_x + self.x_offset,
            coords[:, 2].to(dtype) * self.voxel_y + self.y_offset,
            coords[:, 1].to(dtype) * self.voxel_z + self.z_offset,
        ], dim=-1)
        f_center = voxel_features[:, :, :3] - centers.unsqueeze(1)

        if self.use_absolute_xyz:
            features = [voxel_features, f_cluster, f_center]
        else:
            features = [voxel_features[..., 3:], f_cluster, f_center]
        if self.with_distance:
            features.append(torch.norm(voxel_features[:, :, :3], 2, 2, keepdim=True))
        features = torch.cat(features, dim=-1)

        mask = self.get_paddings_indicator(voxel_num_points, features.shape[1], axis=0)
        features = features * mask.unsqueeze(-1).type_as(voxel_features)
        for pfn in self.pfn_layers:
            features = pfn(features)
        batch_dict[PILLAR_FEATURES] = features.squeeze(1)
        return batch_dict
