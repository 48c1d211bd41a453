"""`fashionall` builder: the pretraining union of the listed product sources.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/pretrain.yaml model=fashionvil dataset=fashionall \
        "dataset_config.fashionall.sources=[fashiongen,polyvore]"
    dataset = build_dataset("fashionall", config, "train")

Options: defaults.yaml (sources, per-source settings, task switches).
"""

import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder, config_value
from mmf_fashion.datasets.builders.fashionall.dataset import FashionAllDataset
from mmf_fashion.datasets.builders.fashiongen.dataset import fashiongen_layout_choice


@registry.register_builder("fashionall")
class FashionAllBuilder(FashionDatasetBuilder):
    """Pretraining union of product sources (FashionGen, Polyvore items) as one dataset."""

    dataset_class = FashionAllDataset
    required_hint = (
        "one folder per listed source: fashiongen/ (HDF5 or *_info.json + images/; fashiongen.format: auto "
        "reads either) and "
        "polyvore_outfits/ (polyvore_item_metadata.json, images/, {disjoint,nondisjoint}/*.json)"
    )

    def __init__(self):
        super().__init__("fashionall")

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.yaml")

    def required_paths(self, config, dataset_type):
        folders = {"fashiongen": "fashiongen", "polyvore": "polyvore_outfits"}
        return [folders.get(str(s), str(s)) for s in config_value(config, "sources", ["fashiongen"])]

    def layout_choices(self, config, dataset_type):
        if "fashiongen" not in [str(s) for s in config_value(config, "sources", ["fashiongen"])]:
            return []
        source_config = config_value(config, "fashiongen", {}) or {}
        flag = "dataset_config.fashionall.fashiongen.format"
        return [fashiongen_layout_choice(source_config, dataset_type, flag, "fashionall.fashiongen")]

    def build(self, config, dataset_type="train", *args, **kwargs):
        # every listed source must be there, not just one of them
        data_dir = config_value(config, "data_dir")
        for folder in self.required_paths(config, dataset_type):
            if data_dir and os.path.isdir(str(data_dir)) and not os.path.isdir(os.path.join(str(data_dir), folder)):
                raise FileNotFoundError(
                    f"fashionall ({dataset_type}): source folder "
                    f"{os.path.join(os.path.abspath(str(data_dir)), folder)} not found.\n"
                    f"Generate the synthetic fashion data with `mmf-fashion data synth --out {data_dir}` "
                    f"(or `make demo`), or put the real files there: {self.required_hint}; or drop the source "
                    "from dataset_config.fashionall.sources."
                )
        super().build(config, dataset_type, *args, **kwargs)
