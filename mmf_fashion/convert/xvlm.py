"""The official X-VLM checkpoints (zengyan-97/X-VLM: Swin vision encoder, BERT text + fusion) -> our `xvlm`.

Cheatsheet::

    from mmf_fashion.convert import xvlm
    xvlm.is_official(state)                            # key names of the official layout?
    weights, report = xvlm.convert(state)              # our names; nothing dropped silently
    report = xvlm.convert_file("official.th", "ours.pth")
    report = xvlm.load_official(model, state, source="official.th")   # shapes checked first

The target model is built with ``image_encoder.type: swin`` (``name: swin_b``,
``image_size``/``window_size`` 224/7 or 384/12), a BERT-base text model split
6 + 6 and ``cross_encoder.key_value_width: vision``; docs/models/xvlm_checkpoints.md
has the full config, the key mapping and where the maths agree. Every
official key is mapped, named as derived (tied copies, index buffers and masks
our model rebuilds, each checked against what it must equal) or named as unmatched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from mmf_fashion.convert.fashionvil import ConversionReport, official_weights

VISION = "vision_encoder."
SWIN_MARKER = VISION + "layers.0.blocks.0.attn.qkv.weight"
# pretraining files hold BertForMaskedLM (text_encoder.bert.* + text_encoder.cls.*), fine-tuned
# ones a bare BertModel (text_encoder.*)
TEXT_PREFIXES = ("text_encoder.bert.", "text_encoder.")
WORDS = "embeddings.word_embeddings.weight"
MLM = "text_encoder.cls.predictions."
SWIN = "image_encoder.swin."

_BLOCK = re.compile(r"vision_encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_DOWNSAMPLE = re.compile(r"vision_encoder\.layers\.(\d+)\.downsample\.(.+)")
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_BLOCK_RENAMES = (("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.3."))

PREFIXES: Tuple[Tuple[str, str], ...] = (
    (VISION + "patch_embed.proj.", SWIN + "features.0.0."),
    (VISION + "patch_embed.norm.", SWIN + "features.0.2."),
    (VISION + "norm.", SWIN + "norm."),
    ("vision_proj.", "image_projection."),
    ("text_proj.", "text_projection."),
    ("itm_head.", "itm_head."),  # Linear - LayerNorm - GELU - Linear, class 1 = match in both
    ("bbox_head.", "box_head."),
    (MLM + "transform.dense.", "mlm_head.transform.0."),
    (MLM + "transform.LayerNorm.", "mlm_head.transform.2."),
)
EXACT = {MLM + "bias": "mlm_head.bias"}
TEMPERATURE = ("temp", "itc_scale.log_scale")  # ours keeps log(1 / temperature)
SPLIT = "cross_encoder.split"

# the config option that fixes a shape mismatch, by our key
_HINTS = (
    ("crossattention.self.key", "model_config.xvlm.cross_encoder.key_value_width: vision"),
    ("crossattention.self.value", "model_config.xvlm.cross_encoder.key_value_width: vision"),
    ("relative_position", "model_config.xvlm.image_encoder.window_size (official: 7 at 224 px, 12 at 384 px)"),
    ("image_encoder.", "model_config.xvlm.image_encoder (type: swin, name: swin_b, or embed_dim/depths/num_heads)"),
    ("image_projection.", "model_config.xvlm.embed_dim (official: 256) and the image encoder's width"),
    ("text_projection.", "model_config.xvlm.embed_dim (official: 256)"),
    ("word_embeddings", "model_config.xvlm.text_encoder (a BERT with the official vocabulary: bert-base-uncased)"),
    ("mlm_head.bias", "model_config.xvlm.text_encoder (a BERT with the official vocabulary: bert-base-uncased)"),
)
_TEXT_HINT = "model_config.xvlm.text_encoder (official: bert-base-uncased, fusion_layers: 6)"


@dataclass
class XVLMConversionReport(ConversionReport):
    not_set: List[str] = field(default_factory=list)  # our parameters the file leaves at their initial values

    def lines(self) -> List[str]:
        out = super().lines()
        if self.not_set:
            out.append(f"  not set by the file, kept at their initial values ({len(self.not_set)}):")
            out += [f"    {name}" for name in self.not_set]
        return out


def _text_prefix(weights: Mapping[str, Any]) -> Optional[str]:
    return next((prefix for prefix in TEXT_PREFIXES if prefix + WORDS in weights), None)


def is_official(state: Any) -> bool:
    """Whether `state` (checkpoint or state dict) has the official X-VLM key layout
    (vision_encoder.* and the BERT embeddings under text_encoder[.bert].*)."""
    try:
        weights = official_weights(state)
    except ValueError:
        return False
    return _text_prefix(weights) is not None and any(str(key).startswith(VISION) for key in weights)


def _window_index(window: int) -> torch.Tensor:
    """Swin's relative position index of a window x window window (the official formula)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def _shift_mask(windows: int, window: int) -> torch.Tensor:
    """The official shifted-window attention mask (windows, w*w, w*w) of a square stage."""
    size = int(round(math.sqrt(windows))) * window
    shift = window // 2
    regions = torch.zeros(size, size)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for count, (h, w) in enumerate((h, w) for h in cuts for w in cuts):
        regions[h, w] = count
    regions = regions.view(size // window, window, size // window, window).permute(0, 2, 1, 3).reshape(-1, window**2)
    mask = regions.unsqueeze(1) - regions.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _derived(key: str, value: Any, weights: Mapping[str, Any]) -> Optional[str]:
    """Why an official key holds nothing of its own, or None (mapped or unmatched instead)."""
    if not isinstance(value, torch.Tensor):
        return None
    if key.endswith(".attn.attn_mask") and value.dim() == 3 and value.shape[1] == value.shape[2]:
        window = int(round(math.sqrt(value.shape[1])))
        if window * window == value.shape[1] and torch.equal(value.float(), _shift_mask(value.shape[0], window)):
            return "shifted-window mask, rebuilt in torchvision's forward"
        return None
    if key.endswith("embeddings.position_ids"):
        expected = torch.arange(value.shape[-1]).expand_as(value)
        return "index buffer (0..max_position-1), rebuilt by our model" if torch.equal(value, expected) else None
    twin = {MLM + "decoder.weight": None, MLM + "decoder.bias": MLM + "bias"}
    if key in twin:
        prefix = _text_prefix(weights)
        other = weights.get(twin[key] or f"{prefix}{WORDS}")
        if isinstance(other, torch.Tensor) and other.shape == value.shape and torch.equal(other, value):
            return "tied to the word embeddings" if twin[key] is None else f"the same tensor as {twin[key]}"
    return None


def _split(weights: Mapping[str, Any], prefix: str) -> Tuple[int, int]:
    """(text layers, fusion layers): the fusion layers are those with a cross-attention."""
    layers, fusion = set(), set()
    for key in weights:
        match = _LAYER.match(key[len(prefix) :]) if key.startswith(prefix) else None
        if match:
            layers.add(int(match.group(1)))
            if match.group(2).startswith("crossattention."):
                fusion.add(int(match.group(1)))
    if not fusion:
        raise ValueError("no text_encoder layer has a crossattention: not an X-VLM text/fusion encoder")
    first = min(fusion)
    if fusion != {i for i in layers if i >= first}:
        raise ValueError(f"X-VLM fusion layers must be the upper layers; layers with cross-attention: {sorted(fusion)}")
    return first, len(fusion)


def _target(key: str, text_prefix: str, num_text: int) -> Optional[str]:
    if key in EXACT:
        return EXACT[key]
    match = _BLOCK.match(key)
    if match:
        stage, block, rest = int(match.group(1)), match.group(2), match.group(3)
        if rest == "attn.attn_mask":  # derived when it is the official mask, else unmatched
            return None
        for old, new in _BLOCK_RENAMES:
            rest = new + rest[len(old) :] if rest.startswith(old) else rest
        return f"{SWIN}features.{2 * stage + 1}.{block}.{rest}"
    match = _DOWNSAMPLE.match(key)
    if match:
        return f"{SWIN}features.{2 * int(match.group(1)) + 2}.{match.group(2)}"
    for official, ours in PREFIXES:
        if key.startswith(official):
            return ours + key[len(official) :]
    if key.startswith(text_prefix):
        rest = key[len(text_prefix) :]
        if rest.startswith("embeddings.") and not rest.endswith("position_ids"):
            return "text_encoder." + rest
        match = _LAYER.match(rest)
        if match:
            index = int(match.group(1))
            if index < num_text:
                return f"text_encoder.encoder.layer.{index}.{match.group(2)}"
            return f"cross_encoder.layers.{index - num_text}.{match.group(2)}"
    return None


def convert(state: Any, source: str = "checkpoint") -> Tuple[Dict[str, torch.Tensor], XVLMConversionReport]:
    """Official checkpoint or state dict -> (our xvlm state dict, report).

    The state dict also gets cross_encoder.split = (text layers, fusion layers), read from
    which official layers have a cross-attention (6 + 6 for the released models)."""
    weights = official_weights(state, source)
    text_prefix = _text_prefix(weights)
    if text_prefix is None or not any(str(key).startswith(VISION) for key in weights):
        raise ValueError(
            f"{source} is not an official X-VLM checkpoint: it lacks vision_encoder.* or "
            f"text_encoder[.bert].{WORDS}; its first keys are {sorted(weights)[:8]}"
        )
    if SWIN_MARKER not in weights:
        vision = sorted(key for key in weights if key.startswith(VISION))[:5]
        raise ValueError(
            f"{source}: only X-VLM checkpoints with a Swin vision encoder convert (the released X-VLM-base "
            f"ones); this one's vision encoder (CLIP-ViT or DeiT) has {vision}"
        )
    try:
        num_text, num_fusion = _split(weights, text_prefix)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    report = XVLMConversionReport(source=source)
    converted: Dict[str, torch.Tensor] = {}
    for key in sorted(weights):
        value = weights[key]
        why = _derived(key, value, weights)
        if why is not None:
            report.derived[key] = why
            continue
        if key == TEMPERATURE[0] and isinstance(value, torch.Tensor) and value.numel() == 1:
            converted[TEMPERATURE[1]] = (1.0 / value.detach().float().reshape(())).log()
            report.mapped.append(TEMPERATURE)
            continue
        target = _target(key, text_prefix, num_text)
        if target is None or not isinstance(value, torch.Tensor):
            report.unmatched.append(key)
            continue
        if key.endswith(".attn.relative_position_index"):
            # torchvision keeps the same index flattened; copied only if it is the Swin formula's
            window = int(round(math.sqrt(value.shape[0]))) if value.dim() == 2 else 0
            if not window or not torch.equal(value.long(), _window_index(window)):
                report.unmatched.append(key)
                continue
            value = value.flatten()
        converted[target] = value.detach().clone()
        report.mapped.append((key, target))
    converted[SPLIT] = torch.tensor([num_text, num_fusion], dtype=torch.long)
    return converted, report


def _hint(key: str) -> str:
    return next((hint for part, hint in _HINTS if part in key), _TEXT_HINT)


def shape_errors(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> List[str]:
    """'key: file (shape) vs model (shape) -> the option' for every converted key whose shape differs."""
    own = model.state_dict()
    return [
        f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)} -> set {_hint(key)}"
        for key, value in sorted(weights.items())
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]


def load_official(model: torch.nn.Module, state: Any, source: str = "checkpoint") -> XVLMConversionReport:
    """Convert and load into our xvlm model. A model of another size or layout raises ValueError
    naming `source`, the first mismatched keys with both shapes and the option that fixes each."""
    from mmf_fashion.trainers.checkpointing import load_model_state

    weights, report = convert(state, source=source)
    own = model.state_dict()
    if not any(key in own for key in weights if key != SPLIT):
        raise ValueError(f"{source}: none of the converted keys belong to this model; first: {sorted(weights)[:8]}")
    errors = shape_errors(model, weights)
    if errors:
        raise ValueError(
            f"{source}: the official X-VLM weights do not fit this xvlm model ({len(errors)} shape mismatches):\n  "
            + "\n  ".join(errors[:12])
        )
    missing, unexpected = load_model_state(model, weights, strict=False, source=source, what="model 'xvlm'")
    for key in unexpected:  # converted keys this model lacks
        report.unmatched.append(next(o for o, ours in report.mapped if ours == key) + f" (-> {key}: not in this model)")
    report.mapped = [(o, ours) for o, ours in report.mapped if ours not in set(unexpected)]
    report.not_set = list(missing)
    return report


def convert_file(path: str, out: str, allow_unsafe: bool = False) -> XVLMConversionReport:
    """Read an official file weights-only (unless allow_unsafe), write our state dict to `out`."""
    from mmf_fashion.trainers.checkpointing import atomic_torch_save, safe_torch_load

    state = safe_torch_load(path, allow_unsafe=allow_unsafe)
    weights, report = convert(state, source=str(path))
    atomic_torch_save(weights, out)
    return report
