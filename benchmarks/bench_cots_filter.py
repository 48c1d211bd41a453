"""COTS on noisy pairs: the adaptive momentum filter and the queues (issue 8, part 5).

    .venv/bin/python -m benchmarks.bench_cots_filter [--updates 200] [--seeds 0 1] [--jobs 2] \
        [--noise 0.2] [--products 600] [--variants queue+filter queue in-batch align] \
        [--out benchmarks/results/cots_filter.md]

What it does:
1. generates (once) a synthetic world where ``--noise`` of the TRAIN products
   carry the text of another product (``mmf_fashion.data.synth.generate``,
   noise_fraction; val stays clean; the manifest lists the mismatched ids);
2. trains each variant with ``mmf_run`` (projects/cots/configs/pretrain.yaml
   or projects/align/configs/pretrain.yaml plus ``run_overrides``: one
   process per run and seed, ``--jobs`` runs at a time, each with
   ``--threads`` torch threads):
   - ``queue+filter``: COTS with a momentum queue and the filter;
   - ``queue``: the same without the filter;
   - ``in-batch+filter``: no queue (negatives = the momentum features of the
     global batch only), filter on;
   - ``in-batch``: no queue, no filter;
   - ``align``: ALIGN (in-batch negatives of the online towers, no momentum)
     at the same sizes, as the plain baseline.
   All COTS variants train the instance (itc) and task (kl) levels only
   (cmlm and cmvm off) with the same momentum, so the rows differ in nothing
   but the negatives and the filter. Every row uses ``--image-encoder``
   (default mobilenet_v3_small: the configs' EfficientNet-B0 costs ~5x more
   per step on one CPU core, and ~150 updates of it, what fits here, leave
   the momentum variants near chance; see results/cots_filter.md);
3. reads the clean-val full-ranking retrieval (r@k_general) from each run's
   ``metrics.json``;
4. for the COTS runs, loads the final checkpoint and scores every train pair
   with the momentum towers (train mode, as the filter saw them): the AUC of
   the positive similarity as a detector of the mismatched pairs and, where
   the filter is on, how many mismatched pairs fall below its final
   threshold (recall) and how many clean pairs do (false drops);
5. writes a markdown table to ``--out`` with the mean and spread over seeds,
   the chance level from the manifest, the commands and the run times.
Runs on CPU (each run trains ``--updates`` updates of the image encoder at
64 px and a 2x128 BERT; ~35 min for the defaults with 2 jobs on 2 free
cores) or on a GPU when present.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COTS_CONFIG = "projects/cots/configs/pretrain.yaml"
ALIGN_CONFIG = "projects/align/configs/pretrain.yaml"
METRIC = "val/fashiongen/r@k_general"
KEYS = ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "avg")

# what tells the variants apart; the sizes shared by all runs come from the command line (run_overrides)
VARIANTS: Dict[str, Dict] = {
    "queue+filter": {"model": "cots", "config": COTS_CONFIG, "filter": True, "queue": True},
    "queue": {"model": "cots", "config": COTS_CONFIG, "filter": False, "queue": True},
    "in-batch+filter": {"model": "cots", "config": COTS_CONFIG, "filter": True, "queue": False},
    "in-batch": {"model": "cots", "config": COTS_CONFIG, "filter": False, "queue": False},
    "align": {"model": "align", "config": ALIGN_CONFIG, "filter": False, "queue": False},
}
DEFAULT_VARIANTS = ["queue+filter", "queue", "in-batch", "align"]


def ensure_data(data_dir: str, products: int, noise: float, image_size: int) -> dict:
    manifest_path = os.path.join(data_dir, "synth_manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if (
            manifest.get("noise_fraction") == noise
            and manifest.get("products") == products
            and manifest.get("image_size") == image_size
        ):
            return manifest
        raise SystemExit(
            f"{data_dir} holds another world (noise {manifest.get('noise_fraction')}, "
            f"{manifest.get('products')} products): pass another --data-dir"
        )
    from mmf_fashion.data.synth import generate

    print(f"generating {products} products, noise {noise}, into {data_dir}", flush=True)
    generate(data_dir, products=products, image_size=image_size, seed=0, noise_fraction=noise, progress=False)
    with open(manifest_path, encoding="utf-8") as handle:
        return json.load(handle)


def run_overrides(variant: Dict, args) -> List[str]:
    """Every k=v of one variant's runs except those naming the seed and the directories.

    Shared by all rows: updates, batch, image encoder. COTS rows: itc + kl only
    (cmlm, cmvm off), --momentum, the queue (--queue-size, or 0 for the in-batch
    rows) and the filter (on from --filter-start) or not."""
    model = variant["model"]
    overrides = [
        f"training.max_updates={args.updates}",
        f"training.evaluation_interval={args.updates}",
        f"training.checkpoint_interval={args.updates}",
        f"training.log_interval={max(1, args.updates // 6)}",
        f"training.batch_size={args.batch_size}",
        "training.num_workers=0",
        f"model_config.{model}.image_encoder={args.image_encoder}",
    ]
    if model == "cots":
        overrides += [
            "model_config.cots.loss_weights.cmlm=0.0",
            "model_config.cots.loss_weights.cmvm=0.0",
            f"model_config.cots.momentum={args.momentum}",
            f"model_config.cots.queue_size={args.queue_size if variant['queue'] else 0}",
            f"model_config.cots.filter.enabled={'true' if variant['filter'] else 'false'}",
        ]
        if variant["filter"]:
            overrides.append(f"model_config.cots.filter.start_update={args.filter_start}")
        overrides += list(args.cots_override)
    return overrides + list(args.override)


def mmf_run_command(variant: Dict, args, seed: int, save_dir: str) -> List[str]:
    return [
        os.path.join(os.path.dirname(sys.executable), "mmf_run"),
        f"config={variant['config']}",
        f"model={variant['model']}",
        "dataset=fashiongen",
        "run_type=train_val",
        f"env.data_dir={args.data_dir}",
        f"env.save_dir={save_dir}",
        f"training.seed={seed}",
    ] + run_overrides(variant, args)


def thread_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def read_metrics(save_dir: str) -> Optional[Dict[str, float]]:
    metrics_path = os.path.join(save_dir, "metrics.json")
    if not os.path.isfile(metrics_path):
        return None
    with open(metrics_path, encoding="utf-8") as handle:
        metrics = json.load(handle)
    return {key: float(metrics[f"{METRIC}/{key}"]) for key in KEYS if f"{METRIC}/{key}" in metrics}


RUN_RECORD = "bench_run.json"  # written next to metrics.json: the command, its exit status and wall time


def run_variant(name: str, variant: Dict, seed: int, args, save_dir: str) -> Tuple[Optional[Dict[str, float]], float]:
    """(clean-val retrieval of the run, training wall seconds; 0 when reused without a record)."""
    command = mmf_run_command(variant, args, seed, save_dir)
    record_path = os.path.join(save_dir, RUN_RECORD)
    if os.path.isfile(os.path.join(save_dir, "metrics.json")) and not args.rerun:
        seconds = 0.0
        if os.path.isfile(record_path):
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
            if record.get("command") != command[1:]:
                raise SystemExit(f"{save_dir} was trained with another command; pass --rerun or another --work-dir")
            seconds = float(record.get("seconds", 0.0))
        print(f"[{name} seed {seed}] reusing {save_dir}/metrics.json", flush=True)
        return read_metrics(save_dir), seconds
    print(f"[{name} seed {seed}] {' '.join(command[1:])}", flush=True)
    start = time.time()
    with open(os.path.join(os.path.dirname(save_dir), f"{os.path.basename(save_dir)}.log"), "w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=thread_env(args.threads))
    seconds = time.time() - start
    print(f"[{name} seed {seed}] exit {result.returncode} in {seconds:.0f} s", flush=True)
    if os.path.isdir(save_dir):
        with open(record_path, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "command": command[1:],
                    "returncode": result.returncode,
                    "seconds": round(seconds, 1),
                    "threads": args.threads,
                    "jobs": args.jobs,
                },
                handle,
                indent=1,
            )
    if result.returncode != 0:
        return None, seconds
    return read_metrics(save_dir), seconds


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
    """Score every train pair with the final momentum towers (and the final threshold, when filtered)."""
    import torch

    from mmf_fashion.runtime import build_model_from_config, build_split_dataset, load_config, split_loader

    checkpoint = os.path.join(save_dir, "cots_final.pth")
    if not os.path.isfile(checkpoint):
        return None
    config = load_config(
        os.path.join(REPO, variant["config"]),
        "cots",
        "fashiongen",
        [f"env.data_dir={args.data_dir}"] + run_overrides(variant, args),
    )
    model = build_model_from_config(config, checkpoint=checkpoint)
    model.train()  # the filter saw train-mode momentum features (BatchNorm batch statistics)
    train = build_split_dataset(config, "fashiongen", "train")
    torch.manual_seed(0)  # the train split's random view and crop, and dropout
    similarities, product_ids = [], []
    with torch.no_grad():
        for batch in split_loader(train, batch_size=args.batch_size):
            device = next(model.parameters()).device
            batch = batch.to(device)
            image_m, text_m = model._momentum_embeddings(batch)
            similarities += (image_m * text_m).sum(-1).tolist()
            product_ids += batch["product_id"].tolist()
    noisy = [s for s, p in zip(similarities, product_ids) if p in mismatched_ids]
    clean = [s for s, p in zip(similarities, product_ids) if p not in mismatched_ids]
    row = {
        "auc": _auc(clean, noisy),
        "pairs": len(similarities),
        "noisy_pairs": len(noisy),
        "clean_mean": statistics.mean(clean) if clean else float("nan"),
        "noisy_mean": statistics.mean(noisy) if noisy else float("nan"),
    }
    if model.momentum_filter is not None:
        threshold = float(model.momentum_filter.threshold())
        row.update(
            {
                "threshold": threshold,
                "noisy_dropped": sum(s < threshold for s in noisy) / max(1, len(noisy)),
                "clean_dropped": sum(s < threshold for s in clean) / max(1, len(clean)),
            }
        )
    return row


def _mean_spread(values: List[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_report(
    path: str,
    args,
    results: Dict[str, Dict[int, Dict[str, float]]],
    analyses: Dict[str, Dict[int, Dict]],
    times: Dict[str, Dict[int, float]],
    manifest: dict,
    seconds: float,
    machine: str,
) -> None:
    chance = manifest.get("chance", {}) or {}
    general = chance.get("fashiongen", {}).get("val", {}).get("r@k_general", {})
    val_products = manifest.get("counts", {}).get("fashiongen", {}).get("val", {})
    lines = [
        "# COTS on noisy pairs: adaptive momentum filter and queues",
        "",
        f"Written by `benchmarks/bench_cots_filter.py` on {time.strftime('%Y-%m-%d %H:%M')}; "
        f"{machine}; {args.jobs} run(s) at a time, {args.threads} torch thread(s) each; "
        f"{seconds / 60:.0f} min in all.",
        "",
        "Command:",
        "",
        "```",
        " ".join([".venv/bin/python -m benchmarks.bench_cots_filter"] + [shlex.quote(a) for a in args.argv]),
        "```",
        "",
        f"World: synthetic (`mmf_fashion.data.synth.generate`, seed 0), {manifest.get('products')} products "
        f"at {manifest.get('image_size')} px; {args.noise:.0%} of the TRAIN products carry another product's "
        f"text ({len(manifest.get('noise', {}).get('mismatched', []))} mismatched pairs); val is clean "
        f"({val_products.get('products', '?')} products, {val_products.get('images', '?')} images). "
        f"Each run: {args.updates} updates from scratch, batch {args.batch_size}, image encoder "
        f"{args.image_encoder} at {manifest.get('image_size')} px, BERT 2x128 (mean pooling), AdamW 3e-4 "
        f"warmup-cosine, seeds {' '.join(map(str, args.seeds))}. COTS rows: itc + kl only (cmlm, cmvm off), "
        f"momentum {args.momentum}, queue {args.queue_size} rows (0 for in-batch), filter k = 1.5 "
        f"from update {args.filter_start}. Metric: full-ranking retrieval on clean val (r@k_general: every "
        "val image against every val product text, %), mean ± std over seeds.",
        "",
        "| variant | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | avg | runs | min / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_seed in results.items():
        runs = [by_seed[seed] for seed in args.seeds if by_seed.get(seed)]
        cells = [_mean_spread([run[key] for run in runs if key in run]) for key in KEYS]
        recorded = times.get(name, {})
        minutes = [value / 60 for value in recorded.values() if value > 0]
        timing = _mean_spread(minutes) if minutes else ("reused" if recorded else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)}/{len(args.seeds)} | {timing} |")
    if general:  # the manifest holds fractions, the metrics percentages
        lines.append(
            "| chance | "
            + " | ".join(f"{100 * general[key]:.1f}" if key in general else "n/a" for key in KEYS)
            + " | - | - |"
        )
    if analyses:
        lines += [
            "",
            "## Can the momentum towers tell the mismatched train pairs? What does the filter drop?",
            "",
            "Every train pair scored once with the final momentum towers (train mode, as during training): "
            "the mean positive similarity of clean and mismatched pairs, the AUC of that similarity as a "
            "detector (P(clean > mismatched); 0.5 = blind) and, for the filtered runs, the share of each "
            "group below the filter's final threshold (mean - k std of its history).",
            "",
            "| variant | seed | clean mean sim | mismatched mean sim | AUC | threshold | mismatched below "
            "| clean below |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, by_seed in analyses.items():
            for seed in sorted(by_seed):
                row = by_seed[seed]
                filtered = "threshold" in row
                lines.append(
                    f"| {name} | {seed} | {row['clean_mean']:.3f} | {row['noisy_mean']:.3f} | {row['auc']:.3f} | "
                    + (
                        f"{row['threshold']:.3f} | {row['noisy_dropped']:.1%} | {row['clean_dropped']:.1%} |"
                        if filtered
                        else "- | - | - |"
                    )
                )
    lines += [
        "",
        "mmf_run command of each variant (plus `env.data_dir=<world> env.save_dir=<run dir> training.seed=<seed>`):",
        "",
    ]
    for name in results:
        variant = VARIANTS[name]
        lines.append(
            f"- {name}: `mmf_run config={variant['config']} model={variant['model']} dataset=fashiongen "
            f"run_type=train_val {' '.join(run_overrides(variant, args))}`"
        )
    work_dir = os.path.abspath(args.work_dir)
    shown = os.path.relpath(work_dir, REPO) if work_dir.startswith(REPO + os.sep) else work_dir
    lines += [
        "",
        f"Failed runs are counted in the runs column; their logs are next to their save dirs under `{shown}`.",
        "",
    ]
    if args.notes and os.path.isfile(args.notes):
        with open(args.notes, encoding="utf-8") as handle:
            lines += [handle.read().rstrip(), ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    print(f"wrote {path}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument(
        "--image-encoder",
        default="mobilenet_v3_small",
        help="torchvision name for every row (the configs' efficientnet_b0 is ~5x slower on a CPU core)",
    )
    parser.add_argument("--momentum", type=float, default=0.98, help="COTS EMA of the momentum towers")
    parser.add_argument("--queue-size", type=int, default=256, help="rows of the COTS queues (the queue variants)")
    parser.add_argument("--filter-start", type=int, default=200, help="first update at which the filter drops pairs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time (one per core)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run")
    parser.add_argument("--data-dir", default=None, help="default: <work-dir>/synth_noise<pct>")
    parser.add_argument("--work-dir", default=os.path.join(REPO, "save", "bench_cots_filter"))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "cots_filter.md"))
    parser.add_argument("--override", nargs="*", default=[], help="extra k=v for every run")
    parser.add_argument("--cots-override", nargs="*", default=[], help="extra k=v for the COTS runs")
    parser.add_argument(
        "--notes",
        default=os.path.join(REPO, "benchmarks", "results", "cots_filter_reading.md"),
        help="a markdown file appended to the report (the reading)",
    )
    parser.add_argument("--rerun", action="store_true", help="train again even where metrics.json exists")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.data_dir = os.path.abspath(
        args.data_dir or os.path.join(args.work_dir, f"synth_noise{round(args.noise * 100)}")
    )
    os.makedirs(args.work_dir, exist_ok=True)

    import torch

    torch.set_num_threads(max(1, args.threads))
    from benchmarks.common import machine_line

    machine = machine_line("cuda" if torch.cuda.is_available() else "cpu", threads=args.threads).rstrip(".")
    start = time.time()
    manifest = ensure_data(args.data_dir, args.products, args.noise, args.image_size)
    mismatched_ids = {int(entry["product_id"]) for entry in manifest.get("noise", {}).get("mismatched", [])}
    results: Dict[str, Dict[int, Dict[str, float]]] = {name: {} for name in args.variants}
    times: Dict[str, Dict[int, float]] = {name: {} for name in args.variants}
    analyses: Dict[str, Dict[int, Dict]] = {}
    lock = threading.Lock()

    def save_dir_of(name: str, seed: int) -> str:
        return os.path.join(args.work_dir, f"{name.replace('+', '_')}_seed{seed}")

    def train(name: str, seed: int) -> None:
        metrics, seconds = run_variant(name, VARIANTS[name], seed, args, save_dir_of(name, seed))
        with lock:
            times[name][seed] = seconds
            if metrics:
                results[name][seed] = metrics
            write_report(args.out, args, results, analyses, times, manifest, time.time() - start, machine)

    # seed-major order: with 2 jobs the two seeds of a variant never share the machine alone
    jobs = [(name, seed) for seed in args.seeds for name in args.variants]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(train, name, seed) for name, seed in jobs]:
            future.result()
    for name, seed in jobs:  # after the training, one at a time in this process
        if VARIANTS[name]["model"] == "cots" and results[name].get(seed):
            analysis = filter_analysis(VARIANTS[name], save_dir_of(name, seed), args, mismatched_ids)
            if analysis:
                analyses.setdefault(name, {})[seed] = analysis
    write_report(args.out, args, results, analyses, times, manifest, time.time() - start, machine)


if __name__ == "__main__":
    main()
