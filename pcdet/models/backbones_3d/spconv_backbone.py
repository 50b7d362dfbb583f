"""Sparse 3D convolutional backbones (spconv 2.x): VoxelBackBone8x of SECOND / CenterPoint voxel."""
from functools import partial

import numpy as np
import torch.nn as nn

from . import BACKBONES_3D
from ...batch_keys import (BATCH_SIZE, ENCODED_SPCONV_TENSOR, ENCODED_SPCONV_TENSOR_STRIDE, MULTI_SCALE_3D_FEATURES,
                          MULTI_SCALE_3D_STRIDES, VOXEL_COORDS, VOXEL_FEATURES, check_keys)
from ..model_utils.width import module_width, scaled
from ...utils.spconv_utils import sparse_precision, spconv
from ...config_schema import opt, req  # noqa: F401


def post_act_block(in_channels, out_channels, kernel_size, indice_key=None, stride=1, padding=0,
                   conv_type="subm", norm_fn=None):
    """Sparse conv (``subm`` / ``spconv`` / ``inverseconv``) + norm + ReLU as a SparseSequential."""
    if conv_type == "subm":
        conv = spconv.SubMConv3d(in_channels, out_channels, kernel_size, bias=False, indice_key=indice_key)
    elif conv_type == "spconv":
        conv = spconv.SparseConv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                   bias=False, indice_key=indice_key)
    elif conv_type == "inverseconv":
        conv = spconv.SparseInverseConv3d(in_channels, out_channels, kernel_size, indice_key=indice_key, bias=False)
    else:
        raise ValueError(f"post_act_block: unknown conv_type '{conv_type}' (subm, spconv, inverseconv)")
    return spconv.SparseSequential(conv, norm_fn(out_channels), nn.ReLU())


@BACKBONES_3D.register
class VoxelBackBone8x(nn.Module):
    """SECOND's sparse 3D backbone: 4 stages (strides 1, 2, 4, 8) and a z-downsampling output conv.

    Channels 16, 32, 64, 64 -> 128 at width 1.0 (each scaled by ``width``). Config keys: ``last_pad`` (0).

    Args:
        model_cfg: ``MODEL.BACKBONE_3D``.
        input_channels: int, channels of ``voxel_features``.
        grid_size: [nx, ny, nz] of the voxel grid; the sparse shape is [nz + 1, ny, nx].
        width: channel multiplier; None reads ``model_cfg.WIDTH`` (default 1.0).
    """

    REQUIRED_KEYS = (VOXEL_FEATURES, VOXEL_COORDS, BATCH_SIZE)
    PROVIDED_KEYS = (ENCODED_SPCONV_TENSOR, ENCODED_SPCONV_TENSOR_STRIDE, MULTI_SCALE_3D_FEATURES,
                     MULTI_SCALE_3D_STRIDES)

    CONFIG_SCHEMA = {"WIDTH": opt(float), "last_pad": opt(int)}

    def __init__(self, model_cfg, input_channels, grid_size, width=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        self.width = module_width(None, model_cfg) if width is None else float(width)
        c1, c2, c3, c4, c_out = (scaled(c, self.width) for c in (16, 32, 64, 64, 128))
        norm_fn = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)
        self.sparse_shape = (np.asarray(grid_size, dtype=np.int64)[::-1] + [1, 0, 0]).tolist()

        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(input_channels, c1, 3, padding=1, bias=False, indice_key="subm1"),
            norm_fn(c1),
            nn.ReLU(),
        )
        block = post_act_block
        self.conv1 = spconv.SparseSequential(
            block(c1, c1, 3, norm_fn=norm_fn, padding=1, indice_key="subm1"),
        )
        self.conv2 = spconv.SparseSequential(
            block(c1, c2, 3, norm_fn=norm_fn, stride=2, padding=1, indice_key="spconv2", conv_type="spconv"),
            block(c2, c2, 3, norm_fn=norm_fn, padding=1, indice_key="subm2"),
            block(c2, c2, 3, norm_fn=norm_fn, padding=1, indice_key="subm2"),
        )
        self.conv3 = spconv.SparseSequential(
            block(c2, c3, 3, norm_fn=norm_fn, stride=2, padding=1, indice_key="spconv3", conv_type="spconv"),
            block(c3, c3, 3, norm_fn=norm_fn, padding=1, indice_key="subm3"),
            block(c3, c3, 3, norm_fn=norm_fn, padding=1, indice_key="subm3"),
        )
        self.conv4 = spconv.SparseSequential(
            block(c3, c4, 3, norm_fn=norm_fn, stride=2, padding=(0, 1, 1), indice_key="spconv4",
                  conv_type="spconv"),
            block(c4, c4, 3, norm_fn=norm_fn, padding=1, indice_key="subm4"),
            block(c4, c4, 3, norm_fn=norm_fn, padding=1, indice_key="subm4"),
        )
        last_pad = self.model_cfg.get("last_pad", 0)
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(c4, c_out, (3, 1, 1), stride=(2, 1, 1), padding=last_pad, bias=False,
                                indice_key="spconv_down2"),
            norm_fn(c_out),
            nn.ReLU(),
        )
        self.num_point_features = c_out
        self.backbone_channels = {"x_conv1": c1, "x_conv2": c2, "x_conv3": c3, "x_conv4": c4}

    def forward(self, batch_dict):
        """Reads ``voxel_features`` (V, C_in), ``voxel_coords`` (V, 4) [b, z, y, x], ``batch_size``; writes
        ``encoded_spconv_tensor`` (SparseConvTensor, C = 128 * width, spatial (nz', ny / 8, nx / 8)),
        ``encoded_spconv_tensor_stride`` (8) and ``multi_scale_3d_features`` {x_conv1..x_conv4}."""
        check_keys(batch_dict, self.REQUIRED_KEYS, type(self).__name__)
        return encode_8x(self, batch_dict)


def encode_8x(backbone, batch_dict):
    """The forward shared by the 8x sparse backbones (plain and residual): conv_input, conv1..conv4, conv_out.

    Reads ``voxel_features`` (V, C_in), ``voxel_coords`` (V, 4) [b, z, y, x], ``batch_size``; writes
    ``encoded_spconv_tensor``, ``encoded_spconv_tensor_stride`` (8), ``multi_scale_3d_features`` and
    ``multi_scale_3d_strides`` {x_conv1..x_conv4}.
    """
    precision, features = sparse_precision(batch_dict[VOXEL_FEATURES])
    input_sp_tensor = spconv.SparseConvTensor(
        features=features,
        indices=batch_dict[VOXEL_COORDS].int().contiguous(),  # spconv silently misreads non-contiguous indices
        spatial_shape=backbone.sparse_shape,
        batch_size=batch_dict[BATCH_SIZE],
    )
    with precision:  # spconv has no bf16 kernels: under such autocast the sparse part runs in float32
        x = backbone.conv_input(input_sp_tensor)
        x_conv1 = backbone.conv1(x)
        x_conv2 = backbone.conv2(x_conv1)
        x_conv3 = backbone.conv3(x_conv2)
        x_conv4 = backbone.conv4(x_conv3)
        batch_dict[ENCODED_SPCONV_TENSOR] = backbone.conv_out(x_conv4)
    batch_dict[ENCODED_SPCONV_TENSOR_STRIDE] = 8
    batch_dict[MULTI_SCALE_3D_FEATURES] = {
        "x_conv1": x_conv1, "x_conv2": x_conv2, "x_conv3": x_conv3, "x_conv4": x_conv4,
    }
    batch_dict[MULTI_SCALE_3D_STRIDES] = {"x_conv1": 1, "x_conv2": 2, "x_conv3": 4, "x_conv4": 8}
    return batch_dict
