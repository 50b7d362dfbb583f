"""CenterPoint (Yin et al., CVPR 2021): voxel or pillar encoder, BEV backbone, anchor-free ``CenterHead``."""
from ... import batch_keys as K
from . import DETECTORS
from .detector3d_template import SingleStageDetector


@DETECTORS.register
class CenterPoint(SingleStageDetector):
    """Single-stage CenterPoint.

    Voxel variant: MeanVFE -> VoxelResBackBone8x -> HeightCompression -> BaseBEVBackbone -> CenterHead.
    Pillar variant: PillarVFE -> PointPillarScatter -> BaseBEVBackbone -> CenterHead.

    ``forward(batch_dict)``: training -> ``({'loss'}, tb_dict, disp_dict)``; eval -> ``(pred_dicts, recall_dict)``
    with ``pred_dicts[b] = {'pred_boxes' (K, 7 [+2]), 'pred_scores' (K,), 'pred_labels' (K,) 1-based}``.
    """

    def post_processing(self, batch_dict):
        """The head already decoded and suppressed boxes into ``final_box_dicts``; add recall statistics.

        Returns:
            pred_dicts: ``batch_dict['final_box_dicts']`` (list of B dicts).
            recall_dict: ``{'gt', 'roi_<t>', 'rcnn_<t>'}`` counts for ``POST_PROCESSING.RECALL_THRESH_LIST``.
        """
        K.check_keys(batch_dict, (K.FINAL_BOX_DICTS, K.BATCH_SIZE), type(self).__name__)
        post_process_cfg = self.model_cfg.POST_PROCESSING
        final_pred_dicts = batch_dict[K.FINAL_BOX_DICTS]
        recall_dict = {}
        for index in range(batch_dict[K.BATCH_SIZE]):
            recall_dict = self.generate_recall_record(
                box_preds=final_pred_dicts[index]["pred_boxes"], recall_dict=recall_dict, batch_index=index,
                data_dict=batch_dict, thresh_list=post_process_cfg.get("RECALL_THRESH_LIST", []),
            )
        return final_pred_dicts, recall_dict
