"""Datasets, augmentation, processing and dataloaders.

``build_dataloader`` picks the dataset class named by ``dataset_cfg.DATASET`` from the ``DATASETS`` registry.
Dataset modules register themselves with ``@DATASETS.register`` and are imported below.
"""
from functools import partial

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..registry import Registry

DATASETS = Registry("datasets")

from ..utils import common_utils  # noqa: E402  (DATASETS must exist before the dataset modules register)
from .dataset import DatasetTemplate  # noqa: E402
from .kitti.kitti_dataset import KittiDataset  # noqa: E402  (registers 'KittiDataset')
from .nuscenes import nuscenes_dataset  # noqa: E402,F401  (registers 'NuScenesDataset')
from .waymo import waymo_dataset  # noqa: E402,F401  (registers 'WaymoDataset')

__all__ = ["DATASETS", "DatasetTemplate", "DistributedEvalSampler", "EPOCH_ATTR", "EpochDistributedSampler",
           "EpochShuffleSampler", "KittiDataset", "build_dataloader"]


class DistributedEvalSampler(Sampler):
    """Evaluation sampler for distributed runs: rank ``r`` of ``W`` gets indices ``r, r + W, r + 2W, ...``.

    Shares are disjoint and cover the split exactly once (no padding duplicates, unlike
    ``DistributedSampler``), so ranks may get one sample more or less than each other; the result merger must
    gather variable-length lists.
    """

    def __init__(self, dataset, num_replicas=None, rank=None):
        if num_replicas is None or rank is None:
            cur_rank, cur_world = common_utils.get_dist_info()
            rank = cur_rank if rank is None else rank
            num_replicas = cur_world if num_replicas is None else num_replicas
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedEvalSampler: rank {rank} outside [0, {num_replicas})")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self):
        return len(range(self.rank, len(self.dataset), self.num_replicas))

    def set_epoch(self, epoch):
        self.epoch = epoch


EPOCH_ATTR = "_loader_epoch"   # set on the dataset by the training samplers; read by worker_init_fn


class EpochShuffleSampler(Sampler):
    """Single-process training sampler: the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone.

    So a run resumed at epoch ``e`` sees the same order as an uninterrupted one (a DataLoader's own shuffling
    draws from a generator that advances every epoch and restarts on resume). ``set_epoch`` also stamps the
    epoch on the dataset, from which ``worker_init_fn`` derives the workers' random streams. ``seed`` None: a
    base seed drawn once from torch's global generator.
    """

    def __init__(self, dataset, seed=None):
        self.dataset = dataset
        self.seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) if seed is None else int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        setattr(self.dataset, EPOCH_ATTR, self.epoch)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(len(self.dataset), generator=g).tolist())

    def __len__(self):
        return len(self.dataset)


class EpochDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (its order already depends on seed and epoch only) that also stamps the epoch on
    the dataset for ``worker_init_fn``."""

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        setattr(self.dataset, EPOCH_ATTR, int(epoch))


def build_dataloader(dataset_cfg, class_names, batch_size, dist, root_path=None, workers=4, seed=None,
                     logger=None, training=True, total_epochs=0):
    """Build ``(dataset, dataloader, sampler)``.

    ``dist``: training uses ``EpochDistributedSampler`` (torch's DistributedSampler), evaluation uses
    ``DistributedEvalSampler`` (disjoint strided shares). Without ``dist`` training uses ``EpochShuffleSampler``
    and evaluation no sampler (in order). Each training epoch's order and the workers' python / numpy / torch
    streams depend on (seed, rank, epoch, worker id) only (``common_utils.worker_init_fn``), so a resumed run
    draws what the uninterrupted one would have; call ``sampler.set_epoch(e)`` before iterating epoch ``e``. ``drop_last`` is False; ``collate_fn`` is ``dataset.collate_batch``.
    """
    dataset_cls = DATASETS.get(dataset_cfg.DATASET)
    dataset = dataset_cls(dataset_cfg=dataset_cfg, class_names=class_names, root_path=root_path,
                          training=training, logger=logger)
    if total_epochs and hasattr(dataset, "merge_all_iters_to_one_epoch") and \
            dataset_cfg.get("MERGE_ALL_ITERS_TO_ONE_EPOCH", False):
        dataset.merge_all_iters_to_one_epoch(merge=True, epochs=total_epochs)

    rank = 0
    if dist:
        rank, world_size = common_utils.get_dist_info()
        if training:
            sampler = EpochDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                              seed=0 if seed is None else int(seed))
            sampler.set_epoch(0)
        else:
            sampler = DistributedEvalSampler(dataset, num_replicas=world_size, rank=rank)
    else:
        sampler = EpochShuffleSampler(dataset, seed) if training else None

    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed) + 1000 * rank)
    dataloader = DataLoader(
        dataset, batch_size=batch_size, pin_memory=torch.cuda.is_available(), num_workers=workers,
        shuffle=False, collate_fn=dataset.collate_batch, drop_last=False,
        sampler=sampler, timeout=0, generator=generator,
        worker_init_fn=partial(common_utils.worker_init_fn, seed=seed, rank=rank),
        persistent_workers=False,
    )
    return dataset, dataloader, sampler
