"""Masking maths for the pretraining tasks: plain torch, no MMF import.

Cheatsheet::

    from mmf_fashion.processors.masking import whole_word_mask, blockwise_patch_mask
    masked_ids, labels = whole_word_mask(
        input_ids, word_ids, mask_token_id=103, vocab_size=30522,
        special_token_ids=[0, 100, 101, 102, 103], probability=0.15,
        generator=torch.Generator().manual_seed(0))
    # labels == -100 wherever nothing is predicted (transformers' ignore index)

    patch_mask = blockwise_patch_mask((7, 7), num_masked=12,
                                      generator=torch.Generator().manual_seed(0))
    patch_mask.shape, int(patch_mask.sum())   # (49,), 12

Both functions draw every random number from ``generator`` (torch's global
generator when None), so a seeded generator gives the same mask every time,
and DataLoader workers (each seeded differently by torch) give different ones.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch

IGNORE_INDEX = -100


def _uniform(generator: Optional[torch.Generator], low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _randint(generator: Optional[torch.Generator], low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (1,), generator=generator))


def group_word_positions(word_ids: Sequence[Optional[int]]) -> List[List[int]]:
    """Token positions of each word, in order; positions whose word id is None
    (special tokens, padding) belong to no word."""
    groups: dict = {}
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        groups.setdefault(int(word), []).append(position)
    return [groups[word] for word in sorted(groups)]


def whole_word_mask(
    input_ids: torch.Tensor,
    word_ids: Sequence[Optional[int]],
    *,
    mask_token_id: int,
    vocab_size: int,
    special_token_ids: Iterable[int] = (),
    probability: float = 0.15,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT whole-word masking on one tokenised sequence.

    Words are taken in random order until about ``probability`` of the word
    tokens are covered (at least one word when the text has any). All tokens
    of a chosen word are predicted; per chosen word: 80% -> [MASK] tokens,
    10% -> random tokens, 10% -> unchanged.

    Returns (masked_input_ids, labels), both LongTensor of input_ids' shape;
    labels hold the original id where predicted and -100 elsewhere.
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() != 1 or len(word_ids) != input_ids.numel():
        raise ValueError(
            f"whole_word_mask: need one sequence and one word id per token, "
            f"got input_ids {tuple(input_ids.shape)} and {len(word_ids)} word ids"
        )
    masked = input_ids.clone()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    words = group_word_positions(word_ids)
    if not words:
        return masked, labels

    num_word_tokens = sum(len(positions) for positions in words)
    budget = max(1, int(round(num_word_tokens * probability)))
    order = torch.randperm(len(words), generator=generator).tolist()
    chosen: List[List[int]] = []
    covered = 0
    for index in order:
        positions = words[index]
        if chosen and covered + len(positions) > budget:
            continue
        chosen.append(positions)
        covered += len(positions)
        if covered >= budget:
            break

    special = set(int(i) for i in special_token_ids)
    for positions in chosen:
        index = torch.tensor(positions, dtype=torch.long)
        labels[index] = input_ids[index]
        draw = _uniform(generator)
        if draw < 0.8:
            masked[index] = mask_token_id
        elif draw < 0.9:
            masked[index] = _random_tokens(len(positions), vocab_size, special, generator)
        # else: keep the original tokens (still predicted)
    return masked, labels


def _random_tokens(count: int, vocab_size: int, special: set, generator: Optional[torch.Generator]) -> torch.Tensor:
    tokens = torch.randint(0, vocab_size, (count,), generator=generator)
    for slot in range(count):
        # Never swap in [CLS]/[SEP]/[PAD]...: they would change the sequence structure.
        while int(tokens[slot]) in special:
            tokens[slot] = int(torch.randint(0, vocab_size, (1,), generator=generator))
    return tokens


def num_masked_patches(grid: Union[int, Sequence[int]], mask_ratio: float) -> int:
    height, width = _grid_shape(grid)
    return int(round(height * width * mask_ratio))


def _grid_shape(grid: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    height, width = (int(v) for v in grid)
    return height, width


def blockwise_patch_mask(
    grid: Union[int, Sequence[int]] = (7, 7),
    num_masked: int = 12,
    *,
    min_block_patches: int = 4,
    max_block_patches: Optional[int] = None,
    min_aspect: float = 0.3,
    max_attempts: int = 10,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """BEiT-style blockwise mask over a (height, width) patch grid.

    Rectangular blocks of random area (>= min_block_patches) and aspect ratio
    (between min_aspect and 1/min_aspect) are placed at random until the
    requested count is reached; blocks never overshoot. When no block fits
    any more, single cells next to masked ones are added so the count is
    always exactly ``num_masked``.

    Returns BoolTensor (height * width,), row-major, True = masked.
    """
    height, width = _grid_shape(grid)
    total = height * width
    if not 0 <= num_masked <= total:
        raise ValueError(f"blockwise_patch_mask: cannot mask {num_masked} of {total} patches")
    mask = torch.zeros(height, width, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < num_masked:
        remaining = num_masked - count
        largest = min(remaining, max_block_patches or num_masked)
        if largest < min_block_patches:
            break
        added = 0
        for _ in range(max_attempts):
            area = _uniform(generator, min_block_patches, largest)
            aspect = math.exp(_uniform(generator, *log_aspect))
            block_h = int(round(math.sqrt(area * aspect)))
            block_w = int(round(math.sqrt(area / aspect)))
            if not (1 <= block_h <= height and 1 <= block_w <= width):
                continue
            top = _randint(generator, 0, height - block_h)
            left = _randint(generator, 0, width - block_w)
            window = mask[top : top + block_h, left : left + block_w]
            new_cells = block_h * block_w - int(window.sum())
            if 0 < new_cells <= remaining:
                window.fill_(True)
                added = new_cells
                break
        if added == 0:
            break
        count += added
    while count < num_masked:
        _grow_one_cell(mask, generator)
        count += 1
    return mask.flatten()


def _grow_one_cell(mask: torch.Tensor, generator: Optional[torch.Generator]) -> None:
    """Mask one more cell, preferring cells that touch the masked area."""
    neighbours = torch.zeros_like(mask)
    neighbours[1:, :] |= mask[:-1, :]
    neighbours[:-1, :] |= mask[1:, :]
    neighbours[:, 1:] |= mask[:, :-1]
    neighbours[:, :-1] |= mask[:, 1:]
    candidates = (neighbours & ~mask).flatten().nonzero().flatten()
    if candidates.numel() == 0:
        candidates = (~mask).flatten().nonzero().flatten()
    pick = candidates[_randint(generator, 0, candidates.numel() - 1)]
    mask.view(-1)[pick] = True
