"""The compiled extensions of pcdet: (module name, C++ sources, CUDA sources). Read by setup.py, which loads this
file by path (importing the pcdet package would need the extensions it is about to build), and by
scripts/check_cuda_build.sh.

Paths are relative to the repository root. The CUDA sources are compiled only when torch has CUDA; the C++ file
of each op then sees ``WITH_CUDA`` defined and dispatches CUDA tensors to them.
"""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OPS = (
    ("pcdet.ops.voxel_count.voxel_count_ext", "pcdet/ops/voxel_count/src"),
    ("pcdet.ops.knn.knn_ext", "pcdet/ops/knn/src"),
    ("pcdet.ops.iou3d_nms.iou3d_nms_ext", "pcdet/ops/iou3d_nms/src"),
    ("pcdet.ops.pd_edge_loss.pd_edge_loss_ext", "pcdet/ops/pd_edge_loss/src"),
)


def _sources(folder, suffix):
    root = REPO_ROOT
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(path) if f.endswith(suffix))


def extension_specs():
    """[(module name, [cpp sources], [cuda sources])] for every op with at least one C++ source."""
    specs = []
    for name, folder in _OPS:
        cpp, cuda = _sources(folder, ".cpp"), _sources(folder, ".cu")
        if cpp:
            specs.append((name, cpp, cuda))
    return specs
