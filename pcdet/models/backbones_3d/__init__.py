from ...registry import Registry, import_submodules

BACKBONES_3D = Registry("backbones_3d")
import_submodules(__name__)
