"""The retrieval index (build, save, load, search), zero-shot classification and
the `index` CLI, with a tiny deterministic colour model implementing the
retrieval interface: an image is its mean colour, a text the sum of its
colour words, projected by a fixed orthonormal map (cosines are preserved)."""

import argparse
import json
import re

import pytest
import torch
from margins import ranking_margin
from torch import nn

from mmf_fashion.retrieval import (
    EmbeddingIndex,
    RetrievalError,
    build_index,
    embed_image_dataset,
    faiss_available,
    search,
    zero_shot_classify,
)
from mmf_fashion.retrieval.images import IMAGENET_MEAN, IMAGENET_STD, default_transform, load_images

COLOURS = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "magenta": (1, 0, 1),
    "yellow": (1, 1, 0),
    "cyan": (0, 1, 1),
    "white": (1, 1, 1),
    "black": (0, 0, 0),
}
WORDS = ["<unk>"] + list(COLOURS)


class TinyColourNet(nn.Module):
    """embed_images / embed_texts / embed_composed over an RGB space."""

    def __init__(self, dim=8):
        super().__init__()
        self.words = nn.EmbeddingBag(len(WORDS), 3, mode="sum")
        self.proj = nn.Linear(3, dim, bias=False)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.words.weight.zero_()
            for i, word in enumerate(WORDS[1:], start=1):
                self.words.weight[i] = torch.tensor(COLOURS[word], dtype=torch.float)
            q, _ = torch.linalg.qr(torch.randn(dim, 3, generator=g))
            self.proj.weight.copy_(q)  # orthonormal columns
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _embed(self, rgb):
        return nn.functional.normalize(self.proj(rgb - 0.5), dim=1)

    def image_rgb(self, images):
        return (images * self.std + self.mean).mean(dim=(2, 3))

    def text_rgb(self, texts):
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids += [WORDS.index(w) if w in WORDS else 0 for w in re.findall(r"[a-z]+", text.lower())] or [0]
        return self.words(torch.tensor(ids), torch.tensor(offsets)).clamp(0, 1)

    def embed_images(self, images):
        return self._embed(self.image_rgb(images))

    def embed_texts(self, texts):
        return self._embed(self.text_rgb(texts))

    def embed_composed(self, images, texts):
        return self._embed((self.image_rgb(images) + self.text_rgb(texts)).clamp(0, 1))


@pytest.fixture
def gallery_dir(tmp_path):
    from PIL import Image

    folder = tmp_path / "gallery"
    (folder / "sub").mkdir(parents=True)
    for name, rgb in COLOURS.items():
        target = folder / "sub" if name in ("cyan", "white") else folder
        Image.new("RGB", (40, 30), tuple(255 * c for c in rgb)).save(target / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def name_of(hit):
    return hit["path"].rsplit("/", 1)[-1].split(".")[0]


def backends():
    return ["torch", "faiss"] if faiss_available() else ["torch"]


# -------------------------------------------------------------------- index
@pytest.mark.parametrize("backend", backends())
def test_build_save_load_and_search_images(tmp_path, gallery_dir, backend):
    from mmf_fashion.retrieval.images import list_images

    model = TinyColourNet()
    paths = list_images(str(gallery_dir))
    assert len(paths) == len(COLOURS)  # recursive, images only
    index = build_index(
        model,
        paths,
        modality="image",
        batch_size=3,
        progress=False,
        image_size=32,
        backend=backend,
        model_info={"name": "tiny"},
    )
    assert index.backend == backend and len(index) == 8 and index.dim == 8
    index_path, meta_path = index.save(tmp_path / "out" / "colours.index")
    assert json.loads(meta_path.read_text())["backend"] == backend
    loaded = EmbeddingIndex.load(index_path)
    assert loaded.model_info == {"name": "tiny"} and loaded.items == index.items
    assert torch.allclose(loaded.embeddings, index.embeddings, atol=1e-6)

    for word in ("red", "cyan", "white"):  # text -> image
        hits = search(model, loaded, texts=[word], k=3)[0]
        assert name_of(hits[0]) == word and hits[0]["rank"] == 1
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    blue = load_images([str(gallery_dir / "blue.png")], default_transform(32))
    assert name_of(search(model, loaded, images=blue, k=1)[0][0]) == "blue"  # image -> image
    red = load_images([str(gallery_dir / "red.png")], default_transform(32))
    composed = search(model, loaded, images=red, texts=["add blue"], k=2)[0]  # TGIR
    assert name_of(composed[0]) == "magenta"
    assert len(search(model, loaded, texts=["red"], k=50)[0]) == 8  # k capped at the gallery


def test_backends_return_the_same_ranking(gallery_dir):
    if not faiss_available():
        pytest.skip("faiss does not import here")
    from mmf_fashion.retrieval.images import list_images

    model, paths = TinyColourNet(), list_images(str(gallery_dir))
    a = build_index(model, paths, backend="torch", progress=False, image_size=32)
    b = build_index(model, paths, backend="faiss", progress=False, image_size=32)
    queries = ["red", "green blue", "yellow", "dark"]
    ra, rb = search(model, a, texts=queries, k=8), search(model, b, texts=queries, k=8)
    for qa, qb in zip(ra, rb):
        # the two backends sum in another order: scores agree within float32 noise, and
        # the top hit agrees where its lead over the runner-up exceeds that noise
        assert [h["score"] for h in qb] == pytest.approx([h["score"] for h in qa], abs=1e-5)
        if ranking_margin(torch.tensor([h["score"] for h in qa[:2]])) > 1e-4:
            assert name_of(qa[0]) == name_of(qb[0])
    assert sum(ranking_margin(torch.tensor([h["score"] for h in q[:2]])) > 1e-4 for q in ra) >= 3


def test_text_gallery_and_image_queries(gallery_dir):
    model = TinyColourNet()
    captions = ["a red dress", "a green shirt", "blue jeans", "a yellow coat"]
    index = build_index(model, captions, modality="text", progress=False, backend="torch")
    green = load_images([str(gallery_dir / "green.png")], default_transform(32))
    hits = search(model, index, images=green, k=2)[0]
    assert hits[0]["text"] == "a green shirt" and hits[0]["row"] == 1


def test_index_errors_are_clear(tmp_path, gallery_dir):
    model = TinyColourNet()
    index = build_index(model, ["red", "blue"], modality="text", progress=False, backend="torch")
    path, meta = index.save(tmp_path / "t.index")
    with pytest.raises(RetrievalError, match="index dimension 8"):
        index.search_embeddings(torch.ones(1, 5), 1)
    with pytest.raises(RetrievalError, match="has no embed_composed"):
        search(nn.Linear(2, 2), index, images=torch.zeros(1, 3, 4, 4), texts=["x"])
    with pytest.raises(RetrievalError, match="one image per text"):
        search(model, index, images=torch.zeros(2, 3, 4, 4), texts=["x"])
    with pytest.raises(RetrievalError, match="gallery is empty"):
        build_index(model, [], modality="text")
    meta.unlink()
    with pytest.raises(RetrievalError, match="sidecar file is missing"):
        EmbeddingIndex.load(path)
    broken = tmp_path / "bad.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: cannot read the image"):
        build_index(model, [str(broken)], progress=False)


# ---------------------------------------------------------------- zero-shot
def test_zero_shot_classifies_colours_from_prompts(gallery_dir):
    model = TinyColourNet()
    names = ["red", "green", "blue", "yellow"]
    images = load_images([str(gallery_dir / f"{n}.png") for n in names], default_transform(32))
    preds, logits = zero_shot_classify(
        model.embed_texts, model.embed_images(images), names, templates=("a photo of a {} dress.", "{}")
    )
    assert preds.tolist() == [0, 1, 2, 3]
    assert logits.shape == (4, 4) and torch.allclose(logits.diagonal(), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match="has no"):
        zero_shot_classify(model.embed_texts, model.embed_images(images), names, templates=("plain",))


def test_embed_image_dataset_reads_ids_and_categories():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {
                "image": torch.full((3, 4, 4), i / 5.0),
                "target_id": torch.tensor(10 + i),
                "fashioniq_category": i % 2,
            }

    model = TinyColourNet()
    out = embed_image_dataset(
        model, Items(), id_key="target_id", category_key="fashioniq_category", batch_size=2, progress=False
    )
    assert out["id"].tolist() == [10, 11, 12, 13, 14] and out["category"].tolist() == [0, 1, 0, 1, 0]
    expected = model.embed_images(torch.stack([Items()[i]["image"] for i in range(5)]))
    assert torch.allclose(out["embedding"], expected)


# ----------------------------------------------------------------------- CLI
MODEL_NAME = "test_index_colour"


@pytest.fixture
def colour_model_registered(mmf_registry):
    from mmf.models.base_model import BaseModel

    if mmf_registry.get_model_class(MODEL_NAME) is None:

        class TinyColourModel(BaseModel):
            def build(self):
                self.net = TinyColourNet(dim=int(self.config.get("dim", 8)))

            def embed_images(self, images):
                return self.net.embed_images(images)

            def embed_texts(self, texts):
                return self.net.embed_texts(texts)

            def embed_composed(self, images, texts):
                return self.net.embed_composed(images, texts)

        mmf_registry.register_model(MODEL_NAME)(TinyColourModel)
    return MODEL_NAME


def run_cli(argv):
    from mmf_fashion.cli import index as index_cli

    parser = argparse.ArgumentParser(prog="mmf-fashion")
    index_cli.add_parser(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_build_and_search_with_a_checkpoint(tmp_path, gallery_dir, capsys, colour_model_registered):
    net = TinyColourNet(dim=6)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    red, blue = WORDS.index("red"), WORDS.index("blue")
    swapped = state["net.words.weight"].clone()
    swapped[[red, blue]] = swapped[[blue, red]]  # the trained model confuses red and blue
    state["net.words.weight"] = swapped
    ckpt = tmp_path / "model.pth"
    torch.save({"model": state, "config": {"model": MODEL_NAME, "model_config": {MODEL_NAME: {"dim": 6}}}}, ckpt)
    out = tmp_path / "idx" / "gallery.index"
    assert (
        run_cli(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--images",
                str(gallery_dir),
                "--out",
                str(out),
                "--batch-size",
                "3",
                "--image-size",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "indexed 8 images with 'test_index_colour' (6-d" in capsys.readouterr().out

    assert run_cli(["index", "search", "--index", str(out), "--text", "red", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert name_of(hits[0]) == "blue"  # the checkpoint's weights were loaded
    assert (
        run_cli(
            [
                "index",
                "search",
                "--index",
                str(out),
                "--image",
                str(gallery_dir / "red.png"),
                "--text",
                "add green",
                "-k",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "yellow.png" in printed and "query:" in printed


def test_cli_reports_user_errors(tmp_path, gallery_dir, capsys, colour_model_registered):
    out = str(tmp_path / "x.index")
    assert (
        run_cli(
            ["index", "build", "--model", "no_such_model", "--images", str(gallery_dir), "--out", out, "--no-progress"]
        )
        == 1
    )
    assert "no model registered as 'no_such_model'" in capsys.readouterr().err
    assert run_cli(["index", "build", "--model", MODEL_NAME, "--images", str(tmp_path / "none"), "--out", out]) == 1
    assert "neither a directory nor a list file" in capsys.readouterr().err
    bad_ckpt = tmp_path / "bad.pth"
    torch.save({"model": {"other.weight": torch.zeros(1)}}, bad_ckpt)
    assert (
        run_cli(
            [
                "index",
                "build",
                "--model",
                MODEL_NAME,
                "--checkpoint",
                str(bad_ckpt),
                "--texts",
                str(gallery_dir / "notes.txt"),
                "--out",
                out,
            ]
        )
        == 1
    )
    assert "does not fit model 'test_index_colour'" in capsys.readouterr().err
    assert run_cli(["index", "search", "--index", out]) == 1
    assert "give --text, --image" in capsys.readouterr().err


# ------------------------------------------------- galleries from a data dir
@pytest.fixture
def data_dir(tmp_path):
    """A tiny data directory in the published layouts, images of solid colours."""
    from PIL import Image

    root = tmp_path / "data"

    def image(path, colour):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), tuple(255 * c for c in COLOURS[colour])).save(path)

    products = [(11, "red", "red dress", 2), (12, "blue", "blue jeans", 1), (13, "yellow", "yellow coat", 1)]
    info = []
    for pid, colour, title, views in products:
        paths = [f"images/val/{pid}_{v}.jpg" for v in range(views)]
        for p in paths:
            image(root / "fashiongen" / p, colour)
        info.append({"images": paths, "id": pid, "title": title, "description": "soft cotton"})
    (root / "fashiongen" / "val_info.json").write_text(json.dumps(info))

    iq = root / "fashioniq"
    for asin, colour in (("B01", "green"), ("B02", "magenta"), ("B03", "cyan")):
        image(iq / "images" / f"{asin}.png", colour)
    (iq / "image_splits").mkdir(parents=True)
    (iq / "image_splits" / "split.dress.val.json").write_text(json.dumps(["B01", "B02", "B01"]))
    (iq / "image_splits" / "split.shirt.val.json").write_text(json.dumps(["B03"]))

    pv = root / "polyvore_outfits"
    for item, colour in (("901", "white"), ("902", "black"), ("903", "red")):
        image(pv / "images" / f"{item}.jpg", colour)
    (pv / "nondisjoint").mkdir(parents=True)
    outfits = [
        {"set_id": "s1", "items": [{"item_id": "901", "index": 1}, {"item_id": "902", "index": 2}]},
        {"set_id": "s2", "items": [{"item_id": "902", "index": 1}, {"item_id": "903", "index": 2}]},
    ]
    (pv / "nondisjoint" / "valid.json").write_text(json.dumps(outfits))
    return root


def test_dataset_galleries_follow_the_published_layouts(data_dir):
    from mmf_fashion.retrieval.catalogue import dataset_gallery

    items, records = dataset_gallery("fashiongen", "val", str(data_dir))
    assert [r["product_id"] for r in records] == [11, 11, 12, 13]  # every view
    assert items[1].endswith("fashiongen/images/val/11_1.jpg")
    texts, records = dataset_gallery("fashiongen", "val", str(data_dir), "text")
    assert texts[0] == "red dress. soft cotton" and records[0] == {"product_id": 11}
    items, records = dataset_gallery("fashioniq", "val", str(data_dir))
    assert [(r["asin"], r["category"]) for r in records] == [("B01", "dress"), ("B02", "dress"), ("B03", "shirt")]
    items, records = dataset_gallery("polyvore_ocir", "val", str(data_dir))  # val read as valid
    assert [r["item_id"] for r in records] == ["901", "902", "903"]
    (data_dir / "fashioniq" / "images" / "B02.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"split.dress.val.json, record 1: no image for asin B02"):
        dataset_gallery("fashioniq", "val", str(data_dir))
    with pytest.raises(ValueError, match="fashiongen only"):
        dataset_gallery("polyvore_ocir", "val", str(data_dir), "text")


def test_cli_indexes_a_dataset_split(tmp_path, data_dir, capsys, colour_model_registered):
    out = tmp_path / "fg.index"
    assert (
        run_cli(
            [
                "index",
                "build",
                "--model",
                MODEL_NAME,
                "--set",
                "dim=5",
                "--dataset",
                "fashiongen",
                "--split",
                "val",
                "--data-dir",
                str(data_dir),
                "--out",
                str(out),
                "--no-progress",
                "--backend",
                "torch",
            ]
        )
        == 0
    )
    assert "indexed 4 images" in capsys.readouterr().out
    assert run_cli(["index", "search", "--index", str(out), "--text", "yellow", "--top-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and hits[0]["product_id"] == 13 and hits[0]["path"].endswith("13_0.jpg")
    texts = tmp_path / "fg_text.index"
    assert (
        run_cli(
            [
                "index",
                "build",
                "--model",
                MODEL_NAME,
                "--dataset",
                "fashiongen",
                "--modality",
                "text",
                "--data-dir",
                str(data_dir),
                "--out",
                str(texts),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        run_cli(
            [
                "index",
                "search",
                "--index",
                str(texts),
                "--image",
                str(data_dir / "fashiongen" / "images" / "val" / "12_0.jpg"),
                "-k",
                "1",
            ]
        )
        == 0
    )
    assert "blue jeans. soft cotton" in capsys.readouterr().out


# ------------------------------- FashionGen galleries in either layout (format auto)
from fixtures_data import (  # noqa: E402  (helpers shared with test_builders)
    PUBLISHED_H5,
    keep_only_layout,
    write_published_fashiongen,
)


def test_cli_indexes_the_published_fashiongen_hdf5(tmp_path, capsys, colour_model_registered):
    """Only fashiongen_256_256_{train,validation}.h5: images are HDF5 rows, read in batches."""
    import h5py
    from PIL import Image

    data = tmp_path / "data"
    folder, _, pixels = write_published_fashiongen(data)
    with h5py.File(folder / PUBLISHED_H5["val"], "r") as handle:
        product_ids = handle["input_productID"][:, 0].tolist()
    images = tmp_path / "fg_images.index"
    common = [
        "--model",
        MODEL_NAME,
        "--dataset",
        "fashiongen",
        "--split",
        "val",
        "--data-dir",
        str(data),
        "--no-progress",
        "--backend",
        "torch",
    ]
    assert run_cli(["index", "build", *common, "--out", str(images), "--image-size", "24", "--batch-size", "2"]) == 0
    assert "indexed 3 images" in capsys.readouterr().out
    index = EmbeddingIndex.load(images)
    assert [item["product_id"] for item in index.items] == product_ids == [501, 501, 777]
    assert [item["row"] for item in index.items] == [0, 1, 2]
    assert index.items[2]["path"].endswith("fashiongen_256_256_validation.h5#row=2")
    # row i of the index holds the pixels of HDF5 row i
    transform = default_transform(24)
    expected = TinyColourNet().embed_images(torch.stack([transform(Image.fromarray(p)) for p in pixels]))
    assert torch.allclose(index.embeddings, expected, atol=1e-5)

    texts = tmp_path / "fg_texts.index"
    assert run_cli(["index", "build", *common, "--modality", "text", "--out", str(texts)]) == 0
    assert "indexed 2 texts" in capsys.readouterr().out
    index = EmbeddingIndex.load(texts)
    assert [item["product_id"] for item in index.items] == [501, 777]  # one text per product
    # the builder's reader: latin-1 fallback, title + ". " + description
    assert [item["text"] for item in index.items] == [
        "Robe mérinos. Laine légère, col en V",
        "Café shirt. Striped cotton poplin",
    ]
    assert run_cli(["index", "search", "--index", str(images), "--text", "red", "-k", "1", "--json"]) == 0
    [hit] = json.loads(capsys.readouterr().out)
    assert "#row=" in hit["path"] and hit["product_id"] in (501, 777)


def test_fashiongen_layouts_give_the_same_gallery(fresh_world, tmp_path, caplog, capsys, colour_model_registered):
    from mmf_fashion.retrieval.catalogue import dataset_gallery
    from mmf_fashion.retrieval.images import H5Image

    with caplog.at_level("WARNING", logger="mmf_fashion.retrieval.catalogue"):
        from_json, json_records = dataset_gallery("fashiongen", "val", str(fresh_world))
    [message] = [r.getMessage() for r in caplog.records if "both layouts" in r.getMessage()]
    assert "reading json" in message and "dataset_config.fashiongen.format=h5" in message
    from_h5, h5_records = dataset_gallery("fashiongen", "val", str(fresh_world), fashiongen_format="h5")
    assert all(isinstance(item, str) for item in from_json) and all(isinstance(i, H5Image) for i in from_h5)
    assert [r["product_id"] for r in json_records] == [r["product_id"] for r in h5_records]
    texts_json, _ = dataset_gallery("fashiongen", "val", str(fresh_world), "text")
    texts_h5, _ = dataset_gallery("fashiongen", "val", str(fresh_world), "text", fashiongen_format="h5")
    assert texts_json == texts_h5
    # the command line picks the other layout with --format
    out = tmp_path / "h5.index"
    assert (
        run_cli(
            [
                "index",
                "build",
                "--model",
                MODEL_NAME,
                "--dataset",
                "fashiongen",
                "--split",
                "val",
                "--data-dir",
                str(fresh_world),
                "--format",
                "h5",
                "--out",
                str(out),
                "--no-progress",
                "--backend",
                "torch",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    assert [item["path"] for item in EmbeddingIndex.load(out).items] == [str(i) for i in from_h5]

    keep_only_layout(fresh_world, "json")  # FashionViL's JSON alone still works
    out = tmp_path / "json.index"
    assert (
        run_cli(
            [
                "index",
                "build",
                "--model",
                MODEL_NAME,
                "--dataset",
                "fashiongen",
                "--split",
                "val",
                "--data-dir",
                str(fresh_world),
                "--out",
                str(out),
                "--no-progress",
                "--backend",
                "torch",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    assert f"indexed {len(from_json)} images" in capsys.readouterr().out
    index = EmbeddingIndex.load(out)
    assert [item["path"] for item in index.items] == from_json
    assert [item["product_id"] for item in index.items] == [r["product_id"] for r in json_records]


def test_no_fashiongen_layout_names_both(tmp_path, capsys, colour_model_registered):
    (tmp_path / "data" / "fashiongen").mkdir(parents=True)
    assert (
        run_cli(
            [
                "index",
                "build",
                "--model",
                MODEL_NAME,
                "--dataset",
                "fashiongen",
                "--split",
                "val",
                "--data-dir",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "x.index"),
                "--no-progress",
            ]
        )
        == 1
    )
    error = capsys.readouterr().err
    assert "looked in" in error and "either layout" in error
    assert "val_info.json" in error and "FashionViL's product JSON" in error
    assert "fashiongen_256_256_validation.h5" in error and "published HDF5" in error
    assert not (tmp_path / "x.index").exists()


def test_unreadable_hdf5_rows_name_the_file_and_row(tmp_path):
    from mmf_fashion.retrieval.images import H5Image

    folder, _, _ = write_published_fashiongen(tmp_path)
    path = str(folder / PUBLISHED_H5["val"])
    with pytest.raises(ValueError, match=r"validation.h5#row=9: cannot read the image"):
        load_images([H5Image(path, 9)], default_transform(24))
    with pytest.raises(ValueError, match=r"record row 0: field 'input_name'"):  # not a (H, W, 3) image
        load_images([H5Image(path, 0, key="input_name")], default_transform(24))


def test_polyvore_gallery_needs_the_published_outfits(data_dir):
    """The published files alone work (data_dir has no ocir_*.json); FashionViL's
    OCIR questions alone are not a split's item list: the error says what is missing."""
    from mmf_fashion.retrieval.catalogue import dataset_gallery

    pv = data_dir / "polyvore_outfits"
    (pv / "ocir_nondisjoint_test.json").write_text(json.dumps([{"question": ["901"], "blank": "902"}]))
    (pv / "polyvore_item_metadata.json").write_text(json.dumps({"901": {}, "902": {}}))
    with pytest.raises(FileNotFoundError) as error:
        dataset_gallery("polyvore_ocir", "test", str(data_dir))
    message = str(error.value)
    assert "nondisjoint/test.json not found" in message and "ocir_nondisjoint_test.json" in message
    assert "published Polyvore Outfits" in message
    items, records = dataset_gallery("polyvore_ocir", "val", str(data_dir))
    assert [r["item_id"] for r in records] == ["901", "902", "903"]


# ------------------------------------------- approximate kinds (faiss): ivf, ivf-pq, hnsw
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss does not import here (extra [index])")
KIND_CASES = [("flat", None), ("ivf", None), ("ivf", {"pq_m": 16}), ("hnsw", None)]
KIND_IDS = ["flat", "ivf", "ivf-pq", "hnsw"]


@pytest.fixture(scope="module")
def clustered():
    """2000 gallery + 200 held-out query unit vectors (32-d) from 40 gaussian clusters,
    and the exact top 10 of every query (torch, brute force)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(40, 32, generator=g), dim=1)
    labels = torch.randint(0, 40, (2200,), generator=g)
    points = torch.nn.functional.normalize(centres[labels] + 0.2 * torch.randn(2200, 32, generator=g), dim=1)
    gallery, queries = points[:2000].contiguous(), points[2000:].contiguous()
    exact = (queries @ gallery.T).topk(10, dim=1).indices
    items = [{"path": f"item_{i}.jpg"} for i in range(2000)]
    return gallery, queries, exact, items


def bound_of(kind, params):
    return 0.99 if kind == "flat" else 0.8 if (params or {}).get("pq_m") else 0.9


def recall_at_10(rows, exact):
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(rows, exact)) / exact.numel()


@needs_faiss
@pytest.mark.parametrize("kind,params", KIND_CASES, ids=KIND_IDS)
def test_every_kind_finds_the_exact_neighbours(clustered, kind, params):
    gallery, queries, exact, items = clustered
    index = EmbeddingIndex(gallery, items, modality="image", kind=kind, params=params, backend="faiss")
    assert index.kind == kind and len(index) == 2000
    _, rows = index.search_embeddings(queries, 10)
    # approximate: recall against the exact top 10, never rank equality (measured: flat 1.0,
    # ivf 0.98, ivf-pq 0.91 (the codes approximate the scores), hnsw 1.0)
    assert recall_at_10(rows, exact) >= bound_of(kind, params)


def test_default_parameters_follow_the_gallery_size():
    from mmf_fashion.retrieval.index import default_params

    assert default_params("ivf", 2000, 32) == {
        "nlist": 51,
        "nprobe": 7,
        "pq_m": None,
        "pq_bits": 8,
        "seed": 0,
        "train_size": 2000,
    }  # 4 sqrt(N) = 179 > N / 39 = 51
    big = default_params("ivf", 1_000_000, 256)
    assert (big["nlist"], big["nprobe"], big["train_size"]) == (4000, 63, 256_000)
    assert default_params("ivf", 1_000_000, 256, {"pq_m": 32, "nprobe": 10})["nprobe"] == 10
    assert default_params("hnsw", 1000, 8) == {"M": 32, "ef_construction": 80, "ef_search": 64}
    assert default_params("flat", 10, 8) == {}
    with pytest.raises(RetrievalError, match=r"pq_m=24 does not divide the dimension 256"):
        default_params("ivf", 1000, 256, {"pq_m": 24})
    with pytest.raises(RetrievalError, match=r"unknown parameter\(s\) \['nprobe'\]"):
        default_params("hnsw", 1000, 8, {"nprobe": 3})
    with pytest.raises(RetrievalError, match="nlist must be a positive integer"):
        default_params("ivf", 1000, 8, {"nlist": 0})


@needs_faiss
def test_nprobe_and_ef_are_per_search(clustered):
    gallery, queries, exact, items = clustered
    ivf = EmbeddingIndex(gallery, items, modality="image", kind="ivf", params={"nprobe": 1})
    _, narrow = ivf.search_embeddings(queries, 10)
    _, full = ivf.search_embeddings(queries, 10, nprobe=ivf.params["nlist"])  # every list: exhaustive
    assert recall_at_10(full, exact) >= 0.99 and recall_at_10(full, exact) >= recall_at_10(narrow, exact)
    assert ivf.params["nprobe"] == 1  # a search's nprobe is not kept
    hnsw = EmbeddingIndex(gallery, items, modality="image", kind="hnsw", params={"ef_search": 10})
    assert recall_at_10(hnsw.search_embeddings(queries, 10, ef=200)[1], exact) >= 0.99
    with pytest.raises(RetrievalError, match="ef applies to hnsw indexes; this index is ivf"):
        ivf.search_embeddings(queries, 10, ef=5)
    with pytest.raises(RetrievalError, match="nprobe applies to ivf indexes"):
        hnsw.search_embeddings(queries, 10, nprobe=5)


@needs_faiss
@pytest.mark.parametrize("kind,params", KIND_CASES, ids=KIND_IDS)
def test_save_and_load_keep_kind_and_parameters(tmp_path, clustered, kind, params):
    gallery, queries, exact, items = clustered
    index = EmbeddingIndex(
        gallery, items, modality="image", kind=kind, params=params, model_info={"name": "m"}, queries=["text"]
    )
    path, meta_path = index.save(tmp_path / f"{kind}.index")
    meta = json.loads(meta_path.read_text())
    assert meta["kind"] == kind and meta["params"] == index.params and meta["queries"] == ["text"]
    if kind == "ivf":
        assert meta["params"]["nlist"] == 51 and meta["params"]["trained_on"] == 2000
        assert meta["params"]["pq_m"] == (params or {}).get("pq_m")
    if kind == "hnsw":
        assert (meta["params"]["M"], meta["params"]["ef_search"]) == (32, 64)
    loaded = EmbeddingIndex.load(path)
    assert (loaded.kind, loaded.params, loaded.queries, loaded.items) == (kind, index.params, ["text"], items)
    _, before = index.search_embeddings(queries, 10)
    _, after = loaded.search_embeddings(queries, 10)
    assert recall_at_10(after, before) >= 0.99
    if not (params or {}).get("pq_m"):  # the stored vectors come back (PQ keeps codes only)
        assert torch.allclose(loaded.embeddings, gallery, atol=1e-5)


@needs_faiss
def test_sidecar_and_index_file_must_agree(tmp_path, clustered):
    gallery, _, _, items = clustered
    path, meta_path = EmbeddingIndex(gallery[:100], items[:100], modality="image", kind="hnsw").save(
        tmp_path / "h.index"
    )
    meta = json.loads(meta_path.read_text())
    meta["kind"] = "ivf"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RetrievalError, match=r"holds a faiss IndexHNSWFlat, but h.index.json says kind 'ivf'"):
        EmbeddingIndex.load(path)
    for field in ("kind", "params", "queries", "version"):  # a version 1 sidecar: flat
        meta.pop(field)
    flat_path, flat_meta = EmbeddingIndex(gallery[:100], items[:100], modality="image").save(tmp_path / "f.index")
    flat_meta.write_text(json.dumps({**meta, "backend": "faiss"}))
    old = EmbeddingIndex.load(flat_path)
    assert old.kind == "flat" and old.queries is None and len(old) == 100
    with pytest.raises(RetrievalError, match="kind 'hnsw' needs the faiss backend"):
        EmbeddingIndex(gallery[:10], items[:10], modality="image", kind="hnsw", backend="torch")
    with pytest.raises(RetrievalError, match=r"20 items cannot train 51 lists.*--nlist"):
        EmbeddingIndex(gallery[:20], items[:20], modality="image", kind="ivf", params={"nlist": 51})


@pytest.mark.parametrize("kind,params", KIND_CASES, ids=KIND_IDS)
def test_added_items_are_searchable_and_aligned(tmp_path, clustered, kind, params):
    if kind != "flat" and not faiss_available():
        pytest.skip("faiss does not import here")
    gallery, queries, exact, items = clustered
    backend = "faiss" if faiss_available() else "torch"
    index = EmbeddingIndex(gallery[:1500], items[:1500], modality="image", kind=kind, params=params, backend=backend)
    trained = dict(index.params)
    index.add(gallery[1500:], items[1500:])
    assert len(index) == 2000 and index.items == items and index.params == trained  # lists not retrained
    path, _ = index.save(tmp_path / "grown.index")
    loaded = EmbeddingIndex.load(path)
    assert loaded.items == items
    _, rows = loaded.search_embeddings(queries, 10)
    assert recall_at_10(rows, exact) >= bound_of(kind, params)
    # an added item is found by its own embedding, at its own row with its own name
    added = gallery[1500:1600]
    scores, rows = loaded.search_embeddings(added, 2, **({"nprobe": trained["nlist"]} if kind == "ivf" else {}))
    if not (params or {}).get("pq_m"):  # PQ scores are approximate: checked by recall above
        lead = scores[:, 0] - scores[:, 1]
        clear = lead > 1e-4  # top 1 compared only where it leads the runner-up by more than float noise
        assert clear.sum() >= 90
        assert (rows[clear, 0] == torch.arange(1500, 1600)[clear]).all()
        assert all(loaded.items[int(r)]["path"] == f"item_{int(r)}.jpg" for r in rows[:, 0])
    with pytest.raises(RetrievalError, match=r"add: item 1 'item_3.jpg' is already in row 3 of the index"):
        loaded.add(gallery[:2], [{"path": "new.jpg"}, {"path": "item_3.jpg"}])
    with pytest.raises(RetrievalError, match=r"item 1 'x.jpg' is already in the new items"):
        loaded.add(gallery[:2], [{"path": "x.jpg"}, {"path": "x.jpg"}])
    with pytest.raises(RetrievalError, match="embeddings of dimension 5, the index holds 32"):
        loaded.add(torch.ones(1, 5), [{"path": "y.jpg"}])
    assert len(loaded) == 2000


def test_query_of_the_wrong_kind_and_missing_images(tmp_path, gallery_dir):
    from mmf_fashion.retrieval.index import add_items

    model = TinyColourNet()
    index = build_index(model, ["red", "blue"], modality="text", progress=False, backend="torch", queries=["image"])
    with pytest.raises(
        RetrievalError,
        match=r"holds texts and answers image queries .*a text query was given: "
        r"query with --image, or rebuild the index with --queries",
    ):
        search(model, index, texts=["red"])
    assert build_index(model, ["red"], modality="text", progress=False, backend="torch").queries == [
        "text",
        "image",
        "composed",
    ]  # default: what the model embeds
    with pytest.raises(RetrievalError, match="the index holds texts; images cannot be added"):
        add_items(model, index, [str(gallery_dir / "red.png")], modality="image")
    with pytest.raises(RetrievalError, match=r"add: item 0 'red' is already in the index"):
        add_items(model, index, ["red", "green"], progress=False)
    missing = str(tmp_path / "gone.png")
    with pytest.raises(RetrievalError, match=r"gallery item 1: image .*gone.png not found"):
        build_index(model, [str(gallery_dir / "red.png"), missing], progress=False)


def test_model_fingerprints():
    from mmf_fashion.retrieval.index import check_same_model, model_fingerprint, state_dict_sha256

    a, b = TinyColourNet(), TinyColourNet()
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.proj.weight[0, 0] += 1e-3
    fa, fb = model_fingerprint(a), model_fingerprint(b)
    assert fa["hash_of"] == "state dict" and fa != fb
    check_same_model({"name": "m", **fa}, {"name": "m", **fa})
    check_same_model({}, {"name": "m", **fb})  # an index without a recorded model: nothing to compare
    with pytest.raises(RetrievalError) as error:
        check_same_model({"name": "m", **fa}, {"name": "m", **fb})
    assert fa["checkpoint_sha256"] in str(error.value) and fb["checkpoint_sha256"] in str(error.value)


def _colour_checkpoint(path, swap=False):
    net = TinyColourNet(dim=6)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    if swap:
        red, blue = WORDS.index("red"), WORDS.index("blue")
        swapped = state["net.words.weight"].clone()
        swapped[[red, blue]] = swapped[[blue, red]]
        state["net.words.weight"] = swapped
    torch.save({"model": state, "config": {"model": MODEL_NAME, "model_config": {MODEL_NAME: {"dim": 6}}}}, path)
    return path


@needs_faiss
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_cli_approximate_index_add_and_checks(tmp_path, gallery_dir, capsys, colour_model_registered, kind):
    from mmf_fashion.retrieval.index import file_sha256

    ckpt = _colour_checkpoint(tmp_path / "a.pth")
    first = tmp_path / "first"
    first.mkdir()
    later = []
    for image in sorted(gallery_dir.rglob("*.png")):
        target = first if image.stem in ("red", "green", "blue", "black") else tmp_path
        (target / image.name).write_bytes(image.read_bytes())
        if target == tmp_path:
            later.append(str(target / image.name))
    out = tmp_path / "idx" / f"{kind}.index"
    tuning = ["--nprobe", "1"] if kind == "ivf" else ["--ef", "16", "--hnsw-m", "8"]
    assert (
        run_cli(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--images",
                str(first),
                "--out",
                str(out),
                "--image-size",
                "32",
                "--no-progress",
                "--kind",
                kind,
                *tuning,
            ]
        )
        == 0
    )
    assert f"indexed 4 images with 'test_index_colour' (6-d, {kind} (faiss" in capsys.readouterr().out
    meta = json.loads((tmp_path / "idx" / f"{kind}.index.json").read_text())
    assert meta["kind"] == kind and meta["model"]["checkpoint_sha256"] == file_sha256(ckpt)
    assert meta["model"]["hash_of"] == "checkpoint file" and meta["model"]["name"] == MODEL_NAME
    assert meta["params"]["nprobe" if kind == "ivf" else "ef_search"] == (1 if kind == "ivf" else 16)

    listing = tmp_path / "new.txt"
    listing.write_text("\n".join(later))
    assert run_cli(["index", "add", "--index", str(out), "--images", str(listing), "--no-progress"]) == 0
    assert "added 4 images to 4" in capsys.readouterr().out
    tuning = ["--nprobe", "1"] if kind == "ivf" else ["--ef", "32"]
    assert run_cli(["index", "search", "--index", str(out), "--text", "white", "-k", "8", "--json", *tuning]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 8 and name_of(hits[0]) == "white"  # an added item; white leads by far (cosine 1)
    assert {name_of(h) for h in hits} == set(COLOURS)
    # adding an item twice, or texts to an image index, is refused
    assert run_cli(["index", "add", "--index", str(out), "--images", str(listing), "--no-progress"]) == 1
    assert "is already in the index" in capsys.readouterr().err
    (tmp_path / "t.txt").write_text("red dress\n")
    assert run_cli(["index", "add", "--index", str(out), "--texts", str(tmp_path / "t.txt")]) == 1
    assert "holds images; 1 texts cannot be added to it (give --images" in capsys.readouterr().err
    # another checkpoint at search time: both hashes named
    other = _colour_checkpoint(tmp_path / "b.pth", swap=True)
    assert run_cli(["index", "search", "--index", str(out), "--text", "red", "--checkpoint", str(other)]) == 1
    error = capsys.readouterr().err
    assert file_sha256(ckpt) in error and file_sha256(other) in error and "rebuild the index" in error
    assert run_cli(["index", "search", "--index", str(out), "--image", str(tmp_path / "none.png")]) == 1
    assert "--image" in (error := capsys.readouterr().err) and "none.png: query image not found" in error
    flag = "--ef" if kind == "ivf" else "--nprobe"
    assert run_cli(["index", "search", "--index", str(out), "--text", "red", flag, "4"]) == 1
    assert "applies to" in capsys.readouterr().err


def test_cli_checks_the_query_kind_and_the_checkpoint(tmp_path, gallery_dir, capsys, colour_model_registered):
    ckpt = _colour_checkpoint(tmp_path / "a.pth")
    out = tmp_path / "t.index"
    captions = tmp_path / "captions.txt"
    captions.write_text("a red dress\na blue shirt\n")
    assert (
        run_cli(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--texts",
                str(captions),
                "--out",
                str(out),
                "--no-progress",
                "--backend",
                "torch",
                "--queries",
                "image",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert run_cli(["index", "search", "--index", str(out), "--text", "red"]) == 1
    assert "holds texts and answers image queries" in capsys.readouterr().err
    assert run_cli(["index", "search", "--index", str(out), "--image", str(gallery_dir / "blue.png"), "-k", "1"]) == 0
    assert "a blue shirt" in capsys.readouterr().out
    _colour_checkpoint(ckpt, swap=True)  # the checkpoint changed since the build
    assert run_cli(["index", "search", "--index", str(out), "--image", str(gallery_dir / "blue.png")]) == 1
    assert "checkpoint file sha256" in capsys.readouterr().err
    assert (
        run_cli(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--texts",
                str(captions),
                "--out",
                str(out),
                "--kind",
                "hnsw",
                "--nprobe",
                "3",
            ]
        )
        == 1
    )
    assert "--nprobe applies to --kind ivf, not --kind hnsw" in capsys.readouterr().err
