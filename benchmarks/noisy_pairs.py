"""How well a trained two-stream model tells the mismatched training pairs of a noisy world apart.

    .venv/bin/python -m benchmarks.noisy_pairs --run-dir save/learning/evidence_noise20/cots_queue/seed0 \
        --config projects/cots/configs/pretrain.yaml --model cots -- <the run's k=v overrides>

A world generated with ``--noise f`` gives a fraction f of its training
products the caption of another product and lists them in
``synth_manifest.json["noise"]["mismatched"]``. After training, every
training pair (image, caption) is scored by the cosine similarity of the
model's image and text embeddings. A model that memorised the noise scores
the mismatched pairs like the clean ones; one that resisted it (COTS's
momentum filter drops low-similarity pairs from the loss) scores them lower.

Written to ``<run-dir>/noisy_pairs.json`` (percent):
- ``noisy_pairs/auroc``: ROC AUC of "mismatched" from the negated similarity
  (sklearn.metrics.roc_auc_score); 50 = the noise is invisible to the model;
- ``noisy_pairs/precision``: the share of mismatched pairs among the n
  lowest-scored pairs, n = the number of mismatched pairs (R-precision);
  chance = the noise fraction.
The training images go through the training transform, with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

RESULT_FILE = "noisy_pairs.json"


def noisy_pair_figures(similarity: Sequence[float], noisy: Sequence[bool]) -> Dict[str, float]:
    """similarity (N,) of each training pair, noisy (N,) whether it is mismatched -> the two figures."""
    from sklearn.metrics import roc_auc_score

    similarity = np.asarray(similarity, dtype=np.float64)
    noisy = np.asarray(noisy, dtype=bool)
    if similarity.shape != noisy.shape or similarity.ndim != 1:
        raise ValueError(f"similarity {similarity.shape} and noisy {noisy.shape} must be two vectors of one length")
    count = int(noisy.sum())
    if count == 0 or count == noisy.size:
        raise ValueError(f"{count} of {noisy.size} pairs are mismatched: both kinds are needed")
    lowest = np.argsort(similarity, kind="stable")[:count]
    return {
        "noisy_pairs/auroc": 100.0 * float(roc_auc_score(noisy, -similarity)),
        "noisy_pairs/precision": 100.0 * float(noisy[lowest].mean()),
        "noisy_pairs/chance_precision": 100.0 * count / noisy.size,
        "noisy_pairs/pairs": float(noisy.size),
    }


def mismatched_products(data_dir: str) -> set:
    path = os.path.join(data_dir, "synth_manifest.json")
    with open(path, encoding="utf-8") as handle:
        noise = json.load(handle).get("noise") or {}
    mismatched = noise.get("mismatched") or []
    if not mismatched:
        raise ValueError(
            f"{path}: the world has no mismatched pairs (generate it with `mmf-fashion data synth --noise`)"
        )
    return {int(entry["product_id"]) for entry in mismatched}


def score_training_pairs(config_path: str, model: str, dataset: str, overrides: List[str], checkpoint: str):
    """(similarities, product ids) of every training pair under the checkpoint's model."""
    import torch

    from mmf_fashion.runtime import build_model_from_config, build_split_dataset, load_config, split_loader

    config = load_config(config_path, model, dataset, overrides)
    network = build_model_from_config(config, checkpoint=checkpoint)
    torch.manual_seed(0)  # the training transform's crops
    similarities, products = [], []
    with torch.no_grad():
        for batch in split_loader(build_split_dataset(config, dataset, "train"), batch_size=64):
            output = network(batch)
            similarities.append((output["image_embedding"] * output["text_embedding"]).sum(-1).float())
            products.append(batch["product_id"].reshape(-1).long())
    return torch.cat(similarities).numpy(), torch.cat(products).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="a finished run: holds <model>_final.pth")
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="fashiongen")
    parser.add_argument("overrides", nargs="*", help="the run's k=v overrides (env.data_dir names the world)")
    args = parser.parse_args(argv)

    checkpoint = os.path.join(args.run_dir, f"{args.model}_final.pth")
    data_dir = next((o.partition("=")[2] for o in args.overrides if o.startswith("env.data_dir=")), None)
    if data_dir is None:
        parser.error("the overrides must name the world: env.data_dir=<dir>")
    noisy_ids = mismatched_products(data_dir)
    similarity, products = score_training_pairs(args.config, args.model, args.dataset, args.overrides, checkpoint)
    figures = noisy_pair_figures(similarity, [int(p) in noisy_ids for p in products])
    with open(os.path.join(args.run_dir, RESULT_FILE), "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=2, sort_keys=True)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
