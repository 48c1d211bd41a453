"""Dataset builders: each loads the tiny synthetic world through MMF and
collates batches with the ARCHITECTURE.md keys; the HDF5 reader reads a
hand-built file with the published keys. Registration, defaults and the
missing-data message of every registered builder: tests/test_registry.py."""

import json
import pickle

import pytest
import torch
from fixtures_data import (  # noqa: F401
    PUBLISHED_H5,
    build_fashion_dataset,
    collate,
    h5_overrides,
    hand_built_rows,
    keep_only_layout,
    write_h5,
    write_published_fashiongen,
)

B = 4
TEXT = {"input_ids": (B, 40), "attention_mask": (B, 40), "token_type_ids": (B, 40)}
PRODUCT_KEYS = {**TEXT, "image": (B, 3, 32, 32), "product_id": (B,), "image_id": (B,)}
LABELS = {"category_id": (B,), "subcategory_id": (B,), "targets": (B,)}
PRETRAINING = {
    "masked_input_ids": (B, 40),
    "mlm_labels": (B, 40),
    "image_2": (B, 3, 32, 32),
    "patch_mask": (B, 49),
    "boxes": (B, 5, 4),
    "box_valid": (B, 5),
    "box_input_ids": (B, 5, 12),
    "box_attention_mask": (B, 5, 12),
}
ALL_TASKS = {"mlm": True, "second_view": True, "patch_mask": True, "attribute_labels": True, "regions": True}


def assert_batch(batch, shapes):
    for key, shape in shapes.items():
        assert key in batch, f"missing {key}; got {sorted(batch.keys())}"
        assert tuple(batch[key].shape) == shape, (key, tuple(batch[key].shape), shape)
    for key in ("input_ids", "product_id", "targets", "mlm_labels", "blank_id", "target_id"):
        if key in batch:
            assert batch[key].dtype == torch.long, key
    for key in ("patch_mask", "box_valid", "outfit_mask"):
        if key in batch:
            assert batch[key].dtype == torch.bool, key


@pytest.mark.parametrize("fmt", ["json", "h5"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_fashiongen_collates_contract_keys(synthetic_world, fmt, split):
    dataset = build_fashion_dataset("fashiongen", synthetic_world, split, format=fmt)
    batch = collate(dataset, B)
    assert_batch(batch, {**PRODUCT_KEYS, **LABELS})
    assert isinstance(batch["text"], list) and all(isinstance(t, str) and t for t in batch["text"])
    assert torch.equal(batch["targets"], batch["subcategory_id"])
    assert "mlm_labels" not in batch and "image_2" not in batch


def test_fashiongen_pretraining_options_add_their_keys(synthetic_world, mmf_registry):
    dataset = build_fashion_dataset("fashiongen", synthetic_world, "train", format="h5", **ALL_TASKS)
    batch = collate(dataset, B)
    num_attributes = len(json.loads((synthetic_world / "fashiongen/attributes.json").read_text())["attributes"])
    assert_batch(batch, {**PRODUCT_KEYS, **PRETRAINING, "attribute_targets": (B, num_attributes)})
    assert (batch["patch_mask"].sum(1) == 12).all()
    sums = batch["attribute_targets"].sum(1)
    assert torch.allclose(sums[sums > 0], torch.ones_like(sums[sums > 0]))
    assert batch["box_valid"].any()
    boxes = batch["boxes"][batch["box_valid"]]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert not batch["box_attention_mask"][~batch["box_valid"]].any()
    assert ((batch["mlm_labels"] != -100).sum(1) > 0).all()
    assert mmf_registry.get("fashiongen_num_attributes") == num_attributes


def test_fashiongen_json_and_h5_give_the_same_products_and_labels(synthetic_world, mmf_registry):
    from_json = build_fashion_dataset("fashiongen", synthetic_world, "val", format="json")
    from_h5 = build_fashion_dataset("fashiongen", synthetic_world, "val", format="h5")
    assert len(from_json) == len(from_h5)  # one sample per image in eval
    for a, b in zip(from_json.products, from_h5.products):
        assert a.product_id == b.product_id
        assert (a.category_id, a.subcategory_id) == (b.category_id, b.subcategory_id)
        assert len(a.views) == len(b.views)
        assert from_json.product_text(a) == from_h5.product_text(b)
    manifest = json.loads((synthetic_world / "synth_manifest.json").read_text())
    assert mmf_registry.get("fashiongen_num_subcategories") == len(manifest["subcategories"])
    assert mmf_registry.get("fashiongen_num_final_outputs") == len(manifest["subcategories"])


def test_fashiongen_publishes_its_label_names(fresh_world, mmf_registry):
    """The vocabularies (index = label id) go into the registry on load, whatever
    the format; a config list wins; with ids only (JSON, no manifest) none is left."""
    manifest = json.loads((fresh_world / "synth_manifest.json").read_text())
    subcategories = [s["name"] for s in sorted(manifest["subcategories"], key=lambda s: s["id"])]
    for fmt in ("json", "h5"):
        dataset = build_fashion_dataset("fashiongen", fresh_world, "val", format=fmt)
        assert dataset.label_names() == {"category_names": manifest["categories"], "subcategory_names": subcategories}
        assert mmf_registry.get("fashiongen_subcategory_names") == subcategories
        assert mmf_registry.get("fashiongen_category_names") == manifest["categories"]
        assert len(subcategories) == mmf_registry.get("fashiongen_num_subcategories")
    named = [f"class {i}" for i in range(len(subcategories))]
    build_fashion_dataset("fashiongen", fresh_world, "val", subcategory_names=named)
    assert mmf_registry.get("fashiongen_subcategory_names") == named
    (fresh_world / "synth_manifest.json").unlink()
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", format="json")
    assert dataset.label_names() == {}
    assert mmf_registry.get("fashiongen_subcategory_names", no_warning=True) is None
    assert mmf_registry.get("fashiongen_num_subcategories") >= 1  # the count still comes from the ids


def test_fashiongen_units_views_and_ids(synthetic_world):
    info = json.loads((synthetic_world / "fashiongen/val_info.json").read_text())
    per_image = build_fashion_dataset("fashiongen", synthetic_world, "val", unit="image", second_view=True)
    per_product = build_fashion_dataset("fashiongen", synthetic_world, "val", unit="product")
    assert len(per_product) == len(info)
    assert len(per_image) == sum(len(entry["images"]) for entry in info)
    samples = [per_image[i] for i in range(len(per_image))]
    image_ids = [int(s.image_id) for s in samples]
    assert len(set(image_ids)) == len(image_ids)
    by_product = {}
    for sample in samples:
        by_product.setdefault(int(sample.product_id), []).append(sample)
    assert set(by_product) == {entry["id"] for entry in info}
    for entry in info:
        views = by_product[entry["id"]]
        assert len(views) == len(entry["images"]) and len({s.text for s in views}) == 1
        if len(views) > 1:  # eval: the second view is the next view, i.e. another image
            assert not torch.equal(views[0].image, views[0].image_2)
            assert torch.equal(views[0].image_2, views[1].image)


def test_single_view_products_get_an_augmented_copy(fresh_world):
    path = fresh_world / "fashiongen/train_info.json"
    info = json.loads(path.read_text())
    for entry in info:
        entry["images"] = entry["images"][:1]
    path.write_text(json.dumps(info))
    dataset = build_fashion_dataset("fashiongen", fresh_world, "train", second_view=True)
    sample = dataset[0]
    assert sample.image.shape == sample.image_2.shape == (3, 32, 32)
    assert not torch.equal(sample.image, sample.image_2)


def test_processors_are_rebuilt_per_dataset_not_reused_from_the_registry(synthetic_world):
    small = build_fashion_dataset("fashiongen", synthetic_world, "val", image_size=32)
    large = build_fashion_dataset("fashiongen", synthetic_world, "val", image_size=48)
    assert small[0].image.shape == (3, 32, 32)
    assert large[0].image.shape == (3, 48, 48)


def test_fashioniq_queries_and_gallery(synthetic_world):
    dataset = build_fashion_dataset("fashioniq", synthetic_world, "val")
    batch = collate(dataset, B)
    assert_batch(
        batch,
        {
            "reference_image": (B, 3, 32, 32),
            "target_image": (B, 3, 32, 32),
            "input_ids": (B, 32),
            "attention_mask": (B, 32),
            "reference_id": (B,),
            "target_id": (B,),
            "fashioniq_category": (B,),
        },
    )
    captions = json.loads((synthetic_world / "fashioniq/captions/cap.dress.val.json").read_text())
    first = dataset[0]
    assert dataset.gallery_asins[int(first.target_id)] == captions[0]["target"]
    assert dataset.gallery_asins[int(first.reference_id)] == captions[0]["candidate"]
    assert first.text == " and ".join(captions[0]["captions"])  # no shuffling outside training
    gallery = dataset.gallery_dataset()
    split_asins = set()
    for category in ("dress", "shirt", "toptee"):
        split_asins |= {
            (a, category)
            for a in json.loads((synthetic_world / f"fashioniq/image_splits/split.{category}.val.json").read_text())
        }
    assert len(gallery) == len(split_asins)
    gallery_batch = collate(gallery, len(gallery))
    assert gallery_batch["image"].shape == (len(gallery), 3, 32, 32)
    targets = {int(dataset[i].target_id) for i in range(len(dataset))}
    assert targets <= set(gallery_batch["target_id"].tolist())
    unique = build_fashion_dataset("fashioniq", synthetic_world, "val", gallery="unique_targets").gallery_dataset()
    assert sorted(int(unique[i].target_id) for i in range(len(unique))) == sorted(targets)


@pytest.mark.parametrize("version", ["disjoint", "nondisjoint"])
def test_polyvore_ocir_questions_and_gallery(synthetic_world, version):
    dataset = build_fashion_dataset("polyvore_ocir", synthetic_world, "test", version=version)
    questions = json.loads((synthetic_world / f"polyvore_outfits/ocir_{version}_test.json").read_text())
    assert len(dataset) == len(questions)
    batch = collate(dataset, B)
    assert_batch(
        batch,
        {
            "outfit_images": (B, 8, 3, 32, 32),
            "outfit_mask": (B, 8),
            "outfit_categories": (B, 8),
            "blank_image": (B, 3, 32, 32),
            "blank_category": (B,),
            "blank_id": (B,),
        },
    )
    for index in range(B):
        assert int(batch["outfit_mask"][index].sum()) == len(questions[index]["question"])
        assert dataset.gallery_items[int(batch["blank_id"][index])] == questions[index]["blank"]
        assert not batch["outfit_images"][index][~batch["outfit_mask"][index]].any()
    metadata = json.loads((synthetic_world / "polyvore_outfits/polyvore_item_metadata.json").read_text())
    blank_meta = metadata[questions[0]["blank"]]
    assert dataset.category_names[int(batch["blank_category"][0])] == blank_meta["semantic_category"]
    gallery = dataset.gallery_dataset(categories=[int(batch["blank_category"][0])])
    assert len(gallery) >= 1 and all(
        int(gallery[i].blank_category) == int(batch["blank_category"][0]) for i in range(len(gallery))
    )


def test_polyvore_questions_are_derived_when_the_ocir_file_is_missing(fresh_world):
    (fresh_world / "polyvore_outfits/ocir_disjoint_test.json").unlink()
    outfits = json.loads((fresh_world / "polyvore_outfits/disjoint/test.json").read_text())
    dataset = build_fashion_dataset("polyvore_ocir", fresh_world, "test", version="disjoint")
    assert len(dataset) == len(outfits)  # one blank per outfit outside training
    sample = dataset[0]
    assert int(sample.outfit_mask.sum()) == len(outfits[0]["items"]) - 1


def test_fashionall_unites_sources_with_regions_where_present(synthetic_world, mmf_registry):
    dataset = build_fashion_dataset("fashionall", synthetic_world, "train")
    info = json.loads((synthetic_world / "fashiongen/train_info.json").read_text())
    outfits = json.loads((synthetic_world / "polyvore_outfits/nondisjoint/train.json").read_text())
    polyvore_items = {item["item_id"] for outfit in outfits for item in outfit["items"]}
    assert dataset.source_sizes == {"fashiongen": len(info), "polyvore": len(polyvore_items)}
    assert len(dataset) == len(info) + len(polyvore_items)
    num_attributes = mmf_registry.get("fashionall_num_attributes")
    batch = collate(dataset, B)
    assert_batch(
        batch,
        {
            **PRODUCT_KEYS,
            **{k: v for k, v in PRETRAINING.items() if k != "patch_mask"},
            "attribute_targets": (B, num_attributes),
        },
    )
    assert "category_id" not in batch
    fashiongen_sample = dataset[0]
    polyvore_sample = dataset[len(info)]
    assert dataset.source_of(fashiongen_sample.product_id)[0] == "fashiongen"
    assert dataset.source_of(polyvore_sample.product_id)[0] == "polyvore"
    assert fashiongen_sample.box_valid.any() and not polyvore_sample.box_valid.any()
    only_polyvore = build_fashion_dataset("fashionall", synthetic_world, "val", sources=["polyvore"], regions=False)
    assert set(only_polyvore.source_sizes) == {"polyvore"}


# --- the HDF5 reader on a hand-built file ---------------------------------------


def test_hdf5_reader_reads_the_published_keys_with_latin1_text(tmp_path, mmf_registry):
    rows, pixels = hand_built_rows()
    path = tmp_path / "hand.h5"
    write_h5(path, rows)
    dataset = build_fashion_dataset("fashiongen", tmp_path, "val", **h5_overrides(path))
    assert len(dataset) == 3  # one per image in eval
    assert [p.product_id for p in dataset.products] == [501, 777]
    assert [len(p.views) for p in dataset.products] == [2, 1]
    first, third = dataset[0], dataset[2]
    assert first.text == "Robe mérinos. Laine légère, col en V"
    assert third.text == "Café shirt. Striped cotton poplin"
    assert int(first.product_id) == int(dataset[1].product_id) == 501
    # labels: the vocabulary of names found in the file (no manifest here)
    assert dataset.vocabs["category"].names == ["DRESSES", "TOPS"]
    assert (int(first.category_id), int(third.category_id)) == (0, 1)
    # the pixels are the HDF5 row's, through the eval transform
    from PIL import Image

    expected = dataset.image_processor({"image": Image.fromarray(pixels[1]), "is_train": False})["image"]
    assert torch.equal(dataset[1].image, expected)


def test_hdf5_handle_is_lazy_per_process_and_pickles(tmp_path, mmf_registry):
    rows, _ = hand_built_rows()
    path = tmp_path / "hand.h5"
    write_h5(path, rows)
    dataset = build_fashion_dataset("fashiongen", tmp_path, "val", **h5_overrides(path))
    h5 = dataset.h5_files[str(path)]
    assert h5._handle is None  # nothing open after loading the index
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored.h5_files[str(path)]._handle is None
    assert restored[2].text == "Café shirt. Striped cotton poplin"
    assert restored.h5_files[str(path)]._handle is not None
    batch = collate(dataset, 3, num_workers=2)  # each worker opens its own handle
    assert batch["image"].shape == (3, 3, 32, 32)
    assert h5._handle is None  # ... and the main process never opened one


def test_jpegs_are_decoded_at_the_scale_the_processor_needs_and_no_crop_is_upsampled(synthetic_world, tmp_path):
    from PIL import Image
    from torchvision.transforms import v2

    large = tmp_path / "large.jpg"  # a published FashionGen image is 256 px
    Image.new("RGB", (256, 256), (200, 30, 30)).save(large, quality=90)

    def decoded_size(dataset_type, **options):
        dataset = build_fashion_dataset("fashiongen", synthetic_world, dataset_type, image_size=64, **options)
        return dataset.load_image(str(large), file="large.jpg", record=0, field="images[0]").size

    # training crops (random resized, scale >= 0.5, ratio <= 4/3) need a 105 px side: the 1/2 scale
    assert decoded_size("train") == (128, 128)
    assert decoded_size("val") == (64, 64)  # evaluation resizes the short side to 64: the 1/4 scale
    assert decoded_size("train", reduced_jpeg_decode=False) == (256, 256)
    assert decoded_size("train", regions=True) == (256, 256)  # boxes are in full-size pixels

    # what min_source_side promises, checked against torchvision's own crop sampler
    dataset = build_fashion_dataset("fashiongen", synthetic_world, "train", image_size=64)
    side = dataset.image_processor.min_source_side(True)
    processor = dataset.image_processor
    image = torch.zeros(3, side, side)
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    shortest = min(
        min(v2.RandomResizedCrop.get_params(image, list(processor.scale), list(processor.ratio))[2:])
        for _ in range(3000)
    )
    torch.set_rng_state(generator_state)
    assert shortest >= 64


# --- format: auto (the layout that is there, no flag needed) ----------------------------


@pytest.fixture
def logged(monkeypatch):
    """What the datasets log (MMF's writer or the module logger), as (level, message)."""
    from mmf_fashion.datasets.base import FashionDataset

    messages = []
    monkeypatch.setattr(FashionDataset, "log", lambda self, message, level="warning": messages.append((level, message)))
    return messages


@pytest.mark.parametrize(
    "name,key", [("fashiongen", "format"), ("polyvore_ocir", "format"), ("fashionall", "fashiongen.format")]
)
def test_two_layout_builders_default_to_auto(mmf_registry, name, key):
    from mmf.utils.configuration import load_yaml_with_defaults
    from omegaconf import OmegaConf

    config = load_yaml_with_defaults(mmf_registry.get_builder_class(name).config_path())
    assert OmegaConf.select(config, f"dataset_config.{name}.{key}") == "auto"


def test_published_fashiongen_hdf5_loads_with_no_format_flag(tmp_path, mmf_registry, logged):
    """Only fashiongen_256_256_{train,validation}.h5 in <data_dir>/fashiongen/."""
    folder, rows, _ = write_published_fashiongen(tmp_path)
    for split in ("train", "val", "test"):  # test reads the validation file (no public test split)
        dataset = build_fashion_dataset("fashiongen", tmp_path, split)
        assert dataset.format == "h5"
        assert [p.product_id for p in dataset.products] == [501, 777]
    assert dataset[2].text == "Café shirt. Striped cotton poplin"
    assert collate(dataset, 3)["image"].shape == (3, 3, 32, 32)
    assert any(str(folder / PUBLISHED_H5["val"]) in message and "h5 layout" in message for _, message in logged)


@pytest.mark.parametrize("layout", ["h5", "json"])
def test_a_world_with_one_fashiongen_layout_loads_with_no_flag(fresh_world, layout):
    keep_only_layout(fresh_world, layout)
    for split in ("train", "val"):
        dataset = build_fashion_dataset("fashiongen", fresh_world, split)
        assert dataset.format == layout
        assert_batch(collate(dataset, B), {**PRODUCT_KEYS, **LABELS})
    union = build_fashion_dataset("fashionall", fresh_world, "train", regions=False)
    assert union.fashiongen_format == layout and union.source_sizes["fashiongen"] > 0


def test_both_fashiongen_layouts_pick_json_and_say_how_to_pick_h5(synthetic_world, logged):
    dataset = build_fashion_dataset("fashiongen", synthetic_world, "val")
    assert dataset.format == "json"
    [message] = [m for _, m in logged if "both layouts" in m]
    assert "val_info.json" in message and PUBLISHED_H5["val"] in message
    assert "reading json" in message and "dataset_config.fashiongen.format=h5" in message
    assert str(synthetic_world / "fashiongen") in message
    # explicit formats keep working on the same directory, and say nothing
    logged.clear()
    assert build_fashion_dataset("fashiongen", synthetic_world, "val", format="h5").format == "h5"
    assert build_fashion_dataset("fashiongen", synthetic_world, "val", format="json").format == "json"
    assert not [m for _, m in logged if "layout" in m]


def test_no_fashiongen_layout_names_both_and_the_folder(tmp_path, mmf_registry):
    (tmp_path / "fashiongen").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        build_fashion_dataset("fashiongen", tmp_path, "val")
    message = str(error.value)
    assert f"looked in {tmp_path / 'fashiongen'}" in message
    assert "val_info.json" in message and "fashiongen_256_256_validation.h5" in message
    assert "published HDF5" in message and "FashionViL's product JSON" in message
    assert "mmf-fashion data synth --out" in message
    with pytest.raises(FileNotFoundError, match="fashionall.fashiongen.format"):
        build_fashion_dataset("fashionall", tmp_path, "train", sources=["fashiongen"])


def test_an_explicit_format_whose_files_are_missing_points_at_the_other(fresh_world):
    keep_only_layout(fresh_world, "h5")
    with pytest.raises(FileNotFoundError) as error:
        build_fashion_dataset("fashiongen", fresh_world, "val", format="json")
    assert "val_info.json does not exist" in str(error.value)
    assert "The h5 layout is there" in str(error.value) and "dataset_config.fashiongen.format=auto" in str(error.value)
    with pytest.raises(ValueError, match="must be one of"):
        build_fashion_dataset("fashiongen", fresh_world, "val", format="hdf5")


def test_polyvore_layouts_ocir_preferred_outfits_when_alone(fresh_world, logged):
    root = fresh_world / "polyvore_outfits"
    questions = json.loads((root / "ocir_disjoint_test.json").read_text())
    outfits = json.loads((root / "disjoint/test.json").read_text())
    both = build_fashion_dataset("polyvore_ocir", fresh_world, "test", version="disjoint")
    assert both.format == "ocir" and len(both) == len(questions)
    [message] = [m for _, m in logged if "both layouts" in m]
    assert "ocir_disjoint_test.json" in message and "disjoint/test.json" in message
    assert "dataset_config.polyvore_ocir.format=outfits" in message
    derived = build_fashion_dataset("polyvore_ocir", fresh_world, "test", version="disjoint", format="outfits")
    assert derived.format == "outfits" and len(derived) == len(outfits)
    (root / "ocir_disjoint_test.json").unlink()
    alone = build_fashion_dataset("polyvore_ocir", fresh_world, "test", version="disjoint")
    assert alone.format == "outfits" and len(alone) == len(outfits)
    (root / "disjoint/test.json").unlink()
    with pytest.raises(FileNotFoundError) as error:
        build_fashion_dataset("polyvore_ocir", fresh_world, "test", version="disjoint")
    assert f"looked in {root}" in str(error.value)
    assert "ocir_disjoint_test.json" in str(error.value) and "disjoint/test.json" in str(error.value)
