"""PointPillars detector: PillarVFE -> PointPillarScatter -> BaseBEVBackbone -> AnchorHeadSingle."""
from . import DETECTORS
from .detector3d_template import SingleStageDetector


@DETECTORS.register
class PointPillar(SingleStageDetector):
    """forward(batch_dict): training -> ({'loss'}, tb_dict, disp_dict); eval -> (pred_dicts, recall_dict)."""
