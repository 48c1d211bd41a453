"""Items of the synthetic world: their attributes, metadata and text.

Cheatsheet::

    rng = np.random.default_rng(0)
    item = sample_item(rng, item_id=7, subcategory=SUBCATEGORY_BY_NAME["t-shirt"])
    item.attributes            # {"colour": "red", "pattern": "stripes", "sleeve": "long", ...}
    item.title, item.description
    changed = with_attributes(item, {"colour": "blue"}, item_id=8, rng=rng)

Texts name every visible attribute (with synonyms, in random order) and mix in
distractor phrases, some of which name colours or garments that are NOT in the
picture ("Also available in navy.", "Pair it with black jeans."), so a
bag-of-colour-words shortcut cannot replace looking at the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from .vocab import (
    COLOUR_SYNONYMS,
    COLOURS,
    DEPARTMENT,
    LIGHT_COLOURS,
    MATERIALS,
    PATTERN_WORDS,
    PRICE_RANGE,
    SEASONS,
    SUBCATEGORIES,
    WOMEN_ONLY_CATEGORIES,
    WOMEN_ONLY_SUBCATEGORIES,
    Subcategory,
)


@dataclass
class Item:
    """One garment/accessory of the world (a product, a FashionIQ image or a Polyvore item)."""

    item_id: int
    subcategory: Subcategory
    attributes: Dict[str, str]
    style: str
    belt_colour: str
    gender: str
    material: str
    season: str
    price: float
    title: str = ""
    description: str = ""
    views: List[str] = field(default_factory=lambda: ["front"])

    @property
    def category(self) -> str:
        return self.subcategory.category

    @property
    def trim_colour(self) -> str:
        """Contrast colour of collars, soles and pattern marks."""
        return "black" if self.attributes["colour"] in LIGHT_COLOURS else "white"

    @property
    def composition(self) -> str:
        return f"100% {self.material}"

    @property
    def department(self) -> str:
        return DEPARTMENT.get(self.category, "CLOTHING")

    @property
    def text(self) -> str:
        """FashionViL's text: title + ". " + description."""
        return f"{self.title}. {self.description}"


def _pick(rng: np.random.Generator, values: Sequence):
    return values[int(rng.integers(len(values)))]


def _synonym(rng: np.random.Generator, words: Sequence[str]) -> str:
    """The first word is the common one (60%), the others are rarer synonyms."""
    if len(words) == 1 or rng.random() < 0.6:
        return words[0]
    return _pick(rng, words[1:])


def sample_attributes(
    rng: np.random.Generator, subcategory: Subcategory, fixed: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """One value per slot of the subcategory; ``fixed`` forces some of them."""
    fixed = dict(fixed or {})
    attributes = {}
    for slot in subcategory.slots:
        values = subcategory.values(slot)
        if slot in fixed and fixed[slot] in values:
            attributes[slot] = fixed[slot]
        elif slot == "pattern" and len(values) > 1 and "plain" in values:
            # Half of the items are plain so that colour stays the main cue.
            attributes[slot] = "plain" if rng.random() < 0.5 else _pick(rng, values[1:])
        else:
            attributes[slot] = _pick(rng, values)
    return attributes


def sample_item(
    rng: np.random.Generator,
    item_id: int,
    subcategory: Optional[Subcategory] = None,
    style: Optional[str] = None,
    fixed: Optional[Mapping[str, str]] = None,
) -> Item:
    """A new item with metadata and text (``subcategory`` random when not given)."""
    if subcategory is None:
        subcategory = _pick(rng, SUBCATEGORIES)
    attributes = sample_attributes(rng, subcategory, fixed)
    if style is None or style not in subcategory.styles:
        style = _pick(rng, subcategory.styles)
    colour = attributes["colour"]
    belt_colour = "brown" if colour == "black" else ("black" if colour == "brown" else _pick(rng, ("black", "brown")))
    women_only = subcategory.category in WOMEN_ONLY_CATEGORIES or subcategory.name in WOMEN_ONLY_SUBCATEGORIES
    low, high = PRICE_RANGE[subcategory.category]
    item = Item(
        item_id=item_id,
        subcategory=subcategory,
        attributes=attributes,
        style=style,
        belt_colour=belt_colour,
        gender="WOMEN" if women_only or rng.random() < 0.5 else "MEN",
        material=_pick(rng, MATERIALS[subcategory.category]),
        season=_pick(rng, SEASONS),
        price=float(round(low + (high - low) * rng.random(), 2)),
    )
    write_text(item, rng)
    return item


def with_attributes(item: Item, changes: Mapping[str, str], item_id: int, rng: np.random.Generator) -> Item:
    """A copy of ``item`` with some attributes changed (and its text rewritten)."""
    attributes = dict(item.attributes)
    attributes.update(changes)
    changed = replace(item, item_id=item_id, attributes=attributes, views=["front"])
    if "colour" in changes:
        colour = attributes["colour"]
        if changed.belt_colour == colour:
            changed.belt_colour = "brown" if colour == "black" else "black"
    write_text(changed, rng)
    return changed


# ---------------------------------------------------------------- text pieces
SLEEVE_TITLE = {
    "sleeveless": ("sleeveless",),
    "short": ("short-sleeve", "short-sleeved"),
    "long": ("long-sleeve", "long-sleeved"),
}
SLEEVE_SENTENCES = {
    "sleeveless": ("Sleeveless.", "Sleeveless cut with clean armholes."),
    "short": ("Short sleeves.", "Short sleeves with clean cuffs."),
    "long": ("Long sleeves.", "Long sleeves with buttoned cuffs."),
}
NECKLINE_TITLE = {
    "crew": ("crewneck",),
    "v-neck": ("v-neck",),
    "square": ("square-neck",),
    "turtleneck": ("turtleneck",),
}
NECKLINE_SENTENCES = {
    "crew": ("Crewneck.", "Round neckline."),
    "v-neck": ("V-neck.", "V-neckline."),
    "square": ("Square neckline.", "Square neck."),
    "turtleneck": ("Turtleneck.", "High rolled neck."),
}
# Length words depend on the family: a "long" dress is a maxi, long trousers are full-length.
LENGTH_TITLE = {
    "dress": {"short": "mini", "mid": "midi", "long": "maxi"},
    "skirt": {"short": "mini", "mid": "midi", "long": "maxi"},
    "trousers": {"short": "short", "mid": "cropped", "long": "full-length"},
    "jacket": {"short": "hip-length", "mid": "knee-length", "long": "long"},
}
LENGTH_SENTENCES = {
    "dress": {
        "short": ("Mini length.", "Hem falls above the knee."),
        "mid": ("Midi length.", "Hem falls below the knee."),
        "long": ("Maxi length.", "Floor-length hem."),
    },
    "skirt": {
        "short": ("Mini length.", "Hem falls above the knee."),
        "mid": ("Midi length.", "Hem falls below the knee."),
        "long": ("Maxi length.", "Floor-length hem."),
    },
    "trousers": {
        "short": ("Cut above the knee.", "Short leg."),
        "mid": ("Cropped leg.", "Ankle-grazing cropped length."),
        "long": ("Full-length leg.", "Long straight leg."),
    },
    "jacket": {
        "short": ("Hip length.", "Cropped at the hip."),
        "mid": ("Knee length.", "Falls to the knee."),
        "long": ("Long length.", "Falls below the knee."),
    },
}
PATTERN_SENTENCES = {
    "plain": ("Solid colour.", "Plain weave."),
    "stripes": ("Striped pattern throughout.", "Horizontal stripes."),
    "dots": ("Polka-dot print.", "Allover dots."),
    "checks": ("Check pattern throughout.", "Plaid pattern."),
}
DISTRACTORS = (
    "Tonal stitching.",
    "Machine wash cold.",
    "Imported.",
    "Fits true to size.",
    "Partially lined.",
    "Made in Italy.",
    "Made in Portugal.",
    "Relaxed fit.",
    "Model is wearing size S.",
    "Model is wearing size M.",
    "Dry clean only.",
)
PAIRING_GARMENTS = ("jeans", "sneakers", "trousers", "skirt", "boots", "blazer", "tote bag")


def _title_word_for(item: Item, slot: str, rng: np.random.Generator) -> Optional[str]:
    value = item.attributes[slot]
    family = item.subcategory.family
    if slot == "sleeve":
        return _synonym(rng, SLEEVE_TITLE[value])
    if slot == "neckline":
        return _synonym(rng, NECKLINE_TITLE[value])
    if slot == "length" and family in LENGTH_TITLE:
        word = LENGTH_TITLE[family][value]
        return None if word in item.subcategory.name else word
    return None


def write_text(item: Item, rng: np.random.Generator) -> None:
    """Fill ``item.title`` and ``item.description`` from its attributes."""
    attributes = item.attributes
    sub = item.subcategory
    colour_word = _synonym(rng, COLOUR_SYNONYMS[attributes["colour"]])
    pattern = attributes["pattern"]
    pattern_word = "" if pattern == "plain" else _synonym(rng, PATTERN_WORDS[pattern])

    # Title: colour, pattern, one shape word (only for slots the subcategory varies), name.
    varied = [slot for slot in ("sleeve", "neckline", "length") if slot in sub.slots and len(sub.values(slot)) > 1]
    shape_word = _title_word_for(item, _pick(rng, varied), rng) if varied else None
    title_words = [colour_word, pattern_word, shape_word or "", sub.name]
    item.title = " ".join(word for word in title_words if word).title()

    # Description: a lead sentence, then one sentence per visible slot, shuffled, plus noise.
    lead = " ".join(w for w in (pattern_word, item.material, sub.name) if w)
    sentences = [f"{lead[0].upper()}{lead[1:]} in {colour_word}."]
    details = []
    if "sleeve" in attributes:
        details.append(_synonym(rng, SLEEVE_SENTENCES[attributes["sleeve"]]))
    if "neckline" in attributes:
        details.append(_synonym(rng, NECKLINE_SENTENCES[attributes["neckline"]]))
    if "length" in attributes:
        details.append(_synonym(rng, LENGTH_SENTENCES[sub.family][attributes["length"]]))
    if attributes.get("collar") == "collar":
        details.append(_pick(rng, ("Spread collar.", "Pointed collar.", f"Contrasting {item.trim_colour} collar.")))
    if attributes.get("pocket") == "pockets":
        details.append(_pick(rng, ("Patch pockets.", "Pockets at front.", "Front pocket.")))
    if attributes.get("belt") == "belt":
        details.append(
            _pick(rng, (f"Detachable {item.belt_colour} belt at waist.", f"Self-tie {item.belt_colour} belt."))
        )
    if "sole" in attributes:
        details.append(
            f"Contrast {item.trim_colour} rubber sole." if attributes["sole"] == "contrast" else "Tonal rubber sole."
        )
    if pattern != "plain" or rng.random() < 0.3:
        details.append(_synonym(rng, PATTERN_SENTENCES[pattern]))
    wanted = int(rng.integers(1, 3))
    distractors: List[str] = []
    while len(distractors) < wanted:
        sentence = _distractor(item, rng)
        if sentence not in distractors:
            distractors.append(sentence)
    details.extend(distractors)
    order = rng.permutation(len(details))
    sentences.extend(details[i] for i in order)
    item.description = " ".join(sentences)


def _distractor(item: Item, rng: np.random.Generator) -> str:
    """A sentence that says nothing about the picture; some name OTHER colours."""
    roll = rng.random()
    other_colours = [c for c in COLOURS if c != item.attributes["colour"]]
    if roll < 0.25:
        return f"Also available in {_pick(rng, other_colours)}."
    if roll < 0.5:
        garment = _pick(rng, [g for g in PAIRING_GARMENTS if g not in item.subcategory.name])
        return f"Pair it with {_pick(rng, other_colours)} {garment}."
    return _pick(rng, DISTRACTORS)
