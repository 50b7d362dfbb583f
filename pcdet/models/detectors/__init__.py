from ...registry import Registry, import_submodules

DETECTORS = Registry("detectors")
import_submodules(__name__)
