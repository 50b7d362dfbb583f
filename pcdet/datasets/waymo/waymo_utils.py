"""Convert official Waymo Open Dataset tfrecords into OpenPCDet's processed layout.

Needs the optional ``waymo-open-dataset`` package (and TensorFlow), imported only when a conversion runs:
``pip install waymo-open-dataset-tf-2-12-0`` (pick the build matching your TensorFlow). Output per sequence:
``<save_path>/<sequence>/%04d.npy`` float32 (N, 6) ``x, y, z, intensity, elongation, NLZ_flag`` (first return of
all five LiDARs, vehicle frame) and ``<sequence>.pkl`` (frame infos, see ``waymo_dataset``).
"""
import importlib.util
from concurrent import futures
from pathlib import Path

import numpy as np

from ..info_io import REBUILD_WAYMO, read_pickle, write_pickle

# Label.Type enum of the Waymo protos.
WAYMO_TYPE_NAMES = {0: "unknown", 1: "Vehicle", 2: "Pedestrian", 3: "Sign", 4: "Cyclist"}


def package_available():
    """True when both ``waymo_open_dataset`` and ``tensorflow`` are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("waymo_open_dataset", "tensorflow"))


def import_waymo():
    """``(tf, dataset_pb2, frame_utils)`` or an ImportError saying what to install."""
    try:
        import tensorflow as tf
        from waymo_open_dataset import dataset_pb2
        from waymo_open_dataset.utils import frame_utils
    except ImportError as exc:
        raise ImportError("converting Waymo tfrecords needs the optional 'waymo-open-dataset' package and "
                          "TensorFlow (pip install waymo-open-dataset-tf-2-12-0); already processed data "
                          f"loads without them ({exc})") from exc
    return tf, dataset_pb2, frame_utils


def frame_annos(frame):
    """Annotation dict of one ``dataset_pb2.Frame``: ``name``, ``difficulty``, ``dimensions`` (l, w, h),
    ``location``, ``heading_angles``, ``obj_ids``, ``tracking_difficulty``, ``num_points_in_gt``,
    ``speed_global`` (M, 2), ``gt_boxes_lidar`` (M, 7) centre origin in the vehicle frame."""
    labels = list(frame.laser_labels)
    loc = np.array([[lb.box.center_x, lb.box.center_y, lb.box.center_z] for lb in labels]).reshape(-1, 3)
    dims = np.array([[lb.box.length, lb.box.width, lb.box.height] for lb in labels]).reshape(-1, 3)
    heading = np.array([lb.box.heading for lb in labels]).reshape(-1)
    annos = {
        "name": np.array([WAYMO_TYPE_NAMES.get(lb.type, "unknown") for lb in labels]),
        "difficulty": np.array([lb.detection_difficulty_level for lb in labels], dtype=np.int32),
        "dimensions": dims, "location": loc, "heading_angles": heading,
        "obj_ids": np.array([lb.id for lb in labels]),
        "tracking_difficulty": np.array([lb.tracking_difficulty_level for lb in labels], dtype=np.int32),
        "num_points_in_gt": np.array([lb.num_lidar_points_in_box for lb in labels], dtype=np.int32),
        "speed_global": np.array([[lb.metadata.speed_x, lb.metadata.speed_y] for lb in labels]).reshape(-1, 2),
    }
    annos["gt_boxes_lidar"] = np.concatenate([loc, dims, heading[:, None]], axis=1).astype(np.float32)
    return annos


def frame_points(frame, frame_utils):
    """(N, 6) float32 ``x, y, z, intensity, elongation, NLZ_flag`` of the first return of every LiDAR."""
    range_images, camera_projections, *rest = frame_utils.parse_range_image_and_camera_projection(frame)
    range_image_top_pose = rest[-1]
    points_xyz = frame_utils.convert_range_image_to_point_cloud(frame, range_images, camera_projections,
                                                                range_image_top_pose, ri_index=0)[0]
    feats = []
    calibrations = sorted(frame.context.laser_calibrations, key=lambda c: c.name)
    for calib in calibrations:
        ri = range_images[calib.name][0]
        ri_tensor = np.array(ri.data).reshape(ri.shape.dims)
        mask = ri_tensor[..., 0] > 0
        # channels: range, intensity, elongation, is_in_no_label_zone
        feats.append(ri_tensor[mask][:, 1:4])
    feats = np.concatenate(feats, axis=0)
    xyz = np.concatenate(points_xyz, axis=0)
    if xyz.shape[0] != feats.shape[0]:
        raise ValueError(f"frame {frame.context.name}@{frame.timestamp_micros}: {xyz.shape[0]} points but "
                         f"{feats.shape[0]} range-image features")
    nlz = np.where(feats[:, 2] > 0, 1.0, -1.0)
    return np.concatenate([xyz, feats[:, 0:2], nlz[:, None]], axis=1).astype(np.float32)


def convert_sequence(sequence_file, save_path, has_label=True):
    """Convert one tfrecord; returns its frame infos (also written to ``<save>/<sequence>/<sequence>.pkl``).

    A sequence whose pkl already exists is not converted again.
    """
    sequence_file = Path(sequence_file)
    sequence_name = sequence_file.stem
    out_dir = Path(save_path) / sequence_name
    pkl_file = out_dir / f"{sequence_name}.pkl"
    if pkl_file.is_file():
        return read_pickle(pkl_file, list, "Waymo sequence info file", REBUILD_WAYMO)
    if not sequence_file.is_file():
        raise FileNotFoundError(f"Waymo tfrecord not found: {sequence_file}")
    tf, dataset_pb2, frame_utils = import_waymo()
    out_dir.mkdir(parents=True, exist_ok=True)
    infos = []
    for cnt, data in enumerate(tf.data.TFRecordDataset(str(sequence_file), compression_type="")):
        frame = dataset_pb2.Frame()
        frame.ParseFromString(bytearray(data.numpy()))
        points = frame_points(frame, frame_utils)
        np.save(out_dir / f"{cnt:04d}.npy", points)
        info = {"point_cloud": {"num_features": 5, "lidar_sequence": sequence_name, "sample_idx": cnt},
                "frame_id": f"{sequence_name}_{cnt:03d}",
                "metadata": {"context_name": frame.context.name, "timestamp_micros": frame.timestamp_micros},
                "pose": np.array(frame.pose.transform, dtype=np.float32).reshape(4, 4)}
        if has_label:
            info["annos"] = frame_annos(frame)
        infos.append(info)
    write_pickle(pkl_file, infos)
    return infos


def convert_sequences(raw_data_path, save_path, sequence_names, workers=4, has_label=True):
    """Convert ``<raw_data_path>/<name>.tfrecord`` for every name (threads); returns all frame infos."""
    import_waymo()
    files = [Path(raw_data_path) / f"{name}.tfrecord" for name in sequence_names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"Waymo: {len(missing)} of {len(files)} tfrecords not found, skipped (first: {missing[0]})")
    files = [f for f in files if f.is_file()]
    with futures.ThreadPoolExecutor(max(workers, 1)) as executor:
        per_seq = list(executor.map(lambda f: convert_sequence(f, save_path, has_label), files))
    return [info for infos in per_seq for info in infos]


__all__ = ["convert_sequence", "convert_sequences", "frame_annos", "import_waymo", "package_available",
           "WAYMO_TYPE_NAMES"]
