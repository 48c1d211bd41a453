"""The data checker: a clean world has no problem; every injected problem is found and named."""

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmf_fashion.data.check import (
    box_problem, check_data_dir, image_problem, path_problem, text_problem,
)
from mmf_fashion.data.synth import make_fixture

H5_TRAIN = "fashiongen/fashiongen_256_256_train.h5"


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _first_image(root: Path) -> Path:
    entries = json.loads((root / "fashiongen/train_info.json").read_text())
    return root / "fashiongen" / entries[0]["images"][0]


def corrupt_jpeg(root):
    path = _first_image(root)
    path.write_bytes(path.read_bytes()[:120])
    return "fashiongen/train_info.json", "images[0]", "corrupt image"


def missing_polyvore_image(root):
    outfit = json.loads((root / "polyvore_outfits/disjoint/test.json").read_text())[0]
    (root / "polyvore_outfits/images" / f"{outfit['items'][0]['item_id']}.jpg").unlink()
    return "polyvore_outfits/disjoint/test.json", "items[0].item_id", "missing image file"


def empty_fashioniq_caption(root):
    _edit_json(root / "fashioniq/captions/cap.shirt.val.json",
               lambda pairs: pairs[1].update(captions=["is red", "  "]))
    return "fashioniq/captions/cap.shirt.val.json", "captions[1]", "empty"


def undecodable_hdf5_name(root):
    with h5py.File(root / H5_TRAIN, "r+") as handle:
        handle["input_name"][3] = np.array([b"\x01\x02\xff\xfe garbage"],
                                           dtype=handle["input_name"].dtype)
    return H5_TRAIN, "input_name", "undecodable"


def json_entry_missing_title(root):
    _edit_json(root / "fashiongen/val_info.json", lambda entries: entries[1].pop("title"))
    return "fashiongen/val_info.json", "title", "field missing"


def hdf5_dataset_missing(root):
    with h5py.File(root / H5_TRAIN, "r+") as handle:
        del handle["input_description"]
    return H5_TRAIN, "input_description", "dataset missing"


def box_outside_image(root):
    _edit_json(root / "fashiongen/regions_train.json",
               lambda records: records[0]["regions"][0].update(box=[10, 10, 500, 8]))
    return "fashiongen/regions_train.json", "regions[0].box", "outside"


def unknown_category_id(root):
    _edit_json(root / "fashiongen/test_info.json", lambda entries: entries[0].update(
        category_id=99))
    return "fashiongen/test_info.json", "category_id", "unknown category id"


def unknown_polyvore_category(root):
    def edit(metadata):
        metadata[next(iter(metadata))]["category_id"] = "9999"
    _edit_json(root / "polyvore_outfits/polyvore_item_metadata.json", edit)
    return "polyvore_outfits/polyvore_item_metadata.json", "category_id", "unknown category id"


def absolute_image_path(root):
    _edit_json(root / "fashiongen/train_info.json",
               lambda entries: entries[2]["images"].__setitem__(0, "/etc/passwd"))
    return "fashiongen/train_info.json", "images[0]", "absolute path"


def climbing_image_path(root):
    _edit_json(root / "fashiongen/regions_val.json",
               lambda records: records[0].update(image="images/../../../secret.jpg"))
    return "fashiongen/regions_val.json", "image", "climbs out of the root"


def ocir_blank_outside_test(root):
    train = json.loads((root / "polyvore_outfits/disjoint/train.json").read_text())
    _edit_json(root / "polyvore_outfits/ocir_disjoint_test.json",
               lambda questions: questions[0].update(blank=train[0]["items"][0]["item_id"]))
    return "polyvore_outfits/ocir_disjoint_test.json", "blank", "not in the test outfits"


def broken_json_file(root):
    (root / "fashioniq/captions/cap.dress.train.json").write_text("[{\"candidate\": ")
    return "fashioniq/captions/cap.dress.train.json", "-", "unreadable JSON"


INJECTIONS = [corrupt_jpeg, missing_polyvore_image, empty_fashioniq_caption,
              undecodable_hdf5_name, json_entry_missing_title, hdf5_dataset_missing,
              box_outside_image, unknown_category_id, unknown_polyvore_category,
              absolute_image_path, climbing_image_path, ocir_blank_outside_test,
              broken_json_file]


def test_a_clean_world_has_no_problem(tmp_path):
    report = check_data_dir(make_fixture(tmp_path))
    assert report.problems == [], report.summary()
    assert report.ok
    assert report.counts["fashiongen"]["train_products"] > 0
    assert report.counts["fashioniq"]["pairs"] > 0
    assert report.counts["polyvore_outfits"]["items"] > 0


@pytest.mark.parametrize("inject", INJECTIONS, ids=lambda f: f.__name__)
def test_each_injected_problem_is_found_and_named(tmp_path, inject):
    root = make_fixture(tmp_path)
    file, field, message = inject(root)
    report = check_data_dir(root)
    assert not report.ok
    matches = [p for p in report.errors
               if p.file == file and field in p.field and message in p.message]
    assert matches, report.summary()
    assert all(p.record for p in matches)


def test_an_empty_directory_is_not_a_data_dir(tmp_path):
    report = check_data_dir(tmp_path)
    assert not report.ok and "not a data directory" in report.errors[0].message


def test_reusable_checks():
    assert path_problem("images/train/1_0.jpg") is None
    assert path_problem("a/../b.jpg") is None
    assert "climbs" in path_problem("a/../../b.jpg")
    assert "absolute" in path_problem("C:\\data\\x.jpg")
    assert "empty" in path_problem("")
    assert text_problem("red dress") is None
    assert text_problem(None).startswith("not a string")
    assert "undecodable" in text_problem("caf\ufffd")
    assert box_problem([0, 0, 32, 32], (32, 32)) is None
    assert "outside" in box_problem([-1, 0, 4, 4], (32, 32))
    assert "no area" in box_problem([1, 1, 0, 4], (32, 32))
    assert "4 numbers" in box_problem([1, 2, 3], (32, 32))
    assert image_problem(Path("/nonexistent/x.jpg")) == (None, "missing image file")


def test_cli_check_exit_codes(tmp_path, capsys):
    from mmf_fashion.cli.data import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="group"))
    root = make_fixture(tmp_path)
    args = parser.parse_args(["data", "check", str(root), "--json", str(tmp_path / "r.json")])
    assert args.func(args) == 0
    assert "0 error(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    box_outside_image(root)
    args = parser.parse_args(["data", "check", str(root), "--no-images"])
    assert args.func(args) == 1
    assert "fashiongen/regions_train.json" in capsys.readouterr().out
