"""Two-stream (dual encoder) pieces shared by ALIGN and COTS. Plain torch.

Cheatsheet::

    from mmf_fashion.modules.two_stream import TwoStreamMixin, l2_normalize

    class Towers(TwoStreamMixin, nn.Module):     # MMF models mix it into BaseModel
        pass
    towers = Towers()
    nn.Module.__init__(towers)                   # (BaseModel.__init__ does this)
    towers.build_towers(image_encoder="efficientnet_b0", image_pretrained=None,
                        text_encoder={"name": "tiny", "hidden_size": 64},
                        embed_dim=64)
    image_embedding = towers.encode_image(images)               # (B, D), unit norm
    text_embedding = towers.encode_text(input_ids, attention_mask)  # (B, D), unit norm
    product = average_view_embeddings(torch.stack([e1, e2], 1))     # (B, D)

Layout (the names the trainer's lr multipliers target by prefix):
- ``image_encoder``: any torchvision classifier cut before its pooling
  (``encoders.build_image_encoder``), giving a (B, C, h, w) grid;
- ``image_projection``: Linear(C, D) applied to the global average pool;
- ``text_encoder``: a BERT; its [CLS] output (position 0) is the sentence
  (``text_pooling: mean`` averages the real tokens instead);
- ``text_projection``: Linear(H, D).
Both embeddings are L2-normalised, so a dot product is a cosine.

The functions ``image_features`` / ``text_features`` take the modules as
arguments so the momentum copies of COTS (other modules, same code) reuse them.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.encoders import build_image_encoder, build_text_encoder, masked_mean
from mmf_fashion.modules.state_dicts import strip_prefix

TOWER_NAMES = ("image_encoder", "image_projection", "text_encoder", "text_projection")


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0", "none", "null", "")


def config_flag(value: Any, name: str = "flag") -> bool:
    """A boolean option as written in YAML or on the command line.

    MMF keeps ``key=false`` from the command line as the STRING 'false'
    (only Python literals such as ``False`` are decoded), and ``bool('false')``
    is True; this reads true/false/yes/no/on/off/1/0 (any case) and raises on
    anything else.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features, dim=-1, eps=1e-6)


def image_features(
    image_encoder: nn.Module, image_projection: nn.Module, images: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """images (B, 3, H, W) -> {"grid": (B, h*w, C), "pooled": (B, C), "embedding": (B, D) unit norm}."""
    grid = image_encoder(images)  # (B, C, h, w)
    tokens = grid.flatten(2).transpose(1, 2)  # (B, h*w, C)
    pooled = tokens.mean(dim=1)
    return {
        "grid": tokens,
        "grid_size": grid.shape[-2:],
        "pooled": pooled,
        "embedding": l2_normalize(image_projection(pooled)),
    }


def text_features(
    text_encoder: nn.Module,
    text_projection: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: Optional[torch.Tensor] = None,
    pooling: str = "cls",
) -> Dict[str, torch.Tensor]:
    """input_ids, attention_mask (B, L) -> {"hidden": (B, L, H), "cls": (B, H) the pooled
    sentence, "embedding": (B, D) unit norm}.

    pooling: "cls" (the [CLS] output, ALIGN's choice) or "mean" (mean over the
    real tokens; a randomly initialised BERT separates sentences far sooner this way).
    """
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    hidden = text_encoder(**kwargs).last_hidden_state
    if pooling == "cls":
        sentence = hidden[:, 0]
    elif pooling == "mean":
        sentence = masked_mean(hidden, attention_mask)
    else:
        raise ValueError(f"text pooling must be 'cls' or 'mean', got '{pooling}'")
    return {"hidden": hidden, "cls": sentence, "embedding": l2_normalize(text_projection(sentence))}


def average_view_embeddings(view_embeddings: torch.Tensor, view_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, V, D) embeddings of V views of each product -> (B, D) unit-norm mean.

    view_mask (B, V) bool marks the real views (default: all); a product
    with no real view gets a zero vector.
    """
    if view_mask is None:
        mean = view_embeddings.mean(dim=1)
    else:
        weights = view_mask.to(view_embeddings.dtype).unsqueeze(-1)
        mean = (view_embeddings * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return l2_normalize(mean)


def average_by_group(embeddings: torch.Tensor, group_ids: torch.Tensor):
    """Average the rows that share a group id (views of one product).

    embeddings (N, D), group_ids (N,) -> (unique_ids (G,), embeddings (G, D)
    unit norm), unique_ids sorted ascending.
    """
    unique_ids, inverse = torch.unique(group_ids, sorted=True, return_inverse=True)
    sums = embeddings.new_zeros(unique_ids.shape[0], embeddings.shape[1])
    sums.index_add_(0, inverse, embeddings)
    return unique_ids, l2_normalize(sums)


def _as_dict(config: Any) -> Dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return {str(key): value for key, value in config.items()}
    try:  # an OmegaConf node
        from omegaconf import OmegaConf

        return dict(OmegaConf.to_container(config, resolve=True))
    except Exception as error:  # pragma: no cover - defensive
        raise TypeError(f"text_encoder config must be a mapping, got {type(config).__name__}") from error


class TwoStreamMixin:
    """Adds the four tower modules and the encode methods to an nn.Module.

    Mixed into the MMF models so the towers are direct children (prefix
    ``image_encoder.`` etc. for lr multipliers); pure torch, no MMF import.
    """

    def build_towers(
        self,
        image_encoder: str = "efficientnet_b0",
        image_pretrained: Optional[str] = None,
        text_encoder: Optional[Mapping[str, Any]] = None,
        embed_dim: int = 640,
        text_pooling: str = "cls",
    ) -> None:
        if text_pooling not in ("cls", "mean"):
            raise ValueError(f"text_pooling must be 'cls' or 'mean', got '{text_pooling}'")
        self.text_pooling = text_pooling
        self.image_encoder = build_image_encoder(image_encoder, pretrained=image_pretrained)
        self.image_projection = nn.Linear(self.image_encoder.out_channels, embed_dim)
        text_config = _as_dict(text_encoder)
        text_config.setdefault("add_pooling_layer", False)  # [CLS] is taken before BERT's pooler
        self.text_encoder = build_text_encoder(text_config)
        self.text_projection = nn.Linear(self.text_encoder.config.hidden_size, embed_dim)
        self.embed_dim = int(embed_dim)
        self.text_encoder_name = text_config.get("name", "tiny")

    @property
    def image_channels(self) -> int:
        return int(self.image_encoder.out_channels)

    @property
    def text_hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    def image_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return image_features(self.image_encoder, self.image_projection, images)

    def text_features(self, input_ids, attention_mask, token_type_ids=None) -> Dict[str, torch.Tensor]:
        return text_features(
            self.text_encoder,
            self.text_projection,
            input_ids,
            attention_mask,
            token_type_ids,
            pooling=getattr(self, "text_pooling", "cls"),
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, D) unit norm."""
        return self.image_features(images)["embedding"]

    def encode_text(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """input_ids, attention_mask (B, L) -> (B, D) unit norm."""
        return self.text_features(input_ids, attention_mask, token_type_ids)["embedding"]

    def tokenizer(self):
        """The WordPiece tokenizer matching the text encoder (built once, offline for tiny/minilm)."""
        cached = self.__dict__.get("_tokenizer_cache")
        if cached is None:
            from mmf_fashion.modules.encoders import build_tokenizer

            cached = build_tokenizer(self.text_encoder_name)
            self.__dict__["_tokenizer_cache"] = cached
        return cached

    def tokenize(self, texts, max_length: int = 40) -> Dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer()(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        device = self.text_projection.weight.device
        return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Retrieval interface: images (N, 3, H, W) -> (N, D) unit norm (in chunks, no grad)."""
        device = self.text_projection.weight.device
        chunks = [
            self.encode_image(images[start : start + batch_size].to(device))
            for start in range(0, len(images), batch_size)
        ]
        if not chunks:
            return torch.zeros(0, self.embed_dim, device=device)
        return torch.cat(chunks, dim=0)

    @torch.no_grad()
    def embed_texts(self, texts, batch_size: int = 64, max_length: int = 40) -> torch.Tensor:
        """Retrieval interface: list[str] (N) -> (N, D) unit norm (in chunks, no grad)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size], max_length=max_length)
            chunks.append(self.encode_text(tokens["input_ids"], tokens["attention_mask"]))
        if not chunks:
            return torch.zeros(0, self.embed_dim, device=self.text_projection.weight.device)
        return torch.cat(chunks, dim=0)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with requires_grad False everywhere (a momentum / EMA copy)."""
    duplicate = copy.deepcopy(module)
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
    return duplicate


class ShortlistTowers(TwoStreamMixin, nn.Module):
    """A frozen two-stream model (ALIGN's towers) that shortlists candidates for re-ranking."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.build_towers(
            image_encoder=config.get("image_encoder", "efficientnet_b0"),
            image_pretrained=config.get("image_pretrained") or None,
            text_encoder=config.get("text_encoder") or {"name": "tiny"},
            embed_dim=int(config.get("embed_dim", 640)),
        )
        checkpoint = config.get("checkpoint") or None
        if checkpoint:
            self.load_towers(str(checkpoint))
        self.requires_grad_(False)

    def load_towers(self, path: str, allow_unsafe: Optional[bool] = None) -> None:
        """Load the four towers from a checkpoint of a two-stream model (ALIGN: save/<run>/align_final.pth),
        weights-only unless allow_unsafe (None: the run's checkpoint.allow_unsafe_load)."""
        from mmf_fashion.trainers import checkpointing as ckpt

        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"fashionbert shortlist.checkpoint '{path}': no such file (train the two-stream model first, "
                "e.g. projects/align/configs/pretrain.yaml)"
            )
        if allow_unsafe is None:
            allow_unsafe = ckpt.unsafe_load_allowed()
        state = ckpt.safe_torch_load(path, allow_unsafe=allow_unsafe)
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(
                f"fashionbert shortlist.checkpoint '{path}': not a state dict or a checkpoint with a 'model' entry"
            )
        state = strip_prefix(state)
        towers = {k: v for k, v in state.items() if k.split(".", 1)[0] in TOWER_NAMES}
        missing, _ = self.load_state_dict(towers, strict=False)
        if missing:
            raise ValueError(
                f"fashionbert shortlist.checkpoint '{path}': no weights for {missing[:8]} "
                "(is it a two-stream model with the same shortlist sizes?)"
            )

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: batch-norm statistics and dropout stay in eval mode
