"""`fashiongen` builder: FashionGen for ITR/TIR, SCR and pretraining.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/itr.yaml model=fashionvil dataset=fashiongen \
        dataset_config.fashiongen.format=h5
    from mmf.utils.build import build_dataset
    dataset = build_dataset("fashiongen", config, "val")     # FashionGenDataset

Options: defaults.yaml (next to this file).
"""
import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder, config_value
from mmf_fashion.datasets.builders.fashiongen.dataset import FashionGenDataset


@registry.register_builder("fashiongen")
class FashionGenBuilder(FashionDatasetBuilder):
    dataset_class = FashionGenDataset
    required_hint = (
        "fashiongen/fashiongen_256_256_{train,validation}.h5 (format: h5) or "
        "fashiongen/{train,val,test}_info.json with fashiongen/images/ (format: json)"
    )

    def __init__(self):
        super().__init__("fashiongen")

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")

    def required_paths(self, config, dataset_type):
        fmt = str(config_value(config, "format", "json"))
        files = config_value(config, "files", {}) or {}
        split_files = files.get(fmt, {}) or {}
        return [str(split_files[dataset_type])] if dataset_type in split_files else []
