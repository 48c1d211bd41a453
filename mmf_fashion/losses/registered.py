"""MMF loss wrappers: use the package's loss maths from YAML `losses:` lists.

Cheatsheet (model config)::

    losses:
      - type: contrastive                 # reads image_embedding, text_embedding, logit_scale
      - type: batch_classification        # reads query_embedding, target_embedding, logit_scale
      - type: soft_label_cross_entropy    # reads attribute_logits vs attribute_targets
        params: {logits_key: attribute_logits, targets_key: attribute_targets}
      - type: mlm                         # reads mlm_logits vs mlm_labels (-100 ignored)

Each wrapper reads named keys and calls a pure function of
mmf_fashion.modules.losses; none of them knows about a particular model.
A wrapper whose inputs are absent this step (another pretraining task was
sampled) returns an empty contribution of zero that keeps the graph valid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmf.common.registry import registry
from torch import nn

from mmf_fashion.modules import losses as loss_math


def _lookup(sample_list, model_output, key):
    if key in model_output:
        return model_output[key]
    if key in sample_list:
        return sample_list[key]
    return None


def _scale(model_output, default: float) -> torch.Tensor:
    scale = model_output.get("logit_scale")
    return scale if scale is not None else torch.tensor(default)


@registry.register_loss("contrastive")
class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between image_embedding and text_embedding, negatives from every rank."""

    def __init__(self, image_key: str = "image_embedding", text_key: str = "text_embedding", default_scale: float = 4.0, label_smoothing: float = 0.0):
        super().__init__()
        self.image_key, self.text_key = image_key, text_key
        self.default_scale, self.label_smoothing = default_scale, label_smoothing

    def forward(self, sample_list, model_output):
        image = _lookup(sample_list, model_output, self.image_key)
        text = _lookup(sample_list, model_output, self.text_key)
        if image is None or text is None:
            return torch.zeros(())
        return loss_math.contrastive_loss(image, text, _scale(model_output, self.default_scale).to(image), label_smoothing=self.label_smoothing)


@registry.register_loss("batch_classification")
class BatchClassificationLoss(nn.Module):
    """One-way InfoNCE of query_embedding against the batch's target_embedding (TGIR, OCIR)."""

    def __init__(self, query_key: str = "query_embedding", target_key: str = "target_embedding", default_scale: float = 4.0):
        super().__init__()
        self.query_key, self.target_key, self.default_scale = query_key, target_key, default_scale

    def forward(self, sample_list, model_output):
        query = _lookup(sample_list, model_output, self.query_key)
        target = _lookup(sample_list, model_output, self.target_key)
        if query is None or target is None:
            return torch.zeros(())
        return loss_math.batch_classification_loss(query, target, _scale(model_output, self.default_scale).to(query))


@registry.register_loss("soft_label_cross_entropy")
class SoftLabelCrossEntropy(nn.Module):
    """Cross entropy against soft labels (PAC); rows with no label are ignored."""

    def __init__(self, logits_key: str = "attribute_logits", targets_key: str = "attribute_targets"):
        super().__init__()
        self.logits_key, self.targets_key = logits_key, targets_key

    def forward(self, sample_list, model_output):
        logits = _lookup(sample_list, model_output, self.logits_key)
        targets = _lookup(sample_list, model_output, self.targets_key)
        if logits is None or targets is None:
            return torch.zeros(())
        return loss_math.soft_cross_entropy(logits, targets.to(logits))


@registry.register_loss("mlm")
class MaskedLanguageModelingLoss(nn.Module):
    """Token cross entropy of mlm_logits (B, L, V) against mlm_labels (B, L), -100 ignored."""

    def __init__(self, logits_key: str = "mlm_logits", labels_key: str = "mlm_labels"):
        super().__init__()
        self.logits_key, self.labels_key = logits_key, labels_key

    def forward(self, sample_list, model_output):
        logits = _lookup(sample_list, model_output, self.logits_key)
        labels = _lookup(sample_list, model_output, self.labels_key)
        if logits is None or labels is None or not bool((labels != -100).any()):
            return torch.zeros(())
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
