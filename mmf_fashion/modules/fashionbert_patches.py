"""FashionBERT image patches: grid splitting, pooled patch features, disk cache.

Cheatsheet::

    from mmf_fashion.modules.fashionbert_patches import (
        fit_to_grid, split_into_patches, merge_patches, PatchFeatureEncoder, PatchFeatureCache)
    patches = split_into_patches(fit_to_grid(images, 8), 8)   # (B, 64, 3, H/8, W/8)
    assert torch.equal(merge_patches(patches, 8), fit_to_grid(images, 8))
    encoder = PatchFeatureEncoder("resnet50", grid_size=8)     # (B, 3, H, W) -> (B, 64, 2048)
    cache = PatchFeatureCache("save/patches.pt", {"encoder": "resnet50"})

- Patch order is row-major: patch k covers grid row k // grid, column k % grid.
- A side that is not a multiple of the grid (or any side when `patch_size`
  is set) is first resized (bilinear) to grid * patch_size, with patch_size =
  ceil(side / grid) when unset: the patches then tile the image exactly and
  no pixel is dropped (the image grows by fewer than `grid` pixels).
- The cache is only valid for a frozen encoder (its features never change);
  a cached image keeps the features of the first view that was processed, so
  random training augmentation is not re-applied to it.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mmf_fashion.modules.distributed import get_rank, get_world_size
from mmf_fashion.modules.encoders import build_image_encoder
from mmf_fashion.trainers.checkpointing import safe_torch_load, unsafe_load_allowed


def grid_image_size(height: int, width: int, grid_size: int, patch_size: Optional[int] = None) -> Tuple[int, int]:
    """(H', W') the image is resized to so that a grid_size grid tiles it exactly."""
    if patch_size:
        return grid_size * int(patch_size), grid_size * int(patch_size)
    return grid_size * math.ceil(height / grid_size), grid_size * math.ceil(width / grid_size)


def fit_to_grid(images: torch.Tensor, grid_size: int, patch_size: Optional[int] = None) -> torch.Tensor:
    """Resize (B, 3, H, W) images (bilinear) to a multiple of the grid; no-op when already one."""
    height, width = images.shape[-2:]
    target = grid_image_size(height, width, grid_size, patch_size)
    if (height, width) == target:
        return images
    return F.interpolate(images, size=target, mode="bilinear", align_corners=False)


def split_into_patches(images: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid**2, C, H/grid, W/grid), row-major; H and W must be multiples."""
    batch, channels, height, width = images.shape
    if height % grid_size or width % grid_size:
        raise ValueError(
            f"split_into_patches: image {height}x{width} is not a multiple of the {grid_size}x{grid_size} "
            "grid; call fit_to_grid first"
        )
    ph, pw = height // grid_size, width // grid_size
    patches = images.reshape(batch, channels, grid_size, ph, grid_size, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # B, row, col, C, ph, pw
    return patches.reshape(batch, grid_size * grid_size, channels, ph, pw)


def merge_patches(patches: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Inverse of split_into_patches: (B, grid**2, C, ph, pw) -> (B, C, grid*ph, grid*pw)."""
    batch, num, channels, ph, pw = patches.shape
    if num != grid_size * grid_size:
        raise ValueError(f"merge_patches: {num} patches do not form a {grid_size}x{grid_size} grid")
    grid = patches.reshape(batch, grid_size, grid_size, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, channels, grid_size * ph, grid_size * pw)


class PatchFeatureEncoder(nn.Module):
    """Images (B, 3, H, W) -> pooled patch features (B, grid**2, C).

    `encoder` is the torchvision trunk (encoders.build_image_encoder); when
    frozen its parameters need no gradient and it stays in eval mode (fixed
    batch-norm statistics), which is what makes caching features valid.
    """

    def __init__(
        self,
        name: str,
        grid_size: int,
        patch_size: Optional[int] = None,
        pretrained: Optional[str] = None,
        freeze: bool = False,
        chunk_size: int = 0,
    ):
        super().__init__()
        self.encoder = build_image_encoder(name, pretrained=pretrained)
        self.out_channels = self.encoder.out_channels
        self.grid_size = grid_size
        self.patch_size = patch_size
        self.frozen = freeze
        self.chunk_size = chunk_size
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"fashionbert patch encoder: expected images (B, 3, H, W), got {tuple(images.shape)}")
        batch = images.shape[0]
        patches = split_into_patches(fit_to_grid(images, self.grid_size, self.patch_size), self.grid_size)
        flat = patches.flatten(0, 1)  # (B*N, 3, ph, pw)
        chunk = self.chunk_size or flat.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            pooled = [self.encoder(part).mean(dim=(2, 3)) for part in flat.split(chunk)]
        return torch.cat(pooled).reshape(batch, self.grid_size * self.grid_size, -1)


class PatchFeatureCache:
    """Patch features on disk: a torch file {"signature": {...}, "features": {image_id: (N, C)}}.

    The signature (encoder name, grid, patch size, weights) is checked on load
    so a cache of another encoder is refused. In a distributed run each rank
    writes `<file>.rank<k>` and every file matching is read back.
    """

    def __init__(
        self, path: str, signature: Mapping[str, Any], flush_every: int = 256, allow_unsafe: Optional[bool] = None
    ):
        self.path = str(path)
        # a cache file may be shared or copied in: read weights-only unless the user opted in
        self.allow_unsafe = unsafe_load_allowed() if allow_unsafe is None else bool(allow_unsafe)
        self.signature = {key: str(value) for key, value in signature.items()}
        self.flush_every = max(1, int(flush_every))
        self.features: Dict[int, torch.Tensor] = {}
        self._unsaved = 0
        for candidate in self._existing_files():
            self._load(candidate)

    def _own_file(self) -> str:
        return self.path if get_world_size() == 1 else f"{self.path}.rank{get_rank()}"

    def _existing_files(self) -> List[str]:
        directory = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        if not os.path.isdir(directory):
            return []
        return sorted(
            os.path.join(directory, name)
            for name in os.listdir(directory)
            if name == base or (name.startswith(base + ".rank") and not name.endswith(".tmp"))
        )

    def _load(self, path: str) -> None:
        try:
            # UnsafeCheckpointError (not a ValueError) passes through: it names the file and the opt-in
            payload = safe_torch_load(path, allow_unsafe=self.allow_unsafe)
        except ValueError as error:  # corrupt or foreign file: say which one
            raise ValueError(f"patch feature cache {path}: cannot be read ({error})") from error
        if not isinstance(payload, dict) or "features" not in payload or "signature" not in payload:
            raise ValueError(f"patch feature cache {path}: expected keys 'signature' and 'features'")
        stored = dict(payload["signature"])
        for key, value in self.signature.items():
            if stored.get(key) != value:
                raise ValueError(
                    f"patch feature cache {path}: field '{key}' is {stored.get(key)!r}, this model has "
                    f"{value!r}; delete the file or point patch_cache.file elsewhere"
                )
        self.features.update({int(k): v for k, v in payload["features"].items()})

    def __len__(self) -> int:
        return len(self.features)

    def missing(self, image_ids: Sequence[int]) -> List[int]:
        """Positions in image_ids whose features are not cached."""
        return [position for position, image_id in enumerate(image_ids) if int(image_id) not in self.features]

    def get(self, image_ids: Sequence[int]) -> torch.Tensor:
        return torch.stack([self.features[int(image_id)] for image_id in image_ids])

    def put(self, image_ids: Sequence[int], features: torch.Tensor) -> None:
        for image_id, feature in zip(image_ids, features.detach().cpu()):
            if int(image_id) not in self.features:
                self.features[int(image_id)] = feature.clone()
                self._unsaved += 1
        if self._unsaved >= self.flush_every:
            self.save()

    def save(self) -> None:
        """Write atomically (temporary file then rename)."""
        target = self._own_file()
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        temporary = target + ".tmp"
        torch.save({"signature": self.signature, "features": self.features}, temporary)
        os.replace(temporary, target)
        self._unsaved = 0


@torch.no_grad()
def precompute_patch_features(network, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Fill and save the network's patch cache from (image_ids (B,), images (B, 3, H, W)) batches.

    `network` is a FashionBert (or the MMF model) built with a patch cache file;
    returns the number of cached images.
    """
    if network.patch_cache is None:
        raise ValueError("precompute_patch_features: the network has no patch_cache_file")
    for image_ids, images in batches:
        network.encode_patches(images, image_ids)
    network.flush_patch_cache()
    return len(network.patch_cache)
