"""The ``batch_dict`` contract: every key, its shape, and who writes it.

A module adds keys; it never overwrites a key written by another module. ``Detector3DTemplate`` checks at
build time that every module's REQUIRED keys are produced upstream (dataset or an earlier module).
Shapes: B = batch size, N = points in the batch, V = voxels / pillars in the batch, P = max points per voxel,
M = max gt boxes per scan (padded with zeros), C = channels. Boxes are ``[x, y, z, dx, dy, dz, heading]`` in
LiDAR coordinates with the centre as origin.
"""

# ---- written by the dataset (per sample) and stacked by DatasetTemplate.collate_batch ----
FRAME_ID = "frame_id"                  # (B,) numpy array of str
BATCH_SIZE = "batch_size"              # int
POINTS = "points"                      # (N, 1 + C_pt) float: [batch_idx, x, y, z, intensity, ...]
GT_BOXES = "gt_boxes"                  # (B, M, 8) float: [x, y, z, dx, dy, dz, heading, class_id (1-based, 0 = pad)]
GT_NAMES = "gt_names"                  # per sample only, (M,) str; dropped before collation of tensors
VOXELS = "voxels"                      # (V, P, C_pt) float, zero padded
VOXEL_COORDS = "voxel_coords"          # (V, 4) int: [batch_idx, z, y, x]
VOXEL_NUM_POINTS = "voxel_num_points"  # (V,) int, points kept per voxel (<= P)
VOXEL_NUM_POINTS_RAW = "voxel_num_points_raw"  # (V,) int, points falling in the voxel before the cap P
USE_LEAD_XYZ = "use_lead_xyz"          # (B,) bool
CALIB = "calib"                        # (B,) list of Calibration (KITTI-format datasets)
IMAGE_SHAPE = "image_shape"            # (B, 2) int [height, width]
KD_TEACHER_INPUTS = "kd_teacher_inputs"  # dict of the teacher's own VOXELS/VOXEL_COORDS/... when its grid differs

# ---- written by the model ----
PILLAR_FEATURES = "pillar_features"    # (V, C) PillarVFE output
VOXEL_FEATURES = "voxel_features"      # (V, C) MeanVFE output
ENCODED_SPCONV_TENSOR = "encoded_spconv_tensor"              # spconv.SparseConvTensor, 3D backbone output
ENCODED_SPCONV_TENSOR_STRIDE = "encoded_spconv_tensor_stride"  # int
MULTI_SCALE_3D_FEATURES = "multi_scale_3d_features"        # dict name -> SparseConvTensor
MULTI_SCALE_3D_STRIDES = "multi_scale_3d_strides"          # dict name -> int stride of that stage
SPATIAL_FEATURES = "spatial_features"  # (B, C, H, W) BEV map from map_to_bev
SPATIAL_FEATURES_STRIDE = "spatial_features_stride"        # int
SPATIAL_FEATURES_2D = "spatial_features_2d"  # (B, C, H, W) 2D backbone / neck output, dense-head input
BATCH_CLS_PREDS = "batch_cls_preds"    # (B, A, num_class) anchor head, inference
BATCH_BOX_PREDS = "batch_box_preds"    # (B, A, 7 + C) anchor head, inference
CLS_PREDS_NORMALIZED = "cls_preds_normalized"  # bool
FINAL_BOX_DICTS = "final_box_dicts"    # list of B dicts (pred_boxes, pred_scores, pred_labels), center head inference
# KD, in the teacher's batch only, when a KD head needs the teacher's detections (LabelKD): list of B dicts
# pred_boxes (K, 7+), pred_scores (K,), pred_labels (K,) 1-based in the teacher's CLASS_NAMES, after its NMS
KD_TEACHER_PRED_DICTS = "kd_teacher_pred_dicts"

DATASET_KEYS = (FRAME_ID, BATCH_SIZE, POINTS, GT_BOXES, VOXELS, VOXEL_COORDS, VOXEL_NUM_POINTS,
                VOXEL_NUM_POINTS_RAW, USE_LEAD_XYZ, CALIB, IMAGE_SHAPE)


def check_keys(batch_dict, required, who):
    """Raise KeyError naming ``who`` and the missing keys if ``batch_dict`` lacks any of ``required``."""
    missing = [k for k in required if k not in batch_dict]
    if missing:
        raise KeyError(f"{who}: batch_dict lacks {missing}; present: {sorted(batch_dict)}")
