"""Region box maths: plain torch/torchvision, no MMF import.

Cheatsheet::

    from mmf_fashion.processors.boxes import (
        pixel_boxes, finish_boxes, box_problem, mentions_left_or_right)
    boxes = pixel_boxes([[4, 4, 10, 8]], image_size=(32, 32))  # (x, y, w, h) pixels
    image, boxes = v2_transform(image, boxes)                   # same crop/flip as the image
    normalised, valid, kept = finish_boxes(boxes, max_regions=5, min_visible=0.5)
    # normalised: (5, 4) (cx, cy, w, h) in [0, 1] of the transformed image

Boxes travel through torchvision's v2 transforms as tv_tensors.BoundingBoxes
without clamping, so the part of a box that a crop cut away can still be
measured afterwards: a box less than ``min_visible`` inside is dropped.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torchvision import tv_tensors

_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mentions_left_or_right(phrases: Iterable[str]) -> bool:
    """A horizontal flip would make such a phrase false ("left sleeve")."""
    return any(_LEFT_RIGHT.search(phrase or "") for phrase in phrases)


def box_problem(box: Sequence[float], image_size: Tuple[int, int], tolerance: float = 1.0) -> Optional[str]:
    """Why a pixel (x, y, w, h) box does not fit an image of (height, width), or None."""
    if len(box) != 4:
        return f"box must be [x, y, w, h], got {list(box)!r}"
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return f"box must hold 4 numbers, got {list(box)!r}"
    height, width = image_size
    if w <= 0 or h <= 0:
        return f"box {list(box)} has no area"
    if x < -tolerance or y < -tolerance or x + w > width + tolerance or y + h > height + tolerance:
        return f"box {list(box)} (x, y, w, h) lies outside the {width}x{height} image"
    return None


def pixel_boxes(boxes: Sequence[Sequence[float]], image_size: Tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """(R, 4) pixel (x, y, w, h) as unclamped float BoundingBoxes on an image of (height, width)."""
    data = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return tv_tensors.BoundingBoxes(
        data, format="XYWH", canvas_size=tuple(int(v) for v in image_size), clamping_mode=None
    )


def finish_boxes(
    boxes: tv_tensors.BoundingBoxes, max_regions: int = 5, min_visible: float = 0.5
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """Transformed boxes -> (normalised (max_regions, 4) cx,cy,w,h, valid (max_regions,), kept indices).

    A box is kept when at least ``min_visible`` of its area (and some of it)
    lies inside the canvas; kept boxes are clipped to the canvas before normalising. The
    first ``max_regions`` kept boxes are returned, the rest padded with zeros.
    """
    height, width = boxes.canvas_size
    xyxy = _to_xyxy(boxes)
    clipped = xyxy.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    full_area = (xyxy[:, 2] - xyxy[:, 0]).clamp(min=0) * (xyxy[:, 3] - xyxy[:, 1]).clamp(min=0)
    inside_area = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    visible = torch.where(full_area > 0, inside_area / full_area.clamp(min=1e-12), torch.zeros_like(full_area))
    kept = [i for i in range(len(xyxy)) if visible[i] > 0 and visible[i] >= min_visible][:max_regions]

    normalised = torch.zeros(max_regions, 4)
    valid = torch.zeros(max_regions, dtype=torch.bool)
    for slot, index in enumerate(kept):
        x0, y0, x1, y1 = clipped[index].tolist()
        normalised[slot] = torch.tensor(
            [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
        )
        valid[slot] = True
    return normalised, valid, kept


def _to_xyxy(boxes: tv_tensors.BoundingBoxes) -> torch.Tensor:
    data = boxes.as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)
    fmt = boxes.format.name if hasattr(boxes.format, "name") else str(boxes.format)
    if fmt == "XYXY":
        return data.clone()
    if fmt == "XYWH":
        return torch.cat([data[:, :2], data[:, :2] + data[:, 2:]], dim=1)
    if fmt == "CXCYWH":
        return torch.cat([data[:, :2] - data[:, 2:] / 2, data[:, :2] + data[:, 2:] / 2], dim=1)
    raise ValueError(f"unsupported box format {fmt} (rotated boxes are not used here)")
