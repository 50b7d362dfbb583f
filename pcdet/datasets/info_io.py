"""Info and database pickles: written atomically, read through one function that names the file.

``write_pickle`` writes to a temporary file in the same folder, fsyncs it and renames it over the target, so an
interrupted ``create_*_infos`` leaves the old file or the new one, never a truncated pickle. ``read_pickle``
raises ``InfoFileError`` naming the file, what is wrong (missing, empty, truncated or not a pickle, wrong type)
and how to rebuild it.
"""
import pickle
from pathlib import Path

from ..utils.file_utils import atomic_write

REBUILD_KITTI = ("python -m pcdet.datasets.kitti.kitti_dataset create_kitti_infos <dataset cfg> "
                 "--data_path <dataset root>")
REBUILD_NUSCENES = ("python -m pcdet.datasets.nuscenes.nuscenes_dataset --func create_nuscenes_infos "
                    "--cfg_file <dataset cfg> --version <version>")
REBUILD_WAYMO = "python -m pcdet.datasets.waymo.waymo_dataset --func create_waymo_infos --cfg_file <dataset cfg>"


class InfoFileError(RuntimeError):
    """An info / database file is missing, unreadable or of the wrong type; the message names it."""


class InfoFileMissing(InfoFileError, FileNotFoundError):
    """The info / database file does not exist (also a FileNotFoundError)."""


def write_pickle(path, obj):
    """Pickle ``obj`` to ``path`` atomically (``pcdet.utils.file_utils.atomic_write``); returns the Path."""
    return Path(atomic_write(path, lambda f: pickle.dump(obj, f)))


def read_pickle(path, expected=list, what="info file", rebuild=REBUILD_KITTI):
    """Load the pickle at ``path`` and check it is an ``expected`` (a type or a tuple of types).

    Raises InfoFileError naming ``path`` with the rebuild command ``rebuild`` when the file is missing, empty,
    truncated, not a pickle, or holds another type.
    """
    path = Path(path)
    hint = f"; rebuild it with `{rebuild}`" if rebuild else ""
    if not path.is_file():
        raise InfoFileMissing(f"{what} {path} not found{hint}")
    if path.stat().st_size == 0:
        raise InfoFileError(f"{what} {path} is empty (0 bytes){hint}")
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            MemoryError) as exc:
        raise InfoFileError(f"{what} {path} is truncated or not a pickle ({type(exc).__name__}: {exc}){hint}") \
            from exc
    if expected is not None and not isinstance(obj, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise InfoFileError(f"{what} {path} holds a {type(obj).__name__}, expected a {names}{hint}")
    return obj
