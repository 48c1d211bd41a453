"""Pictures of a run: metric curves from metrics.jsonl, t-SNE maps of embeddings.

Cheatsheet::

    from mmf_fashion.visualize import (read_metrics_jsonl, plot_curves,
                                       tsne_2d, plot_embeddings)

    records = read_metrics_jsonl("save/align_itr/metrics.jsonl")
    plot_curves(records, "curves.png")                       # every key
    plot_curves(records, "recall.png", keys=["r@k_general"])  # a family, a glob
                                                              # ("*t2i*") or a key
    plot_embeddings({"image": image_emb, "text": text_emb},   # (N, D) each
                    labels=category_ids,                      # (N,) ints
                    out_path="tsne.png",
                    label_names={0: "dress", 1: "shirt"})
    points, labels = collect_embeddings(model, loader)        # SampleLists -> arrays
                                                              # (tqdm progress bar)

Pure functions: they never import MMF and draw on matplotlib Figures with
the Agg canvas (no pyplot state, no display needed). The command line
around them is `mmf-fashion plot curves|embeddings` (mmf_fashion/cli/plot.py);
the retrieval grids of `mmf-fashion plot retrieval` live in
mmf_fashion/visualize_retrieval.py.

Metric families: a key "<split>/<dataset>/<metric>/<key>" belongs to the
family "<metric>" (e.g. "r@k_general"); a three-part key
"<split>/<dataset>/<loss>" is a loss and goes to the family "loss". Keys of
train.jsonl ("train/...") go to "train losses" (each task's loss and
train/total_loss), "lr" and "samples_per_s". One subplot per family, one line
per key, against num_updates; `curve_panels` is that grouping.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from mmf_fashion.utils.optional import require

LOSS_FAMILY = "loss"
TRAIN_LOSS_FAMILY = "train losses"
LR_FAMILY = "lr"
THROUGHPUT_FAMILY = "samples_per_s"
TOTAL_LOSS_KEY = "train/total_loss"
STEP_KEY = "num_updates"
KIND_MARKERS = {"image": "o", "text": "^", "fused": "s"}
SINGLE_THREAD_TSNE_POINTS = 5000


class PlotError(ValueError):
    """A user-facing problem with the input of a plot (the CLI prints it)."""


# ---------------------------------------------------------------- curves
def read_metrics_jsonl(path: str, allow_empty: bool = False) -> List[Dict[str, float]]:
    """Records of a metrics.jsonl (or train.jsonl) file, one dict per non-empty line."""
    if not os.path.isfile(path):
        raise PlotError(f"{path}: no such metrics file")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PlotError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise PlotError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            records.append(_checked_record(record, f"{path}, line {number}"))
    if not records and not allow_empty:
        raise PlotError(f"{path}: no records (the run has not evaluated yet?)")
    return records


def _checked_record(record: Mapping, where: str) -> Dict[str, float]:
    if STEP_KEY not in record:
        raise PlotError(f"{where}: field '{STEP_KEY}' is missing")
    checked = {}
    for key, value in record.items():
        # bools are ints in Python; a flag is not a metric
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PlotError(f"{where}: field '{key}' should be a number, got {value!r}")
        checked[str(key)] = float(value)
    return checked


def metric_family(key: str) -> str:
    """'val/fashiongen/r@k_general/t2i_r@10' -> 'r@k_general'; losses -> 'loss';
    train.jsonl keys -> 'train losses', 'lr' or 'samples_per_s'."""
    parts = key.split("/")
    if parts[0] == "train":
        if parts[-1] == "lr":
            return LR_FAMILY
        if parts[-1] == "samples_per_s":
            return THROUGHPUT_FAMILY
        return TRAIN_LOSS_FAMILY
    if len(parts) >= 4:
        return parts[2]
    if len(parts) == 3 or "loss" in key.lower():
        return LOSS_FAMILY
    return parts[-1]


def select_keys(available: Iterable[str], patterns: Optional[Sequence[str]]) -> List[str]:
    """The keys to draw: all, or those matching a pattern (exact key, family
    name, or fnmatch glob). A pattern that matches nothing is an error."""
    available = sorted(set(available) - {STEP_KEY})
    if not patterns:
        return available
    chosen = []
    for pattern in patterns:
        matched = [
            key
            for key in available
            if key == pattern or metric_family(key) == pattern or fnmatch.fnmatchcase(key, pattern)
        ]
        if not matched:
            families = sorted({metric_family(key) for key in available})
            raise PlotError(
                f"--keys: '{pattern}' matches no metric. Families: {', '.join(families)}; keys: {', '.join(available)}"
            )
        chosen.extend(key for key in matched if key not in chosen)
    return chosen


def curve_series(records: Sequence[Mapping[str, float]], keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """{key: (M, 2) array of (num_updates, value)} sorted by update. When a
    resumed run evaluated the same update twice the later record wins."""
    series: Dict[str, Dict[float, float]] = {key: {} for key in keys}
    for index, record in enumerate(records):
        if STEP_KEY not in record:
            raise PlotError(f"record {index}: field '{STEP_KEY}' is missing")
        step = float(record[STEP_KEY])
        for key in keys:
            if key in record:
                series[key][step] = float(record[key])
    return {
        key: np.array(sorted(points.items()), dtype=np.float64).reshape(-1, 2)
        for key, points in series.items()
        if points
    }


def plot_curves(
    records: Sequence[Mapping[str, float]],
    out_path: str,
    keys: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Dict[str, List[str]]:
    """Draw every selected key against num_updates, one subplot per family.

    Returns {family: [keys drawn]} in the order of the subplots.
    """
    panels = curve_panels(records, keys)
    families = OrderedDict((family, list(panel)) for family, panel in panels.items())

    columns = min(2, len(families))
    rows = math.ceil(len(families) / columns)
    figure = _figure((6.5 * columns, 4.0 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, (family, family_keys) in zip(axes.flat, families.items()):
        for key in family_keys:
            points = panels[family][key]
            style = {"color": "black", "linewidth": 2.0} if key == TOTAL_LOSS_KEY else {}
            axis.plot(points[:, 0], points[:, 1], marker="o", markersize=3, label=_short_label(key, family), **style)
        axis.set_title(family)
        axis.set_xlabel(STEP_KEY)
        axis.set_ylabel("loss" if family in (LOSS_FAMILY, TRAIN_LOSS_FAMILY) else "value")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    for axis in list(axes.flat)[len(families) :]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    _save(figure, out_path)
    return dict(families)


_FAMILY_ORDER = {TRAIN_LOSS_FAMILY: 0, LR_FAMILY: 1, LOSS_FAMILY: 2, THROUGHPUT_FAMILY: 4}


def curve_panels(
    records: Sequence[Mapping[str, float]], keys: Optional[Sequence[str]] = None
) -> "OrderedDict[str, OrderedDict[str, np.ndarray]]":
    """{panel: {key: (M, 2) series}}: what plot_curves draws, in its order
    (train losses, lr, evaluation losses, metric families alphabetically,
    samples_per_s). Records may mix train.jsonl and metrics.jsonl lines. A
    task logged only at some updates (FashionViL samples one task per update)
    keeps just those points: its line joins its own updates."""
    if not records:
        raise PlotError("no records to plot")
    records = [_checked_record(record, f"record {index}") for index, record in enumerate(records)]
    available = set().union(*(record.keys() for record in records))
    series = curve_series(records, select_keys(available, keys))
    if not series:
        raise PlotError("the selected keys hold no values")

    def order(key):
        family = metric_family(key)
        # the total last in its panel, drawn over the tasks
        return (_FAMILY_ORDER.get(family, 3), family, key == TOTAL_LOSS_KEY, key)

    panels: "OrderedDict[str, OrderedDict[str, np.ndarray]]" = OrderedDict()
    for key in sorted(series, key=order):
        panels.setdefault(metric_family(key), OrderedDict())[key] = series[key]
    return panels


def _short_label(key: str, family: str) -> str:
    """Drop the family from the legend label: it is the subplot's title."""
    parts = key.split("/")
    if family != LOSS_FAMILY and len(parts) >= 4 and parts[2] == family:
        parts = parts[:2] + parts[3:]
    return "/".join(parts)


# ---------------------------------------------------------------- embeddings
def default_perplexity(num_points: int) -> float:
    """t-SNE's usual 30, lowered for small sets (it must stay below N)."""
    return float(max(1.0, min(30.0, (num_points - 1) / 3.0)))


def tsne_2d(points: np.ndarray, seed: int = 0, perplexity: Optional[float] = None, max_iter: int = 500) -> np.ndarray:
    """(N, D) -> (N, 2) with scikit-learn's t-SNE (perplexity adapted to N)."""
    from sklearn.manifold import TSNE

    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2:
        raise PlotError(f"t-SNE needs an (N, D) array, got shape {points.shape}")
    if points.shape[0] < 3:
        raise PlotError(f"t-SNE needs at least 3 points, got {points.shape[0]}")
    if not np.isfinite(points).all():
        raise PlotError("the embeddings hold NaN or Inf values")
    perplexity = default_perplexity(points.shape[0]) if perplexity is None else float(perplexity)
    if not 0 < perplexity < points.shape[0]:
        raise PlotError(f"perplexity must be in (0, {points.shape[0]}) for {points.shape[0]} points, got {perplexity}")
    options = {
        "n_components": 2,
        "perplexity": perplexity,
        "init": "pca" if min(points.shape) >= 2 else "random",
        "learning_rate": "auto",
        "random_state": seed,
    }
    options["max_iter"] = max(250, int(max_iter))
    tsne = TSNE(**options)
    if points.shape[0] > SINGLE_THREAD_TSNE_POINTS:
        return tsne.fit_transform(points).astype(np.float64)
    # Barnes-Hut's OpenMP threads spin against each other (and against torch)
    # on small inputs: one thread was 5-25x faster on a 2-core machine.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(points).astype(np.float64)


def plot_embeddings(
    points_by_kind: Mapping[str, np.ndarray],
    labels: Union[Sequence[int], np.ndarray, Mapping[str, Sequence[int]]],
    out_path: str,
    label_names: Optional[Mapping[int, str]] = None,
    seed: int = 0,
    perplexity: Optional[float] = None,
    title: Optional[str] = None,
) -> Dict[str, np.ndarray]:
    """t-SNE map of embeddings, coloured by label, one panel per kind.

    points_by_kind: {"image": (N, D), "text": (N, D), "fused": (M, D'), ...};
    labels: one (N,) sequence shared by every kind, or {kind: labels}.
    Kinds of the same width are mapped by ONE joint t-SNE, so image and text
    points of a trained dual encoder land near each other; such kinds also
    get a shared "joint" panel with one marker per kind.

    Returns {kind: (N, 2) coordinates}.
    """
    kinds = [kind for kind, points in points_by_kind.items() if points is not None]
    if not kinds:
        raise PlotError("no embeddings to plot")
    arrays = {kind: _as_2d(points_by_kind[kind], kind) for kind in kinds}
    labels_by_kind = {kind: _labels_for(kind, labels, arrays[kind].shape[0]) for kind in kinds}

    coordinates: Dict[str, np.ndarray] = {}
    joint_groups: List[List[str]] = []
    for width in sorted({array.shape[1] for array in arrays.values()}):
        group = [kind for kind in kinds if arrays[kind].shape[1] == width]
        stacked = tsne_2d(np.concatenate([arrays[kind] for kind in group]), seed=seed, perplexity=perplexity)
        start = 0
        for kind in group:
            count = arrays[kind].shape[0]
            coordinates[kind] = stacked[start : start + count]
            start += count
        if len(group) > 1:
            joint_groups.append(group)

    all_labels = sorted({int(v) for kind in kinds for v in labels_by_kind[kind]})
    colours = _colours(len(all_labels))
    colour_of = {label: colours[i] for i, label in enumerate(all_labels)}
    names = {label: (label_names or {}).get(label, f"category {label}") for label in all_labels}

    panels = [[kind] for kind in kinds] + joint_groups
    figure = _figure((5.0 * len(panels) + 2.0, 5.0))
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, panel in zip(axes.flat, panels):
        for kind in panel:
            kind_labels = labels_by_kind[kind]
            for label in sorted(set(int(v) for v in kind_labels)):
                mask = kind_labels == label
                axis.scatter(
                    coordinates[kind][mask, 0],
                    coordinates[kind][mask, 1],
                    s=14,
                    alpha=0.8,
                    color=colour_of[label],
                    marker=KIND_MARKERS.get(kind, "D"),
                    linewidths=0,
                )
        axis.set_title(" + ".join(panel) if len(panel) > 1 else f"{panel[0]} ({len(coordinates[panel[0]])})")
        axis.set_xticks([])
        axis.set_yticks([])
    handles = [_legend_dot(colour_of[label], "o", names[label]) for label in all_labels]
    if joint_groups:
        handles += [_legend_dot("0.3", KIND_MARKERS.get(kind, "D"), kind) for kind in kinds]
    figure.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    figure.suptitle(title or "t-SNE of embeddings")
    figure.subplots_adjust(left=0.02, right=1.0 - 1.8 / figure.get_size_inches()[0], bottom=0.03, top=0.86, wspace=0.08)
    _save(figure, out_path, tight=False)
    return coordinates


def evenly_spaced(length: int, max_items: Optional[int]) -> List[int]:
    """Up to max_items indices spread over range(length) (all when it fits):
    a split is often ordered by category, so its head would show only a few."""
    if length <= 0:
        raise PlotError("the split is empty")
    if not max_items or max_items >= length:
        return list(range(length))
    if max_items < 3:
        raise PlotError(f"--max-items must be at least 3 for t-SNE, got {max_items}")
    return sorted({int(round(v)) for v in np.linspace(0, length - 1, int(max_items))})


def collect_embeddings(
    model,
    batches: Iterable,
    label_key: str = "category_id",
    fused: bool = True,
    progress: bool = True,
):
    """Embed every batch (a SampleList or dict with `image`, `text`,
    `label_key`) with a model; returns ({kind: (N, D) float32 array}, (N,) labels).

    image: model.embed_images(batch["image"]); text: model.embed_texts(batch["text"]);
    fused: model.embed_composed(images, texts). A kind the model has no method
    for is read from its eval forward output (image_embedding, text_embedding,
    fused_embedding); a kind neither provides is left out (fused) or an error.
    """
    import torch

    total = len(batches) if hasattr(batches, "__len__") else None
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=total, desc="embedding", unit="batch", file=sys.stderr)
    device = _model_device(model)
    chunks: Dict[str, List[np.ndarray]] = {"image": [], "text": [], "fused": []}
    labels: List[np.ndarray] = []
    with torch.no_grad():
        for number, batch in enumerate(batches):
            missing = [key for key in ("image", label_key) if _get(batch, key) is None]
            if missing:
                raise PlotError(f"batch {number}: no '{missing[0]}' (keys: {', '.join(sorted(_keys(batch)))})")
            embeddings = _embed_batch(model, batch, device, fused)
            for kind, value in embeddings.items():
                chunks[kind].append(value.detach().float().cpu().numpy())
            labels.append(torch.as_tensor(_get(batch, label_key)).reshape(-1).cpu().numpy())
    if not labels:
        raise PlotError("no batches to embed")
    label_array = np.concatenate(labels).astype(np.int64)
    points = {kind: np.concatenate(parts) for kind, parts in chunks.items() if parts}
    for kind, array in points.items():
        if array.shape[0] != label_array.shape[0]:
            raise PlotError(f"{kind} embeddings: {array.shape[0]} rows for {label_array.shape[0]} items")
    return points, label_array


def _embed_batch(model, batch, device, fused: bool) -> Dict:
    images = _get(batch, "image").to(device)
    texts = _get(batch, "text")
    texts = [str(text) for text in texts] if texts is not None else None
    found = {}
    if callable(getattr(model, "embed_images", None)):
        found["image"] = model.embed_images(images)
    if texts is not None and callable(getattr(model, "embed_texts", None)):
        found["text"] = model.embed_texts(texts)
    if fused and texts is not None and callable(getattr(model, "embed_composed", None)):
        found["fused"] = model.embed_composed(images, texts)
    if "image" not in found or "text" not in found:
        output = model(batch.to(device) if hasattr(batch, "to") else batch)
        for kind, key in (("image", "image_embedding"), ("text", "text_embedding"), ("fused", "fused_embedding")):
            if kind not in found and output.get(key, None) is not None and (fused or kind != "fused"):
                found[kind] = output[key]
    for kind in ("image", "text"):
        if kind not in found:
            raise PlotError(
                f"{type(model).__name__} gives no {kind} embeddings: it has no embed_{kind}s() and its forward "
                f"returns no '{kind}_embedding'"
                + (" (the batch has no 'text')" if kind == "text" and texts is None else "")
            )
    return found


def _model_device(model):
    import torch

    for parameter in getattr(model, "parameters", lambda: iter(()))():
        return parameter.device
    return torch.device("cpu")


def _get(batch, key):
    if isinstance(batch, Mapping):
        return batch.get(key, None)
    return getattr(batch, key, None)


def _keys(batch) -> List[str]:
    return [str(key) for key in batch.keys()] if hasattr(batch, "keys") else []


def _as_2d(points, kind: str) -> np.ndarray:
    if hasattr(points, "detach"):  # a torch tensor
        points = points.detach().float().cpu().numpy()
    array = np.asarray(points, dtype=np.float32)
    if array.ndim != 2:
        raise PlotError(f"embeddings '{kind}': expected (N, D), got shape {array.shape}")
    return array


def _labels_for(kind: str, labels, count: int) -> np.ndarray:
    chosen = labels[kind] if isinstance(labels, Mapping) else labels
    if hasattr(chosen, "detach"):
        chosen = chosen.detach().cpu().numpy()
    array = np.asarray(chosen).reshape(-1).astype(np.int64)
    if array.shape[0] != count:
        raise PlotError(f"embeddings '{kind}': {count} points but {array.shape[0]} labels")
    return array


def _colours(count: int) -> List:
    matplotlib = require("matplotlib", "plotting")

    palette = matplotlib.colormaps["tab20" if count > 10 else "tab10"]
    if count <= palette.N:
        return [palette(i) for i in range(count)]
    wide = matplotlib.colormaps["hsv"]
    return [wide(i / count) for i in range(count)]


def _legend_dot(colour, marker: str, label: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=colour, marker=marker, linestyle="", markersize=6, label=label)


# ---------------------------------------------------------------- helpers
def _figure(size):
    """A Figure on an Agg canvas: no pyplot, no global backend switch, no display."""
    require("matplotlib", "plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out_path: str, tight: bool = True) -> None:
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    if tight:
        figure.tight_layout()
    figure.savefig(out_path, dpi=110)
