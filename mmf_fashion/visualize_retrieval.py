"""Retrieval pictures: sampled queries beside their top-k results, the correct item framed.

Cheatsheet::

    from mmf_fashion.visualize_retrieval import (collect_retrieval, frames_for, grid_pixel_size,
                                                 plot_retrieval_grid, sample_queries)

    frames_for([12, 7, 3], [7])                  # [False, True, False]: the frame choice, no pixels
    queries = sample_queries(1000, 8)            # 8 indices evenly spaced; seed=3: 8 drawn at random
    rows = collect_retrieval(model, dataset, "tgir", count=8, k=5)   # an eval-mode model, a val split
    plot_retrieval_grid(rows, "grid.png", task="tgir")
    grid_pixel_size("tgir", num_queries=8, k=5)  # (width, height) of the PNG in pixels
    [row.to_json() for row in rows]              # ranked ids, ground truth, frames, rank

Tasks and what a row shows:
- itr (fashiongen): a product's caption; results are the split's images
  ranked by the model (text -> image), the correct items are the views of
  the caption's product;
- tgir (fashioniq): the reference image and the modification text; results
  are the split's gallery of the same category, the correct item is the
  target image;
- ocir (polyvore_ocir): the partial outfit and the blank's category; results
  are the gallery items of that category, the correct item is the blank.

The embeddings are the ones evaluation ranks: the model's eval forward on
the queries (text_embedding, query_embedding), read with the trainer's
Accumulator, and for ITR the image_embedding of every row of the split; the
TGIR and OCIR galleries are embedded with retrieval.embed_image_dataset as
the r@k_fashioniq and r@k_ocir metrics do. Ranks follow metrics/ranking.py
(chunked_topk for the shown list, first_positive_ranks for the correct
item's rank). The picture is drawn on an Agg canvas at a fixed size
(grid_pixel_size); the command is `mmf-fashion plot retrieval`.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmf_fashion.visualize import PlotError, _figure, _get, _model_device

# task -> the dataset builder whose val split it draws
TASK_DATASETS = {"itr": "fashiongen", "tgir": "fashioniq", "ocir": "polyvore_ocir"}
CELL_PX = 150  # one image cell, square
QUERY_CELLS = 2  # the query takes two cells: image (or text) + text
HEADER_PX = 44  # the figure title
DPI = 100
FRAME_COLOUR = "#1db954"
FRAME_WIDTH = 5.0


@dataclass
class RetrievalRow:
    """One query and what the model ranked first for it."""

    query_index: int  # row of the split (itr: the caption's first row)
    query_text: str  # caption, modification text, or the blank's category
    query_images: List[np.ndarray]  # (H, W, 3) in [0, 1]: none (itr), reference, outfit items
    ranked_ids: List[int]  # itr: product ids of the images; tgir/ocir: gallery ids
    scores: List[float]
    result_images: List[np.ndarray]
    ground_truth_ids: List[int]
    ground_truth_rank: Optional[int]  # 0-based rank of the best correct item; None: not in the gallery
    frames: List[bool] = field(default_factory=list)

    def to_json(self) -> Dict:
        return {
            "query_index": self.query_index,
            "query_text": self.query_text,
            "ranked_ids": list(self.ranked_ids),
            "scores": [round(float(s), 6) for s in self.scores],
            "ground_truth_ids": list(self.ground_truth_ids),
            "ground_truth_rank": self.ground_truth_rank,
            "frames": list(self.frames),
        }


# ---------------------------------------------------------------- pure parts
def frames_for(ranked_ids: Sequence[int], ground_truth_ids: Sequence[int]) -> List[bool]:
    """Which of the ranked results get the frame: those whose id is a correct one."""
    correct = {int(i) for i in ground_truth_ids}
    return [int(i) in correct for i in ranked_ids]


def sample_queries(length: int, count: int, seed: Optional[int] = None) -> List[int]:
    """`count` query indices out of range(length): evenly spaced (a split is
    often ordered by category, so its head would show only a few), or drawn
    at random with `seed`. All of them when count >= length."""
    if length <= 0:
        raise PlotError("the split has no queries")
    if count < 1:
        raise PlotError(f"--queries must be at least 1, got {count}")
    if count >= length:
        return list(range(length))
    if seed is not None:
        return sorted(np.random.default_rng(seed).choice(length, size=count, replace=False).tolist())
    if count == 1:
        return [0]
    return [int(round(i * (length - 1) / (count - 1))) for i in range(count)]


def grid_pixel_size(task: str, num_queries: int, k: int) -> Tuple[int, int]:
    """(width, height) in pixels of the grid plot_retrieval_grid draws."""
    _check_task(task)
    return (QUERY_CELLS + k) * CELL_PX, num_queries * CELL_PX + HEADER_PX


def _check_task(task: str) -> None:
    if task not in TASK_DATASETS:
        raise PlotError(f"task must be one of {', '.join(TASK_DATASETS)}, got '{task}'")


def display_image(image, mean=None, std=None) -> np.ndarray:
    """A processed image tensor (3, H, W) -> (H, W, 3) floats in [0, 1]: the
    processor's normalisation undone, else the value range stretched."""
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise PlotError(f"expected an image of shape (3, H, W), got {array.shape}")
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    if mean is not None and std is not None:
        array = array * np.asarray(std, dtype=np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    else:
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.clip(array.transpose(1, 2, 0), 0.0, 1.0)


def mosaic(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Square-ish tiling of (H, W, 3) images of one size on white (an outfit in one cell)."""
    if not images:
        raise PlotError("an outfit query with no items")
    height, width = images[0].shape[:2]
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    canvas = np.ones((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), np.float32)
    for number, image in enumerate(images):
        top, left = (number // columns) * (height + gap), (number % columns) * (width + gap)
        canvas[top : top + height, left : left + width] = image[:height, :width]
    return canvas


# ---------------------------------------------------------------- embeddings and ranking
def image_normalisation(dataset):
    """(mean, std) of the dataset's image processor's Normalize step, or (None, None)."""
    processor = getattr(dataset, "image_processor", None)
    transform = getattr(processor, "eval_transform", None)
    for step in getattr(transform, "transforms", []) or []:
        if type(step).__name__ == "Normalize":
            return list(step.mean), list(step.std)
    return None, None


def _accumulate(model, dataset, indices, fields, batch_size):
    """The report evaluation would build for these rows: eval forward, Accumulator."""
    import torch

    from mmf_fashion.runtime import split_loader
    from mmf_fashion.trainers.evaluation import Accumulator

    device = _model_device(model)
    accumulator = Accumulator(fields)
    with torch.no_grad():
        for batch in split_loader(dataset, batch_size=batch_size, indices=indices):
            output = model(batch.to(device))
            accumulator.add(batch, output)
    report = accumulator.report()
    missing = [name for name in fields if name not in report]
    if missing:
        raise PlotError(
            f"{type(model).__name__}'s eval forward and the batch give no '{missing[0]}' "
            f"(found: {', '.join(sorted(report))}); is the model's head the task's?"
        )
    return report


def _top_k(query, gallery, k):
    from mmf_fashion.metrics import ranking as R

    scores, indices = R.chunked_topk(query.view(1, -1), gallery, k)
    return indices[0].tolist(), scores[0].tolist()


def _rank(query, label, gallery, gallery_labels) -> Optional[int]:
    """The metrics' rank of the best correct item (None: no correct item in the gallery)."""
    import torch

    from mmf_fashion.metrics import ranking as R

    rank = int(R.first_positive_ranks(query.view(1, -1), gallery, torch.tensor([int(label)]), gallery_labels)[0])
    return None if rank >= R.NO_POSITIVE_RANK else rank


def _metric_param(config, metric_type: str, name: str, default):
    """A param of the config's evaluation metric (e.g. r@k_fashioniq's exclude_reference)."""
    metrics = (config or {}).get("evaluation", {}).get("metrics", []) if config is not None else []
    for metric in metrics or []:
        if not isinstance(metric, str) and metric.get("type") == metric_type:
            return (metric.get("params") or {}).get(name, default)
    return default


def collect_retrieval(
    model, dataset, task: str, count: int = 8, k: int = 5, seed: Optional[int] = None, batch_size: int = 32, config=None
) -> List[RetrievalRow]:
    """Rank the split for `count` sampled queries of `task` (see the module
    docstring); one RetrievalRow each, with the images to draw and frames set."""
    _check_task(task)
    if k < 1:
        raise PlotError(f"-k must be at least 1, got {k}")
    collect = {"itr": _collect_itr, "tgir": _collect_tgir, "ocir": _collect_ocir}[task]
    rows = collect(model, dataset, count, k, seed, batch_size, config)
    for row in rows:
        row.frames = frames_for(row.ranked_ids, row.ground_truth_ids)
        if any(row.frames):
            # the rank the picture shows; the metrics' count differs only when scores tie (they rank a
            # tied negative first, the list orders ties by gallery index): beyond the top k both agree
            row.ground_truth_rank = row.frames.index(True)
    return rows


def _collect_itr(model, dataset, count, k, seed, batch_size, config):
    from mmf_fashion.metrics import ranking as R

    report = _accumulate(
        model, dataset, None, ["image_embedding", "text_embedding", "product_id", "image_id"], batch_size
    )
    products = report["product_id"].long()
    # the protocol of r@k_general: image rows deduplicated by image_id, one caption per product
    image_rows, text_rows = R.general_rows(products, report["image_id"])
    gallery = report["image_embedding"][image_rows]
    gallery_products = products[image_rows]
    mean, std = image_normalisation(dataset)
    rows = []
    for chosen in sample_queries(len(text_rows), count, seed):
        row = int(text_rows[chosen])
        query = report["text_embedding"][row]
        shown, scores = _top_k(query, gallery, k)
        rows.append(
            RetrievalRow(
                query_index=row,
                query_text=str(_get(dataset[row], "text")),
                query_images=[],
                ranked_ids=[int(gallery_products[i]) for i in shown],
                scores=scores,
                result_images=[display_image(dataset[int(image_rows[i])]["image"], mean, std) for i in shown],
                ground_truth_ids=[int(products[row])],
                ground_truth_rank=_rank(query, products[row], gallery, gallery_products),
            )
        )
    return rows


def _gallery(model, dataset, id_key, category_key, batch_size):
    from mmf_fashion.retrieval.gallery import embed_image_dataset

    if not callable(getattr(dataset, "gallery_dataset", None)):
        raise PlotError(f"dataset {type(dataset).__name__} has no gallery_dataset()")
    gallery_dataset = dataset.gallery_dataset()
    embedded = embed_image_dataset(
        model, gallery_dataset, id_key=id_key, category_key=category_key, batch_size=batch_size, progress=False
    )
    return gallery_dataset, embedded


def _within_category(model, dataset, count, k, seed, batch_size, *, fields, id_key, category_key, excluded_key=None):
    """TGIR and OCIR: each query ranks its category's gallery."""
    queries = sample_queries(len(dataset), count, seed)
    report = _accumulate(model, dataset, queries, ["query_embedding", id_key, category_key, *fields], batch_size)
    gallery_dataset, embedded = _gallery(model, dataset, id_key, category_key, batch_size)
    mean, std = image_normalisation(dataset)
    rows = []
    for number, index in enumerate(queries):
        in_category = (embedded["category"] == report[category_key][number]).nonzero().flatten()
        if in_category.numel() == 0:
            raise PlotError(f"query {index}: the gallery has no item of category {int(report[category_key][number])}")
        excluded = None if excluded_key is None else int(report[excluded_key][number])
        keep = in_category if excluded is None else in_category[embedded["id"][in_category] != excluded]
        query = report["query_embedding"][number]
        gallery, gallery_ids = embedded["embedding"][keep], embedded["id"][keep]
        shown, scores = _top_k(query, gallery, k)
        target = int(report[id_key][number])
        rows.append(
            RetrievalRow(
                query_index=int(index),
                query_text="",
                query_images=[],
                ranked_ids=[int(gallery_ids[i]) for i in shown],
                scores=scores,
                result_images=[display_image(gallery_dataset[int(keep[i])]["image"], mean, std) for i in shown],
                ground_truth_ids=[target],
                ground_truth_rank=_rank(query, target, gallery, gallery_ids),
            )
        )
    return rows, mean, std


def _collect_tgir(model, dataset, count, k, seed, batch_size, config):
    exclude = bool(_metric_param(config, "r@k_fashioniq", "exclude_reference", False))
    rows, mean, std = _within_category(
        model,
        dataset,
        count,
        k,
        seed,
        batch_size,
        fields=["reference_id"] if exclude else [],
        id_key="target_id",
        category_key="fashioniq_category",
        excluded_key="reference_id" if exclude else None,
    )
    for row in rows:
        sample = dataset[row.query_index]
        row.query_text = str(_get(sample, "text"))
        row.query_images = [display_image(sample["reference_image"], mean, std)]
    return rows


def _collect_ocir(model, dataset, count, k, seed, batch_size, config):
    rows, mean, std = _within_category(
        model,
        dataset,
        count,
        k,
        seed,
        batch_size,
        fields=[],
        id_key="blank_id",
        category_key="blank_category",
    )
    names = getattr(dataset, "category_names", None) or []
    for row in rows:
        sample = dataset[row.query_index]
        mask = sample["outfit_mask"].bool()
        row.query_images = [display_image(image, mean, std) for image in sample["outfit_images"][mask]]
        category = int(sample["blank_category"])
        name = names[category] if 0 <= category < len(names) else f"category {category}"
        row.query_text = f"complete the outfit with: {name}"
    return rows


# ---------------------------------------------------------------- drawing
def plot_retrieval_grid(rows: Sequence[RetrievalRow], out_path: str, task: str, title: Optional[str] = None) -> None:
    """One line per query: the query in two cells, then its top-k results;
    a correct result (row.frames) gets a green frame. Size: grid_pixel_size."""
    if not rows:
        raise PlotError("no queries to draw")
    k = max(len(row.ranked_ids) for row in rows)
    width, height = grid_pixel_size(task, len(rows), k)
    figure = _figure((width / DPI, height / DPI))
    figure.set_dpi(DPI)
    cell_w, cell_h = CELL_PX / width, CELL_PX / height
    pad = 0.06  # of a cell, around each picture (room for the frame and the score)

    def axes_at(column: float, line: int, span: float = 1.0):
        left = column * cell_w + pad * cell_w
        bottom = 1.0 - HEADER_PX / height - (line + 1) * cell_h + pad * cell_h
        return figure.add_axes((left, bottom, span * cell_w - 2 * pad * cell_w, cell_h - 3 * pad * cell_h))

    for line, row in enumerate(rows):
        if row.query_images:
            image_axis = axes_at(0, line)
            picture = row.query_images[0] if len(row.query_images) == 1 else mosaic(row.query_images)
            image_axis.imshow(picture, interpolation="bilinear")
            _bare(image_axis)
            text_axis, wrap = axes_at(1, line), 22
        else:
            text_axis, wrap = axes_at(0, line, QUERY_CELLS), 50
        text_axis.axis("off")
        text_axis.text(
            0.0,
            1.0,
            _wrapped(row.query_text, wrap, lines=7),
            fontsize=7,
            va="top",
            ha="left",
            transform=text_axis.transAxes,
        )
        rank = (
            "correct item not in the gallery"
            if row.ground_truth_rank is None
            else f"correct item at rank {row.ground_truth_rank + 1}"
        )
        text_axis.text(0.0, 0.0, rank, fontsize=7, va="bottom", ha="left", color="0.35", transform=text_axis.transAxes)
        for position, (image, score, framed) in enumerate(zip(row.result_images, row.scores, row.frames)):
            axis = axes_at(QUERY_CELLS + position, line)
            axis.imshow(image, interpolation="bilinear")
            _bare(axis, framed)
            axis.set_title(
                f"{position + 1}. {score:.2f}",
                fontsize=7,
                pad=5,
                color=FRAME_COLOUR if framed else "black",
                fontweight="bold" if framed else "normal",
            )
    figure.text(
        0.5,
        1.0 - 0.5 * HEADER_PX / height,
        title or f"{task}: query, then the top-{k} results (green frame: the correct item)",
        ha="center",
        va="center",
        fontsize=10,
    )
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(out_path, dpi=DPI, facecolor="white")


def _bare(axis, framed: bool = False) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(framed)
        if framed:
            spine.set_edgecolor(FRAME_COLOUR)
            spine.set_linewidth(FRAME_WIDTH)


def _wrapped(text: str, width: int, lines: int) -> str:
    wrapped = textwrap.wrap(" ".join(str(text).split()), width=width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: max(0, width - 3)] + "..."
    return "\n".join(wrapped)
