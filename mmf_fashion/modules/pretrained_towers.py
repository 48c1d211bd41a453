"""Released transformers checkpoints (ALIGN, CLIP, FashionCLIP) as the four towers
of a dual encoder. Plain torch + transformers: nothing here imports MMF.

Cheatsheet::

    from mmf_fashion.modules.pretrained_towers import ReleasedTowersMixin, load_released

    released = load_released("openai/clip-vit-base-patch32", "clip")  # or a save_pretrained directory
    released.towers      # {"image_encoder", "image_projection", "text_encoder", "text_projection"}
    released.tokenizer   # the checkpoint's own transformers tokenizer
    released.image       # ImageSettings(size, mean, std) of its image processor, or None
    released.logit_scale # CLIP: exp(logit_scale); ALIGN: 1 / temperature

    class Towers(ReleasedTowersMixin, nn.Module): ...
    towers = Towers(); towers.attach_released(released)
    towers.embed_images(images); towers.embed_texts(["red dress"])   # (N, D) unit norm

The embeddings are transformers' own definitions, reproduced exactly:
- clip: image = visual_projection(vision_model pooler output); text =
  text_projection(text_model pooler output, the EOS token's state);
  logits = exp(logit_scale) * cosine.
- align: image = vision_model pooler output (the global pool of the
  EfficientNet grid; ``image_projection`` is an identity); text =
  text_projection(text_model's [CLS] state); logits = cosine / temperature.

Image settings: the checkpoint's image processor (preprocessor_config.json or
processor_config.json, read by transformers' AutoImageProcessor) is turned
into the project's ``fashion_image_transform`` terms: ``size`` = the side the
tower sees (crop_size when it centre-crops, else its resize target), and the
per-channel ``mean``/``std`` for which (x/255 - mean) / std equals its
rescale (with ALIGN's offset), normalisation and EfficientNet's include_top
steps. Not reproduced: the resampling filter (bicubic there, bilinear here)
and EfficientNet's non-square resize (here: short side, then centre crop).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.two_stream import l2_normalize

LOGGER = logging.getLogger(__name__)
FAMILIES = {
    # family: (model_type in config.json, transformers class name)
    "align": ("align", "AlignModel"),
    "clip": ("clip", "CLIPModel"),
}
TOWER_NAMES = ("image_encoder", "image_projection", "text_encoder", "text_projection")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
NO_SOURCE = ("", "null", "none", "~")
# OpenAI CLIP's normalisation: what a CLIP checkpoint without an image processor gets
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def pretrained_source(value: Any) -> Optional[str]:
    """The checkpoint named by a `pretrained` option, or None for the scratch build.

    MMF keeps `key=null` from the command line as the string 'null'."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in NO_SOURCE else text


# ------------------------------------------------------------------ image settings
@dataclass(frozen=True)
class ImageSettings:
    """What the towers expect: (3, size, size) images normalised as (x/255 - mean) / std."""

    size: int
    mean: tuple
    std: tuple

    def as_dict(self) -> Dict[str, Any]:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}


def _edge(size: Any, name: str) -> Optional[int]:
    if size is None:
        return None
    height, width = size.get("height"), size.get("width")
    if height is not None:
        if width is not None and int(width) != int(height):
            raise ValueError(f"{name} {dict(size)} is not square; fashion_image_transform makes square images")
        return int(height)
    edge = size.get("shortest_edge")
    return int(edge) if edge is not None else None


def _per_channel(value: Any) -> List[float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    return values * 3 if len(values) == 1 else values


def settings_from_image_processor(processor: Any) -> ImageSettings:
    """A transformers image processor -> ImageSettings (see the module docstring).

    Each step is affine per channel, y = a * (x/255) + b, so the whole chain
    is (x/255 - mean) / std with mean = -b/a and std = 1/a."""
    size = None
    if getattr(processor, "do_center_crop", False):
        size = _edge(getattr(processor, "crop_size", None), "crop_size")
    if size is None:
        size = _edge(getattr(processor, "size", None), "size")
    if size is None:
        raise ValueError(f"{type(processor).__name__}: no size or crop_size to read the image side from")
    rescale = getattr(processor, "do_rescale", True)
    factor = float(getattr(processor, "rescale_factor", 1 / 255)) if rescale else 1.0
    a, b = [255.0 * factor] * 3, [0.0] * 3
    if rescale and getattr(processor, "rescale_offset", False):  # EfficientNet/ALIGN: x * factor - 1
        b = [-1.0] * 3
    std = _per_channel(getattr(processor, "image_std", None) or 1.0)
    if getattr(processor, "do_normalize", False):
        mean = _per_channel(getattr(processor, "image_mean", None) or 0.0)
        a = [ai / s for ai, s in zip(a, std)]
        b = [(bi - m) / s for bi, m, s in zip(b, mean, std)]
    if getattr(processor, "include_top", False):  # EfficientNet divides by std once more
        a = [ai / s for ai, s in zip(a, std)]
        b = [bi / s for bi, s in zip(b, std)]
    return ImageSettings(
        size=int(size),
        mean=tuple(round(-bi / ai, 8) for ai, bi in zip(a, b)),
        std=tuple(round(1.0 / ai, 8) for ai in a),
    )


def read_image_settings(source: str) -> Optional[ImageSettings]:
    """The checkpoint's image settings; None when it has no image processor config
    (or, for a hub name, when it cannot be reached: the model load reports that)."""
    from transformers import AutoImageProcessor

    if os.path.isdir(source):
        if not any(os.path.isfile(os.path.join(source, name)) for name in IMAGE_PROCESSOR_FILES):
            return None
        return settings_from_image_processor(AutoImageProcessor.from_pretrained(source))
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return settings_from_image_processor(processor)


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """PIL image -> (3, size, size) float: the evaluation pipeline of
    fashion_image_transform (short side resize, centre crop, normalise)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(int(size), antialias=True),
            v2.CenterCrop(int(size)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


# ------------------------------------------------------------------ loading
def checkpoint_model_type(source: str) -> str:
    """model_type from the checkpoint's config.json (a local directory or a hub name)."""
    if os.path.isdir(source):
        path = os.path.join(source, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source}: no config.json; expected a directory written by save_pretrained")
        with open(path, encoding="utf-8") as handle:
            return str(json.load(handle).get("model_type"))
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(source)
    except OSError as error:
        raise OSError(f"{source}: not a local directory, and not loadable as a hub name ({error})") from error
    return str(config.get("model_type"))


def check_model_type(source: str, family: str) -> None:
    expected, class_name = FAMILIES[family]
    found = checkpoint_model_type(source)
    if found != expected:
        raise ValueError(
            f"{source}: the checkpoint's model_type is '{found}', but the '{family}' model needs model_type "
            f"'{expected}' (a transformers {class_name} saved with save_pretrained, or its hub name)"
        )


def _has_safetensors(source: str) -> bool:
    return os.path.isdir(source) and any(name.endswith(".safetensors") for name in os.listdir(source))


def load_tokenizer(source: str):
    """The checkpoint's tokenizer, or None when it has none.

    A local directory is checked for tokenizer files first: given a directory
    without them, AutoTokenizer builds an empty tokenizer from config.json."""
    from transformers import AutoTokenizer

    if os.path.isdir(source):
        if not any(os.path.isfile(os.path.join(source, name)) for name in TOKENIZER_FILES):
            return None
        return AutoTokenizer.from_pretrained(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return None


@dataclass
class Released:
    """A loaded checkpoint, split into what the adapters use."""

    family: str
    source: str
    towers: Dict[str, nn.Module]
    tokenizer: Any
    tokenizer_origin: str
    image: Optional[ImageSettings]
    logit_scale: float
    log_logit_scale: Optional[torch.Tensor]  # CLIP keeps the scale in log space: copied as is
    embed_dim: int
    max_text_length: int
    image_size: int


def _align_parts(model) -> Dict[str, Any]:
    # AlignModel reads [CLS] before BERT's pooler; an unused pooler would get no gradient (DDP)
    model.text_model.pooler = None
    temperature = float(model.temperature.detach())
    return {
        "towers": {
            "image_encoder": model.vision_model,
            "image_projection": nn.Identity(),
            "text_encoder": model.text_model,
            "text_projection": model.text_projection,
        },
        "logit_scale": 1.0 / temperature,
        "log_logit_scale": None,
        "embed_dim": int(model.config.projection_dim),
        "max_text_length": int(model.config.text_config.max_position_embeddings),
        "image_size": int(model.config.vision_config.image_size),
    }


def _clip_parts(model) -> Dict[str, Any]:
    log_scale = model.logit_scale.detach().clone()
    return {
        "towers": {
            "image_encoder": model.vision_model,
            "image_projection": model.visual_projection,
            "text_encoder": model.text_model,
            "text_projection": model.text_projection,
        },
        "logit_scale": float(log_scale.exp()),
        "log_logit_scale": log_scale,
        "embed_dim": int(model.config.projection_dim),
        "max_text_length": int(model.config.text_config.max_position_embeddings),
        "image_size": int(model.config.vision_config.image_size),
    }


def load_released(source: str, family: str, fallback_tokenizer: Optional[Callable[[], Any]] = None) -> Released:
    """Load a released checkpoint of ``family`` ("align" | "clip") from a hub name
    or a local save_pretrained directory, in float32.

    fallback_tokenizer: called when the checkpoint has no tokenizer (else that is an error)."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"unknown checkpoint family '{family}'; known: {sorted(FAMILIES)}")
    check_model_type(source, family)
    _, class_name = FAMILIES[family]
    model_class = getattr(transformers, class_name)
    # safetensors when the directory has them (no pickle); a hub name lets transformers choose
    use_safetensors = True if _has_safetensors(source) else None
    model = model_class.from_pretrained(source, use_safetensors=use_safetensors, dtype=torch.float32)
    parts = _align_parts(model) if family == "align" else _clip_parts(model)

    tokenizer, origin = load_tokenizer(source), source
    if tokenizer is None:
        if fallback_tokenizer is None:
            raise FileNotFoundError(
                f"{source}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the checkpoint's tokenizer "
                f"(or its processor) into it with save_pretrained"
            )
        tokenizer = fallback_tokenizer()
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        origin = f"the fallback {name} (none in the checkpoint)"
    vocab_size = int(model.config.text_config.vocab_size)
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the text model's vocabulary has {vocab_size}"
        )
    image = read_image_settings(source)
    LOGGER.info(
        "%s checkpoint %s: tokenizer from %s; image settings %s",
        family,
        source,
        origin,
        image.as_dict() if image else "none (the config's)",
    )
    return Released(family=family, source=source, tokenizer=tokenizer, tokenizer_origin=origin, image=image, **parts)


# ------------------------------------------------------------------ features
def released_image_features(
    family: str, image_encoder: nn.Module, image_projection: nn.Module, images: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """images (B, 3, H, W) -> {"pooled": (B, C), "embedding": (B, D) unit norm}."""
    if family == "clip":
        side = int(image_encoder.config.image_size)
        # another resolution needs interpolated position embeddings; the native one stays exact
        interpolate = tuple(images.shape[-2:]) != (side, side)
        output = image_encoder(pixel_values=images, interpolate_pos_encoding=interpolate)
    else:
        output = image_encoder(pixel_values=images)
    pooled = output.pooler_output
    return {"pooled": pooled, "embedding": l2_normalize(image_projection(pooled))}


def released_text_features(
    family: str,
    text_encoder: nn.Module,
    text_projection: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> Dict[str, torch.Tensor]:
    """input_ids, attention_mask (B, L) -> {"hidden": (B, L, H), "pooled": (B, H), "embedding": (B, D) unit norm}."""
    output = text_encoder(input_ids=input_ids, attention_mask=attention_mask)
    sentence = output.pooler_output if family == "clip" else output.last_hidden_state[:, 0]
    return {
        "hidden": output.last_hidden_state,
        "pooled": sentence,
        "embedding": l2_normalize(text_projection(sentence)),
    }


def tokenize_with(tokenizer, texts: Sequence[str], max_length: int, device) -> Dict[str, torch.Tensor]:
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=int(max_length), return_tensors="pt")
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}


def batch_texts(batch: Any, model_name: str) -> List[str]:
    """The raw strings of a batch (its `text` key), for models that tokenise with their checkpoint's tokenizer."""
    texts = batch.get("text", None) if hasattr(batch, "get") else None
    if texts is None:
        raise KeyError(
            f"{model_name} tokenises the raw text with its checkpoint's tokenizer: the batch needs its 'text' "
            f"list (every fashion builder emits it); keys present: {sorted(batch.keys())}"
        )
    return [texts] if isinstance(texts, str) else [str(text) for text in texts]


class ReleasedTowersMixin:
    """The encode / tokenize / embed methods over a released checkpoint's towers.

    Mixed into an nn.Module (the MMF CLIP model) so the towers are direct
    children named as TOWER_NAMES (lr multipliers and state mappings by prefix)."""

    def attach_released(self, released: Released) -> None:
        for name in TOWER_NAMES:
            setattr(self, name, released.towers[name])
        self.released = released
        self.embed_dim = released.embed_dim
        self.max_text_length = released.max_text_length

    def freeze_towers(self) -> None:
        for name in TOWER_NAMES:
            for parameter in getattr(self, name).parameters():
                parameter.requires_grad_(False)

    def _parameter_device(self) -> torch.device:
        return self.text_projection.weight.device

    def image_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return released_image_features(self.released.family, self.image_encoder, self.image_projection, images)

    def text_features(self, input_ids, attention_mask, token_type_ids=None) -> Dict[str, torch.Tensor]:
        return released_text_features(
            self.released.family, self.text_encoder, self.text_projection, input_ids, attention_mask
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, D) unit norm."""
        return self.image_features(images)["embedding"]

    def encode_text(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """input_ids, attention_mask (B, L) -> (B, D) unit norm."""
        return self.text_features(input_ids, attention_mask)["embedding"]

    def tokenize(self, texts, max_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """The checkpoint's tokenizer, truncated to the text model's positions."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = min(int(max_length or self.max_text_length), self.released.max_text_length)
        return tokenize_with(self.released.tokenizer, texts, length, self._parameter_device())

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Retrieval interface: images (N, 3, H, W) -> (N, D) unit norm (in chunks, no grad)."""
        device = self._parameter_device()
        chunks = [
            self.encode_image(images[start : start + batch_size].to(device))
            for start in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.embed_dim, device=device)

    @torch.no_grad()
    def embed_texts(self, texts, batch_size: int = 64, max_length: Optional[int] = None) -> torch.Tensor:
        """Retrieval interface: list[str] (N) -> (N, D) unit norm (in chunks, no grad)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size], max_length=max_length)
            chunks.append(self.encode_text(tokens["input_ids"], tokens["attention_mask"]))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.embed_dim, device=self._parameter_device())

    def image_transform(self) -> Callable:
        """PIL image -> (3, S, S): the checkpoint's image settings (its native size
        and OpenAI's normalisation when it ships no image processor)."""
        image = self.released.image or ImageSettings(self.released.image_size, CLIP_MEAN, CLIP_STD)
        return eval_transform(image.size, image.mean, image.std)


# ------------------------------------------------------------------ heads
class GatedCombiner(nn.Module):
    """Composes a reference image and a modification text into a TGIR query
    (the CLIP4Cir combiner's form), over unit-norm tower embeddings (B, D):

        joint = [relu(W_i image), relu(W_t text)]
        g     = sigmoid(MLP_g(joint))                 # (B, 1): how much the text moves the query
        query = normalise(MLP_m(joint) + g * text + (1 - g) * image)

    The residual gated sum makes the untrained combiner already the mean of
    the two embeddings (g ~ 0.5), which is a fair zero-shot TGIR baseline."""

    def __init__(self, dim: int, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.image_in = nn.Linear(dim, hidden)
        self.text_in = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.mix = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.gate = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        joint = self.dropout(torch.cat([F.relu(self.image_in(image)), F.relu(self.text_in(text))], dim=-1))
        gate = torch.sigmoid(self.gate(joint))
        return l2_normalize(self.mix(joint) + gate * text + (1 - gate) * image)


def outfit_item_embeddings(
    encode_image: Callable[[torch.Tensor], torch.Tensor], outfit_images: torch.Tensor, outfit_mask: torch.Tensor
) -> torch.Tensor:
    """outfit_images (B, K, 3, H, W), outfit_mask (B, K) -> (B, K, D); only the real
    items go through the image tower, padded slots stay zero."""
    batch, slots = outfit_mask.shape
    real = outfit_mask.bool().reshape(-1)
    flat = outfit_images.reshape(batch * slots, *outfit_images.shape[2:])
    embedded = encode_image(flat[real])
    full = embedded.new_zeros(batch * slots, embedded.shape[-1])
    return full.index_copy(0, real.nonzero().squeeze(1), embedded).view(batch, slots, -1)
