"""Teacher inputs: when the teacher's grid or range differs from the student's, register a side processor.

Augmentation runs once; the side processor voxelises a copy of the same augmented points for the teacher and
its outputs travel in ``batch_dict['kd_teacher_inputs']``.
"""
import numpy as np

from ..config import cfg_to_dict
from ..batch_keys import KD_TEACHER_INPUTS
from .teacher import GeometryView, TeacherError, load_teacher_cfg


def prepare_kd_dataset(cfg, dataset, logger=None, teacher_cfg=None, cfg_file=None):
    """Return the dataset as the teacher sees it (``dataset`` itself or a GeometryView) after registering the
    teacher side processor on ``dataset`` if the teacher's POINT_CLOUD_RANGE or DATA_PROCESSOR differ.

    ``cfg``: the KD config (its KD.TEACHER.CFG_FILE is loaded unless ``teacher_cfg`` is given).
    Idempotent: an already registered side processor is reused.
    """
    if teacher_cfg is None:
        teacher_cfg, _ = load_teacher_cfg(cfg, cfg_file)
    tdata, sdata = teacher_cfg.DATA_CONFIG, dataset.dataset_cfg
    if cfg_to_dict(tdata.get("POINT_FEATURE_ENCODING")) != cfg_to_dict(sdata.get("POINT_FEATURE_ENCODING")):
        raise TeacherError("KD: teacher and student POINT_FEATURE_ENCODING differ; both networks must read the same "
                           "point features")
    t_range = np.asarray(tdata.POINT_CLOUD_RANGE, dtype=np.float32)
    same_range = np.allclose(t_range, dataset.point_cloud_range)
    same_proc = cfg_to_dict(tdata.get("DATA_PROCESSOR", [])) == cfg_to_dict(sdata.get("DATA_PROCESSOR", []))
    if same_range and same_proc:
        return dataset
    side = getattr(dataset, "side_processors", {}).get(KD_TEACHER_INPUTS)
    if side is None:
        side = dataset.register_side_processor(KD_TEACHER_INPUTS, tdata.DATA_PROCESSOR, point_cloud_range=t_range)
        if logger is not None:
            logger.info(f"KD: teacher grid differs (range {t_range.tolist()}, voxel {list(side.voxel_size)}, grid "
                        f"{list(side.grid_size)}) from the student's (range {dataset.point_cloud_range.tolist()}, "
                        f"voxel {list(dataset.voxel_size)}); teacher inputs come from a side processor under "
                        f"'{KD_TEACHER_INPUTS}'")
    return GeometryView(dataset, t_range, side.voxel_size, side.grid_size)
