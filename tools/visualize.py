"""BEV pictures of one frame with ground truth and the boxes of several models (teacher, student alone, distilled).

Each model is given as ``NAME=CFG_FILE,CKPT``; every model reads the frame through its own data config (so models
with different grids each get their own voxelisation of the same points). KD configs evaluate the student only.

    cd tools
    python visualize.py --model teacher=cfgs/synthetic_models/centerpoint.yaml,T.pth \
        --model alone=cfgs/synthetic_models/centerpoint.yaml,S.pth --set MODEL.WIDTH 0.25 ... \
        --frame_id 000012 --data_path ../data/synthetic_kitti --out_dir ../output/vis
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

TOOLS_DIR = Path(__file__).resolve().parent
COLORS = [(1.0, 0.0, 0.0), (0.0, 0.3, 1.0), (1.0, 0.55, 0.0), (0.6, 0.0, 0.8), (0.0, 0.7, 0.7)]


def parse_model_spec(spec):
    """``NAME=CFG_FILE,CKPT[,KEY=VALUE...]`` -> (name, cfg_file, ckpt, set_list)."""
    if "=" not in spec or "," not in spec:
        raise ValueError(f"--model expects NAME=CFG_FILE,CKPT[,KEY=VALUE...], got '{spec}'")
    name, rest = spec.split("=", 1)
    parts = rest.split(",")
    cfg_file, ckpt = parts[0], parts[1]
    sets = []
    for kv in parts[2:]:
        if "=" not in kv:
            raise ValueError(f"--model {name}: override '{kv}' is not KEY=VALUE")
        sets += kv.split("=", 1)
    return name, cfg_file, ckpt, sets


def load_model_and_sample(cfg_file, ckpt, sets, frame_id, data_path, device, logger):
    """Build the model of ``cfg_file`` with ``ckpt`` and the collated batch of ``frame_id`` from its dataset."""
    sys.path.insert(0, str(TOOLS_DIR))
    from eval_utils import eval_utils

    from pcdet.config import cfg_from_list, cfg_from_yaml_file
    from pcdet.datasets import build_dataloader

    cfg = cfg_from_yaml_file(cfg_file)
    if sets:
        cfg_from_list(sets, cfg)
    if data_path:
        cfg.DATA_CONFIG.DATA_PATH = str(Path(data_path).resolve())
    dataset, _, _ = build_dataloader(cfg.DATA_CONFIG, cfg.CLASS_NAMES, batch_size=1, dist=False, workers=0,
                                     logger=logger, training=False)
    ids = [str(info["point_cloud"]["lidar_idx"]) for info in dataset.kitti_infos]
    if frame_id not in ids:
        raise KeyError(f"frame '{frame_id}' is not in the {dataset.mode} split of {cfg.DATA_CONFIG.DATA_PATH} "
                       f"(first ids: {ids[:5]})")
    index = ids.index(frame_id)
    batch = dataset.collate_batch([dataset[index]])
    model = eval_utils.build_eval_model(cfg, dataset, ckpt, device, logger)
    return cfg, dataset, index, model, batch


def predict(model, batch, device):
    from pcdet.models import load_data_to_device

    load_data_to_device(batch, device)
    with torch.no_grad():
        pred_dicts, _ = model(batch)
    return {k: v.detach().cpu().numpy() for k, v in pred_dicts[0].items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=CFG_FILE,CKPT[,KEY=VALUE...]")
    parser.add_argument("--frame_id", action="append", required=True, help="frame id(s) of the val split")
    parser.add_argument("--data_path", default=None, help="dataset root (overrides DATA_CONFIG.DATA_PATH)")
    parser.add_argument("--score_thresh", type=float, default=0.3)
    parser.add_argument("--out_dir", default=str(TOOLS_DIR.parent / "output" / "visualize"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from pcdet.utils import common_utils
    from pcdet.utils.visualization import draw_bev

    logger = common_utils.create_logger(None, rank=0)
    device = torch.device(args.device)
    specs = [parse_model_spec(s) for s in args.model]
    written = []
    for frame_id in args.frame_id:
        box_sets, points, gt_boxes, pc_range, class_names = {}, None, None, None, None
        for i, (name, cfg_file, ckpt, sets) in enumerate(specs):
            cfg, dataset, index, model, batch = load_model_and_sample(cfg_file, ckpt, sets, frame_id,
                                                                      args.data_path, device, logger)
            if points is None:
                info = dataset.kitti_infos[index]
                points = dataset.get_lidar(frame_id)
                annos = info.get("annos", {})
                keep = np.array([n != "DontCare" for n in annos.get("name", [])], dtype=bool)
                gt_boxes = annos.get("gt_boxes_lidar", np.zeros((0, 7)))[keep[: len(annos.get("gt_boxes_lidar", []))]]
                pc_range = dataset.point_cloud_range
                class_names = cfg.CLASS_NAMES
            pred = predict(model, batch, device)
            mask = pred["pred_scores"] >= args.score_thresh
            box_sets[name] = (pred["pred_boxes"][mask], COLORS[i % len(COLORS)])
        out = Path(args.out_dir) / f"bev_{frame_id}.png"
        draw_bev(points, gt_boxes=gt_boxes, class_names=class_names, out_file=out, point_cloud_range=pc_range,
                 extra_box_sets=box_sets, title=f"frame {frame_id}: GT green; score >= {args.score_thresh}")
        written.append(out)
        print(f"wrote {out}")
    return written


if __name__ == "__main__":
    main()
