"""COTS on noisy pairs: the adaptive momentum filter and the queues (issue 8, part 5).

    .venv/bin/python -m benchmarks.bench_cots_filter [--updates 150] [--seeds 0 1] \
        [--noise 0.2] [--products 600] [--variants all] [--out benchmarks/results/cots_filter.md]

What it does:
1. generates (once) a synthetic world where ``--noise`` of the TRAIN products
   carry the text of another product (``mmf_fashion.data.synth.generate``,
   noise_fraction; val stays clean; the manifest lists the mismatched ids);
2. trains each variant with ``mmf_run`` (projects/cots/configs/pretrain.yaml
   with the overrides below, one process per run, ``--seeds`` seeds each):
   - ``queue+filter``: COTS with a momentum queue and the filter;
   - ``queue``: the same without the filter;
   - ``in-batch+filter``: no queue (negatives = the momentum features of the
     global batch only), filter on;
   - ``in-batch``: no queue, no filter;
   - ``align``: ALIGN (in-batch negatives of the online towers, no momentum)
     at the same sizes, as the plain baseline.
   All COTS variants train the instance (itc) and task (kl) levels only
   (cmlm and cmvm off) so the rows differ in nothing but the negatives and
   the filter;
3. reads the clean-val full-ranking retrieval (r@k_general) from each run's
   ``metrics.json``;
4. for the filtered runs, loads the final checkpoint and scores every train
   pair with the momentum towers: how many of the truly mismatched pairs fall
   below the filter's final threshold (recall), how many clean pairs do
   (false drops), and the AUC of the positive similarity as a noise detector;
5. writes a markdown table to ``--out`` with the mean and spread over seeds.
Runs on CPU (slow on 2 cores: each run trains ``--updates`` updates of
EfficientNet-B0 at 64 px and a 2x128 BERT) or on a GPU when present.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COTS_CONFIG = "projects/cots/configs/pretrain.yaml"
ALIGN_CONFIG = "projects/align/configs/pretrain.yaml"
METRIC = "val/fashiongen/r@k_general"
KEYS = ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "avg")

COTS_COMMON = ["model_config.cots.loss_weights.cmlm=0.0", "model_config.cots.loss_weights.cmvm=0.0"]
VARIANTS: Dict[str, Dict] = {
    "queue+filter": {"model": "cots", "config": COTS_CONFIG, "filter": True,
                     "overrides": COTS_COMMON + ["model_config.cots.filter.enabled=true"]},
    "queue": {"model": "cots", "config": COTS_CONFIG, "filter": False,
              "overrides": COTS_COMMON + ["model_config.cots.filter.enabled=false"]},
    "in-batch+filter": {"model": "cots", "config": COTS_CONFIG, "filter": True,
                        "overrides": COTS_COMMON + ["model_config.cots.queue_size=0",
                                                    "model_config.cots.filter.enabled=true"]},
    "in-batch": {"model": "cots", "config": COTS_CONFIG, "filter": False,
                 "overrides": COTS_COMMON + ["model_config.cots.queue_size=0",
                                             "model_config.cots.filter.enabled=false"]},
    "align": {"model": "align", "config": ALIGN_CONFIG, "filter": False, "overrides": []},
}


def ensure_data(data_dir: str, products: int, noise: float, image_size: int) -> dict:
    manifest_path = os.path.join(data_dir, "synth_manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if (manifest.get("noise_fraction") == noise and manifest.get("products") == products
                and manifest.get("image_size") == image_size):
            return manifest
        raise SystemExit(f"{data_dir} holds another world (noise {manifest.get('noise_fraction')}, "
                         f"{manifest.get('products')} products): pass another --data-dir")
    from mmf_fashion.data.synth import generate

    print(f"generating {products} products, noise {noise}, into {data_dir}", flush=True)
    generate(data_dir, products=products, image_size=image_size, seed=0, noise_fraction=noise, progress=False)
    with open(manifest_path, encoding="utf-8") as handle:
        return json.load(handle)


def run_variant(name: str, variant: Dict, seed: int, args, save_dir: str) -> Optional[Dict[str, float]]:
    metrics_path = os.path.join(save_dir, "metrics.json")
    if os.path.isfile(metrics_path) and not args.rerun:
        print(f"[{name} seed {seed}] reusing {metrics_path}", flush=True)
    else:
        command = [
            os.path.join(os.path.dirname(sys.executable), "mmf_run"),
            f"config={variant['config']}", f"model={variant['model']}", "dataset=fashiongen", "run_type=train_val",
            f"env.data_dir={args.data_dir}", f"env.save_dir={save_dir}", f"training.seed={seed}",
            f"training.max_updates={args.updates}", f"training.evaluation_interval={args.updates}",
            f"training.checkpoint_interval={args.updates}", f"training.log_interval={max(1, args.updates // 5)}",
            f"training.batch_size={args.batch_size}",
        ] + list(variant["overrides"]) + list(args.override)
        print(f"[{name} seed {seed}] {' '.join(command[1:])}", flush=True)
        start = time.time()
        with open(os.path.join(os.path.dirname(save_dir), f"{os.path.basename(save_dir)}.log"), "w") as log:
            result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        print(f"[{name} seed {seed}] exit {result.returncode} in {time.time() - start:.0f} s", flush=True)
        if result.returncode != 0 or not os.path.isfile(metrics_path):
            return None
    with open(metrics_path, encoding="utf-8") as handle:
        metrics = json.load(handle)
    return {key: float(metrics[f"{METRIC}/{key}"]) for key in KEYS if f"{METRIC}/{key}" in metrics}


def _auc(positives: List[float], negatives: List[float]) -> float:
    """P(a clean pair's similarity > a mismatched pair's), ties count half."""
    if not positives or not negatives:
        return float("nan")
    wins = 0.0
    for value in positives:
        for other in negatives:
            wins += 1.0 if value > other else 0.5 if value == other else 0.0
    return wins / (len(positives) * len(negatives))


def filter_analysis(variant: Dict, save_dir: str, args, mismatched_ids: set) -> Optional[Dict[str, float]]:
    """Score every train pair with the final momentum towers against the final threshold."""
    import torch

    from mmf_fashion.runtime import build_model_from_config, build_split_dataset, load_config, split_loader

    checkpoint = os.path.join(save_dir, "cots_final.pth")
    if not os.path.isfile(checkpoint):
        return None
    config = load_config(os.path.join(REPO, variant["config"]), "cots", "fashiongen",
                         [f"env.data_dir={args.data_dir}"] + list(variant["overrides"]) + list(args.override))
    model = build_model_from_config(config, checkpoint=checkpoint)
    model.train()  # the filter saw train-mode momentum features (BatchNorm batch statistics)
    train = build_split_dataset(config, "fashiongen", "train")
    similarities, product_ids = [], []
    with torch.no_grad():
        for batch in split_loader(train, batch_size=args.batch_size):
            device = next(model.parameters()).device
            batch = batch.to(device)
            image_m, text_m = model._momentum_embeddings(batch)
            similarities += (image_m * text_m).sum(-1).tolist()
            product_ids += batch["product_id"].tolist()
    threshold = float(model.momentum_filter.threshold())
    noisy = [s for s, p in zip(similarities, product_ids) if p in mismatched_ids]
    clean = [s for s, p in zip(similarities, product_ids) if p not in mismatched_ids]
    return {
        "threshold": threshold,
        "noisy_dropped": sum(s < threshold for s in noisy) / max(1, len(noisy)),
        "clean_dropped": sum(s < threshold for s in clean) / max(1, len(clean)),
        "auc": _auc(clean, noisy),
        "pairs": len(similarities),
        "noisy_pairs": len(noisy),
    }


def _mean_spread(values: List[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def write_report(path: str, args, results: Dict[str, List[Dict[str, float]]], analyses: Dict[str, List[Dict]],
                 manifest: dict, seconds: float) -> None:
    chance = manifest.get("chance", {}) or {}
    lines = [
        "# COTS on noisy pairs: adaptive momentum filter and queues",
        "",
        f"Written by `benchmarks/bench_cots_filter.py` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {seconds / 60:.0f} min).",
        "",
        f"World: synthetic, {manifest.get('products')} products at {manifest.get('image_size')} px, "
        f"{args.noise:.0%} of the TRAIN products carry another product's text "
        f"({len(manifest.get('noise', {}).get('mismatched', []))} pairs); val is clean. "
        f"Each run: {args.updates} updates, batch {args.batch_size}, seeds {args.seeds}; "
        "COTS rows train itc + kl only (cmlm, cmvm off). Metric: full-ranking "
        "retrieval on clean val (r@k_general, %), mean ± std over seeds.",
        "",
        "| variant | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | avg | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        cells = [_mean_spread([run[key] for run in runs if key in run]) for key in KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)}/{len(args.seeds)} |")
    general = chance.get("fashiongen", {}).get("val", {}).get("r@k_general", {})
    if general:  # the manifest holds fractions, the metrics percentages
        lines.append("| chance (manifest) | " + " | ".join(f"{100 * general[key]:.1f}" if key in general else "n/a"
                                                      for key in KEYS) + " | - |")
    if analyses:
        lines += [
            "",
            "## What the filter removes (train pairs, final momentum towers vs the final threshold)",
            "",
            "| variant | seed | threshold | mismatched pairs below it | clean pairs below it | AUC clean > mismatched |",
            "|---|---|---|---|---|---|",
        ]
        for name, rows in analyses.items():
            for seed, row in rows:
                lines.append(f"| {name} | {seed} | {row['threshold']:.3f} | {row['noisy_dropped']:.1%} "
                             f"| {row['clean_dropped']:.1%} | {row['auc']:.3f} |")
    lines += ["", "Failed runs are counted in the runs column; their logs are next to their save dirs "
              f"under `{args.work_dir}`.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    print(f"wrote {path}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--data-dir", default=None, help="default: <work-dir>/synth_noise<pct>")
    parser.add_argument("--work-dir", default=os.path.join(REPO, "save", "bench_cots_filter"))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "cots_filter.md"))
    parser.add_argument("--override", nargs="*", default=[], help="extra k=v for every run")
    parser.add_argument("--rerun", action="store_true", help="train again even where metrics.json exists")
    args = parser.parse_args(argv)
    args.data_dir = os.path.abspath(args.data_dir or os.path.join(args.work_dir, f"synth_noise{round(args.noise * 100)}"))
    os.makedirs(args.work_dir, exist_ok=True)

    start = time.time()
    manifest = ensure_data(args.data_dir, args.products, args.noise, args.image_size)
    mismatched_ids = {int(entry["product_id"]) for entry in manifest.get("noise", {}).get("mismatched", [])}
    results: Dict[str, List[Dict[str, float]]] = {}
    analyses: Dict[str, List] = {}
    for name in args.variants:
        variant = VARIANTS[name]
        results[name] = []
        for seed in args.seeds:
            save_dir = os.path.join(args.work_dir, f"{name.replace('+', '_')}_seed{seed}")
            metrics = run_variant(name, variant, seed, args, save_dir)
            if metrics:
                results[name].append(metrics)
            if metrics and variant["filter"]:
                analysis = filter_analysis(variant, save_dir, args, mismatched_ids)
                if analysis:
                    analyses.setdefault(name, []).append((seed, analysis))
        write_report(args.out, args, results, analyses, manifest, time.time() - start)  # after every variant


if __name__ == "__main__":
    main()
