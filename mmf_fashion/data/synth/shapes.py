"""Silhouettes of the synthetic world as lists of parts in unit coordinates.

Cheatsheet::

    parts = build_parts(item)      # [Part(name="garment", layer="fabric", shapes=[...]), ...]
    crop = detail_crop(item, rng)  # (x0, y0, x1, y1) in [0, 1] for the "detail" view

A part is drawn in list order with its layer: "fabric" (colour + pattern),
"shade" (darker fabric: pockets, cuffs, ribbing), "trim" (contrast colour:
collars, soles, laces), "belt", "metal" (buckles), "inner" (a shirt under an
open jacket) or "cutout" (background: necklines). Coordinates are in [0, 1],
x to the right and y down; a part's ``phrase`` becomes a region annotation.
Each family draws its own silhouette and each subcategory changes its knobs
(``Subcategory.shape``), so subcategories differ visibly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .world import Item

Point = Tuple[float, float]
CX = 0.5
NECK = 0.065


@dataclass
class Shape:
    kind: str  # "polygon", "ellipse" (two corner points) or "line"
    points: List[Point]
    width: float = 0.0


@dataclass
class Part:
    name: str
    layer: str
    shapes: List[Shape] = field(default_factory=list)
    phrase: Optional[str] = None
    front_only: bool = False
    first_only: bool = False  # the region box covers the first shape only (one sleeve)


def poly(*points: Point) -> Shape:
    return Shape("polygon", list(points))


def rect(x0: float, y0: float, x1: float, y1: float) -> Shape:
    return Shape("polygon", [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def ellipse(x0: float, y0: float, x1: float, y1: float) -> Shape:
    return Shape("ellipse", [(x0, y0), (x1, y1)])


def line(points: Sequence[Point], width: float) -> Shape:
    return Shape("line", list(points), width)


def mirrored(shape: Shape) -> Shape:
    return Shape(shape.kind, [(2 * CX - x, y) for x, y in shape.points], shape.width)


PATTERN_ADJECTIVE = {"plain": "", "stripes": "striped", "dots": "dotted", "checks": "checked"}


def fabric_word(item: Item) -> str:
    """The pattern adjective when patterned, else the colour ("striped", "red")."""
    return PATTERN_ADJECTIVE[item.attributes["pattern"]] or item.attributes["colour"]


def garment_phrase(item: Item) -> str:
    words = [item.attributes["colour"], PATTERN_ADJECTIVE[item.attributes["pattern"]], item.subcategory.name]
    return " ".join(w for w in words if w)


# ------------------------------------------------------------------ upper body
def _sleeves(item: Item, shoulder: float, top: float) -> List[Part]:
    sleeve = item.attributes.get("sleeve", "long")
    if sleeve == "sleeveless":
        return []
    reach = 0.17 if sleeve == "short" else 0.46
    left = poly(
        (CX - shoulder + 0.012, top + 0.02),
        (CX - shoulder + 0.025, top + 0.15),
        (CX - shoulder - 0.03, top + 0.03 + reach),
        (CX - shoulder - 0.125, top + reach),
    )
    phrase = f"{fabric_word(item)} {sleeve} sleeve"
    return [Part("sleeve", "fabric", [left, mirrored(left)], phrase, first_only=True)]


def _neckline(item: Item, top: float) -> List[Part]:
    neckline = item.attributes.get("neckline")
    if neckline is None:
        return []
    if neckline == "turtleneck":
        collar = rect(CX - 0.058, top - 0.07, CX + 0.058, top + 0.012)
        ribs = [line([(CX + dx, top - 0.06), (CX + dx, top)], 0.008) for dx in (-0.03, 0.0, 0.03)]
        return [Part("neckline", "fabric", [collar], "turtleneck"), Part("ribs", "shade", ribs)]
    if neckline == "crew":
        shape = ellipse(CX - NECK, top - 0.045, CX + NECK, top + 0.045)
        phrase = "crew neckline"
    elif neckline == "v-neck":
        shape = poly((CX - NECK, top - 0.01), (CX + NECK, top - 0.01), (CX, top + 0.15))
        phrase = "v-neck"
    else:
        shape = rect(CX - NECK, top - 0.01, CX + NECK, top + 0.08)
        phrase = "square neckline"
    return [Part("neckline", "cutout", [shape], phrase, front_only=True)]


def _collar(item: Item, top: float, depth: float = 0.09) -> List[Part]:
    if item.attributes.get("collar") != "collar":
        return []
    left = poly((CX - NECK - 0.012, top - 0.012), (CX - 0.004, top + 0.05), (CX - 0.08, top + depth))
    return [Part("collar", "trim", [left, mirrored(left)], f"{item.trim_colour} collar")]


def _belt(item: Item, y: float, half_width: float) -> List[Part]:
    if item.attributes.get("belt") != "belt":
        return []
    band = rect(CX - half_width, y - 0.022, CX + half_width, y + 0.022)
    buckle = rect(CX - 0.025, y - 0.03, CX + 0.025, y + 0.03)
    return [Part("belt", "belt", [band], f"{item.belt_colour} belt"), Part("buckle", "metal", [buckle])]


def _torso(top: float, shoulder: float, bottom: float, hem: float) -> Shape:
    return poly(
        (CX - NECK, top),
        (CX + NECK, top),
        (CX + shoulder, top + 0.03),
        (CX + hem, bottom),
        (CX - hem, bottom),
        (CX - shoulder, top + 0.03),
    )


def _dress(item: Item) -> List[Part]:
    knobs = item.subcategory.shape
    top, shoulder = 0.15, knobs.get("shoulder", 0.18)
    waist_y, waist = 0.42, shoulder - 0.05
    hem_y = {"short": 0.62, "mid": 0.77, "long": 0.93}[item.attributes["length"]]
    flare = waist + knobs.get("flare", 0.1)
    body = poly(
        (CX - NECK, top),
        (CX + NECK, top),
        (CX + shoulder, top + 0.03),
        (CX + waist, waist_y),
        (CX + flare, hem_y),
        (CX - flare, hem_y),
        (CX - waist, waist_y),
        (CX - shoulder, top + 0.03),
    )
    parts = [Part("garment", "fabric", [body], garment_phrase(item))]
    parts += _sleeves(item, shoulder, top) + _neckline(item, top) + _collar(item, top)
    if item.attributes.get("pocket") == "pockets":
        pocket = rect(CX - waist - 0.02, waist_y + 0.05, CX - waist + 0.07, waist_y + 0.13)
        parts.append(
            Part("pocket", "shade", [pocket, mirrored(pocket)], "patch pocket", front_only=True, first_only=True)
        )
    parts += _belt(item, waist_y, waist + 0.005)
    return parts


def _top(item: Item) -> List[Part]:
    knobs = item.subcategory.shape
    top, shoulder = 0.16, knobs.get("shoulder", 0.2)
    bottom = knobs.get("bottom", 0.66 if item.subcategory.family == "shirt" else 0.64)
    hem = knobs.get("hem", shoulder - 0.01)
    parts = []
    if knobs.get("hood"):
        parts.append(Part("hood", "fabric", [ellipse(CX - 0.11, top - 0.11, CX + 0.11, top + 0.06)], "hood"))
    parts.append(Part("garment", "fabric", [_torso(top, shoulder, bottom, hem)], garment_phrase(item)))
    parts += _sleeves(item, shoulder, top)
    if knobs.get("ribbed"):
        parts.append(Part("hem", "shade", [rect(CX - hem, bottom - 0.04, CX + hem, bottom)], "ribbed hem"))
    if item.subcategory.family == "shirt":
        if item.attributes.get("collar") == "collar":
            parts.append(
                Part("opening", "cutout", [poly((CX - 0.04, top), (CX + 0.04, top), (CX, top + 0.07))], front_only=True)
            )
        else:
            parts += [
                Part("neckline", "cutout", [ellipse(CX - NECK, top - 0.04, CX + NECK, top + 0.04)], front_only=True)
            ]
        placket_end = top + knobs.get("placket", bottom - top - 0.02)
        buttons = [
            ellipse(CX - 0.011, y - 0.011, CX + 0.011, y + 0.011) for y in np.arange(top + 0.1, placket_end, 0.08)
        ]
        parts.append(Part("placket", "shade", [line([(CX, top + 0.06), (CX, placket_end)], 0.012)], front_only=True))
        parts.append(Part("buttons", "trim", buttons, front_only=True))
        parts += _collar(item, top)
    else:
        parts += _neckline(item, top)
    if item.attributes.get("pocket") == "pockets":
        if knobs.get("hood"):
            pocket = poly(
                (CX - 0.11, bottom - 0.17),
                (CX + 0.11, bottom - 0.17),
                (CX + 0.14, bottom - 0.05),
                (CX - 0.14, bottom - 0.05),
            )
            parts.append(Part("pocket", "shade", [pocket], "kangaroo pocket", front_only=True))
        else:
            pocket = rect(CX + 0.05, top + 0.11, CX + 0.13, top + 0.2)
            parts.append(Part("pocket", "shade", [pocket], "chest pocket", front_only=True))
    return parts


def _jacket(item: Item) -> List[Part]:
    knobs = item.subcategory.shape
    top, shoulder = 0.15, knobs.get("shoulder", 0.22)
    bottom = {"short": 0.64, "mid": 0.8, "long": 0.92}[item.attributes["length"]]
    hem = shoulder - 0.01 + (0.03 if bottom > 0.7 else 0.0)
    parts = []
    if knobs.get("hood"):
        parts.append(Part("hood", "fabric", [ellipse(CX - 0.12, top - 0.11, CX + 0.12, top + 0.06)], "hood"))
    parts.append(Part("garment", "fabric", [_torso(top, shoulder, bottom, hem)], garment_phrase(item)))
    parts += _sleeves(item, shoulder, top)
    opening_depth = 0.25 if item.attributes.get("collar") == "collar" else 0.1
    parts.append(Part("inner", "inner", [poly((CX - NECK, top), (CX + NECK, top), (CX, top + opening_depth))]))
    parts.append(Part("closure", "shade", [line([(CX, top + opening_depth), (CX, bottom)], 0.012)]))
    if item.attributes.get("collar") == "collar":
        lapel = poly((CX - NECK - 0.012, top - 0.012), (CX - 0.006, top + opening_depth), (CX - 0.095, top + 0.1))
        parts.append(Part("collar", "trim", [lapel, mirrored(lapel)], f"{item.trim_colour} lapels"))
    if knobs.get("ribbed"):
        parts.append(Part("hem", "shade", [rect(CX - hem, bottom - 0.045, CX + hem, bottom)], "ribbed hem"))
    if item.attributes.get("pocket") == "pockets":
        pocket = rect(CX - hem + 0.03, bottom - 0.16, CX - hem + 0.12, bottom - 0.1)
        parts.append(
            Part("pocket", "shade", [pocket, mirrored(pocket)], "flap pocket", front_only=True, first_only=True)
        )
    parts += _belt(item, top + 0.3, shoulder - 0.02)
    return parts


# ------------------------------------------------------------------ lower body
def _trousers(item: Item) -> List[Part]:
    knobs = item.subcategory.shape
    hem_y = {"short": 0.46, "mid": 0.75, "long": 0.93}[item.attributes["length"]]
    outer = 0.03 + 1.3 * knobs.get("leg", 0.09)
    waistband = rect(CX - 0.17, 0.12, CX + 0.17, 0.175)
    leg = poly((CX - 0.17, 0.17), (CX - 0.004, 0.17), (CX - 0.01, 0.41), (CX - 0.03, hem_y), (CX - outer, hem_y))
    word = {"short": "short", "mid": "cropped", "long": "full-length"}[item.attributes["length"]]
    parts = [
        Part("garment", "fabric", [waistband, leg, mirrored(leg)], garment_phrase(item)),
        Part("leg", "fabric", [leg], f"{word} leg"),
    ]
    if knobs.get("cuff"):
        cuff = poly((CX - 0.03, hem_y - 0.04), (CX - outer, hem_y - 0.04), (CX - outer, hem_y), (CX - 0.03, hem_y))
        parts.append(Part("cuff", "shade", [cuff, mirrored(cuff)], "cuffed hem", first_only=True))
    parts.append(Part("fly", "shade", [line([(CX, 0.18), (CX, 0.3)], 0.01)], front_only=True))
    if item.attributes.get("pocket") == "pockets":
        pocket = poly((CX - 0.165, 0.185), (CX - 0.085, 0.185), (CX - 0.155, 0.29))
        parts.append(
            Part("pocket", "shade", [pocket, mirrored(pocket)], "front pocket", front_only=True, first_only=True)
        )
    parts += _belt(item, 0.1475, 0.172)
    return parts


def _skirt(item: Item) -> List[Part]:
    knobs = item.subcategory.shape
    hem_y = {"short": 0.46, "mid": 0.66, "long": 0.9}[item.attributes["length"]]
    flare = 0.15 + knobs.get("flare", 0.1)
    waistband = rect(CX - 0.15, 0.14, CX + 0.15, 0.19)
    body = poly((CX - 0.15, 0.19), (CX + 0.15, 0.19), (CX + flare, hem_y), (CX - flare, hem_y))
    word = {"short": "mini", "mid": "midi", "long": "maxi"}[item.attributes["length"]]
    parts = [
        Part("garment", "fabric", [waistband, body], garment_phrase(item)),
        Part("hem", "fabric", [rect(CX - flare, hem_y - 0.05, CX + flare, hem_y)], f"{word} hem"),
    ]
    if knobs.get("pleats"):
        pleats = [
            line([(CX + dx * 0.15, 0.2), (CX + dx * flare, hem_y)], 0.008) for dx in (-0.66, -0.33, 0.0, 0.33, 0.66)
        ]
        parts.append(Part("pleats", "shade", pleats, "pleats"))
    if item.attributes.get("pocket") == "pockets":
        pocket = rect(CX - 0.13, 0.25, CX - 0.05, 0.33)
        parts.append(
            Part("pocket", "shade", [pocket, mirrored(pocket)], "patch pocket", front_only=True, first_only=True)
        )
    parts += _belt(item, 0.165, 0.152)
    return parts


# ------------------------------------------------------------------ accessories
def _shoe(item: Item) -> List[Part]:
    knobs = item.subcategory.shape
    sole_layer = "trim" if item.attributes["sole"] == "contrast" else "shade"
    sole_phrase = f"{item.trim_colour} sole" if sole_layer == "trim" else "tonal sole"
    parts: List[Part] = []
    if knobs.get("heel"):
        upper = poly((0.12, 0.74), (0.2, 0.66), (0.42, 0.6), (0.62, 0.5), (0.8, 0.42), (0.84, 0.56))
        sole = poly((0.1, 0.74), (0.5, 0.74), (0.8, 0.54), (0.84, 0.56), (0.5, 0.79), (0.12, 0.79))
        heel = rect(0.76, 0.56, 0.83, 0.84)
        parts += [
            Part("garment", "fabric", [upper], garment_phrase(item)),
            Part("sole", sole_layer, [sole], sole_phrase),
            Part("heel", "shade", [heel], "high heel"),
        ]
        return parts
    sole_top = 0.7 if knobs.get("laces") else 0.72
    sole = poly((0.13, sole_top), (0.87, sole_top), (0.87, 0.79), (0.16, 0.79))
    if knobs.get("straps"):
        straps = [
            poly((x, 0.72), (x + 0.05, 0.56 - (x - 0.2) * 0.08), (x + 0.11, 0.56 - (x - 0.2) * 0.08), (x + 0.07, 0.72))
            for x in (0.2, 0.42, 0.64)
        ]
        parts += [
            Part("garment", "fabric", straps, garment_phrase(item)),
            Part("sole", sole_layer, [sole], sole_phrase),
        ]
        return parts
    upper_points = [(0.13, sole_top), (0.2, 0.6), (0.42, 0.54), (0.6, 0.48)]
    if knobs.get("shaft"):
        shaft_top = 0.48 - knobs["shaft"]
        upper_points += [(0.56, shaft_top), (0.84, shaft_top), (0.87, sole_top)]
    else:
        upper_points += [(0.84, 0.46), (0.87, sole_top)]
    parts.append(Part("garment", "fabric", [poly(*upper_points)], garment_phrase(item)))
    parts.append(Part("sole", sole_layer, [sole], sole_phrase))
    if knobs.get("laces"):
        laces = [
            line([(x, 0.56 - (x - 0.4) * 0.3), (x + 0.06, 0.6 - (x - 0.4) * 0.3)], 0.012) for x in (0.38, 0.45, 0.52)
        ]
        parts.append(Part("laces", "trim", laces, "laces"))
    if knobs.get("saddle"):
        parts.append(
            Part("saddle", "shade", [poly((0.3, 0.57), (0.5, 0.51), (0.52, 0.56), (0.32, 0.62))], "saddle strap")
        )
    return parts


def _bag(item: Item) -> List[Part]:
    knobs = item.subcategory.shape
    if knobs.get("backpack"):
        body = [rect(0.28, 0.32, 0.72, 0.84), ellipse(0.28, 0.2, 0.72, 0.44)]
        handle = [line([(0.44, 0.21), (0.46, 0.13), (0.54, 0.13), (0.56, 0.21)], 0.025)]
        handle_phrase, pocket = "top handle", rect(0.34, 0.58, 0.66, 0.78)
    elif knobs.get("clutch"):
        body = [rect(0.18, 0.46, 0.82, 0.7)]
        handle = [poly((0.18, 0.46), (0.82, 0.46), (0.5, 0.61))]
        handle_phrase, pocket = "flap", rect(0.3, 0.62, 0.7, 0.68)
    elif knobs.get("long_strap"):
        body = [poly((0.34, 0.55), (0.66, 0.55), (0.68, 0.78), (0.32, 0.78))]
        handle = [line([(0.35, 0.56), (0.44, 0.06), (0.56, 0.06), (0.65, 0.56)], 0.016)]
        handle_phrase, pocket = "long strap", rect(0.4, 0.62, 0.6, 0.72)
    else:
        body = [poly((0.27, 0.42), (0.73, 0.42), (0.78, 0.8), (0.22, 0.8))]
        if knobs.get("handles"):
            handle = [
                line([(0.32, 0.43), (0.35, 0.22), (0.45, 0.22), (0.48, 0.43)], 0.025),
                line([(0.52, 0.43), (0.55, 0.22), (0.65, 0.22), (0.68, 0.43)], 0.025),
            ]
            handle_phrase = "top handles"
        else:
            handle = [line([(0.3, 0.43), (0.36, 0.14), (0.64, 0.14), (0.7, 0.43)], 0.02)]
            handle_phrase = "shoulder strap"
        pocket = rect(0.34, 0.56, 0.66, 0.74)
    parts = [Part("garment", "fabric", body, garment_phrase(item)), Part("handle", "shade", handle, handle_phrase)]
    if item.attributes.get("pocket") == "pockets":
        parts.append(Part("pocket", "shade", [pocket], "front pocket", front_only=True))
    return parts


FAMILY_BUILDERS: Dict[str, Callable[[Item], List[Part]]] = {
    "dress": _dress,
    "top": _top,
    "shirt": _top,
    "jacket": _jacket,
    "trousers": _trousers,
    "skirt": _skirt,
    "shoe": _shoe,
    "bag": _bag,
}


def build_parts(item: Item) -> List[Part]:
    """The parts of the item's front view, in drawing order."""
    return FAMILY_BUILDERS[item.subcategory.family](item)


DETAIL_CENTRES = {"shoe": (0.5, 0.62), "bag": (0.5, 0.58), "trousers": (0.5, 0.3), "skirt": (0.5, 0.3)}


def detail_crop(item: Item, rng: np.random.Generator) -> Tuple[float, float, float, float]:
    """A square zoom (half the canvas) around the most detailed area, jittered."""
    cx, cy = DETAIL_CENTRES.get(item.subcategory.family, (0.5, 0.32))
    half = 0.25
    cx = float(np.clip(cx + rng.uniform(-0.05, 0.05), half, 1 - half))
    cy = float(np.clip(cy + rng.uniform(-0.05, 0.05), half, 1 - half))
    return cx - half, cy - half, cx + half, cy + half
