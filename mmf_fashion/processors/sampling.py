"""Pretraining-task processors: `blockwise_patch_mask`, `multi_view_sampler`,
`soft_attribute_labels`.

Cheatsheet (dataset YAML)::

    processors:
      patch_mask_processor:
        type: blockwise_patch_mask
        params: {grid: [7, 7], mask_ratio: 0.25, min_block_patches: 4}
      view_processor:
        type: multi_view_sampler
        params: {}
      attribute_processor:
        type: soft_attribute_labels
        params: {num_attributes: 0}     # 0: the dataset passes the vocabulary size

In a dataset::

    self.patch_mask_processor({})["patch_mask"]            # BoolTensor (49,), 12 True
    picked = self.view_processor({"views": refs, "is_train": True})
    picked["first"], picked["second"], picked["second_is_copy"]
    self.attribute_processor({"attribute_ids": [3, 7], "num_attributes": 40})
    # -> {"attribute_targets": FloatTensor (40,) with 0.5 at 3 and 7}
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from mmf.common.registry import registry
from mmf.datasets.processors.processors import BaseProcessor

from mmf_fashion.processors.masking import blockwise_patch_mask, num_masked_patches


@registry.register_processor("blockwise_patch_mask")
class BlockwisePatchMask(BaseProcessor):
    """params: grid (int or [h, w], 7), mask_ratio (0.25) or num_masked,
    min_block_patches (4), max_block_patches (null), min_aspect (0.3)."""

    def __init__(self, config=None, *args, **kwargs):
        config = config or {}
        grid = config.get("grid", 7)
        self.grid = (int(grid), int(grid)) if isinstance(grid, int) else tuple(int(v) for v in grid)
        num_masked = config.get("num_masked")
        ratio = float(config.get("mask_ratio", 0.25))
        self.num_masked = int(num_masked) if num_masked is not None else num_masked_patches(self.grid, ratio)
        self.min_block_patches = int(config.get("min_block_patches", 4))
        max_block = config.get("max_block_patches")
        self.max_block_patches = int(max_block) if max_block is not None else None
        self.min_aspect = float(config.get("min_aspect", 0.3))

    def __call__(self, item=None, *args, **kwargs):
        item = item or {}
        mask = blockwise_patch_mask(
            self.grid,
            self.num_masked,
            min_block_patches=self.min_block_patches,
            max_block_patches=self.max_block_patches,
            min_aspect=self.min_aspect,
            generator=item.get("generator"),
        )
        return {"patch_mask": mask}


def pick_two_views(num_views: int, is_train: bool, generator: Optional[torch.Generator] = None):
    """(first, second, second_is_copy): two different view indices; with one
    view both are 0 and the caller makes the second an augmented copy.
    Training draws at random; evaluation takes views 0 and 1."""
    if num_views < 1:
        raise ValueError("a product needs at least one view")
    if num_views == 1:
        return 0, 0, True
    if not is_train:
        return 0, 1, False
    order = torch.randperm(num_views, generator=generator)[:2].tolist()
    return order[0], order[1], False


@registry.register_processor("multi_view_sampler")
class MultiViewSampler(BaseProcessor):
    """Picks two different views of a product for multi-view contrast (MVC)."""

    def __init__(self, config=None, *args, **kwargs):
        return

    def __call__(self, item, *args, **kwargs):
        views: Sequence = item["views"]
        first, second, is_copy = pick_two_views(len(views), bool(item.get("is_train", False)), item.get("generator"))
        return {
            "first": views[first],
            "second": views[second],
            "first_index": first,
            "second_index": second,
            "second_is_copy": is_copy,
        }


def soft_attribute_targets(attribute_ids: Sequence[int], num_attributes: int) -> torch.Tensor:
    """Uniform distribution over the item's attributes (all zero when it has none)."""
    targets = torch.zeros(num_attributes, dtype=torch.float32)
    unique = sorted(set(int(i) for i in attribute_ids))
    bad = [i for i in unique if not 0 <= i < num_attributes]
    if bad:
        raise ValueError(f"attribute ids {bad} are outside the vocabulary of {num_attributes} attributes")
    if unique:
        targets[unique] = 1.0 / len(unique)
    return targets


@registry.register_processor("soft_attribute_labels")
class SoftAttributeLabels(BaseProcessor):
    """params: num_attributes (0 = take it from the item, which the datasets
    fill from the attribute vocabulary)."""

    def __init__(self, config=None, *args, **kwargs):
        config = config or {}
        self.num_attributes = int(config.get("num_attributes", 0) or 0)

    def __call__(self, item, *args, **kwargs):
        size = int(item.get("num_attributes") or self.num_attributes)
        if size <= 0:
            raise ValueError("soft_attribute_labels: the number of attributes is unknown (set params.num_attributes)")
        return {"attribute_targets": soft_attribute_targets(item.get("attribute_ids", []), size)}
