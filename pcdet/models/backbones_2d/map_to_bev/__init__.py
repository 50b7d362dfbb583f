from ....registry import Registry, import_submodules

MAP_TO_BEV = Registry("map_to_bev")
import_submodules(__name__)
