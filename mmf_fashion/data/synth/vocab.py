"""The fixed vocabulary of the synthetic fashion world.

Cheatsheet::

    from mmf_fashion.data.synth import vocab
    vocab.CATEGORIES                 # ["DRESSES", "TOPS", ...]  (index = category_id)
    vocab.SUBCATEGORIES[3].name      # "slip dress"; .category, .family, .allowed
    vocab.COLOURS["red"]             # (r, g, b)
    vocab.SLOT_VALUES["sleeve"]      # ("sleeveless", "short", "long")

Every visible attribute ("slot") has a small set of values; a subcategory says
which slots apply to it and may restrict their values (a maxi dress is always
long). Styles and colour palettes drive the outfit compatibility rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "black": (30, 30, 34),
    "white": (246, 246, 243),
    "grey": (128, 128, 132),
    "navy": (28, 38, 96),
    "blue": (40, 102, 222),
    "green": (38, 140, 64),
    "red": (204, 32, 42),
    "pink": (242, 140, 182),
    "purple": (122, 52, 164),
    "orange": (242, 132, 30),
    "yellow": (242, 212, 44),
    "brown": (122, 76, 40),
}

# Colours light enough that their trims and pattern marks must be dark.
LIGHT_COLOURS = frozenset({"white", "yellow", "pink"})

COLOUR_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "black": ("black", "jet black", "onyx"),
    "white": ("white", "ivory", "snow white"),
    "grey": ("grey", "gray", "charcoal"),
    "navy": ("navy", "navy blue", "midnight blue"),
    "blue": ("blue", "cobalt", "azure"),
    "green": ("green", "emerald", "forest green"),
    "red": ("red", "crimson", "scarlet"),
    "pink": ("pink", "rose", "blush"),
    "purple": ("purple", "violet", "plum"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "mustard", "lemon"),
    "brown": ("brown", "chocolate", "cognac"),
}

# Every slot and its values, in a fixed order (the order is part of the world).
SLOT_VALUES: Dict[str, Tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "pattern": ("plain", "stripes", "dots", "checks"),
    "sleeve": ("sleeveless", "short", "long"),
    "length": ("short", "mid", "long"),
    "neckline": ("crew", "v-neck", "square", "turtleneck"),
    "collar": ("none", "collar"),
    "pocket": ("none", "pockets"),
    "belt": ("none", "belt"),
    "sole": ("tonal", "contrast"),
}

PATTERN_WORDS: Dict[str, Tuple[str, ...]] = {
    "plain": ("plain", "solid"),
    "stripes": ("striped", "stripe", "breton-striped"),
    "dots": ("polka-dot", "dotted", "spotted"),
    "checks": ("checked", "plaid", "gingham"),
}

STYLES: Tuple[str, ...] = ("casual", "formal", "sporty", "bohemian")

# Outfit palettes: every item of a compatible outfit takes its colour from one. Each palette
# is a single colour (tonal outfits): broad palettes (5 of the 12 colours) left too many
# compatible items in an OCIR gallery for the rule to narrow the search (docs/synthetic_data.md).
PALETTES: Dict[str, Tuple[str, ...]] = {colour: (colour,) for colour in COLOURS}

CATEGORIES: Tuple[str, ...] = (
    "DRESSES",
    "TOPS",
    "SHIRTS",
    "TROUSERS",
    "SKIRTS",
    "JACKETS & COATS",
    "SHOES",
    "BAGS",
)

# Polyvore's coarse "semantic_category" of each of our categories.
SEMANTIC_CATEGORY: Dict[str, str] = {
    "DRESSES": "all-body",
    "TOPS": "tops",
    "SHIRTS": "tops",
    "TROUSERS": "bottoms",
    "SKIRTS": "bottoms",
    "JACKETS & COATS": "outerwear",
    "SHOES": "shoes",
    "BAGS": "bags",
}

DEPARTMENT: Dict[str, str] = {"SHOES": "SHOES", "BAGS": "BAGS"}

MATERIALS: Dict[str, Tuple[str, ...]] = {
    "DRESSES": ("cotton", "viscose", "silk", "linen"),
    "TOPS": ("cotton", "jersey", "wool", "linen"),
    "SHIRTS": ("cotton", "poplin", "denim", "flannel"),
    "TROUSERS": ("denim", "cotton twill", "wool", "fleece"),
    "SKIRTS": ("wool", "cotton", "satin", "linen"),
    "JACKETS & COATS": ("wool", "nylon", "cotton gabardine", "denim"),
    "SHOES": ("leather", "suede", "canvas"),
    "BAGS": ("leather", "canvas", "nylon"),
}

# Slots that apply to a family (drawing family) before subcategory restrictions.
FAMILY_SLOTS: Dict[str, Tuple[str, ...]] = {
    "dress": ("colour", "pattern", "sleeve", "length", "neckline", "collar", "pocket", "belt"),
    "top": ("colour", "pattern", "sleeve", "neckline", "pocket"),
    "shirt": ("colour", "pattern", "sleeve", "collar", "pocket"),
    "trousers": ("colour", "pattern", "length", "pocket", "belt"),
    "skirt": ("colour", "pattern", "length", "pocket", "belt"),
    "jacket": ("colour", "pattern", "length", "collar", "pocket", "belt"),
    "shoe": ("colour", "pattern", "sole"),
    "bag": ("colour", "pattern", "pocket"),
}


@dataclass(frozen=True)
class Subcategory:
    """One subcategory: its drawing family, shape knobs, styles and value limits."""

    name: str
    category: str
    family: str
    styles: Tuple[str, ...]
    shape: Dict[str, float] = field(default_factory=dict)
    allowed: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    @property
    def slots(self) -> Tuple[str, ...]:
        return FAMILY_SLOTS[self.family]

    def values(self, slot: str) -> Tuple[str, ...]:
        """The values this subcategory may take for ``slot``."""
        return self.allowed.get(slot, SLOT_VALUES[slot])


def _sub(name, category, family, styles, shape=None, **allowed) -> Subcategory:
    return Subcategory(
        name,
        category,
        family,
        tuple(styles),
        dict(shape or {}),
        {slot: tuple(values) for slot, values in allowed.items()},
    )


SUBCATEGORIES: Tuple[Subcategory, ...] = (
    # DRESSES: shape knobs = shoulder half width, waist y, hem flare.
    _sub("maxi dress", "DRESSES", "dress", ["bohemian", "formal"], {"flare": 0.16}, length=["long"]),
    _sub("midi dress", "DRESSES", "dress", ["casual", "formal"], {"flare": 0.1}, length=["mid"]),
    _sub("mini dress", "DRESSES", "dress", ["casual"], {"flare": 0.08}, length=["short"]),
    _sub(
        "slip dress",
        "DRESSES",
        "dress",
        ["formal"],
        {"flare": 0.04, "shoulder": 0.13},
        sleeve=["sleeveless"],
        neckline=["v-neck", "square"],
        collar=["none"],
    ),
    _sub(
        "shirt dress",
        "DRESSES",
        "dress",
        ["casual", "formal"],
        {"flare": 0.06},
        collar=["collar"],
        neckline=["v-neck"],
        sleeve=["short", "long"],
    ),
    _sub(
        "wrap dress",
        "DRESSES",
        "dress",
        ["casual", "bohemian"],
        {"flare": 0.12},
        neckline=["v-neck"],
        belt=["belt"],
        collar=["none"],
    ),
    # TOPS
    _sub(
        "t-shirt",
        "TOPS",
        "top",
        ["casual", "sporty"],
        {"shoulder": 0.2},
        sleeve=["short", "long"],
        neckline=["crew", "v-neck"],
    ),
    _sub(
        "tank top",
        "TOPS",
        "top",
        ["sporty", "casual"],
        {"shoulder": 0.15},
        sleeve=["sleeveless"],
        neckline=["crew", "square", "v-neck"],
    ),
    _sub(
        "blouse",
        "TOPS",
        "top",
        ["formal", "bohemian"],
        {"shoulder": 0.18, "hem": 0.24},
        neckline=["v-neck", "square", "crew"],
    ),
    _sub(
        "sweater",
        "TOPS",
        "top",
        ["casual", "formal"],
        {"shoulder": 0.22, "ribbed": 1.0},
        sleeve=["long"],
        pocket=["none"],
    ),
    _sub(
        "hoodie",
        "TOPS",
        "top",
        ["sporty", "casual"],
        {"shoulder": 0.22, "hood": 1.0},
        sleeve=["long"],
        neckline=["crew"],
        pocket=["pockets"],
    ),
    _sub(
        "crop top", "TOPS", "top", ["casual", "sporty", "bohemian"], {"shoulder": 0.17, "bottom": 0.42}, pocket=["none"]
    ),
    # SHIRTS
    _sub(
        "oxford shirt",
        "SHIRTS",
        "shirt",
        ["formal"],
        {"shoulder": 0.2},
        sleeve=["long"],
        collar=["collar"],
        pattern=["plain", "stripes", "checks"],
    ),
    _sub(
        "denim shirt",
        "SHIRTS",
        "shirt",
        ["casual"],
        {"shoulder": 0.21},
        colour=["blue", "navy", "black", "white"],
        collar=["collar"],
        pocket=["pockets"],
    ),
    _sub(
        "polo shirt",
        "SHIRTS",
        "shirt",
        ["sporty", "casual"],
        {"shoulder": 0.2, "placket": 0.12},
        sleeve=["short"],
        collar=["collar"],
    ),
    _sub(
        "flannel shirt",
        "SHIRTS",
        "shirt",
        ["casual"],
        {"shoulder": 0.22},
        pattern=["checks"],
        sleeve=["long"],
        collar=["collar"],
    ),
    _sub("tunic shirt", "SHIRTS", "shirt", ["bohemian"], {"shoulder": 0.18, "bottom": 0.8}, collar=["none"]),
    # TROUSERS: shape knobs = leg width at the hem.
    _sub(
        "jeans",
        "TROUSERS",
        "trousers",
        ["casual"],
        {"leg": 0.08},
        colour=["blue", "navy", "black", "grey", "white"],
        length=["mid", "long"],
        pocket=["pockets"],
    ),
    _sub("chinos", "TROUSERS", "trousers", ["formal", "casual"], {"leg": 0.09}, length=["mid", "long"]),
    _sub("joggers", "TROUSERS", "trousers", ["sporty"], {"leg": 0.06, "cuff": 1.0}, length=["long"], belt=["none"]),
    _sub("shorts", "TROUSERS", "trousers", ["sporty", "casual"], {"leg": 0.12}, length=["short"]),
    _sub("wide-leg trousers", "TROUSERS", "trousers", ["formal", "bohemian"], {"leg": 0.16}, length=["mid", "long"]),
    # SKIRTS: shape knobs = hem flare, pleats.
    _sub("pencil skirt", "SKIRTS", "skirt", ["formal"], {"flare": 0.01}, length=["short", "mid"]),
    _sub("pleated skirt", "SKIRTS", "skirt", ["formal", "casual"], {"flare": 0.12, "pleats": 1.0}),
    _sub("a-line skirt", "SKIRTS", "skirt", ["casual", "bohemian"], {"flare": 0.16}),
    _sub("maxi skirt", "SKIRTS", "skirt", ["bohemian"], {"flare": 0.12}, length=["long"]),
    _sub("mini skirt", "SKIRTS", "skirt", ["casual"], {"flare": 0.07}, length=["short"]),
    # JACKETS & COATS
    _sub(
        "blazer",
        "JACKETS & COATS",
        "jacket",
        ["formal"],
        {"shoulder": 0.22},
        length=["short"],
        collar=["collar"],
        belt=["none"],
    ),
    _sub(
        "bomber jacket",
        "JACKETS & COATS",
        "jacket",
        ["sporty", "casual"],
        {"shoulder": 0.23, "ribbed": 1.0},
        length=["short"],
        collar=["none"],
        belt=["none"],
    ),
    _sub(
        "trench coat",
        "JACKETS & COATS",
        "jacket",
        ["formal", "casual"],
        {"shoulder": 0.21},
        length=["mid", "long"],
        collar=["collar"],
        belt=["belt"],
    ),
    _sub(
        "parka",
        "JACKETS & COATS",
        "jacket",
        ["sporty", "casual"],
        {"shoulder": 0.24, "hood": 1.0},
        length=["mid"],
        collar=["none"],
        pocket=["pockets"],
    ),
    _sub(
        "denim jacket",
        "JACKETS & COATS",
        "jacket",
        ["casual", "bohemian"],
        {"shoulder": 0.22},
        colour=["blue", "navy", "black", "white"],
        length=["short"],
        collar=["collar"],
        belt=["none"],
    ),
    # SHOES (drawn in side profile)
    _sub("sneakers", "SHOES", "shoe", ["sporty", "casual"], {"laces": 1.0}, pattern=["plain", "stripes"]),
    _sub("ankle boots", "SHOES", "shoe", ["casual", "bohemian"], {"shaft": 0.22}, pattern=["plain"]),
    _sub("heels", "SHOES", "shoe", ["formal"], {"heel": 1.0}, pattern=["plain", "dots"]),
    _sub("sandals", "SHOES", "shoe", ["bohemian", "casual"], {"straps": 1.0}, pattern=["plain", "stripes"]),
    _sub("loafers", "SHOES", "shoe", ["formal", "casual"], {"saddle": 1.0}, pattern=["plain", "checks"]),
    # BAGS
    _sub("tote bag", "BAGS", "bag", ["casual", "bohemian"], {"handles": 2.0}),
    _sub("shoulder bag", "BAGS", "bag", ["formal", "casual"], {"strap": 1.0}),
    _sub("backpack", "BAGS", "bag", ["sporty", "casual"], {"backpack": 1.0}, pattern=["plain", "stripes", "checks"]),
    _sub("clutch", "BAGS", "bag", ["formal"], {"clutch": 1.0}, pocket=["none"]),
    _sub("crossbody bag", "BAGS", "bag", ["casual", "bohemian"], {"long_strap": 1.0}),
)

SUBCATEGORY_BY_NAME: Dict[str, Subcategory] = {sub.name: sub for sub in SUBCATEGORIES}
SUBCATEGORY_ID: Dict[str, int] = {sub.name: i for i, sub in enumerate(SUBCATEGORIES)}
CATEGORY_ID: Dict[str, int] = {name: i for i, name in enumerate(CATEGORIES)}

# Women-only subcategories (everything else is drawn for MEN or WOMEN).
WOMEN_ONLY_CATEGORIES = frozenset({"DRESSES", "SKIRTS"})
WOMEN_ONLY_SUBCATEGORIES = frozenset({"heels", "clutch", "blouse", "crop top"})

SEASONS: Tuple[str, ...] = ("SS2016", "FW2016", "SS2017", "FW2017", "SS2018")

PRICE_RANGE: Dict[str, Tuple[float, float]] = {
    "DRESSES": (90, 900),
    "TOPS": (40, 400),
    "SHIRTS": (60, 450),
    "TROUSERS": (80, 600),
    "SKIRTS": (70, 600),
    "JACKETS & COATS": (200, 2500),
    "SHOES": (120, 1200),
    "BAGS": (150, 3000),
}

# FashionIQ's three categories and the world category each one draws from.
FASHIONIQ_CATEGORIES: Dict[str, str] = {"dress": "DRESSES", "shirt": "SHIRTS", "toptee": "TOPS"}

VIEWS: Tuple[str, ...] = ("front", "back", "side", "detail")
