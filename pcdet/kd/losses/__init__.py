"""Distillation losses as pure functions of tensors (no modules, no config)."""
from .feature import masked_l1, masked_mse
from .relation import head_relation_inputs, relation_attention_loss, relation_matrix
from .pointdistiller import pointdistiller_loss, scan_softmax_weights
from .logits import bernoulli_kd, heatmap_kd

__all__ = ["masked_l1", "masked_mse", "relation_matrix", "head_relation_inputs", "relation_attention_loss",
           "pointdistiller_loss", "scan_softmax_weights", "bernoulli_kd", "heatmap_kd"]
