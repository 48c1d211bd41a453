"""The ``data`` group of the ``mmf-fashion`` command line.

Cheatsheet::

    mmf-fashion data synth --out data/synthetic                     # --preset demo (make demo's world)
    mmf-fashion data synth --out data/evidence --preset evidence    # big validation sets
    mmf-fashion data synth --out data/noisy --preset evidence --noise 0.2   # flags override the preset
    mmf-fashion data check data/synthetic [--no-images] [--json report.json]
    mmf-fashion data mine-attributes --data-dir data/synthetic            # threshold scaled to the corpus
    mmf-fashion data mine-attributes --data-dir /data/fashion --paper     # FashionViL's rule

mmf_fashion/cli/main.py calls ``add_parser(subparsers)``; every command sets
``func`` (args -> exit code).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

SYNTH_OUTPUTS = ("fashiongen", "fashioniq", "polyvore_outfits", "synth_manifest.json")
PRESET_NAMES = ("demo", "evidence")  # = mmf_fashion.data.synth.PRESETS (not imported: a cheap parser)
SIZE_FLAGS = ("products", "image_size", "fashioniq_pairs", "outfits")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` and its commands to the top-level subparsers."""
    data = subparsers.add_parser(
        "data", help="generate, check and mine data sets", description="Generate, check and mine data sets."
    )
    commands = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    synth = commands.add_parser(
        "synth",
        help="generate the synthetic fashion world",
        description="Generate the synthetic fashion world in the published layouts (docs/synthetic_data.md).",
    )
    synth.add_argument("--out", required=True, help="data directory to write")
    synth.add_argument(
        "--preset",
        choices=sorted(PRESET_NAMES),
        default="demo",
        help="named world size (default demo); the flags below override it",
    )
    synth.add_argument("--products", type=int, default=None, help="FashionGen products (demo 1200, evidence 3400)")
    synth.add_argument("--image-size", type=int, default=None, help="square image side, pixels (both presets: 64)")
    synth.add_argument(
        "--fashioniq-pairs",
        type=int,
        default=None,
        help="FashionIQ pairs per category, split 60/20/20 (demo 400, evidence 1500; with --products: products / 3)",
    )
    synth.add_argument(
        "--outfits",
        type=int,
        default=None,
        help="Polyvore outfits, split 50/10/40 (both presets 1000; with --products: products)",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    synth.add_argument(
        "--noise", type=float, default=0.0, help="fraction of train products given another product's text"
    )
    synth.add_argument("--min-count", type=int, default=5, help="attribute mining: keep words seen at least this often")
    synth.add_argument("--overwrite", action="store_true", help="replace a previously generated world in --out")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)

    check = commands.add_parser(
        "check",
        help="report counts and problems of a data dir",
        description="Read every source present and list every problem; exit code 1 when errors exist.",
    )
    check.add_argument("data_dir", help="the data directory (env.data_dir)")
    check.add_argument(
        "--no-images", action="store_true", help="read image headers only (fast; misses truncated pixel data)"
    )
    check.add_argument(
        "--max-problems", type=int, default=50, help="summary lines to print (one per file, field and kind of problem)"
    )
    check.add_argument("--json", dest="json_path", help="also write the full report here")
    check.add_argument("--strict", action="store_true", help="warnings also fail the check")
    check.set_defaults(func=run_check)

    mine = commands.add_parser(
        "mine-attributes",
        help="mine the PAC attribute vocabulary",
        description="Tag the TRAIN product texts with NLTK, keep frequent "
        "nouns and adjectives, write fashiongen/attributes.json "
        "and every split's attributes_id. A text counts once "
        "per image, as FashionGen's rows.",
    )
    mine.add_argument("--data-dir", required=True, help="the data directory")
    threshold = mine.add_mutually_exclusive_group()
    threshold.add_argument(
        "--min-count",
        type=int,
        default=None,
        help="minimum occurrences (default: the paper's 'more than 100 per "
        "260,480 texts' scaled to the train texts, at least 2)",
    )
    threshold.add_argument(
        "--paper",
        action="store_true",
        help="the paper's rule exactly: more than 100 occurrences (min count "
        "101), nouns and adjectives, no fraction cap, no stop words",
    )
    mine.add_argument(
        "--max-doc-fraction",
        type=float,
        default=None,
        help="drop words found in more than this fraction of texts (default 0.8; not with --paper)",
    )
    mine.set_defaults(func=run_mine_attributes)
    return data


def run_synth(args: argparse.Namespace) -> int:
    from mmf_fashion.data.synth import generate, preset_arguments

    sizes = preset_arguments(args.preset)
    if args.products is not None:  # pairs and outfits follow --products unless given too
        sizes.pop("fashioniq_pairs", None)
        sizes.pop("outfits", None)
    sizes.update({flag: getattr(args, flag) for flag in SIZE_FLAGS if getattr(args, flag) is not None})

    out = Path(args.out)
    existing = [name for name in SYNTH_OUTPUTS if (out / name).exists()]
    if existing and not args.overwrite:
        print(f"error: {out} already holds {', '.join(existing)}; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if existing and not (out / "synth_manifest.json").exists():
        print(
            f"error: {out} holds {', '.join(existing)} but no synth_manifest.json: it does "
            "not look generated, refusing to delete it",
            file=sys.stderr,
        )
        return 2
    for name in existing:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    start = time.perf_counter()
    try:
        root = generate(
            out,
            seed=args.seed,
            noise_fraction=args.noise,
            progress=not args.no_progress,
            attribute_min_count=args.min_count,
            **sizes,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    manifest = json.loads((root / "synth_manifest.json").read_text(encoding="utf-8"))
    counts = manifest["counts"]
    fashiongen = counts["fashiongen"]
    fashioniq_val = "/".join(str(by_split["val"]["pairs"]) for by_split in counts["fashioniq"].values())
    ocir_test = "/".join(
        f"{version} {counts['polyvore_outfits'][version]['test']['ocir']}" for version in ("disjoint", "nondisjoint")
    )
    print(
        f"wrote {root} in {time.perf_counter() - start:.1f}s: "
        + ", ".join(f"{split} {c['products']} products/{c['images']} images" for split, c in fashiongen.items())
        + f"; fashioniq val queries {fashioniq_val}"
        + f"; {manifest['counts']['polyvore_outfits']['items']} polyvore items"
        + f", ocir test questions {ocir_test}"
        + f"; {manifest['counts']['attributes']} attributes"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    from mmf_fashion.data.check import check_data_dir

    report = check_data_dir(args.data_dir, decode_images=not args.no_images)
    print(report.summary(max_problems=args.max_problems))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0


def run_mine_attributes(args: argparse.Namespace) -> int:
    from mmf_fashion.data.attributes import mine_attributes

    if args.paper and args.max_doc_fraction is not None:
        print("error: --paper has no document-fraction cap; drop --max-doc-fraction", file=sys.stderr)
        return 2
    options = {} if args.max_doc_fraction is None else {"max_doc_fraction": args.max_doc_fraction}
    try:
        summary = mine_attributes(args.data_dir, min_count=args.min_count, paper=args.paper, **options)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary['attributes']} attributes (min count {summary['min_count']}, "
        f"{summary['preset']}; {summary['texts']} train texts of {Path(summary['source']).name}) "
        f"written to {Path(args.data_dir) / 'fashiongen' / 'attributes.json'}; attributes_id of "
        f"{summary['products']} products rewritten; tagger: {summary['tagger']}"
    )
    if summary["tagger_fallback"]:
        # the tags (and so the vocabulary) differ from those of NLTK's own tagger
        print(
            f"note: NLTK's averaged_perceptron_tagger data is not installed; tagged with the "
            f"fallback tagger ({summary['tagger']}). For NLTK's tags: "
            "python -m nltk.downloader averaged_perceptron_tagger_eng"
        )
    return 0
