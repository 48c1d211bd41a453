"""Bad input: one test per case, under on_bad_sample: error (the message names
the file, the record and the field) and under skip (counted and reported)."""

import json
import os
import shutil

import pytest
import torch
from fixtures_data import build_fashion_dataset, collate, h5_overrides, hand_built_rows, write_h5  # noqa: F401

from mmf_fashion.datasets.common import BadSampleCounter, BadSampleError, decode_text, resolve_data_path


class RecordingWriter:
    def __init__(self):
        self.messages = []

    def write(self, message, level="info", *args, **kwargs):
        self.messages.append((level, str(message)))


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


def val_info(world):
    return world / "fashiongen/val_info.json"


def first_image(world):
    entry = json.loads(val_info(world).read_text())[0]
    return world / "fashiongen" / entry["images"][0], entry


def assert_names(error, file, record, field, kind):
    message = str(error)
    assert str(file) in message and record in message and f"'{field}'" in message, message
    assert error.kind == kind and error.field == field


def run_epoch(dataset, monkeypatch):
    """Serve every index once, with MMF's writer recorded."""
    writer = RecordingWriter()
    monkeypatch.setattr(dataset, "writer", writer)
    samples = [dataset[i] for i in range(len(dataset))]
    return samples, writer.messages


# --- images (found when a sample is built) --------------------------------------------


@pytest.mark.parametrize("case,kind", [("corrupt", "corrupt_image"), ("missing", "missing_image")])
def test_bad_image_error_names_file_record_field(fresh_world, case, kind):
    image, entry = first_image(fresh_world)
    if case == "corrupt":
        image.write_bytes(b"\xff\xd8 this is not a jpeg")
    else:
        image.unlink()
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", unit="image")
    with pytest.raises(BadSampleError) as error:
        dataset[0]
    assert_names(error.value, val_info(fresh_world), f"entry 0 (id {entry['id']})", "images[0]", kind)
    assert str(image) in str(error.value)


@pytest.mark.parametrize("case,kind", [("corrupt", "corrupt_image"), ("missing", "missing_image")])
def test_bad_image_skip_counts_and_reports_at_epoch_end(fresh_world, monkeypatch, case, kind):
    image, entry = first_image(fresh_world)
    if case == "corrupt":
        image.write_bytes(b"GIF89a broken")
    else:
        image.unlink()
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", unit="image", on_bad_sample="skip")
    samples, messages = run_epoch(dataset, monkeypatch)
    assert len(samples) == len(dataset)  # batches keep their size: the next record is served
    assert dataset.bad_samples.counts() == {kind: 1}
    reports = [m for _, m in messages if kind in m]
    assert len(reports) == 1 and "val_info.json" in reports[0] and "images[0]" in reports[0]
    assert "1 skipped" in dataset.bad_samples.summary()
    # the next epoch starts a fresh epoch tally but keeps the total
    assert dataset.bad_samples.counts("epoch") == {}


def test_a_split_with_only_bad_records_stops_with_a_summary(fresh_world):
    info = json.loads(val_info(fresh_world).read_text())
    for entry in info:
        for image in entry["images"]:
            (fresh_world / "fashiongen" / image).unlink()
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="skip", unit="image")
    with pytest.raises(RuntimeError, match="bad records in a row") as error:
        dataset[0]
    assert "missing_image" in str(error.value)
    assert dataset.bad_samples.counts()["missing_image"] == len(dataset)  # each record tried once


def test_skips_in_dataloader_workers_are_counted_in_the_main_process(fresh_world):
    image, _ = first_image(fresh_world)
    image.unlink()
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", unit="image", on_bad_sample="skip")
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=lambda s: s)
    served = sum(len(batch) for batch in loader)
    assert served == len(dataset)
    assert dataset.bad_samples.counts() == {"missing_image": 1}
    assert "missing_image" in dataset.bad_samples.examples()[0]


# --- captions --------------------------------------------------------------------


def _empty_caption(data):
    data[1]["title"] = ""
    data[1]["description"] = "   "


def test_empty_caption(fresh_world):
    data = edit_json(val_info(fresh_world), _empty_caption)
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("fashiongen", fresh_world, "val")
    assert_names(
        error.value, val_info(fresh_world), f"entry 1 (id {data[1]['id']})", "title+description", "empty_caption"
    )
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="skip", unit="product")
    assert len(dataset) == len(data) - 1
    assert dataset.bad_samples.counts("load") == {"empty_caption": 1}
    assert "dropped while loading: 1 empty_caption" in dataset.bad_samples.summary()


def test_undecodable_caption_in_hdf5(tmp_path, monkeypatch, mmf_registry):
    rows, _ = hand_built_rows()
    rows[2] = (777, b"\x01\x02\x81\x9f", b"", b"TOPS", b"SHIRT", rows[2][5])
    path = tmp_path / "hand.h5"
    write_h5(path, rows)
    dataset = build_fashion_dataset("fashiongen", tmp_path, "val", **h5_overrides(path))
    with pytest.raises(BadSampleError) as error:
        dataset[2]
    assert_names(error.value, path, "row 2 (product 777)", "input_name", "undecodable_caption")
    skipping = build_fashion_dataset("fashiongen", tmp_path, "val", on_bad_sample="skip", **h5_overrides(path))
    samples, messages = run_epoch(skipping, monkeypatch)
    assert all(int(s.product_id) == 501 for s in samples)
    assert skipping.bad_samples.counts() == {"undecodable_caption": 1}
    assert any("undecodable_caption" in m for _, m in messages)


def test_undecodable_caption_in_json(fresh_world):
    data = edit_json(val_info(fresh_world), lambda d: d[0].update(title=42))
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("fashiongen", fresh_world, "val")
    assert_names(error.value, val_info(fresh_world), f"entry 0 (id {data[0]['id']})", "title", "undecodable_caption")
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="skip")
    assert dataset.bad_samples.counts() == {"undecodable_caption": 1}


def test_decode_text_falls_back_to_latin1_and_refuses_binary():
    assert decode_text("Crème".encode("latin-1"), file="f", record=1, field="t") == "Crème"
    assert decode_text("Crème".encode("utf-8") + b"\x00\x00", file="f", record=1, field="t") == "Crème"
    with pytest.raises(BadSampleError, match="undecodable"):
        decode_text(b"\x00\x07\x1b[0m", file="f", record=1, field="t")


# --- missing fields --------------------------------------------------------------


def test_json_entry_missing_a_field(fresh_world):
    data = edit_json(val_info(fresh_world), lambda d: d[2].pop("subcategory_id"))
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("fashiongen", fresh_world, "val")
    assert_names(error.value, val_info(fresh_world), f"entry 2 (id {data[2]['id']})", "subcategory_id", "missing_field")
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="skip", unit="product")
    assert len(dataset) == len(data) - 1
    assert dataset.bad_samples.counts() == {"missing_field": 1}


def test_hdf5_dataset_missing_a_field(tmp_path, mmf_registry):
    rows, _ = hand_built_rows()
    path = tmp_path / "hand.h5"
    write_h5(path, rows, drop=("input_subcategory",))
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("fashiongen", tmp_path, "val", **h5_overrides(path))
    assert_names(error.value, path, "every row", "input_subcategory", "missing_field")
    # skip: every row lacks it, so the skip is counted and nothing is left
    with pytest.raises(ValueError, match="no usable records") as skipped:
        build_fashion_dataset("fashiongen", tmp_path, "val", on_bad_sample="skip", **h5_overrides(path))
    assert "missing_field" in str(skipped.value) and "input_subcategory" in str(skipped.value)


# --- regions ------------------------------------------------------------------------


def test_box_outside_the_image(fresh_world, monkeypatch):
    regions_path = fresh_world / "fashiongen/regions_val.json"
    regions = edit_json(regions_path, lambda d: d[0]["regions"][0].update(box=[20, 20, 30, 30]))
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", unit="image", regions=True)
    with pytest.raises(BadSampleError) as error:
        dataset[0]
    assert_names(error.value, regions_path, f"entry 0 ({regions[0]['image']}) region 0", "box", "box_outside_image")
    assert "outside the 32x32 image" in str(error.value)
    skipping = build_fashion_dataset("fashiongen", fresh_world, "val", unit="image", regions=True, on_bad_sample="skip")
    sample = skipping[0]  # the sample stays; only the bad region goes
    assert int(sample.box_valid.sum()) <= min(5, len(regions[0]["regions"]) - 1)
    assert skipping.bad_samples.counts() == {"box_outside_image": 1}


# --- labels -------------------------------------------------------------------------


def test_unknown_category_id(fresh_world):
    data = edit_json(val_info(fresh_world), lambda d: d[0].update(category_id=99))
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("fashiongen", fresh_world, "val")
    assert_names(error.value, val_info(fresh_world), f"entry 0 (id {data[0]['id']})", "category_id", "unknown_category")
    assert "unknown category id 99" in str(error.value)
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="skip", unit="product")
    assert len(dataset) == len(data) - 1 and dataset.bad_samples.counts() == {"unknown_category": 1}


def test_unknown_polyvore_category(fresh_world):
    questions = json.loads((fresh_world / "polyvore_outfits/ocir_disjoint_test.json").read_text())
    blank = questions[0]["blank"]
    metadata_path = fresh_world / "polyvore_outfits/polyvore_item_metadata.json"
    edit_json(metadata_path, lambda d: d[blank].update(semantic_category="spacesuits"))
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("polyvore_ocir", fresh_world, "test", version="disjoint")
    assert_names(error.value, metadata_path, f"item {blank}", "semantic_category", "unknown_category")
    dataset = build_fashion_dataset("polyvore_ocir", fresh_world, "test", version="disjoint", on_bad_sample="skip")
    involved = [q for q in questions if blank == q["blank"] or blank in q["question"]]
    assert len(dataset) == len(questions) - len(involved)
    assert dataset.bad_samples.counts() == {"unknown_category": len(involved)}


# --- unsafe paths ----------------------------------------------------------------------


def test_absolute_path(fresh_world):
    image, entry = first_image(fresh_world)
    edit_json(val_info(fresh_world), lambda d: d[0]["images"].__setitem__(0, str(image)))
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("fashiongen", fresh_world, "val")
    assert_names(error.value, val_info(fresh_world), f"entry 0 (id {entry['id']})", "images[0]", "unsafe_path")
    assert "absolute path" in str(error.value) and "allow_paths_outside_root" in str(error.value)
    skipping = build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="skip", unit="product")
    assert skipping.bad_samples.counts() == {"unsafe_path": 1}
    allowed = build_fashion_dataset("fashiongen", fresh_world, "val", allow_paths_outside_root=True, unit="product")
    assert int(allowed[0].product_id) == entry["id"]


def test_dotdot_path(fresh_world):
    image, entry = first_image(fresh_world)
    outside = fresh_world.parent / "outside.jpg"
    shutil.copy(image, outside)
    edit_json(val_info(fresh_world), lambda d: d[0]["images"].__setitem__(0, "../../outside.jpg"))
    with pytest.raises(BadSampleError) as error:
        build_fashion_dataset("fashiongen", fresh_world, "val")
    assert_names(error.value, val_info(fresh_world), f"entry 0 (id {entry['id']})", "images[0]", "unsafe_path")
    assert "leaves the data directory" in str(error.value)
    skipping = build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="skip", unit="product")
    assert skipping.bad_samples.counts() == {"unsafe_path": 1}
    allowed = build_fashion_dataset("fashiongen", fresh_world, "val", allow_paths_outside_root=True, unit="image")
    assert allowed[0].image.shape == (3, 32, 32)


def test_config_file_paths_are_checked_too(fresh_world):
    with pytest.raises(BadSampleError, match="unsafe_path"):
        build_fashion_dataset("fashiongen", fresh_world, "val", **{"files.json.val": "../elsewhere/val_info.json"})
    with pytest.raises(BadSampleError, match="absolute path"):
        resolve_data_path(str(fresh_world), os.path.abspath("/etc/hosts"), file="cfg", record="r", field="f")


def test_policy_must_be_error_or_skip(fresh_world):
    with pytest.raises(ValueError, match="on_bad_sample must be one of"):
        build_fashion_dataset("fashiongen", fresh_world, "val", on_bad_sample="ignore")


def test_fashioniq_missing_image_names_the_caption_record(fresh_world):
    captions_path = fresh_world / "fashioniq/captions/cap.dress.val.json"
    pair = json.loads(captions_path.read_text())[0]
    (fresh_world / f"fashioniq/images/{pair['target']}.png").unlink()
    dataset = build_fashion_dataset("fashioniq", fresh_world, "val")
    with pytest.raises(BadSampleError) as error:
        dataset[0]
    assert_names(
        error.value, captions_path, f"entry 0 ({pair['candidate']} -> {pair['target']})", "target", "missing_image"
    )
    skipping = build_fashion_dataset("fashioniq", fresh_world, "val", on_bad_sample="skip")
    with pytest.raises(BadSampleError) as gallery_error:  # the gallery names the file that listed the asin
        dataset.gallery_dataset()[dataset.gallery_asins.index(pair["target"])]
    assert pair["target"] in str(gallery_error.value) and ".val.json" in gallery_error.value.file
    gallery = skipping.gallery_dataset()
    batch = collate(gallery, len(gallery))  # a bad gallery image keeps its place, as zeros
    assert batch["image"].shape[0] == len(gallery)
    assert skipping.bad_samples.counts() == {"missing_image": 1}


def test_counter_survives_pickling_and_reports_examples():
    import pickle

    counter = BadSampleCounter("x/train", max_examples=2)
    for index in range(3):
        counter.record(BadSampleError("f.json", index, "title", "caption is empty", "empty_caption"))
    restored = pickle.loads(pickle.dumps(counter))
    assert restored.counts() == {"empty_caption": 3}
    assert len(restored.examples()) == 2 and "f.json: record 0: field 'title'" in restored.examples()[0]


def test_readers_and_the_data_checker_name_the_same_records(fresh_world):
    from mmf_fashion.data.check import check_data_dir

    info = fresh_world / "fashiongen/train_info.json"
    entries = json.loads(info.read_text())
    (fresh_world / "fashiongen" / entries[0]["images"][0]).unlink()
    entries[1].update(title="", description=" ")
    entries[2].pop("subcategory_id")
    entries[3]["category_id"] = 99
    entries[4]["images"][0] = "/etc/hosts"
    entries[5]["images"][0] = "../../outside.jpg"
    info.write_text(json.dumps(entries))

    checked = {
        (p.record, p.field) for p in check_data_dir(fresh_world).errors if p.file.endswith("fashiongen/train_info.json")
    }
    assert len(checked) == 6
    dataset = build_fashion_dataset("fashiongen", fresh_world, "train", on_bad_sample="skip", unit="image")
    assert dataset.bad_samples.counts("load") == {
        "empty_caption": 1,
        "missing_field": 1,
        "unknown_category": 1,
        "unsafe_path": 2,
    }
    dataset[0]  # entry 0's image is missing: skipped when served
    assert dataset.bad_samples.counts()["missing_image"] == 1
    examples = dataset.bad_samples.examples()
    for record, field in checked:
        assert any(f"record {record}: field '{field}'" in example for example in examples), (record, field, examples)


def test_fashioniq_missing_image_says_how_many_are_missing_and_how_to_skip(fresh_world, monkeypatch):
    """The real FashionIQ has images that can no longer be downloaded."""
    captions_path = fresh_world / "fashioniq/captions/cap.shirt.train.json"
    pairs = json.loads(captions_path.read_text())
    image_dir = fresh_world / "fashioniq/images"
    gone = {pairs[1]["candidate"], pairs[2]["target"]}
    for asin in gone:
        (image_dir / f"{asin}.png").unlink()
    dataset = build_fashion_dataset("fashioniq", fresh_world, "train")
    split_asins = set(dataset.gallery_asins)
    index = next(
        i for i, item in enumerate(dataset.items) if item[4] == str(captions_path) and item[5].startswith("entry 1 ")
    )
    with pytest.raises(BadSampleError) as error:
        dataset[index]
    message = str(error.value)
    assert_names(
        error.value,
        captions_path,
        f"entry 1 ({pairs[1]['candidate']} -> {pairs[1]['target']})",
        "candidate",
        "missing_image",
    )
    assert str(image_dir / f"{pairs[1]['candidate']}.png") in message  # the file looked for
    assert f"{len(gone)} of the {len(split_asins)} images of the train split are missing" in message
    assert "dataset_config.fashioniq.on_bad_sample=skip" in message
    # counted once per dataset instance: a later error reuses the count
    checks = []
    real_isfile = os.path.isfile
    monkeypatch.setattr(os.path, "isfile", lambda path: checks.append(path) or real_isfile(path))
    with pytest.raises(BadSampleError, match=f"{len(gone)} of the {len(split_asins)} images"):
        dataset[index]
    assert len(checks) == len(dataset.image_extensions)  # only the record's own candidates
    monkeypatch.undo()
    # under skip: every record that needs a missing image is skipped, counted and reported
    skipping = build_fashion_dataset("fashioniq", fresh_world, "train", on_bad_sample="skip")
    writer = RecordingWriter()
    monkeypatch.setattr(skipping, "writer", writer)
    served = [skipping[i] for i in range(len(skipping))]
    assert len(served) == len(skipping)
    needing = [
        item for item in skipping.items if {skipping.gallery_asins[item[0]], skipping.gallery_asins[item[1]]} & gone
    ]
    assert skipping.bad_samples.counts() == {"missing_image": len(needing)}
    assert any("missing_image" in m and "cap.shirt.train.json" in m for _, m in writer.messages)


def test_neighbouring_bad_records_are_counted_once_per_epoch(fresh_world, monkeypatch):
    """A bad record is first tried as the stand-in for its bad neighbour, then at its own index."""
    info = json.loads(val_info(fresh_world).read_text())
    for entry in info[:2]:
        (fresh_world / "fashiongen" / entry["images"][0]).unlink()
    dataset = build_fashion_dataset("fashiongen", fresh_world, "val", unit="product", on_bad_sample="skip")
    run_epoch(dataset, monkeypatch)
    assert dataset.bad_samples.counts() == {"missing_image": 2}
    run_epoch(dataset, monkeypatch)  # a new epoch counts them again
    assert dataset.bad_samples.counts() == {"missing_image": 4}
