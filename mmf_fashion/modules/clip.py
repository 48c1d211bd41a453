"""CLIP / FashionCLIP from released weights as a plain torch network: four heads over CLIPModel's towers.

Cheatsheet::

    from mmf_fashion.modules.clip import CLIPNetwork, ClipOptions
    net = CLIPNetwork(options)       # ClipOptions: every field (models/configs/clip.yaml); pretrained = a
                                     # hub name or a save_pretrained directory of a CLIPModel
    output = net(batch)              # contrastive: {"losses": {"itc"}, "image_embedding", "text_embedding"}
    net.embed_images(images); net.embed_texts(["red dress"]); net.embed_composed(images, ["make it blue"])

The MMF model `clip` (models/clip.py, which documents the heads and keys) is
the same network behind MMF's BaseModel; it also finds the zeroshot class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from mmf_fashion.modules import pretrained_towers as released_towers
from mmf_fashion.modules.align import PromptZeroShotMethods
from mmf_fashion.modules.fashionvil.heads import CategorySubspaces
from mmf_fashion.modules.losses import LogitScale, batch_classification_loss, contrastive_loss
from mmf_fashion.modules.pretrained_towers import GatedCombiner, ReleasedTowersMixin, outfit_item_embeddings
from mmf_fashion.modules.two_stream import average_view_embeddings, l2_normalize

CONTRASTIVE = "contrastive"
ZEROSHOT = "zeroshot"
COMPOSITION = "composition"
OCIR = "ocir"
HEADS = (CONTRASTIVE, ZEROSHOT, COMPOSITION, OCIR)


@dataclass
class ClipCompositionOptions:
    hidden_dim: int
    dropout: float


@dataclass
class ClipOcirOptions:
    num_categories: int
    num_subspaces: int
    category_dim: int


@dataclass
class ClipOptions:
    """Every option of CLIP, no defaults: they live in models/configs/clip.yaml (documented there)."""

    pretrained: Optional[str]
    head: str
    freeze_towers: bool
    max_text_length: int
    learnable_temperature: bool
    max_scale: float
    label_smoothing: float
    gather_negatives: bool
    average_views: bool
    composition: ClipCompositionOptions
    ocir: ClipOcirOptions
    zeroshot: Dict[str, Any]


def _require(sample_list, keys: List[str], head: str) -> None:
    missing = [key for key in keys if sample_list.get(key, None) is None]
    if missing:
        raise KeyError(
            f"clip head '{head}' needs the sample-list keys {missing}; the batch has {sorted(sample_list.keys())}"
        )


class CLIPMethods(ReleasedTowersMixin, PromptZeroShotMethods):
    """Mixin holding CLIP's modules and maths (see CLIPNetwork and models/clip.py)."""

    def build_network(self, options: ClipOptions) -> None:
        self.head = str(options.head)
        if self.head not in HEADS:
            raise ValueError(f"model_config.clip.head must be one of {HEADS}, got '{self.head}'")
        source = released_towers.pretrained_source(options.pretrained)
        if source is None:
            raise ValueError(
                "model_config.clip.pretrained: name a CLIP checkpoint (hub name such as openai/clip-vit-base-patch32 "
                "or a directory written by CLIPModel.save_pretrained); clip has no scratch build"
            )
        released = released_towers.load_released(source, "clip")
        self.attach_released(released)
        self.max_text_length = int(options.max_text_length)
        self.logit_scale = LogitScale(
            init=released.logit_scale,
            learnable=options.learnable_temperature,
            max_value=max(float(options.max_scale), released.logit_scale),
        )
        with torch.no_grad():  # the checkpoint's log value as is: exp() then gives CLIPModel's scale exactly
            self.logit_scale.log_scale.copy_(released.log_logit_scale)
        if options.freeze_towers:
            self.freeze_towers()
        if self.head == OCIR:  # outfits are images only: an untouched trainable tower would stall DDP
            for tower in (self.text_encoder, self.text_projection):
                tower.requires_grad_(False)
        self.label_smoothing = float(options.label_smoothing)
        self.gather_negatives = options.gather_negatives
        self.average_views = options.average_views
        self.configure_prompts(options.zeroshot or {}, "clip")
        if self.head == COMPOSITION:
            composition = options.composition
            self.combiner = GatedCombiner(self.embed_dim, int(composition.hidden_dim), float(composition.dropout))
        if self.head == OCIR:
            ocir = options.ocir
            self.ocir_head = CategorySubspaces(
                self.embed_dim,
                int(ocir.num_categories),
                num_subspaces=int(ocir.num_subspaces),
                category_dim=int(ocir.category_dim),
            )

    # ------------------------------------------------------------ interface
    def text_embedding(self, texts: List[str]) -> torch.Tensor:
        tokens = self.tokenize(texts, max_length=self.max_text_length)
        return self.encode_text(tokens["input_ids"], tokens["attention_mask"])

    def composed_embedding(self, images: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """Reference images (B, 3, H, W) + modification texts (B,) -> (B, D) unit-norm queries:
        the combiner (composition head), else the training-free sum of the two embeddings."""
        image, text = self.encode_image(images), self.text_embedding(texts)
        combiner = getattr(self, "combiner", None)
        return combiner(image, text) if combiner is not None else l2_normalize(image + text)

    @torch.no_grad()
    def embed_composed(self, images: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """Retrieval interface (TGIR): one query per (reference image, text) pair, (N, D) unit norm."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.composed_embedding(images.to(self._parameter_device()), texts)

    # -------------------------------------------------------------- forward
    def run(self, sample_list) -> Dict:
        """sample_list: the keys of the head (module docstring).

        Returns {"losses": {"<loss>": scalar}} plus, contrastive:
        image_embedding / text_embedding (B, D); zeroshot: scores (B, C);
        composition and ocir: query_embedding / target_embedding (B, D); all unit norm."""
        if self.head == ZEROSHOT:
            return self.run_zeroshot(sample_list)
        if self.head == COMPOSITION:
            return self._forward_composition(sample_list)
        if self.head == OCIR:
            return self._forward_ocir(sample_list)
        return self._forward_contrastive(sample_list)

    def _forward_contrastive(self, sample_list) -> Dict:
        _require(sample_list, ["image", "text"], CONTRASTIVE)
        image_embedding = self.encode_image(sample_list["image"])
        if self.average_views and sample_list.get("image_2", None) is not None:
            second = self.encode_image(sample_list["image_2"])
            image_embedding = average_view_embeddings(torch.stack([image_embedding, second], dim=1))
        text_embedding = self.text_embedding(released_towers.batch_texts(sample_list, "clip"))
        loss = contrastive_loss(
            image_embedding,
            text_embedding,
            self.logit_scale(),
            gather=self.gather_negatives and self.training,
            label_smoothing=self.label_smoothing if self.training else 0.0,
        )
        return {"losses": {"itc": loss}, "image_embedding": image_embedding, "text_embedding": text_embedding}

    def _forward_composition(self, sample_list) -> Dict:
        _require(sample_list, ["reference_image", "target_image", "text"], COMPOSITION)
        texts = released_towers.batch_texts(sample_list, "clip")
        query = self.composed_embedding(sample_list["reference_image"], texts)
        target = self.encode_image(sample_list["target_image"])
        loss = batch_classification_loss(query, target, self.logit_scale(), self.gather_negatives)
        return {"losses": {"batch_classification": loss}, "query_embedding": query, "target_embedding": target}

    def _forward_ocir(self, sample_list) -> Dict:
        keys = ["outfit_images", "outfit_mask", "outfit_categories", "blank_image", "blank_category"]
        _require(sample_list, keys, OCIR)
        items = outfit_item_embeddings(self.encode_image, sample_list["outfit_images"], sample_list["outfit_mask"])
        query = self.ocir_head.outfit_query(
            items,
            sample_list["outfit_categories"].long(),
            sample_list["outfit_mask"].bool(),
            sample_list["blank_category"].long(),
        )
        target = self.encode_image(sample_list["blank_image"])
        loss = batch_classification_loss(query, target, self.logit_scale(), self.gather_negatives)
        return {"losses": {"ocir": loss}, "query_embedding": query, "target_embedding": target}


class CLIPNetwork(CLIPMethods, nn.Module):
    """CLIP without MMF: ``CLIPNetwork(options)(batch)``."""

    def __init__(self, options: ClipOptions):
        super().__init__()
        self.build_network(options)

    def forward(self, batch) -> Dict[str, Any]:
        return self.run(batch)
