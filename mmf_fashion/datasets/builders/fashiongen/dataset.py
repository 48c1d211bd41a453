"""FashionGen as an MMF dataset (ITR/TIR, SCR, pretraining), from HDF5 or JSON.

Cheatsheet::

    from mmf.utils.build import build_dataset
    dataset = build_dataset("fashiongen", config.dataset_config.fashiongen, "train")
    sample = dataset[0]
    sample.input_ids, sample.image, sample.product_id, sample.targets
    # with mlm / second_view / patch_mask / attribute_labels / regions on:
    sample.masked_input_ids, sample.mlm_labels, sample.image_2, sample.patch_mask,
    sample.attribute_targets, sample.boxes, sample.box_valid, sample.box_input_ids

Options (dataset_config.fashiongen, see defaults.yaml): format auto|h5|json
(auto: whichever layout holds the split's file, json when both do), unit
product|image|auto (auto: one sample per product when training, one per image
otherwise), mlm, second_view, patch_mask, attribute_labels, regions, and the
shared on_bad_sample / allow_paths_outside_root.

ProductSampleMixin (here) turns a Product into a Sample; fashionall uses it too.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
from mmf.common.sample import Sample

from mmf_fashion.datasets.base import FashionDataset, config_value
from mmf_fashion.datasets.builders.fashiongen.records import (
    Product,
    Region,
    View,
    attributes_from_text,
    h5_product_text,
    label_vocabs,
    read_attribute_vocabulary,
    read_h5_products,
    read_json_products,
    read_regions,
)
from mmf_fashion.datasets.common import BadSampleError, LazyH5File, image_from_array
from mmf_fashion.datasets.layouts import AUTO, Layout, LayoutChoice
from mmf_fashion.processors.boxes import box_problem
from mmf_fashion.processors.sampling import pick_two_views

UNITS = ("auto", "product", "image")
# format: auto prefers json when both layouts are there: FashionViL's JSON
# has its own test split and attribute ids (the HDF5 test is its validation)
LAYOUTS = (
    ("json", "FashionViL's product JSON", "with the images it names, under image_root"),
    ("h5", "the published HDF5", ""),
)


def flag_owner(flag: str) -> str:
    """'dataset_config.fashionall.fashiongen.format' -> 'fashionall.fashiongen'."""
    return flag.rsplit(".", 1)[0].replace("dataset_config.", "", 1)


def fashiongen_layout_choice(source_config, dataset_type: str, flag: str, label: str) -> LayoutChoice:
    """The layouts that name a file for this split (files.<format>.<split>),
    for choose_layout; ``flag`` is the format option's full name."""
    requested = str(config_value(source_config, "format", AUTO))
    files = config_value(source_config, "files", {})
    layouts = []
    for name, title, needs in LAYOUTS:
        split_files = files.get(name, {}) or {}
        if dataset_type in split_files:
            layouts.append(Layout(name, title, str(split_files[dataset_type]), needs))
        elif requested == name:
            raise ValueError(
                f"{flag}={name}, but {flag.rsplit('.', 1)[0]}.files.{name} names no file for split '{dataset_type}'"
            )
    if not layouts:
        raise ValueError(f"{flag.rsplit('.', 1)[0]}.files names no FashionGen file for split '{dataset_type}'")
    return LayoutChoice(f"{label} ({dataset_type})", flag, requested, layouts)


class ProductSampleMixin:
    """Needs: self.products (list of Product), self.items (list of
    (product index, view index or None)), self.h5_files {path: LazyH5File},
    self.regions {view key: [Region]}, self.attribute_vocabulary, and the
    FashionDataset helpers. Call setup_product_options() in __init__."""

    def setup_product_options(self) -> None:
        self.use_mlm = bool(self.option("mlm", False))
        self.use_second_view = bool(self.option("second_view", False))
        self.use_patch_mask = bool(self.option("patch_mask", False))
        self.use_attribute_labels = bool(self.option("attribute_labels", False))
        self.use_regions = bool(self.option("regions", False))
        self.box_phrase_max_length = int(self.option("box_phrase_max_length", 12))
        unit = str(self.option("unit", "auto"))
        if unit not in UNITS:
            raise ValueError(f"dataset_config.{self.dataset_name}.unit must be one of {UNITS}, got '{unit}'")
        self.unit = ("product" if self.is_train else "image") if unit == "auto" else unit
        self.h5_files: Dict[str, LazyH5File] = {}
        self._h5_has_description: Dict[str, bool] = {}
        self.regions: Dict[str, List[Region]] = {}
        self.attribute_vocabulary: List[str] = []
        self.attribute_index: Dict[str, int] = {}

    def load_attribute_vocabulary(self, relative_path: str) -> None:
        path = self.data_path(
            relative_path, file=f"dataset_config.{self.dataset_name}", record="attributes_file", field="attributes_file"
        )
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{self.dataset_name}: attribute_labels is on but {path} does not exist; "
                "write it with `mmf-fashion data mine-attributes --data-dir <data_dir>`"
            )
        self.attribute_vocabulary = read_attribute_vocabulary(path)
        self.attribute_index = {word: i for i, word in enumerate(self.attribute_vocabulary)}

    def index_items(self) -> None:
        if self.unit == "product":
            self.items = [(p, None) for p in range(len(self.products))]
        else:
            self.items = [(p, v) for p, product in enumerate(self.products) for v in range(len(product.views))]

    # --- reading -------------------------------------------------------------

    def product_text(self, product: Product) -> str:
        if product.text is not None:
            return product.text
        h5 = self.h5_files[product.file]
        return h5_product_text(product, h5, self._h5_has_description.get(product.file, True))

    def view_image(self, product: Product, view: View):
        if isinstance(view.source, int):
            h5 = self.h5_files[product.file]
            record = f"row {view.source} (product {product.product_id})"
            return image_from_array(
                h5.read("input_image", view.source), file=h5.path, record=record, field="input_image"
            )
        return self.load_image(view.source, file=product.file, record=product.record, field=view.label)

    def checked_regions(self, product: Product, view: View, image_size) -> List[Region]:
        """The view's regions whose boxes fit the image; a box outside the
        image is an error, or under skip dropped and counted."""
        kept = []
        for region in self.regions.get(view.key, []):
            problem = box_problem(region.box, image_size)
            if problem:
                self.handle_bad(BadSampleError(region.file, region.record, "box", problem, "box_outside_image"))
                continue
            kept.append(region)
        return kept

    # --- building ------------------------------------------------------------

    def _pick_views(self, product: Product, view_index: Optional[int]):
        count = len(product.views)
        if view_index is None:
            if self.use_second_view:
                processor = getattr(self, "view_processor", None)
                if processor is not None:
                    picked = processor({"views": list(range(count)), "is_train": self.is_train})
                    return picked["first"], picked["second"], picked["second_is_copy"]
                return pick_two_views(count, self.is_train)
            first = int(torch.randint(count, (1,))) if self.is_train else 0
            return first, first, count == 1
        if count == 1:
            return view_index, view_index, True
        if self.is_train:
            others = [v for v in range(count) if v != view_index]
            return view_index, others[int(torch.randint(len(others), (1,)))], False
        return view_index, (view_index + 1) % count, False

    def image_sample(self, sample: Sample, product: Product, view: View) -> None:
        image_processor = self.require_processor("image_processor")
        image = self.view_image(product, view)
        if not self.use_regions:
            sample.image = image_processor({"image": image, "is_train": self.is_train})["image"]
            return
        height, width = image.size[1], image.size[0]
        regions = self.checked_regions(product, view, (height, width))
        out = self.require_processor("box_processor")(
            {
                "image": image,
                "boxes": [r.box for r in regions],
                "phrases": [r.phrase for r in regions],
                "is_train": self.is_train,
                "image_processor": image_processor,
            }
        )
        sample.image = out["image"]
        sample.boxes = out["boxes"]
        sample.box_valid = out["box_valid"]
        phrases = self.require_processor("text_processor").tokenize_many(out["box_phrases"], self.box_phrase_max_length)
        sample.box_input_ids = phrases["input_ids"]
        sample.box_attention_mask = phrases["attention_mask"] * out["box_valid"].long().unsqueeze(1)

    def make_product_sample(self, product_index: int, view_index: Optional[int]) -> Sample:
        product = self.products[product_index]
        text = self.product_text(product)
        first, second, second_is_copy = self._pick_views(product, view_index)
        sample = Sample()
        self.image_sample(sample, product, product.views[first])
        if self.use_second_view:
            image = self.view_image(product, product.views[second])
            # a single-view product gets a freshly augmented copy of its only view
            augment = self.is_train or second_is_copy
            sample.image_2 = self.require_processor("image_processor")({"image": image, "is_train": augment})["image"]

        text_out = self.require_processor("text_processor")({"text": text, "mlm": self.use_mlm})
        for key, value in text_out.items():
            sample[key] = value
        sample.text = text
        sample.product_id = torch.tensor(product.product_id, dtype=torch.long)
        sample.image_id = torch.tensor(product.views[first].image_id, dtype=torch.long)
        if product.category_id >= 0:
            sample.category_id = torch.tensor(product.category_id, dtype=torch.long)
            sample.subcategory_id = torch.tensor(product.subcategory_id, dtype=torch.long)
            sample.targets = torch.tensor(product.subcategory_id, dtype=torch.long)
        if self.use_patch_mask:
            sample.patch_mask = self.require_processor("patch_mask_processor")({})["patch_mask"]
        if self.use_attribute_labels:
            ids = product.attribute_ids
            if ids is None:
                ids = attributes_from_text(text, self.attribute_index)
            sample.attribute_targets = self.require_processor("attribute_processor")(
                {"attribute_ids": ids, "num_attributes": len(self.attribute_vocabulary)}
            )["attribute_targets"]
        return sample


def load_fashiongen_products(
    dataset,
    source_config,
    dataset_type: str,
    num_attributes: Optional[int],
    first_image_id: int = 0,
    flag: Optional[str] = None,
):
    """(products, label vocabularies) of one split, from source_config's
    format (auto | h5 | json; the layout read is left in dataset.fashiongen_format), files
    and image_root; HDF5 handles are added to dataset.h5_files (they open
    lazily, per worker). flag: the format option's name in messages."""
    flag = flag or f"dataset_config.{dataset.dataset_name}.format"
    choice = fashiongen_layout_choice(source_config, dataset_type, flag, flag_owner(flag))
    fmt = dataset.pick_layout(choice).name
    dataset.fashiongen_format = fmt
    files = source_config.get("files", {}) or {}
    split_files = dict(files.get(fmt, {}) or {})

    def resolved(relative):
        return dataset.data_path(
            str(relative), file=f"dataset_config.{dataset.dataset_name}", record="files", field="files"
        )

    if fmt == "json":
        vocabs = label_vocabs(dataset, "json", json_paths=[resolved(p) for p in split_files.values()])
        image_root = str(source_config.get("image_root", "fashiongen") or "fashiongen")
        products = read_json_products(
            dataset, str(split_files[dataset_type]), vocabs, image_root, num_attributes, first_image_id
        )
        return products, vocabs
    path = resolved(split_files[dataset_type])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset.dataset_name}: HDF5 file {path} does not exist")
    h5_paths = sorted({resolved(p) for p in split_files.values() if os.path.isfile(resolved(p))})
    vocabs = label_vocabs(dataset, "h5", h5_paths=h5_paths)
    h5 = LazyH5File(path)
    dataset.h5_files[path] = h5
    has_description = "input_description" in set(h5.keys())
    h5.close()
    dataset._h5_has_description[path] = has_description
    if not has_description:
        dataset.log(f"{path}: no input_description dataset; texts are the titles (input_name) only")
    products = read_h5_products(dataset, h5, vocabs)
    for product in products:
        for view in product.views:
            view.image_id += first_image_id
    return products, vocabs


class FashionGenDataset(ProductSampleMixin, FashionDataset):
    """FashionGen products with category/subcategory labels (targets = subcategory)."""

    def __init__(self, config, dataset_type="train", *args, **kwargs):
        super().__init__("fashiongen", config, dataset_type, *args, **kwargs)
        self.setup_product_options()
        if self.use_attribute_labels:
            self.load_attribute_vocabulary(str(self.option("attributes_file", "fashiongen/attributes.json")))
        num_attributes = len(self.attribute_vocabulary) if self.use_attribute_labels else None
        self.products, self.vocabs = load_fashiongen_products(self, self.config, dataset_type, num_attributes)
        self.format = self.fashiongen_format  # the layout read (h5 | json)
        if self.use_regions:
            regions_files = self.option("regions_files", {}) or {}
            if dataset_type in regions_files:
                self.regions = read_regions(self, str(regions_files[dataset_type]))
        max_samples = self.option("max_samples")
        self.index_items()
        if max_samples:
            self.items = self.items[: int(max_samples)]
        self.finish_loading()

    def build_sample(self, index: int) -> Sample:
        product_index, view_index = self.items[index]
        return self.make_product_sample(product_index, view_index)

    def label_counts(self) -> Dict[str, int]:
        counts = {}
        for level, key in (("category", "num_categories"), ("subcategory", "num_subcategories")):
            size = self.vocabs[level].size
            if size is not None:
                counts[key] = int(size)
        if "num_subcategories" in counts:
            counts["num_final_outputs"] = counts["num_subcategories"]
        if self.attribute_vocabulary:
            counts["num_attributes"] = len(self.attribute_vocabulary)
        return counts

    def label_names(self) -> Dict[str, List[str]]:
        """The label vocabularies whose names are known, index = label id
        (``targets`` = subcategory id): {"category_names": [...],
        "subcategory_names": [...]}. Names come from dataset_config
        (category_names / subcategory_names), the synthetic world's manifest
        or the HDF5 columns; JSON files carry ids only, so a level without
        any of those is left out."""
        names = {}
        for level in ("category", "subcategory"):
            vocab = self.vocabs.get(level)
            if vocab is not None and vocab.names:
                names[f"{level}_names"] = list(vocab.names)
        return names

    def subcategory_of_products(self) -> Dict[int, int]:
        """product_id -> subcategory index (for the 100-negative protocol)."""
        return {p.product_id: p.subcategory_id for p in self.products}


__all__ = ["FashionGenDataset", "ProductSampleMixin", "fashiongen_layout_choice", "load_fashiongen_products"]
