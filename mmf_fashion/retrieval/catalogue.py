"""Galleries read from a data directory in the published layouts (DATA_FORMATS.md).

Cheatsheet::

    from mmf_fashion.retrieval.catalogue import dataset_gallery

    items, records = dataset_gallery("fashiongen", "val", "data/synthetic")           # image paths
    items, records = dataset_gallery("fashiongen", "val", "data/synthetic", "text")   # product texts
    items, records = dataset_gallery("fashioniq", "val", "data/synthetic")            # the 3 categories
    items, records = dataset_gallery("polyvore_ocir", "test", "data/synthetic")

    records[0]   # {"path": ".../12_0.jpg", "product_id": 12}: extra fields stored in the index

- fashiongen: <data_dir>/fashiongen/<split>_info.json (FashionViL's product
  JSON): every view of every product; text = title + ". " + description;
- fashioniq: image_splits/split.<category>.<split>.json asins, images/<asin>.png|.jpg;
- polyvore_ocir: items of polyvore_outfits/<version>/<split>.json (split val
  is read as valid), images/<item_id>.jpg.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

DATASETS = ("fashiongen", "fashioniq", "polyvore_ocir")
FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _existing(path: Path, where: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} not found")
    return str(path)


def _fashiongen(root: Path, split: str, modality: str):
    info_path = root / "fashiongen" / f"{split}_info.json"
    entries = _read_json(info_path)
    if not isinstance(entries, list):
        raise ValueError(f"{info_path}: expected a list of products")
    items, records = [], []
    for number, entry in enumerate(entries):
        where = f"{info_path}, record {number}"
        for field in ("id", "images") if modality == "image" else ("id", "title"):
            if field not in entry:
                raise ValueError(f"{where}: field '{field}' missing")
        if modality == "text":
            description = entry.get("description") or ""
            items.append(f"{entry['title']}. {description}".strip() if description else entry["title"])
            records.append({"product_id": entry["id"]})
            continue
        for image in entry["images"]:
            items.append(_existing(root / "fashiongen" / image, where))
            records.append({"product_id": entry["id"]})
    return items, records


def _fashioniq(root: Path, split: str):
    base = root / "fashioniq"
    items, records, seen = [], [], set()
    for category in FASHIONIQ_CATEGORIES:
        split_path = base / "image_splits" / f"split.{category}.{split}.json"
        if not split_path.is_file():
            continue
        for number, asin in enumerate(_read_json(split_path)):
            if asin in seen:
                continue
            seen.add(asin)
            candidates = [base / "images" / f"{asin}{suffix}" for suffix in (".png", ".jpg")]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"{split_path}, record {number}: no image for asin {asin}")
            items.append(str(found))
            records.append({"asin": asin, "category": category})
    if not items:
        raise FileNotFoundError(f"{base / 'image_splits'}: no split.<category>.{split}.json")
    return items, records


def _polyvore(root: Path, split: str, version: str):
    base = root / "polyvore_outfits"
    split = "valid" if split == "val" else split
    outfits_path = base / version / f"{split}.json"
    items, records, seen = [], [], set()
    for number, outfit in enumerate(_read_json(outfits_path)):
        for item in outfit.get("items", []):
            item_id = str(item.get("item_id", ""))
            if not item_id:
                raise ValueError(f"{outfits_path}, record {number}: an item has no 'item_id'")
            if item_id in seen:
                continue
            seen.add(item_id)
            items.append(_existing(base / "images" / f"{item_id}.jpg", f"{outfits_path}, record {number}"))
            records.append({"item_id": item_id})
    return items, records


def dataset_gallery(
    dataset: str, split: str, data_dir: str, modality: str = "image", polyvore_version: str = "nondisjoint"
) -> Tuple[List[str], List[Dict]]:
    """(items: image paths or texts, records: per-item fields) of a data set's split."""
    root = Path(data_dir)
    if dataset not in DATASETS:
        raise ValueError(f"--dataset {dataset!r}: galleries can be read for {DATASETS}")
    if modality == "text" and dataset != "fashiongen":
        raise ValueError(f"a text gallery can be read for fashiongen only, not {dataset}")
    if dataset == "fashiongen":
        return _fashiongen(root, split, modality)
    if dataset == "fashioniq":
        return _fashioniq(root, split)
    return _polyvore(root, split, polyvore_version)
