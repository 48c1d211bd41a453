"""Galleries read from a data directory in the published layouts (DATA_FORMATS.md).

Cheatsheet::

    from mmf_fashion.retrieval.catalogue import dataset_gallery

    items, records = dataset_gallery("fashiongen", "val", "data/synthetic")           # images
    items, records = dataset_gallery("fashiongen", "val", "data/synthetic", "text")   # product texts
    items, records = dataset_gallery("fashiongen", "val", "data/synthetic", fashiongen_format="h5")
    items, records = dataset_gallery("fashioniq", "val", "data/synthetic")            # the 3 categories
    items, records = dataset_gallery("polyvore_ocir", "test", "data/synthetic")

    records[0]   # {"product_id": 12} (+ "row": 5 from the HDF5): extra fields stored in the index

- fashiongen: the fashiongen builder's layout choice (format auto, its
  defaults.yaml files) and record readers: FashionViL's <split>_info.json
  (items: image paths) or the published fashiongen_256_256_{train,validation}.h5
  (items: images.H5Image rows; val and test read the validation file);
  json when both are there (logged, as the builder does). Every view of
  every product; text = title + ". " + description, one per product;
- fashioniq: image_splits/split.<category>.<split>.json asins, images/<asin>.png|.jpg;
- polyvore_ocir: items of the published polyvore_outfits/<version>/<split>.json
  (split val is read as valid), images/<item_id>.jpg. FashionViL's
  ocir_*.json hold questions, not a split's items, so they are not read
  here (the OCIR builder's test gallery is that of --split test).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Tuple

logger = logging.getLogger(__name__)

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


def _fashiongen_defaults() -> Dict:
    """dataset_config.fashiongen of the builder's defaults.yaml (files, format, image_root)."""
    import yaml

    from mmf_fashion.datasets.builders.fashiongen.builder import FashionGenBuilder

    with open(FashionGenBuilder.config_path(), encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle)["dataset_config"]["fashiongen"])


def _fashiongen(root: Path, split: str, modality: str, fmt: str = "auto"):
    # the builder's own layout choice and readers, so the index and training read the same records
    from mmf_fashion.datasets.builders.fashiongen import records as fg
    from mmf_fashion.datasets.builders.fashiongen.dataset import fashiongen_layout_choice
    from mmf_fashion.datasets.common import BadSampleError, LazyH5File
    from mmf_fashion.datasets.layouts import choose_layout
    from mmf_fashion.retrieval.images import H5Image

    config = {**_fashiongen_defaults(), "format": fmt}
    splits = sorted({name for files in config["files"].values() for name in files})
    if split not in splits:
        raise ValueError(f"--split {split}: the fashiongen builder's files name the splits {splits}")
    reader = fg.ReaderContext(str(root), config)
    flag = "dataset_config.fashiongen.format"
    choice = fashiongen_layout_choice(config, split, flag, "fashiongen")
    layout, message = choose_layout(choice, reader.data_dir, allow_outside_root=reader.allow_paths_outside_root)
    if message:
        # "both layouts" deserves a warning: the other one would give other items
        several = "both layouts" in message
        logger.log(logging.WARNING if several else logging.INFO, message)

    items, records = [], []
    if layout.name == "json":
        image_root = str(config.get("image_root") or "fashiongen")
        for product in fg.read_json_products(reader, layout.path, fg.plain_vocabs(), image_root, need_labels=False):
            if modality == "text":
                items.append(product.text)
                records.append({"product_id": product.product_id})
                continue
            for view in product.views:
                if not os.path.isfile(view.source):  # fail before any embedding, naming the record
                    raise BadSampleError(
                        product.file,
                        product.record,
                        view.label,
                        f"image file {view.source} does not exist",
                        "missing_image",
                    )
                items.append(str(view.source))
                records.append({"product_id": product.product_id})
        return items, records

    path = reader.data_path(layout.path, file="dataset_config.fashiongen", record="files", field="files")
    h5 = LazyH5File(path)
    try:
        has_description = "input_description" in set(h5.keys())
        vocabs = fg.label_vocabs(reader, "h5", h5_paths=[path])  # the file's own names: no label is unknown
        products = fg.read_h5_products(reader, h5, vocabs)
        if modality == "text":
            if not has_description:
                logger.warning(f"{path}: no input_description dataset; texts are the titles (input_name) only")
            for product in products:
                items.append(fg.h5_product_text(product, h5, has_description))
                records.append({"product_id": product.product_id, "row": product.text_row})
            return items, records
    finally:
        h5.close()
    for product in products:
        for view in product.views:
            items.append(H5Image(path, view.source))
            records.append({"product_id": product.product_id, "row": view.source})
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
    if not outfits_path.is_file():
        ocir = sorted(path.name for path in base.glob(f"ocir_{version}_*.json"))
        found = (
            f" FashionViL's OCIR question files are there ({', '.join(ocir)}), but they do not list a split's items."
            if ocir
            else ""
        )
        raise FileNotFoundError(
            f"polyvore_ocir ({split}): {outfits_path} not found: the gallery is every item of the split's "
            f"outfits, read from the published Polyvore Outfits ({version}/{{train,valid,test}}.json with "
            f"images/<item_id>.jpg).{found} Put the published {version}/{split}.json in {base}, or pick a "
            "--split / --polyvore-version that is there."
        )
    items, records, seen = [], [], set()
    outfits = _read_json(outfits_path)
    if not isinstance(outfits, list):
        raise ValueError(f"{outfits_path}: expected a list of outfits {{set_id, items}}")
    for number, outfit in enumerate(outfits):
        for item in outfit.get("items", []) if isinstance(outfit, dict) else []:
            item_id = str(item.get("item_id", "")) if isinstance(item, dict) else ""
            if not item_id:
                raise ValueError(f"{outfits_path}, record {number}: an item has no 'item_id'")
            if item_id in seen:
                continue
            seen.add(item_id)
            items.append(_existing(base / "images" / f"{item_id}.jpg", f"{outfits_path}, record {number}"))
            records.append({"item_id": item_id})
    return items, records


def dataset_gallery(
    dataset: str,
    split: str,
    data_dir: str,
    modality: str = "image",
    polyvore_version: str = "nondisjoint",
    fashiongen_format: str = "auto",
) -> Tuple[List, List[Dict]]:
    """(items: image paths, H5Image rows or texts, records: per-item fields)
    of a data set's split. fashiongen_format: auto | json | h5, as the
    builder's dataset_config.fashiongen.format."""
    root = Path(data_dir)
    if dataset not in DATASETS:
        raise ValueError(f"--dataset {dataset!r}: galleries can be read for {DATASETS}")
    if modality == "text" and dataset != "fashiongen":
        raise ValueError(f"a text gallery can be read for fashiongen only, not {dataset}")
    if dataset == "fashiongen":
        return _fashiongen(root, split, modality, fashiongen_format)
    if dataset == "fashioniq":
        return _fashioniq(root, split)
    return _polyvore(root, split, polyvore_version)
