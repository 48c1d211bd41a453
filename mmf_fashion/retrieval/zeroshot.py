"""Zero-shot classification for dual encoders (ALIGN / CLIP style prompts).

Cheatsheet::

    from mmf_fashion.retrieval.zeroshot import zero_shot_classify

    image_emb = model.embed_images(images)                       # (N, D)
    preds, logits = zero_shot_classify(model.embed_texts, image_emb,
                                       ["dress", "shirt", "jeans"],
                                       templates=("a photo of a {}.", "a {}"))
    accuracy = (preds == targets).float().mean()

Each class is the mean of its L2-normalised prompt embeddings, normalised
again (prompt ensembling); logits are cosine similarities (N, C); ties go
to the lower class index (torch.argmax keeps the first maximum).
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def class_text_embeddings(
    embed_text: Callable[[list], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(C, D) unit-norm class embeddings from prompts."""
    if len(class_names) == 0:
        raise ValueError("zero-shot: no class names")
    if len(templates) == 0:
        raise ValueError("zero-shot: no prompt templates")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"zero-shot: template {template!r} has no '{{}}' for the class name")
    prompts = [template.format(name) for name in class_names for template in templates]
    with torch.no_grad():
        embedded = embed_text(prompts)
    if not isinstance(embedded, torch.Tensor) or embedded.dim() != 2 or embedded.shape[0] != len(prompts):
        shape = tuple(embedded.shape) if isinstance(embedded, torch.Tensor) else type(embedded).__name__
        raise ValueError(f"zero-shot: embed_text returned {shape} for {len(prompts)} prompts")
    embedded = torch.nn.functional.normalize(embedded.detach().float().cpu(), dim=1)
    per_class = embedded.view(len(class_names), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(per_class, dim=1)


def zero_shot_classify(
    embed_text: Callable[[list], torch.Tensor],
    image_embeddings: torch.Tensor,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(predictions (N,) class indices, logits (N, C) cosine similarities)."""
    if image_embeddings.dim() != 2:
        raise ValueError(f"zero-shot: image embeddings must be (N, D), got {tuple(image_embeddings.shape)}")
    classes = class_text_embeddings(embed_text, class_names, templates)
    if classes.shape[1] != image_embeddings.shape[1]:
        raise ValueError(
            f"zero-shot: text embeddings are {classes.shape[1]}-d, image embeddings {image_embeddings.shape[1]}-d"
        )
    images = torch.nn.functional.normalize(image_embeddings.detach().float().cpu(), dim=1)
    logits = images @ classes.T
    return logits.argmax(dim=1), logits
