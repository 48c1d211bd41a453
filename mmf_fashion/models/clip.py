"""CLIP and FashionCLIP from released weights (transformers' CLIPModel) as the MMF model `clip`.

Cheatsheet::

    mmf_run config=projects/clip/configs/zeroshot_scr.yaml model=clip dataset=fashiongen run_type=val \
        model_config.clip.pretrained=patrickjohncyh/fashion-clip
    mmf_run config=projects/clip/configs/itr.yaml model=clip dataset=fashiongen model_config.clip.pretrained=<dir>
    mmf_run config=projects/clip/configs/tgir.yaml model=clip dataset=fashioniq model_config.clip.pretrained=<dir>

    model = registry.get_model_class("clip")(config); model.build()
    model.embed_images(images); model.embed_texts(["red dress"])    # (N, D) unit norm
    model.embed_composed(images, ["make it blue"])                  # TGIR queries (any head, see below)
    model.zeroshot_scores(images)                                   # (N, C) over the class prompts

``model_config.clip.pretrained``: a hub name or a directory written by
save_pretrained holding a CLIPModel (model_type clip: OpenAI CLIP, FashionCLIP),
its tokenizer and its image processor; another model_type is refused.

Heads (``model_config.clip.head``):
- ``contrastive`` (ITR/TIR fine-tuning): ALIGN's loss,
  ``modules.losses.contrastive_loss`` with negatives gathered from every rank
  and optional label smoothing; eval returns ``image_embedding`` /
  ``text_embedding`` (B, D) for r@k_general.
- ``zeroshot`` (SCR): ALIGN's prompt classifier (``align.PromptZeroShot``):
  class names from the dataset's vocabulary unless given, ``scores`` (B, C)
  for accuracy / macro_f1; a CE on ``targets`` in training.
- ``composition`` (TGIR): query = ``GatedCombiner(reference image emb, text
  emb)``, target = the target's image embedding (= embed_images, so the
  fashioniq gallery embeds alike); ``batch_classification_loss``. With
  ``freeze_towers: true`` only the combiner and the temperature learn
  (CLIP4Cir's second stage). embed_composed without this head (no combiner)
  is the training-free baseline normalise(image emb + text emb).
- ``ocir``: query = fashionvil's category-conditioned subspaces
  (``CategorySubspaces``) over the outfit items' image embeddings, target =
  the blank's image embedding; ``batch_classification_loss``; keys
  ``query_embedding`` / ``target_embedding`` as r@k_ocir reads them.

Text: the datasets tokenise with the project's BERT WordPiece (processors/text.py),
whose ids mean nothing to CLIP's BPE vocabulary, and their text processor cannot
take CLIP's tokenizer (it emits no token_type_ids). So the model keeps one way:
it tokenises the batch's raw ``text`` with the checkpoint's tokenizer, the same
object that embeds prompts and embed_texts queries; the dataset's input_ids are
not read. Images: the project YAMLs set the dataset's image size / mean / std
from the checkpoint's image processor (``pretrained_image`` resolver, see
models/align.py); ``image_transform()`` gives the index the same pipeline.

Input keys: contrastive: image (B, 3, H, W), text list[str] [, image_2];
zeroshot: image [, targets (B,)]; composition: reference_image, target_image
(B, 3, H, W), text; ocir: outfit_images (B, K, 3, H, W), outfit_mask (B, K),
outfit_categories (B, K), blank_image (B, 3, H, W), blank_category (B,).
"""
from __future__ import annotations

import os
from typing import Dict, List

import torch
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel

from mmf_fashion.models.align import PromptZeroShot, _loss_key
from mmf_fashion.modules import pretrained_towers as released_towers
from mmf_fashion.modules.fashionvil.heads import CategorySubspaces
from mmf_fashion.modules.losses import LogitScale, batch_classification_loss, contrastive_loss
from mmf_fashion.modules.pretrained_towers import GatedCombiner, ReleasedTowersMixin, outfit_item_embeddings
from mmf_fashion.modules.two_stream import average_view_embeddings, config_flag, l2_normalize

CONTRASTIVE = "contrastive"
ZEROSHOT = "zeroshot"
COMPOSITION = "composition"
OCIR = "ocir"
HEADS = (CONTRASTIVE, ZEROSHOT, COMPOSITION, OCIR)


def _require(sample_list, keys: List[str], head: str) -> None:
    missing = [key for key in keys if sample_list.get(key, None) is None]
    if missing:
        raise KeyError(
            f"clip head '{head}' needs the sample-list keys {missing}; the batch has {sorted(sample_list.keys())}"
        )


@registry.register_model("clip")
class CLIP(ReleasedTowersMixin, PromptZeroShot, BaseModel):
    """CLIP / FashionCLIP dual encoder from released weights; four heads."""

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(__file__), "configs", "clip.yaml")

    def build(self):
        config = self.config
        self.head = str(config.get("head", CONTRASTIVE))
        if self.head not in HEADS:
            raise ValueError(f"model_config.clip.head must be one of {HEADS}, got '{self.head}'")
        source = released_towers.pretrained_source(config.get("pretrained", None))
        if source is None:
            raise ValueError(
                "model_config.clip.pretrained: name a CLIP checkpoint (hub name such as openai/clip-vit-base-patch32 "
                "or a directory written by CLIPModel.save_pretrained); clip has no scratch build"
            )
        released = released_towers.load_released(source, "clip")
        self.attach_released(released)
        self.max_text_length = int(config.get("max_text_length", 77))
        learnable = config_flag(config.get("learnable_temperature", True), "model_config.clip.learnable_temperature")
        self.logit_scale = LogitScale(init=released.logit_scale, learnable=learnable,
                                      max_value=max(float(config.get("max_scale", 100.0)), released.logit_scale))
        with torch.no_grad():  # the checkpoint's log value as is: exp() then gives CLIPModel's scale exactly
            self.logit_scale.log_scale.copy_(released.log_logit_scale)
        if config_flag(config.get("freeze_towers", False), "model_config.clip.freeze_towers"):
            self.freeze_towers()
        if self.head == OCIR:  # outfits are images only: an untouched trainable tower would stall DDP
            for tower in (self.text_encoder, self.text_projection):
                tower.requires_grad_(False)
        self.label_smoothing = float(config.get("label_smoothing", 0.0))
        self.gather_negatives = config_flag(config.get("gather_negatives", True), "model_config.clip.gather_negatives")
        self.average_views = config_flag(config.get("average_views", False), "model_config.clip.average_views")
        self.configure_zeroshot(config, "clip")
        if self.head == COMPOSITION:
            composition = config.get("composition", None) or {}
            self.combiner = GatedCombiner(self.embed_dim, int(composition.get("hidden_dim", 512)),
                                          float(composition.get("dropout", 0.1)))
        if self.head == OCIR:
            ocir = config.get("ocir", None) or {}
            self.ocir_head = CategorySubspaces(self.embed_dim, int(ocir.get("num_categories", 16)),
                                               num_subspaces=int(ocir.get("num_subspaces", 5)),
                                               category_dim=int(ocir.get("category_dim", 32)))

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
        return self.composed_embedding(images.to(self._device()), texts)

    # -------------------------------------------------------------- forward
    def forward(self, sample_list) -> Dict:
        """sample_list: the keys of the head (module docstring).

        Returns {"losses": {"<type>/<dataset>/<loss>": scalar}} plus, contrastive:
        image_embedding / text_embedding (B, D); zeroshot: scores (B, C);
        composition and ocir: query_embedding / target_embedding (B, D); all unit norm.

        Example: ``model(batch)["losses"]["train/fashiongen/itc"].backward()``."""
        if self.head == ZEROSHOT:
            return self.forward_zeroshot(sample_list)
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
            image_embedding, text_embedding, self.logit_scale(),
            gather=self.gather_negatives and self.training,
            label_smoothing=self.label_smoothing if self.training else 0.0,
        )
        return {"losses": {_loss_key(sample_list, "itc"): loss},
                "image_embedding": image_embedding, "text_embedding": text_embedding}

    def _forward_composition(self, sample_list) -> Dict:
        _require(sample_list, ["reference_image", "target_image", "text"], COMPOSITION)
        texts = released_towers.batch_texts(sample_list, "clip")
        query = self.composed_embedding(sample_list["reference_image"], texts)
        target = self.encode_image(sample_list["target_image"])
        loss = batch_classification_loss(query, target, self.logit_scale(), self.gather_negatives)
        return {"losses": {_loss_key(sample_list, "batch_classification"): loss},
                "query_embedding": query, "target_embedding": target}

    def _forward_ocir(self, sample_list) -> Dict:
        keys = ["outfit_images", "outfit_mask", "outfit_categories", "blank_image", "blank_category"]
        _require(sample_list, keys, OCIR)
        items = outfit_item_embeddings(self.encode_image, sample_list["outfit_images"], sample_list["outfit_mask"])
        query = self.ocir_head.outfit_query(items, sample_list["outfit_categories"].long(),
                                            sample_list["outfit_mask"].bool(), sample_list["blank_category"].long())
        target = self.encode_image(sample_list["blank_image"])
        loss = batch_classification_loss(query, target, self.logit_scale(), self.gather_negatives)
        return {"losses": {_loss_key(sample_list, "ocir"): loss},
                "query_embedding": query, "target_embedding": target}
