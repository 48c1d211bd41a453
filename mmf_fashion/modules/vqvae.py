"""A small convolutional VQ-VAE with an EMA codebook: the image tokenizer of MPFC (and COTS).

Cheatsheet::

    from mmf_fashion.modules.vqvae import VQVAE, load_frozen_tokenizer
    vqvae = VQVAE(codebook_size=1024, codebook_dim=256, downsample=32)
    out = vqvae(images)                 # images (B, 3, H, W), H and W divisible by 32
    loss = out["reconstruction_loss"] + out["commitment_loss"]
    codes = vqvae.encode_codes(images)  # LongTensor (B, (H/32) * (W/32)), values in [0, 1024)

    tokenizer = load_frozen_tokenizer("save/vqvae/fashion_vqvae_final.pth",
                                      {"codebook_size": 1024, "downsample": 32})
    codes = tokenizer.encode_codes(images)   # frozen: no gradient, no codebook update

The grid of codes must match the grid of the image encoder that uses them:
a ResNet turns 224 px into 7x7 (downsample 32), so the tokenizer uses
downsample 32 too; at 64 px both give 2x2, at 96 px 3x3.

The quantiser is `vector_quantize_pytorch.VectorQuantize` (EMA codebook
updates, commitment loss, optional dead-code replacement): its codebook is
updated by exponential moving averages during training, not by the optimizer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from mmf_fashion.modules.state_dicts import strip_prefix
from mmf_fashion.trainers.checkpointing import safe_torch_load, unsafe_load_allowed

# The options VQVAE accepts, with their defaults (the official FashionViL
# tokenizer: 1024 codes of 256 dimensions, 7x7 latent for 224 px input).
VQVAE_DEFAULTS: Dict[str, Any] = {
    "codebook_size": 1024,
    "codebook_dim": 256,
    "hidden_channels": 64,
    "max_channels": 256,
    "downsample": 32,
    "num_res_blocks": 1,
    "decay": 0.99,
    "commitment_weight": 0.25,
    "dead_code_threshold": 2.0,
    "kmeans_init": False,
}


@dataclass
class VQVAEOptions:
    """Every VQVAE option, no defaults: the `fashion_vqvae` model builds it from its YAML
    (models/configs/fashion_vqvae.yaml); plain-torch callers may pass VQVAE(**partial) instead."""

    codebook_size: int
    codebook_dim: int
    hidden_channels: int
    max_channels: int
    downsample: int
    num_res_blocks: int
    decay: float
    commitment_weight: float
    dead_code_threshold: float
    kmeans_init: bool


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _stage_channels(hidden_channels: int, max_channels: int, num_stages: int):
    """Channel width after each stride-2 stage: doubles, capped at max_channels."""
    return [min(hidden_channels * 2**stage, max_channels) for stage in range(num_stages)]


class VQVAE(nn.Module):
    """Conv encoder -> EMA vector quantiser -> conv decoder.

    Args (see VQVAE_DEFAULTS): codebook_size, codebook_dim, hidden_channels,
    max_channels, downsample (a power of two: the total stride, one stride-2
    conv per factor of two), num_res_blocks, decay (EMA), commitment_weight,
    dead_code_threshold (codes whose EMA usage falls below it are re-seeded
    from the batch; 0 turns it off), kmeans_init.
    """

    def __init__(self, **options: Any):
        super().__init__()
        unknown = sorted(set(options) - set(VQVAE_DEFAULTS))
        if unknown:
            raise ValueError(f"VQVAE: unknown options {unknown}; known: {sorted(VQVAE_DEFAULTS)}")
        settings = {**VQVAE_DEFAULTS, **options}
        downsample = int(settings["downsample"])
        num_stages = int(round(math.log2(downsample))) if downsample > 0 else -1
        if num_stages < 1 or 2**num_stages != downsample:
            raise ValueError(f"VQVAE: downsample must be a power of two >= 2, got {downsample}")
        self.downsample = downsample
        self.commitment_weight = float(settings["commitment_weight"])
        self.codebook_size = int(settings["codebook_size"])
        codebook_dim = int(settings["codebook_dim"])
        channels = _stage_channels(int(settings["hidden_channels"]), int(settings["max_channels"]), num_stages)
        res_blocks = int(settings["num_res_blocks"])

        encoder_layers = []
        in_channels = 3
        for out_channels in channels:
            encoder_layers += [nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ReLU()]
            in_channels = out_channels
        encoder_layers += [ResidualBlock(in_channels) for _ in range(res_blocks)]
        encoder_layers += [nn.ReLU(), nn.Conv2d(in_channels, codebook_dim, 1)]
        self.encoder = nn.Sequential(*encoder_layers)

        self.quantizer = VectorQuantize(
            dim=codebook_dim,
            codebook_size=self.codebook_size,
            decay=float(settings["decay"]),
            # the commitment loss is computed in forward() so that it is also
            # reported in eval mode (the library returns zero there)
            commitment_weight=0.0,
            threshold_ema_dead_code=float(settings["dead_code_threshold"]),
            kmeans_init=bool(settings["kmeans_init"]),
            accept_image_fmap=True,
        )

        decoder_layers = [nn.Conv2d(codebook_dim, channels[-1], 3, padding=1)]
        decoder_layers += [ResidualBlock(channels[-1]) for _ in range(res_blocks)]
        decoder_layers.append(nn.ReLU())
        reversed_channels = list(reversed(channels))
        for stage, in_ch in enumerate(reversed_channels):
            last = stage == len(reversed_channels) - 1
            out_ch = 3 if last else reversed_channels[stage + 1]
            decoder_layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1))
            if not last:
                decoder_layers.append(nn.ReLU())
        self.decoder = nn.Sequential(*decoder_layers)

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"VQVAE expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.downsample or width % self.downsample:
            raise ValueError(f"VQVAE: image size {height}x{width} is not divisible by downsample {self.downsample}")

    def grid_shape(self, height: int, width: int):
        """(h, w) of the code grid for an input of height x width."""
        return height // self.downsample, width // self.downsample

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """images (B, 3, H, W) -> reconstruction (B, 3, H, W), codes (B, h, w) long,
        reconstruction_loss (MSE), commitment_loss (already weighted) scalars."""
        self._check_images(images)
        latent = self.encoder(images)
        quantized, codes, _ = self.quantizer(latent)
        reconstruction = self.decoder(quantized)
        # pulls the encoder towards its codes; the codes themselves move by EMA
        commitment = self.commitment_weight * F.mse_loss(latent, quantized.detach())
        return {
            "reconstruction": reconstruction,
            "codes": codes,
            "reconstruction_loss": F.mse_loss(reconstruction, images),
            "commitment_loss": commitment,
        }

    @torch.no_grad()
    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> LongTensor (B, h*w) of code ids in [0, codebook_size), row-major.

        Never updates the codebook (the quantiser runs in eval mode here)."""
        self._check_images(images)
        quantizer_was_training = self.quantizer.training
        self.quantizer.eval()
        try:
            _, codes, _ = self.quantizer(self.encoder(images))
        finally:
            self.quantizer.train(quantizer_was_training)
        return codes.flatten(1).long()

    @torch.no_grad()
    def code_usage(self, codes: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Perplexity and fraction of the codebook used by a batch of codes (for logging)."""
        counts = torch.bincount(codes.flatten(), minlength=self.codebook_size).float()
        probabilities = counts / counts.sum().clamp(min=1)
        entropy = -(probabilities * probabilities.clamp(min=1e-12).log()).sum()
        return {"perplexity": entropy.exp(), "used_fraction": (counts > 0).float().mean()}


class VQTokenizer(nn.Module):
    """A frozen VQVAE seen as an image tokenizer: always in eval mode, no trainable parameters.

    The model that holds it may call .train() on everything; this module
    stays in eval mode so that its EMA codebook never moves.
    """

    def __init__(self, vqvae: VQVAE):
        super().__init__()
        self.vqvae = vqvae
        for parameter in self.vqvae.parameters():
            parameter.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "VQTokenizer":
        return super().train(False)

    @property
    def codebook_size(self) -> int:
        return self.vqvae.codebook_size

    def grid_shape(self, height: int, width: int):
        return self.vqvae.grid_shape(height, width)

    @torch.no_grad()
    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> LongTensor (B, h*w) code ids."""
        return self.vqvae.encode_codes(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_codes(images)


def vqvae_options(config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Keep the VQVAE options of a (model) config, dropping MMF keys such as `losses`."""
    config = dict(config or {})
    return {key: config[key] for key in VQVAE_DEFAULTS if key in config and config[key] is not None}


def _read_checkpoint(path: str, allow_unsafe: Optional[bool] = None) -> Mapping[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQ tokenizer checkpoint '{path}': no such file (train it with projects/vqvae)")
    if allow_unsafe is None:  # the run's checkpoint.allow_unsafe_load / the command's --allow-unsafe-load
        allow_unsafe = unsafe_load_allowed()
    try:
        # UnsafeCheckpointError (not a ValueError) passes through: it names the file and the opt-in
        return safe_torch_load(path, allow_unsafe=allow_unsafe)
    except ValueError as error:
        raise ValueError(
            f"VQ tokenizer checkpoint '{path}' cannot be read ({error}); "
            "pass the fashion_vqvae_final.pth that the training run wrote"
        ) from error


def _vqvae_state(checkpoint: Mapping[str, Any], path: str) -> Dict[str, torch.Tensor]:
    """The VQVAE weights of an MMF checkpoint ({"model": ...}) or a plain state dict,
    with the `module.` (DDP) and `vqvae.` (fashion_vqvae model) prefixes removed."""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: not a state dict or an MMF checkpoint with a 'model' entry")
    tensors = {key: value for key, value in state.items() if torch.is_tensor(value)}
    cleaned = strip_prefix(strip_prefix(tensors, "module."), "vqvae.")
    if not any(key.startswith("quantizer.") for key in cleaned):
        raise ValueError(f"{path}: no VQ-VAE weights found (no 'quantizer.*' keys)")
    return cleaned


def load_frozen_tokenizer(
    path: str, config: Optional[Mapping[str, Any]] = None, allow_unsafe: Optional[bool] = None
) -> VQTokenizer:
    """Load a VQVAE written by the `fashion_vqvae` model and freeze it.

    path: an MMF checkpoint (dict with "model") or a plain state dict
    (e.g. `<save_dir>/fashion_vqvae_final.pth`). config: the VQVAE options
    it was trained with (fashion_vqvae's model_config); when None, they are
    read from the checkpoint's saved config if it has one. The file is read
    weights-only; allow_unsafe (None: checkpoint.allow_unsafe_load of the
    run, see checkpointing.unsafe_load_allowed) opts in to full unpickling.
    """
    checkpoint = _read_checkpoint(path, allow_unsafe)
    if config is None and isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("config"), Mapping):
        config = checkpoint["config"].get("model_config", {}).get("fashion_vqvae")
    vqvae = VQVAE(**vqvae_options(config))
    state = _vqvae_state(checkpoint, path)
    try:
        missing, unexpected = vqvae.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch: trained with other sizes
        raise ValueError(
            f"{path}: checkpoint does not match the VQVAE config {vqvae_options(config)}: {error}"
        ) from error
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match the VQVAE config {vqvae_options(config)} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return VQTokenizer(vqvae)
