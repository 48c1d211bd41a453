"""Evaluation for fashion_trainer: accumulate a split, compute metrics, write results.

Cheatsheet::

    metrics = MetricSet(config.evaluation.metrics)        # names + params from YAML
    values = metrics.compute(accumulated, dataset_type, dataset_name, model=model)
    write_results(save_dir, values, num_updates)           # metrics.json + metrics.jsonl
    write_train_record(save_dir, losses, lr, samples_per_s, num_updates)   # train.jsonl

A metric may return one number or a dict of numbers; the flat key is
"<split>/<dataset>/<metric>/<key>" ("value" for single numbers).
"""
from __future__ import annotations

import collections.abc
import inspect
import json
import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping

import torch


class MetricSet:
    def __init__(self, metric_list: Iterable):
        from mmf.common.registry import registry

        self.metrics = {}
        self.required_params = set()
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
            self.metrics[name] = metric_cls(**params)
            self.required_params.update(getattr(self.metrics[name], "required_params", []))

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
        for field in self.fields:
            if field in output:
                value = output[field]
            elif field in batch:
                value = batch[field]
            else:
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


def write_train_record(save_dir: str, losses: Mapping[str, float], lr: float, samples_per_s: float,
                       num_updates: int) -> Dict[str, float]:
    """One line of train.jsonl per log_interval, flat like metrics.json: each task's
    loss ("train/<dataset>/<task>"), their sum "train/total_loss", "train/lr",
    "train/samples_per_s" and num_updates. A file of its own, so that readers of
    metrics.jsonl keep seeing evaluations only."""
    record = {key if key.startswith("train/") else f"train/{key}": float(value) for key, value in losses.items()}
    record["train/total_loss"] = float(sum(losses.values()))
    record["train/lr"] = float(lr)
    record["train/samples_per_s"] = float(samples_per_s)
    record["num_updates"] = int(num_updates)
    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, "train.jsonl"), "a") as f:
        f.write(json.dumps(dict(sorted(record.items())), sort_keys=True) + "\n")
    return record
