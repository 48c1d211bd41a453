"""The synthetic world: determinism, splits, published layouts, tasks, rules, CLI."""

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from mmf_fashion.data.synth import generate, make_fixture
from mmf_fashion.data.synth.fashioniq import build_triplets
from mmf_fashion.data.synth.outfits import (
    build_outfits,
    incompatible_mix,
    is_compatible,
    semantic_category,
)
from mmf_fashion.data.synth.render import render_view
from mmf_fashion.data.synth.vocab import COLOUR_SYNONYMS, COLOURS, SUBCATEGORY_BY_NAME
from mmf_fashion.data.synth.world import sample_item

STRING_FIELDS = (
    "input_name",
    "input_description",
    "input_concat_description",
    "input_category",
    "input_subcategory",
    "input_pose",
    "input_gender",
    "input_composition",
    "input_department",
    "input_season",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("synth"))


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _info(world: Path, split: str):
    return _load(world / "fashiongen" / f"{split}_info.json")


def test_same_seed_gives_identical_files_and_pixels(tmp_path):
    first = generate(tmp_path / "a", products=12, image_size=16, seed=3, progress=False, attribute_min_count=2)
    second = generate(tmp_path / "b", products=12, image_size=16, seed=3, progress=False, attribute_min_count=2)
    other = generate(tmp_path / "c", products=12, image_size=16, seed=4, progress=False, attribute_min_count=2)
    json_files = sorted(p.relative_to(first) for p in first.rglob("*.json"))
    assert len(json_files) > 30
    for relative in json_files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    images = sorted(p.relative_to(first) for p in first.rglob("*.jpg"))
    images += sorted(p.relative_to(first) for p in first.rglob("*.png"))
    for relative in images:
        assert np.array_equal(np.asarray(Image.open(first / relative)), np.asarray(Image.open(second / relative))), (
            relative
        )
    h5_name = "fashiongen/fashiongen_256_256_train.h5"
    with h5py.File(first / h5_name) as a, h5py.File(second / h5_name) as b:
        assert np.array_equal(a["input_image"][:], b["input_image"][:])
    assert (first / "fashiongen/train_info.json").read_bytes() != (other / "fashiongen/train_info.json").read_bytes()


def test_product_splits_are_disjoint_and_match_the_hdf5(world):
    ids = {split: {entry["id"] for entry in _info(world, split)} for split in ("train", "val", "test")}
    assert all(ids.values())
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert sum(len(v) for v in ids.values()) == 40
    for split, name in (("train", "train"), ("val", "validation")):
        with h5py.File(world / f"fashiongen/fashiongen_256_256_{name}.h5") as handle:
            assert set(handle["input_productID"][:, 0].tolist()) == ids[split]


def test_hdf5_has_the_published_keys_and_dtypes(world):
    with h5py.File(world / "fashiongen/fashiongen_256_256_train.h5") as handle:
        images = handle["input_image"]
        rows = images.shape[0]
        assert images.dtype == np.uint8 and images.shape == (rows, 32, 32, 3)
        for name in STRING_FIELDS:
            assert handle[name].dtype.kind == "S" and handle[name].shape == (rows, 1), name
        assert handle["input_productID"].dtype.kind == "i"
        assert handle["input_productID"].shape == (rows, 1)
        assert handle["input_msrpUSD"].dtype.kind == "f"
        assert handle["input_msrpUSD"].shape == (rows, 1)
        assert handle["index"].dtype.kind == "i" and handle["index_2"].dtype.kind == "i"
        assert set(handle["input_pose"][:, 0]) <= {b"front", b"back", b"side", b"detail"}
        first_name = handle["input_name"][0, 0].decode("utf-8")
        product = handle["input_productID"][0, 0]
    entry = next(e for e in _info(world, "train") if e["id"] == product)
    assert entry["title"] == first_name


def test_json_images_are_the_hdf5_pixels(world):
    entries = {e["id"]: e for e in _info(world, "train")}
    with h5py.File(world / "fashiongen/fashiongen_256_256_train.h5") as handle:
        for row in range(0, handle["input_image"].shape[0], 7):
            product = int(handle["input_productID"][row, 0])
            view = int(handle["index_2"][row, 0])
            relative = entries[product]["images"][view]
            assert relative.startswith("images/train/") and not relative.startswith("/")
            decoded = np.asarray(Image.open(world / "fashiongen" / relative), dtype=np.float32)
            assert np.abs(decoded - handle["input_image"][row]).mean() < 6.0


def test_products_have_views_text_and_fashionvil_fields(world):
    entries = _info(world, "train") + _info(world, "val") + _info(world, "test")
    for entry in entries:
        assert {"images", "id", "title", "description", "attributes_id", "category_id", "subcategory_id"} <= set(entry)
        assert 1 <= len(entry["images"]) <= 4 and entry["poses"][0] == "front"
        text = f"{entry['title']}. {entry['description']}".lower()
        assert any(word in text for word in COLOUR_SYNONYMS[entry["attributes"]["colour"]])
    assert len({e["subcategory_id"] for e in entries}) > 15
    assert len({e["category_id"] for e in entries}) == 8


def test_regions_lie_inside_the_images(world):
    records = _load(world / "fashiongen/regions_train.json")
    assert records and sum(len(r["regions"]) for r in records) > len(records)
    phrases = set()
    for record in records:
        size = Image.open(world / "fashiongen" / record["image"]).size
        for region in record["regions"]:
            x, y, w, h = region["box"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= size[0] and y + h <= size[1]
            phrases.add(region["phrase"])
    assert any("sleeve" in p for p in phrases) and any("collar" in p or "neck" in p for p in phrases)


def test_colour_and_view_are_visible_in_the_pixels():
    rng = np.random.default_rng(0)
    tshirt = SUBCATEGORY_BY_NAME["t-shirt"]
    red = sample_item(rng, 1, tshirt, fixed={"colour": "red", "pattern": "plain"})
    blue = sample_item(rng, 2, tshirt, fixed={"colour": "blue", "pattern": "plain"})
    for item, channel in ((red, 0), (blue, 2)):
        pixels, _ = render_view(item, "front", 64, seed=0, stream=1)
        pixels = pixels.astype(int)
        garment = pixels[np.abs(pixels - pixels[0, 0]).sum(axis=2) > 60]
        assert len(garment) > 200
        assert garment.mean(axis=0).argmax() == channel
    front, _ = render_view(red, "front", 64, seed=0, stream=1)
    side, _ = render_view(red, "side", 64, seed=0, stream=1)

    def width(pixels):
        columns = (np.abs(pixels.astype(int) - pixels[0, 0]).sum(axis=2) > 60).any(axis=0)
        return int(columns.sum())

    assert width(side) < 0.8 * width(front)


def _nearest_colour(pixels: np.ndarray):
    """The world colour closest to the median garment pixel (None when too little garment)."""
    pixels = pixels.astype(int)
    garment = pixels[np.abs(pixels - pixels[0, 0]).sum(axis=2) > 60]
    if len(garment) < 20:
        return None
    median = np.median(garment, axis=0)
    return min(COLOURS, key=lambda name: float(np.abs(np.array(COLOURS[name]) - median).sum()))


def test_pac_attributes_recur_across_products_and_show_in_the_pixels(world):
    products = _info(world, "train") + _info(world, "val")
    vocabulary = _load(world / "fashiongen" / "attributes.json")["attributes"]
    products_per_word = Counter(i for entry in products for i in set(entry["attributes_id"]))
    # mined attributes are shared, so PAC's soft labels overlap between products (in a 40-product
    # world some words come from one product's several views: a text counts once per image)
    assert sum(products_per_word[i] >= 2 for i in range(len(vocabulary))) >= 0.75 * len(vocabulary)
    assert sum(word in COLOURS for word in vocabulary) >= 8
    labelled = sum(
        vocabulary.index(e["attributes"]["colour"]) in e["attributes_id"]
        for e in products
        if e["attributes"]["colour"] in vocabulary
    )
    assert labelled >= 0.5 * len(products)
    # the colour a text names is the colour of the pixels (plain items, front view)
    seen = [
        (_nearest_colour(np.asarray(Image.open(world / "fashiongen" / e["images"][0]))), e["attributes"]["colour"])
        for e in products
        if e["attributes"]["pattern"] == "plain"
    ]
    seen = [(found, truth) for found, truth in seen if found is not None]
    assert len(seen) >= 10
    # lighting, background tint and trims blur the colours at 32 px: half is 6x chance (1/12)
    assert sum(found == truth for found, truth in seen) >= 0.5 * len(seen)


def test_mvc_products_have_several_distinct_views(world):
    products = _info(world, "train")
    multi = [e for e in products if len(e["images"]) >= 2]
    assert len(multi) >= 0.5 * len(products)
    for entry in multi[:5]:
        first, second = (np.asarray(Image.open(world / "fashiongen" / p), dtype=int) for p in entry["images"][:2])
        assert np.abs(first - second).mean() > 1.0  # another pose, not a copy
        assert entry["poses"][0] == "front" and len(set(entry["poses"])) == len(entry["poses"])


def test_grounding_regions_are_local_boxes_with_phrases(world):
    records = _load(world / "fashiongen" / "regions_train.json")
    fronts = [r for r in records if r["pose"] == "front"]
    assert fronts and all(len(r["regions"]) >= 2 for r in fronts)
    boxes = [region for r in fronts for region in r["regions"]]
    assert all(region["phrase"].strip() for region in boxes)
    area = 32 * 32
    small = [region for region in boxes if region["box"][2] * region["box"][3] < 0.25 * area]
    assert len(small) >= 0.5 * len(boxes)  # parts (sleeves, collars, pockets), not the image
    assert len({region["phrase"] for region in boxes}) >= 0.3 * len(boxes)


def test_ocir_compatible_items_agree_on_colour_and_style_far_more_than_random_pairs():
    world = build_outfits(np.random.default_rng(2), outfit_count=80, first_item_id=1)
    compatible = [pair for o in world.outfits for pair in itertools.combinations(o.items, 2)]
    rng = np.random.default_rng(0)
    items = world.items
    random_pairs = [(items[int(a)], items[int(b)]) for a, b in rng.integers(len(items), size=(2000, 2)) if a != b]

    def same_colour(pairs):
        return float(np.mean([a.attributes["colour"] == b.attributes["colour"] for a, b in pairs]))

    def shared_style(pairs):
        return float(np.mean([bool(set(a.subcategory.styles) & set(b.subcategory.styles)) for a, b in pairs]))

    def both_patterned(pairs):
        return float(np.mean([a.attributes["pattern"] != "plain" != b.attributes["pattern"] for a, b in pairs]))

    assert same_colour(compatible) == 1.0 and same_colour(random_pairs) < 0.15
    assert shared_style(compatible) == 1.0 and shared_style(random_pairs) < 0.9
    assert both_patterned(compatible) == 0.0 and both_patterned(random_pairs) > 0.01
    # every semantic category holds a good share of the items: OCIR's galleries are not tiny
    categories = Counter(semantic_category(item) for item in items)
    assert len(categories) == 6 and min(categories.values()) >= 0.05 * len(items)


def test_noise_gives_train_products_another_products_text(tmp_path):
    clean = make_fixture(tmp_path / "clean")
    noisy = make_fixture(tmp_path / "noisy", noise_fraction=0.2)
    mismatched = _load(noisy / "synth_manifest.json")["noise"]["mismatched"]
    clean_train = {e["id"]: e for e in _info(clean, "train")}
    noisy_train = {e["id"]: e for e in _info(noisy, "train")}
    assert len(mismatched) == round(0.2 * len(clean_train))
    for pair in mismatched:
        assert pair["product_id"] != pair["text_from"]
        assert noisy_train[pair["product_id"]]["title"] == clean_train[pair["text_from"]]["title"]
    untouched = set(clean_train) - {p["product_id"] for p in mismatched}
    assert all(noisy_train[i]["title"] == clean_train[i]["title"] for i in untouched)
    # validation products are untouched; only their attribute ids may differ, since the
    # attribute vocabulary is mined from the (noisy) training texts
    without_ids = lambda entries: [{k: v for k, v in e.items() if k != "attributes_id"} for e in entries]  # noqa: E731
    assert without_ids(_info(noisy, "val")) == without_ids(_info(clean, "val"))


def test_fashioniq_pairs_share_a_category_and_differ_in_one_or_two_attributes(world):
    folder = world / "fashioniq"
    truth = _load(folder / "synth_asin_attributes.json")
    for category in ("dress", "shirt", "toptee"):
        for split in ("train", "val", "test"):
            pairs = _load(folder / f"captions/cap.{category}.{split}.json")
            gallery = set(_load(folder / f"image_splits/split.{category}.{split}.json"))
            assert pairs
            for pair in pairs:
                reference, target = truth[pair["candidate"]], truth[pair["target"]]
                assert reference["category"] == target["category"] == category
                assert reference["subcategory"] == target["subcategory"]
                changed = [s for s in reference["attributes"] if reference["attributes"][s] != target["attributes"][s]]
                assert 1 <= len(changed) <= 2
                assert len(pair["captions"]) == 2 and all(c.strip() for c in pair["captions"])
                assert {pair["candidate"], pair["target"]} <= gallery
                assert (folder / "images" / f"{pair['target']}.png").is_file()


def test_fashioniq_val_galleries_hold_hard_negatives():
    triplets = build_triplets(np.random.default_rng(0), pairs_per_category=30, first_item_id=1)
    for by_split in triplets.values():
        assert all(not t.distractors for t in by_split["train"])
        for triplet in by_split["val"] + by_split["test"]:
            assert triplet.distractors
            for distractor in triplet.distractors:
                assert distractor.subcategory is triplet.reference.subcategory
                assert distractor.attributes != triplet.target.attributes
                assert distractor.attributes != triplet.reference.attributes
    ids = [
        i.item_id
        for s in triplets.values()
        for ts in s.values()
        for t in ts
        for i in (t.reference, t.target, *t.distractors)
    ]
    assert len(ids) == len(set(ids))


def test_ocir_blanks_are_test_items_and_disjoint_splits_share_no_item(world):
    folder = world / "polyvore_outfits"
    metadata = _load(folder / "polyvore_item_metadata.json")
    for version in ("disjoint", "nondisjoint"):
        items = {
            split: {i["item_id"] for o in _load(folder / version / f"{split}.json") for i in o["items"]}
            for split in ("train", "valid", "test")
        }
        if version == "disjoint":
            assert not items["train"] & items["test"] and not items["train"] & items["valid"]
            assert not items["valid"] & items["test"]
        questions = _load(folder / f"ocir_{version}_test.json")
        assert questions
        for question in questions:
            assert question["blank"] in items["test"]
            assert question["blank"] not in question["question"]
            assert all(i in metadata for i in question["question"])


def test_polyvore_metadata_and_task_files(world):
    folder = world / "polyvore_outfits"
    metadata = _load(folder / "polyvore_item_metadata.json")
    category_ids = {line.split(",")[0] for line in (folder / "categories.csv").read_text().splitlines()}
    for item_id, item in metadata.items():
        assert "catgeories" in item and item["category_id"] in category_ids
        assert (folder / "images" / f"{item_id}.jpg").is_file()
    labels = [line.split()[0] for line in (folder / "disjoint/compatibility_train.txt").read_text().splitlines()]
    assert "1" in labels and "0" in labels
    for question in _load(folder / "disjoint/fill_in_blank_test.json"):
        assert len(question["answers"]) == 4
        set_id = question["question"][0].rsplit("_", 1)[0]
        correct = [a for a in question["answers"] if a.rsplit("_", 1)[0] == set_id]
        assert correct == [f"{set_id}_{question['blank_position']}"]
        assert correct[0] not in question["question"]


def test_outfits_follow_the_compatibility_rules():
    rng = np.random.default_rng(1)
    outfits = build_outfits(rng, outfit_count=30, first_item_id=1)
    assert all(is_compatible(o.items) for o in outfits.outfits)
    assert all(len(o.items) >= 2 for o in outfits.outfits)
    mixes = [incompatible_mix(rng, o, outfits.outfits) for o in outfits.outfits]
    found = [m for m in mixes if m is not None]
    assert len(found) > 20
    assert not any(is_compatible([o.items[p] for o, p in mix]) for mix in found)


def test_manifest_records_sizes_and_chance_levels(world):
    manifest = _load(world / "synth_manifest.json")
    assert manifest["seed"] == 0 and manifest["image_size"] == 32
    val_products = len(_info(world, "val"))
    general = manifest["chance"]["fashiongen"]["val"]["r@k_general"]
    assert general["i2t_r@1"] == pytest.approx(1 / val_products, abs=1e-6)
    assert manifest["chance"]["fashiongen"]["val"]["scr"]["accuracy_uniform"] == pytest.approx(
        1 / len(manifest["subcategories"]), abs=1e-6
    )
    assert set(manifest["chance"]["polyvore_ocir"]["disjoint"]["r@k_ocir"]) == {"r@10", "r@30", "r@50"}


def test_demo_chance_is_each_main_metrics_random_ranking_level(world):
    from mmf_fashion.data.synth.chance import demo_chance
    from mmf_fashion.demo import format_table

    chance = demo_chance(world)
    manifest = _load(world / "synth_manifest.json")
    assert chance["scr"] == pytest.approx(100 / len(manifest["subcategories"]), abs=1e-3)  # 6 decimals
    galleries = [manifest["counts"]["fashioniq"][c]["val"]["gallery"] for c in ("dress", "shirt", "toptee")]
    assert chance["tgir"] == pytest.approx(100 * np.mean([min(1.0, 10 / g) for g in galleries]), abs=1e-3)
    # OCIR: the gallery of a category is every item of the test questions; macro over the blanks
    questions = _load(world / "polyvore_outfits" / "ocir_nondisjoint_test.json")
    metadata = _load(world / "polyvore_outfits" / "polyvore_item_metadata.json")
    category = {i: metadata[i]["semantic_category"] for q in questions for i in q["question"] + [q["blank"]]}
    gallery = Counter(category.values())
    blanks = {category[q["blank"]] for q in questions}
    expected = np.mean([min(1.0, 10 / gallery[c]) for c in blanks])
    assert chance["ocir"] == pytest.approx(100 * expected, abs=1e-3)
    results = [
        {
            "step": "ocir",
            "seconds": 1.0,
            "metrics": {"val/polyvore_ocir/r@k_ocir/r@10": 2 * chance["ocir"], "val/polyvore_ocir/r@k_ocir/r@30": 90.0},
        }
    ]
    table = format_table(results, chance)
    assert f"| {2 * chance['ocir']:.2f} | {chance['ocir']:.2f} | 2.0x |" in table
    assert "| val/polyvore_ocir/r@k_ocir/r@30 | 90.00 |  |  |" in table


def test_make_fixture_copies_are_independent(tmp_path):
    first = make_fixture(tmp_path / "one")
    second = make_fixture(tmp_path / "two")
    (first / "fashiongen/train_info.json").write_text("[]")
    assert _info(second, "train")


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="products"):
        generate(tmp_path / "x", products=3, progress=False)
    with pytest.raises(ValueError, match="noise_fraction"):
        generate(tmp_path / "x", products=20, noise_fraction=1.5, progress=False)


def test_cli_synth_writes_a_world_and_refuses_to_clobber_it(tmp_path, capsys):
    from mmf_fashion.cli.data import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="group"))
    out = tmp_path / "world"
    argv = [
        "data",
        "synth",
        "--out",
        str(out),
        "--products",
        "12",
        "--image-size",
        "16",
        "--min-count",
        "2",
        "--no-progress",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert (out / "synth_manifest.json").is_file()
    assert "train" in capsys.readouterr().out
    args = parser.parse_args(argv)
    assert args.func(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    args = parser.parse_args(argv + ["--overwrite"])
    assert args.func(args) == 0


def test_cli_presets_and_flags_that_override_them(tmp_path, monkeypatch):
    import mmf_fashion.data.synth as synth
    from mmf_fashion.cli.data import PRESET_NAMES, add_parser

    assert set(PRESET_NAMES) == set(synth.PRESETS)
    evidence = synth.preset_arguments("evidence")
    # the evidence world's validation sets: FashionGen val 15%, FashionIQ val 20%, OCIR test 40%
    assert round(0.15 * evidence["products"]) >= 500 and round(0.2 * evidence["fashioniq_pairs"]) >= 300
    assert round(0.4 * evidence["outfits"]) >= 300
    calls = []
    monkeypatch.setattr(synth, "generate", lambda out, **kwargs: calls.append(kwargs) or 1 / 0)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="group"))
    for extra in (
        [],
        ["--preset", "evidence"],
        ["--preset", "evidence", "--products", "90", "--noise", "0.2"],
        ["--preset", "evidence", "--outfits", "50", "--image-size", "32"],
    ):
        args = parser.parse_args(["data", "synth", "--out", str(tmp_path / "w"), *extra])
        with pytest.raises(ZeroDivisionError):
            args.func(args)
    sizes = [{k: c.get(k) for k in ("products", "image_size", "fashioniq_pairs", "outfits")} for c in calls]
    assert sizes[0] == {**synth.PRESETS["demo"]}
    assert sizes[1] == {**evidence}
    assert sizes[2] == {"products": 90, "image_size": 64, "fashioniq_pairs": None, "outfits": None}
    assert calls[2]["noise_fraction"] == 0.2
    assert sizes[3] == {**evidence, "outfits": 50, "image_size": 32}
