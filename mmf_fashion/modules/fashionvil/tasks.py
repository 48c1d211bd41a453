"""FashionViL's six pretraining tasks: pure loss functions + one runner per task.

Cheatsheet::

    from mmf_fashion.modules.fashionvil.tasks import PRETRAINING_TASKS, mpfc_loss
    output = PRETRAINING_TASKS["itm"](net, batch)     # {"losses": {"itm": tensor}, ...}
    loss = mpfc_loss(logits, codes, patch_mask)        # CE on the masked positions only

A runner takes the network (FashionViLNetwork or the MMF model: anything with
the FashionViLEncoding methods and the task's head) and a batch mapping with
the ARCHITECTURE.md keys (B = batch, L = text length, N = grid cells):

| task | keys read                                                    |
| itc  | image, input_ids, attention_mask                             |
| itm  | image, input_ids, attention_mask [, product_id]              |
| mlm  | image, masked_input_ids, attention_mask, mlm_labels          |
| mpfc | image, patch_mask (B, N) bool, input_ids, attention_mask     |
| mvc  | image, image_2, input_ids, attention_mask                    |
| pac  | image, input_ids, attention_mask, attribute_targets (B, A)   |
token_type_ids is used when present.

ITC and MVC compare their two sides in a space of their own
(`contrastive_dim`): ITC through net.itc_projection (f image, g text), MVC
through net.mvc_projection (f image, g composed), as the paper's f and g.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from mmf_fashion.modules.distributed import all_gather_nograd, gather_with_grad, get_rank
from mmf_fashion.modules.losses import contrastive_loss, soft_cross_entropy

IGNORE_INDEX = -100


def require(batch: Mapping[str, Any], keys: Sequence[str], task: str) -> None:
    missing = [key for key in keys if key not in batch or batch[key] is None]
    if missing:
        raise KeyError(
            f"FashionViL task '{task}' needs the sample-list keys {missing}; the batch has "
            f"{sorted(batch.keys())}. Turn on the matching dataset option (mlm, views, patch mask, attributes)."
        )


# ---------------------------------------------------------------- pure losses
def itc_loss(image_embedding, text_embedding, scale, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE between the L2-normalised image and text embeddings (B, H)."""
    return contrastive_loss(F.normalize(image_embedding, dim=-1), F.normalize(text_embedding, dim=-1), scale, gather)


def hardest_negative_texts(similarity: torch.Tensor, same_item: Optional[torch.Tensor] = None) -> torch.Tensor:
    """similarity (B, B) image-to-text -> (B,) index of the most similar OTHER text per image.

    Texts of the same item (same_item (B, B) bool, e.g. equal product ids)
    and the diagonal never count as negatives; -1 where a row has none."""
    batch = similarity.shape[0]
    forbidden = torch.eye(batch, dtype=torch.bool, device=similarity.device)
    if same_item is not None:
        forbidden = forbidden | same_item.bool()
    scores = similarity.detach().float().masked_fill(forbidden, float("-inf"))
    best = scores.argmax(dim=1)
    has_negative = torch.isfinite(scores.max(dim=1).values)
    return torch.where(has_negative, best, torch.full_like(best, -1))


def itm_text_choice(
    similarity: torch.Tensor,
    swap_probability: float = 0.5,
    same_item: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pick the text paired with every image for ITM.

    With probability swap_probability an image gets its hardest negative
    text (label 0), otherwise its own text (label 1). Returns
    (text_index (B,), labels (B,) long)."""
    batch = similarity.shape[0]
    own = torch.arange(batch, device=similarity.device)
    negatives = hardest_negative_texts(similarity, same_item)
    draws = torch.rand(batch, generator=generator, device="cpu" if generator is not None else similarity.device)
    swap = (draws.to(similarity.device) < swap_probability) & (negatives >= 0)
    text_index = torch.where(swap, negatives, own)
    labels = (~swap).long()
    return text_index, labels


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, 2), labels (B,) in {0, 1}: cross entropy."""
    return F.cross_entropy(logits, labels)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (..., V), labels (...) with IGNORE_INDEX (-100) where nothing is predicted."""
    labels = labels.reshape(-1)
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(labels.shape[0], -1), labels, ignore_index=IGNORE_INDEX)


def mpfc_loss(logits: torch.Tensor, codes: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """logits (B, N, K), codes (B, N) long, patch_mask (B, N) bool -> mean CE over the masked cells only."""
    if logits.shape[:2] != codes.shape or codes.shape != patch_mask.shape:
        raise ValueError(
            f"mpfc: logits {tuple(logits.shape)}, codes {tuple(codes.shape)} and patch_mask "
            f"{tuple(patch_mask.shape)} must agree on (B, N)"
        )
    masked = patch_mask.bool()
    if not bool(masked.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[masked], codes[masked])


def mvc_loss(image_embedding, composed_embedding, scale, gather: bool = True) -> torch.Tensor:
    """InfoNCE between the image emb of view v and the fused emb of (text + view d)."""
    return contrastive_loss(
        F.normalize(image_embedding, dim=-1), F.normalize(composed_embedding, dim=-1), scale, gather
    )


def ocir_loss(
    query: torch.Tensor,
    target: torch.Tensor,
    category: torch.Tensor,
    scale: torch.Tensor,
    gather: bool = True,
    same_category: bool = True,
) -> torch.Tensor:
    """One-way InfoNCE of outfit queries (B, D) against the batch's blank items (B, D).

    With same_category, a candidate whose category (B,) differs from the
    query's blank is not a negative (masked out): evaluation ranks each
    blank among the items of its own category only, so training does too.
    Inputs are L2-normalised; negatives come from every rank when training."""
    gather = bool(gather) and torch.is_grad_enabled()
    all_target = gather_with_grad(target) if gather else target
    offset = get_rank() * query.shape[0] if gather else 0
    labels = torch.arange(query.shape[0], device=query.device) + offset
    logits = scale * query @ all_target.t()
    if same_category:
        category = category.view(-1).long()
        all_category = all_gather_nograd(category) if gather else category
        other = category.unsqueeze(1) != all_category.unsqueeze(0)
        logits = logits.masked_fill(other, float("-inf"))
    return F.cross_entropy(logits, labels)


def check_soft_targets(targets: torch.Tensor, tolerance: float = 1e-3) -> None:
    """PAC targets must be probability rows: non-negative, each summing to 1 (or all zero = no attribute)."""
    sums = targets.sum(dim=-1)
    valid = (targets >= 0).all(dim=-1) & (((sums - 1).abs() <= tolerance) | (sums.abs() <= tolerance))
    if not bool(valid.all()):
        bad = int((~valid).nonzero()[0, 0])
        raise ValueError(
            f"pac: attribute_targets row {bad} sums to {float(sums[bad]):.4f}; each row must be a "
            "uniform soft label over the item's attributes (sum 1) or all zero"
        )


def pac_loss(image_logits: torch.Tensor, text_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft-label CE of the attribute classifier on the image and on the text, summed."""
    return soft_cross_entropy(image_logits, targets) + soft_cross_entropy(text_logits, targets)


# ---------------------------------------------------------------- runners
def _text_inputs(batch: Mapping[str, Any], ids_key: str = "input_ids"):
    return batch[ids_key], batch["attention_mask"], batch.get("token_type_ids")


def run_itc(net, batch: Mapping[str, Any]) -> Dict[str, Any]:
    """Returns the ITC loss and the projected, normalised retrieval embeddings (B, contrastive_dim)."""
    require(batch, ["image", "input_ids", "attention_mask"], "itc")
    image_embedding = net.itc_projection.f(net.image_embedding(batch["image"]))
    text_embedding = net.itc_projection.g(net.text_embedding(*_text_inputs(batch)))
    loss = itc_loss(image_embedding, text_embedding, net.logit_scale(), net.gather_negatives)
    return {
        "losses": {"itc": loss},
        "image_embedding": F.normalize(image_embedding, dim=-1),
        "text_embedding": F.normalize(text_embedding, dim=-1),
    }


def _same_item(batch: Mapping[str, Any]) -> Optional[torch.Tensor]:
    product_id = batch.get("product_id")
    if product_id is None:
        return None
    product_id = product_id.view(-1)
    return product_id.unsqueeze(0) == product_id.unsqueeze(1)


def run_itm(net, batch: Mapping[str, Any]) -> Dict[str, Any]:
    require(batch, ["image", "input_ids", "attention_mask"], "itm")
    input_ids, attention_mask, token_type_ids = _text_inputs(batch)
    visual_tokens = net.image_tokens(batch["image"])
    with torch.no_grad():
        # hardest negatives by the ITC similarity, i.e. in the ITC space
        image_embedding = F.normalize(net.itc_projection.f(visual_tokens.mean(dim=1)), dim=-1)
        text = net.text_embedding(input_ids, attention_mask, token_type_ids)
        text_embedding = F.normalize(net.itc_projection.g(text), dim=-1)
        similarity = image_embedding @ text_embedding.t()
    text_index, labels = itm_text_choice(similarity, net.itm_swap_probability, _same_item(batch))
    token_type_ids = token_type_ids[text_index] if token_type_ids is not None else None
    fused = net.fuse(input_ids[text_index], attention_mask[text_index], token_type_ids, visual_tokens)
    logits = net.itm_head(fused.pooled)
    return {
        "losses": {"itm": itm_loss(logits, labels)},
        "itm_logits": logits,
        "itm_labels": labels,
        "itm_text_index": text_index,
    }


def run_mlm(net, batch: Mapping[str, Any]) -> Dict[str, Any]:
    require(batch, ["image", "masked_input_ids", "attention_mask", "mlm_labels"], "mlm")
    fused = net.fuse(*_text_inputs(batch, "masked_input_ids"), net.image_tokens(batch["image"]))
    labels = batch["mlm_labels"]
    predicted = labels != IGNORE_INDEX
    # the vocabulary projection is the costly part: run it on the masked positions only
    logits = net.mlm_head(fused.text_states[predicted], net.text_encoder.embeddings.word_embeddings.weight)
    return {"losses": {"mlm": mlm_loss(logits, labels[predicted])}}


def run_mpfc(net, batch: Mapping[str, Any]) -> Dict[str, Any]:
    require(batch, ["image", "patch_mask", "input_ids", "attention_mask"], "mpfc")
    if net.mpfc_tokenizer is None:
        raise ValueError("mpfc needs the frozen VQ tokenizer: set model_config.fashionvil.tokenizer_checkpoint")
    images, patch_mask = batch["image"], batch["patch_mask"].bool()
    codes = net.mpfc_tokenizer.encode_codes(images)
    if codes.shape != patch_mask.shape:
        raise ValueError(
            f"mpfc: the VQ tokenizer gives {codes.shape[1]} codes per image but patch_mask has "
            f"{patch_mask.shape[1]} cells: train the tokenizer with the image encoder's grid "
            "(fashion_vqvae.downsample) at the same image size"
        )
    fused = net.fuse(*_text_inputs(batch), net.image_tokens(images, patch_mask))
    logits = net.mpfc_head(fused.visual_states)
    return {"losses": {"mpfc": mpfc_loss(logits, codes, patch_mask)}, "mpfc_logits": logits, "mpfc_codes": codes}


def run_mvc(net, batch: Mapping[str, Any]) -> Dict[str, Any]:
    require(batch, ["image", "image_2", "input_ids", "attention_mask"], "mvc")
    # MVC's own f and g: the ITC space that retrieval ranks in is not shared
    image_embedding = net.mvc_projection.f(net.image_embedding(batch["image"]))
    fused = net.fuse(*_text_inputs(batch), net.image_tokens(batch["image_2"]))
    composed = net.mvc_projection.g(fused.visual_mean())
    loss = mvc_loss(image_embedding, composed, net.logit_scale(), net.gather_negatives)
    return {
        "losses": {"mvc": loss},
        "mvc_image_embedding": F.normalize(image_embedding, dim=-1),
        "mvc_composed_embedding": F.normalize(composed, dim=-1),
    }


def run_pac(net, batch: Mapping[str, Any]) -> Dict[str, Any]:
    require(batch, ["image", "input_ids", "attention_mask", "attribute_targets"], "pac")
    targets = batch["attribute_targets"].float()
    if targets.shape[-1] != net.pac_head.num_classes:
        raise ValueError(
            f"pac: attribute_targets has {targets.shape[-1]} attributes but the PAC head has "
            f"{net.pac_head.num_classes} (model_config.fashionvil.pac.num_attributes)"
        )
    check_soft_targets(targets)
    image_logits = net.pac_head(net.image_embedding(batch["image"]))
    text_logits = net.pac_head(net.text_embedding(*_text_inputs(batch)))
    return {"losses": {"pac": pac_loss(image_logits, text_logits, targets)}}


PRETRAINING_TASKS: Dict[str, Callable[[Any, Mapping[str, Any]], Dict[str, Any]]] = {
    "itc": run_itc,
    "itm": run_itm,
    "mlm": run_mlm,
    "mpfc": run_mpfc,
    "mvc": run_mvc,
    "pac": run_pac,
}
