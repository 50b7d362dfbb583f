"""Box encoders: regression targets of boxes relative to anchors (OpenPCDet's box_coder_utils)."""
import torch


class ResidualCoder:
    """SECOND's residual box coding.

    ``encode_torch(boxes, anchors)``: x, y offsets divided by the anchor's BEV diagonal, z by its height, sizes as
    log ratios, heading as the difference (or cos / sin differences when ``encode_angle_by_sincos``); extra
    columns (e.g. velocities) as differences.

    Args:
        code_size: 7 + number of extra box columns.
        encode_angle_by_sincos: bool, encode the heading as (cos diff, sin diff), adding one column.
    """

    def __init__(self, code_size=7, encode_angle_by_sincos=False, **kwargs):
        self.code_size = code_size
        self.encode_angle_by_sincos = encode_angle_by_sincos
        if self.encode_angle_by_sincos:
            self.code_size += 1

    def encode_torch(self, boxes, anchors):
        """Args: boxes (N, 7 + C), anchors (N, 7 + C) ``[x, y, z, dx, dy, dz, heading, ...]``.
        Returns: (N, code_size) encodings."""
        if boxes.shape[-1] != anchors.shape[-1]:
            raise ValueError(f"ResidualCoder.encode_torch: boxes {tuple(boxes.shape)} and anchors "
                             f"{tuple(anchors.shape)} must have the same number of columns")
        anchors = torch.cat([anchors[..., :3], torch.clamp_min(anchors[..., 3:6], 1e-5), anchors[..., 6:]], dim=-1)
        boxes = torch.cat([boxes[..., :3], torch.clamp_min(boxes[..., 3:6], 1e-5), boxes[..., 6:]], dim=-1)
        xa, ya, za, dxa, dya, dza, ra, *cas = torch.split(anchors, 1, dim=-1)
        xg, yg, zg, dxg, dyg, dzg, rg, *cgs = torch.split(boxes, 1, dim=-1)

        diagonal = torch.sqrt(dxa ** 2 + dya ** 2)
        xt = (xg - xa) / diagonal
        yt = (yg - ya) / diagonal
        zt = (zg - za) / dza
        dxt = torch.log(dxg / dxa)
        dyt = torch.log(dyg / dya)
        dzt = torch.log(dzg / dza)
        if self.encode_angle_by_sincos:
            rts = [torch.cos(rg) - torch.cos(ra), torch.sin(rg) - torch.sin(ra)]
        else:
            rts = [rg - ra]
        cts = [g - a for g, a in zip(cgs, cas)]
        return torch.cat([xt, yt, zt, dxt, dyt, dzt, *rts, *cts], dim=-1)

    def decode_torch(self, box_encodings, anchors):
        """Args: box_encodings (..., code_size), anchors (..., 7 + C).
        Returns: (..., 7 + C) boxes ``[x, y, z, dx, dy, dz, heading, ...]``."""
        xa, ya, za, dxa, dya, dza, ra, *cas = torch.split(anchors, 1, dim=-1)
        if not self.encode_angle_by_sincos:
            xt, yt, zt, dxt, dyt, dzt, rt, *cts = torch.split(box_encodings, 1, dim=-1)
        else:
            xt, yt, zt, dxt, dyt, dzt, cost, sint, *cts = torch.split(box_encodings, 1, dim=-1)

        diagonal = torch.sqrt(dxa ** 2 + dya ** 2)
        xg = xt * diagonal + xa
        yg = yt * diagonal + ya
        zg = zt * dza + za
        dxg = torch.exp(dxt) * dxa
        dyg = torch.exp(dyt) * dya
        dzg = torch.exp(dzt) * dza
        if self.encode_angle_by_sincos:
            rg = torch.atan2(sint + torch.sin(ra), cost + torch.cos(ra))
        else:
            rg = rt + ra
        cgs = [t + a for t, a in zip(cts, cas)]
        return torch.cat([xg, yg, zg, dxg, dyg, dzg, rg, *cgs], dim=-1)
