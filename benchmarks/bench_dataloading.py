"""Data-loading benchmark: samples per second of every builder through MMF.

Cheatsheet::

    .venv/bin/python benchmarks/bench_dataloading.py                   # writes results/dataloading.md
    .venv/bin/python benchmarks/bench_dataloading.py --samples 128 --no-write
    .venv/bin/python benchmarks/bench_dataloading.py --data-dir data/synthetic --sizes 224

Each builder (fashiongen as JSON + JPEG files and as HDF5, fashioniq,
polyvore_ocir, fashionall) is built with its defaults.yaml through MMF's
build_dataset on the train split (training augmentations on), then read
through a torch DataLoader with MMF's BatchCollator, with 0 and 2 workers,
at 128 and 224 pixels. The clock starts after the first batch (worker
start-up and the first file opens are left out) and stops after --samples
more samples; the DataLoader cycles over the data if it is shorter.
Without --data-dir a synthetic world is generated once at 256 pixels (the
published FashionGen size) in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [
    # (label, builder, overrides, images per sample)
    ("fashiongen (json + jpeg)", "fashiongen", {"format": "json"}, 1),
    ("fashiongen (hdf5)", "fashiongen", {"format": "h5"}, 1),
    (
        "fashiongen pretraining (hdf5, mlm + 2 views + patch mask + PAC + regions)",
        "fashiongen",
        {
            "format": "h5",
            "mlm": True,
            "second_view": True,
            "patch_mask": True,
            "attribute_labels": True,
            "regions": True,
        },
        2,
    ),
    ("fashioniq", "fashioniq", {}, 2),
    ("polyvore_ocir (nondisjoint)", "polyvore_ocir", {}, None),
    ("fashionall (fashiongen + polyvore)", "fashionall", {}, 2),
]


def setup_mmf():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import mmf_fashion.bridge

    mmf_fashion.bridge.install()
    import torch
    from mmf.common.registry import registry
    from mmf.utils.configuration import Configuration

    import mmf_fashion.plugin

    mmf_fashion.plugin.register_all()
    torch.set_num_threads(1)
    config = Configuration().get_config()
    registry.register("config", config)
    registry.register("current_device", torch.device("cpu"))
    # no MMF Logger: it captures stdout into save/logs; datasets fall back to logging


def make_config(name, data_dir, size, overrides):
    from mmf.common.registry import registry
    from mmf.utils.configuration import load_yaml_with_defaults
    from omegaconf import OmegaConf

    config = OmegaConf.select(
        load_yaml_with_defaults(registry.get_builder_class(name).config_path()), f"dataset_config.{name}"
    )
    config.data_dir = str(data_dir)
    config.processors.image_processor.params.size = size
    for key, value in overrides.items():
        OmegaConf.update(config, key, value, merge=False)
    OmegaConf.set_struct(config, True)
    return config


def measure(name, data_dir, size, workers, overrides, samples, batch_size):
    import torch
    from mmf.common.batch_collator import BatchCollator
    from mmf.utils.build import build_dataset

    dataset = build_dataset(name, make_config(name, data_dir, size, overrides), "train")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=BatchCollator(name, "train"),
        persistent_workers=workers > 0,
    )
    iterator = iter(loader)

    def next_batch():
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(loader)
            return next(iterator)

    first = next_batch()
    outfit_images = 0
    served = 0
    start = time.perf_counter()
    while served < samples:
        batch = next_batch()
        count = batch.get_batch_size()
        served += count
        if "outfit_mask" in batch:
            outfit_images += int(batch["outfit_mask"].sum()) + count
    elapsed = time.perf_counter() - start
    del iterator, first
    loader = None  # the closure of next_batch holds it: release the workers now
    return served, elapsed, outfit_images, len(dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="an existing data directory (default: generate one)")
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--samples", type=int, default=256, help="samples timed per row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dataloading.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    setup_mmf()
    import torch

    if args.data_dir:
        data_dir = Path(args.data_dir)
        generated = f"--data-dir {data_dir}"
        manifest = data_dir / "synth_manifest.json"
        if manifest.is_file():
            import json

            info = json.loads(manifest.read_text())
            generated += f": {info.get('products')} products at {info.get('image_size')} px, seed {info.get('seed')}"
    else:
        from mmf_fashion.data.synth import generate

        data_dir = Path(tempfile.mkdtemp(prefix="bench_dataloading_")) / "synthetic"
        started = time.perf_counter()
        generate(data_dir, products=args.products, image_size=256, seed=0, progress=False)
        generated = f"generated: {args.products} products at 256 px in {time.perf_counter() - started:.0f} s"

    load_before = os.getloadavg()[0]
    rows = []
    for label, name, overrides, images_per_sample in CASES:
        for size in args.sizes:
            for workers in args.workers:
                served, elapsed, outfit_images, length = measure(
                    name, data_dir, size, workers, overrides, args.samples, args.batch_size
                )
                images = outfit_images if images_per_sample is None else served * images_per_sample
                row = (label, size, workers, length, served, elapsed, served / elapsed, images / elapsed)
                rows.append(row)
                print(
                    f"{label:75s} {size:4d}px workers={workers}  {row[6]:8.1f} samples/s  {row[7]:8.1f} images/s",
                    flush=True,
                )

    lines = [
        "# Data loading: samples per second of each builder",
        "",
        f"Produced by `benchmarks/bench_dataloading.py` on {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"Python {platform.python_version()}, 1 torch thread per process; data: synthetic world ({generated}).",
        f"Train split (training augmentations), batch size {args.batch_size}, {args.samples} samples timed "
        "per row after the first batch "
        "(worker start-up excluded). Images per second counts every decoded image (two per sample for second views and "
        "FashionIQ pairs; the outfit items plus the blank for OCIR).",
        "",
        f"Machine load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs: "
        "other processes shared the CPUs, so absolute figures are pessimistic and the 2-worker rows cannot show "
        "their full gain when the load exceeds the core count.",
        "",
        "| builder | pixels | workers | dataset size | samples timed | seconds | samples/s | images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, size, workers, length, served, elapsed, per_second, images_per_second in rows:
        lines.append(
            f"| {label} | {size} | {workers} | {length} | {served} | {elapsed:.2f} | {per_second:.1f} "
            f"| {images_per_second:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
