"""Which released weights each registered model accepts, and the option that points at them.

`mmf-fashion info --weights` prints this table; tests check that every
registered model has an entry and that every option named here exists in the
model's default config. Each option takes a hub name or a local path; on a
machine without a hub, download once elsewhere and pass the directory.
Every file is read weights-only (safetensors preferred for transformers
directories); see docs/ARCHITECTURE.md, "Loading checkpoints and weights".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class WeightSource:
    what: str  # the weights, in a user's words
    option: str  # under model_config.<model>
    example: str  # a value for that option


# Any model also starts from one of our own checkpoints (a <model>_final.pth or
# a trainer checkpoint) with checkpoint.resume_file=<file> checkpoint.resume_pretrained=True.
_TEXT = WeightSource(
    "a BERT-architecture text model (the packaged MiniLM-L6 works offline)",
    "text_encoder.name",
    "minilm | bert-base-uncased | <save_pretrained directory>",
)
_TORCHVISION_IMAGE = "torchvision ImageNet weights of the image backbone, or a state dict file"

RELEASED_WEIGHTS: Dict[str, Tuple[WeightSource, ...]] = {
    "align": (
        WeightSource(
            "transformers ALIGN (both towers, projection, temperature)",
            "pretrained",
            "kakaobrain/align-base | <save_pretrained directory>",
        ),
        WeightSource(_TORCHVISION_IMAGE + " (scratch build)", "image_pretrained", "imagenet | <file.pth>"),
        _TEXT,
    ),
    "clip": (
        WeightSource(
            "transformers CLIP or FashionCLIP (towers, projections, logit scale)",
            "pretrained",
            "openai/clip-vit-base-patch32 | patrickjohncyh/fashion-clip | <directory>",
        ),
    ),
    "fashionvil": (
        WeightSource(_TORCHVISION_IMAGE, "image_encoder.pretrained", "imagenet | <file.pth>"),
        _TEXT,
        WeightSource(
            "the official FashionViL checkpoint, converted (mmf-fashion convert fashionvil, or given "
            "as checkpoint.resume_file: converted on load); see docs/models/fashionvil_checkpoints.md",
            "contrastive_dim",
            "0 (the official model has no ITC/MVC projection)",
        ),
        WeightSource(
            "the VQ-VAE image tokenizer trained by projects/vqvae (MPFC targets)",
            "tokenizer_checkpoint",
            "save/vqvae/fashion_vqvae_final.pth",
        ),
    ),
    "fashionbert": (
        WeightSource(_TORCHVISION_IMAGE, "image_encoder.pretrained", "imagenet | <file.pth>"),
        _TEXT,
    ),
    "xvlm": (
        WeightSource(
            "a ViT (transformers directory) or " + _TORCHVISION_IMAGE,
            "image_encoder.pretrained",
            "imagenet | <ViT directory> | <file.pth>",
        ),
        WeightSource(
            "a BERT-architecture text model, split into text and fusion halves",
            "text_encoder.name",
            "minilm | bert-base-uncased | <save_pretrained directory>",
        ),
        WeightSource(
            "the official X-VLM checkpoints (Swin-B + BERT-base 6 + 6), converted with mmf-fashion convert xvlm; "
            "also image_encoder.name=swin_b, cross_encoder.key_value_width=vision: "
            "see docs/models/xvlm_checkpoints.md",
            "image_encoder.type",
            "swin",
        ),
    ),
    "cots": (
        WeightSource(_TORCHVISION_IMAGE, "image_pretrained", "imagenet | <file.pth>"),
        _TEXT,
    ),
    "fashion_vqvae": (),
}

NOT_YET = (
    "official X-VLM checkpoints with a CLIP-ViT or DeiT image encoder (only the Swin ones convert); "
    "start from the encoders above or from an mmf-fashion checkpoint"
)


def lines() -> list:
    """The table as printed by `mmf-fashion info --weights`."""
    out = []
    for model, sources in RELEASED_WEIGHTS.items():
        out.append(f"{model}:")
        if not sources:
            out.append("  trains from scratch (its own checkpoints: see below)")
        for source in sources:
            out.append(f"  model_config.{model}.{source.option}={source.example}")
            out.append(f"      {source.what}")
    out.append("every model: checkpoint.resume_file=<an mmf-fashion checkpoint> checkpoint.resume_pretrained=True")
    out.append(f"not yet: {NOT_YET}")
    return out
