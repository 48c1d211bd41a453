"""X-VLM's layers in plain torch: the ViT / Swin token encoders, the text/fusion split of one BERT, the heads.

Cheatsheet::

    from mmf_fashion.modules.xvlm_layers import build_vit, split_text_model, CrossEncoder, mlp_head
    vit = build_vit({"type": "vit", "image_size": 64, "patch_size": 16, "hidden_size": 64})
    tokens = vit(images)                                    # (B, 1 + N, D): [CLS] + patches
    swin = build_vit({"type": "swin", "name": "swin_b", "image_size": 224})  # [CLS] = mean of 7 x 7 tokens
    upper = split_text_model(text_model, fusion_layers=2)  # the text model keeps the lower layers
    cross = CrossEncoder(text_model.config, upper, num_text_layers=4)
    state = mark_old_layout(state)      # a checkpoint of the old layout, then layout_error() names it

The network that assembles them: modules/xvlm.py (the submodule names and the layout are described there).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.encoders import load_image_weights


class HFViTTokens(nn.Module):
    """transformers ViTModel from a local config: images (B, 3, S, S) -> (B, 1 + N, D)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        pretrained = config.get("pretrained")
        if pretrained:
            self.vit = ViTModel.from_pretrained(pretrained, add_pooling_layer=False)
        else:
            hidden = int(config.get("hidden_size", 64))
            vit_config = ViTConfig(
                image_size=int(config.get("image_size", 64)),
                patch_size=int(config.get("patch_size", 16)),
                hidden_size=hidden,
                num_hidden_layers=int(config.get("num_hidden_layers", 2)),
                num_attention_heads=int(config.get("num_attention_heads", 2)),
                intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
                hidden_dropout_prob=float(config.get("dropout", 0.0)),
                attention_probs_dropout_prob=float(config.get("dropout", 0.0)),
            )
            self.vit = ViTModel(vit_config, add_pooling_layer=False)
        self.image_size = int(self.vit.config.image_size)
        self.patch_size = int(self.vit.config.patch_size)
        self.hidden_size = int(self.vit.config.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=images).last_hidden_state


class TorchvisionViTTokens(nn.Module):
    """torchvision VisionTransformer without its classifier: images -> (B, 1 + N, D)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        import torchvision

        name = str(config.get("name", "vit_b_16"))
        if not name.startswith("vit_"):
            raise ValueError(f"X-VLM image encoder type 'torchvision' needs a ViT name (vit_b_16, ...), got '{name}'")
        image_size = int(config.get("image_size", 224))
        model = torchvision.models.get_model(name, weights=None, image_size=image_size)
        load_image_weights(model, config.get("pretrained"), name)
        model.heads = nn.Identity()
        self.vit = model
        self.image_size = image_size
        self.patch_size = int(model.patch_size)
        self.hidden_size = int(model.hidden_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the patch embedding (a p x p convolution with stride p), row-major like the box-to-patch rule
        patches = self.vit.conv_proj(images).flatten(2).transpose(1, 2)
        cls = self.vit.class_token.expand(patches.shape[0], -1, -1)
        return self.vit.encoder(torch.cat((cls, patches), dim=1))


# torchvision's Swin (v1) variants: embed_dim, depths, num_heads (window 7, patch 4)
SWIN_VARIANTS = {
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}


class SwinTokens(nn.Module):
    """torchvision SwinTransformer (v1) without its classifier, as X-VLM uses Swin:
    images (B, 3, S, S) -> (B, 1 + N, D), the N = (S / 32)^2 tokens of the last stage after
    the final LayerNorm (row-major), preceded by their mean as [CLS].

    torchvision's window attention, relative position bias, patch merging order and
    shifted-window masks are those of the official Swin (and of X-VLM's copy), as long as
    every stage's resolution is a multiple of the window (checked here): torchvision pads
    otherwise, where the official code shrinks the window. ``patch_size`` is the
    stride of the last stage (4 * 2^(stages - 1)), so box -> patch masks use that grid.
    """

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        from torchvision.models.swin_transformer import SwinTransformer

        name = config.get("name")
        if name not in SWIN_VARIANTS:
            raise ValueError(
                f"X-VLM image encoder type 'swin' needs image_encoder.name in {sorted(SWIN_VARIANTS)}, got {name!r}"
            )
        embed_dim, depths, heads = SWIN_VARIANTS[name]
        embed_dim = int(config.get("embed_dim") or embed_dim)
        depths = [int(d) for d in (config.get("depths") or depths)]
        heads = [int(h) for h in (config.get("num_heads") or heads)]
        window = int(config.get("window_size") or 7)
        image_size = int(config.get("image_size", 224))
        self.patch_size = 4 * 2 ** (len(depths) - 1)
        stages = [image_size // (4 * 2**i) for i in range(len(depths))]
        if image_size % self.patch_size or any(size % window for size in stages):
            raise ValueError(
                f"X-VLM Swin: image_encoder.image_size={image_size} gives stage resolutions {stages}; each must be "
                f"a multiple of image_encoder.window_size={window} (official X-VLM: 224 px with window 7, "
                f"384 px with window 12)"
            )
        dropout = float(config.get("dropout", 0.0))
        model = SwinTransformer(
            patch_size=[4, 4],
            embed_dim=embed_dim,
            depths=depths,
            num_heads=heads,
            window_size=[window, window],
            dropout=dropout,
            attention_dropout=dropout,
            stochastic_depth_prob=float(config.get("drop_path_rate", 0.1)),
        )
        load_image_weights(model, config.get("pretrained"), name)
        model.head = nn.Identity()
        self.swin = model
        self.image_size = image_size
        self.hidden_size = embed_dim * 2 ** (len(depths) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.swin.norm(self.swin.features(images)).flatten(1, 2)  # (B, h * w, D), row-major
        return torch.cat((tokens.mean(dim=1, keepdim=True), tokens), dim=1)


def build_vit(config: Mapping[str, Any]) -> nn.Module:
    kind = str(config.get("type", "vit"))
    if kind == "vit":
        return HFViTTokens(config)
    if kind == "torchvision":
        return TorchvisionViTTokens(config)
    if kind == "swin":
        return SwinTokens(config)
    raise ValueError(
        f"X-VLM image_encoder.type must be 'vit' (transformers), 'torchvision' (ViT) or 'swin', got '{kind}'"
    )


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) 1 = attend -> (B, 1, 1, K) additive mask for transformers' attention functions."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


SPLIT_OPTION = "text_encoder.fusion_layers"


def fusion_layer_config(text_config, dropout: Optional[float] = None):
    """A BertConfig for fusion layers shaped like the text model's layers, with cross-attention.

    transformers' BertLayer builds its ``crossattention`` only when the config is a
    decoder with add_cross_attention; the causal flag that comes with it is switched
    off per layer (build_fusion_layer): X-VLM's fusion self-attention is bidirectional.
    """
    from transformers import BertConfig

    drop = float(text_config.hidden_dropout_prob if dropout is None else dropout)
    attention_drop = float(text_config.attention_probs_dropout_prob if dropout is None else dropout)
    return BertConfig(
        hidden_size=int(text_config.hidden_size),
        num_attention_heads=int(text_config.num_attention_heads),
        intermediate_size=int(text_config.intermediate_size),
        hidden_act=text_config.hidden_act,
        layer_norm_eps=float(text_config.layer_norm_eps),
        hidden_dropout_prob=drop,
        attention_probs_dropout_prob=attention_drop,
        initializer_range=float(getattr(text_config, "initializer_range", 0.02)),
        is_decoder=True,
        add_cross_attention=True,
        attn_implementation="sdpa",
    )


def build_fusion_layer(config) -> nn.Module:
    from transformers.models.bert.modeling_bert import BertLayer

    layer = BertLayer(config)
    layer.attention.self.is_causal = False
    return layer


def split_text_model(text_model: nn.Module, fusion_layers: Optional[int]) -> list:
    """Cut a BERT-style text model in two: it keeps its lower layers, the upper ones are returned.

    fusion_layers: how many upper layers become fusion layers; None = half
    (bert-base: 6 text + 6 fusion, X-VLM). The text model's config is updated.
    """
    encoder = getattr(text_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"X-VLM splits a BERT-style text model (encoder.layer); "
            f"{type(text_model).__name__} has no encoder.layer list"
        )
    total = len(layers)
    fusion = total // 2 if fusion_layers is None else int(fusion_layers)
    if not 1 <= fusion < total:
        raise ValueError(
            f"model_config.xvlm.{SPLIT_OPTION}={fusion_layers}: the text model has {total} layers, "
            f"so it must be between 1 and {total - 1} (at least one text and one fusion layer)"
        )
    upper = list(layers[total - fusion :])
    encoder.layer = nn.ModuleList(layers[: total - fusion])
    text_model.config.num_hidden_layers = total - fusion
    return upper


class CrossEncoder(nn.Module):
    """X-VLM's fusion encoder: BertLayers with cross-attention, text (P, L, D) attending to
    image tokens (P, K, D) -> (P, L, D).

    Built from the upper layers of the text model (their self-attention and
    feed-forward weights are copied by name); only the cross-attention starts at
    random. ``split`` = (text layers, fusion layers) is saved with the weights so
    a checkpoint of another layout is named, not half loaded.

    vision_width: None = the image tokens arrive at the text width (K = D); an
    int = each layer's cross-attention key and value read tokens of that width
    (official X-VLM: Linear(1024, 768) for Swin-B and BERT-base).
    """

    def __init__(
        self,
        text_config,
        upper_layers,
        num_text_layers: int,
        dropout: Optional[float] = None,
        vision_width: Optional[int] = None,
    ):
        super().__init__()
        config = fusion_layer_config(text_config, dropout)
        self.layers = nn.ModuleList(build_fusion_layer(config) for _ in upper_layers)
        if vision_width is not None:
            for layer in self.layers:
                attention = layer.crossattention.self
                attention.key = nn.Linear(int(vision_width), attention.key.out_features)
                attention.value = nn.Linear(int(vision_width), attention.value.out_features)
        for layer, source in zip(self.layers, upper_layers):
            missing, unexpected = layer.load_state_dict(source.state_dict(), strict=False)
            not_cross = [key for key in missing if not key.startswith("crossattention.")]
            if unexpected or not_cross:
                raise ValueError(
                    f"X-VLM fusion layers are BERT layers: the text model's layer "
                    f"({type(source).__name__}) does not fit (unexpected {unexpected[:5]}, "
                    f"missing {not_cross[:5]})"
                )
            init_bert_style(layer.crossattention, config.initializer_range)
        self.register_buffer("split", torch.tensor([num_text_layers, len(upper_layers)], dtype=torch.long))

    def forward(self, text_hidden, text_mask, image_tokens, image_mask):
        text_additive = additive_mask(text_mask, text_hidden.dtype)
        image_additive = additive_mask(image_mask, text_hidden.dtype)
        hidden = text_hidden
        for layer in self.layers:
            hidden = layer(
                hidden, text_additive, encoder_hidden_states=image_tokens, encoder_attention_mask=image_additive
            )
        return hidden


_TEXT_LAYER = re.compile(r"text_encoder\.encoder\.layer\.(\d+)\.")
_FUSION_LAYER = re.compile(r"cross_encoder\.layers\.(\d+)\.")


def layout_error(state_dict: Mapping[str, Any], num_text_layers: int, num_fusion_layers: int) -> Optional[str]:
    """Why a state dict cannot load into an X-VLM split (num_text, num_fusion), or None if it can.

    Only state dicts with fusion weights (cross_encoder.*) are checked; the old layout
    (fusion layers stacked on a whole text model) has no ``cross_encoder.split``.
    """
    keys = [str(key) for key in state_dict]
    if not any(key.startswith("cross_encoder.") for key in keys):
        return None
    text = {int(m.group(1)) for m in map(_TEXT_LAYER.match, keys) if m}
    fusion = {int(m.group(1)) for m in map(_FUSION_LAYER.match, keys) if m}
    split = state_dict.get("cross_encoder.split")
    found = (max(text) + 1 if text else 0, max(fusion) + 1 if fusion else 0)
    if split is not None:
        found = tuple(int(v) for v in torch.as_tensor(split).tolist())
        if (
            found == (num_text_layers, num_fusion_layers)
            and all(i < num_text_layers for i in text)
            and all(i < num_fusion_layers for i in fusion)
        ):
            return None
        what = f"a split of {found[0]} text + {found[1]} fusion layers"
    else:
        what = (
            f"the old X-VLM layout (fusion layers stacked on the whole text encoder: at least {found[0]} text "
            f"layers + {found[1]} cross layers, no cross_encoder.split)"
        )
    marking = (
        (" after mmf_fashion.modules.xvlm.mark_old_layout(state) on the whole checkpoint (it records the split)")
        if split is None
        else ""
    )
    return (
        f"X-VLM checkpoint has {what}; this model splits its text model into {num_text_layers} text + "
        f"{num_fusion_layers} fusion layers (model_config.xvlm.{SPLIT_OPTION}). Build the same layout to load "
        f"it: text_encoder.num_hidden_layers = {found[0] + found[1]} (name: tiny) and {SPLIT_OPTION} = "
        f"{found[1]}{marking}; a pretrained text model of another depth needs retraining"
    )


def mark_old_layout(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of an old-layout X-VLM state dict (T text layers, then C cross layers with the same
    BERT layer names) with cross_encoder.split = (T, C) recorded, counted from ALL its keys: it
    then loads into a model built with text_encoder.num_hidden_layers = T + C, fusion_layers = C."""
    keys = [str(key) for key in state_dict]
    text = {int(m.group(1)) for m in map(_TEXT_LAYER.match, keys) if m}
    fusion = {int(m.group(1)) for m in map(_FUSION_LAYER.match, keys) if m}
    if not text or not fusion:
        raise ValueError("mark_old_layout needs text_encoder.encoder.layer.* and cross_encoder.layers.* weights")
    marked = dict(state_dict)
    marked["cross_encoder.split"] = torch.tensor([max(text) + 1, max(fusion) + 1], dtype=torch.long)
    return marked


def mlp_head(width: int, outputs: int) -> nn.Sequential:
    """X-VLM's head: Linear(d, 2d) - LayerNorm - GELU - Linear(2d, outputs)."""
    return nn.Sequential(nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(), nn.Linear(2 * width, outputs))


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder reuses the text encoder's word embeddings (tied)."""

    def __init__(self, word_embeddings: nn.Embedding, eps: float = 1e-12):
        super().__init__()
        vocab, hidden = word_embeddings.weight.shape
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps))
        self.bias = nn.Parameter(torch.zeros(vocab))
        # a list hides the embedding from module registration: no second copy in state_dict
        self._tied = [word_embeddings]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), self._tied[0].weight, self.bias)


def init_bert_style(module: nn.Module, std: float = 0.02) -> None:
    for child in module.modules():
        if isinstance(child, nn.Linear):
            nn.init.normal_(child.weight, std=std)
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.LayerNorm):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)
