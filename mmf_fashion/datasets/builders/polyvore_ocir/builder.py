"""`polyvore_ocir` builder: outfit complementary item retrieval on Polyvore Outfits.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/ocir.yaml model=fashionvil dataset=polyvore_ocir \
        dataset_config.polyvore_ocir.version=disjoint
    dataset = build_dataset("polyvore_ocir", config, "test")
    gallery = dataset.gallery_dataset()      # {image, blank_id, blank_category}

Options: defaults.yaml (version: disjoint | nondisjoint; format: auto | ocir |
outfits, auto = FashionViL's ocir_*.json when there, else questions derived
from the published outfits; the log says which).
"""

import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder
from mmf_fashion.datasets.builders.polyvore_ocir.dataset import PolyvoreOCIRDataset, ocir_layout_choice


@registry.register_builder("polyvore_ocir")
class PolyvoreOCIRBuilder(FashionDatasetBuilder):
    """Polyvore Outfits fill-in-the-blank queries for OCIR, with the per-category gallery."""

    dataset_class = PolyvoreOCIRDataset
    required_hint = (
        "polyvore_outfits/polyvore_item_metadata.json, polyvore_outfits/images/<item_id>.jpg and "
        "polyvore_outfits/ocir_{disjoint,nondisjoint}_{train,test}.json (format: ocir) or "
        "polyvore_outfits/{disjoint,nondisjoint}/{train,valid,test}.json (format: outfits); format: auto reads either"
    )

    def __init__(self):
        super().__init__("polyvore_ocir")

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")

    def layout_choices(self, config, dataset_type):
        return [ocir_layout_choice(config, dataset_type)]
