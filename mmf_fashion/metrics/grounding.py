"""Phrase grounding accuracy: a predicted box is a hit when IoU with the true box >= threshold.

Cheatsheet (project YAML)::

    evaluation:
      metrics:
      - type: grounding_accuracy
        params: {threshold: 0.5}

    # in Python
    metric = registry.get_metric_class("grounding_accuracy")(threshold=0.5)
    metric.calculate(report, report)        # {"accuracy": 62.5, "num_boxes": 40.0}

Reads predicted_boxes (N, R, 4) (model output, e.g. xvlm grounding),
boxes (N, R, 4) normalised (cx, cy, w, h) and box_valid (N, R) bool (sample
list); only valid boxes count. Flat (K, 4) boxes without box_valid work too.
IoU by torchvision.ops.box_iou (mmf_fashion/modules/xvlm_ops.grounding_hits).
Accuracy in percent (0-100), like the retrieval metrics; 0 with no box.
"""
from __future__ import annotations

from typing import Dict

import torch
from mmf.common.registry import registry

from mmf_fashion.metrics.registered import _ReportMetric
from mmf_fashion.modules.xvlm_ops import grounding_hits


@registry.register_metric("grounding_accuracy")
class GroundingAccuracy(_ReportMetric):
    """Share of valid regions whose predicted box has IoU >= threshold with the annotation."""

    def __init__(self, threshold: float = 0.5, gather: bool = True):
        super().__init__("grounding_accuracy", gather)
        self.threshold = float(threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"grounding_accuracy: threshold must be in (0, 1], got {threshold}")
        self.required_params = ["predicted_boxes", "boxes", "box_valid"]

    def calculate(self, sample_list, model_output, *args, **kwargs) -> Dict[str, float]:
        predicted = self._read(sample_list, model_output, "predicted_boxes")
        target = self._read(sample_list, model_output, "boxes")
        valid = self._read(sample_list, model_output, "box_valid", optional=True)
        if predicted.shape != target.shape or predicted.shape[-1] != 4:
            raise ValueError(f"grounding_accuracy: predicted_boxes {tuple(predicted.shape)} and boxes "
                             f"{tuple(target.shape)} must have the same shape (..., 4)")
        if valid is None:
            valid = torch.ones(predicted.shape[:-1], dtype=torch.bool, device=predicted.device)
        elif valid.shape != predicted.shape[:-1]:
            raise ValueError(f"grounding_accuracy: box_valid {tuple(valid.shape)} does not match boxes "
                             f"{tuple(target.shape)}")
        valid = valid.bool()
        hits = grounding_hits(predicted[valid].reshape(-1, 4), target[valid].reshape(-1, 4).to(predicted.device),
                              self.threshold)
        count = int(hits.numel())
        accuracy = 100.0 * float(hits.float().mean()) if count else 0.0
        return {"accuracy": accuracy, "num_boxes": float(count)}
