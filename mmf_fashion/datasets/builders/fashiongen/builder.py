"""`fashiongen` builder: FashionGen for ITR/TIR, SCR and pretraining.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/itr.yaml model=fashionvil dataset=fashiongen
    # format: auto (default) reads fashiongen/fashiongen_256_256_*.h5 or FashionViL's
    # *_info.json, whichever is there (json when both are; the log says which);
    # dataset_config.fashiongen.format=h5|json picks one
    from mmf.utils.build import build_dataset
    dataset = build_dataset("fashiongen", config, "val")     # FashionGenDataset

Options: defaults.yaml (next to this file). After a load the registry holds
fashiongen_num_{categories,subcategories} and, when the names are known,
fashiongen_{category,subcategory}_names (index = label id).
"""

import os

from mmf.common.registry import registry

from mmf_fashion.datasets.base import FashionDatasetBuilder
from mmf_fashion.datasets.builders.fashiongen.dataset import FashionGenDataset, fashiongen_layout_choice

LABEL_NAME_KEYS = ("category_names", "subcategory_names")


@registry.register_builder("fashiongen")
class FashionGenBuilder(FashionDatasetBuilder):
    """FashionGen image-text pairs for ITR/TIR, SCR and pretraining (HDF5 or JSON + images)."""

    dataset_class = FashionGenDataset
    required_hint = (
        "fashiongen/fashiongen_256_256_{train,validation}.h5 (format: h5) or "
        "fashiongen/{train,val,test}_info.json with fashiongen/images/ (format: json); format: auto reads either"
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

    def layout_choices(self, config, dataset_type):
        flag = f"dataset_config.{self.dataset_name}.format"
        return [fashiongen_layout_choice(config, dataset_type, flag, self.dataset_name)]
