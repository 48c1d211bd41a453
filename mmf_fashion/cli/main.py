"""`mmf-fashion <group> <command>`: data, index, plot, info, new-builder.

Cheatsheet::

    mmf-fashion data synth --out data/synthetic
    mmf-fashion data check data/synthetic
    mmf-fashion data mine-attributes --data-dir data/synthetic
    mmf-fashion index build --checkpoint save/align_itr/align_final.pth --config ... --out gallery.index
    mmf-fashion index search --index gallery.index --text "red striped dress"
    mmf-fashion plot curves save/fashionvil_itr/metrics.jsonl --out curves.png
    mmf-fashion plot embeddings --config projects/align/configs/itr.yaml --model align --dataset fashiongen \
        --checkpoint ... --out tsne.png
    mmf-fashion info
    mmf-fashion new-builder my_catalogue

Each group lives in its own module with an `add_parser(subparsers)`; this
file only wires them, importing nothing heavy until a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

GROUPS = ("data", "index", "plot", "info", "new_builder", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmf-fashion", description="Fashion vision-and-language tools for MMF")
    subparsers = parser.add_subparsers(dest="group", required=True)
    for group in GROUPS:
        module = importlib.import_module(f"mmf_fashion.cli.{group}")
        module.add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.parse_args([args.group, "--help"])
        return 2
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
