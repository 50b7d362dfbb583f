from ....registry import Registry, import_submodules

VFE = Registry("vfe")
import_submodules(__name__)
