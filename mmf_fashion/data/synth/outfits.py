"""Polyvore-style outfits that follow learnable compatibility rules.

Cheatsheet::

    world = build_outfits(rng, outfit_count=300, first_item_id=100_000_000)
    world.outfits[0].items          # [Item(top), Item(bottom), Item(shoes), ...]
    world.outfits[0].split          # "train" | "valid" | "test" (the disjoint split)
    world.nondisjoint_split         # {set_id: split}: the same outfits re-split
    is_compatible(world.outfits[0].items)   # True

The rules (what a compatibility model can learn from pixels):
  * one style per outfit: every item's subcategory is worn in that style
    (sporty = hoodie, joggers, sneakers, backpack ...);
  * one colour per outfit (tonal: every item has the outfit's colour);
  * at most one patterned item per outfit.
An outfit is top + bottom + shoes, or a dress + shoes (50%), plus a bag (70%)
and a jacket (70%) when the style has them. Items are reused by later outfits
of the SAME disjoint split only, so the disjoint version shares no item between splits; the
nondisjoint version re-splits the same outfits at random, which shares items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .vocab import PALETTES, SEMANTIC_CATEGORY, STYLES, SUBCATEGORIES, Subcategory
from .world import Item, sample_item

POLYVORE_SPLITS: Tuple[str, ...] = ("train", "valid", "test")
# Like the real disjoint version (17k / 3k / 15k outfits): a big test split, so that the
# OCIR galleries (every test item of a category) are not tiny.
SPLIT_FRACTIONS = (0.5, 0.1, 0.4)
REUSE_PROBABILITY = 0.3
# Optional slots are frequent so that every semantic category has a large OCIR gallery: the
# metric averages over categories, and a category of a few dozen items has a high chance level.
DRESS_PROBABILITY, BAG_PROBABILITY, OUTERWEAR_PROBABILITY = 0.5, 0.7, 0.7

SLOT_CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "top": ("TOPS", "SHIRTS"),
    "bottom": ("TROUSERS", "SKIRTS"),
    "dress": ("DRESSES",),
    "shoes": ("SHOES",),
    "bag": ("BAGS",),
    "outerwear": ("JACKETS & COATS",),
}


@dataclass
class Outfit:
    set_id: str
    style: str
    palette: str
    split: str
    items: List[Item] = field(default_factory=list)


@dataclass
class OutfitWorld:
    outfits: List[Outfit]
    items: List[Item]
    nondisjoint_split: Dict[str, str]


def palette_of(colour: str) -> List[str]:
    return [name for name, colours in PALETTES.items() if colour in colours]


def is_compatible(items: Sequence[Item]) -> bool:
    """Do the items share a style (by subcategory), a palette, and have <= 1 pattern?"""
    shared_styles = set(STYLES)
    shared_palettes = set(PALETTES)
    for item in items:
        shared_styles &= set(item.subcategory.styles)
        shared_palettes &= set(palette_of(item.attributes["colour"]))
    patterned = sum(item.attributes["pattern"] != "plain" for item in items)
    return bool(shared_styles) and bool(shared_palettes) and patterned <= 1


def _candidates(slot: str, style: str, palette: str, patterned: bool) -> List[Subcategory]:
    colours = set(PALETTES[palette])
    found = []
    for sub in SUBCATEGORIES:
        if sub.category not in SLOT_CATEGORIES[slot] or style not in sub.styles:
            continue
        if not colours & set(sub.values("colour")):
            continue
        patterns = sub.values("pattern")
        if (patterned and patterns == ("plain",)) or (not patterned and "plain" not in patterns):
            continue
        found.append(sub)
    return found


def _outfit_slots(rng: np.random.Generator, style: str, palette: str) -> List[str]:
    slots = ["top", "bottom", "shoes"]
    if _candidates("dress", style, palette, False) and rng.random() < DRESS_PROBABILITY:
        slots = ["dress", "shoes"]
    if _candidates("bag", style, palette, False) and rng.random() < BAG_PROBABILITY:
        slots.append("bag")
    if _candidates("outerwear", style, palette, False) and rng.random() < OUTERWEAR_PROBABILITY:
        slots.append("outerwear")
    return slots


def _fits(item: Item, candidates: Sequence[Subcategory], style: str, palette: str, patterned: bool) -> bool:
    names = {sub.name for sub in candidates}
    return (
        item.subcategory.name in names
        and item.style == style
        and item.attributes["colour"] in PALETTES[palette]
        and (item.attributes["pattern"] != "plain") == patterned
    )


def _new_item(
    rng: np.random.Generator, item_id: int, candidates: Sequence[Subcategory], style: str, palette: str, patterned: bool
) -> Item:
    subcategory = candidates[int(rng.integers(len(candidates)))]
    colours = [c for c in PALETTES[palette] if c in subcategory.values("colour")]
    patterns = [p for p in subcategory.values("pattern") if (p != "plain") == patterned]
    fixed = {"colour": colours[int(rng.integers(len(colours)))], "pattern": patterns[int(rng.integers(len(patterns)))]}
    return sample_item(rng, item_id, subcategory, style=style, fixed=fixed)


def _make_outfit(
    rng: np.random.Generator, set_id: str, split: str, pool: List[Item], next_id: int
) -> Tuple[Outfit, int]:
    """One compatible outfit; takes items from ``pool`` or adds new ones to it."""
    while True:
        style = STYLES[int(rng.integers(len(STYLES)))]
        palette = list(PALETTES)[int(rng.integers(len(PALETTES)))]
        slots = _outfit_slots(rng, style, palette)
        patterned_slot = slots[int(rng.integers(len(slots)))] if rng.random() < 0.6 else None
        plans = []
        for slot in slots:
            patterned = slot == patterned_slot
            candidates = _candidates(slot, style, palette, patterned)
            if not candidates and patterned:
                patterned, candidates = False, _candidates(slot, style, palette, False)
            plans.append((slot, patterned, candidates))
        if all(candidates for _, _, candidates in plans):
            break
    outfit = Outfit(set_id, style, palette, split)
    for slot, patterned, candidates in plans:
        taken = {item.item_id for item in outfit.items}
        reusable = [
            item for item in pool if item.item_id not in taken and _fits(item, candidates, style, palette, patterned)
        ]
        if reusable and rng.random() < REUSE_PROBABILITY:
            outfit.items.append(reusable[int(rng.integers(len(reusable)))])
            continue
        item = _new_item(rng, next_id, candidates, style, palette, patterned)
        next_id += 1
        pool.append(item)
        outfit.items.append(item)
    return outfit, next_id


def build_outfits(
    rng: np.random.Generator, outfit_count: int, first_item_id: int, first_set_id: int = 200_000_000
) -> OutfitWorld:
    """Outfits split train/valid/test (disjoint) plus a nondisjoint re-split."""
    counts = [max(1, int(round(outfit_count * f))) for f in SPLIT_FRACTIONS[1:]]
    counts = [max(1, outfit_count - sum(counts))] + counts
    outfits: List[Outfit] = []
    items: List[Item] = []
    next_id = first_item_id
    for split, count in zip(POLYVORE_SPLITS, counts):
        pool: List[Item] = []
        for _ in range(count):
            outfit, next_id = _make_outfit(rng, str(first_set_id + len(outfits)), split, pool, next_id)
            outfits.append(outfit)
        items.extend(pool)
    order = rng.permutation(len(outfits))
    nondisjoint: Dict[str, str] = {}
    position = 0
    for split, count in zip(POLYVORE_SPLITS, counts):
        for index in order[position : position + count]:
            nondisjoint[outfits[int(index)].set_id] = split
        position += count
    return OutfitWorld(outfits, items, nondisjoint)


def semantic_category(item: Item) -> str:
    return SEMANTIC_CATEGORY[item.category]


def incompatible_mix(
    rng: np.random.Generator, outfit: Outfit, others: Sequence[Outfit], tries: int = 20
) -> Optional[List[Tuple[Outfit, int]]]:
    """Items (outfit, position) from other outfits, one per item of ``outfit`` with the same
    semantic category, that break a compatibility rule; None when none is found."""
    by_category: Dict[str, List[Tuple[Outfit, int]]] = {}
    for other in others:
        if other is outfit:
            continue
        for position, item in enumerate(other.items):
            by_category.setdefault(semantic_category(item), []).append((other, position))
    wanted = [semantic_category(item) for item in outfit.items]
    if not all(by_category.get(category) for category in wanted):
        return None
    for _ in range(tries):
        mix = [by_category[c][int(rng.integers(len(by_category[c])))] for c in wanted]
        ids = [o.items[p].item_id for o, p in mix]
        if len(set(ids)) == len(ids) and not is_compatible([o.items[p] for o, p in mix]):
            return mix
    return None
