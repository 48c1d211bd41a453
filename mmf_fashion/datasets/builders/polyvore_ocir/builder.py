"""`polyvore_ocir` builder: outfit complementary item retrieval on Polyvore Outfits.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/ocir.yaml model=fashionvil dataset=polyvore_ocir \
        dataset_config.polyvore_ocir.version=disjoint
    dataset = build_dataset("polyvore_ocir", config, "test")
    gallery = dataset.gallery_dataset()      # {image, blank_id, blank_category}

Options: defaults.yaml (version: disjoint | nondisjoint).
"""
import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder, config_value
from mmf_fashion.datasets.builders.polyvore_ocir.dataset import PolyvoreOCIRDataset


@registry.register_builder("polyvore_ocir")
class PolyvoreOCIRBuilder(FashionDatasetBuilder):
    """Polyvore Outfits fill-in-the-blank queries for OCIR, with the per-category gallery."""

    dataset_class = PolyvoreOCIRDataset
    required_hint = (
        "polyvore_outfits/polyvore_item_metadata.json, polyvore_outfits/images/<item_id>.jpg and "
        "polyvore_outfits/ocir_{disjoint,nondisjoint}_{train,test}.json (or {disjoint,nondisjoint}/{train,valid,test}.json)"
    )

    def __init__(self):
        super().__init__("polyvore_ocir")

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")

    def required_paths(self, config, dataset_type):
        root = str(config_value(config, "root", "polyvore_outfits"))
        version = str(config_value(config, "version", "nondisjoint"))
        split = str((config_value(config, "split_names", {}) or {}).get(dataset_type, dataset_type))
        return [f"{root}/ocir_{version}_{split}.json", f"{root}/{version}/{split}.json"]
