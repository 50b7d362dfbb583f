"""AnchorGenerator: dense anchors per class over the BEV feature map (OpenPCDet's layout)."""
import torch


class AnchorGenerator:
    """Anchors for every class config of ``ANCHOR_GENERATOR_CONFIG``.

    Each config carries ``class_name``, ``anchor_sizes`` [[dx, dy, dz], ...], ``anchor_rotations`` [rad, ...],
    ``anchor_bottom_heights`` [z, ...], ``align_center`` (False: the first / last anchors sit on the range
    border; True: anchors at cell centres), ``feature_map_stride``, ``matched_threshold``, ``unmatched_threshold``.

    Args:
        anchor_range: [x_min, y_min, z_min, x_max, y_max, z_max] (the point-cloud range).
        anchor_generator_config: list of the per-class dicts above.
    """

    def __init__(self, anchor_range, anchor_generator_config):
        self.anchor_generator_cfg = anchor_generator_config
        self.anchor_range = [float(v) for v in anchor_range]
        self.anchor_sizes = [config["anchor_sizes"] for config in anchor_generator_config]
        self.anchor_rotations = [config["anchor_rotations"] for config in anchor_generator_config]
        self.anchor_heights = [config["anchor_bottom_heights"] for config in anchor_generator_config]
        self.align_center = [config.get("align_center", False) for config in anchor_generator_config]
        self.num_of_anchor_sets = len(self.anchor_sizes)

    def generate_anchors(self, grid_sizes, device=None):
        """Args:
            grid_sizes: per class [nx, ny] of the feature map.
        Returns:
            all_anchors: list per class of (nz, ny, nx, num_sizes, num_rotations, 7) float32 tensors; z is the
                box centre (bottom height + dz / 2).
            num_anchors_per_location: list per class of num_sizes * num_rotations * num_heights.
        """
        if len(grid_sizes) != self.num_of_anchor_sets:
            raise ValueError(f"AnchorGenerator: {len(grid_sizes)} grid sizes for {self.num_of_anchor_sets} "
                             f"anchor configs")
        all_anchors, num_anchors_per_location = [], []
        r = self.anchor_range
        for grid_size, anchor_size, anchor_rotation, anchor_height, align_center in zip(
                grid_sizes, self.anchor_sizes, self.anchor_rotations, self.anchor_heights, self.align_center):
            nx, ny = int(grid_size[0]), int(grid_size[1])
            num_anchors_per_location.append(len(anchor_rotation) * len(anchor_size) * len(anchor_height))
            if align_center:
                x_stride, y_stride = (r[3] - r[0]) / nx, (r[4] - r[1]) / ny
                x_offset, y_offset = x_stride / 2, y_stride / 2
            else:
                x_stride, y_stride = (r[3] - r[0]) / max(nx - 1, 1), (r[4] - r[1]) / max(ny - 1, 1)
                x_offset, y_offset = 0.0, 0.0
            x_shifts = r[0] + x_offset + x_stride * torch.arange(nx, dtype=torch.float64, device=device)
            y_shifts = r[1] + y_offset + y_stride * torch.arange(ny, dtype=torch.float64, device=device)
            z_shifts = torch.tensor(anchor_height, dtype=torch.float64, device=device).view(-1)
            sizes = torch.tensor(anchor_size, dtype=torch.float64, device=device).view(-1, 3)
            rotations = torch.tensor(anchor_rotation, dtype=torch.float64, device=device).view(-1)
            nsize, nrot = sizes.shape[0], rotations.shape[0]

            xg, yg, zg = torch.meshgrid(x_shifts, y_shifts, z_shifts, indexing="ij")   # (nx, ny, nz)
            centers = torch.stack((xg, yg, zg), dim=-1)[:, :, :, None, None, :].expand(-1, -1, -1, nsize, nrot, 3)
            dims = sizes.view(1, 1, 1, nsize, 1, 3).expand(*centers.shape[:3], nsize, nrot, 3)
            rots = rotations.view(1, 1, 1, 1, nrot, 1).expand(*centers.shape[:3], nsize, nrot, 1)
            anchors = torch.cat((centers, dims, rots), dim=-1)                          # (nx, ny, nz, S, R, 7)
            anchors = anchors.permute(2, 1, 0, 3, 4, 5).contiguous()                    # (nz, ny, nx, S, R, 7)
            anchors[..., 2] += anchors[..., 5] / 2
            all_anchors.append(anchors.float())
        return all_anchors, num_anchors_per_location
