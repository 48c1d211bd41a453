"""Generate the whole synthetic world into a data directory.

Cheatsheet::

    from mmf_fashion.data.synth import generate, make_fixture, preset_arguments
    generate("data/synthetic", **preset_arguments("demo"))   # make demo's world (evidence: bigger)
    generate("data/synthetic", products=600, image_size=64, seed=0)   # 600 products, 200 pairs, 600 outfits
    generate(out, products=200, noise_fraction=0.2)      # 20% of TRAIN pairs mismatched
    data_dir = make_fixture(tmp_path)                    # 40 products, 32 px, ~1 s

Same arguments -> byte-identical JSON files and identical pixel arrays. The
layout is docs/ARCHITECTURE.md "The data directory"; what the world contains
and the chance level of every metric are in docs/synthetic_data.md and in
<out>/synth_manifest.json.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from tqdm import tqdm

from .chance import chance_levels
from .fashioniq import asin, build_triplets, split_counts
from .outfits import build_outfits
from .render import render_view
from .vocab import (
    CATEGORIES,
    PALETTES,
    SLOT_VALUES,
    STYLES,
    SUBCATEGORIES,
    SUBCATEGORY_ID,
    VIEWS,
)
from .world import Item, sample_item
from .writers import (
    FashionGenH5,
    ImageRow,
    fashiongen_entry,
    fashiongen_image_path,
    fashioniq_image_path,
    polyvore_image_path,
    save_image,
    write_fashioniq,
    write_json,
    write_polyvore,
)

GENERATOR_VERSION = "1.1.0"
PRODUCT_SPLITS = ("train", "val", "test")
PRODUCT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
HDF5_FILES = {"train": "fashiongen_256_256_train.h5", "val": "fashiongen_256_256_validation.h5"}
# Separate random streams so that each part of the world can change alone.
STREAM_FASHIONGEN, STREAM_FASHIONIQ, STREAM_POLYVORE = 1, 2, 3
FIRST_PRODUCT_ID, FIRST_FASHIONIQ_ID, FIRST_POLYVORE_ID = 1000, 5_000_000, 100_000_000
MIN_PRODUCTS = 10
MIN_IMAGE_SIZE = 16

# Named worlds (`mmf-fashion data synth --preset NAME`); explicit arguments override them.
# demo: what `make demo` trains on. evidence: big enough validation sets for statistical
# claims (FashionGen val >= 500 products, FashionIQ val >= 300 queries per category,
# OCIR >= 300 test questions) and still a few minutes of CPU at 64 px.
PRESETS: Dict[str, Dict[str, int]] = {
    "demo": {"products": 1200, "image_size": 64, "fashioniq_pairs": 400, "outfits": 1000},
    "evidence": {"products": 3400, "image_size": 64, "fashioniq_pairs": 1500, "outfits": 1000},
}

PathLike = Union[str, Path]


def _sample_views(rng: np.random.Generator) -> List[str]:
    """1 to 4 views: always the front, then others in the fixed VIEWS order."""
    count = int(rng.integers(1, len(VIEWS) + 1))
    others = sorted(rng.choice(len(VIEWS) - 1, size=count - 1, replace=False).tolist())
    return ["front"] + [VIEWS[1 + i] for i in others]


def _split_products(rng: np.random.Generator, items: List[Item]) -> Dict[str, List[Item]]:
    order = rng.permutation(len(items))
    splits, start = {}, 0
    counts = split_counts(len(items), PRODUCT_SPLIT_FRACTIONS)
    for split, count in zip(PRODUCT_SPLITS, counts):
        chosen = [items[int(i)] for i in order[start : start + count]]
        splits[split] = sorted(chosen, key=lambda item: item.item_id)
        start += count
    return splits


def _mismatch_texts(rng: np.random.Generator, items: List[Item], fraction: float) -> List[Dict]:
    """Give ``fraction`` of the items the title+description of another item (label noise)."""
    count = int(round(fraction * len(items)))
    if count == 0 or len(items) < 2:
        return []
    chosen = sorted(rng.choice(len(items), size=count, replace=False).tolist())
    if count == 1:
        donors = [int(rng.choice([i for i in range(len(items)) if i != chosen[0]]))]
    else:  # a cyclic shift: every chosen item takes the next one's text
        donors = chosen[1:] + chosen[:1]
    texts = [(items[d].title, items[d].description) for d in donors]
    mismatched = []
    for index, donor, (title, description) in zip(chosen, donors, texts):
        items[index].title, items[index].description = title, description
        mismatched.append({"product_id": items[index].item_id, "text_from": items[donor].item_id})
    return mismatched


def preset_arguments(name: str) -> Dict[str, int]:
    """The ``generate`` arguments of a named world (a copy)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def _check_arguments(products: int, image_size: int, noise_fraction: float) -> None:
    if products < MIN_PRODUCTS:
        raise ValueError(f"products={products}: need at least {MIN_PRODUCTS} so that train/val/test all get products")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size}: need at least {MIN_IMAGE_SIZE} pixels")
    if not 0.0 <= noise_fraction < 1.0:
        raise ValueError(f"noise_fraction={noise_fraction}: must be in [0, 1)")


def generate(
    out_dir: PathLike,
    products: int = 600,
    image_size: int = 64,
    seed: int = 0,
    noise_fraction: float = 0.0,
    progress: bool = True,
    attribute_min_count: int = 5,
    fashioniq_pairs: Optional[int] = None,
    outfits: Optional[int] = None,
) -> Path:
    """Write the synthetic world under ``out_dir`` and return it as a Path.

    ``fashioniq_pairs`` (per FashionIQ category) defaults to products // 3 and ``outfits``
    (Polyvore) to products.
    """
    _check_arguments(products, image_size, noise_fraction)
    fashioniq_pairs = max(6, products // 3 if fashioniq_pairs is None else int(fashioniq_pairs))
    outfit_count = max(10, products if outfits is None else int(outfits))
    from mmf_fashion.data.attributes import mine_attributes

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    items = [sample_item(rng, FIRST_PRODUCT_ID + i) for i in range(products)]
    for item in items:
        item.views = _sample_views(rng)
    split_items = _split_products(rng, items)
    mismatched = _mismatch_texts(rng, split_items["train"], noise_fraction)
    triplets = build_triplets(np.random.default_rng([seed, STREAM_FASHIONIQ]), fashioniq_pairs, FIRST_FASHIONIQ_ID)
    outfits = build_outfits(np.random.default_rng([seed, STREAM_POLYVORE]), outfit_count, FIRST_POLYVORE_ID)

    fiq_items = {
        asin(item): item
        for by_split in triplets.values()
        for split in by_split.values()
        for t in split
        for item in (t.reference, t.target, *t.distractors)
    }
    total_images = sum(len(i.views) for i in items) + len(fiq_items) + len(outfits.items)
    bar = tqdm(total=total_images, desc="synth images", unit="img", disable=not progress)

    fashiongen = root / "fashiongen"
    regions_by_split = {}
    for split in PRODUCT_SPLITS:
        rows = [ImageRow(item, v) for item in split_items[split] for v in range(len(item.views))]
        h5 = FashionGenH5(fashiongen / HDF5_FILES[split], rows, image_size) if split in HDF5_FILES else None
        regions = []
        try:
            for row_index, row in enumerate(rows):
                pixels, boxes = render_view(row.item, row.pose, image_size, seed, STREAM_FASHIONGEN)
                image_path = fashiongen_image_path(split, row.item, row.view_index)
                save_image(fashiongen / image_path, pixels)
                if h5 is not None:
                    h5.put_image(row_index, pixels)
                regions.append(
                    {"image": image_path, "product_id": row.item.item_id, "pose": row.pose, "regions": boxes}
                )
                bar.update(1)
        finally:
            if h5 is not None:
                h5.close()
        regions_by_split[split] = regions
        write_json(fashiongen / f"regions_{split}.json", regions)
        write_json(fashiongen / f"{split}_info.json", [fashiongen_entry(item, split) for item in split_items[split]])

    fashioniq = root / "fashioniq"
    for item in fiq_items.values():
        pixels, _ = render_view(item, "front", image_size, seed, STREAM_FASHIONIQ)
        save_image(fashioniq / fashioniq_image_path(item), pixels)
        bar.update(1)
    fashioniq_counts = write_fashioniq(fashioniq, triplets)

    polyvore = root / "polyvore_outfits"
    for item in outfits.items:
        pixels, _ = render_view(item, "front", image_size, seed, STREAM_POLYVORE)
        save_image(polyvore / polyvore_image_path(item), pixels)
        bar.update(1)
    bar.close()
    polyvore_counts = write_polyvore(polyvore, outfits, np.random.default_rng([seed, 4]))

    mining = mine_attributes(root, min_count=attribute_min_count)

    fashiongen_counts = {
        split: {
            "products": len(split_items[split]),
            "images": sum(len(i.views) for i in split_items[split]),
            "regions": sum(len(r["regions"]) for r in regions_by_split[split]),
        }
        for split in PRODUCT_SPLITS
    }
    manifest = {
        "generator": "mmf_fashion.data.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "products": products,
        "fashioniq_pairs": fashioniq_pairs,
        "outfits": outfit_count,
        "noise_fraction": noise_fraction,
        "counts": {
            "fashiongen": fashiongen_counts,
            "fashioniq": fashioniq_counts,
            "polyvore_outfits": polyvore_counts,
            "attributes": mining["attributes"],
        },
        "notes": {
            "hdf5": "fashiongen_256_256_{train,validation}.h5 hold the train and val products "
            "at image_size pixels (the names are the published ones); test products "
            "are only in test_info.json",
            "noise": "mismatched pairs are in the train split only; val/test are clean",
            "kaleido": "r@k_kaleido assumes 100 negatives; with fewer same-subcategory "
            "products the metric fills up from other subcategories",
        },
        "categories": list(CATEGORIES),
        "subcategories": [
            {
                "id": SUBCATEGORY_ID[s.name],
                "name": s.name.upper(),
                "category_id": CATEGORIES.index(s.category),
                "styles": list(s.styles),
            }
            for s in SUBCATEGORIES
        ],
        "attribute_slots": {slot: list(values) for slot, values in SLOT_VALUES.items()},
        "styles": list(STYLES),
        "palettes": {name: list(colours) for name, colours in PALETTES.items()},
        "noise": {"fraction": noise_fraction, "split": "train", "mismatched": mismatched},
        "chance": chance_levels(
            split_items,
            len(SUBCATEGORIES),
            fashioniq_counts,
            outfits,
            regions_by_split,
            image_size,
            polyvore_root=polyvore,
        ),
    }
    write_json(root / "synth_manifest.json", manifest, indent=2)
    return root


_FIXTURE_CACHE: Dict[Tuple, Path] = {}


def make_fixture(
    tmp_dir: PathLike, products: int = 40, image_size: int = 32, seed: int = 0, noise_fraction: float = 0.0
) -> Path:
    """A tiny world in ``<tmp_dir>/synthetic`` for tests; returns that data dir.

    The first call per argument set generates it (about a second); later calls in the
    same process copy the cached tree, so each test may modify its own copy.
    """
    key = (products, image_size, seed, noise_fraction)
    target = Path(tmp_dir) / "synthetic"
    cached = _FIXTURE_CACHE.get(key)
    if cached is None or not (cached / "synth_manifest.json").exists():
        cache_root = Path(tempfile.mkdtemp(prefix="mmf_fashion_fixture_"))
        atexit.register(shutil.rmtree, cache_root, ignore_errors=True)
        cached = generate(
            cache_root / "synthetic",
            products=products,
            image_size=image_size,
            seed=seed,
            noise_fraction=noise_fraction,
            progress=False,
            attribute_min_count=2,
        )
        _FIXTURE_CACHE[key] = cached
    shutil.copytree(cached, target, dirs_exist_ok=True)
    return target
