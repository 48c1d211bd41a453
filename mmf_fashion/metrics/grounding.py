"""Phrase grounding accuracy: a predicted box is a hit when IoU with the true box >= threshold.

Cheatsheet (project YAML)::

    evaluation:
      metrics:
      - type: grounding_accuracy
        params: {threshold: 0.5}

    # in Python
    metric = registry.get_metric_class("grounding_accuracy")(threshold=0.5)
    metric.calculate(report, report)        # {"accuracy": 62.5, "num_boxes": 40.0}

Reads predicted_boxes (N, Rp, 4) (model output, e.g. xvlm grounding), boxes
(N, R, 4) normalised (cx, cy, w, h) and box_valid (N, R) bool (sample list);
keys are looked up in model_output first, then sample_list.

Only the regions that box_valid marks count: each sample's valid slots are
picked with its own mask before anything is compared or gathered, so the
number of padding slots does not matter. The prediction may be padded to a
different width than the annotation (Rp != R) as long as every valid slot
has a prediction; a valid slot beyond Rp is an error, never a silent miss.
Flat (K, 4) boxes are read as K regions (box_valid (K,) optional).

Distributed: every rank counts its own hits and regions and the counts are
summed over ranks (shards may hold different numbers of regions or slots).
IoU by torchvision.ops.box_iou (mmf_fashion/modules/xvlm_ops.grounding_hits).
Accuracy in percent (0-100), like the retrieval metrics; 0 with no box.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from mmf.common.registry import registry
from mmf.modules.metrics import BaseMetric

from mmf_fashion.metrics.registered import gather_rows, report_value
from mmf_fashion.modules.xvlm_ops import grounding_hits


def valid_region_pairs(
    predicted: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K, 4) predicted and (K, 4) true boxes of the valid regions, in sample-then-slot order.

    predicted (N, Rp, 4) and target (N, R, 4) with valid (N, R) bool, or flat
    (K, 4) each with valid (K,) or None (every row counts).
    """
    if (
        predicted.shape[-1] != 4
        or target.shape[-1] != 4
        or predicted.dim() != target.dim()
        or predicted.dim() not in (2, 3)
    ):
        raise ValueError(
            f"grounding_accuracy: predicted_boxes {tuple(predicted.shape)} and boxes "
            f"{tuple(target.shape)} must both be (N, R, 4) or both (K, 4)"
        )
    if predicted.shape[0] != target.shape[0]:
        raise ValueError(f"grounding_accuracy: predicted_boxes has {predicted.shape[0]} rows, boxes {target.shape[0]}")
    if valid is None:
        if target.dim() == 3:
            raise KeyError(
                "grounding_accuracy: (N, R, 4) boxes need the per-sample mask box_valid (N, R) "
                "to tell regions from padding"
            )
        valid = torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
    valid = valid.bool().to(target.device)
    if valid.shape != target.shape[:-1]:
        raise ValueError(
            f"grounding_accuracy: box_valid {tuple(valid.shape)} does not match boxes {tuple(target.shape)}"
        )
    if target.dim() == 2:
        return predicted[valid.to(predicted.device)], target[valid]
    slots = valid.nonzero()  # (K, 2): sample, slot
    beyond = slots[:, 1] >= predicted.shape[1]
    if bool(beyond.any()):
        sample, slot = slots[beyond][0].tolist()
        raise ValueError(
            f"grounding_accuracy: sample {sample} has a valid region in slot {slot} but "
            f"predicted_boxes holds only {predicted.shape[1]} slots per sample"
        )
    slots_on_pred = slots.to(predicted.device)
    return predicted[slots_on_pred[:, 0], slots_on_pred[:, 1]], target[slots[:, 0], slots[:, 1]]


@registry.register_metric("grounding_accuracy")
class GroundingAccuracy(BaseMetric):
    """Share of valid regions whose predicted box has IoU >= threshold with the annotation."""

    def __init__(self, threshold: float = 0.5, gather: bool = True):
        super().__init__("grounding_accuracy")
        self.threshold = float(threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"grounding_accuracy: threshold must be in (0, 1], got {threshold}")
        self.gather = bool(gather)
        self.required_params = ["predicted_boxes", "boxes", "box_valid"]

    @staticmethod
    def _lookup(sample_list, model_output, key: str) -> Optional[torch.Tensor]:
        value = report_value(key, sample_list, model_output)
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"grounding_accuracy: report key '{key}' is a {type(value).__name__}, not a tensor")
        return value

    def calculate(self, sample_list, model_output, *args, **kwargs) -> Dict[str, float]:
        predicted = self._lookup(sample_list, model_output, "predicted_boxes")
        target = self._lookup(sample_list, model_output, "boxes")
        if predicted is None or target is None:
            missing = [k for k, v in (("predicted_boxes", predicted), ("boxes", target)) if v is None]
            raise KeyError(f"grounding_accuracy: the report has no {missing} (needs {self.required_params})")
        valid = self._lookup(sample_list, model_output, "box_valid")
        predicted_rows, target_rows = valid_region_pairs(predicted, target, valid)
        hits = grounding_hits(predicted_rows.float(), target_rows.to(predicted_rows.device).float(), self.threshold)
        counts = torch.tensor([[float(hits.sum()), float(hits.numel())]], dtype=torch.float64)
        if self.gather:
            counts = gather_rows(counts)  # one row per rank
        hit_count, count = (float(v) for v in counts.sum(dim=0))
        accuracy = 100.0 * hit_count / count if count else 0.0
        return {"accuracy": accuracy, "num_boxes": count}
