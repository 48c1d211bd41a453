"""`fashion_image_transform` and `box_transform`: torchvision v2 image pipelines
whose crops and flips the region boxes follow.

Cheatsheet (dataset YAML)::

    processors:
      image_processor:
        type: fashion_image_transform
        params: {size: 224, train_crop: random_resized_crop, scale: [0.5, 1.0],
                 horizontal_flip: 0.5}
      box_processor:
        type: box_transform
        params: {max_regions: 5, min_visible: 0.5}

In a dataset::

    out = self.image_processor({"image": pil_image, "is_train": True})
    out["image"]                       # FloatTensor (3, size, size), ImageNet-normalised
    out = self.box_processor({"image": pil_image, "boxes": [[x, y, w, h], ...],
                              "phrases": ["red collar", ...], "is_train": True,
                              "image_processor": self.image_processor})
    out["image"], out["boxes"] (5, 4) cx,cy,w,h in [0, 1], out["box_valid"] (5,),
    out["box_phrases"] (5 strings, "" where padded)

train_crop: random_resized_crop (RandomResizedCrop) | resize_random_crop
(Resize to size * resize_ratio, then RandomCrop) | none (eval pipeline).
Evaluation is always Resize(size) + CenterCrop(size). Flips are skipped for a
sample whose region phrases say left or right. box_transform's keep_box_crop
(X-VLM) replaces the training crop by a random crop that keeps one region whole.
"""

from __future__ import annotations

import math

import torch
from mmf.common.registry import registry
from mmf.datasets.processors.processors import BaseProcessor
from torchvision.transforms import v2

from mmf_fashion.processors.boxes import finish_boxes, mentions_left_or_right, pixel_boxes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_CROPS = ("random_resized_crop", "resize_random_crop", "none")


def _as_float_pair(value, default):
    if value is None:
        return default
    low, high = (float(v) for v in value)
    return (low, high)


@registry.register_processor("fashion_image_transform")
class FashionImageTransform(BaseProcessor):
    """params: size (224), train_crop, scale ([0.5, 1.0]), ratio ([0.75, 1.333]),
    resize_ratio (1.14), horizontal_flip (0.5), mean, std (ImageNet)."""

    def __init__(self, config=None, *args, **kwargs):
        config = config or {}
        self.size = int(config.get("size", 224))
        self.train_crop = str(config.get("train_crop", "random_resized_crop"))
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(
                f"fashion_image_transform: train_crop must be one of {TRAIN_CROPS}, got '{self.train_crop}'"
            )
        self.scale = _as_float_pair(config.get("scale"), (0.5, 1.0))
        self.ratio = _as_float_pair(config.get("ratio"), (3 / 4, 4 / 3))
        self.resize_ratio = float(config.get("resize_ratio", 1.14))
        self.flip_probability = float(config.get("horizontal_flip", 0.5))
        mean = tuple(float(v) for v in config.get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in config.get("std", IMAGENET_STD))

        finish = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]
        self.eval_transform = v2.Compose(
            [v2.ToImage(), v2.Resize(self.size, antialias=True), v2.CenterCrop(self.size)] + finish
        )
        if self.train_crop == "random_resized_crop":
            crop = [v2.RandomResizedCrop(self.size, scale=self.scale, ratio=self.ratio, antialias=True)]
        elif self.train_crop == "resize_random_crop":
            crop = [v2.Resize(int(round(self.size * self.resize_ratio)), antialias=True), v2.RandomCrop(self.size)]
        else:
            crop = [v2.Resize(self.size, antialias=True), v2.CenterCrop(self.size)]
        flip = [v2.RandomHorizontalFlip(self.flip_probability)] if self.flip_probability > 0 else []
        self.train_transform = v2.Compose([v2.ToImage()] + crop + flip + finish)
        self.train_transform_no_flip = v2.Compose([v2.ToImage()] + crop + finish)

    def min_source_side(self, is_train: bool) -> int:
        """The shortest image side this pipeline needs so that no crop is upsampled.

        Evaluation resizes the short side to `size`; a random resized crop can be
        as small as scale_min of the area at the widest ratio, so its short side
        is sqrt(scale_min / ratio_max) of the image side; resize_random_crop
        resizes to size * resize_ratio. Datasets use it to decode JPEGs at a
        reduced DCT scale (PIL's draft), which costs a fraction of a full decode."""
        if not is_train or self.train_crop == "none":
            return self.size
        if self.train_crop == "resize_random_crop":
            return int(math.ceil(self.size * max(self.resize_ratio, 1.0)))
        shortest_fraction = math.sqrt(self.scale[0] / max(self.ratio[1], 1.0 / self.ratio[0]))
        return int(math.ceil(self.size / min(shortest_fraction, 1.0)))

    def pipeline(self, is_train: bool, allow_flip: bool = True) -> v2.Compose:
        if not is_train:
            return self.eval_transform
        return self.train_transform if allow_flip else self.train_transform_no_flip

    def __call__(self, item, *args, **kwargs):
        transform = self.pipeline(bool(item.get("is_train", False)), bool(item.get("allow_flip", True)))
        boxes = item.get("boxes")
        if boxes is None:
            return {"image": transform(item["image"]).as_subclass(torch.Tensor)}
        image, boxes = transform(item["image"], boxes)
        return {"image": image.as_subclass(torch.Tensor), "boxes": boxes}


@registry.register_processor("box_transform")
class BoxTransform(BaseProcessor):
    """params: max_regions (5), min_visible (0.5): share of a box's area that must
    stay inside the crop for the box to be kept; keep_box_crop (false): in
    training, crop around one region picked at random instead of the image
    processor's crop (X-VLM): each crop edge is drawn uniformly between the
    image border and that box's edge, so the box stays whole; the crop is
    resized to size x size and flipped with the image processor's flip
    probability (unless a phrase says left or right); the picked region
    comes first."""

    def __init__(self, config=None, *args, **kwargs):
        config = config or {}
        self.max_regions = int(config.get("max_regions", 5))
        self.min_visible = float(config.get("min_visible", 0.5))
        self.keep_box_crop = bool(config.get("keep_box_crop", False))

    def __call__(self, item, *args, **kwargs):
        image = item["image"]
        phrases = list(item.get("phrases", []))
        raw_boxes = [list(box) for box in item.get("boxes", [])]
        image_size = _image_size(image)
        allow_flip = not mentions_left_or_right(phrases)
        is_train = bool(item.get("is_train", False))
        if self.keep_box_crop and is_train and raw_boxes:
            anchor = int(torch.randint(len(raw_boxes), (1,)))
            order = [anchor] + [i for i in range(len(raw_boxes)) if i != anchor]
            raw_boxes, phrases = [raw_boxes[i] for i in order], [phrases[i] for i in order]
            out = _crop_keeping_box(item["image_processor"], image, pixel_boxes(raw_boxes, image_size), allow_flip)
        else:
            out = item["image_processor"](
                {
                    "image": image,
                    "boxes": pixel_boxes(raw_boxes, image_size),
                    "is_train": is_train,
                    "allow_flip": allow_flip,
                }
            )
        boxes, valid, kept = finish_boxes(out["boxes"], self.max_regions, self.min_visible)
        kept_phrases = [phrases[i] for i in kept] + [""] * (self.max_regions - len(kept))
        return {
            "image": out["image"],
            "boxes": boxes,
            "box_valid": valid,
            "box_phrases": kept_phrases,
            "flip_allowed": allow_flip,
        }


def _crop_keeping_box(image_processor, image, boxes, allow_flip: bool):
    """X-VLM's region crop around boxes[0] (pixel (x, y, w, h)), resized to the processor's square size."""
    image = v2.functional.to_image(image)
    height, width = image.shape[-2:]
    x, y, w, h = boxes.as_subclass(torch.Tensor)[0].tolist()

    def edges(start, extent, limit):
        low_max = min(max(0, math.floor(start)), limit - 1)
        high_min = max(low_max + 1, min(limit, math.ceil(start + extent)))
        low = int(torch.randint(0, low_max + 1, (1,)))
        high = int(torch.randint(high_min, limit + 1, (1,)))
        return low, high

    left, right = edges(x, w, width)
    top, bottom = edges(y, h, height)
    size = [image_processor.size, image_processor.size]
    image = v2.functional.resized_crop(image, top, left, bottom - top, right - left, size, antialias=True)
    boxes = v2.functional.resized_crop(boxes, top, left, bottom - top, right - left, size)
    if allow_flip and float(torch.rand(())) < image_processor.flip_probability:
        image, boxes = v2.functional.horizontal_flip(image), v2.functional.horizontal_flip(boxes)
    # the evaluation pipeline's resize and centre crop leave a size x size image as it is: only dtype and norm act
    return {"image": image_processor.pipeline(False)(image).as_subclass(torch.Tensor), "boxes": boxes}


def _image_size(image):
    """(height, width) of a PIL image or a (C, H, W) tensor."""
    if hasattr(image, "size") and not callable(image.size):
        width, height = image.size
        return (height, width)
    return tuple(int(v) for v in image.shape[-2:])
