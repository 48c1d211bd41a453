"""`fashioniq` builder: FashionIQ triplets for TGIR.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/tgir.yaml model=fashionvil dataset=fashioniq
    dataset = build_dataset("fashioniq", config, "val")
    queries = dataset                    # reference_image + captions -> target_id
    gallery = dataset.gallery_dataset()  # {image, target_id, fashioniq_category}

Evaluation needs both: embed every gallery image, then rank them for each
query among the gallery images of the query's fashioniq_category; a hit is
gallery target_id == query target_id. Options: defaults.yaml.
"""

import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder, config_value
from mmf_fashion.datasets.builders.fashioniq.dataset import FashionIQDataset


@registry.register_builder("fashioniq")
class FashionIQBuilder(FashionDatasetBuilder):
    """FashionIQ triplets (reference image + two captions -> target) for TGIR, with the per-category gallery."""

    dataset_class = FashionIQDataset
    required_hint = (
        "fashioniq/captions/cap.{dress,shirt,toptee}.{train,val,test}.json, "
        "fashioniq/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json, fashioniq/images/<asin>.png"
    )

    def __init__(self):
        super().__init__("fashioniq")

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")

    def required_paths(self, config, dataset_type):
        captions_dir = str(config_value(config, "captions_dir", "fashioniq/captions"))
        split = str((config_value(config, "split_names", {}) or {}).get(dataset_type, dataset_type))
        categories = config_value(config, "categories", ["dress", "shirt", "toptee"])
        return [f"{captions_dir}/cap.{category}.{split}.json" for category in categories]
