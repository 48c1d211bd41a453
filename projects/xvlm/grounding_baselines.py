"""Box baselines for X-VLM grounding on the synthetic region annotations: what a model
that ignores the image (or the phrase too) already scores with grounding_accuracy.

    .venv/bin/python projects/xvlm/grounding_baselines.py                   # val, data/synthetic
    .venv/bin/python projects/xvlm/grounding_baselines.py --split test --data-dir data/synthetic

Baselines, each predicting one box per region and scored by the same
grounding_accuracy metric (IoU >= 0.5) as the model:
- whole_image: (0.5, 0.5, 1, 1) for every phrase;
- mean_box: the mean normalised (cx, cy, w, h) of every training region;
- phrase_mean_box: the mean training box of regions with the same phrase
  (the mean box for a phrase never seen in training): a text-only prior,
  the bar a model must clear to show that it looks at the image;
- last_word_mean_box: the mean training box of regions whose phrase ends
  with the same word ("... wrap dress" -> "dress"; the mean box otherwise):
  a text-only prior that also covers phrases unseen in training.

Boxes are read as the evaluation pipeline sees them: the regions file's pixel
(x, y, w, h), boxes outside the image dropped, at most 5 per image, normalised by
the image size (the evaluation transform of a square image only rescales it).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
from PIL import Image

from mmf_fashion.metrics.grounding import GroundingAccuracy
from mmf_fashion.processors.boxes import box_problem, finish_boxes, pixel_boxes


def last_word(phrase: str) -> str:
    words = phrase.lower().split()
    return words[-1] if words else ""


def load_regions(data_dir: str, split: str, max_regions: int = 5) -> Tuple[torch.Tensor, torch.Tensor, List[List[str]]]:
    """(N, R, 4) normalised boxes, (N, R) valid, phrases per image of fashiongen/regions_<split>.json."""
    root = os.path.join(data_dir, "fashiongen")
    with open(os.path.join(root, f"regions_{split}.json")) as handle:
        records = json.load(handle)
    boxes, valid, phrases = [], [], []
    for record in records:
        with Image.open(os.path.join(root, record["image"])) as image:
            size = (image.height, image.width)
        if size[0] != size[1]:
            raise ValueError(
                f"{record['image']}: the baselines assume square images (the evaluation centre crop "
                "of a non-square image would move boxes)"
            )
        regions = [r for r in record["regions"] if box_problem(r["box"], size) is None]
        normalised, ok, kept = finish_boxes(pixel_boxes([r["box"] for r in regions], size), max_regions, 0.5)
        boxes.append(normalised)
        valid.append(ok)
        phrases.append([regions[i]["phrase"] for i in kept] + [""] * (max_regions - len(kept)))
    return torch.stack(boxes), torch.stack(valid), phrases


def baselines(data_dir: str, split: str) -> Dict[str, Dict[str, float]]:
    train_boxes, train_valid, train_phrases = load_regions(data_dir, "train")
    boxes, valid, phrases = load_regions(data_dir, split)
    mean_box = train_boxes[train_valid].mean(0)
    by_phrase: Dict[str, List[torch.Tensor]] = defaultdict(list)
    for n, row in enumerate(train_phrases):
        for r, phrase in enumerate(row):
            if train_valid[n, r]:
                by_phrase[phrase].append(train_boxes[n, r])
    phrase_mean = {phrase: torch.stack(rows).mean(0) for phrase, rows in by_phrase.items()}
    by_word: Dict[str, List[torch.Tensor]] = defaultdict(list)
    for phrase, rows in by_phrase.items():
        by_word[last_word(phrase)].extend(rows)
    word_mean = {word: torch.stack(rows).mean(0) for word, rows in by_word.items()}
    predictions = {
        "whole_image": torch.tensor([0.5, 0.5, 1.0, 1.0]).expand_as(boxes).clone(),
        "mean_box": mean_box.expand_as(boxes).clone(),
        "phrase_mean_box": torch.stack([torch.stack([phrase_mean.get(p, mean_box) for p in row]) for row in phrases]),
        "last_word_mean_box": torch.stack(
            [torch.stack([word_mean.get(last_word(p), mean_box) for p in row]) for row in phrases]
        ),
    }
    metric = GroundingAccuracy(threshold=0.5, gather=False)
    report = {"boxes": boxes, "box_valid": valid}
    results = {
        name: metric.calculate(report, {"predicted_boxes": predicted}) for name, predicted in predictions.items()
    }
    unseen = sum(1 for n, row in enumerate(phrases) for r, p in enumerate(row) if valid[n, r] and p not in phrase_mean)
    results["phrase_mean_box"]["unseen_phrases"] = float(unseen)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MMF_FASHION_DATA_DIR", "data/synthetic"))
    parser.add_argument("--split", default="val", choices=("val", "test"))
    args = parser.parse_args()
    for name, values in baselines(args.data_dir, args.split).items():
        extra = "".join(f", {k} {v:.0f}" for k, v in values.items() if k not in ("accuracy", "num_boxes"))
        print(f"{args.split} {name}: acc@IoU0.5 {values['accuracy']:.2f}% of {values['num_boxes']:.0f} boxes{extra}")


if __name__ == "__main__":
    main()
