"""Draw an item of the synthetic world with PIL, and its region boxes.

Cheatsheet::

    pixels, regions = render_view(item, "front", image_size=64, seed=0, stream=1)
    pixels.shape      # (64, 64, 3) uint8
    regions           # [{"box": [x, y, w, h], "phrase": "red striped t-shirt"}, ...]

Every view is drawn on a canvas twice the output size and box-filtered down
(cheap anti-aliasing). The shapes come from :mod:`.shapes`; this module fills
them (pattern, trims, cutouts), applies the view (front / back / side / detail
crop), a light background and a lighting gradient. The random numbers depend
only on (seed, stream, item id, view), never on drawing order, so the same seed
gives the same pixels.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .shapes import Part, Shape, build_parts, detail_crop
from .vocab import COLOURS, VIEWS
from .world import Item

MAX_REGIONS = 5
SIDE_SQUASH = 0.62
METAL = (204, 172, 70)

Colour = Tuple[int, int, int]


def _shade(rgb: Sequence[float], factor: float) -> Colour:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in rgb)


def _item_rng(seed: int, stream: int, item_id: int, view_index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, item_id, view_index])


def _pattern_layer(pattern: str, base: Colour, mark: Colour, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size, 3) image of the fabric: the base colour with pattern marks."""
    layer = np.empty((size, size, 3), dtype=np.uint8)
    layer[:] = base
    if pattern == "plain":
        return layer
    period = size * rng.uniform(0.09, 0.13)
    phase = rng.uniform(0, period)
    coords = np.arange(size, dtype=np.float32) + phase
    if pattern == "stripes":
        marks = np.broadcast_to(((coords % period) < period * 0.42)[:, None], (size, size))
    elif pattern == "checks":
        band = (coords % period) < period * 0.3
        marks = band[:, None] | band[None, :]
    else:  # dots on a staggered grid: odd rows shift by half a period
        dy = coords % period - period / 2
        odd_row = (np.floor(coords / period) % 2)[:, None]
        dx = (coords[None, :] + odd_row * period / 2) % period - period / 2
        marks = dx * dx + (dy * dy)[:, None] < (period * 0.24) ** 2
    layer[marks] = mark
    return layer


def _transform(points: Sequence[Tuple[float, float]], view: str, mirror: bool):
    out = []
    for x, y in points:
        if view == "side":
            x = 0.5 + (x - 0.5) * SIDE_SQUASH
        if mirror:
            x = 1.0 - x
        out.append((x, y))
    return out


def _shape_box(shape: Shape, view: str, mirror: bool) -> Tuple[float, float, float, float]:
    points = _transform(shape.points, view, mirror)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    pad = shape.width / 2 if shape.kind == "line" else 0.0
    return min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: Shape,
    size: int,
    view: str,
    mirror: bool,
    fill,
    outline=None,
    outline_width: int = 1,
) -> None:
    points = [(x * size, y * size) for x, y in _transform(shape.points, view, mirror)]
    if shape.kind == "polygon":
        draw.polygon(points, fill=fill, outline=outline, width=outline_width if outline else 0)
    elif shape.kind == "ellipse":
        (x0, y0), (x1, y1) = points
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        draw.ellipse(box, fill=fill, outline=outline, width=outline_width if outline else 0)
    else:  # line
        draw.line(points, fill=fill, width=max(1, int(round(shape.width * size))), joint="curve")


def _part_colour(part: Part, item: Item, base: Colour, background: Colour) -> Colour:
    if part.layer == "cutout":
        return background
    if part.layer == "trim":
        return COLOURS[item.trim_colour]
    if part.layer == "shade":
        return _shade(base, 0.72)
    if part.layer == "belt":
        return COLOURS[item.belt_colour]
    if part.layer == "metal":
        return METAL
    if part.layer == "inner":
        return (236, 236, 232) if sum(base) < 400 else (64, 64, 70)
    raise ValueError(f"unknown part layer {part.layer!r}")


def _draw_item(
    item: Item, view: str, canvas_size: int, base: Colour, background: Colour, fabric: Image.Image
) -> Tuple[Image.Image, List[Part]]:
    """The item on a plain background (canvas size) and the parts that were drawn."""
    mirror = view == "back" and item.subcategory.family in ("shoe", "bag")
    parts = [p for p in build_parts(item) if not (view == "back" and p.front_only)]
    canvas = Image.new("RGB", (canvas_size, canvas_size), background)
    draw = ImageDraw.Draw(canvas)
    outline = _shade(base, 0.55)
    line_width = max(1, canvas_size // 64)
    for part in parts:
        if part.layer == "fabric":
            mask = Image.new("L", (canvas_size, canvas_size), 0)
            mask_draw = ImageDraw.Draw(mask)
            for shape in part.shapes:
                _draw_shape(mask_draw, shape, canvas_size, view, mirror, fill=255)
            canvas.paste(fabric, (0, 0), mask)
            for shape in part.shapes:
                if shape.kind != "line":
                    _draw_shape(
                        draw, shape, canvas_size, view, mirror, fill=None, outline=outline, outline_width=line_width
                    )
            continue
        colour = _part_colour(part, item, base, background)
        edge = None if part.layer == "cutout" else outline
        for shape in part.shapes:
            _draw_shape(
                draw,
                shape,
                canvas_size,
                view,
                mirror,
                fill=colour,
                outline=edge if shape.kind != "line" else None,
                outline_width=line_width,
            )
    return canvas, parts


@lru_cache(maxsize=8)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates of a square canvas (cached: reused per image)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return ys, xs


def _light(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply by a soft linear lighting gradient in a random direction."""
    size = pixels.shape[0]
    ys, xs = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / max(1, size - 1)
    gain = rng.uniform(0.93, 1.04) + rng.uniform(0.0, 0.14) * (ramp - ramp.mean())
    lit = pixels.astype(np.float32) * gain[..., None]
    return np.clip(np.rint(lit), 0, 255).astype(np.uint8)


def _regions(parts: List[Part], view: str, item: Item, crop, image_size: int) -> List[Dict]:
    """Boxes (x, y, w, h) in output pixels of the parts that carry a phrase."""
    mirror = view == "back" and item.subcategory.family in ("shoe", "bag")
    regions = []
    for part in parts:
        if not part.phrase or (view in ("back", "side") and part.name != "garment"):
            continue
        boxes = [_shape_box(shape, view, mirror) for shape in part.shapes[: 1 if part.first_only else None]]
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[2] for b in boxes)
        y1 = max(b[3] for b in boxes)
        area = (x1 - x0) * (y1 - y0)
        if crop is not None:
            cx0, cy0, cx1, cy1 = crop
            scale = 1.0 / (cx1 - cx0)
            x0, x1 = (max(x0, cx0) - cx0) * scale, (min(x1, cx1) - cx0) * scale
            y0, y1 = (max(y0, cy0) - cy0) * scale, (min(y1, cy1) - cy0) * scale
            if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < 0.3 * area * scale * scale:
                continue
        x0, y0 = max(0.0, x0) * image_size, max(0.0, y0) * image_size
        x1, y1 = min(1.0, x1) * image_size, min(1.0, y1) * image_size
        left, top = int(np.floor(x0)), int(np.floor(y0))
        width, height = int(np.ceil(x1)) - left, int(np.ceil(y1)) - top
        if width < 1 or height < 1:
            continue
        regions.append({"box": [left, top, width, height], "phrase": part.phrase})
        if len(regions) == MAX_REGIONS:
            break
    return regions


def render_view(item: Item, view: str, image_size: int, seed: int, stream: int) -> Tuple[np.ndarray, List[Dict]]:
    """Pixels (image_size, image_size, 3) uint8 and region boxes of one view of an item."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    item_rng = _item_rng(seed, stream, item.item_id)
    view_rng = _item_rng(seed, stream, item.item_id, 1 + VIEWS.index(view))
    canvas_size = 2 * image_size
    jitter = item_rng.integers(-10, 11, size=3)
    base = tuple(int(v) for v in np.clip(np.array(COLOURS[item.attributes["colour"]]) + jitter, 0, 255))
    mark = COLOURS[item.trim_colour]
    fabric = Image.fromarray(_pattern_layer(item.attributes["pattern"], base, mark, canvas_size, item_rng))
    tint = view_rng.integers(-5, 6, size=3)
    background = tuple(int(v) for v in np.clip(view_rng.integers(226, 250) + tint, 0, 255))
    drawn_view = "front" if view == "detail" else view
    canvas, parts = _draw_item(item, drawn_view, canvas_size, base, background, fabric)
    crop = None
    if view == "detail":
        crop = detail_crop(item, view_rng)
        x0, y0, x1, y1 = (int(round(v * canvas_size)) for v in crop)
        canvas = canvas.crop((x0, y0, x1, y1)).resize((canvas_size, canvas_size), Image.BILINEAR)
    # Light the small image: same look, a quarter of the arithmetic.
    pixels = _light(np.asarray(canvas.resize((image_size, image_size), Image.BOX)), view_rng)
    return pixels, _regions(parts, drawn_view, item, crop, image_size)
