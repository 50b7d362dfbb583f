"""Synthetic KITTI-format LiDAR dataset: the project's embedded default dataset.

``generate_dataset(out_dir, num_frames, seed, ...)`` (also ``python -m pcdet.datasets.synthetic.generate``)
writes the KITTI object layout; see ``generate`` for the layout and ``scene`` / ``lidar`` for the simulation.
Importing this package does not import the numba kernels; ``generate_dataset`` does on first call.
"""
GENERATOR_VERSION = "1.0.0"


def generate_dataset(*args, **kwargs):
    """See pcdet.datasets.synthetic.generate.generate_dataset."""
    from .generate import generate_dataset as _generate_dataset

    return _generate_dataset(*args, **kwargs)


__all__ = ["GENERATOR_VERSION", "generate_dataset"]
