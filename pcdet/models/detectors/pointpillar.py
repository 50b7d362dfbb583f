"""PointPillars detector: PillarVFE -> PointPillarScatter -> BaseBEVBackbone -> AnchorHeadSingle."""
from . import DETECTORS
from .detector3d_template import Detector3DTemplate


@DETECTORS.register
class PointPillar(Detector3DTemplate):
    """forward(batch_dict): training -> ({'loss'}, tb_dict, disp_dict); eval -> (pred_dicts, recall_dict)."""

    def __init__(self, model_cfg, num_class, dataset):
        super().__init__(model_cfg=model_cfg, num_class=num_class, dataset=dataset)
        self.module_list = self.build_networks()

    def forward(self, batch_dict):
        batch_dict = self.run_modules(batch_dict)
        if self.training:
            loss, tb_dict, disp_dict = self.get_training_loss()
            return {"loss": loss}, tb_dict, disp_dict
        return self.post_processing(batch_dict)

    def get_training_loss(self):
        disp_dict = {}
        loss_rpn, tb_dict = self.dense_head.get_loss()
        tb_dict = {"loss_rpn": loss_rpn.item(), **tb_dict}
        return loss_rpn, tb_dict, disp_dict
