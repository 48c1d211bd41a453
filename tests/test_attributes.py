"""PAC attribute mining: offline tagger, tokeniser, vocabulary, attributes_id, CLI;
train split only, texts counted per image, the scaled default threshold, the paper preset,
the fallback tagger named in attributes.json and in the command's output."""

import argparse
import json

import pytest

from mmf_fashion.data import attributes as A
from mmf_fashion.data.attributes import (
    build_vocabulary,
    mine_attributes,
    pos_tagger,
    scaled_min_count,
    tokenize,
)
from mmf_fashion.data.synth import make_fixture
from mmf_fashion.data.synth.vocab import COLOURS


def _read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_tokenizer_splits_sentences_and_hyphenated_words_stay_whole():
    tokens = tokenize("Red V-Neck T-Shirt. Long sleeves, patch pockets.")
    assert tokens == ["red", "v-neck", "t-shirt", ".", "long", "sleeves", ",", "patch", "pockets", "."]


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
    assert (
        "dress" in _read(data_dir / "fashiongen" / "attributes.json")["attributes"]
        or "shirt" in _read(data_dir / "fashiongen" / "attributes.json")["attributes"]
    )


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
    args = parser.parse_args(["data", "mine-attributes", "--data-dir", str(data_dir), "--min-count", "3"])
    assert args.func(args) == 0
    assert "attributes" in capsys.readouterr().out
    assert _read(data_dir / "fashiongen" / "attributes.json")["min_count"] == 3
    args = parser.parse_args(["data", "mine-attributes", "--data-dir", str(tmp_path / "none")])
    assert args.func(args) == 2


# ------------------------------------------------------------ paper fidelity
def _write_products(data_dir, split, texts, images=2):
    entries = [
        {
            "images": [f"images/{split}/{i}_{v}.jpg" for v in range(images)],
            "id": i,
            "title": title,
            "description": description,
            "attributes_id": [],
            "category_id": 0,
            "subcategory_id": 0,
        }
        for i, (title, description) in enumerate(texts)
    ]
    (data_dir / "fashiongen" / f"{split}_info.json").write_text(json.dumps(entries))


@pytest.fixture
def no_standard_tagger(monkeypatch):
    """NLTK's tagger data absent (as offline here): the packaged fallback tags."""
    import nltk

    def missing(tokens, *args, **kwargs):
        raise LookupError("averaged_perceptron_tagger_eng not found")

    monkeypatch.setattr(nltk, "pos_tag", missing)


def test_only_the_train_texts_are_mined_and_every_split_gets_ids(tmp_path, no_standard_tagger):
    data_dir = tmp_path
    (data_dir / "fashiongen").mkdir()
    _write_products(data_dir, "train", [("Red dress", "A red silk dress.")] * 3)
    # "velvet" is frequent in val and test only: it must not become an attribute
    _write_products(data_dir, "val", [("Velvet dress", "A velvet red dress with velvet bows.")] * 6)
    _write_products(data_dir, "test", [("Velvet coat", "A velvet coat.")] * 6)
    summary = mine_attributes(data_dir, min_count=2, max_doc_fraction=1.0)
    vocabulary = _read(data_dir / "fashiongen" / "attributes.json")
    assert vocabulary["split"] == "train" and vocabulary["source"] == "train_info.json"
    assert "velvet" not in vocabulary["attributes"]
    assert {"red", "dress"} <= set(vocabulary["attributes"])
    assert summary["texts"] == 6  # 3 products x 2 images
    words = vocabulary["attributes"]
    for split in ("val", "test"):
        for entry in _read(data_dir / "fashiongen" / f"{split}_info.json"):
            assert all(words[i] != "velvet" for i in entry["attributes_id"])
    val_ids = _read(data_dir / "fashiongen" / "val_info.json")[0]["attributes_id"]
    assert {words.index("red"), words.index("dress")} <= set(val_ids)


def test_a_text_counts_once_per_image():
    documents = [["red", "dress"], ["blue", "dress"]]
    assert build_vocabulary(documents, min_count=3, weights=[3, 1]) == ["dress", "red"]
    assert build_vocabulary(documents, min_count=3) == []


def test_default_threshold_is_the_papers_scaled_to_the_corpus(tmp_path, no_standard_tagger):
    assert scaled_min_count(A.PAPER_TEXTS) == 101  # "more than 100" on FashionGen's train texts
    assert scaled_min_count(10 * A.PAPER_TEXTS) == 1001
    assert scaled_min_count(26_048) == 11
    assert scaled_min_count(500) == 2  # never below 2
    data_dir = make_fixture(tmp_path)
    entries = _read(data_dir / "fashiongen" / "train_info.json")
    summary = mine_attributes(data_dir)
    texts = sum(len(entry["images"]) for entry in entries)
    assert summary["texts"] == texts and summary["min_count"] == scaled_min_count(texts)
    vocabulary = _read(data_dir / "fashiongen" / "attributes.json")
    assert vocabulary["preset"] == "scaled" and vocabulary["min_count"] == summary["min_count"]


def test_paper_preset_more_than_100_no_cap_no_stop_words(tmp_path, no_standard_tagger):
    (tmp_path / "fashiongen").mkdir()
    # 60 products x 2 images = 120 texts: "red" 240 times (in every text), "dress" 110,
    # "size" 120 (a stop word by default), "belt" 10*4*2 + 5*2 = 90, "coat" 10
    texts = [("Red dress", "Red size.")] * 55 + [("Red coat", "Red belt, size.")] * 5
    texts = [(t, d + (" Belt." * 4 if i < 10 else "")) for i, (t, d) in enumerate(texts)]
    _write_products(tmp_path, "train", texts)
    summary = mine_attributes(tmp_path, paper=True)
    vocabulary = _read(tmp_path / "fashiongen" / "attributes.json")
    assert (summary["min_count"], vocabulary["min_count"], vocabulary["preset"]) == (101, 101, "paper")
    assert vocabulary["max_doc_fraction"] is None and vocabulary["stop_words"] is False
    assert vocabulary["attributes"] == ["red", "size", "dress"]  # most frequent first
    # without --paper: the stop words go, and the fraction cap drops words in > 80% of texts
    mine_attributes(tmp_path, min_count=101, max_doc_fraction=1.0)
    assert _read(tmp_path / "fashiongen" / "attributes.json")["attributes"] == ["red", "dress"]
    mine_attributes(tmp_path, min_count=101)
    assert _read(tmp_path / "fashiongen" / "attributes.json")["attributes"] == []
    with pytest.raises(ValueError, match="paper=True"):
        mine_attributes(tmp_path, paper=True, min_count=5)


def test_the_fallback_tagger_is_named(tmp_path, capsys, no_standard_tagger):
    from mmf_fashion.cli.data import add_parser

    data_dir = make_fixture(tmp_path)
    summary = mine_attributes(data_dir, min_count=2)
    assert summary["tagger_fallback"] and summary["tagger"] == A.FALLBACK_TAGGER
    vocabulary = _read(data_dir / "fashiongen" / "attributes.json")
    assert vocabulary["tagger"] == A.FALLBACK_TAGGER and vocabulary["tagger_fallback"] is True
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["data", "mine-attributes", "--data-dir", str(data_dir)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "fallback tagger" in out and A.FALLBACK_TAGGER in out and "scaled" in out


def test_nltk_tagger_is_used_and_recorded_when_installed(tmp_path, monkeypatch):
    import nltk

    fallback = pos_tagger(prefer_standard=False)[0]
    monkeypatch.setattr(nltk, "pos_tag", lambda tokens, *a, **k: fallback(tokens))
    data_dir = make_fixture(tmp_path)
    summary = mine_attributes(data_dir, min_count=2)
    assert summary["tagger"] == A.STANDARD_TAGGER and not summary["tagger_fallback"]
    assert _read(data_dir / "fashiongen" / "attributes.json")["tagger_fallback"] is False


def test_cli_paper_preset_and_its_conflicts(tmp_path, capsys, no_standard_tagger):
    from mmf_fashion.cli.data import add_parser

    data_dir = make_fixture(tmp_path)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="group"))
    args = parser.parse_args(["data", "mine-attributes", "--data-dir", str(data_dir), "--paper"])
    assert args.func(args) == 0
    assert "min count 101, paper" in capsys.readouterr().out
    assert _read(data_dir / "fashiongen" / "attributes.json")["preset"] == "paper"
    args = parser.parse_args(
        ["data", "mine-attributes", "--data-dir", str(data_dir), "--paper", "--max-doc-fraction", "0.5"]
    )
    assert args.func(args) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "mine-attributes", "--data-dir", str(data_dir), "--paper", "--min-count", "3"])


def test_hdf5_only_mines_the_train_file(tmp_path, no_standard_tagger):
    import h5py

    data_dir = make_fixture(tmp_path)
    for split in ("train", "val", "test"):
        (data_dir / "fashiongen" / f"{split}_info.json").unlink()
    with h5py.File(data_dir / "fashiongen" / "fashiongen_256_256_train.h5", "r") as handle:
        rows = handle["input_name"].shape[0]
    summary = mine_attributes(data_dir, min_count=2)
    assert summary["texts"] == rows and summary["source"].endswith("fashiongen_256_256_train.h5")
    (data_dir / "fashiongen" / "fashiongen_256_256_train.h5").unlink()
    with pytest.raises(FileNotFoundError, match="train split only"):
        mine_attributes(data_dir, min_count=2)
