"""FashionViL as a plain torch network: the five heads, the three modes, the retrieval interface.

Cheatsheet::

    from mmf_fashion.modules.fashionvil import FashionViLNetwork
    net = FashionViLNetwork({
        "head": "contrastive",                       # pretraining | contrastive | composition
        "image_encoder": {"name": "resnet18"},        #   | classification | ocir
        "text_encoder": {"name": "tiny", "hidden_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2},
    })
    output = net(batch)            # {"losses": {"itc": ...}, "image_embedding": ..., ...}
    net.embed_texts(["red silk dress"]); net.embed_images(images)
    net.embed_composed(images, ["make it blue"]); net.match_scores(images, ids, mask)

Modes (chosen by the head):
- early fusion, single stream (classification): fused pooled [CLS] -> MLP;
- late fusion, two streams (contrastive, pretraining eval): image emb vs
  text emb, each projected by ITC's f / g to contrastive_dim (256 for
  BERT-base), L2-normalised, cosine * learnable s (logit_scale, init 4.0);
- early-fusion two streams (composition): query = fused(text + reference
  image) averaged over the visual outputs; target = the candidate's image emb.

Batch keys per head (see tasks.py for the pretraining tasks):
- contrastive: image (B, 3, H, W), input_ids / attention_mask (B, L)
- composition: reference_image, target_image (B, 3, H, W), input_ids, attention_mask
- classification: image, input_ids, attention_mask [, targets (B,) for
  classification.target subcategory, category_id (B,) for category]
- ocir: outfit_images (B, K, 3, H, W), outfit_mask (B, K), outfit_categories (B, K),
  blank_image (B, 3, H, W), blank_category (B,); in-batch negatives of another
  category than the query's blank are masked (ocir.negatives: same_category | all)
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.encoders import build_tokenizer
from mmf_fashion.modules.fashionvil.encoder import FashionViLEncoding
from mmf_fashion.modules.fashionvil.heads import (
    CategorySubspaces,
    ClassificationHead,
    ContrastiveProjection,
    CosineClassifier,
    ITMHead,
    MLMHead,
    MPFCHead,
    resolve_contrastive_dim,
)
from mmf_fashion.modules.fashionvil.tasks import PRETRAINING_TASKS, ocir_loss, require, run_itc
from mmf_fashion.modules.losses import LogitScale, batch_classification_loss
from mmf_fashion.modules.task_sampler import TaskSampler
from mmf_fashion.modules.vqvae import load_frozen_tokenizer

HEADS = ("pretraining", "contrastive", "composition", "classification", "ocir")
CLASSIFICATION_TARGETS = {"subcategory": "targets", "category": "category_id"}  # option -> batch key
OCIR_NEGATIVES = ("same_category", "all")
# official task ratios (MODELS.md)
DEFAULT_TASK_RATIOS = {"itc": 0.2, "itm": 0.15, "mlm": 0.15, "mpfc": 0.15, "mvc": 0.2, "pac": 0.15}


def _section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = config.get(key)
    return value if value is not None else {}


def count_attributes(path: str) -> int:
    """Size of the PAC vocabulary in an attributes.json ({"attributes": [word, ...]})."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"PAC attributes file '{path}' not found: set model_config.fashionvil.pac.num_attributes "
            "or mine the vocabulary (mmf-fashion data mine-attributes)"
        )
    with open(path, encoding="utf-8") as handle:
        content = json.load(handle)
    attributes = content.get("attributes") if isinstance(content, dict) else None
    if not isinstance(attributes, list) or not attributes:
        raise ValueError(f"{path}: field 'attributes' must be a non-empty list of words")
    return len(attributes)


class FashionViLMethods(FashionViLEncoding):
    """Mixin holding FashionViL's heads and forward logic; see FashionViLNetwork
    (plain torch) and mmf_fashion.models.fashionvil.FashionViL (MMF)."""

    def build_network(self, config: Mapping[str, Any]) -> None:
        """Build encoders and the heads that `config.head` needs (see the YAML for every key)."""
        self.head_type = str(config.get("head") or "pretraining")
        if self.head_type not in HEADS:
            raise ValueError(f"model_config.fashionvil.head must be one of {HEADS}, got '{self.head_type}'")
        self.build_encoders(config)
        hidden = self.hidden_size
        self.text_encoder_name = str(_section(config, "text_encoder").get("name") or "tiny")
        self.max_text_length = int(config.get("max_text_length") or 75)
        self.logit_scale = LogitScale(init=float(config.get("logit_scale") or 4.0))
        self.gather_negatives = bool(config.get("gather_negatives", True))
        pretraining = _section(config, "pretraining")
        self.itm_swap_probability = float(pretraining.get("itm_swap_probability", 0.5))
        self.mpfc_tokenizer = None
        self.task_sampler = None
        self._text_tokenizer = None

        self.contrastive_dim = resolve_contrastive_dim(config.get("contrastive_dim"), hidden)

        tasks = set()
        if self.head_type == "pretraining":
            ratios = pretraining.get("tasks") or DEFAULT_TASK_RATIOS
            unknown = sorted(set(dict(ratios)) - set(PRETRAINING_TASKS))
            if unknown:
                raise ValueError(f"pretraining.tasks: unknown tasks {unknown}; known: {sorted(PRETRAINING_TASKS)}")
            self.task_sampler = TaskSampler(ratios, seed=int(pretraining.get("seed") or 0))
            tasks = set(self.task_sampler.tasks)
        if self.head_type in ("pretraining", "contrastive"):
            # late fusion ranks in ITC's space (pretraining evaluates with ITC)
            self.itc_projection = ContrastiveProjection(hidden, self.contrastive_dim)
        if "mvc" in tasks:
            self.mvc_projection = ContrastiveProjection(hidden, self.contrastive_dim)
        if "itm" in tasks or config.get("build_itm_head", False):
            self.itm_head = ITMHead(hidden)
        if "mlm" in tasks:
            self.mlm_head = MLMHead(hidden, self.text_encoder.config.vocab_size)
        if "mpfc" in tasks:
            path = config.get("tokenizer_checkpoint")
            if not path:
                raise ValueError(
                    "the mpfc task needs model_config.fashionvil.tokenizer_checkpoint (a fashion_vqvae "
                    "checkpoint: run projects/vqvae/configs/train.yaml first)"
                )
            self.mpfc_tokenizer = load_frozen_tokenizer(str(path), config.get("tokenizer_config"))
            self.mpfc_head = MPFCHead(hidden, self.mpfc_tokenizer.codebook_size)
        if "pac" in tasks:
            pac = _section(config, "pac")
            num_attributes = pac.get("num_attributes") or count_attributes(str(pac.get("attributes_file")))
            self.pac_head = CosineClassifier(hidden, int(num_attributes), scale=float(pac.get("scale") or 10.0))
        if self.head_type == "classification":
            classification = _section(config, "classification")
            self.classification_target = str(classification.get("target") or "subcategory")
            if self.classification_target not in CLASSIFICATION_TARGETS:
                raise ValueError(
                    f"model_config.fashionvil.classification.target must be one of "
                    f"{sorted(CLASSIFICATION_TARGETS)}, got '{self.classification_target}'"
                )
            self.classification_head = ClassificationHead(
                hidden, int(classification.get("num_classes") or 121), float(classification.get("dropout", 0.1))
            )
        if self.head_type == "ocir":
            ocir = _section(config, "ocir")
            self.ocir_negatives = str(ocir.get("negatives") or "same_category")
            if self.ocir_negatives not in OCIR_NEGATIVES:
                raise ValueError(
                    f"model_config.fashionvil.ocir.negatives must be one of {OCIR_NEGATIVES}, "
                    f"got '{self.ocir_negatives}'"
                )
            self.ocir_head = CategorySubspaces(
                hidden,
                int(ocir.get("num_categories") or 16),
                num_subspaces=int(ocir.get("num_subspaces") or 5),
                category_dim=int(ocir.get("category_dim") or 32),
            )

    # ------------------------------------------------------------ dispatch
    def pretraining_task(self, update: int) -> str:
        return self.task_sampler.task_for_update(update)

    def run_head(self, batch: Mapping[str, Any], task: Optional[str] = None, update: int = 0) -> Dict[str, Any]:
        """One forward of the configured head. Returns {"losses": {name: scalar}, ...outputs}.

        Pretraining in train mode runs one task: `task` if given, else the
        sampler's task for `update`; in eval mode it runs ITC and returns the
        retrieval embeddings."""
        if self.head_type == "pretraining":
            if not self.training:
                output = run_itc(self, batch)
                output["task"] = "itc"
                return output
            task = task or self.pretraining_task(update)
            if task not in PRETRAINING_TASKS or task not in self.task_sampler.tasks:
                raise ValueError(f"pretraining task '{task}' is not one of {self.task_sampler.tasks}")
            output = PRETRAINING_TASKS[task](self, batch)
            output["task"] = task
            return output
        if self.head_type == "contrastive":
            output = run_itc(self, batch)
            output["losses"] = {"contrastive": output["losses"].pop("itc")}
            return output
        if self.head_type == "composition":
            return self.run_composition(batch)
        if self.head_type == "classification":
            return self.run_classification(batch)
        return self.run_ocir(batch)

    def run_composition(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """TGIR: early-fusion two streams, batch-based classification loss."""
        require(batch, ["reference_image", "target_image", "input_ids", "attention_mask"], "composition")
        query = self.composed_embedding(
            batch["reference_image"], batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        )
        query = F.normalize(query, dim=-1)
        target = F.normalize(self.image_embedding(batch["target_image"]), dim=-1)
        loss = batch_classification_loss(query, target, self.logit_scale(), self.gather_negatives)
        return {"losses": {"batch_classification": loss}, "query_embedding": query, "target_embedding": target}

    def run_classification(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """SCR / CR: early fusion single stream; cross entropy when the labels are present.

        classification.target subcategory reads `targets` (the builders' subcategory
        label), category reads `category_id`. The labels used are returned as
        `targets`, so accuracy / macro_f1 score the same labels as the loss."""
        require(batch, ["image", "input_ids", "attention_mask"], "classification")
        fused = self.fuse(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), self.image_tokens(batch["image"])
        )
        scores = self.classification_head(fused.pooled)
        losses = {}
        output = {"losses": losses, "scores": scores}
        key = CLASSIFICATION_TARGETS[self.classification_target]
        targets = batch.get(key)
        if targets is not None:
            targets = targets.view(-1).long()
            if int(targets.max()) >= scores.shape[1] or int(targets.min()) < 0:
                raise ValueError(
                    f"classification targets ({key}, {self.classification_target}) in [{int(targets.min())}, "
                    f"{int(targets.max())}] but the head has {scores.shape[1]} classes "
                    "(model_config.fashionvil.classification.num_classes)"
                )
            losses["cross_entropy"] = F.cross_entropy(scores, targets)
            output["targets"] = targets
        return output

    def outfit_item_embeddings(self, outfit_images: torch.Tensor, outfit_mask: torch.Tensor) -> torch.Tensor:
        """outfit_images (B, K, 3, H, W), outfit_mask (B, K) -> (B, K, hidden); padding rows stay zero."""
        batch, slots = outfit_images.shape[:2]
        valid = outfit_mask.bool().reshape(-1)
        flat = outfit_images.reshape(batch * slots, *outfit_images.shape[2:])
        embeddings = self.image_embedding(flat[valid])
        full = embeddings.new_zeros(batch * slots, embeddings.shape[-1])
        full = full.index_copy(0, valid.nonzero().squeeze(1), embeddings)
        return full.view(batch, slots, -1)

    def run_ocir(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """OCIR: query = category-conditioned outfit vector, target = the blank item's image emb."""
        require(batch, ["outfit_images", "outfit_mask", "outfit_categories", "blank_image", "blank_category"], "ocir")
        items = self.outfit_item_embeddings(batch["outfit_images"], batch["outfit_mask"])
        query = self.ocir_head.outfit_query(
            items, batch["outfit_categories"].long(), batch["outfit_mask"].bool(), batch["blank_category"].long()
        )
        target = F.normalize(self.image_embedding(batch["blank_image"]), dim=-1)
        loss = ocir_loss(
            query,
            target,
            batch["blank_category"],
            self.logit_scale(),
            self.gather_negatives,
            same_category=self.ocir_negatives == "same_category",
        )
        return {"losses": {"ocir": loss}, "query_embedding": query, "target_embedding": target}

    # ------------------------------------------------------------ retrieval interface
    def _parameter_device(self) -> torch.device:
        return self.image_projection.weight.device

    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        """texts -> input_ids, attention_mask, token_type_ids (N, L) on the model's device."""
        if self._text_tokenizer is None:
            self._text_tokenizer = build_tokenizer(self.text_encoder_name)
        encoded = self._text_tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        device = self._parameter_device()
        return {
            key: encoded[key].to(device) for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded
        }

    def _itc_side(self, side: str):
        """ITC's f or g where the head ranks in ITC's space, else the hidden space (TGIR, OCIR targets)."""
        projection = getattr(self, "itc_projection", None)
        return getattr(projection, side) if projection is not None else (lambda x: x)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> (N, D) L2-normalised: the late-fusion image stream,
        D = contrastive_dim (pretraining, contrastive) or hidden (composition, ocir targets)."""
        return F.normalize(self._itc_side("f")(self.image_embedding(images.to(self._parameter_device()))), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: List[str]) -> torch.Tensor:
        """texts (N,) -> (N, D) L2-normalised (late-fusion text stream, ITC's g where built)."""
        tokens = self.tokenize(texts)
        text = self.text_embedding(tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"))
        return F.normalize(self._itc_side("g")(text), dim=-1)

    @torch.no_grad()
    def embed_composed(self, images: torch.Tensor, texts: List[str]) -> torch.Tensor:
        """Reference images (N, 3, H, W) + modification texts (N,) -> TGIR queries (N, hidden), L2-normalised."""
        tokens = self.tokenize(texts)
        query = self.composed_embedding(
            images.to(self._parameter_device()),
            tokens["input_ids"],
            tokens["attention_mask"],
            tokens.get("token_type_ids"),
        )
        return F.normalize(query, dim=-1)

    @torch.no_grad()
    def match_scores(
        self,
        images: Any,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """ITM log-odds that each (image, text) pair matches: (P,), higher = better match.

        Call as match_scores(images (P, 3, H, W), input_ids (P, L), attention_mask (P, L))
        or match_scores(pairs) with a mapping holding image, input_ids, attention_mask."""
        if getattr(self, "itm_head", None) is None:
            raise ValueError("match_scores needs the ITM head: pretrain with itm or set build_itm_head: true")
        if isinstance(images, Mapping):
            pairs = images
            require(pairs, ["image", "input_ids", "attention_mask"], "match_scores")
            images, input_ids = pairs["image"], pairs["input_ids"]
            attention_mask, token_type_ids = pairs["attention_mask"], pairs.get("token_type_ids")
        device = self._parameter_device()
        token_type_ids = token_type_ids.to(device) if token_type_ids is not None else None
        fused = self.fuse(
            input_ids.to(device), attention_mask.to(device), token_type_ids, self.image_tokens(images.to(device))
        )
        logits = self.itm_head(fused.pooled)
        return logits[:, 1] - logits[:, 0]


class FashionViLNetwork(FashionViLMethods, nn.Module):
    """FashionViL without MMF: `FashionViLNetwork(config)(batch)`; config as the
    fashionvil model_config (a dict or DictConfig)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.build_network(config)

    def forward(self, batch: Mapping[str, Any], task: Optional[str] = None, update: int = 0) -> Dict[str, Any]:
        return self.run_head(batch, task=task, update=update)
