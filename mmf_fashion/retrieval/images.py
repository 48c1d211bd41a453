"""Image files for the index: list a gallery, load and transform images.

Cheatsheet::

    from mmf_fashion.retrieval.images import list_images, default_transform, load_images

    paths = list_images("data/synthetic/fashiongen/images/val")   # sorted, recursive
    paths = list_images("gallery.txt")      # one path per line, relative to the file
    batch = load_images(paths[:8], default_transform(224))        # (8, 3, 224, 224)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Sequence

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def list_images(source: str) -> List[str]:
    """Image paths of a directory (recursive, sorted) or of a list file."""
    path = Path(source)
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{source}: neither a directory nor a list file")
    paths = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        item = Path(line) if Path(line).is_absolute() else path.parent / line
        if not item.is_file():
            raise FileNotFoundError(f"{source}, line {number}: image {line} not found")
        paths.append(str(item))
    if not paths:
        raise FileNotFoundError(f"{source}: the list holds no image path")
    return paths


def read_lines(source: str) -> List[str]:
    """Non-empty lines of a text file (a text gallery: one caption per line)."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: text file not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{source}: no text lines")
    return lines


def default_transform(image_size: int = 224) -> Callable:
    """Resize the short side, centre crop, ImageNet normalisation."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def load_images(paths: Sequence[str], transform: Callable) -> torch.Tensor:
    """(N, 3, H, W) float batch; errors name the file that cannot be read."""
    from PIL import Image, UnidentifiedImageError

    tensors = []
    for path in paths:
        try:
            with Image.open(path) as image:
                tensors.append(transform(image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"{path}: cannot read the image ({error})") from error
    return torch.stack(tensors)
