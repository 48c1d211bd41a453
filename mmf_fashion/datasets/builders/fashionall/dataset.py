"""`fashionall`: the pretraining union of several product sources.

Cheatsheet::

    dataset = build_dataset("fashionall", config.dataset_config.fashionall, "train")
    sample = dataset[0]
    sample.input_ids, sample.masked_input_ids, sample.mlm_labels   # MLM (mlm: true)
    sample.image, sample.image_2                                   # two views (MVC)
    sample.attribute_targets                                       # PAC soft labels
    sample.boxes, sample.box_valid, sample.box_input_ids           # regions when present
    dataset.source_of(sample.product_id)   # ("fashiongen", 1002) / ("polyvore", "100000000")

Sources (``sources: [fashiongen, polyvore]``):
- fashiongen: FashionGen products (JSON or HDF5, as the fashiongen builder:
  fashiongen.format auto | json | h5),
  with their views and region boxes.
- polyvore: Polyvore Outfits items of the split's outfits, text = title +
  ". " + description, one view (the second view is an augmented copy).
product_id is the product's index in the union (unique across sources);
attribute ids come from the product JSON when it has them, else from the
attribute words found in the text. Items without regions get all-invalid
boxes, so every sample has the same keys.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

from mmf.common.sample import Sample

from mmf_fashion.datasets.base import FashionDataset
from mmf_fashion.datasets.builders.fashiongen.dataset import ProductSampleMixin, load_fashiongen_products
from mmf_fashion.datasets.builders.fashiongen.records import Product, View, join_text, read_regions
from mmf_fashion.datasets.common import BadSampleError, decode_text, read_json, require_field, require_text

SOURCES = ("fashiongen", "polyvore")


class FashionAllDataset(ProductSampleMixin, FashionDataset):
    def __init__(self, config, dataset_type="train", *args, **kwargs):
        super().__init__("fashionall", config, dataset_type, *args, **kwargs)
        self.setup_product_options()
        sources = [str(s) for s in self.option("sources", ["fashiongen"])]
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ValueError(
                f"dataset_config.fashionall.sources: {unknown or sources} not among the known sources {SOURCES}"
            )
        if self.use_attribute_labels:
            self.load_attribute_vocabulary(str(self.option("attributes_file", "fashiongen/attributes.json")))
        num_attributes = len(self.attribute_vocabulary) if self.use_attribute_labels else None

        self.products: List[Product] = []
        self.source_ids: List[Tuple[str, object]] = []
        self.source_sizes: Dict[str, int] = {}
        for source in sources:
            source_config = self.option(source, {}) or {}
            first_image_id = sum(len(p.views) for p in self.products)
            if source == "fashiongen":
                products, _ = load_fashiongen_products(
                    self,
                    source_config,
                    dataset_type,
                    num_attributes,
                    first_image_id,
                    flag="dataset_config.fashionall.fashiongen.format",
                )
                if self.use_regions:
                    regions_file = (source_config.get("regions_files", {}) or {}).get(dataset_type)
                    if regions_file:
                        self.regions.update(read_regions(self, str(regions_file)))
            else:
                products = self._polyvore_products(source_config, dataset_type, first_image_id)
            for product in products:
                self.source_ids.append((source, product.product_id))
                # labels differ between sources: pretraining uses none of them
                product.product_id = len(self.products)
                product.category_id = product.subcategory_id = -1
                self.products.append(product)
            self.source_sizes[source] = len(products)
        self.index_items()
        max_samples = self.option("max_samples")
        if max_samples:
            self.items = self.items[: int(max_samples)]
        self.finish_loading()

    def _polyvore_products(self, source_config, dataset_type: str, first_image_id: int) -> List[Product]:
        root = str(source_config.get("root", "polyvore_outfits") or "polyvore_outfits")
        version = str(source_config.get("version", "nondisjoint") or "nondisjoint")
        split = str((source_config.get("split_names", {}) or {}).get(dataset_type, dataset_type))

        def config_file(relative):
            return self.data_path(relative, file="dataset_config.fashionall.polyvore", record="files", field="files")

        metadata_path = config_file(f"{root}/polyvore_item_metadata.json")
        outfits_path = config_file(f"{root}/{version}/{split}.json")
        if not os.path.isfile(outfits_path):
            raise FileNotFoundError(f"fashionall: polyvore outfits file {outfits_path} does not exist")
        metadata = read_json(metadata_path)
        item_ids: List[str] = []
        seen = set()
        for outfit in read_json(outfits_path):
            for item in outfit.get("items", []) if isinstance(outfit, dict) else []:
                item_id = str(item.get("item_id")) if isinstance(item, dict) else None
                if item_id and item_id not in seen:
                    seen.add(item_id)
                    item_ids.append(item_id)
        products = []
        image_id = first_image_id
        for item_id in item_ids:
            record = f"item {item_id}"
            try:
                meta = metadata.get(item_id)
                if not isinstance(meta, dict):
                    raise BadSampleError(
                        metadata_path,
                        record,
                        "item",
                        f"item {item_id} of {outfits_path} has no metadata",
                        "missing_field",
                    )
                title = decode_text(
                    require_field(meta, "title", file=metadata_path, record=record),
                    file=metadata_path,
                    record=record,
                    field="title",
                )
                description = decode_text(
                    meta.get("description") or "", file=metadata_path, record=record, field="description"
                )
                text = require_text(
                    join_text(title, description), file=metadata_path, record=record, field="title+description"
                )
                path = self.data_path(
                    f"{item_id}.jpg", file=metadata_path, record=record, field="image", root=f"{root}/images"
                )
            except BadSampleError as error:
                self.handle_bad(error, at_load=True)
                continue
            view = View(path, f"image ({item_id}.jpg)", f"polyvore_{item_id}", image_id)
            image_id += 1
            # product_id: the source's id here; the union renumbers (source_ids keeps it)
            products.append(Product(item_id, [view], metadata_path, record, text=text))
        return products

    def build_sample(self, index: int) -> Sample:
        product_index, view_index = self.items[index]
        return self.make_product_sample(product_index, view_index)

    def source_of(self, product_id) -> Tuple[str, object]:
        return self.source_ids[int(product_id)]

    def label_counts(self) -> Dict[str, int]:
        counts = {"num_products": len(self.products)}
        if self.attribute_vocabulary:
            counts["num_attributes"] = len(self.attribute_vocabulary)
        return counts
