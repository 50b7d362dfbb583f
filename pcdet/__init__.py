"""pcdet: an OpenPCDet-shaped LiDAR 3D detection codebase with a knowledge-distillation branch."""
from .version import __version__

__all__ = ["__version__"]
