"""Write the synthetic world in the published layouts (docs/ARCHITECTURE.md "The data directory").

Cheatsheet::

    write_json(path, obj)                          # deterministic bytes
    save_image(path, pixels)                       # .jpg (quality 90, 4:4:4) or .png
    with FashionGenH5(path, rows, image_size) as h5:   # strings written at once
        h5.put_image(row_index, pixels)            # images as they are drawn
    fashiongen_entry(item, split, image_paths)     # FashionViL product JSON entry
    write_fashioniq(root / "fashioniq", triplets)  # captions/ + image_splits/
    write_polyvore(root / "polyvore_outfits", world, rng)

Nothing here draws pixels; generate.py renders and hands the arrays over.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import h5py
import numpy as np
from PIL import Image

from .fashioniq import FASHIONIQ_SPLITS, Triplet, asin
from .outfits import POLYVORE_SPLITS, OutfitWorld, incompatible_mix, semantic_category
from .vocab import CATEGORY_ID, SEMANTIC_CATEGORY, SUBCATEGORIES, SUBCATEGORY_ID
from .world import Item

JPEG_QUALITY = 90
FASHIONGEN_STRING_FIELDS = (
    "input_name",
    "input_description",
    "input_concat_description",
    "input_category",
    "input_subcategory",
    "input_pose",
    "input_gender",
    "input_composition",
    "input_department",
    "input_season",
)


def write_json(path: Path, obj, indent=None) -> None:
    """JSON with a fixed key order and ASCII escapes: same object -> same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=True) + "\n", encoding="utf-8")


def save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # 4:4:4 chroma: small images with fine stripes keep their colours.
        image.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        image.save(path, format="PNG", optimize=False)


# ------------------------------------------------------------------ FashionGen
@dataclass
class ImageRow:
    """One row of the FashionGen HDF5 (one view of one product)."""

    item: Item
    view_index: int

    @property
    def pose(self) -> str:
        return self.item.views[self.view_index]


def _byte_column(values: Sequence[str]) -> np.ndarray:
    encoded = [v.encode("utf-8") for v in values]
    width = max([1] + [len(v) for v in encoded])
    return np.array(encoded, dtype=f"S{width}").reshape(-1, 1)


class FashionGenH5:
    """fashiongen_256_256_<split>.h5 with the published keys; images are filled row by row."""

    def __init__(self, path: Path, rows: Sequence[ImageRow], image_size: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(path, "w", track_order=True)
        items = [row.item for row in rows]
        strings = {
            "input_name": [i.title for i in items],
            "input_description": [i.description for i in items],
            "input_concat_description": [i.text for i in items],
            "input_category": [i.category for i in items],
            "input_subcategory": [i.subcategory.name.upper() for i in items],
            "input_pose": [row.pose for row in rows],
            "input_gender": [i.gender for i in items],
            "input_composition": [i.composition for i in items],
            "input_department": [i.department for i in items],
            "input_season": [i.season for i in items],
        }
        count = len(rows)
        self.images = self.file.create_dataset(
            "input_image", shape=(count, image_size, image_size, 3), dtype=np.uint8, track_times=False
        )
        for name in FASHIONGEN_STRING_FIELDS:
            self.file.create_dataset(name, data=_byte_column(strings[name]), track_times=False)
        self.file.create_dataset(
            "input_productID",
            data=np.array([i.item_id for i in items], dtype=np.int64).reshape(-1, 1),
            track_times=False,
        )
        self.file.create_dataset(
            "input_msrpUSD", data=np.array([i.price for i in items], dtype=np.float32).reshape(-1, 1), track_times=False
        )
        self.file.create_dataset("index", data=np.arange(count, dtype=np.int64).reshape(-1, 1), track_times=False)
        self.file.create_dataset(
            "index_2", data=np.array([row.view_index for row in rows], dtype=np.int64).reshape(-1, 1), track_times=False
        )

    def put_image(self, row_index: int, pixels: np.ndarray) -> None:
        self.images[row_index] = pixels

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "FashionGenH5":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fashiongen_image_path(split: str, item: Item, view_index: int) -> str:
    """Path relative to fashiongen/ of one view's JPEG."""
    return f"images/{split}/{item.item_id}_{view_index}.jpg"


def fashiongen_entry(item: Item, split: str) -> Dict:
    """One product of FashionViL's JSON (+ our ground truth: category names, poses, attributes)."""
    return {
        "images": [fashiongen_image_path(split, item, v) for v in range(len(item.views))],
        "id": item.item_id,
        "title": item.title,
        "description": item.description,
        "attributes_id": [],
        "category_id": CATEGORY_ID[item.category],
        "subcategory_id": SUBCATEGORY_ID[item.subcategory.name],
        "category": item.category,
        "subcategory": item.subcategory.name.upper(),
        "poses": list(item.views),
        "attributes": dict(item.attributes),
        "style": item.style,
    }


# ------------------------------------------------------------------ FashionIQ
def fashioniq_image_path(item: Item) -> str:
    return f"images/{asin(item)}.png"


def write_fashioniq(root: Path, triplets: Dict[str, Dict[str, List[Triplet]]]) -> Dict:
    """captions/cap.<cat>.<split>.json, image_splits/split.<cat>.<split>.json and a
    ground-truth sidecar synth_asin_attributes.json; returns the counts."""
    counts: Dict[str, Dict[str, Dict[str, int]]] = {}
    truth = {}
    for category, by_split in triplets.items():
        counts[category] = {}
        for split in FASHIONIQ_SPLITS:
            split_triplets = by_split[split]
            captions = [
                {"target": asin(t.target), "candidate": asin(t.reference), "captions": list(t.captions)}
                for t in split_triplets
            ]
            gallery = []
            for t in split_triplets:
                for item in (t.reference, t.target, *t.distractors):
                    gallery.append(asin(item))
                    truth[asin(item)] = {
                        "category": category,
                        "split": split,
                        "subcategory": item.subcategory.name,
                        "attributes": dict(item.attributes),
                    }
            write_json(root / "captions" / f"cap.{category}.{split}.json", captions)
            write_json(root / "image_splits" / f"split.{category}.{split}.json", gallery)
            counts[category][split] = {
                "pairs": len(captions),
                "gallery": len(gallery),
                "unique_targets": len({c["target"] for c in captions}),
            }
    write_json(root / "synth_asin_attributes.json", truth)
    return counts


# ------------------------------------------------------------------ Polyvore
def polyvore_category_id(item: Item) -> str:
    return str(SUBCATEGORY_ID[item.subcategory.name] + 1)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _item_metadata(item: Item) -> Dict:
    gender = "Women's Fashion" if item.gender == "WOMEN" else "Men's Fashion"
    return {
        "url_name": _slug(item.title),
        "description": item.description,
        # The real file spells this key "catgeories"; readers look for that spelling.
        "catgeories": [gender, item.category.title(), item.subcategory.name.title()],
        "title": item.title,
        "related": [item.subcategory.name, item.category.lower()],
        "category_id": polyvore_category_id(item),
        "semantic_category": semantic_category(item),
    }


def polyvore_image_path(item: Item) -> str:
    return f"images/{item.item_id}.jpg"


def write_polyvore(root: Path, world: OutfitWorld, rng: np.random.Generator) -> Dict:
    """Metadata, categories.csv, both versions' outfits, FITB, compatibility and OCIR."""
    metadata = {str(item.item_id): _item_metadata(item) for item in world.items}
    write_json(root / "polyvore_item_metadata.json", metadata)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "categories.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for sub in SUBCATEGORIES:
            writer.writerow([SUBCATEGORY_ID[sub.name] + 1, sub.name.title(), SEMANTIC_CATEGORY[sub.category]])
    counts: Dict = {"items": len(world.items)}
    splits_by_version = {
        "disjoint": {o.set_id: o.split for o in world.outfits},
        "nondisjoint": world.nondisjoint_split,
    }
    for version, split_of in splits_by_version.items():
        version_counts = {}
        for split in POLYVORE_SPLITS:
            outfits = [o for o in world.outfits if split_of[o.set_id] == split]
            outfit_json = [
                {
                    "set_id": o.set_id,
                    "items": [
                        {"item_id": str(item.item_id), "index": position + 1} for position, item in enumerate(o.items)
                    ],
                }
                for o in outfits
            ]
            write_json(root / version / f"{split}.json", outfit_json)
            fitb = _fill_in_the_blank(rng, outfits)
            write_json(root / version / f"fill_in_blank_{split}.json", fitb)
            compatibility = _compatibility_lines(rng, outfits)
            (root / version / f"compatibility_{split}.txt").write_text(
                "".join(line + "\n" for line in compatibility), encoding="utf-8"
            )
            version_counts[split] = {
                "outfits": len(outfits),
                "fill_in_blank": len(fitb),
                "compatibility": len(compatibility),
                "items": len({item.item_id for o in outfits for item in o.items}),
            }
        for split, ocir_split in (("train", "train"), ("test", "test")):
            outfits = [o for o in world.outfits if split_of[o.set_id] == split]
            questions = _ocir_questions(rng, outfits, every_item=ocir_split == "train")
            write_json(root / f"ocir_{version}_{ocir_split}.json", questions)
            version_counts[split]["ocir"] = len(questions)
        counts[version] = version_counts
    return counts


def _ref(outfit, position: int) -> str:
    return f"{outfit.set_id}_{position + 1}"


def _fill_in_the_blank(rng: np.random.Generator, outfits) -> List[Dict]:
    """One question per outfit: the blank's answer among 4 items of its semantic category."""
    questions = []
    for outfit in outfits:
        blank = int(rng.integers(len(outfit.items)))
        category = semantic_category(outfit.items[blank])
        wrong = [
            (o, p)
            for o in outfits
            if o is not outfit
            for p, item in enumerate(o.items)
            if semantic_category(item) == category and item.item_id != outfit.items[blank].item_id
        ]
        if len(wrong) < 3:
            wrong = [
                (o, p)
                for o in outfits
                if o is not outfit
                for p in range(len(o.items))
                if o.items[p].item_id != outfit.items[blank].item_id
            ]
        if len(wrong) < 3:
            continue
        picks = rng.choice(len(wrong), size=3, replace=False)
        answers = [_ref(outfit, blank)] + [_ref(*wrong[int(i)]) for i in picks]
        answers = [answers[int(i)] for i in rng.permutation(4)]
        questions.append(
            {
                "question": [_ref(outfit, p) for p in range(len(outfit.items)) if p != blank],
                "answers": answers,
                "blank_position": blank + 1,
            }
        )
    return questions


def _compatibility_lines(rng: np.random.Generator, outfits) -> List[str]:
    """ "1 <items>" for every outfit and "0 <items>" for a rule-breaking mix of other items."""
    lines = []
    for outfit in outfits:
        lines.append("1 " + " ".join(_ref(outfit, p) for p in range(len(outfit.items))))
        mix = incompatible_mix(rng, outfit, outfits)
        if mix is not None:
            lines.append("0 " + " ".join(_ref(o, p) for o, p in mix))
    return lines


def _ocir_questions(rng: np.random.Generator, outfits, every_item: bool) -> List[Dict]:
    """FashionViL's OCIR form; train asks for every item in turn, test for one per outfit."""
    questions = []
    for outfit in outfits:
        ids = [str(item.item_id) for item in outfit.items]
        blanks = range(len(ids)) if every_item else [int(rng.integers(len(ids)))]
        for blank in blanks:
            questions.append({"question": [i for p, i in enumerate(ids) if p != blank], "blank": ids[blank]})
    return questions
