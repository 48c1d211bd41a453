"""`fashiongen` builder: FashionGen for ITR/TIR, SCR and pretraining.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/itr.yaml model=fashionvil dataset=fashiongen \
        dataset_config.fashiongen.format=h5
    from mmf.utils.build import build_dataset
    dataset = build_dataset("fashiongen", config, "val")     # FashionGenDataset

Options: defaults.yaml (next to this file). After a load the registry holds
fashiongen_num_{categories,subcategories} and, when the names are known,
fashiongen_{category,subcategory}_names (index = label id).
"""
import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder, config_value
from mmf_fashion.datasets.builders.fashiongen.dataset import FashionGenDataset

LABEL_NAME_KEYS = ("category_names", "subcategory_names")


@registry.register_builder("fashiongen")
class FashionGenBuilder(FashionDatasetBuilder):
    """FashionGen image-text pairs for ITR/TIR, SCR and pretraining (HDF5 or JSON + images)."""

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

    def update_registry_for_model(self, config):
        """The label counts (base class), and the label vocabularies as
        '<name>_category_names' / '<name>_subcategory_names' (index = label
        id), which ALIGN's zero-shot head turns into prompts; a vocabulary
        without names (JSON ids only) unregisters a stale one."""
        super().update_registry_for_model(config)
        if self.dataset is None:
            return
        known = self.dataset.label_names()
        for key in LABEL_NAME_KEYS:
            if key in known:
                registry.register(f"{self.dataset_name}_{key}", known[key])
            else:
                registry.unregister(f"{self.dataset_name}_{key}")

    def required_paths(self, config, dataset_type):
        fmt = str(config_value(config, "format", "json"))
        files = config_value(config, "files", {}) or {}
        split_files = files.get(fmt, {}) or {}
        return [str(split_files[dataset_type])] if dataset_type in split_files else []
