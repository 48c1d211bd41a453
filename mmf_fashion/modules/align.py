"""ALIGN (ICML 2021) as a plain torch network: a dual encoder, its contrastive loss and prompt zero-shot.

Cheatsheet::

    from mmf_fashion.modules.align import ALIGNNetwork, AlignOptions
    net = ALIGNNetwork(options)              # AlignOptions: every field (models/configs/align.yaml)
    output = net(batch)                      # {"losses": {"itc"}, "image_embedding", "text_embedding"}
    net.set_class_names(["maxi dress", "tote bag"])
    net.zeroshot_scores(images)              # (B, C) over the class prompts
    net.embed_images(images); net.embed_texts(["red dress"])   # (N, D) unit norm

The MMF model `align` (models/align.py) is the same network behind MMF's
BaseModel; it also finds the class names (from the dataset, a file, a list).

Heads (``head``):
- ``contrastive``: symmetric InfoNCE with a learnable temperature and
  optional label smoothing, negatives gathered from every rank
  (``modules.losses.contrastive_loss``); returns ``image_embedding`` and
  ``text_embedding`` (B, D);
- ``zeroshot``: each class name in every template, the prompts embedded and
  averaged per class; ``scores`` (B, C) = scale * image @ class^T, with a
  cross entropy against ``targets`` when the batch has them.

Batch keys: ``image`` (B, 3, H, W); ``input_ids``, ``attention_mask`` (B, L)
(the scratch build) or ``text`` list[str] (released weights, tokenised here
with the checkpoint's tokenizer); optional ``image_2`` with
``average_views``; ``targets`` (B,) for the zeroshot loss.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules import pretrained_towers as released_towers
from mmf_fashion.modules.losses import LogitScale, contrastive_loss
from mmf_fashion.modules.two_stream import TwoStreamMixin, average_view_embeddings

CONTRASTIVE = "contrastive"
ZEROSHOT = "zeroshot"
HEADS = (CONTRASTIVE, ZEROSHOT)


@dataclass
class AlignOptions:
    """Every option of ALIGN, no defaults: they live in models/configs/align.yaml (documented there).
    ``zeroshot`` is read by the prompt classifier (templates, max_length) and the class-name lookup."""

    head: str
    pretrained: Optional[str]
    image_encoder: str
    image_pretrained: Optional[str]
    text_encoder: Dict[str, Any]
    embed_dim: int
    text_pooling: str
    temperature: float
    learnable_temperature: bool
    max_scale: float
    label_smoothing: float
    gather_negatives: bool
    average_views: bool
    max_text_length: int
    zeroshot: Dict[str, Any]


class PromptZeroShotMethods:
    """Zero-shot classification by text prompts, for dual encoders with encode_image /
    encode_text / tokenize / logit_scale (ALIGN and CLIP). class_names() are given with
    set_class_names (the MMF models look them up themselves); class_embeddings() (C, D)
    are cached in eval mode."""

    def configure_prompts(self, zeroshot: Mapping[str, Any], model_name: str) -> None:
        self.templates = list(zeroshot.get("templates", None) or ["a photo of a {}"])
        for template in self.templates:
            if "{}" not in template:
                raise ValueError(f"zeroshot template '{template}' must contain '{{}}' where the class name goes")
        self.prompt_max_length = int(zeroshot.get("max_length", 16))
        self._zeroshot_model_name = model_name
        self._class_names: Optional[List[str]] = None
        self._class_embedding_cache: Optional[torch.Tensor] = None

    def class_names(self) -> List[str]:
        if self._class_names is None:
            raise ValueError(f"{self._zeroshot_model_name} zeroshot: no class names; call set_class_names(names)")
        return self._class_names

    def set_class_names(self, names: List[str]) -> None:
        self._class_names = [str(name) for name in names]
        self._class_embedding_cache = None

    def prompts(self) -> List[str]:
        """Every class name in every template, class-major: C * T prompts."""
        return [template.format(name) for name in self.class_names() for template in self.templates]

    def class_embeddings(self) -> torch.Tensor:
        """(C, D) unit norm: the mean of the class's prompt embeddings (cached in eval mode)."""
        if not self.training and self._class_embedding_cache is not None:
            return self._class_embedding_cache
        tokens = self.tokenize(self.prompts(), max_length=self.prompt_max_length)
        prompt_embeddings = self.encode_text(tokens["input_ids"], tokens["attention_mask"])
        per_class = prompt_embeddings.reshape(len(self.class_names()), len(self.templates), -1)
        embeddings = average_view_embeddings(per_class)
        if not self.training:
            self._class_embedding_cache = embeddings.detach()
        return embeddings

    def zeroshot_scores(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> logits (B, C) over the class prompts."""
        return self.logit_scale() * self.encode_image(images) @ self.class_embeddings().t()

    def train(self, mode: bool = True):
        self._class_embedding_cache = None  # the text tower may change
        return super().train(mode)

    def load_state_dict(self, state_dict, *args, **kwargs):
        self._class_embedding_cache = None
        return super().load_state_dict(state_dict, *args, **kwargs)

    def run_zeroshot(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """{"scores": (B, C), "losses": {"zeroshot_ce": CE against targets, when present}}."""
        scores = self.zeroshot_scores(batch["image"])
        output = {"scores": scores, "losses": {}}
        targets = batch.get("targets", None)
        if targets is not None:
            if int(targets.max()) >= scores.shape[1] or int(targets.min()) < 0:
                raise ValueError(
                    f"{self._zeroshot_model_name} zeroshot: targets go up to {int(targets.max())} but there are "
                    f"{scores.shape[1]} class names; check zeroshot.class_names against the dataset's labels"
                )
            output["losses"]["zeroshot_ce"] = F.cross_entropy(scores, targets.long())
        return output


def packaged_wordpiece():
    from mmf_fashion.modules.encoders import build_tokenizer

    return build_tokenizer("minilm")  # uncased WordPiece: bert-base-uncased's vocabulary, as ALIGN's


class ALIGNMethods(PromptZeroShotMethods, TwoStreamMixin):
    """Mixin holding ALIGN's modules and maths (see ALIGNNetwork and models/align.py)."""

    def build_network(self, options: AlignOptions) -> None:
        self.released = None
        self.head = str(options.head)
        if self.head not in HEADS:
            raise ValueError(f"model_config.align.head must be one of {HEADS}, got '{self.head}'")
        source = released_towers.pretrained_source(options.pretrained)
        if source:
            self._build_released(source, options)
        else:
            self.build_towers(
                image_encoder=options.image_encoder,
                image_pretrained=options.image_pretrained,
                text_encoder=options.text_encoder,
                embed_dim=int(options.embed_dim),
                text_pooling=str(options.text_pooling),
            )
            self.logit_scale = LogitScale(
                init=1.0 / float(options.temperature),
                learnable=options.learnable_temperature,
                max_value=float(options.max_scale),
            )
        self.label_smoothing = float(options.label_smoothing)
        self.gather_negatives = options.gather_negatives
        self.average_views = options.average_views
        self.configure_prompts(options.zeroshot or {}, "align")

    def _build_released(self, source: str, options: AlignOptions) -> None:
        released = released_towers.load_released(source, "align", fallback_tokenizer=packaged_wordpiece)
        for name in released_towers.TOWER_NAMES:
            setattr(self, name, released.towers[name])
        self.released = released
        self.embed_dim = released.embed_dim
        self.text_pooling = "cls"  # AlignModel's text embedding
        self.max_text_length = int(options.max_text_length)
        # the clamp may not cut the checkpoint's own scale
        self.logit_scale = LogitScale(
            init=released.logit_scale,
            learnable=options.learnable_temperature,
            max_value=max(float(options.max_scale), released.logit_scale),
        )
        if released.image is not None:
            image = released.image
            self.image_transform = functools.partial(released_towers.eval_transform, image.size, image.mean, image.std)

    # ------------------------------------------------------ released weights
    def image_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.released is None:
            return super().image_features(images)
        return released_towers.released_image_features("align", self.image_encoder, self.image_projection, images)

    def tokenizer(self):
        return super().tokenizer() if self.released is None else self.released.tokenizer

    def text_inputs(self, batch):
        """(input_ids, attention_mask, token_type_ids) of the batch's text. The scratch
        build reads the dataset's ids (the same packaged vocabulary as tokenize());
        released weights tokenise the raw text with the checkpoint's tokenizer."""
        if self.released is None:
            return batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids", None)
        tokens = self.tokenize(released_towers.batch_texts(batch, "align"), max_length=self.max_text_length)
        return tokens["input_ids"], tokens["attention_mask"], None

    # -------------------------------------------------------------- forward
    def image_embedding(self, batch) -> torch.Tensor:
        embedding = self.encode_image(batch["image"])
        if self.average_views and batch.get("image_2", None) is not None:
            second = self.encode_image(batch["image_2"])
            embedding = average_view_embeddings(torch.stack([embedding, second], dim=1))
        return embedding

    def run(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        """contrastive: {"losses": {"itc"}, "image_embedding", "text_embedding"};
        zeroshot: {"losses": {"zeroshot_ce"} (with targets), "scores"}."""
        if self.head == ZEROSHOT:
            return self.run_zeroshot(batch)
        image_embedding = self.image_embedding(batch)
        text_embedding = self.encode_text(*self.text_inputs(batch))
        loss = contrastive_loss(
            image_embedding,
            text_embedding,
            self.logit_scale(),
            gather=self.gather_negatives and self.training,
            label_smoothing=self.label_smoothing if self.training else 0.0,
        )
        return {"losses": {"itc": loss}, "image_embedding": image_embedding, "text_embedding": text_embedding}


class ALIGNNetwork(ALIGNMethods, nn.Module):
    """ALIGN without MMF: ``ALIGNNetwork(options)(batch)``."""

    def __init__(self, options: AlignOptions):
        super().__init__()
        self.build_network(options)

    def forward(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        return self.run(batch)
