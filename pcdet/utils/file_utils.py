"""Atomic file writes shared by checkpoints and info / database pickles."""
import os
import tempfile

TMP_SUFFIX = ".tmp"


def file_mode():
    """Permission bits of a new file under the process umask (0o666 & ~umask); mkstemp's own are 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write):
    """Write ``path`` atomically: ``write(f)`` fills a temporary file ``<name>.<random>.tmp`` in the same folder,
    which is fsynced, given the umask's mode and renamed over ``path`` (then the folder is fsynced). An
    exception removes the temporary file; a kill leaves it, never a truncated ``path``. Returns ``path`` (str)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
