"""FashionGen readers: products (with their views) from the published HDF5 or
FashionViL's product JSON, label vocabularies, region boxes and attributes.

Cheatsheet::

    from mmf_fashion.datasets.builders.fashiongen.records import (
        read_json_products, read_h5_products, read_regions, LabelVocab)
    products = read_json_products(dataset, "fashiongen/train_info.json", vocabs)
    products = read_h5_products(dataset, h5, vocabs)      # h5: LazyH5File
    regions = read_regions(dataset, "fashiongen/regions_train.json")
    # {"1002_0": [Region(box=[x, y, w, h], phrase="red collar", record=...)], ...}

``dataset`` is a FashionDataset: the readers use its data_path() (safe paths)
and handle_bad() (on_bad_sample policy; records dropped here are counted as
dropped while loading). A product's text is title + ". " + description.
Code that needs the records without an MMF dataset (the retrieval index)
passes a ReaderContext instead::

    reader = ReaderContext("data/synthetic", {"image_root": "fashiongen"})
    products = read_json_products(reader, "fashiongen/val_info.json", plain_vocabs(), need_labels=False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from mmf_fashion.datasets.common import (
    BadSampleError,
    DataDirPaths,
    LazyH5File,
    decode_text,
    read_json,
    require_field,
    require_int,
    require_text,
)

H5_REQUIRED = ("input_image", "input_productID", "input_name", "input_category", "input_subcategory")
H5_FILES = {"train": "fashiongen_256_256_train.h5", "val": "fashiongen_256_256_validation.h5"}
JSON_FILES = {"train": "train_info.json", "val": "val_info.json", "test": "test_info.json"}
MANIFEST = "synth_manifest.json"


@dataclass
class View:
    """One image of a product: a file path, or a row of the HDF5 file."""

    source: Any  # absolute path (str) or HDF5 row (int)
    label: str  # how errors name it
    key: str  # "<product id>_<view index>", the region key
    image_id: int


@dataclass
class Product:
    product_id: int
    views: List[View]
    file: str
    record: str
    text: Optional[str] = None  # None: read lazily from the HDF5 row text_row
    text_row: Optional[int] = None
    category_id: int = -1
    subcategory_id: int = -1
    attribute_ids: Optional[List[int]] = None  # None: derive from the text


@dataclass
class Region:
    box: List[float]
    phrase: str
    file: str
    record: str


@dataclass
class LabelVocab:
    """Label ids of one level (category or subcategory).

    ids: JSON form, integer ids in [0, size). names: HDF5 form, the index of
    the name in ``names``. An id or name outside is an ``unknown_category``.
    """

    level: str
    names: Optional[List[str]] = None
    size: Optional[int] = None
    _index: Dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.names is not None:
            self._index = {name.strip().upper(): i for i, name in enumerate(self.names)}
            self.size = len(self.names) if self.size is None else self.size

    def from_id(self, value: Any, *, file: str, record: str, field_name: str) -> int:
        label = require_int(value, file=file, record=record, field=field_name)
        if label < 0 or (self.size is not None and label >= self.size):
            known = f"[0, {self.size})" if self.size is not None else "non-negative ids"
            raise BadSampleError(
                file, record, field_name, f"unknown {self.level} id {label} (known: {known})", "unknown_category"
            )
        return label

    def from_name(self, name: str, *, file: str, record: str, field_name: str) -> int:
        key = name.strip().upper()
        if key not in self._index:
            raise BadSampleError(
                file,
                record,
                field_name,
                f"unknown {self.level} '{name}' (known: {', '.join(list(self._index)[:12])}"
                f"{' ...' if len(self._index) > 12 else ''})",
                "unknown_category",
            )
        return self._index[key]


class ReaderContext(DataDirPaths):
    """The part of a FashionDataset the readers here use (data_dir, options,
    safe paths, handle_bad), without MMF: every bad record is an error
    (on_bad_sample: error), since nothing here counts skips.

    config: the dataset config (dict or DictConfig), e.g. the builder's defaults."""

    def __init__(self, data_dir: str, config: Any = None, dataset_name: str = "fashiongen"):
        self.data_dir = os.path.abspath(str(data_dir))
        self.config = config if config is not None else {}
        self.dataset_name = dataset_name
        self.allow_paths_outside_root = bool(self.option("allow_paths_outside_root", False))

    def option(self, key: str, default: Any = None) -> Any:
        value = self.config.get(key, default) if hasattr(self.config, "get") else default
        return default if value is None else value

    def handle_bad(self, error: BadSampleError, at_load: bool = False, index: Optional[int] = None) -> None:
        raise error


def plain_vocabs() -> Dict[str, LabelVocab]:
    """Vocabularies that accept any non-negative id (JSON form) and know no names."""
    return {level: LabelVocab(level) for level in ("category", "subcategory")}


def join_text(title: str, description: str) -> str:
    parts = [part.strip() for part in (title, description) if part and part.strip()]
    return ". ".join(parts)


def read_manifest(data_dir: str) -> Optional[dict]:
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path)
    except ValueError:
        return None


def label_vocabs(
    dataset, fmt: str, h5_paths: Sequence[str] = (), json_paths: Sequence[str] = ()
) -> Dict[str, LabelVocab]:
    """Category and subcategory vocabularies, in this order of preference:
    the dataset config (category_names / subcategory_names / num_categories /
    num_subcategories), the synthetic world's manifest, or every split file."""
    manifest = read_manifest(dataset.data_dir) or {}
    manifest_names = {
        "category": manifest.get("categories"),
        "subcategory": [s["name"] for s in sorted(manifest.get("subcategories", []), key=lambda s: s["id"])] or None,
    }
    vocabs = {}
    for level, column in (("category", "input_category"), ("subcategory", "input_subcategory")):
        names = dataset.option(f"{level}_names") or manifest_names[level]
        size = dataset.option(f"num_{level.replace('category', 'categories')}")
        if names is not None:
            names = [str(n) for n in names]
        if fmt == "h5" and names is None:
            seen = set()
            for path in h5_paths:
                h5 = LazyH5File(path)
                try:
                    if column in h5.keys():
                        for raw in h5.read_column(column).reshape(-1):
                            try:
                                seen.add(decode_text(raw, file=path, record="-", field=column).strip().upper())
                            except BadSampleError:
                                continue
                finally:
                    h5.close()
            names = sorted(seen)
        if fmt == "json" and names is None and size is None:
            largest = -1
            for path in json_paths:
                for entry in read_json(path) if os.path.isfile(path) else []:
                    value = entry.get(f"{level}_id") if isinstance(entry, dict) else None
                    if isinstance(value, int) and not isinstance(value, bool):
                        largest = max(largest, value)
            size = largest + 1 if largest >= 0 else None
        vocabs[level] = LabelVocab(level, names=names, size=int(size) if size is not None else None)
    return vocabs


def _attribute_ids(entry: dict, num_attributes: Optional[int], *, file: str, record: str) -> Optional[List[int]]:
    if "attributes_id" not in entry or entry["attributes_id"] is None:
        return None
    values = entry["attributes_id"]
    if not isinstance(values, list):
        raise BadSampleError(file, record, "attributes_id", f"expected a list of ints, got {values!r}", "bad_value")
    ids = [require_int(v, file=file, record=record, field="attributes_id") for v in values]
    if num_attributes is not None and any(not 0 <= i < num_attributes for i in ids):
        raise BadSampleError(
            file, record, "attributes_id", f"ids {ids} outside the {num_attributes} mined attributes", "bad_value"
        )
    return ids


def read_json_products(
    dataset,
    relative_path: str,
    vocabs: Dict[str, LabelVocab],
    image_root: str = "fashiongen",
    num_attributes: Optional[int] = None,
    first_image_id: int = 0,
    need_labels: bool = True,
) -> List[Product]:
    """FashionViL's product JSON: {"images", "id", "title", "description",
    "category_id", "subcategory_id", "attributes_id"} per product. Image
    paths are relative to <data_dir>/<image_root>. need_labels=False (a
    retrieval gallery): a product without category_id / subcategory_id gets -1."""
    path = dataset.data_path(
        relative_path, file=f"dataset_config.{dataset.dataset_name}", record="files", field="files"
    )
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of products, got {type(entries).__name__}")
    products: List[Product] = []
    image_id = first_image_id
    for index, entry in enumerate(entries):
        record = f"entry {index}" + (f" (id {entry.get('id')})" if isinstance(entry, dict) and "id" in entry else "")
        try:
            product_id = require_int(
                require_field(entry, "id", file=path, record=record), file=path, record=record, field="id"
            )
            images = require_field(entry, "images", file=path, record=record)
            if not isinstance(images, list) or not images:
                raise BadSampleError(
                    path, record, "images", f"expected a non-empty list of image paths, got {images!r}", "missing_field"
                )
            title = decode_text(
                require_field(entry, "title", file=path, record=record), file=path, record=record, field="title"
            )
            description = decode_text(
                require_field(entry, "description", file=path, record=record),
                file=path,
                record=record,
                field="description",
            )
            text = require_text(join_text(title, description), file=path, record=record, field="title+description")
            category, subcategory = -1, -1
            if need_labels or entry.get("category_id") is not None:
                category = vocabs["category"].from_id(
                    require_field(entry, "category_id", file=path, record=record),
                    file=path,
                    record=record,
                    field_name="category_id",
                )
            if need_labels or entry.get("subcategory_id") is not None:
                subcategory = vocabs["subcategory"].from_id(
                    require_field(entry, "subcategory_id", file=path, record=record),
                    file=path,
                    record=record,
                    field_name="subcategory_id",
                )
            views = []
            for view_index, image in enumerate(images):
                field_name = f"images[{view_index}]"
                resolved = dataset.data_path(image, file=path, record=record, field=field_name, root=image_root)
                stem = os.path.splitext(os.path.basename(str(image)))[0]
                views.append(View(resolved, field_name, stem, image_id + view_index))
            attributes = _attribute_ids(entry, num_attributes, file=path, record=record)
        except BadSampleError as error:
            dataset.handle_bad(error, at_load=True)
            continue
        image_id += len(views)
        products.append(
            Product(
                product_id,
                views,
                path,
                record,
                text=text,
                category_id=category,
                subcategory_id=subcategory,
                attribute_ids=attributes,
            )
        )
    return products


def read_h5_products(dataset, h5: LazyH5File, vocabs: Dict[str, LabelVocab]) -> List[Product]:
    """Rows of the published HDF5 grouped into products by input_productID.

    Only the id and label columns are read here; images and texts are read
    row by row when a sample is built."""
    path = h5.path
    try:
        keys = set(h5.keys())
        missing = [key for key in H5_REQUIRED if key not in keys]
        rows = int(h5.shape("input_productID")[0]) if "input_productID" in keys else 0
        if missing:
            error = BadSampleError(
                path,
                "every row",
                missing[0],
                f"HDF5 dataset(s) {missing} missing (found: {sorted(keys)}); the published keys are "
                f"{list(H5_REQUIRED)}",
                "missing_field",
            )
            dataset.handle_bad(error, at_load=True)
            return []
        lengths = {key: int(h5.shape(key)[0]) for key in H5_REQUIRED}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{path}: HDF5 datasets have different lengths {lengths}")
        ids = h5.read_column("input_productID").reshape(rows, -1)[:, 0]
        categories = h5.read_column("input_category").reshape(-1)
        subcategories = h5.read_column("input_subcategory").reshape(-1)
    finally:
        h5.close()  # workers open their own handle on first use

    by_product: Dict[int, Product] = {}
    order: List[int] = []
    for row in range(rows):
        record = f"row {row}"
        try:
            product_id = require_int(ids[row], file=path, record=record, field="input_productID")
            record = f"row {row} (product {product_id})"
            category = vocabs["category"].from_name(
                decode_text(categories[row], file=path, record=record, field="input_category"),
                file=path,
                record=record,
                field_name="input_category",
            )
            subcategory = vocabs["subcategory"].from_name(
                decode_text(subcategories[row], file=path, record=record, field="input_subcategory"),
                file=path,
                record=record,
                field_name="input_subcategory",
            )
        except BadSampleError as error:
            dataset.handle_bad(error, at_load=True)
            continue
        product = by_product.get(product_id)
        if product is None:
            product = Product(
                product_id, [], path, record, text_row=row, category_id=category, subcategory_id=subcategory
            )
            by_product[product_id] = product
            order.append(product_id)
        product.views.append(View(row, f"input_image row {row}", f"{product_id}_{len(product.views)}", row))
    return [by_product[pid] for pid in order]


def h5_product_text(product: Product, h5: LazyH5File, has_description: bool) -> str:
    row = product.text_row
    record = f"row {row} (product {product.product_id})"
    title = decode_text(h5.read("input_name", row), file=h5.path, record=record, field="input_name")
    description = ""
    if has_description:
        description = decode_text(
            h5.read("input_description", row), file=h5.path, record=record, field="input_description"
        )
    return require_text(
        join_text(title, description), file=h5.path, record=record, field="input_name+input_description"
    )


def read_regions(dataset, relative_path: str) -> Dict[str, List[Region]]:
    """regions_<split>.json -> {"<product id>_<view>": [Region, ...]} (empty when absent)."""
    path = os.path.join(dataset.data_dir, relative_path)
    if not os.path.isfile(path):
        return {}
    entries = read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of images with regions")
    regions: Dict[str, List[Region]] = {}
    for index, entry in enumerate(entries):
        record = f"entry {index}"
        try:
            image = require_field(entry, "image", file=path, record=record)
            record = f"entry {index} ({image})"
            items = require_field(entry, "regions", file=path, record=record)
            if not isinstance(items, list):
                raise BadSampleError(path, record, "regions", f"expected a list, got {items!r}", "missing_field")
        except BadSampleError as error:
            dataset.handle_bad(error, at_load=True)
            continue
        key = os.path.splitext(os.path.basename(str(image)))[0]
        kept = []
        for region_index, region in enumerate(items):
            region_record = f"{record} region {region_index}"
            try:
                box = require_field(region, "box", file=path, record=region_record)
                if not isinstance(box, list) or len(box) != 4:
                    raise BadSampleError(path, region_record, "box", f"expected [x, y, w, h], got {box!r}", "bad_value")
                phrase = decode_text(
                    require_field(region, "phrase", file=path, record=region_record),
                    file=path,
                    record=region_record,
                    field="phrase",
                )
                phrase = require_text(phrase, file=path, record=region_record, field="phrase")
            except BadSampleError as error:
                dataset.handle_bad(error, at_load=True)
                continue
            kept.append(Region([float(v) for v in box], phrase, path, region_record))
        regions[key] = kept
    return regions


def read_attribute_vocabulary(path: str) -> List[str]:
    """attributes.json {"attributes": [word, ...]} (mmf-fashion data mine-attributes)."""
    data = read_json(path)
    words = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(words, list):
        raise ValueError(f'{path}: expected {{"attributes": [word, ...]}}')
    return [str(w) for w in words]


def attributes_from_text(text: str, index: Dict[str, int]) -> List[int]:
    """Attribute ids of the vocabulary words in a text (used when a product
    carries no attributes_id, e.g. the HDF5 form or Polyvore titles)."""
    from mmf_fashion.data.attributes import tokenize

    return sorted({index[word] for word in tokenize(text) if word in index})
