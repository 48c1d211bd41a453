"""Training-loop benchmarks (issue 9, Performance), each a ratio measured in one run.

    .venv/bin/python -m benchmarks.bench_training [--quick] [--only a,b,c] [--out-dir benchmarks/results]

a. fashion_trainer's step (MMF adapter: SampleList, loss dict, finite-loss
   guard, AMP/accumulation plumbing, scheduler, logging hooks) against a bare
   forward + backward + AdamW step of the same module (a deep copy) on the
   same batch, same optimizer hyper-parameters (target <= 1.10);
b. our `align` (through the same fashion_trainer step) against transformers'
   AlignModel at the same small config (EfficientNet-B0 widths and depths,
   BERT 2 x 128, same batch of images and token ids): training samples per
   second (target >= 1.0);
c. the trainer's train loader (2 workers) against the rate at which the
   model consumes samples, plus the share of a real training loop spent
   waiting for the next batch: on demo-sized data (600 products, 64 px, as
   `make demo`) and, in the full run, on 256 px source images (the published
   FashionGen size) and with training.persistent_workers=false for contrast.
The trainer step, the bare step and the AlignModel step are timed in
alternating rounds in one process (benchmarks.common.interleaved), so both
sides of a ratio see the same machine load. Runs the align pretraining
config (projects/align/configs/pretrain.yaml, the CPU demo sizes) on a
synthetic fixture; CPU here, CUDA when available.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
from typing import Dict, List, Optional

import torch

from benchmarks.common import (
    RESULTS_DIR,
    Row,
    Section,
    check,
    fmt_seconds,
    interleaved,
    machine_line,
    ratio_stats,
    table,
)

ALIGN_CONFIG = "projects/align/configs/pretrain.yaml"


def build_trainer(
    data_dir: str,
    save_dir: str,
    image_size: int,
    batch_size: int,
    workers: int,
    device: str = "cpu",
    extra: Optional[List[str]] = None,
    config_path: str = ALIGN_CONFIG,
    model: str = "align",
    dataset: str = "fashiongen",
):
    """fashion_trainer built as mmf_run builds it, ready for _forward_backward / _optimizer_step."""
    from mmf.common.registry import registry

    from mmf_fashion.runtime import load_config

    overrides = [
        f"env.data_dir={data_dir}",
        f"env.save_dir={save_dir}",
        f"training.batch_size={batch_size}",
        f"training.num_workers={workers}",
        f"training.device={device}",
        "training.log_interval=1000000",
        "training.checkpoint_interval=1000000",
        "training.evaluation_interval=1000000",
        "training.max_updates=1000000",
        f"dataset_config.{dataset}.processors.image_processor.params.size={image_size}",
        *(extra or []),
    ]
    config = load_config(config_path, model, dataset, overrides)
    trainer = registry.get_trainer_class("fashion_trainer")(config)
    trainer.load()
    trainer.max_updates = 10**9
    trainer._timer = time.time()
    trainer._start_update = 0
    trainer._set_train_mode()
    return trainer


def trainer_step_fn(trainer, batch):
    def step():
        losses = trainer._forward_backward(batch, sync=True)
        trainer._optimizer_step(losses)

    return step


def bare_step_fn(trainer, batch):
    """The same module (a deep copy), the same batch: forward, sum of losses, backward, AdamW."""
    model = copy.deepcopy(trainer.model)
    params = dict(trainer.config.optimizer.get("params", {}) or {})
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(params.get("lr", 1e-4)), weight_decay=float(params.get("weight_decay", 1e-2))
    )

    def step():
        output = model(batch)
        loss = sum(value.mean() for value in output["losses"].values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, model


def hf_align_step_fn(trainer, batch):
    """transformers' AlignModel at our align's small config, fed the same tensors."""
    from transformers import AlignConfig, AlignModel

    align = trainer.config.model_config.align
    text = align.text_encoder
    image_size = int(batch["image"].shape[-1])
    config = AlignConfig(
        text_config=dict(
            vocab_size=30522,
            hidden_size=int(text.hidden_size),
            num_hidden_layers=int(text.num_hidden_layers),
            num_attention_heads=int(text.num_attention_heads),
            intermediate_size=int(text.intermediate_size),
            max_position_embeddings=int(text.get("max_position_embeddings", 512)),
        ),
        # EfficientNet-B0 widths and depths; the image embedding is the last block's 320 channels
        # (no 1x1 head conv, no image projection in transformers' ALIGN), so projection_dim must be 320
        vision_config=dict(image_size=image_size, width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280),
        projection_dim=320,
    )
    model = AlignModel(config).to(trainer.device).train()
    params = dict(trainer.config.optimizer.get("params", {}) or {})
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(params.get("lr", 1e-4)), weight_decay=float(params.get("weight_decay", 1e-2))
    )
    pixels, ids, mask = batch["image"], batch["input_ids"], batch["attention_mask"]

    def step():
        output = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()

    return step, model


def straddles(stats: Dict[str, float], bound: float) -> str:
    """A warning when the interquartile range of the per-round ratios contains the target's bound."""
    if stats["q1"] <= bound <= stats["q3"]:
        return (
            f" The interquartile range contains {bound:g}: on this machine the result is within the noise of "
            "the target, not clearly on either side of it."
        )
    return ""


def count(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def loader_rate(loader, batches: int) -> Dict[str, float]:
    """Samples per second of the loader alone, after its first batch (worker start-up excluded)."""
    iterator = iter(loader)
    next(iterator)
    served = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # a new epoch (workers restart unless training.persistent_workers)
            iterator = iter(loader)
            batch = next(iterator)
        served += len(batch["image"])
    seconds = time.perf_counter() - start
    return {"samples": served, "seconds": seconds, "rate": served / seconds}


def training_loop(trainer, steps: int) -> Dict[str, float]:
    """A real loop (loader -> prepare -> step): time blocked on the loader vs the whole loop."""
    loader = trainer.loaders["train"][0]
    iterator = iter(loader)
    trainer_step_fn(trainer, trainer._prepare(next(iterator)))()  # warm: workers started, first batch used
    waited = 0.0
    epoch_start_wait = 0.0
    epoch_starts = 0
    served = 0
    start = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        try:
            batch = next(iterator)
            waited += time.perf_counter() - before
        except StopIteration:  # a new epoch: its first batch is not prefetched during the last one
            iterator = iter(loader)
            batch = next(iterator)
            epoch_starts += 1
            epoch_start_wait += time.perf_counter() - before
            waited += time.perf_counter() - before
        batch = trainer._prepare(batch)
        served += len(batch["image"])
        trainer_step_fn(trainer, batch)()
    total = time.perf_counter() - start
    return {
        "waited": waited,
        "total": total,
        "samples": served,
        "rate": served / total,
        "epoch_starts": epoch_starts,
        "epoch_start_wait": epoch_start_wait,
    }


def run(
    out_dir: str = RESULTS_DIR,
    quick: bool = False,
    only: str = "abc",
    batch_size: int = 32,
    image_size: int = 64,
    products: int = 600,
    rounds: Optional[int] = None,
    calls: Optional[int] = None,
    device: str = "cpu",
    workers: int = 2,
    large_source: int = 256,
    large_products: int = 240,
) -> List[Section]:
    """Run a, b and/or c; write results/<name>.md for each and return the Sections."""
    started = time.time()
    load = os.getloadavg()[0]
    rounds = rounds or (8 if quick else 60)
    calls = calls or 1
    torch.manual_seed(0)
    from mmf_fashion.data.synth import make_fixture

    work = tempfile.mkdtemp(prefix="mmf_fashion_bench_")
    fixture_start = time.perf_counter()
    data_dir = make_fixture(work, products=products, image_size=image_size, seed=0)
    fixture_seconds = time.perf_counter() - fixture_start
    trainer = build_trainer(str(data_dir), os.path.join(work, "save"), image_size, batch_size, workers, device=device)
    machine = machine_line(trainer.device, load=load)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else None
    batch = trainer._prepare(next(iter(trainer.loaders["train"][0])))
    text_length = int(batch["input_ids"].shape[1])
    setting = (
        f"align pretraining config ({ALIGN_CONFIG}: EfficientNet-B0 image tower, BERT "
        f"{trainer.config.model_config.align.text_encoder.num_hidden_layers} x "
        f"{trainer.config.model_config.align.text_encoder.hidden_size} text tower, contrastive loss), "
        f"batch {batch_size}, {image_size} px, text length {text_length}, synthetic fixture of {products} "
        f"products ({len(trainer.loaders['train'][0].dataset)} train samples, generated in {fixture_seconds:.0f} s)"
    )
    sections: List[Section] = []

    functions = {}
    models = {"trainer": trainer.model}
    if "a" in only or "b" in only or "c" in only:
        functions["trainer"] = trainer_step_fn(trainer, batch)
    if "a" in only:
        functions["bare"], models["bare"] = bare_step_fn(trainer, batch)
    if "b" in only:
        functions["hf"], models["hf"] = hf_align_step_fn(trainer, batch)
    if len(functions) == 1:  # c alone: only the consumption rate is needed
        rounds = min(rounds, 10)
    timing_start = time.perf_counter()
    times = interleaved(functions, rounds=rounds, calls=calls, warmup=2, sync=sync)
    timing_seconds = time.perf_counter() - timing_start
    median = {name: statistics.median(values) for name, values in times.items()}
    method = (
        f"Timing: {rounds} rounds; each round runs {calls} step(s) of each contender in turn "
        f"({', '.join(functions)}; the order turns by one every round), after 2 warm-up steps each; the "
        "ratio is the median of the per-round ratios (IQR = their interquartile range: half the rounds fall "
        f"inside it), the times are the medians of each side. Wall time of the timed rounds: {timing_seconds:.0f} s."
    )

    def per_round_table(names):
        header = ["round"] + [f"{name} step" for name in names] + [f"{names[0]} / {names[1]}"]
        rows = [
            [str(i + 1)]
            + [fmt_seconds(times[name][i]) for name in names]
            + [f"{times[names[0]][i] / times[names[1]][i]:.3f}"]
            for i in range(rounds)
        ]
        return table(header, rows, "r" * len(header))

    if "a" in only:
        stats = ratio_stats(times["trainer"], times["bare"])
        target = "<= 1.10"
        row = Row(
            "a. fashion_trainer step / bare step (time)",
            stats["median"],
            f"{stats['median']:.3f} (IQR {stats['q1']:.3f}-{stats['q3']:.3f})",
            target,
            check(stats["median"], target),
            "results/training_overhead.md",
        )
        md = [
            "## a. Overhead of the MMF training step over a bare step",
            "",
            machine,
            "",
            setting + ".",
            "",
            "Trainer step = `FashionTrainer._forward_backward(batch, sync=True)` + `_optimizer_step(losses)`: "
            "the SampleList model call, the loss dict summed in float32, the finite-loss guard (one `.item()`), "
            "the loss values read back for logging, GradScaler calls (disabled: fp32), AdamW, the LR scheduler "
            "and the after-update hooks. Bare step = the same module deep-copied, `model(batch)`, the sum of its "
            "losses, `zero_grad`, `backward`, `torch.optim.AdamW` with the same lr and weight decay.",
            "",
            method,
            "",
            table(
                ["contender", "median time per step", "samples/s"],
                [
                    ["fashion_trainer step", fmt_seconds(median["trainer"]), f"{batch_size / median['trainer']:.1f}"],
                    ["bare step", fmt_seconds(median["bare"]), f"{batch_size / median['bare']:.1f}"],
                ],
                "lrr",
            ),
            "",
            f"**Ratio trainer / bare: {row.ratio_text}** (target {target}: "
            f"{'pass' if row.passed else 'FAIL'}).{straddles(stats, 1.10)}",
            "",
            "<details><summary>per-round times</summary>",
            "",
            per_round_table(["trainer", "bare"]),
            "",
            "</details>",
        ]
        sections.append(Section("training_overhead", "a. trainer step overhead", [row], "\n".join(md), quick=quick))

    if "b" in only:
        stats = ratio_stats(times["hf"], times["trainer"])  # time ratio hf/ours = samples/s ratio ours/hf
        target = ">= 1.0"
        row = Row(
            "b. align / transformers AlignModel (train samples/s)",
            stats["median"],
            f"{stats['median']:.2f} (IQR {stats['q1']:.2f}-{stats['q3']:.2f})",
            target,
            check(stats["median"], target),
            "results/align_vs_transformers.md",
        )
        rows = [
            [
                "our `align` through fashion_trainer",
                f"{count(models['trainer']):.2f}M",
                fmt_seconds(median["trainer"]),
                f"{batch_size / median['trainer']:.1f}",
            ]
        ]
        if "bare" in median:
            rows.append(
                [
                    "our `align`, bare step (from a)",
                    f"{count(models['bare']):.2f}M",
                    fmt_seconds(median["bare"]),
                    f"{batch_size / median['bare']:.1f}",
                ]
            )
        rows.append(
            [
                "transformers `AlignModel`, bare step",
                f"{count(models['hf']):.2f}M",
                fmt_seconds(median["hf"]),
                f"{batch_size / median['hf']:.1f}",
            ]
        )
        md = [
            "## b. `align` against transformers' AlignModel",
            "",
            machine,
            "",
            setting + ".",
            "",
            "transformers' `AlignModel` built from an `AlignConfig` at the same small size, random weights: "
            "EfficientNet with width and depth coefficients 1.0 (B0) and a BERT of the same size (layers, width, "
            "heads, intermediate size and vocabulary copied from our config), "
            "`return_loss=True` (its contrastive loss, label smoothing 0.1). Differences that remain: "
            "transformers' ALIGN has no 1x1 head conv (its 320-channel last block is the image embedding, "
            "so its projection_dim is 320), ours is torchvision's EfficientNet-B0 (with the 1280-channel head "
            "conv) + a linear projection to 128 and mean pooling of the text tokens; both get the same images "
            "and token ids from the batch above. Both step with AdamW at the same hyper-parameters; ours goes "
            "through the whole fashion_trainer step (so it carries the overhead of a), transformers' is a bare step. "
            f"Memory format: ours as the project config sets it (training.channels_last: "
            f"{str(bool(trainer.training_config.get('channels_last', False))).lower()}), transformers' in its "
            "default (contiguous) format.",
            "",
            method,
            "",
            table(["model", "parameters", "median time per step", "train samples/s"], rows, "lrrr"),
            "",
            f"**Samples/s ours / transformers: {row.ratio_text}** (target {target}: "
            f"{'pass' if row.passed else 'FAIL'}).{straddles(stats, 1.0)}",
            "",
            "<details><summary>per-round times</summary>",
            "",
            per_round_table(["trainer", "hf"]),
            "",
            "</details>",
        ]
        sections.append(
            Section("align_vs_transformers", "b. align vs transformers AlignModel", [row], "\n".join(md), quick=quick)
        )

    if "c" in only:
        for name in [n for n in models if n != "trainer"]:
            del functions[name]
        models = {"trainer": trainer.model}
        batches = 12 if quick else 30
        steps = 6 if quick else 24
        consumption = batch_size / median["trainer"]
        target_rate, target_wait = ">= 1.0", "<= 0.05"
        cases = [(f"demo-sized data ({image_size} px source images)", trainer, fixture_seconds, products, True)]
        if not quick and large_source:
            # the published FashionGen images are 256 px: decoding them is the loader's heavy case
            big_start = time.perf_counter()
            big_dir = make_fixture(
                os.path.join(work, "large"), products=large_products, image_size=large_source, seed=0
            )
            big_seconds = time.perf_counter() - big_start
            big_trainer = build_trainer(
                str(big_dir), os.path.join(work, "save_large"), image_size, batch_size, workers, device=device
            )
            cases.append(
                (
                    f"FashionGen-size data ({large_source} px source images, resized to {image_size})",
                    big_trainer,
                    big_seconds,
                    large_products,
                    True,
                )
            )
        if not quick:
            # not the default config: what restarting the workers at every epoch boundary costs
            restarting = build_trainer(
                str(data_dir),
                os.path.join(work, "save_restarting"),
                image_size,
                batch_size,
                workers,
                device=device,
                extra=["training.persistent_workers=false"],
            )
            cases.append(
                (
                    "demo-sized data, training.persistent_workers=false (not the default)",
                    restarting,
                    fixture_seconds,
                    products,
                    False,
                )
            )
        rows, measured_rows, case_lines = [], [], []
        for label, case_trainer, generated, case_products, in_summary in cases:
            loader = case_trainer.loaders["train"][0]
            alone = loader_rate(loader, batches)
            loop = training_loop(case_trainer, steps)
            ratio = alone["rate"] / consumption
            wait_share = loop["waited"] / loop["total"]
            case_rows = [
                Row(
                    f"c. {label}: loader alone ({workers} workers) / model consumption (samples/s)",
                    ratio,
                    f"{ratio:.2f}",
                    target_rate,
                    check(ratio, target_rate),
                    "results/loader_vs_model.md",
                ),
                Row(
                    f"c. {label}: share of a training loop spent waiting for data",
                    wait_share,
                    f"{wait_share:.3f}",
                    target_wait,
                    check(wait_share, target_wait),
                    "results/loader_vs_model.md",
                ),
            ]
            if in_summary:
                rows += case_rows
            per_epoch = (
                f"{loop['epoch_start_wait'] / loop['epoch_starts']:.2f} s each"
                if loop["epoch_starts"]
                else "none crossed"
            )
            measured_rows += [
                [
                    label,
                    f"loader alone ({workers} workers)",
                    alone["samples"],
                    f"{alone['seconds']:.2f}",
                    f"{alone['rate']:.1f}",
                    f"{ratio:.2f}",
                ],
                [
                    label,
                    "training loop with the loader",
                    loop["samples"],
                    f"{loop['total']:.2f}",
                    f"{loop['rate']:.1f}",
                    f"{loop['rate'] / consumption:.2f}",
                ],
            ]
            case_lines.append(
                f"- {label}: {case_products} products, {len(loader.dataset)} train samples, {len(loader)} batches "
                f"per epoch (generated in {generated:.0f} s); loader / consumption **{ratio:.2f}** "
                f"({'pass' if case_rows[0].passed else 'FAIL'}), blocked on the loader {loop['waited']:.2f} s of "
                f"{loop['total']:.2f} s = **{wait_share:.1%}** of the loop "
                f"({'pass' if case_rows[1].passed else 'FAIL'}), of which {loop['epoch_start_wait']:.2f} s at the "
                f"{loop['epoch_starts']} epoch start(s) ({per_epoch}) and "
                f"{loop['waited'] - loop['epoch_start_wait']:.2f} s "
                f"within epochs; the loop ran at {loop['rate'] / consumption:.2f} x the fixed-batch rate."
            )
        md = [
            "## c. Data loading against the model's consumption rate",
            "",
            machine,
            "",
            setting + ".",
            "",
            f"The trainer's own train loader as the config builds it (MMF dataset + BatchCollator, {workers} workers, "
            f"persistent_workers={bool(trainer.training_config.get('persistent_workers', True))}, training "
            "augmentations: random resized crop, flip; the epoch boundaries, where the workers restart, are part "
            f"of every measurement). Loader alone: samples per second over {batches} batches after the first (the "
            "first start-up excluded), nothing else running in this process. Model consumption: batch size / the "
            "median fashion_trainer step of the interleaved rounds (a fixed batch, no loading). Training loop: "
            f"{steps} real steps, loader -> step, counting the time the main process is blocked in `next(loader)`.",
            "",
            table(
                ["data", "measurement", "samples", "seconds", "samples/s", "/ consumption"],
                [
                    [
                        "-",
                        "model consumption (trainer step on a fixed batch)",
                        batch_size,
                        f"{median['trainer']:.3f}",
                        f"{consumption:.1f}",
                        "1.00",
                    ]
                ]
                + measured_rows,
                "llrrrr",
            ),
            "",
            *case_lines,
            "",
            "With persistent_workers=false (MMF's behaviour; ours defaults to true since the loader section showed "
            "this) the workers are started again at every epoch and the "
            "first batch of an epoch is not prefetched while the previous epoch trains: the main process waits for "
            "it. That cost is per epoch, so its share of the loop depends on the batches per epoch: visible on these "
            f"small synthetic sets ({' and '.join(sorted({str(len(c[1].loaders['train'][0])) for c in cases}))} "
            "batches per epoch), negligible on the real FashionGen (tens of thousands of training products, "
            "thousands of batches per epoch).",
            "",
            f"Targets: loader / consumption {target_rate} and time blocked on the loader {target_wait} of the loop. "
            f"On {os.cpu_count()} CPUs the {workers} workers share the cores with the model's "
            f"{torch.get_num_threads()} threads, so loading costs some compute even when the model never waits "
            "(the loop's rate / consumption column).",
        ]
        sections.append(Section("loader_vs_model", "c. loader vs model consumption", rows, "\n".join(md), quick=quick))

    shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - started
    for section in sections:
        section.seconds = elapsed / len(sections)
        section.markdown += f"\n\n(a, b and c measured together in {elapsed:.0f} s of wall time.)\n"
        section.write(out_dir)
    return sections


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="a,b,c")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None, help="steps per contender per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    only = "".join(part.strip() for part in args.only.split(","))
    for section in run(
        args.out_dir,
        args.quick,
        only,
        args.batch_size,
        args.image_size,
        args.products,
        args.rounds,
        args.calls,
        args.device,
    ):
        print(section.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
