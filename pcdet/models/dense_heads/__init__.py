from ...registry import Registry, import_submodules

DENSE_HEADS = Registry("dense_heads")
import_submodules(__name__)
