"""Images for the index: list a gallery, load and transform images.

Cheatsheet::

    from mmf_fashion.retrieval.images import H5Image, list_images, default_transform, load_images

    paths = list_images("data/synthetic/fashiongen/images/val")   # sorted, recursive
    paths = list_images("gallery.txt")      # one path per line, relative to the file
    batch = load_images(paths[:8], default_transform(224))        # (8, 3, 224, 224)
    rows = [H5Image("fashiongen/fashiongen_256_256_validation.h5", r) for r in range(8)]
    batch = load_images(rows, default_transform(224), h5_files={})  # rows read lazily
    describe_item(rows[3])   # ".../fashiongen_256_256_validation.h5#row=3"

A gallery item is an image file path or an H5Image (one row of an HDF5
image dataset, e.g. FashionGen's input_image); HDF5 rows are read only when
their batch is loaded, through the handles kept in ``h5_files``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class H5Image:
    """One image stored as a row of an HDF5 dataset (uint8 (H, W, 3))."""

    path: str
    row: int
    key: str = "input_image"

    def __str__(self) -> str:
        return f"{self.path}#row={self.row}"


GalleryImage = Union[str, Path, H5Image]


def describe_item(item: GalleryImage) -> str:
    """What the index stores as an image item's 'path'."""
    return str(item)


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


def _h5_image(item: H5Image, h5_files: Dict[str, object]):
    from mmf_fashion.datasets.common import LazyH5File, image_from_array

    h5 = h5_files.get(item.path)
    if h5 is None:
        h5 = h5_files[item.path] = LazyH5File(item.path)
    try:
        array = h5.read(item.key, item.row)
    except (OSError, KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{item}: cannot read the image ({error})") from error
    # the builders' converter: a row that is not uint8 (H, W, 3) names file, row and key
    return image_from_array(array, file=item.path, record=f"row {item.row}", field=item.key)


def load_images(
    items: Sequence[GalleryImage], transform: Callable, h5_files: Optional[Dict[str, object]] = None
) -> torch.Tensor:
    """(N, 3, H, W) float batch of image files and/or H5Image rows; errors
    name the file (and row) that cannot be read. h5_files: {path: LazyH5File}
    kept open across batches (the caller closes them); None: opened and
    closed within this call."""
    from PIL import Image, UnidentifiedImageError

    opened = {} if h5_files is None else h5_files
    tensors = []
    try:
        for item in items:
            if isinstance(item, H5Image):
                tensors.append(transform(_h5_image(item, opened)))
                continue
            try:
                with Image.open(item) as image:
                    tensors.append(transform(image.convert("RGB")))
            except (OSError, UnidentifiedImageError) as error:
                raise ValueError(f"{item}: cannot read the image ({error})") from error
    finally:
        if h5_files is None:
            close_h5_files(opened)
    return torch.stack(tensors)


def close_h5_files(h5_files: Dict[str, object]) -> None:
    for h5 in h5_files.values():
        h5.close()
    h5_files.clear()
