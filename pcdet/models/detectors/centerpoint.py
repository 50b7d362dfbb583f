"""CenterPoint (Yin et al., CVPR 2021): voxel or pillar encoder, BEV backbone, anchor-free ``CenterHead``."""
from .. import batch_keys as K
from . import DETECTORS
from .detector3d_template import Detector3DTemplate


@DETECTORS.register
class CenterPoint(Detector3DTemplate):
    """Single-stage CenterPoint.

    Voxel variant: MeanVFE -> VoxelResBackBone8x -> HeightCompression -> BaseBEVBackbone -> CenterHead.
    Pillar variant: PillarVFE -> PointPillarScatter -> BaseBEVBackbone -> CenterHead.

    ``forward(batch_dict)``: training -> ``({'loss'}, tb_dict, disp_dict)``; eval -> ``(pred_dicts, recall_dict)``
    with ``pred_dicts[b] = {'pred_boxes' (K, 7 [+2]), 'pred_scores' (K,), 'pred_labels' (K,) 1-based}``.
    """

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        self.module_list = self.build_networks()
        if self.dense_head is None or not hasattr(self.dense_head, "get_loss"):
            raise ValueError("CenterPoint: MODEL.DENSE_HEAD must name a head with get_loss (e.g. CenterHead)")

    def forward(self, batch_dict):
        batch_dict = self.run_modules(batch_dict)
        if self.training:
            loss, tb_dict, disp_dict = self.get_training_loss()
            return {"loss": loss}, tb_dict, disp_dict
        return self.post_processing(batch_dict)

    def get_training_loss(self):
        """Returns (loss scalar, tb_dict with ``loss_rpn`` and the head's terms, disp_dict)."""
        loss_rpn, tb_dict = self.dense_head.get_loss()
        tb_dict = {"loss_rpn": loss_rpn.item(), **tb_dict}
        return loss_rpn, tb_dict, {}

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
