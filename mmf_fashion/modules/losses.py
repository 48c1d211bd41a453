"""Loss functions as plain functions of tensors (no model, no MMF).

Cheatsheet::

    from mmf_fashion.modules.losses import contrastive_loss, LogitScale
    scale = LogitScale(init=4.0)                # FashionViL: cosine * s
    loss = contrastive_loss(img, txt, scale())  # symmetric InfoNCE, rank-gathered
    loss = soft_cross_entropy(logits, soft_targets)
    loss = batch_classification_loss(query, target, scale())  # TGIR
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.distributed import gather_with_grad, get_rank


class LogitScale(nn.Module):
    """A learnable multiplier kept in log space so it stays positive.

    init: the multiplier at start (FashionViL s = 4.0; a temperature T gives
    init = 1 / T, e.g. 1 / 0.07 for CLIP/X-VLM). min/max clamp the multiplier.
    """

    def __init__(self, init: float = 4.0, learnable: bool = True, min_value: float = 1e-2, max_value: float = 100.0):
        super().__init__()
        log_init = torch.tensor(math.log(init))
        if learnable:
            self.log_scale = nn.Parameter(log_init)
        else:
            self.register_buffer("log_scale", log_init)
        self.min_value = min_value
        self.max_value = max_value

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(self.min_value, self.max_value)


def _gathers(gather: bool) -> bool:
    """Gather negatives from other ranks only when a gradient is being built (training).

    Evaluation runs under no_grad on shards that are not padded, so ranks may
    hold batches of different sizes, or a different number of batches: a
    collective in the forward would then crash or hang (as ALIGN and COTS,
    the evaluation loss is in-batch per rank)."""
    return bool(gather) and torch.is_grad_enabled()


def _global_labels(batch: int, device) -> torch.Tensor:
    return torch.arange(batch, device=device) + get_rank() * batch


def contrastive_loss(
    image_embedding: torch.Tensor,
    text_embedding: torch.Tensor,
    scale: torch.Tensor,
    gather: bool = True,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned (B, D) embeddings.

    Inputs are expected L2-normalised. With gather=True the negatives are the
    embeddings of every rank; each rank's loss covers its own queries, so the
    DDP-averaged gradient equals the single-process gradient of the global batch.
    Without grad (evaluation) the negatives are the rank's own batch: see _gathers.
    """
    gather = _gathers(gather)
    all_text = gather_with_grad(text_embedding) if gather else text_embedding
    all_image = gather_with_grad(image_embedding) if gather else image_embedding
    labels = (
        _global_labels(image_embedding.shape[0], image_embedding.device)
        if gather
        else torch.arange(image_embedding.shape[0], device=image_embedding.device)
    )
    logits_i2t = scale * image_embedding @ all_text.t()
    logits_t2i = scale * text_embedding @ all_image.t()
    loss_i2t = F.cross_entropy(logits_i2t, labels, label_smoothing=label_smoothing)
    loss_t2i = F.cross_entropy(logits_t2i, labels, label_smoothing=label_smoothing)
    return (loss_i2t + loss_t2i) / 2


def batch_classification_loss(
    query_embedding: torch.Tensor, target_embedding: torch.Tensor, scale: torch.Tensor, gather: bool = True
) -> torch.Tensor:
    """One-way InfoNCE: each query must pick its own target among the batch's targets (TGIR, OCIR)."""
    gather = _gathers(gather)
    all_target = gather_with_grad(target_embedding) if gather else target_embedding
    labels = (
        _global_labels(query_embedding.shape[0], query_embedding.device)
        if gather
        else torch.arange(query_embedding.shape[0], device=query_embedding.device)
    )
    logits = scale * query_embedding @ all_target.t()
    return F.cross_entropy(logits, labels)


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy against a probability target per row; rows with an all-zero target are ignored."""
    has_target = soft_targets.sum(-1) > 0
    if not bool(has_target.any()):
        return logits.sum() * 0.0
    per_row = -(soft_targets * F.log_softmax(logits, dim=-1)).sum(-1)
    return per_row[has_target].mean()
