"""PAC attribute mining: offline tagger, tokeniser, vocabulary, attributes_id, CLI."""

import argparse
import json

import pytest

from mmf_fashion.data.attributes import (
    build_vocabulary, mine_attributes, pos_tagger, tokenize,
)
from mmf_fashion.data.synth import make_fixture
from mmf_fashion.data.synth.vocab import COLOURS


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_tokenizer_splits_sentences_and_hyphenated_words_stay_whole():
    tokens = tokenize("Red V-Neck T-Shirt. Long sleeves, patch pockets.")
    assert tokens == ["red", "v-neck", "t-shirt", ".", "long", "sleeves", ",", "patch",
                      "pockets", "."]


def test_packaged_tagger_works_offline():
    tag, name = pos_tagger(prefer_standard=False)
    assert "tagged_sample" in name
    tags = dict(tag(tokenize("A scarlet striped dress with long sleeves and a belt.")))
    assert tags["a"] == "DT" and tags["with"] == "IN" and tags["and"] == "CC"
    assert tags["dress"] in ("NN", "NNS") and tags["belt"] == "NN"
    assert tags["striped"] == "JJ" and tags["long"] == "JJ"
    assert tags["scarlet"] in ("JJ", "NN")


def test_vocabulary_keeps_frequent_words_most_frequent_first():
    documents = [["red", "dress"], ["red", "skirt"], ["red", "dress"], ["blue", "dress"]]
    assert build_vocabulary(documents, min_count=2, max_doc_fraction=1.0) == ["dress", "red"]
    assert build_vocabulary(documents, min_count=2, max_doc_fraction=0.6) == []
    assert build_vocabulary(documents, min_count=1, max_doc_fraction=1.0)[-1] == "skirt"


def test_mining_finds_colour_words_and_writes_attributes_id(tmp_path):
    data_dir = make_fixture(tmp_path)
    info = data_dir / "fashiongen" / "train_info.json"
    entries = _read(info)
    for entry in entries:
        entry["attributes_id"] = []
    info.write_text(json.dumps(entries))
    summary = mine_attributes(data_dir, min_count=2)
    vocabulary = _read(data_dir / "fashiongen" / "attributes.json")
    assert vocabulary["min_count"] == 2 and len(vocabulary["attributes"]) == summary["attributes"]
    words = vocabulary["attributes"]
    assert len(set(COLOURS) & set(words)) >= 6
    rewritten = _read(info)
    assert all(entry["attributes_id"] for entry in rewritten)
    for entry in rewritten:
        text = f"{entry['title']} {entry['description']}".lower()
        assert all(words[i] in text for i in entry["attributes_id"])
        assert entry["attributes_id"] == sorted(set(entry["attributes_id"]))
    colour = entries[0]["attributes"]["colour"]
    if colour in words and colour in entries[0]["title"].lower():
        assert words.index(colour) in rewritten[0]["attributes_id"]


def test_higher_min_count_gives_a_smaller_vocabulary(tmp_path):
    data_dir = make_fixture(tmp_path)
    small = mine_attributes(data_dir, min_count=2)["attributes"]
    smaller = mine_attributes(data_dir, min_count=8)["attributes"]
    assert 0 < smaller < small


def test_mining_from_hdf5_only_writes_the_vocabulary(tmp_path):
    data_dir = make_fixture(tmp_path)
    for split in ("train", "val", "test"):
        (data_dir / "fashiongen" / f"{split}_info.json").unlink()
    summary = mine_attributes(data_dir, min_count=2)
    assert summary["products"] == 0 and summary["attributes"] > 10
    assert "dress" in _read(data_dir / "fashiongen" / "attributes.json")["attributes"] or \
        "shirt" in _read(data_dir / "fashiongen" / "attributes.json")["attributes"]


def test_a_bad_entry_is_named_by_file_and_record(tmp_path):
    data_dir = make_fixture(tmp_path)
    info = data_dir / "fashiongen" / "val_info.json"
    entries = _read(info)
    entries[2]["title"] = 17
    info.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"val_info\.json: entry 2 .*'title'"):
        mine_attributes(data_dir, min_count=2)


def test_cli_mine_attributes(tmp_path, capsys):
    from mmf_fashion.cli.data import add_parser

    data_dir = make_fixture(tmp_path)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["data", "mine-attributes", "--data-dir", str(data_dir),
                              "--min-count", "3"])
    assert args.func(args) == 0
    assert "attributes" in capsys.readouterr().out
    assert _read(data_dir / "fashiongen" / "attributes.json")["min_count"] == 3
    args = parser.parse_args(["data", "mine-attributes", "--data-dir", str(tmp_path / "none")])
    assert args.func(args) == 2
