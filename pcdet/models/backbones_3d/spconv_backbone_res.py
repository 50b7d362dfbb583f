"""Sparse residual 3D backbone of CenterPoint (OpenPCDet's ``VoxelResBackBone8x``), 8x downsampling in x and y.

Parameter names and shapes equal OpenPCDet's at ``WIDTH: 1.0`` (``conv_input``, ``conv1`` .. ``conv4`` of
``SparseBasicBlock``, ``conv_out``), so its checkpoints load strictly.
"""
from functools import partial

import torch.nn as nn

from ...utils.spconv_utils import replace_feature, spconv
from ... import batch_keys as K
from ..model_utils.width import module_width, scaled
from . import BACKBONES_3D
from .spconv_backbone import encode_8x
from ...config_schema import opt, req  # noqa: F401


def _down_block(in_channels, out_channels, norm_fn, padding, indice_key):
    """Stride-2 3x3x3 sparse conv (no bias) -> norm -> ReLU as a ``SparseSequential`` (keys ``0.weight``, ``1.*``)."""
    return spconv.SparseSequential(
        spconv.SparseConv3d(in_channels, out_channels, 3, stride=2, padding=padding, bias=False,
                            indice_key=indice_key),
        norm_fn(out_channels),
        nn.ReLU(),
    )


class SparseBasicBlock(spconv.SparseModule):
    """Two 3x3x3 submanifold convs with a residual connection (ResNet basic block on sparse voxels).

    The convs carry a bias next to their norm, as in OpenPCDet (``conv1.bias``, ``conv2.bias``).
    Input and output: a ``SparseConvTensor`` with ``planes`` feature channels (V, planes), same indices.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, bias=None, norm_fn=None, downsample=None, indice_key=None):
        super().__init__()
        if norm_fn is None:
            raise ValueError("SparseBasicBlock: norm_fn is required")
        if downsample is None and (inplanes != planes or stride != 1):
            raise ValueError(
                f"SparseBasicBlock: inplanes={inplanes}, planes={planes}, stride={stride} need a downsample module"
            )
        bias = True if bias is None else bias
        self.conv1 = spconv.SubMConv3d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=bias,
                                       indice_key=indice_key)
        self.bn1 = norm_fn(planes)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(planes, planes, kernel_size=3, stride=1, padding=1, bias=bias,
                                       indice_key=indice_key)
        self.bn2 = norm_fn(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = replace_feature(out, self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = replace_feature(out, self.bn2(out.features))
        if self.downsample is not None:
            identity = self.downsample(x)
        return replace_feature(out, self.relu(out.features + identity.features))


@BACKBONES_3D.register
class VoxelResBackBone8x(nn.Module):
    """Sparse residual encoder: strides 1, 2, 4, 8 in x/y, then a (3, 1, 1) z-downsampling conv.

    Config (``MODEL.BACKBONE_3D``): ``NAME``, optional ``WIDTH`` (channel multiplier, default ``MODEL.WIDTH``),
    optional ``last_pad`` (z padding of ``conv_out``, default 0).

    Args:
        model_cfg: the BACKBONE_3D config.
        input_channels: int, voxel feature channels (``MeanVFE`` output).
        grid_size: np.ndarray ``[nx, ny, nz]``.
        width: float channel multiplier (the template passes ``MODEL.WIDTH`` or ``BACKBONE_3D.WIDTH``); None reads
            ``model_cfg.WIDTH`` (default 1.0).

    Reads ``voxel_features`` (V, C), ``voxel_coords`` (V, 4) ``[b, z, y, x]``, ``batch_size``; writes
    ``encoded_spconv_tensor`` (stride 8; dense shape (B, C_out, D, ny / 8, nx / 8) with ``C_out = 128 * WIDTH``
    and ``D = 2`` for nz = 40), ``encoded_spconv_tensor_stride`` and ``multi_scale_3d_features``
    (``x_conv1`` .. ``x_conv4``).
    """

    REQUIRED_KEYS = (K.VOXEL_FEATURES, K.VOXEL_COORDS, K.BATCH_SIZE)
    PROVIDED_KEYS = (K.ENCODED_SPCONV_TENSOR, K.ENCODED_SPCONV_TENSOR_STRIDE, K.MULTI_SCALE_3D_FEATURES,
                     K.MULTI_SCALE_3D_STRIDES)

    CONFIG_SCHEMA = {"WIDTH": opt(float), "last_pad": opt(int)}

    def __init__(self, model_cfg, input_channels, grid_size, width=None, **kwargs):
        super().__init__()
        self.model_cfg = model_cfg
        width = module_width(None, model_cfg) if width is None else float(width)
        c1, c2, c3, c4 = (scaled(c, width) for c in (16, 32, 64, 128))
        c_out = scaled(128, width)
        norm_fn = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)
        # spconv's spatial shape is [z, y, x]; one extra z plane keeps OpenPCDet's output depth (41 -> 2).
        self.sparse_shape = list(int(v) for v in grid_size[::-1])
        self.sparse_shape[0] += 1

        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(input_channels, c1, 3, padding=1, bias=False, indice_key="subm1"),
            norm_fn(c1),
            nn.ReLU(),
        )
        self.conv1 = spconv.SparseSequential(
            SparseBasicBlock(c1, c1, norm_fn=norm_fn, indice_key="res1"),
            SparseBasicBlock(c1, c1, norm_fn=norm_fn, indice_key="res1"),
        )
        self.conv2 = spconv.SparseSequential(
            _down_block(c1, c2, norm_fn, padding=1, indice_key="spconv2"),
            SparseBasicBlock(c2, c2, norm_fn=norm_fn, indice_key="res2"),
            SparseBasicBlock(c2, c2, norm_fn=norm_fn, indice_key="res2"),
        )
        self.conv3 = spconv.SparseSequential(
            _down_block(c2, c3, norm_fn, padding=1, indice_key="spconv3"),
            SparseBasicBlock(c3, c3, norm_fn=norm_fn, indice_key="res3"),
            SparseBasicBlock(c3, c3, norm_fn=norm_fn, indice_key="res3"),
        )
        self.conv4 = spconv.SparseSequential(
            _down_block(c3, c4, norm_fn, padding=(0, 1, 1), indice_key="spconv4"),
            SparseBasicBlock(c4, c4, norm_fn=norm_fn, indice_key="res4"),
            SparseBasicBlock(c4, c4, norm_fn=norm_fn, indice_key="res4"),
        )
        last_pad = self.model_cfg.get("last_pad", 0) if self.model_cfg is not None else 0
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(c4, c_out, (3, 1, 1), stride=(2, 1, 1), padding=last_pad, bias=False,
                                indice_key="spconv_down2"),
            norm_fn(c_out),
            nn.ReLU(),
        )
        self.num_point_features = c_out
        self.backbone_channels = {"x_conv1": c1, "x_conv2": c2, "x_conv3": c3, "x_conv4": c4}

    def forward(self, batch_dict):
        """Encode the voxels; see the class docstring for keys and shapes."""
        K.check_keys(batch_dict, self.REQUIRED_KEYS, type(self).__name__)
        voxel_features = batch_dict[K.VOXEL_FEATURES]
        voxel_coords = batch_dict[K.VOXEL_COORDS]
        if voxel_coords.dim() != 2 or voxel_coords.shape[1] != 4 or voxel_features.shape[0] != voxel_coords.shape[0]:
            raise ValueError(
                f"VoxelResBackBone8x: expected voxel_features (V, C) and voxel_coords (V, 4), got "
                f"{tuple(voxel_features.shape)} and {tuple(voxel_coords.shape)}"
            )
        return encode_8x(self, batch_dict)
