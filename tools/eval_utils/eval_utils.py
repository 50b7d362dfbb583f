"""Evaluation of one checkpoint: inference over the test split, gathering across ranks, the dataset's metric.

Distributed evaluation: each rank infers on its share of the split; rank 0 gathers the detections
(``torch.distributed.all_gather_object``) with the dataset indices its peers drew and puts them back in dataset
order, so ``result.pkl`` and the metric equal those of a single-process run.
"""
import pickle
import time
from pathlib import Path

import torch
import tqdm

from pcdet.utils import dist_utils


def build_eval_model(cfg, dataset, ckpt, device, logger):
    """The detector of ``cfg.MODEL`` with the weights of ``ckpt`` in eval mode on ``device``.

    For a distillation config only the student is built; ``pcdet.kd.load_student_weights`` reads it from a plain
    or a distillation checkpoint.
    """
    from pcdet.models import build_network

    model = build_network(model_cfg=cfg.MODEL, num_class=len(cfg.CLASS_NAMES), dataset=dataset)
    if "KD" in cfg:
        from pcdet.kd import load_student_weights

        load_student_weights(model, ckpt, logger)
    else:
        from pcdet.model_zoo import verify_zoo_tag
        from pcdet.models.detectors.detector3d_template import read_checkpoint

        verify_zoo_tag(read_checkpoint(ckpt)[1], cfg, cfg.get("CFG_FILE", "the config in use"), dataset.root_path,
                       ckpt, sections=("CLASS_NAMES", "DATA_CONFIG", "MODEL"))
        model.load_params_from_file(filename=str(ckpt), logger=logger, to_cpu=True)
    return model.to(device).eval()


def _accumulate_recall(totals, recall_dict):
    for key, value in (recall_dict or {}).items():
        if torch.is_tensor(value):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)):
            totals[key] = totals.get(key, 0) + value


def _recall_metrics(totals):
    gt = totals.get("gt", 0)
    out = {}
    for key, value in totals.items():
        if key == "gt":
            continue
        out[f"recall/{key}"] = value / max(gt, 1)
    return out


def gather_in_dataset_order(indices, det_annos, num_samples):
    """Merge the ``(indices, det_annos)`` of every rank into one list ordered by dataset index.

    A sample drawn by two ranks (a padding sampler) is kept once. Raises when a rank's annotation count differs
    from its index count or when a sample of the split was not evaluated by any rank.
    """
    gathered = dist_utils.all_gather_object((indices, det_annos))
    merged = [None] * num_samples
    for rank, (rank_indices, rank_annos) in enumerate(gathered):
        if len(rank_indices) != len(rank_annos):
            raise RuntimeError(
                f"rank {rank}: {len(rank_annos)} detections for {len(rank_indices)} sampled frames; "
                f"generate_prediction_dicts must return one annotation per frame"
            )
        for idx, anno in zip(rank_indices, rank_annos):
            if merged[idx] is None:
                merged[idx] = anno
    missing = [i for i, a in enumerate(merged) if a is None]
    if missing:
        raise RuntimeError(f"distributed evaluation: dataset indices {missing[:10]} were evaluated by no rank")
    return merged


def eval_one_epoch(cfg, args, model, dataloader, epoch_id, logger, dist_test=False, result_dir=None):
    """Infer on ``dataloader`` and evaluate; return the metric dict (empty on ranks > 0 of a distributed run).

    Writes ``result_dir/result.pkl`` (detections in dataset order) and, with ``args.save_to_file``, the KITTI
    text files under ``result_dir/final_result/data``.
    """
    from pcdet.models import load_data_to_device

    result_dir = Path(result_dir)
    rank, world_size = dist_utils.get_dist_info()
    if rank == 0:
        result_dir.mkdir(parents=True, exist_ok=True)
    final_output_dir = None
    if getattr(args, "save_to_file", False):
        final_output_dir = result_dir / "final_result" / "data"
        final_output_dir.mkdir(parents=True, exist_ok=True)
    dataset = dataloader.dataset
    class_names = dataset.class_names
    device = next(model.parameters()).device

    logger.info(f"*************** EPOCH {epoch_id} EVALUATION *****************")
    model.eval()
    det_annos = []
    recall_totals = {}
    pbar = tqdm.tqdm(total=len(dataloader), leave=True, desc="eval", dynamic_ncols=True) if rank == 0 else None
    start = time.time()
    for batch_dict in dataloader:
        load_data_to_device(batch_dict, device)
        with torch.no_grad():
            pred_dicts, recall_dict = model(batch_dict)
        _accumulate_recall(recall_totals, recall_dict)
        det_annos += dataset.generate_prediction_dicts(batch_dict, pred_dicts, class_names,
                                                       output_path=final_output_dir)
        if pbar is not None:
            pbar.update()
    if pbar is not None:
        pbar.close()
    elapsed = time.time() - start

    if dist_test:
        # the evaluation sampler is deterministic: iterating it again yields the indices this rank just ran
        indices = [int(i) for i in dataloader.sampler]
        det_annos = gather_in_dataset_order(indices, det_annos, len(dataset))
        totals = dist_utils.all_gather_object(recall_totals)
        recall_totals = {}
        for part in totals:
            _accumulate_recall(recall_totals, part)
    if rank != 0:
        return {}

    logger.info(f"*************** Performance of EPOCH {epoch_id} *****************")
    logger.info(f"{len(det_annos)} frames, {elapsed / max(len(dataloader), 1):.4f} s per batch per process "
                f"({world_size} process{'es' if world_size > 1 else ''})")
    ret_dict = _recall_metrics(recall_totals)
    for key, value in ret_dict.items():
        logger.info(f"{key}: {value:.6f}")
    total_pred = sum(len(a["name"]) for a in det_annos if "name" in a)
    logger.info(f"average predicted objects per frame: {total_pred / max(len(det_annos), 1):.3f}")
    with open(result_dir / "result.pkl", "wb") as f:
        pickle.dump(det_annos, f)

    eval_metric = cfg.MODEL.get("POST_PROCESSING", {}).get("EVAL_METRIC", "kitti")
    result_str, result_dict = dataset.evaluation(det_annos, class_names, eval_metric=eval_metric)
    logger.info(result_str)
    ret_dict.update(result_dict)
    logger.info(f"result saved to {result_dir}")
    logger.info("****************Evaluation done.*****************")
    return ret_dict
