"""FashionViL (ECCV 2022) as the MMF model `fashionvil`: a thin adapter over
mmf_fashion.modules.fashionvil (plain torch).

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/pretrain.yaml model=fashionvil dataset=fashiongen
    mmf_run config=projects/fashionvil/configs/itr.yaml model=fashionvil dataset=fashiongen

    model = registry.get_model_class("fashionvil")(config); model.build()
    out = model(sample_list)      # train: {"losses": {"train/fashiongen/itc": ...}, ...}
    model.embed_images(images); model.embed_texts(["red dress"])       # (N, contrastive_dim), unit norm
    model.embed_composed(images, ["make it blue"]); model.match_scores(pairs)

`model_config.fashionvil.head` picks the head: pretraining (ITC, ITM, MLM,
MPFC, MVC, PAC; one task per update, drawn from pretraining.tasks ratios by
TaskSampler with the update number, so every rank runs the same task),
contrastive (ITR/TIR), composition (TGIR), classification (SCR; CR with
classification.target: category), ocir. Input keys and outputs: see
mmf_fashion/modules/fashionvil/network.py and tasks.py; for users:
docs/models/fashionvil.md. Loss keys are "<dataset_type>/<dataset_name>/<loss>".
"""
from __future__ import annotations

import os

from mmf.common.registry import registry
from mmf.models.base_model import BaseModel

from mmf_fashion.modules.fashionvil import FashionViLMethods


def loss_key(sample_list, name: str) -> str:
    dataset_type = getattr(sample_list, "dataset_type", None) or sample_list.get("dataset_type", "train")
    dataset_name = getattr(sample_list, "dataset_name", None) or sample_list.get("dataset_name", "fashiongen")
    return f"{dataset_type}/{dataset_name}/{name}"


@registry.register_model("fashionvil")
class FashionViL(FashionViLMethods, BaseModel):
    """FashionViL: image grid + one BERT as text and fusion encoder; five heads."""

    def __init__(self, config):
        super().__init__(config)

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(__file__), "configs", "fashionvil.yaml")

    def build(self):
        self.build_network(self.config)

    def forward(self, sample_list):
        """sample_list: the ARCHITECTURE.md keys of the head (network.py docstring).

        Returns {"losses": {...}} plus image_embedding / text_embedding
        (pretraining eval, contrastive: ITC's projections), query_embedding /
        target_embedding (composition, ocir) or scores and targets (classification)."""
        update = registry.get("num_updates", no_warning=True) or 0
        output = self.run_head(sample_list, update=int(update))
        output["losses"] = {loss_key(sample_list, name): value for name, value in output["losses"].items()}
        return output
