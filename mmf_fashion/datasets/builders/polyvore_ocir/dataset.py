"""Polyvore Outfits OCIR (outfit complementary item retrieval) as an MMF dataset.

Cheatsheet::

    dataset = build_dataset("polyvore_ocir", config.dataset_config.polyvore_ocir, "test")
    sample = dataset[0]
    sample.outfit_images (K, 3, H, W), sample.outfit_mask (K,), sample.outfit_categories (K,)
    sample.blank_image (3, H, W), sample.blank_category, sample.blank_id
    gallery = dataset.gallery_dataset()     # {image, blank_id, blank_category}

A question is an outfit with one item removed (the blank) plus the blank's
category; the gallery is every item of the split (rank those of the blank's
category). blank_id indexes ``dataset.gallery_items`` (item ids of the split
in order of appearance). The questions come from one of two layouts
(``format``): ocir = FashionViL's ocir_<version>_<split>.json; outfits = the
published <version>/<split>.json, from which they are derived (every item of
every outfit in turn for train, one seeded pick per outfit otherwise). auto
(the default) reads whichever is there, ocir when both are (its questions are
the ones FashionViL's numbers were measured on); the log says which.
"""

from __future__ import annotations

import csv
import os
import random
from typing import Dict, List, Optional, Sequence

import torch
from mmf.common.sample import Sample

from mmf_fashion.datasets.base import FashionDataset, GalleryDataset, config_value
from mmf_fashion.datasets.common import BadSampleError, read_json, require_field
from mmf_fashion.datasets.layouts import AUTO, Layout, LayoutChoice

VERSIONS = ("disjoint", "nondisjoint")
CATEGORY_FIELDS = ("semantic_category", "category_id")
NEEDS = "with polyvore_item_metadata.json and images/"


def ocir_layout_choice(config, dataset_type: str) -> LayoutChoice:
    """The two question layouts of a split, ocir first (preferred under auto)."""
    root = str(config_value(config, "root", "polyvore_outfits"))
    version = str(config_value(config, "version", "nondisjoint"))
    split = str((config_value(config, "split_names", {}) or {}).get(dataset_type, dataset_type))
    layouts = [
        Layout("ocir", "FashionViL's OCIR questions", f"{root}/ocir_{version}_{split}.json", NEEDS),
        Layout(
            "outfits",
            "the published Polyvore Outfits (questions derived from the outfits)",
            f"{root}/{version}/{split}.json",
            NEEDS,
        ),
    ]
    return LayoutChoice(
        f"polyvore_ocir ({dataset_type})",
        "dataset_config.polyvore_ocir.format",
        str(config_value(config, "format", AUTO)),
        layouts,
    )


def read_categories_csv(path: str) -> List[List[str]]:
    """categories.csv rows: category_id, fine name, semantic category (unverified: tolerant)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        return [row for row in csv.reader(handle) if row and row[0].strip().isdigit()]


class PolyvoreOCIRDataset(FashionDataset):
    def __init__(self, config, dataset_type="train", *args, **kwargs):
        super().__init__("polyvore_ocir", config, dataset_type, *args, **kwargs)
        self.version = str(self.option("version", "nondisjoint"))
        if self.version not in VERSIONS:
            raise ValueError(f"dataset_config.polyvore_ocir.version must be one of {VERSIONS}, got '{self.version}'")
        self.category_field = str(self.option("category_field", "semantic_category"))
        if self.category_field not in CATEGORY_FIELDS:
            raise ValueError(f"dataset_config.polyvore_ocir.category_field must be one of {CATEGORY_FIELDS}")
        self.max_outfit_items = int(self.option("max_outfit_items", 8))
        root = str(self.option("root", "polyvore_outfits"))
        self.image_dir = f"{root}/images"
        split = str((self.option("split_names", {}) or {}).get(dataset_type, dataset_type))

        self.metadata_path = self._config_file(f"{root}/polyvore_item_metadata.json")
        self.metadata = read_json(self.metadata_path)
        if not isinstance(self.metadata, dict):
            raise ValueError(f"{self.metadata_path}: expected an object item_id -> metadata")
        self.category_names = self._category_vocabulary(self._config_file(f"{root}/categories.csv"))
        self.category_index = {name: i for i, name in enumerate(self.category_names)}

        questions, source = self._questions(root, split)
        self.gallery_items: List[str] = []
        self.gallery_categories: List[int] = []
        self._item_index: Dict[str, int] = {}
        for position, entry in enumerate(questions):
            record = f"question {position}"
            try:
                outfit = require_field(entry, "question", file=source, record=record)
                if not isinstance(outfit, list) or not outfit:
                    raise BadSampleError(
                        source,
                        record,
                        "question",
                        f"expected a non-empty list of item ids, got {outfit!r}",
                        "missing_field",
                    )
                blank = str(require_field(entry, "blank", file=source, record=record))
                outfit = [str(item) for item in outfit][: self.max_outfit_items]
                categories = [
                    self.item_category(item, source, record, f"question[{i}]") for i, item in enumerate(outfit)
                ]
                blank_category = self.item_category(blank, source, record, "blank")
            except BadSampleError as error:
                self.handle_bad(error, at_load=True)
                continue
            outfit_ids = [self._gallery(item, category) for item, category in zip(outfit, categories)]
            blank_id = self._gallery(blank, blank_category)
            self.items.append((outfit_ids, blank_id, source, record))
        max_samples = self.option("max_samples")
        if max_samples:
            self.items = self.items[: int(max_samples)]
        self.finish_loading()

    # --- loading -------------------------------------------------------------

    def _config_file(self, relative: str) -> str:
        return self.data_path(relative, file="dataset_config.polyvore_ocir", record="files", field="files")

    def _category_vocabulary(self, csv_path: str) -> List[str]:
        rows = read_categories_csv(csv_path)
        if self.category_field == "category_id":
            names = sorted({row[0].strip() for row in rows}, key=int)
        else:
            names = sorted({row[2].strip() for row in rows if len(row) > 2 and row[2].strip()})
        if not names:
            # no categories.csv: take what the metadata uses
            values = {
                str(meta.get(self.category_field))
                for meta in self.metadata.values()
                if isinstance(meta, dict) and meta.get(self.category_field) is not None
            }
            names = sorted(values, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
            self.log(f"polyvore_ocir: {csv_path} gave no categories; using the {len(names)} found in the item metadata")
        return names

    def _questions(self, root: str, split: str):
        layout = self.pick_layout(ocir_layout_choice(self.config, self.dataset_type))
        self.format = layout.name
        path = self._config_file(layout.path)
        if layout.name == "ocir":
            questions = read_json(path)
            if not isinstance(questions, list):
                raise ValueError(f"{path}: expected a JSON list of {{question, blank}}")
            return questions, path
        outfits_path = path
        rng = random.Random(int(self.option("derive_seed", 0)))
        questions = []
        for outfit in read_json(outfits_path):
            items = (
                [str(i.get("item_id")) for i in outfit.get("items", []) if isinstance(i, dict)]
                if isinstance(outfit, dict)
                else []
            )
            if len(items) < 2:
                continue
            blanks = range(len(items)) if split == "train" else [rng.randrange(len(items))]
            for blank in blanks:
                questions.append({"question": [i for p, i in enumerate(items) if p != blank], "blank": items[blank]})
        return questions, outfits_path

    def item_category(self, item_id: str, file: str, record: str, field: str) -> int:
        meta = self.metadata.get(item_id)
        if not isinstance(meta, dict):
            raise BadSampleError(file, record, field, f"item {item_id} is not in {self.metadata_path}", "missing_field")
        value = meta.get(self.category_field)
        if value is None:
            raise BadSampleError(
                self.metadata_path, f"item {item_id}", self.category_field, "field is missing", "missing_field"
            )
        name = str(value).strip()
        if name not in self.category_index:
            raise BadSampleError(
                self.metadata_path,
                f"item {item_id}",
                self.category_field,
                f"unknown category '{name}' (known: {', '.join(self.category_names[:15])})",
                "unknown_category",
            )
        return self.category_index[name]

    def _gallery(self, item_id: str, category: int) -> int:
        if item_id not in self._item_index:
            self._item_index[item_id] = len(self.gallery_items)
            self.gallery_items.append(item_id)
            self.gallery_categories.append(category)
        return self._item_index[item_id]

    # --- samples -------------------------------------------------------------

    def item_image(self, index: int, *, file: str, record: str, field: str) -> torch.Tensor:
        item_id = self.gallery_items[index]
        path = self.data_path(f"{item_id}.jpg", file=file, record=record, field=field, root=self.image_dir)
        image = self.load_image(path, file=file, record=record, field=field)
        return self.require_processor("image_processor")({"image": image, "is_train": self.is_train})["image"]

    def build_sample(self, index: int) -> Sample:
        outfit_ids, blank_id, file, record = self.items[index]
        images = [
            self.item_image(item, file=file, record=record, field=f"question[{k}]") for k, item in enumerate(outfit_ids)
        ]
        blank_image = self.item_image(blank_id, file=file, record=record, field="blank")
        size = blank_image.shape
        outfit = torch.zeros(self.max_outfit_items, *size)
        mask = torch.zeros(self.max_outfit_items, dtype=torch.bool)
        categories = torch.zeros(self.max_outfit_items, dtype=torch.long)
        for slot, (item, image) in enumerate(zip(outfit_ids, images)):
            outfit[slot] = image
            mask[slot] = True
            categories[slot] = self.gallery_categories[item]
        sample = Sample()
        sample.outfit_images = outfit
        sample.outfit_mask = mask
        sample.outfit_categories = categories
        sample.blank_image = blank_image
        sample.blank_category = torch.tensor(self.gallery_categories[blank_id], dtype=torch.long)
        sample.blank_id = torch.tensor(blank_id, dtype=torch.long)
        return sample

    def gallery_image(self, index: int) -> torch.Tensor:
        """Gallery item `index` in eval transforms (GalleryDataset reads it)."""
        record = f"gallery item {self.gallery_items[index]}"
        path = self.data_path(
            f"{self.gallery_items[index]}.jpg",
            file="polyvore gallery",
            record=record,
            field="image",
            root=self.image_dir,
        )
        image = self.load_image(path, file="polyvore gallery", record=record, field="image")
        return self.require_processor("image_processor")({"image": image, "is_train": False})["image"]

    def gallery_dataset(self, categories: Optional[Sequence[int]] = None) -> GalleryDataset:
        """Every item of the split (optionally only some categories) as a
        torch Dataset of Samples {image, blank_id, blank_category}."""
        indices = [i for i, c in enumerate(self.gallery_categories) if categories is None or c in set(categories)]
        return GalleryDataset(self, indices, id_key="blank_id", category_key="blank_category")

    def label_counts(self) -> Dict[str, int]:
        return {"num_categories": len(self.category_names), "gallery_size": len(self.gallery_items)}


__all__ = ["PolyvoreOCIRDataset"]
