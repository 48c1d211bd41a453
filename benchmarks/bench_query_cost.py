"""What one retrieval query costs: single-stream pair scoring (FashionBERT) against
two-stream dot products over precomputed gallery embeddings.

Cheatsheet::

    .venv/bin/python benchmarks/bench_query_cost.py                 # writes benchmarks/results/query_cost.md
    .venv/bin/python benchmarks/bench_query_cost.py --threads 1 --max-seconds 20 --no-paper
    .venv/bin/python -m benchmarks.run_all --only e                 # as section e of RESULTS.md

A query is one text searched against a gallery of G product images
(text -> image; image -> text costs the same with the roles swapped):
- single stream, patches on the fly: every gallery image through the patch
  CNN, then every (query, image) pair through the whole BERT;
- single stream, cached patches: the gallery's patch features precomputed
  (FashionBERT's patch cache), so only the BERT runs per pair -- the least a
  single-stream model can spend per candidate;
- two stream: the query through the text tower once, then G dot products
  with the gallery embeddings (precomputed once, offline) and a top-10.
Every measured pair goes through the model in batches of --pair-batch pairs.
When a measurement would take longer than --max-seconds, the per-pair time
of the largest measured size is multiplied by G (cost is linear in G) and
the table marks the figure as extrapolated.
Weights are random: the cost does not depend on them.

Time is the CPU time of this process (time.process_time), not wall time:
the figures stay meaningful on a shared machine whose other jobs would
inflate wall time. With --threads 1 (default) it equals the wall time of
one idle core; more threads divide the wall time by at most their number.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.common import fmt_seconds as fmt  # noqa: E402
from mmf_fashion.modules.encoders import build_image_encoder, build_text_encoder  # noqa: E402
from mmf_fashion.modules.fashionbert import FashionBert, FashionBertOptions  # noqa: E402

DEMO_CONFIG = os.path.join(REPO, "projects", "fashionbert", "configs", "pretrain.yaml")
PAPER = {
    "image_encoder": "resnet50",
    "grid_size": 8,
    "image_size": 224,
    "text_length": 75,
    "text_encoder": {
        "name": "tiny",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}


def demo_setting() -> Dict:
    """The CPU demo sizes of projects/fashionbert/configs/pretrain.yaml."""
    config = OmegaConf.to_container(OmegaConf.load(DEMO_CONFIG).model_config.fashionbert, resolve=True)
    image = config["image_encoder"]
    grid, patch = int(config["grid_size"]), int(config["patch_size"])
    return {
        "image_encoder": image["name"] if isinstance(image, dict) else image,
        "grid_size": grid,
        "image_size": grid * patch,
        "text_length": 32,
        "text_encoder": dict(config["text_encoder"]),
    }


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median CPU time (s) of up to `repeats` calls after one warm-up call;
    a call that takes more than 2 s is measured once (its own warm-up)."""
    start = time.process_time()
    function()
    first = time.process_time() - start
    if first > 2.0:
        return first
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times)


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Setting:
    """One model size: a FashionBERT and a two-stream pair of towers of the same width."""

    def __init__(self, spec: Dict):
        self.spec = spec
        options = FashionBertOptions(
            image_encoder=spec["image_encoder"],
            grid_size=spec["grid_size"],
            text_encoder=spec["text_encoder"],
            heads=("alignment",),
            tasks=("alignment",),
        )
        self.fashionbert = FashionBert(options).eval()
        self.width = self.fashionbert.text_encoder.config.hidden_size
        # two-stream towers of the same width: the same CNN pooled, the same BERT's [CLS]
        self.image_tower = build_image_encoder(spec["image_encoder"]).eval()
        self.image_projection = torch.nn.Linear(self.image_tower.out_channels, self.width)
        self.text_tower = build_text_encoder({**spec["text_encoder"], "add_pooling_layer": False}).eval()
        self.text_projection = torch.nn.Linear(self.width, self.width)
        length = spec["text_length"]
        self.query_ids = torch.randint(1000, 20000, (1, length))
        self.query_mask = torch.ones(1, length, dtype=torch.long)
        size = spec["image_size"]
        self.image = torch.randn(1, 3, size, size)

    def describe(self) -> str:
        text = self.spec["text_encoder"]
        return (
            f"{self.spec['image_encoder']} patches, {self.spec['grid_size']}x{self.spec['grid_size']} grid on "
            f"{self.spec['image_size']} px images, BERT {text['num_hidden_layers']} layers x "
            f"{text['hidden_size']} wide, text length {self.spec['text_length']}, "
            f"sequence {self.spec['text_length'] + self.spec['grid_size'] ** 2} tokens"
        )

    # -- single stream: score `pairs` (query, image) pairs in batches
    def single_stream(self, pairs: int, pair_batch: int, cached: bool) -> Callable[[], None]:
        net = self.fashionbert
        batch = min(pairs, pair_batch)
        images = self.image.expand(batch, -1, -1, -1).contiguous()
        with torch.no_grad():
            features = net.encode_patches(images)
        ids, mask = self.query_ids.expand(batch, -1), self.query_mask.expand(batch, -1)

        @torch.no_grad()
        def run():
            done = 0
            while done < pairs:
                count = min(batch, pairs - done)
                patches = features[:count] if cached else net.encode_patches(images[:count])
                logits = net.alignment_logits(patches, ids[:count], mask[:count])
                done += count
            return logits

        return run

    # -- two stream: one text forward + G dot products + top-10
    def two_stream(self, gallery_size: int) -> Callable[[], None]:
        gallery = torch.nn.functional.normalize(torch.randn(gallery_size, self.width), dim=-1)

        @torch.no_grad()
        def run():
            hidden = self.text_tower(input_ids=self.query_ids, attention_mask=self.query_mask).last_hidden_state
            query = torch.nn.functional.normalize(self.text_projection(hidden[:, 0]), dim=-1)
            scores = gallery @ query.t()
            return scores.flatten().topk(min(10, gallery_size))

        return run

    def gallery_image_cost(self, batch: int = 32) -> float:
        """Seconds per gallery image for the two-stream image tower (offline, once per image)."""
        images = self.image.expand(batch, -1, -1, -1).contiguous()

        @torch.no_grad()
        def run():
            return self.image_projection(self.image_tower(images).mean(dim=(2, 3)))

        return timed(run, 2) / batch


def measure_single(setting: Setting, galleries: List[int], cached: bool, args) -> Dict[int, Tuple[float, bool]]:
    """{G: (seconds per query, extrapolated?)}, measuring upward until --max-seconds."""
    results: Dict[int, Tuple[float, bool]] = {}
    per_pair = None
    for size in sorted(galleries):
        estimate = per_pair * size if per_pair is not None else 0.0
        if per_pair is not None and estimate > args.max_seconds:
            results[size] = (estimate, True)
            continue
        progress(f"single stream, {'cached' if cached else 'on the fly'}, G={size}")
        seconds = timed(setting.single_stream(size, args.pair_batch, cached), 3)
        per_pair = seconds / size
        results[size] = (seconds, False)
    return results


def run_setting(
    name: str, setting: Setting, galleries: List[int], args, probe_pairs: int = 0, record: Dict = None
) -> List[str]:
    """probe_pairs > 0: measure that many pairs only and extrapolate every gallery size.
    record: a dict that receives {"on_the_fly", "cached", "two"}: {G: seconds per query}."""
    if probe_pairs:
        on_the_fly = measure_single(setting, [probe_pairs], cached=False, args=args)
        cached = measure_single(setting, [probe_pairs], cached=True, args=args)
        for table in (on_the_fly, cached):
            per_pair = table[probe_pairs][0] / probe_pairs
            for size in galleries:
                table[size] = (per_pair * size, True)
    else:
        on_the_fly = measure_single(setting, galleries, cached=False, args=args)
        cached = measure_single(setting, galleries, cached=True, args=args)
    progress(f"two stream, G={galleries}")
    two = {size: timed(setting.two_stream(size), 10) for size in galleries}
    if record is not None:
        record.update(
            {
                "on_the_fly": {g: v[0] for g, v in on_the_fly.items()},
                "cached": {g: v[0] for g, v in cached.items()},
                "two": two,
                "extrapolated": {g: cached[g][1] for g in galleries},
            }
        )
    lines = [
        f"### {name}",
        "",
        setting.describe() + ".",
        "",
        "| gallery G | single stream, patches on the fly | single stream, cached patches | "
        "two stream (dot products) | cached single / two stream |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in galleries:
        fly, fly_x = on_the_fly[size]
        cache, cache_x = cached[size]
        mark = lambda extrapolated: " (extrapolated)" if extrapolated else ""  # noqa: E731
        lines.append(
            f"| {size:,} | {fmt(fly)}{mark(fly_x)} | {fmt(cache)}{mark(cache_x)} | {fmt(two[size])} | "
            f"{cache / two[size]:,.0f}x |"
        )
    per_pair = cached[galleries[0]][0] / galleries[0]
    probe = f" (measured on {probe_pairs} pairs)" if probe_pairs else ""
    lines += [
        "",
        f"- single stream per pair{probe}, cached patches: {fmt(per_pair)}; "
        f"patches on the fly: {fmt(on_the_fly[galleries[0]][0] / galleries[0])}",
        f"- two stream, offline gallery cost: {fmt(setting.gallery_image_cost())} per image "
        "(once per image, shared by all queries)",
        "",
    ]
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--galleries", type=int, nargs="+", default=[101, 1000, 10000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pair-batch", type=int, default=256)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="longest single measurement")
    parser.add_argument("--paper-pairs", type=int, default=8, help="pairs measured at paper sizes")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper-size setting")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "query_cost.md"))
    return parser


def measure_report(
    args, heading: str = "# What one query costs: single stream (FashionBERT) vs two stream", machine: str = None
) -> Tuple[List[str], Dict[str, Dict]]:
    """The markdown lines and {"demo": record, "paper": record} (see run_setting)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    galleries = sorted(args.galleries)
    started = time.time()
    lines = [heading, ""]
    if machine:
        lines += [machine, ""]
    lines += [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
        f"jobs (load average {os.getloadavg()[0]:.1f} at start), {args.threads} torch thread(s), "
        f"torch {torch.__version__}, no GPU. Produced by `benchmarks/bench_query_cost.py` "
        f"(pair batch {args.pair_batch}, longest measurement {args.max_seconds:.0f} s). "
        "Times are CPU seconds of the benchmark process (= wall time of one idle core), so the "
        "load of other jobs does not inflate them.",
        "",
        "A query is one text ranked against G gallery images. Single stream = every (query, image) pair "
        "through FashionBERT's BERT over [text ; patches], ranked by the alignment logit. Two stream = "
        "one text-tower forward, then G dot products with precomputed, L2-normalised gallery embeddings "
        "of the same width, and a top-10. Times are medians per query; figures marked "
        "extrapolated are the measured per-pair time of a smaller G times G (the cost is linear in G).",
        "",
    ]
    records: Dict[str, Dict] = {"demo": {}}
    progress("building the CPU demo setting")
    demo = Setting(demo_setting())
    lines += run_setting(
        "CPU demo sizes (projects/fashionbert/configs/pretrain.yaml)", demo, galleries, args, record=records["demo"]
    )
    if not args.no_paper:
        progress("building the paper-size setting")
        paper = Setting(PAPER)
        records["paper"] = {}
        lines += run_setting(
            f"Paper sizes (BERT-base, ResNet-50, 8x8 grid at 224 px; single stream measured "
            f"on {args.paper_pairs} pairs, every gallery size extrapolated)",
            paper,
            galleries,
            args,
            probe_pairs=args.paper_pairs,
            record=records["paper"],
        )
    lines += [
        "### Reading",
        "",
        "- The single-stream cost grows linearly with the gallery and is paid at query time: nothing about "
        "a (query, candidate) pair can be precomputed except the candidate's patch features.",
        "- The two-stream cost is one text forward plus a matrix-vector product: almost flat in G here "
        "(the text forward dominates up to 10,000 items).",
        "- This is why FashionBERT is evaluated with the 100-negative protocol (101 pairs per query), and "
        "why two-stage retrieval shortlists with a two-stream model and re-ranks only the top k with "
        "the single-stream model (cost of k pairs, e.g. k = 16 -> about 16/101 of the first row).",
        "",
        f"(benchmark wall time {time.time() - started:.0f} s)",
        "",
    ]
    return lines, records


def run(out_dir: str = None, quick: bool = False, summary_gallery: int = 1000):
    """Benchmark e for benchmarks.run_all: FashionBERT (cached patches) / two-stream time per query."""
    from benchmarks.common import RESULTS_DIR, Row, Section, check, machine_line

    started = time.time()
    args = build_parser().parse_args([])
    if quick:
        args.galleries, args.no_paper, args.max_seconds = [101, summary_gallery], True, 5.0
    machine = machine_line("cpu", threads=args.threads)
    lines, records = measure_report(
        args, heading="## e. Per-query cost: two-stream models vs FashionBERT scoring", machine=machine
    )
    target = ">= 1.0"
    rows, labels = [], []
    for key, label in (("demo", "CPU demo sizes"), ("paper", "paper sizes")):
        record = records.get(key)
        if not record:
            continue
        labels.append(label)
        ratio = record["cached"][summary_gallery] / record["two"][summary_gallery]
        note = ", single stream extrapolated" if record["extrapolated"][summary_gallery] else ""
        rows.append(
            Row(
                f"e. per query, G={summary_gallery:,}, {label}: FashionBERT (cached patches) / two stream (time{note})",
                ratio,
                f"{ratio:,.0f}x",
                target,
                check(ratio, target),
                "results/query_cost.md",
            )
        )
    summary = "; ".join(f"{label}: {row.ratio_text}" for label, row in zip(labels, rows))
    lines += [
        f"**FashionBERT scoring (cached patches) / two stream, time per query at G={summary_gallery:,} "
        f"({summary}).** Target "
        f"{target} (ours; the issue gives none): a two-stream query is cheaper than single-stream "
        "scoring of the same gallery, the offline gallery embedding left out (it is paid once per image, "
        "see the bullet under each table).",
        "",
    ]
    section = Section(
        "query_cost", "e. per-query cost", rows, "\n".join(lines), seconds=time.time() - started, quick=quick
    )
    section.write(out_dir or RESULTS_DIR)
    return section


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    lines, _ = measure_report(args)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
