"""Chance levels of every metric on a generated world (written into synth_manifest.json).

Cheatsheet::

    recall_at_k_chance(k=10, gallery=80)                   # 0.125
    any_hit_chance(k=10, gallery=300, positives=[2, 3])    # text->image with several views
    chance = chance_levels(split_items, triplet_counts, outfit_world, regions_by_split)
    ocir_chance_from_files("data/synthetic/polyvore_outfits", "nondisjoint")   # the metric's way
    demo_chance("data/synthetic")       # the main metric of each `make demo` task, percent

A random ranking puts the positive at a uniformly random rank, so R@k = k / G
for one positive among G candidates; with v positives (the views of a product)
R@k = 1 - C(G - v, k) / C(G, k).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from .outfits import OutfitWorld, semantic_category
from .world import Item

RETRIEVAL_KS = (1, 5, 10)
FASHIONIQ_KS = (10, 50)
OCIR_KS = (10, 30, 50)
KALEIDO_CANDIDATES = 101


def recall_at_k_chance(k: int, gallery: int) -> float:
    return min(1.0, k / gallery) if gallery > 0 else 0.0


def any_hit_chance(k: int, gallery: int, positives: Sequence[int]) -> float:
    """Mean over queries of P(at least one of its v positives is in a random top k)."""
    if gallery <= 0 or not positives:
        return 0.0
    total = 0.0
    for v in positives:
        miss = 1.0
        for i in range(v):
            miss *= max(0.0, (gallery - k - i) / (gallery - i))
        total += 1.0 - miss
    return total / len(positives)


def _rounded(values: Dict[str, float]) -> Dict[str, float]:
    return {key: round(value, 6) for key, value in values.items()}


def _retrieval_chance(items: List[Item]) -> Dict[str, Dict[str, float]]:
    products = len(items)
    images = sum(len(item.views) for item in items)
    views = [len(item.views) for item in items]
    general = {}
    for k in RETRIEVAL_KS:
        general[f"i2t_r@{k}"] = recall_at_k_chance(k, products)
        general[f"t2i_r@{k}"] = any_hit_chance(k, images, views)
    general["avg"] = sum(general.values()) / len(general)
    kaleido = {}
    for k in RETRIEVAL_KS:
        kaleido[f"i2t_r@{k}"] = kaleido[f"t2i_r@{k}"] = recall_at_k_chance(k, KALEIDO_CANDIDATES)
    kaleido["avg"] = sum(kaleido.values()) / len(kaleido)
    return {"r@k_general": _rounded(general), "r@k_kaleido": _rounded(kaleido)}


def _classification_chance(items: List[Item], num_classes: int) -> Dict[str, float]:
    counts = Counter(item.subcategory.name for item in items)
    return _rounded(
        {
            "accuracy_uniform": 1.0 / num_classes,
            "accuracy_majority": max(counts.values()) / len(items) if items else 0.0,
            "macro_f1_uniform": 1.0 / num_classes,
        }
    )


def _grounding_chance(regions: List[Dict], image_size: int) -> Dict[str, float]:
    """How often predicting the whole image already has IoU >= 0.5 with the box."""
    if not regions:
        return {"whole_image_box_acc@0.5": 0.0}
    hits = 0
    total = 0
    area = float(image_size * image_size)
    for record in regions:
        for region in record["regions"]:
            _, _, w, h = region["box"]
            hits += (w * h) / area >= 0.5  # the box lies inside the image: IoU = its area share
            total += 1
    return _rounded({"whole_image_box_acc@0.5": hits / max(1, total)})


def ocir_chance_from_files(
    polyvore_root: Union[str, Path], version: str, split: str = "test", ks: Sequence[int] = OCIR_KS
) -> Dict[str, float]:
    """Chance of r@k_ocir exactly as the metric averages: the gallery of a category is every
    item of that category in the split's question file (questions and blanks), and the
    recalls are averaged over the categories of the blanks (macro)."""
    root = Path(polyvore_root)
    questions = json.loads((root / f"ocir_{version}_{split}.json").read_text(encoding="utf-8"))
    metadata = json.loads((root / "polyvore_item_metadata.json").read_text(encoding="utf-8"))
    category = {item_id: str(meta["semantic_category"]) for item_id, meta in metadata.items()}
    items = {str(i) for q in questions for i in [*q["question"], q["blank"]]}
    gallery = Counter(category[i] for i in items)
    blank_categories = sorted({category[str(q["blank"])] for q in questions})
    if not blank_categories:
        return {f"r@{k}": 0.0 for k in ks}
    return _rounded(
        {f"r@{k}": sum(recall_at_k_chance(k, gallery[c]) for c in blank_categories) / len(blank_categories) for k in ks}
    )


def demo_chance(data_dir: Union[str, Path], ocir_version: str = "nondisjoint") -> Dict[str, float]:
    """Chance of each `make demo` task's main validation metric, in percent as metrics.json:
    ITR r@k_general avg, TGIR r@k_fashioniq r@10 (the split's gallery, reference kept),
    SCR accuracy (uniform over the world's subcategories), OCIR r@k_ocir r@10 (validation
    uses the test questions)."""
    root = Path(data_dir)
    manifest = json.loads((root / "synth_manifest.json").read_text(encoding="utf-8"))
    chance = manifest["chance"]
    ocir = ocir_chance_from_files(root / "polyvore_outfits", ocir_version)
    return {
        "itr": 100.0 * chance["fashiongen"]["val"]["r@k_general"]["avg"],
        "tgir": 100.0 * chance["fashioniq"]["val"]["mean"]["r@10"],
        "scr": 100.0 * chance["fashiongen"]["val"]["scr"]["accuracy_uniform"],
        "ocir": 100.0 * ocir["r@10"],
    }


def chance_levels(
    split_items: Dict[str, List[Item]],
    num_subcategories: int,
    fashioniq_counts: Dict,
    outfits: OutfitWorld,
    regions_by_split: Dict[str, List[Dict]],
    image_size: int,
    polyvore_root: Optional[Path] = None,
) -> Dict:
    chance: Dict = {"fashiongen": {}, "fashioniq": {}, "polyvore_ocir": {}}
    for split in ("val", "test"):
        items = split_items[split]
        entry = _retrieval_chance(items)
        entry["scr"] = _classification_chance(items, num_subcategories)
        entry["grounding"] = _grounding_chance(regions_by_split[split], image_size)
        chance["fashiongen"][split] = entry
    for split in ("val", "test"):
        per_category = {}
        for category, by_split in fashioniq_counts.items():
            gallery = by_split[split]["gallery"]
            unique_targets = by_split[split]["unique_targets"]
            per_category[category] = _rounded(
                {
                    **{f"r@{k}": recall_at_k_chance(k, gallery) for k in FASHIONIQ_KS},
                    **{f"r@{k}_unique_targets": recall_at_k_chance(k, unique_targets) for k in FASHIONIQ_KS},
                }
            )
        mean = {
            key: sum(c[key] for c in per_category.values()) / len(per_category)
            for key in next(iter(per_category.values()))
        }
        chance["fashioniq"][split] = {**per_category, "mean": _rounded(mean)}
    for version, split_of in (
        ("disjoint", {o.set_id: o.split for o in outfits.outfits}),
        ("nondisjoint", outfits.nondisjoint_split),
    ):
        test_items = {item.item_id: item for o in outfits.outfits if split_of[o.set_id] == "test" for item in o.items}
        gallery = Counter(semantic_category(item) for item in test_items.values())
        if polyvore_root is not None:  # exact: averaged over the categories of the blanks
            ocir = ocir_chance_from_files(polyvore_root, version)
        else:
            ocir = {f"r@{k}": sum(recall_at_k_chance(k, g) for g in gallery.values()) / len(gallery) for k in OCIR_KS}
        chance["polyvore_ocir"][version] = {
            "r@k_ocir": _rounded(ocir),
            "gallery_per_category": dict(sorted(gallery.items())),
            "fill_in_blank_accuracy": 0.25,
            "compatibility_auc": 0.5,
        }
    return chance
