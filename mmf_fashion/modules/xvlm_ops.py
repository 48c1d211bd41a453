"""X-VLM's box and loss maths as plain functions of tensors (no model, no MMF).

Cheatsheet::

    from mmf_fashion.modules import xvlm_ops as X

    pixels = X.normalized_to_pixel_xywh(boxes_cxcywh, (64, 64))      # (..., 4) x, y, w, h
    patches = X.boxes_to_patch_mask(pixels, patch_size=16, grid_hw=(4, 4))  # (..., 16) bool
    tokens, attention = X.pool_concept(image_tokens, patches)         # [CLS] = masked mean
    loss = X.itc_loss(concept_feat, text_feat, scale, ids=product_ids)  # soft multi-positive
    neg_text, neg_image, has_text, has_image = X.sample_itm_negatives(sim, ids)
    masked_ids, labels = X.mask_tokens(input_ids, attention_mask, special_ids=[0, 101, 102],
                                       mask_token_id=103, vocab_size=30522)
    l1, giou = X.box_regression_losses(pred_cxcywh, target_cxcywh)    # averaged over boxes
    hits = X.grounding_hits(pred_cxcywh, target_cxcywh, threshold=0.5)  # (K,) bool

Box conventions: the data carries normalised (cx, cy, w, h) in [0, 1] of the
processed image (docs/ARCHITECTURE.md); the box-to-patch rule of X-VLM works
on pixel (x, y, w, h); the box head predicts normalised (cx, cy, w, h).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import box_area, box_convert, generalized_box_iou_loss

from mmf_fashion.modules.distributed import all_gather_variable, gather_with_grad, get_rank, get_world_size
from mmf_fashion.modules.encoders import masked_mean
from mmf_fashion.modules.losses import soft_cross_entropy

# pixel coordinates coming from normalised floats (0.25 * 64 = 15.99999) are
# rounded to this many decimals before floor/ceil so the rule stays exact
_PIXEL_DECIMALS = 3


def normalized_to_pixel_xywh(boxes_cxcywh: torch.Tensor, image_hw: Tuple[int, int]) -> torch.Tensor:
    """(..., 4) normalised (cx, cy, w, h) -> (..., 4) pixel (x, y, w, h) of an H x W image."""
    height, width = image_hw
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack(((cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height), dim=-1)


def box_patch_ranges(boxes_xywh: torch.Tensor, patch_size: int, grid_hw: Tuple[int, int]) -> torch.Tensor:
    """X-VLM's box -> patch rule: (..., 4) pixel (x, y, w, h) -> (..., 4) long (x_min, x_max, y_min, y_max).

    x_min = floor(x / p), x_max = max(x_min + 1, ceil((x + w) / p)) (x_max
    excluded), the same for y; clamped to the grid so a box always covers at
    least one patch.
    """
    grid_h, grid_w = grid_hw
    boxes = torch.round(boxes_xywh.double(), decimals=_PIXEL_DECIMALS)
    x, y, w, h = boxes.unbind(-1)

    def one_axis(start, size, cells):
        low = torch.floor(start / patch_size).clamp(0, cells - 1)
        high = torch.ceil((start + size) / patch_size).clamp(max=cells)
        return low.long(), torch.maximum(low + 1, high).long()

    x_min, x_max = one_axis(x, w, grid_w)
    y_min, y_max = one_axis(y, h, grid_h)
    return torch.stack((x_min, x_max, y_min, y_max), dim=-1)


def boxes_to_patch_mask(boxes_xywh: torch.Tensor, patch_size: int, grid_hw: Tuple[int, int]) -> torch.Tensor:
    """(..., 4) pixel (x, y, w, h) -> (..., grid_h * grid_w) bool, row-major like ViT's patch order."""
    grid_h, grid_w = grid_hw
    ranges = box_patch_ranges(boxes_xywh, patch_size, grid_hw)
    x_min, x_max, y_min, y_max = (part.unsqueeze(-1) for part in ranges.unbind(-1))
    cols = torch.arange(grid_w, device=boxes_xywh.device)
    rows = torch.arange(grid_h, device=boxes_xywh.device)
    inside_x = (cols >= x_min) & (cols < x_max)  # (..., grid_w)
    inside_y = (rows >= y_min) & (rows < y_max)  # (..., grid_h)
    mask = inside_y.unsqueeze(-1) & inside_x.unsqueeze(-2)
    return mask.flatten(-2)


def pool_concept(image_tokens: torch.Tensor, patch_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A visual concept from the patches inside its box.

    image_tokens (P, 1 + N, D): [CLS] then N patch tokens; patch_mask (P, N)
    bool. Returns tokens (P, 1 + N, D) whose [CLS] is the masked mean of the
    patches inside, and the cross-attention mask (P, 1 + N) long: 1 for the
    [CLS] and the patches inside, 0 elsewhere.
    """
    patches = image_tokens[:, 1:]
    concept_cls = masked_mean(patches, patch_mask)
    tokens = torch.cat((concept_cls.unsqueeze(1), patches), dim=1)
    ones = patch_mask.new_ones(patch_mask.shape[0], 1)
    attention = torch.cat((ones, patch_mask), dim=1).long()
    return tokens, attention


def gather_rows_with_grad(rows: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate rows from every rank (row counts may differ); grads flow to the local rows.

    Returns (all rows, offset of this rank's first row in them).
    """
    if get_world_size() == 1:
        return rows, 0
    count = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = all_gather_variable(count).tolist()
    capacity = max(sizes)
    padding = rows.new_zeros((capacity - rows.shape[0],) + tuple(rows.shape[1:]))
    gathered = gather_with_grad(torch.cat((rows, padding), dim=0))
    keep = torch.cat([torch.arange(capacity, device=rows.device) < size for size in sizes])
    return gathered[keep], int(sum(sizes[: get_rank()]))


def multi_positive_targets(
    ids: Optional[torch.Tensor], all_ids: Optional[torch.Tensor], rows: int, columns: int, offset: int, device
) -> torch.Tensor:
    """(rows, columns) soft targets: uniform over the columns that share the row's id
    (one-hot at offset + row when ids is None)."""
    if ids is None:
        targets = torch.zeros(rows, columns, device=device)
        targets[torch.arange(rows, device=device), offset + torch.arange(rows, device=device)] = 1.0
        return targets
    positives = (ids.view(-1, 1) == all_ids.view(1, -1)).float()
    return positives / positives.sum(dim=1, keepdim=True)


def itc_loss(
    concept_feat: torch.Tensor, text_feat: torch.Tensor, scale: torch.Tensor, ids: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Symmetric InfoNCE over (concept, text) pairs with soft multi-positive targets.

    concept_feat, text_feat (P, E) L2-normalised and row-aligned; scale = 1 /
    temperature; ids (P,) long: pairs sharing an id are all positives of each
    other (X-VLM's idx), None = only the aligned pair. Negatives come from
    every rank.
    """
    all_text, offset = gather_rows_with_grad(text_feat)
    all_concept, _ = gather_rows_with_grad(concept_feat)
    all_ids = all_gather_variable(ids) if ids is not None else None
    targets = multi_positive_targets(
        ids, all_ids, concept_feat.shape[0], all_text.shape[0], offset, concept_feat.device
    )
    loss_c2t = soft_cross_entropy(scale * concept_feat @ all_text.t(), targets)
    loss_t2c = soft_cross_entropy(scale * text_feat @ all_concept.t(), targets)
    return (loss_c2t + loss_t2c) / 2


@torch.no_grad()
def sample_itm_negatives(
    similarity: torch.Tensor, ids: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard negatives for ITM, drawn from the softmax of the similarities.

    similarity (P, P): concept i vs text j logits (scale * cosine); ids (P,)
    or None (then only the diagonal is positive). Returns
    (negative_text (P,), negative_concept (P,), has_negative_text (P,) bool,
    has_negative_concept (P,) bool): for concept i a text index whose id
    differs from i's; for text j a concept index whose id differs from j's.
    A row with no candidate (every pair shares its id) has has_* False and
    index 0.
    """
    count = similarity.shape[0]
    if ids is None:
        ids = torch.arange(count, device=similarity.device)
    same = ids.view(-1, 1) == ids.view(1, -1)

    def draw(logits):
        # the small floor keeps every candidate reachable when the softmax underflows
        weights = (F.softmax(logits.float(), dim=1) + 1e-5).masked_fill(same, 0.0)
        has_candidate = weights.sum(dim=1) > 0
        weights[~has_candidate] = 1.0
        picked = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        return torch.where(has_candidate, picked, torch.zeros_like(picked)), has_candidate

    negative_text, has_text = draw(similarity)
    negative_concept, has_concept = draw(similarity.t())
    return negative_text, negative_concept, has_text, has_concept


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: Sequence[int],
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.25,
    max_masks: int = 8,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """X-VLM's MLM masking: per text, n = min(max_masks, max(1, round(probability * T)))
    of its T real tokens (attention 1, not special) are picked at random; of those
    80% become [MASK], 10% a random token, 10% stay. Returns (masked_ids, labels)
    with labels -100 where nothing is predicted. Texts with no real token get none.
    """
    device = input_ids.device
    special = torch.tensor(list(special_ids), device=device, dtype=input_ids.dtype)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special)
    num_candidates = candidates.sum(dim=1)
    num_masks = (num_candidates.float() * probability).round().long().clamp(min=1, max=max_masks)
    num_masks = torch.minimum(num_masks, num_candidates)
    scores = torch.rand(input_ids.shape, generator=generator).to(device)
    scores = scores.masked_fill(~candidates, 2.0)  # non-candidates sort last
    order = scores.argsort(dim=1)
    position_rank = order.argsort(dim=1)
    chosen = candidates & (position_rank < num_masks.unsqueeze(1))
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator).to(device)
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator).to(device)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    return masked, labels


def box_regression_losses(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(L1, GIoU loss) between (K, 4) normalised (cx, cy, w, h) boxes, each averaged over the K boxes.

    L1 sums the four coordinates of a box; GIoU loss = 1 - GIoU (torchvision).
    """
    if pred_cxcywh.shape != target_cxcywh.shape or pred_cxcywh.shape[-1] != 4:
        raise ValueError(
            f"box losses need two (K, 4) tensors, got {tuple(pred_cxcywh.shape)} and {tuple(target_cxcywh.shape)}"
        )
    l1 = F.l1_loss(pred_cxcywh, target_cxcywh, reduction="none").sum(-1).mean()
    pred_xyxy = box_convert(pred_cxcywh, "cxcywh", "xyxy")
    target_xyxy = box_convert(target_cxcywh, "cxcywh", "xyxy")
    giou = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="mean")
    return l1, giou


def grounding_hits(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(K,) bool: IoU(pred_k, target_k) >= threshold, boxes (K, 4) normalised (cx, cy, w, h)."""
    if pred_cxcywh.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=pred_cxcywh.device)
    return paired_box_iou(pred_cxcywh, target_cxcywh) >= threshold


def paired_box_iou(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """(K,) IoU of each box with its partner: the diagonal of torchvision's box_iou,
    in O(K) memory (box_iou builds the K x K matrix of every pair)."""
    pred = box_convert(pred_cxcywh.float(), "cxcywh", "xyxy")
    target = box_convert(target_cxcywh.float(), "cxcywh", "xyxy")
    overlap = (torch.minimum(pred[:, 2:], target[:, 2:]) - torch.maximum(pred[:, :2], target[:, :2])).clamp(min=0)
    intersection = overlap.prod(dim=1)
    union = box_area(pred) + box_area(target) - intersection
    return intersection / union
