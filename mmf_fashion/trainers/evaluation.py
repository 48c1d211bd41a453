"""Evaluation for fashion_trainer: accumulate a split, compute metrics, write results.

Cheatsheet::

    metrics = MetricSet(config.evaluation.metrics)        # names + params from YAML
    values = metrics.compute(accumulated, dataset_type, dataset_name, model=model)
    write_results(save_dir, values, num_updates)           # metrics.json + metrics.jsonl
    write_train_record(save_dir, losses, lr, samples_per_s, num_updates)   # train.jsonl
    write_scalars(summary_writer, record)          # the same record to tensorboard

A metric may return one number or a dict of numbers; the flat key is
"<split>/<dataset>/<metric>/<key>" ("value" for single numbers).
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

import torch


def build_metrics(metric_list: Iterable) -> Tuple[Dict[str, Any], Set[str]]:
    """evaluation.metrics -> ({name: metric object}, the report keys they read).

    The one place metrics are built from the config: MetricSet (our trainer)
    and the bridge's patch of MMF's Metrics (MMF's own trainers) both call it,
    so a metric gets the same params and names whichever trainer runs.
    """
    from mmf.common.registry import registry

    metrics: Dict[str, Any] = {}
    required: Set[str] = set()
    for metric in metric_list or []:
        if isinstance(metric, str):
            name, metric_type, params = metric, metric, {}
        elif isinstance(metric, collections.abc.Mapping) and "type" in metric:
            metric_type = metric["type"]
            name = metric.get("key", None) or metric_type
            params = dict(metric.get("params", None) or {})
        else:
            raise ValueError(f"evaluation.metrics entry {metric!r}: give a name or a mapping with 'type'")
        metric_cls = registry.get_metric_class(metric_type)
        if metric_cls is None:
            from mmf_fashion.plugin import registered_names

            raise ValueError(
                f"Unknown metric '{metric_type}'. Registered metrics: {', '.join(registered_names('metric'))}"
            )
        metrics[name] = metric_cls(**params)
        required.update(getattr(metrics[name], "required_params", []))
    return metrics, required


class MetricSet:
    def __init__(self, metric_list: Iterable):
        self.metrics, self.required_params = build_metrics(metric_list)

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def compute(self, report, dataset_type: str, dataset_name: str, model=None, dataset=None) -> Dict[str, float]:
        """Metrics get the model (pair scoring, re-ranking) and the dataset (galleries) when they accept them."""
        values: Dict[str, float] = {}
        with torch.no_grad():
            for name, metric in self.metrics.items():
                accepted = inspect.signature(metric.calculate).parameters
                takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
                extra = {k: v for k, v in (("model", model), ("dataset", dataset)) if takes_any or k in accepted}
                result = metric.calculate(report, report, **extra)
                prefix = f"{dataset_type}/{dataset_name}/{name}"
                if isinstance(result, collections.abc.Mapping):
                    for key, value in result.items():
                        values[f"{prefix}/{key}"] = _to_float(value)
                else:
                    values[f"{prefix}/value"] = _to_float(result)
        return values


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean().item())
    return float(value)


class Accumulator:
    """Concatenates the fields metrics need over a whole split (tensors on CPU, lists extended)."""

    def __init__(self, fields: Iterable[str]):
        self.fields = [f for f in fields if f not in ("dataset_name", "dataset_type")]
        self.store: Dict[str, List] = {f: [] for f in self.fields}
        self.loss_sums: Dict[str, float] = {}
        self.batches = 0

    def add(self, batch: Mapping, output: Mapping) -> None:
        self.batches += 1
        from mmf_fashion.metrics.registered import report_value  # the metrics' own lookup rule

        for field in self.fields:
            value = report_value(field, batch, output)
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu()
            self.store[field].append(value)
        for key, loss in (output.get("losses") or {}).items():
            self.loss_sums[key] = self.loss_sums.get(key, 0.0) + float(loss.detach().float().mean())

    def report(self) -> Dict[str, Any]:
        merged: Dict[str, Any] = {}
        for field, parts in self.store.items():
            if not parts:
                continue
            if isinstance(parts[0], torch.Tensor):
                merged[field] = torch.cat([p if p.dim() > 0 else p.view(1) for p in parts], dim=0)
            elif isinstance(parts[0], (list, tuple)):
                merged[field] = [item for part in parts for item in part]
            else:
                merged[field] = parts
        return merged

    def mean_losses(self) -> Dict[str, float]:
        return {k: v / max(1, self.batches) for k, v in self.loss_sums.items()}


class AccumulatedReport(dict):
    """A dict with attribute access, as MMF metrics expect of a report."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(key) from error

    def __setattr__(self, key, value):
        self[key] = value


def _atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    with os.fdopen(handle, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(save_dir: str, values: Mapping[str, float], num_updates: int) -> Dict[str, float]:
    """metrics.json (overwritten) and one appended line of metrics.jsonl."""
    record = dict(sorted(values.items()))
    record["num_updates"] = int(num_updates)
    _atomic_write_text(os.path.join(save_dir, "metrics.json"), json.dumps(record, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(save_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def write_train_record(
    save_dir: str,
    losses: Mapping[str, float],
    lr: float,
    samples_per_s: float,
    num_updates: int,
    max_memory_gib: Optional[float] = None,
) -> Dict[str, float]:
    """One line of train.jsonl per log_interval, flat like metrics.json: each task's
    loss ("train/<dataset>/<task>", its mean over the updates of the interval that
    computed it), their sum "train/total_loss", "train/lr",
    "train/samples_per_s", on CUDA "train/max_memory_gib" (peak allocated so far)
    and num_updates. A file of its own, so that readers of metrics.jsonl keep
    seeing evaluations only."""
    record = {key if key.startswith("train/") else f"train/{key}": float(value) for key, value in losses.items()}
    record["train/total_loss"] = float(sum(losses.values()))
    record["train/lr"] = float(lr)
    record["train/samples_per_s"] = float(samples_per_s)
    if max_memory_gib is not None:
        record["train/max_memory_gib"] = float(max_memory_gib)
    record["num_updates"] = int(num_updates)
    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, "train.jsonl"), "a") as f:
        f.write(json.dumps(dict(sorted(record.items())), sort_keys=True) + "\n")
    return record


def write_scalars(summary_writer, record: Mapping[str, float]) -> None:
    """One record of train.jsonl or metrics.jsonl to a tensorboard SummaryWriter:
    every key as a scalar at step num_updates, under the same name. Flushed at
    once, so a live tensorboard sees it and a killed run loses nothing."""
    if summary_writer is None:
        return
    step = int(record["num_updates"])
    for key, value in record.items():
        if key != "num_updates":
            summary_writer.add_scalar(key, float(value), step)
    summary_writer.flush()
