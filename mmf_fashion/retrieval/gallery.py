"""Embed galleries in batches with a model's retrieval interface.

Cheatsheet::

    from mmf_fashion.retrieval.gallery import embed_image_dataset, embed_in_batches

    out = embed_image_dataset(model, dataset.gallery_dataset(),
                              id_key="target_id", category_key="fashioniq_category")
    out["embedding"], out["id"], out["category"]      # (G, D), (G,), (G,)
    emb = embed_in_batches(model.embed_texts, ["red dress", "blue shirt"], batch_size=64)
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import torch


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


def _check_output(name: str, output, expected_rows: int) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != expected_rows:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"{name} returned {shape}; expected ({expected_rows}, D)")
    return output


def embed_in_batches(
    embed: Callable,
    items: Sequence,
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "embedding",
    prepare: Optional[Callable[[Sequence], object]] = None,
) -> torch.Tensor:
    """Call embed(prepare(batch)) over items; returns (N, D) float32 on CPU.

    prepare turns a list of items into the model's input (e.g. load and
    stack images); by default the list itself is passed (texts).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    name = getattr(embed, "__name__", "embed")
    batches = range(0, len(items), batch_size)
    chunks = []
    with torch.no_grad():
        for start in _progress(batches, len(batches), desc, progress):
            batch = list(items[start : start + batch_size])
            output = embed(prepare(batch) if prepare else batch)
            chunks.append(_check_output(name, output, len(batch)).detach().float().cpu())
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks)


def _scalar(value, key: str, index: int) -> int:
    tensor = torch.as_tensor(value)
    if tensor.numel() != 1:
        raise ValueError(f"gallery item {index}: '{key}' should be one id, got shape {tuple(tensor.shape)}")
    return int(tensor.item())


def embed_image_dataset(
    model,
    dataset,
    *,
    id_key: str,
    category_key: Optional[str] = None,
    image_key: str = "image",
    batch_size: int = 64,
    progress: bool = True,
) -> Dict[str, torch.Tensor]:
    """Embed a map-style dataset of {image (3, H, W), id_key, category_key} items.

    Returns {"embedding": (G, D), "id": (G,), "category": (G,)} (category all
    zeros when category_key is None) using model.embed_images.
    """
    if not callable(getattr(model, "embed_images", None)):
        raise TypeError(f"{type(model).__name__} has no embed_images(images) method")
    num_items = len(dataset)
    ids = torch.empty(num_items, dtype=torch.long)
    categories = torch.zeros(num_items, dtype=torch.long)

    def load(indices):
        images = []
        for index in indices:
            item = dataset[index]
            if not isinstance(item, Mapping) or image_key not in item or id_key not in item:
                raise ValueError(
                    f"gallery item {index}: expected a mapping with '{image_key}' and '{id_key}', "
                    f"got {sorted(item.keys()) if isinstance(item, Mapping) else type(item).__name__}"
                )
            images.append(torch.as_tensor(item[image_key]))
            ids[index] = _scalar(item[id_key], id_key, index)
            if category_key is not None:
                if category_key not in item:
                    raise ValueError(f"gallery item {index}: no '{category_key}'")
                categories[index] = _scalar(item[category_key], category_key, index)
        return torch.stack(images)

    embeddings = embed_in_batches(
        model.embed_images,
        list(range(num_items)),
        batch_size=batch_size,
        progress=progress,
        desc="gallery",
        prepare=load,
    )
    return {"embedding": embeddings, "id": ids, "category": categories}
