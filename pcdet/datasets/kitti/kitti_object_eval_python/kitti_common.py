"""KITTI label files <-> annotation dicts used by the evaluation.

An annotation dict ("anno") holds, for the N objects of one frame (camera frame, KITTI conventions):
``name`` (N,) str, ``truncated`` (N,) float, ``occluded`` (N,) int, ``alpha`` (N,) float, ``bbox`` (N, 4)
``[x1, y1, x2, y2]`` pixels, ``dimensions`` (N, 3) ``[l, h, w]`` (note: label files store h, w, l),
``location`` (N, 3) bottom centre, ``rotation_y`` (N,), ``score`` (N,) (0 for ground truth without scores).
"""
from pathlib import Path

import numpy as np



def empty_anno():
    """An anno with zero objects and the right dtypes/shapes."""
    return {
        "name": np.zeros((0,), dtype="<U16"), "truncated": np.zeros((0,)), "occluded": np.zeros((0,), np.int64),
        "alpha": np.zeros((0,)), "bbox": np.zeros((0, 4)), "dimensions": np.zeros((0, 3)),
        "location": np.zeros((0, 3)), "rotation_y": np.zeros((0,)), "score": np.zeros((0,)),
    }


def parse_label_lines(lines, source="<lines>"):
    """Parse KITTI label lines (15 fields, or 16 with a score) into an anno dict."""
    rows = [line.strip().split(" ") for line in lines if line.strip()]
    if not rows:
        return empty_anno()
    for k, row in enumerate(rows):
        if len(row) not in (15, 16):
            raise ValueError(f"{source}: line {k + 1} has {len(row)} fields, expected 15 or 16")
    values = np.array([[float(v) for v in row[1:15]] for row in rows]).reshape(-1, 14)
    return {
        "name": np.array([row[0] for row in rows]),
        "truncated": values[:, 0],
        "occluded": values[:, 1].astype(np.int64),
        "alpha": values[:, 2],
        "bbox": values[:, 3:7],
        "dimensions": values[:, [9, 7, 8]],  # file h, w, l -> l, h, w
        "location": values[:, 10:13],
        "rotation_y": values[:, 13],
        "score": np.array([float(row[15]) if len(row) == 16 else 0.0 for row in rows]),
    }


def get_label_anno(label_path):
    """Read one KITTI label file into an anno dict."""
    with open(label_path, "r") as f:
        return parse_label_lines(f.readlines(), source=str(label_path))


def get_label_annos(label_folder, image_ids=None):
    """Read ``<label_folder>/<id:06d>.txt`` for each id (all ``*.txt`` files, sorted, when ids is None).

    Args:
        label_folder: folder of KITTI label (or result) files.
        image_ids: list of ints or strings; strings are used verbatim as file stems.
    Returns:
        list of anno dicts in ``image_ids`` order.
    """
    folder = Path(label_folder)
    if image_ids is None:
        paths = sorted(folder.glob("*.txt"))
    else:
        paths = [folder / (f"{i:06d}.txt" if isinstance(i, (int, np.integer)) else f"{i}.txt") for i in image_ids]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"label files missing ({len(missing)}), first: {missing[0]}")
    return [get_label_anno(p) for p in paths]


def anno_to_label_lines(anno):
    """Format an anno dict as KITTI label lines (with the score column)."""
    lines = []
    for k in range(len(anno["name"])):
        l, h, w = anno["dimensions"][k]
        x1, y1, x2, y2 = anno["bbox"][k]
        x, y, z = anno["location"][k]
        lines.append(f"{anno['name'][k]} {anno['truncated'][k]:.2f} {int(anno['occluded'][k])} "
                     f"{anno['alpha'][k]:.4f} {x1:.4f} {y1:.4f} {x2:.4f} {y2:.4f} {h:.4f} {w:.4f} {l:.4f} "
                     f"{x:.4f} {y:.4f} {z:.4f} {anno['rotation_y'][k]:.4f} {anno['score'][k]:.4f}")
    return lines


def filter_anno(anno, mask):
    """Keep the objects selected by ``mask`` ((N,) bool or index array) in every per-object field."""
    num = len(anno["name"])
    return {k: (v[mask] if isinstance(v, np.ndarray) and v.shape[:1] == (num,) else v) for k, v in anno.items()}


def remove_dontcare(anno):
    """Drop ``DontCare`` objects."""
    return filter_anno(anno, np.array([n != "DontCare" for n in anno["name"]], dtype=bool))


def filter_annos_low_score(annos, thresh):
    """Drop detections scoring below ``thresh`` in each anno."""
    return [filter_anno(a, a["score"] >= thresh) for a in annos]
