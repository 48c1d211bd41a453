"""The data checker: a clean world has no problem; every injected problem is found and named."""

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmf_fashion.data.check import (
    box_problem,
    check_data_dir,
    image_problem,
    path_problem,
    text_problem,
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
    _edit_json(root / "fashioniq/captions/cap.shirt.val.json", lambda pairs: pairs[1].update(captions=["is red", "  "]))
    return "fashioniq/captions/cap.shirt.val.json", "captions[1]", "empty"


def undecodable_hdf5_name(root):
    with h5py.File(root / H5_TRAIN, "r+") as handle:
        handle["input_name"][3] = np.array([b"\x01\x02\xff\xfe garbage"], dtype=handle["input_name"].dtype)
    return H5_TRAIN, "input_name", "undecodable"


def json_entry_missing_title(root):
    _edit_json(root / "fashiongen/val_info.json", lambda entries: entries[1].pop("title"))
    return "fashiongen/val_info.json", "title", "field missing"


def hdf5_dataset_missing(root):
    with h5py.File(root / H5_TRAIN, "r+") as handle:
        del handle["input_description"]
    return H5_TRAIN, "input_description", "dataset missing"


def box_outside_image(root):
    _edit_json(
        root / "fashiongen/regions_train.json", lambda records: records[0]["regions"][0].update(box=[10, 10, 500, 8])
    )
    return "fashiongen/regions_train.json", "regions[0].box", "outside"


def unknown_category_id(root):
    _edit_json(root / "fashiongen/test_info.json", lambda entries: entries[0].update(category_id=99))
    return "fashiongen/test_info.json", "category_id", "unknown category id"


def unknown_polyvore_category(root):
    def edit(metadata):
        metadata[next(iter(metadata))]["category_id"] = "9999"

    _edit_json(root / "polyvore_outfits/polyvore_item_metadata.json", edit)
    return "polyvore_outfits/polyvore_item_metadata.json", "category_id", "unknown category id"


def absolute_image_path(root):
    _edit_json(root / "fashiongen/train_info.json", lambda entries: entries[2]["images"].__setitem__(0, "/etc/passwd"))
    return "fashiongen/train_info.json", "images[0]", "absolute path"


def climbing_image_path(root):
    _edit_json(
        root / "fashiongen/regions_val.json", lambda records: records[0].update(image="images/../../../secret.jpg")
    )
    return "fashiongen/regions_val.json", "image", "climbs out of the root"


def ocir_blank_outside_test(root):
    train = json.loads((root / "polyvore_outfits/disjoint/train.json").read_text())
    _edit_json(
        root / "polyvore_outfits/ocir_disjoint_test.json",
        lambda questions: questions[0].update(blank=train[0]["items"][0]["item_id"]),
    )
    return "polyvore_outfits/ocir_disjoint_test.json", "blank", "not in the test outfits"


def broken_json_file(root):
    (root / "fashioniq/captions/cap.dress.train.json").write_text('[{"candidate": ')
    return "fashioniq/captions/cap.dress.train.json", "-", "unreadable JSON"


INJECTIONS = [
    corrupt_jpeg,
    missing_polyvore_image,
    empty_fashioniq_caption,
    undecodable_hdf5_name,
    json_entry_missing_title,
    hdf5_dataset_missing,
    box_outside_image,
    unknown_category_id,
    unknown_polyvore_category,
    absolute_image_path,
    climbing_image_path,
    ocir_blank_outside_test,
    broken_json_file,
]


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
    matches = [p for p in report.errors if p.file == file and field in p.field and message in p.message]
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


def _latin1_names(root):
    """Every title of the train HDF5 in latin-1 (as the real files may be); returns the row count."""
    with h5py.File(root / H5_TRAIN, "r+") as handle:
        column = handle["input_name"]
        rows = column.shape[0]
        column[:] = np.array(["Robe mérinos".encode("latin-1")] * rows, dtype=column.dtype).reshape(column.shape)
    return rows


def test_repeated_findings_share_one_line_with_count_and_first_rows(tmp_path, capsys):
    from mmf_fashion.cli.data import add_parser

    root = make_fixture(tmp_path)
    rows = _latin1_names(root)
    _edit_json(
        root / "fashiongen/test_info.json",
        lambda entries: [entry.update(category_id=90 + i) for i, entry in enumerate(entries[:4])],
    )
    report = check_data_dir(root, decode_images=False)
    # every finding is kept and counted; the summary has one line per (file, field, kind)
    assert len(report.warnings) == rows and len(report.errors) == 4
    summary = report.summary()
    assert f"4 error(s), {rows} warning(s)" in summary
    latin1 = [line for line in summary.splitlines() if "input_name" in line]
    assert len(latin1) == 1, summary
    assert f"({rows} records: row 0, row 1, row 2 and {rows - 3} more)" in latin1[0]
    assert latin1[0].strip().startswith(f"warning: {H5_TRAIN}: input_name: not UTF-8; decoded as latin-1")
    unknown = [line for line in summary.splitlines() if "category_id" in line]
    assert len(unknown) == 1 and "unknown category id (4 records: entry 0" in unknown[0], summary
    assert "first: entry 0 (id " in unknown[0] and "unknown category id 90" in unknown[0]
    [group] = [g for g in report.groups() if g.field == "input_name"]
    assert (group.file, group.kind, group.count) == (H5_TRAIN, "not UTF-8; decoded as latin-1", rows)
    # the exit status still follows the totals: errors fail, warnings fail only with --strict
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["data", "check", str(root), "--no-images", "--json", str(tmp_path / "r.json")])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "input_name" in line]) == 1
    written = json.loads((tmp_path / "r.json").read_text())
    assert len(written["problems"]) == rows + 4 and {g["count"] for g in written["groups"]} == {rows, 4}
    _edit_json(
        root / "fashiongen/test_info.json", lambda entries: [entry.update(category_id=0) for entry in entries[:4]]
    )
    args = parser.parse_args(["data", "check", str(root), "--no-images"])
    assert args.func(args) == 0  # latin-1 is a warning
    args = parser.parse_args(["data", "check", str(root), "--no-images", "--strict"])
    assert args.func(args) == 1


def test_the_line_limit_counts_groups_and_says_what_is_left():
    from mmf_fashion.data.check_primitives import Report

    report = Report("d")
    for field in ("a", "b", "c"):
        for row in range(5):
            report.add("f.json", f"entry {row}", field, "field missing")
    lines = report.summary(max_problems=2).splitlines()
    assert lines[1] == "15 error(s), 0 warning(s)"
    assert len(lines) == 5 and "... and 1 more line(s) (5 problem(s))" in lines[-1]
