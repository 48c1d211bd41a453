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

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from mmf.common.registry import registry

from mmf_fashion.models.base import FashionModelBase
from mmf_fashion.modules.fashionvil import FashionViLMethods


@dataclass
class FashionViLConfig:
    """model_config.fashionvil, key for key; no defaults: they live in models/configs/fashionvil.yaml.
    The network (modules/fashionvil/network.py) is built from it as a mapping."""

    head: str
    image_encoder: Dict[str, Any]
    text_encoder: Dict[str, Any]
    visual_token_type: int
    max_text_length: int
    logit_scale: float
    gather_negatives: bool
    build_itm_head: bool
    pretraining: Dict[str, Any]
    tokenizer_checkpoint: Optional[str]
    tokenizer_config: Dict[str, Any]
    pac: Dict[str, Any]
    contrastive_dim: Optional[int]
    classification: Dict[str, Any]
    ocir: Dict[str, Any]


@registry.register_model("fashionvil")
class FashionViL(FashionViLMethods, FashionModelBase):
    """FashionViL: image grid + one BERT as text and fusion encoder; five heads."""

    model_name = "fashionvil"
    options_class = FashionViLConfig

    def build(self):
        self.build_network(dataclasses.asdict(self.build_options()))

    def forward(self, sample_list):
        """sample_list: the ARCHITECTURE.md keys of the head (network.py docstring).

        Returns {"losses": {...}} plus image_embedding / text_embedding
        (pretraining eval, contrastive: ITC's projections), query_embedding /
        target_embedding (composition, ocir) or scores and targets (classification)."""
        update = registry.get("num_updates", no_warning=True) or 0
        output = self.run_head(sample_list, update=int(update))
        return self.with_loss_keys(sample_list, output)
