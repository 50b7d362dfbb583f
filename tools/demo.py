"""Run a detector on raw point files and write bird's-eye-view images and a JSON list of detections.

python demo.py --cfg_file cfgs/kitti_models/pointpillar.yaml --ckpt pointpillar.pth --data_path 000008.bin
``--data_path`` is one file or a folder (every ``*<ext>`` inside, sorted). ``.bin`` files hold float32 rows with
as many values as ``DATA_CONFIG.POINT_FEATURE_ENCODING.src_feature_list`` names; ``.npy`` files hold (N, C) arrays.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pcdet.config import cfg_from_list, cfg_from_yaml_file
from pcdet.datasets import DatasetTemplate
from pcdet.utils import common_utils, dist_utils

REPO_ROOT = Path(__file__).resolve().parents[1]


class DemoDataset(DatasetTemplate):
    """Point files without labels, processed exactly as the configured dataset processes its test split."""

    def __init__(self, dataset_cfg, class_names, root_path, ext=".bin", logger=None):
        super().__init__(dataset_cfg=dataset_cfg, class_names=class_names, training=False, root_path=root_path,
                         logger=logger)
        if ext not in (".bin", ".npy"):
            raise ValueError(f"--ext must be .bin or .npy, got {ext!r}")
        self.ext = ext
        root = Path(root_path)
        if root.is_dir():
            self.sample_files = sorted(root.glob(f"*{ext}"))
        elif root.is_file():
            self.sample_files = [root]
        else:
            raise FileNotFoundError(f"--data_path {root} is neither a file nor a folder")
        if not self.sample_files:
            raise FileNotFoundError(f"--data_path {root}: no *{ext} file inside")
        self.num_src_features = len(dataset_cfg.POINT_FEATURE_ENCODING.src_feature_list)

    def __len__(self):
        return len(self.sample_files)

    def load_points(self, index):
        """(N, C) float32 points of sample ``index``; C = number of source features of the config."""
        path = self.sample_files[index]
        if self.ext == ".bin":
            raw = np.fromfile(path, dtype=np.float32)
            if raw.size % self.num_src_features:
                raise ValueError(f"{path}: {raw.size} float32 values are not rows of {self.num_src_features} "
                                 f"features (POINT_FEATURE_ENCODING.src_feature_list)")
            return raw.reshape(-1, self.num_src_features)
        points = np.load(path).astype(np.float32)
        if points.ndim != 2 or points.shape[1] != self.num_src_features:
            raise ValueError(f"{path}: expected an (N, {self.num_src_features}) array, got shape {points.shape}")
        return points

    def __getitem__(self, index):
        data_dict = {"points": self.load_points(index), "frame_id": self.sample_files[index].stem}
        return self.prepare_data(data_dict=data_dict)


def parse_config(argv=None):
    parser = argparse.ArgumentParser(description="run a 3D detector on raw point-cloud files")
    parser.add_argument("--cfg_file", type=str, required=True, help="config file")
    parser.add_argument("--ckpt", type=str, required=True, help="checkpoint (a distillation checkpoint is fine)")
    parser.add_argument("--data_path", type=str, required=True, help="point file or folder of point files")
    parser.add_argument("--ext", type=str, default=".bin", choices=[".bin", ".npy"], help="point file extension")
    parser.add_argument("--out_dir", type=str, default=None, help="output folder (default <repo>/output/demo/<cfg>)")
    parser.add_argument("--score_thresh", type=float, default=0.0, help="drop detections scoring below this")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--set", dest="set_cfgs", default=None, nargs=argparse.REMAINDER,
                        help="override config keys")
    args = parser.parse_args(argv)
    cfg = cfg_from_yaml_file(args.cfg_file)
    cfg.TAG = Path(args.cfg_file).stem
    if args.set_cfgs is not None:
        cfg_from_list(args.set_cfgs, cfg)
    return args, cfg


def main(argv=None):
    args, cfg = parse_config(argv)
    from pcdet.models import build_network, load_data_to_device
    from pcdet.utils.visualization import draw_bev

    logger = common_utils.create_logger()
    device = dist_utils.resolve_device(args.device)
    out_dir = Path(args.out_dir) if args.out_dir else REPO_ROOT / "output" / "demo" / cfg.TAG
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = DemoDataset(cfg.DATA_CONFIG, cfg.CLASS_NAMES, root_path=args.data_path, ext=args.ext, logger=logger)
    logger.info(f"{len(dataset)} point file(s) from {args.data_path}")

    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    if "KD" in cfg:
        from pcdet.kd import load_student_weights

        load_student_weights(model, args.ckpt, logger)
    else:
        model.load_params_from_file(filename=args.ckpt, logger=logger, to_cpu=True)
    model.to(device).eval()

    detections = []
    with torch.no_grad():
        for index in range(len(dataset)):
            batch_dict = dataset.collate_batch([dataset[index]])
            frame_id = str(batch_dict["frame_id"][0])
            load_data_to_device(batch_dict, device)
            pred_dicts, _ = model(batch_dict)
            pred = {k: v.detach().cpu().numpy() for k, v in pred_dicts[0].items()
                    if k in ("pred_boxes", "pred_scores", "pred_labels")}
            keep = pred["pred_scores"] >= args.score_thresh
            boxes, scores, labels = pred["pred_boxes"][keep], pred["pred_scores"][keep], pred["pred_labels"][keep]
            points = batch_dict["points"][:, 1:].detach().cpu().numpy()
            image = out_dir / f"{frame_id}.png"
            draw_bev(points, pred_boxes=boxes, pred_scores=scores, pred_labels=labels,
                     class_names=cfg.CLASS_NAMES, out_file=str(image), point_cloud_range=dataset.point_cloud_range)
            for box, score, label in zip(boxes, scores, labels):
                detections.append({"frame_id": frame_id, "name": cfg.CLASS_NAMES[int(label) - 1],
                                   "label": int(label), "score": float(score),
                                   "box_lidar": [float(v) for v in box[:7]]})
            logger.info(f"{dataset.sample_files[index].name}: {int(keep.sum())} detections -> {image}")
    json_path = out_dir / "detections.json"
    with open(json_path, "w") as f:
        json.dump(detections, f, indent=1)
    logger.info(f"{len(detections)} detections written to {json_path}")
    return detections


if __name__ == "__main__":
    main()
