"""Info / database pickles: atomic writes, and one reader that names the file and how to rebuild it."""
import os
import pickle

import numpy as np
import pytest

from pcdet.datasets import info_io
from pcdet.datasets.info_io import InfoFileError, read_pickle, write_pickle


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "kitti_infos_train.pkl"
    write_pickle(path, [{"a": 1}])
    assert read_pickle(path) == [{"a": 1}] and os.listdir(tmp_path) == ["kitti_infos_train.pkl"]

    class Boom:
        def __reduce__(self):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_pickle(path, [Boom()])
    # the old file survives whole and the temp file is gone
    assert read_pickle(path) == [{"a": 1}] and os.listdir(tmp_path) == ["kitti_infos_train.pkl"]


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"", r"is empty \(0 bytes\)"),
    (pickle.dumps([{"x": np.zeros(100)}] * 50)[:300], "is truncated or not a pickle"),
    (bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)), "is truncated or not a pickle"),
    (pickle.dumps({"frames": []}), "holds a dict, expected a list"),
])
def test_bad_info_files_name_the_file_and_the_rebuild_command(tmp_path, content, message):
    path = tmp_path / "kitti_infos_val.pkl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InfoFileError, match=message) as exc:
        read_pickle(path, list, "KITTI info file (test)")
    text = str(exc.value)
    assert str(path) in text and "KITTI info file (test)" in text and "create_kitti_infos" in text


def test_database_files_must_be_dicts(tmp_path):
    path = tmp_path / "kitti_dbinfos_train.pkl"
    write_pickle(path, [1, 2])
    with pytest.raises(InfoFileError, match="holds a list, expected a dict"):
        read_pickle(path, dict, "gt_sampling.DB_INFO_PATH database file")
    assert info_io.REBUILD_NUSCENES.startswith("python -m pcdet.datasets.nuscenes")


def test_kitti_dataset_refuses_a_missing_info_file(tmp_path):
    from easydict import EasyDict

    from pcdet.config import cfg_from_yaml_file
    from pathlib import Path

    from pcdet.datasets.kitti.kitti_dataset import KittiDataset

    cfg = cfg_from_yaml_file(Path(__file__).resolve().parents[2] / "tools" / "cfgs" / "dataset_configs"
                             / "synthetic_kitti_dataset.yaml")
    cfg.DATA_AUGMENTOR.DISABLE_AUG_LIST = ["gt_sampling"]
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val.txt").write_text("000000\n")
    (tmp_path / "training" / "velodyne").mkdir(parents=True)
    np.zeros((4, 4), np.float32).tofile(tmp_path / "training" / "velodyne" / "000000.bin")
    with pytest.raises(InfoFileError, match=r"KITTI info file \(test\) .*kitti_infos_val.pkl not found"):
        KittiDataset(EasyDict(cfg), ["Car"], training=False, root_path=tmp_path)
