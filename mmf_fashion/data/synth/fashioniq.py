"""FashionIQ-style triplets: a reference, a target that differs in 1-2 attributes, two captions.

Cheatsheet::

    triplets = build_triplets(rng, pairs_per_category=40, first_item_id=5_000_000)
    triplets["dress"]["val"][0].captions    # ["is red", "has long sleeves"]
    asin(triplets["dress"]["val"][0].target) # "B005000001"

Val/test galleries also hold two distractors per pair: the reference changed in
other ways, so that the caption is needed to find the target. Reference and
target share the subcategory (hence the FashionIQ category) and
differ in one or two visible attributes. With one change the two captions are
two phrasings of it (FashionIQ's two annotators); with two changes each
caption names one of them, so the captions joined with " and " describe the
whole change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .vocab import COLOUR_SYNONYMS, FASHIONIQ_CATEGORIES, SLOT_VALUES, SUBCATEGORIES
from .world import LENGTH_TITLE, Item, sample_item, with_attributes

FASHIONIQ_SPLITS: Tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
DISTRACTORS_PER_PAIR = {"train": 0, "val": 2, "test": 2}
CHANGEABLE_SLOTS = ("colour", "pattern", "sleeve", "length", "neckline", "collar", "pocket", "belt")

CAPTIONS: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "pattern": {
        "plain": ("is solid colored", "has no pattern", "is plain"),
        "stripes": ("has stripes", "is striped", "has a striped pattern"),
        "dots": ("has polka dots", "is dotted", "has a dotted print"),
        "checks": ("is plaid", "has a checked pattern", "is checkered"),
    },
    "sleeve": {
        "sleeveless": ("is sleeveless", "has no sleeves"),
        "short": ("has short sleeves", "is short sleeved"),
        "long": ("has long sleeves", "is long sleeved"),
    },
    "neckline": {
        "crew": ("has a crew neck", "has a round neckline"),
        "v-neck": ("has a v-neck", "has a v neckline"),
        "square": ("has a square neckline", "has a square neck"),
        "turtleneck": ("is a turtleneck", "has a high neck"),
    },
    "collar": {"collar": ("has a collar", "is collared"), "none": ("has no collar", "is collarless")},
    "pocket": {"pockets": ("has pockets", "has front pockets"), "none": ("has no pockets", "is without pockets")},
    "belt": {"belt": ("has a belt", "is belted"), "none": ("has no belt", "is without a belt")},
}


@dataclass
class Triplet:
    reference: Item
    target: Item
    captions: List[str]
    changes: Dict[str, str]
    # Gallery-only images (val/test): the reference with OTHER changes, hard negatives
    # that only the caption tells apart from the target.
    distractors: List[Item] = field(default_factory=list)


def asin(item: Item) -> str:
    """Amazon-style id of a FashionIQ image ("B" + 9 digits)."""
    return f"B{item.item_id:09d}"


def caption_options(slot: str, old: str, new: str, family: str) -> Tuple[str, ...]:
    """Ways of saying "the target has ``new`` instead of ``old``"."""
    if slot == "colour":
        synonyms = COLOUR_SYNONYMS[new]
        return (f"is {new}", f"is {new} colored", f"is {synonyms[1]}", f"is {new} instead of {old}")
    if slot == "length":
        order = SLOT_VALUES["length"]
        relative = "longer" if order.index(new) > order.index(old) else "shorter"
        word = LENGTH_TITLE.get(family, {}).get(new, new)
        return (f"is {relative}", f"is {word} length", f"has a {relative} hem")
    return CAPTIONS[slot][new]


def _changeable(item: Item) -> List[str]:
    sub = item.subcategory
    return [slot for slot in CHANGEABLE_SLOTS if slot in sub.slots and len(sub.values(slot)) > 1]


def make_triplet(rng: np.random.Generator, reference: Item, target_id: int) -> Triplet:
    """A target of the same subcategory with one or two attributes changed."""
    slots = _changeable(reference)
    # Colour is the most common change in FashionIQ's captions: count it twice.
    weights = np.array([2.0 if slot == "colour" else 1.0 for slot in slots])
    count = min(len(slots), 1 if rng.random() < 0.5 else 2)
    chosen = rng.choice(len(slots), size=count, replace=False, p=weights / weights.sum())
    changes = {}
    for index in sorted(int(i) for i in chosen):
        slot = slots[index]
        others = [v for v in reference.subcategory.values(slot) if v != reference.attributes[slot]]
        changes[slot] = others[int(rng.integers(len(others)))]
    target = with_attributes(reference, changes, target_id, rng)
    family = reference.subcategory.family
    phrasings = [caption_options(slot, reference.attributes[slot], value, family) for slot, value in changes.items()]
    if len(phrasings) == 1:
        first, second = rng.choice(len(phrasings[0]), size=2, replace=False)
        captions = [phrasings[0][int(first)], phrasings[0][int(second)]]
    else:
        captions = [options[int(rng.integers(len(options)))] for options in phrasings]
        if rng.random() < 0.5:
            captions.reverse()
    return Triplet(reference, target, captions, changes)


def _sibling(rng: np.random.Generator, triplet: Triplet, item_id: int, tries: int = 10) -> Optional[Item]:
    """The reference changed differently from the target (never equal to the target or to
    an earlier distractor), or None when no such change is found."""
    taken = [triplet.target.attributes, triplet.reference.attributes]
    taken += [d.attributes for d in triplet.distractors]
    for _ in range(tries):
        sibling = make_triplet(rng, triplet.reference, item_id).target
        if all(sibling.attributes != attributes for attributes in taken):
            return sibling
    return None


def split_counts(total: int, fractions: Sequence[float] = SPLIT_FRACTIONS) -> List[int]:
    """Sizes of the splits; every split gets at least one when total >= len(fractions)."""
    counts = [max(1, int(round(total * f))) for f in fractions[1:]]
    return [max(1, total - sum(counts))] + counts


def build_triplets(
    rng: np.random.Generator, pairs_per_category: int, first_item_id: int
) -> Dict[str, Dict[str, List[Triplet]]]:
    """{fashioniq category: {split: [Triplet]}} with fresh items numbered from first_item_id."""
    next_id = first_item_id
    triplets: Dict[str, Dict[str, List[Triplet]]] = {}
    for fiq_category, world_category in FASHIONIQ_CATEGORIES.items():
        subcategories = [s for s in SUBCATEGORIES if s.category == world_category]
        triplets[fiq_category] = {}
        for split, count in zip(FASHIONIQ_SPLITS, split_counts(pairs_per_category)):
            split_triplets = []
            for _ in range(count):
                subcategory = subcategories[int(rng.integers(len(subcategories)))]
                reference = sample_item(rng, next_id, subcategory)
                triplet = make_triplet(rng, reference, next_id + 1)
                next_id += 2
                for _ in range(DISTRACTORS_PER_PAIR[split]):
                    sibling = _sibling(rng, triplet, next_id)
                    if sibling is not None:
                        triplet.distractors.append(sibling)
                        next_id += 1
                split_triplets.append(triplet)
            triplets[fiq_category][split] = split_triplets
    return triplets
