"""CenterNet-style heatmap targets, losses and box decoding used by ``CenterHead`` (OpenPCDet's centernet_utils).

Feature-map conventions: a BEV map is ``(B, C, H, W)`` with H along LiDAR y and W along LiDAR x; pixel ``(row,
col)`` covers ``x in [x_min + col * s * vx, x_min + (col + 1) * s * vx)`` where ``s`` is the feature-map stride
and ``vx`` the voxel size. A flat index into a map is ``row * W + col``.

Regression target layout per object (``code_size = 8 + C_extra``):
``[dx_off, dy_off, z, log(dx), log(dy), log(dz), cos(heading), sin(heading), *extra]`` where the offsets are the
sub-pixel position of the centre inside its pixel and ``extra`` are the gt box columns between heading and the
class id (velocities ``vx, vy`` on nuScenes).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- targets -------------------------------------------------------------------------------------------------


def gaussian_radius(height, width, min_overlap=0.5):
    """CornerNet's radius such that a box shifted by it still has IoU >= ``min_overlap`` with the original.

    Follows the CornerNet / CenterPoint formula as published (including its ``(b + sqrt(d)) / 2`` form), so
    targets match models trained with OpenPCDet.

    Args:
        height, width: (N,) float tensors, box size in feature-map pixels.
        min_overlap: float in (0, 1).
    Returns:
        (N,) float tensor, radius in pixels (not rounded).
    """
    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2

    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2

    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.min(torch.min(r1, r2), r3)


def gaussian2d(shape, sigma=1.0):
    """Unnormalised 2D Gaussian kernel with peak 1 at the centre; values below float eps * peak are zeroed.

    Args:
        shape: (rows, cols), odd sizes.
        sigma: float, standard deviation in pixels.
    Returns:
        np.ndarray float32 (rows, cols).
    """
    m, n = [(ss - 1.0) / 2.0 for ss in shape]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h.astype(np.float32)


def draw_gaussian_to_heatmap(heatmap, center, radius, k=1.0):
    """Splat a Gaussian of the given radius at ``center`` into ``heatmap`` in place, keeping the element-wise max.

    The kernel has side ``2 * radius + 1`` and ``sigma = (2 * radius + 1) / 6``; its peak lands on pixel
    ``(int(center[1]), int(center[0]))``.

    Args:
        heatmap: (H, W) float tensor, modified in place.
        center: (2,) ``[x, y]`` in pixels (column, row), float or int.
        radius: int >= 0.
        k: float, peak value.
    Returns:
        heatmap: the same (H, W) tensor.
    """
    radius = int(radius)
    diameter = 2 * radius + 1
    gaussian = torch.from_numpy(gaussian2d((diameter, diameter), sigma=diameter / 6)).to(heatmap)

    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    if min(left + right, top + bottom) <= 0:
        return heatmap
    masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
    masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    torch.max(masked_heatmap, masked_gaussian * k, out=masked_heatmap)
    return heatmap


def assign_target_of_single_head(gt_boxes, num_classes, feature_map_size, point_cloud_range, voxel_size,
                                 feature_map_stride, num_max_objs=500, gaussian_overlap=0.1, min_radius=2):
    """Heatmap and regression targets of one task group for one sample.

    Args:
        gt_boxes: (N, 8 + C_extra) float ``[x, y, z, dx, dy, dz, heading, *extra, class]`` where ``class`` is
            1-based *within the task group*; rows with class <= 0 are ignored (padding).
        num_classes: int, classes of the task group.
        feature_map_size: (2,) ``[W, H]`` (x size, y size) of the BEV map.
        point_cloud_range: sequence of 6 floats.
        voxel_size: sequence of 3 floats.
        feature_map_stride: int, BEV pixel size in voxels.
        num_max_objs: int, rows of the regression targets (objects beyond are dropped).
        gaussian_overlap, min_radius: Gaussian radius parameters (``GAUSSIAN_OVERLAP``, ``MIN_RADIUS``).
    Returns:
        heatmap: (num_classes, H, W) float.
        ret_boxes: (num_max_objs, 8 + C_extra) float regression targets (layout in the module docstring).
        inds: (num_max_objs,) long flat pixel index ``row * W + col``.
        mask: (num_max_objs,) long, 1 where a target row is valid.
    """
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] < 8:
        raise ValueError(f"assign_target_of_single_head: gt_boxes must be (N, >=8), got {tuple(gt_boxes.shape)}")
    size_x, size_y = int(feature_map_size[0]), int(feature_map_size[1])
    heatmap = gt_boxes.new_zeros(num_classes, size_y, size_x)
    ret_boxes = gt_boxes.new_zeros((num_max_objs, gt_boxes.shape[-1]))
    inds = gt_boxes.new_zeros(num_max_objs).long()
    mask = gt_boxes.new_zeros(num_max_objs).long()

    gt_boxes = gt_boxes[gt_boxes[:, -1] > 0]
    if gt_boxes.shape[0] == 0:
        return heatmap, ret_boxes, inds, mask

    coord_x = (gt_boxes[:, 0] - point_cloud_range[0]) / voxel_size[0] / feature_map_stride
    coord_y = (gt_boxes[:, 1] - point_cloud_range[1]) / voxel_size[1] / feature_map_stride
    # Keep objects on the border inside the last pixel: int() of size - 0.5 is still a valid column.
    coord_x = torch.clamp(coord_x, min=0, max=size_x - 0.5)
    coord_y = torch.clamp(coord_y, min=0, max=size_y - 0.5)
    center = torch.stack((coord_x, coord_y), dim=-1)
    center_int = center.int()

    dx = gt_boxes[:, 3] / voxel_size[0] / feature_map_stride
    dy = gt_boxes[:, 4] / voxel_size[1] / feature_map_stride
    radius = gaussian_radius(dx, dy, min_overlap=gaussian_overlap)
    radius = torch.clamp_min(radius.int(), min=min_radius)

    row = 0
    for k in range(gt_boxes.shape[0]):
        if row >= num_max_objs:
            break
        if dx[k] <= 0 or dy[k] <= 0:
            continue
        cls = int(gt_boxes[k, -1].item()) - 1
        if cls >= num_classes:
            raise ValueError(
                f"assign_target_of_single_head: class id {cls + 1} exceeds num_classes={num_classes}"
            )
        draw_gaussian_to_heatmap(heatmap[cls], center[k], radius[k].item())
        inds[row] = center_int[k, 1] * size_x + center_int[k, 0]
        mask[row] = 1
        ret_boxes[row, 0:2] = center[k] - center_int[k].float()
        ret_boxes[row, 2] = gt_boxes[k, 2]
        ret_boxes[row, 3:6] = gt_boxes[k, 3:6].log()
        ret_boxes[row, 6] = torch.cos(gt_boxes[k, 6])
        ret_boxes[row, 7] = torch.sin(gt_boxes[k, 6])
        if gt_boxes.shape[1] > 8:
            ret_boxes[row, 8:] = gt_boxes[k, 7:-1]
        row += 1
    return heatmap, ret_boxes, inds, mask


# ---- losses ---------------------------------------------------------------------------------------------------


def _transpose_and_gather_feat(feat, ind):
    """Gather per-object feature vectors from a dense map.

    Args:
        feat: (B, C, H, W) float.
        ind: (B, K) long flat indices ``row * W + col``.
    Returns:
        (B, K, C) float.
    """
    batch, channels = feat.shape[0:2]
    feat = feat.permute(0, 2, 3, 1).reshape(batch, -1, channels)
    return feat.gather(1, ind.unsqueeze(2).expand(-1, -1, channels))


def neg_loss_cornernet(pred, gt, mask=None):
    """CornerNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of positives.

    Args:
        pred: (B, C, H, W) probabilities in (0, 1) (sigmoid, clamped away from 0 and 1 by the caller).
        gt: (B, C, H, W) Gaussian heatmap, 1 at object centres.
        mask: optional (B, H, W) float, 0 to ignore a pixel.
    Returns:
        scalar tensor.
    """
    pos_inds = gt.eq(1).float()
    neg_inds = gt.lt(1).float()
    neg_weights = torch.pow(1 - gt, 4)

    pos_loss = torch.log(pred) * torch.pow(1 - pred, 2) * pos_inds
    neg_loss = torch.log(1 - pred) * torch.pow(pred, 2) * neg_weights * neg_inds
    if mask is not None:
        mask = mask[:, None, :, :].float()
        pos_loss = pos_loss * mask
        neg_loss = neg_loss * mask
        num_pos = (pos_inds * mask).sum()
    else:
        num_pos = pos_inds.sum()

    pos_loss = pos_loss.sum()
    neg_loss = neg_loss.sum()
    if num_pos == 0:
        return -neg_loss
    return -(pos_loss + neg_loss) / num_pos


class FocalLossCenterNet(nn.Module):
    """``neg_loss_cornernet`` as a module (OpenPCDet's ``loss_utils.FocalLossCenterNet``)."""

    def forward(self, out, target, mask=None):
        """out, target: (B, C, H, W); mask: optional (B, H, W). Returns a scalar."""
        return neg_loss_cornernet(out, target, mask=mask)


def reg_loss_centernet(regr, gt_regr, mask):
    """Masked L1 per code channel, summed over objects and normalised by the number of valid objects.

    NaN targets are ignored.

    Args:
        regr: (B, K, C) predictions gathered at the object centres.
        gt_regr: (B, K, C) targets.
        mask: (B, K) 1 for valid rows.
    Returns:
        (C,) float, loss per code channel.
    """
    num = mask.float().sum()
    mask = mask.unsqueeze(2).expand_as(gt_regr).float()
    mask = mask * (~torch.isnan(gt_regr)).float()
    gt_regr = torch.nan_to_num(gt_regr, nan=0.0)
    loss = torch.abs(regr * mask - gt_regr * mask)
    loss = loss.sum(dim=(0, 1))
    return loss / torch.clamp_min(num, 1.0)


class RegLossCenterNet(nn.Module):
    """L1 regression at object centres (OpenPCDet's ``loss_utils.RegLossCenterNet``)."""

    def forward(self, output, mask, ind=None, target=None):
        """
        Args:
            output: (B, C, H, W) dense regression map, or (B, K, C) already gathered when ``ind`` is None.
            mask: (B, K); ind: (B, K) flat indices; target: (B, K, C).
        Returns:
            (C,) loss per code channel.
        """
        pred = output if ind is None else _transpose_and_gather_feat(output, ind)
        if pred.shape != target.shape:
            raise ValueError(
                f"RegLossCenterNet: gathered predictions {tuple(pred.shape)} != targets {tuple(target.shape)}; "
                f"HEAD_ORDER channels must add up to the target code size"
            )
        return reg_loss_centernet(pred, target, mask)


# ---- decoding -------------------------------------------------------------------------------------------------


def _nms(heat, kernel=3):
    """Keep only local maxima of ``heat`` (B, C, H, W) in a ``kernel`` x ``kernel`` window; others become 0."""
    if kernel <= 1:
        return heat
    pad = (kernel - 1) // 2
    hmax = F.max_pool2d(heat, (kernel, kernel), stride=1, padding=pad)
    keep = (hmax == heat).float()
    return heat * keep


def _topk(scores, K=40):
    """Top ``K`` scores over all classes and pixels.

    Args:
        scores: (B, C, H, W).
    Returns:
        topk_score, topk_inds (flat pixel index), topk_classes (0-based), topk_ys, topk_xs (pixel row / col as
        float): each (B, K).
    """
    batch, num_class, height, width = scores.size()
    K = min(K, num_class * height * width)
    k_per_class = min(K, height * width)
    topk_scores, topk_inds = torch.topk(scores.flatten(2, 3), k_per_class)
    topk_ys = torch.div(topk_inds, width, rounding_mode="floor").float()
    topk_xs = (topk_inds % width).float()

    topk_score, topk_ind = torch.topk(topk_scores.view(batch, -1), K)
    topk_classes = torch.div(topk_ind, k_per_class, rounding_mode="floor").int()
    topk_inds = topk_inds.view(batch, -1).gather(1, topk_ind)
    topk_ys = topk_ys.view(batch, -1).gather(1, topk_ind)
    topk_xs = topk_xs.view(batch, -1).gather(1, topk_ind)
    return topk_score, topk_inds, topk_classes, topk_ys, topk_xs


def decode_bbox_from_heatmap(heatmap, rot_cos, rot_sin, center, center_z, dim, point_cloud_range=None,
                             voxel_size=None, feature_map_stride=None, vel=None, K=100, score_thresh=None,
                             post_center_limit_range=None, peak_kernel=1):
    """Boxes at the ``K`` highest heatmap peaks.

    Args:
        heatmap: (B, C, H, W) probabilities.
        rot_cos, rot_sin: (B, 1, H, W).
        center: (B, 2, H, W) sub-pixel offsets; center_z: (B, 1, H, W); dim: (B, 3, H, W) sizes in metres
            (already exponentiated); vel: optional (B, 2, H, W).
        point_cloud_range: sequence of 6 floats; voxel_size: sequence of 3; feature_map_stride: int.
        K: int, peaks kept per sample before thresholding.
        score_thresh: float or None.
        post_center_limit_range: optional (6,) tensor; boxes whose centre is outside are dropped.
        peak_kernel: int, max-pool window of the peak extraction (1 keeps every pixel, as OpenPCDet does).
    Returns:
        list of B dicts: ``pred_boxes`` (M, 7 [+2]), ``pred_scores`` (M,), ``pred_labels`` (M,) long, 0-based
        within the task group.
    """
    batch_size = heatmap.shape[0]
    heatmap = _nms(heatmap, kernel=peak_kernel)
    scores, inds, class_ids, ys, xs = _topk(heatmap, K=K)
    num = scores.shape[1]
    center = _transpose_and_gather_feat(center, inds).view(batch_size, num, 2)
    rot_sin = _transpose_and_gather_feat(rot_sin, inds).view(batch_size, num, 1)
    rot_cos = _transpose_and_gather_feat(rot_cos, inds).view(batch_size, num, 1)
    center_z = _transpose_and_gather_feat(center_z, inds).view(batch_size, num, 1)
    dim = _transpose_and_gather_feat(dim, inds).view(batch_size, num, 3)

    angle = torch.atan2(rot_sin, rot_cos)
    xs = (xs.view(batch_size, num, 1) + center[:, :, 0:1]) * feature_map_stride * voxel_size[0] \
        + point_cloud_range[0]
    ys = (ys.view(batch_size, num, 1) + center[:, :, 1:2]) * feature_map_stride * voxel_size[1] \
        + point_cloud_range[1]
    box_parts = [xs, ys, center_z, dim, angle]
    if vel is not None:
        box_parts.append(_transpose_and_gather_feat(vel, inds).view(batch_size, num, 2))
    final_box_preds = torch.cat(box_parts, dim=-1)

    keep = torch.ones_like(scores, dtype=torch.bool)
    if post_center_limit_range is not None:
        limit = torch.as_tensor(post_center_limit_range, dtype=final_box_preds.dtype, device=heatmap.device)
        keep &= (final_box_preds[..., :3] >= limit[:3]).all(dim=2)
        keep &= (final_box_preds[..., :3] <= limit[3:]).all(dim=2)
    if score_thresh is not None:
        keep &= scores > score_thresh

    return [{
        "pred_boxes": final_box_preds[b][keep[b]],
        "pred_scores": scores[b][keep[b]],
        "pred_labels": class_ids[b][keep[b]].long(),
    } for b in range(batch_size)]


def circle_nms(centers, scores, min_radius, post_max_size=83):
    """Greedy NMS on BEV centre distance: a box is dropped if a higher-scored kept box lies within ``min_radius``.

    Args:
        centers: (N, 2) ``[x, y]`` in metres.
        scores: (N,) float.
        min_radius: float, metres.
        post_max_size: int, boxes kept at most.
    Returns:
        (K,) long indices into the inputs, highest score first.
    """
    order = torch.argsort(scores, descending=True)
    if order.numel() == 0:
        return order
    dist = torch.cdist(centers[order].float(), centers[order].float())
    suppressed = torch.zeros(order.numel(), dtype=torch.bool, device=scores.device)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= post_max_size:
            break
        suppressed |= dist[i] <= min_radius
    return order[torch.as_tensor(keep, dtype=torch.long, device=scores.device)]

