"""Detector3DTemplate: builds vfe -> backbone_3d -> map_to_bev_module -> pfe -> backbone_2d -> dense_head ->
point_head -> roi_head from a ``MODEL`` config, post-processes predictions and loads checkpoints strictly.

Module attribute names and the ``model_info_dict`` sizes passed to each constructor follow OpenPCDet, so an
OpenPCDet ``model_state`` loads with no renaming. Each module class declares ``REQUIRED_KEYS`` and
``PROVIDED_KEYS`` (constants of ``pcdet/batch_keys.py``); the template checks at build time that every
required key is produced by the dataset or by an earlier module.
"""
import importlib
import os

import torch
import torch.nn as nn

from ... import batch_keys as K
from ..model_utils import model_nms_utils
from ..model_utils.width import module_width
from ...utils.common_utils import autocast_off, to_float32
from ...config_schema import check, check_module, lookup, opt, req

# (attribute name, config key, registry module, registry attribute)
MODULE_TOPOLOGY = (
    ("vfe", "VFE", "pcdet.models.backbones_3d.vfe", "VFE"),
    ("backbone_3d", "BACKBONE_3D", "pcdet.models.backbones_3d", "BACKBONES_3D"),
    ("map_to_bev_module", "MAP_TO_BEV", "pcdet.models.backbones_2d.map_to_bev", "MAP_TO_BEV"),
    ("pfe", "PFE", "pcdet.models.backbones_3d.pfe", "PFE"),
    ("backbone_2d", "BACKBONE_2D", "pcdet.models.backbones_2d", "BACKBONES_2D"),
    ("dense_head", "DENSE_HEAD", "pcdet.models.dense_heads", "DENSE_HEADS"),
    ("point_head", "POINT_HEAD", "pcdet.models.dense_heads", "DENSE_HEADS"),
    ("roi_head", "ROI_HEAD", "pcdet.models.roi_heads", "ROI_HEADS"),
)


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's parameters do not match the model's: lists missing, unexpected and mis-shaped keys."""


class CheckpointReadError(RuntimeError):
    """The checkpoint file cannot be read (absent, truncated or not a torch checkpoint); names the path."""


def _registry(module_path, attr, config_key):
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        raise KeyError(
            f"MODEL.{config_key}: no module family at {module_path} in this codebase ({exc})"
        ) from exc
    return getattr(module, attr)


def _log(logger, msg):
    if logger is not None:
        logger.info(msg)


def read_checkpoint(filename):
    """Load a checkpoint file onto the CPU.

    Returns:
        (state_dict, checkpoint): the model state (``checkpoint['model_state']`` for OpenPCDet checkpoints, the
        whole dict for a bare state dict) and the full loaded dict.
    Raises:
        CheckpointReadError naming ``filename`` when it is absent or unreadable.
    """
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise CheckpointReadError(f"checkpoint file not found: {filename}")
    try:
        checkpoint = torch.load(filename, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  torch's unpicklers raise many types on a bad file; re-raised with path
        raise CheckpointReadError(f"{filename}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(f"{filename}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    if "model_state" in checkpoint:
        state = checkpoint["model_state"]
    elif all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state = checkpoint
    else:
        raise CheckpointReadError(
            f"{filename}: neither an OpenPCDet checkpoint (no 'model_state') nor a bare state dict "
            f"(top-level keys: {sorted(checkpoint)[:10]})"
        )
    if not isinstance(state, dict):
        raise CheckpointReadError(f"{filename}: 'model_state' is {type(state).__name__}, not a state dict")
    return state, checkpoint


def _spconv1_to_spconv2(key, val, target_shape):
    """spconv 1.x stored sparse-conv weights as (kx, ky, kz, in, out); spconv 2.x uses (out, kx, ky, kz, in)."""
    if val.dim() == 5 and len(target_shape) == 5:
        converted = val.permute(4, 0, 1, 2, 3)
        if tuple(converted.shape) == tuple(target_shape):
            return converted.contiguous()
    return None


class Detector3DTemplate(nn.Module):
    """Base of all detectors.

    Args:
        model_cfg: the ``MODEL`` EasyDict (NAME, VFE, BACKBONE_3D, ..., POST_PROCESSING, optional WIDTH).
        num_class: int, number of classes.
        dataset: object with ``class_names``, ``point_cloud_range``, ``voxel_size``, ``grid_size``,
            ``point_feature_encoder.num_point_features`` and optionally ``depth_downsample_factor``.
    """

    # the MODEL block: one mapping per module of MODULE_TOPOLOGY (checked by its class's CONFIG_SCHEMA when
    # built), the model-level width and post-processing
    MODEL_SCHEMA = dict(
        {key: opt(dict, keys=None) for _, key, _, _ in MODULE_TOPOLOGY},
        NAME=req(str), WIDTH=opt(float),
        POST_PROCESSING=req(dict, keys={
            "RECALL_THRESH_LIST": req(list), "SCORE_THRESH": opt(float), "OUTPUT_RAW_SCORE": opt(bool),
            "EVAL_METRIC": opt(str),
            "NMS_CONFIG": opt(dict, keys={"MULTI_CLASSES_NMS": req(bool), "NMS_TYPE": req(str),
                                          "NMS_THRESH": req(float), "NMS_PRE_MAXSIZE": req(int),
                                          "NMS_POST_MAXSIZE": req(int)})}),
    )

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__()
        self.model_cfg = model_cfg
        self.num_class = num_class
        self.dataset = dataset
        self.class_names = dataset.class_names
        self.register_buffer("global_step", torch.LongTensor(1).zero_())
        self.module_topology = [name for name, _, _, _ in MODULE_TOPOLOGY]

    @property
    def mode(self):
        return "TRAIN" if self.training else "TEST"

    def update_global_step(self):
        self.global_step += 1

    # ------------------------------------------------------------------ building
    def build_networks(self):
        num_point_features = self.dataset.point_feature_encoder.num_point_features
        model_info_dict = {
            "module_list": [],
            "num_rawpoint_features": num_point_features,
            "num_point_features": num_point_features,
            "grid_size": self.dataset.grid_size,
            "point_cloud_range": self.dataset.point_cloud_range,
            "voxel_size": self.dataset.voxel_size,
            "depth_downsample_factor": getattr(self.dataset, "depth_downsample_factor", None),
        }
        # keys are checked against the class before it is built, so a missing producer is reported by name
        # instead of failing inside a constructor that lacks its input size
        available = set(self.dataset_provided_keys())
        check(self.model_cfg, self.MODEL_SCHEMA, "MODEL", type(self).__name__)
        for name, config_key, _, _ in MODULE_TOPOLOGY:
            if self.model_cfg.get(config_key, None) is not None:
                check_module(self.model_cfg[config_key], self._lookup_cls(config_key), f"MODEL.{config_key}")
                self._check_required_keys(name, self._get_cls(config_key), available)
            module, model_info_dict = getattr(self, f"build_{name}")(model_info_dict=model_info_dict)
            self.add_module(name, module)
            if module is not None:
                self._check_required_keys(name, module, available)
                available.update(module.PROVIDED_KEYS)
        return model_info_dict["module_list"]

    def _lookup_cls(self, config_key):
        """The module class of ``MODEL.<config_key>``; a missing or unknown NAME names the file and the path."""
        for _, key, path, attr in MODULE_TOPOLOGY:
            if key == config_key:
                return lookup(_registry(path, attr, config_key), self.model_cfg[config_key], f"MODEL.{config_key}",
                              config_key)
        raise KeyError(config_key)

    def _get_cls(self, config_key):
        for _, key, path, attr in MODULE_TOPOLOGY:
            if key == config_key:
                return _registry(path, attr, config_key).get(self.model_cfg[config_key].NAME)
        raise KeyError(config_key)

    def _width(self, config_key):
        return module_width(self.model_cfg, self.model_cfg.get(config_key, None))

    def build_vfe(self, model_info_dict):
        if self.model_cfg.get("VFE", None) is None:
            return None, model_info_dict
        vfe_module = self._get_cls("VFE")(
            model_cfg=self.model_cfg.VFE,
            num_point_features=model_info_dict["num_rawpoint_features"],
            point_cloud_range=model_info_dict["point_cloud_range"],
            voxel_size=model_info_dict["voxel_size"],
            grid_size=model_info_dict["grid_size"],
            depth_downsample_factor=model_info_dict["depth_downsample_factor"],
            width=self._width("VFE"),
        )
        model_info_dict["num_point_features"] = vfe_module.get_output_feature_dim()
        model_info_dict["module_list"].append(vfe_module)
        return vfe_module, model_info_dict

    def build_backbone_3d(self, model_info_dict):
        if self.model_cfg.get("BACKBONE_3D", None) is None:
            return None, model_info_dict
        backbone_3d_module = self._get_cls("BACKBONE_3D")(
            model_cfg=self.model_cfg.BACKBONE_3D,
            input_channels=model_info_dict["num_point_features"],
            grid_size=model_info_dict["grid_size"],
            voxel_size=model_info_dict["voxel_size"],
            point_cloud_range=model_info_dict["point_cloud_range"],
            width=self._width("BACKBONE_3D"),
        )
        model_info_dict["module_list"].append(backbone_3d_module)
        model_info_dict["num_point_features"] = backbone_3d_module.num_point_features
        model_info_dict["backbone_channels"] = getattr(backbone_3d_module, "backbone_channels", None)
        return backbone_3d_module, model_info_dict

    def build_map_to_bev_module(self, model_info_dict):
        if self.model_cfg.get("MAP_TO_BEV", None) is None:
            return None, model_info_dict
        # The BEV width follows the module that feeds it, so MAP_TO_BEV takes the upstream width.
        upstream = "BACKBONE_3D" if self.model_cfg.get("BACKBONE_3D", None) is not None else "VFE"
        map_to_bev_module = self._get_cls("MAP_TO_BEV")(
            model_cfg=self.model_cfg.MAP_TO_BEV,
            grid_size=model_info_dict["grid_size"],
            num_point_features=model_info_dict["num_point_features"],
            width=module_width(self.model_cfg, self.model_cfg.get(upstream, None)),
        )
        model_info_dict["module_list"].append(map_to_bev_module)
        model_info_dict["num_bev_features"] = map_to_bev_module.num_bev_features
        return map_to_bev_module, model_info_dict

    def build_pfe(self, model_info_dict):
        if self.model_cfg.get("PFE", None) is None:
            return None, model_info_dict
        pfe_module = self._get_cls("PFE")(
            model_cfg=self.model_cfg.PFE,
            voxel_size=model_info_dict["voxel_size"],
            point_cloud_range=model_info_dict["point_cloud_range"],
            num_bev_features=model_info_dict.get("num_bev_features", None),
            num_rawpoint_features=model_info_dict["num_rawpoint_features"],
        )
        model_info_dict["module_list"].append(pfe_module)
        model_info_dict["num_point_features"] = pfe_module.num_point_features
        model_info_dict["num_point_features_before_fusion"] = pfe_module.num_point_features_before_fusion
        return pfe_module, model_info_dict

    def build_backbone_2d(self, model_info_dict):
        if self.model_cfg.get("BACKBONE_2D", None) is None:
            return None, model_info_dict
        backbone_2d_module = self._get_cls("BACKBONE_2D")(
            model_cfg=self.model_cfg.BACKBONE_2D,
            input_channels=model_info_dict.get("num_bev_features", None),
            width=self._width("BACKBONE_2D"),
        )
        model_info_dict["module_list"].append(backbone_2d_module)
        model_info_dict["num_bev_features"] = backbone_2d_module.num_bev_features
        return backbone_2d_module, model_info_dict

    def build_dense_head(self, model_info_dict):
        if self.model_cfg.get("DENSE_HEAD", None) is None:
            return None, model_info_dict
        head_cfg = self.model_cfg.DENSE_HEAD
        dense_head_module = self._get_cls("DENSE_HEAD")(
            model_cfg=head_cfg,
            input_channels=model_info_dict.get("num_bev_features", head_cfg.get("INPUT_FEATURES", None)),
            num_class=self.num_class if not head_cfg.get("CLASS_AGNOSTIC", False) else 1,
            class_names=self.class_names,
            grid_size=model_info_dict["grid_size"],
            point_cloud_range=model_info_dict["point_cloud_range"],
            predict_boxes_when_training=self.model_cfg.get("ROI_HEAD", False),
            voxel_size=model_info_dict.get("voxel_size", False),
            width=self._width("DENSE_HEAD"),
        )
        model_info_dict["module_list"].append(dense_head_module)
        return dense_head_module, model_info_dict

    def build_point_head(self, model_info_dict):
        if self.model_cfg.get("POINT_HEAD", None) is None:
            return None, model_info_dict
        if self.model_cfg.POINT_HEAD.get("USE_POINT_FEATURES_BEFORE_FUSION", False):
            num_point_features = model_info_dict["num_point_features_before_fusion"]
        else:
            num_point_features = model_info_dict["num_point_features"]
        point_head_module = self._get_cls("POINT_HEAD")(
            model_cfg=self.model_cfg.POINT_HEAD,
            input_channels=num_point_features,
            num_class=self.num_class if not self.model_cfg.POINT_HEAD.get("CLASS_AGNOSTIC", False) else 1,
            predict_boxes_when_training=self.model_cfg.get("ROI_HEAD", False),
        )
        model_info_dict["module_list"].append(point_head_module)
        return point_head_module, model_info_dict

    def build_roi_head(self, model_info_dict):
        if self.model_cfg.get("ROI_HEAD", None) is None:
            return None, model_info_dict
        roi_head_module = self._get_cls("ROI_HEAD")(
            model_cfg=self.model_cfg.ROI_HEAD,
            input_channels=model_info_dict["num_point_features"],
            backbone_channels=model_info_dict.get("backbone_channels", None),
            point_cloud_range=model_info_dict["point_cloud_range"],
            voxel_size=model_info_dict["voxel_size"],
            num_class=self.num_class if not self.model_cfg.ROI_HEAD.get("CLASS_AGNOSTIC", False) else 1,
        )
        model_info_dict["module_list"].append(roi_head_module)
        return roi_head_module, model_info_dict

    def dataset_provided_keys(self):
        """Keys the dataset writes: ``dataset.PROVIDED_KEYS`` if it declares them, else batch_keys.DATASET_KEYS."""
        return tuple(getattr(self.dataset, "PROVIDED_KEYS", K.DATASET_KEYS))

    @staticmethod
    def _check_required_keys(name, module_or_cls, available):
        """Raise KeyError naming the module and key when it requires a key nothing upstream provides."""
        cls_name = module_or_cls.__name__ if isinstance(module_or_cls, type) else type(module_or_cls).__name__
        for attr in ("REQUIRED_KEYS", "PROVIDED_KEYS"):
            if not hasattr(module_or_cls, attr):
                raise TypeError(
                    f"MODEL: module '{name}' ({cls_name}) does not declare {attr}; declare REQUIRED_KEYS and "
                    f"PROVIDED_KEYS with keys from pcdet/batch_keys.py"
                )
        missing = [key for key in module_or_cls.REQUIRED_KEYS if key not in available]
        if missing:
            raise KeyError(
                f"MODEL: module '{name}' ({cls_name}) requires batch_dict keys {missing} that no upstream module "
                f"or the dataset provides (available: {sorted(available)})"
            )

    # ------------------------------------------------------------------ forward helpers
    def forward(self, batch_dict):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(batch_dict)")

    def run_modules(self, batch_dict):
        for cur_module in self.module_list:
            batch_dict = cur_module(batch_dict)
        return batch_dict

    # ------------------------------------------------------------------ post-processing
    def post_processing(self, batch_dict):
        """Score threshold + NMS per sample and recall statistics.

        Args:
            batch_dict: with ``batch_size``, ``batch_cls_preds`` (B, A, num_class) or (N, num_class) with
                ``batch_index`` (N,), or a list of per-head (B, A_h, C_h) with ``multihead_label_mapping``;
                ``batch_box_preds`` (B, A, 7 + C) or (N, 7 + C); ``cls_preds_normalized``; optional
                ``gt_boxes`` (B, M, 8), ``rois`` (B, R, 7 + C), ``has_class_labels``.
        Returns:
            pred_dicts: list of B dicts ``pred_boxes`` (K, 7 + C), ``pred_scores`` (K,), ``pred_labels`` (K,)
                long 1-based.
            recall_dict: ``{'gt': int, 'roi_<t>': int, 'rcnn_<t>': int}`` summed over the batch.
        """
        post_process_cfg = self.model_cfg.POST_PROCESSING
        batch_size = batch_dict[K.BATCH_SIZE]
        recall_dict = {}
        pred_dicts = []
        for index in range(batch_size):
            if batch_dict.get("batch_index", None) is not None:
                batch_mask = batch_dict["batch_index"] == index
            else:
                batch_mask = index
            box_preds = batch_dict[K.BATCH_BOX_PREDS][batch_mask]
            src_box_preds = box_preds

            if not isinstance(batch_dict[K.BATCH_CLS_PREDS], list):
                cls_preds = batch_dict[K.BATCH_CLS_PREDS][batch_mask]
                src_cls_preds = cls_preds
                if not batch_dict[K.CLS_PREDS_NORMALIZED]:
                    cls_preds = torch.sigmoid(cls_preds)
                cls_preds_list = [cls_preds]
                label_mappings = [torch.arange(1, cls_preds.shape[-1] + 1, device=cls_preds.device)]
            else:
                cls_preds_list = [x[batch_mask] for x in batch_dict[K.BATCH_CLS_PREDS]]
                src_cls_preds = cls_preds_list
                if not batch_dict[K.CLS_PREDS_NORMALIZED]:
                    cls_preds_list = [torch.sigmoid(x) for x in cls_preds_list]
                label_mappings = batch_dict["multihead_label_mapping"]

            if post_process_cfg.NMS_CONFIG.MULTI_CLASSES_NMS:
                start = 0
                scores_all, labels_all, boxes_all = [], [], []
                for cur_cls_preds, mapping in zip(cls_preds_list, label_mappings):
                    cur_box_preds = box_preds[start: start + cur_cls_preds.shape[0]]
                    scores, labels, boxes = model_nms_utils.multi_classes_nms(
                        cls_scores=cur_cls_preds, box_preds=cur_box_preds,
                        nms_config=post_process_cfg.NMS_CONFIG, score_thresh=post_process_cfg.SCORE_THRESH,
                    )
                    scores_all.append(scores)
                    labels_all.append(mapping.to(labels.device)[labels])
                    boxes_all.append(boxes)
                    start += cur_cls_preds.shape[0]
                final_scores = torch.cat(scores_all, dim=0)
                final_labels = torch.cat(labels_all, dim=0)
                final_boxes = torch.cat(boxes_all, dim=0)
            else:
                cls_preds = torch.cat(cls_preds_list, dim=0) if len(cls_preds_list) > 1 else cls_preds_list[0]
                cls_preds, label_preds = torch.max(cls_preds, dim=-1)
                if batch_dict.get("has_class_labels", False):
                    label_key = "roi_labels" if "roi_labels" in batch_dict else "batch_pred_labels"
                    label_preds = batch_dict[label_key][index]
                else:
                    label_preds = label_preds + 1
                selected, selected_scores = model_nms_utils.class_agnostic_nms(
                    box_scores=cls_preds, box_preds=box_preds,
                    nms_config=post_process_cfg.NMS_CONFIG, score_thresh=post_process_cfg.SCORE_THRESH,
                )
                if post_process_cfg.get("OUTPUT_RAW_SCORE", False):
                    max_cls_preds, _ = torch.max(src_cls_preds, dim=-1)
                    selected_scores = max_cls_preds[selected]
                final_scores = selected_scores
                final_labels = label_preds[selected]
                final_boxes = box_preds[selected]

            recall_dict = self.generate_recall_record(
                box_preds=final_boxes if "rois" not in batch_dict else src_box_preds,
                recall_dict=recall_dict, batch_index=index, data_dict=batch_dict,
                thresh_list=post_process_cfg.RECALL_THRESH_LIST,
            )
            pred_dicts.append({"pred_boxes": final_boxes, "pred_scores": final_scores, "pred_labels": final_labels})
        return pred_dicts, recall_dict

    @staticmethod
    def generate_recall_record(box_preds, recall_dict, batch_index, data_dict=None, thresh_list=None):
        """Add to ``recall_dict`` the gt count and, per IoU threshold, the gt boxes recalled by ``box_preds``
        (``rcnn_<t>``) and by ``data_dict['rois']`` (``roi_<t>``), using 3D IoU.

        Args:
            box_preds: (K, 7 + C) final boxes of sample ``batch_index``.
            data_dict: batch with ``gt_boxes`` (B, M, 8); zero rows at the end are padding.
        """
        if data_dict is None or K.GT_BOXES not in data_dict:
            return recall_dict
        thresh_list = list(thresh_list or [])
        rois = data_dict["rois"][batch_index] if "rois" in data_dict else None
        gt_boxes = data_dict[K.GT_BOXES][batch_index]
        if len(recall_dict) == 0:
            recall_dict = {"gt": 0}
            for cur_thresh in thresh_list:
                recall_dict[f"roi_{cur_thresh}"] = 0
                recall_dict[f"rcnn_{cur_thresh}"] = 0
        nonzero = torch.nonzero(gt_boxes.abs().sum(dim=-1) > 0, as_tuple=False).view(-1)
        num_gt = int(nonzero.max().item()) + 1 if nonzero.numel() > 0 else 0
        cur_gt = gt_boxes[:num_gt]
        if cur_gt.shape[0] > 0:
            from ...ops.iou3d_nms import iou3d_nms_utils

            if box_preds.shape[0] > 0:
                iou3d_rcnn = iou3d_nms_utils.boxes_iou3d(box_preds[:, 0:7].float(), cur_gt[:, 0:7].float())
            else:
                iou3d_rcnn = torch.zeros((0, cur_gt.shape[0]), device=cur_gt.device)
            iou3d_roi = None
            if rois is not None:
                iou3d_roi = iou3d_nms_utils.boxes_iou3d(rois[:, 0:7].float(), cur_gt[:, 0:7].float())
            for cur_thresh in thresh_list:
                if iou3d_rcnn.shape[0] > 0:
                    recall_dict[f"rcnn_{cur_thresh}"] += int((iou3d_rcnn.max(dim=0)[0] > cur_thresh).sum().item())
                if iou3d_roi is not None and iou3d_roi.shape[0] > 0:
                    recall_dict[f"roi_{cur_thresh}"] += int((iou3d_roi.max(dim=0)[0] > cur_thresh).sum().item())
            recall_dict["gt"] += int(cur_gt.shape[0])
        return recall_dict

    # ------------------------------------------------------------------ checkpoints
    def _load_state_dict(self, model_state_disk, logger=None, filename="<state dict>"):
        """Strictly load ``model_state_disk``; raise CheckpointMismatchError listing every difference."""
        state_dict = self.state_dict()
        missing = sorted(k for k in state_dict if k not in model_state_disk)
        unexpected = sorted(k for k in model_state_disk if k not in state_dict)
        mismatched = []
        to_load = {}
        for key, val in model_state_disk.items():
            if key not in state_dict:
                continue
            if tuple(val.shape) != tuple(state_dict[key].shape):
                converted = _spconv1_to_spconv2(key, val, state_dict[key].shape)
                if converted is None:
                    mismatched.append((key, tuple(val.shape), tuple(state_dict[key].shape)))
                    continue
                _log(logger, f"{key}: converted spconv 1.x weight layout {tuple(val.shape)} -> "
                             f"{tuple(converted.shape)}")
                val = converted
            to_load[key] = val
        if missing or unexpected or mismatched:
            lines = [f"{filename}: checkpoint does not match {type(self).__name__} "
                     f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape mismatches)"]
            lines += [f"  missing key: {k}" for k in missing]
            lines += [f"  unexpected key: {k}" for k in unexpected]
            lines += [f"  shape mismatch: {k}: checkpoint {c} vs model {m}" for k, c, m in mismatched]
            raise CheckpointMismatchError("\n".join(lines))
        self.load_state_dict(to_load, strict=True)
        return state_dict, to_load

    def load_params_from_file(self, filename, logger, to_cpu=False, pre_trained_path=None):
        """Load model parameters (strict) from an OpenPCDet checkpoint or a bare state dict.

        ``to_cpu`` is accepted for OpenPCDet compatibility: the file is always read onto the CPU and copied to
        the model's device by ``load_state_dict``.
        """
        if pre_trained_path is not None:
            raise ValueError("load_params_from_file: pre_trained_path is not supported; load the file directly")
        model_state_disk, checkpoint = read_checkpoint(filename)
        version = checkpoint.get("version", None)
        _log(logger, f"==> Loading parameters from checkpoint {filename} to {'CPU' if to_cpu else 'model device'}"
                     + (f" (version {version})" if version is not None else ""))
        self._load_state_dict(model_state_disk, logger=logger, filename=os.fspath(filename))
        _log(logger, f"==> Done (loaded {len(model_state_disk)}/{len(self.state_dict())})")

    def load_params_with_optimizer(self, filename, to_cpu=False, optimizer=None, logger=None):
        """Load model parameters (strict) and, when present, the optimizer state.

        Returns:
            (it, epoch): iteration and epoch stored in the checkpoint (0 and -1 when absent).
        """
        model_state_disk, checkpoint = read_checkpoint(filename)
        _log(logger, f"==> Loading parameters from checkpoint {filename} to {'CPU' if to_cpu else 'model device'}")
        self._load_state_dict(model_state_disk, logger=logger, filename=os.fspath(filename))
        epoch = checkpoint.get("epoch", -1)
        it = checkpoint.get("it", 0)
        if optimizer is not None and checkpoint.get("optimizer_state", None) is not None:
            _log(logger, f"==> Loading optimizer parameters from checkpoint {filename}")
            optimizer.load_state_dict(checkpoint["optimizer_state"])
        if "version" in checkpoint:
            _log(logger, f"==> Checkpoint trained from version: {checkpoint['version']}")
        _log(logger, "==> Done")
        return it, epoch


class SingleStageDetector(Detector3DTemplate):
    """A one-stage detector: the configured modules in order, the dense head's loss, its post-processing.

    ``forward(batch_dict)``: training -> ``({'loss'}, tb_dict, disp_dict)``; eval -> ``(pred_dicts, recall_dict)``.
    """

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        self.module_list = self.build_networks()
        if self.dense_head is None or not hasattr(self.dense_head, "get_loss"):
            raise ValueError(f"{type(self).__name__}: MODEL.DENSE_HEAD must name a head with get_loss")

    def forward(self, batch_dict):
        batch_dict = self.run_modules(batch_dict)
        if self.training:
            loss, tb_dict, disp_dict = self.get_training_loss()
            return {"loss": loss}, tb_dict, disp_dict
        return self.post_processing(batch_dict)

    def get_training_loss(self):
        """Returns (loss scalar, tb_dict with ``loss_rpn`` and the head's terms, disp_dict).

        Under mixed precision the head's predictions are cast to float32 and the loss runs without autocast.
        """
        head = self.dense_head
        head.forward_ret_dict = to_float32(head.forward_ret_dict)
        with autocast_off(self):
            loss_rpn, tb_dict = head.get_loss()
        tb_dict = {"loss_rpn": loss_rpn.item(), **tb_dict}
        return loss_rpn, tb_dict, {}
