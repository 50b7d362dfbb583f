from ...registry import Registry, import_submodules

BACKBONES_2D = Registry("backbones_2d")
import_submodules(__name__)
