"""Shared data fixtures and helpers for tests. conftest.py loads this module as a
pytest plugin, so the fixtures need no import; import the helpers you use.

Cheatsheet::

    from fixtures_data import build_fashion_dataset, collate

    def test_something(synthetic_world):          # session-wide, read only
        dataset = build_fashion_dataset("fashiongen", synthetic_world, "val", format="h5")
        batch = collate(dataset, 4)               # MMF SampleList through a DataLoader

    def test_that_edits_files(fresh_world):       # a private copy per test
        ...

write_h5(path, rows) writes a FashionGen HDF5 file by hand with the published
keys (hand_built_rows() gives 3 rows of 2 products with latin-1 text);
h5_overrides(path) points the fashiongen builder at it;
write_published_fashiongen(data_dir) writes them under the published names.
keep_only_layout(world, "h5" | "json") removes the other FashionGen layout
from a world that a test may modify (fresh_world).

build_fashion_dataset merges the builder's defaults.yaml with data_dir,
32-pixel images and any dotted overrides ("processors.image_processor.params.size"),
then goes through MMF's build_dataset (build + load + update_registry_for_model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory, mmf_registry) -> Path:
    """A tiny synthetic world (40 products, 32 px) shared by the session: do not modify."""
    from mmf_fashion.data.synth import make_fixture

    return Path(make_fixture(tmp_path_factory.mktemp("world"), products=40, image_size=32, seed=0))


@pytest.fixture
def fresh_world(tmp_path, mmf_registry) -> Path:
    """A private copy of the tiny world that a test may break."""
    from mmf_fashion.data.synth import make_fixture

    return Path(make_fixture(tmp_path, products=40, image_size=32, seed=0))


def dataset_config(name: str, data_dir: Any, image_size: int = 32, **overrides):
    """The builder's defaults for ``name`` with data_dir, image size and
    overrides (keys may be dotted paths) applied; struct mode like MMF's."""
    from mmf.common.registry import registry
    from mmf.utils.configuration import load_yaml_with_defaults
    from omegaconf import OmegaConf

    builder = registry.get_builder_class(name)
    assert builder is not None, f"no builder registered as {name}"
    config = OmegaConf.select(load_yaml_with_defaults(builder.config_path()), f"dataset_config.{name}")
    config.data_dir = str(data_dir)
    for key in ("image_processor",):
        if key in config.processors:
            config.processors[key].params.size = image_size
    for key, value in overrides.items():
        OmegaConf.update(config, key, value, merge=False)
    OmegaConf.set_struct(config, True)
    return config


def build_fashion_dataset(name: str, data_dir: Any, dataset_type: str = "train", image_size: int = 32, **overrides):
    """MMF's build_dataset on the builder's defaults merged with the fixture."""
    from mmf.utils.build import build_dataset

    return build_dataset(name, dataset_config(name, data_dir, image_size, **overrides), dataset_type)


def collate(dataset, batch_size: int = 4, num_workers: int = 0, shuffle: bool = False):
    """The first batch of a DataLoader with MMF's BatchCollator."""
    from mmf.common.batch_collator import BatchCollator

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=BatchCollator(dataset.dataset_name, dataset.dataset_type),
    )
    return next(iter(loader))


# --- a hand-built FashionGen HDF5 file with the published key names -------------


def write_h5(path, rows, drop=()):
    """rows: (product_id, name bytes, description bytes, category, subcategory, pixels)."""

    def column(values):
        width = max(len(v) for v in values)
        return np.array(values, dtype=f"S{width}").reshape(-1, 1)

    with h5py.File(path, "w") as handle:
        data = {
            "input_image": np.stack([r[5] for r in rows]).astype(np.uint8),
            "input_productID": np.array([r[0] for r in rows], dtype=np.int32).reshape(-1, 1),
            "input_name": column([r[1] for r in rows]),
            "input_description": column([r[2] for r in rows]),
            "input_concat_description": column([r[1] + b" " + r[2] for r in rows]),
            "input_category": column([r[3] for r in rows]),
            "input_subcategory": column([r[4] for r in rows]),
            "input_pose": column([b"id_gridfs_%d" % i for i in range(len(rows))]),
            "input_gender": column([b"WOMEN"] * len(rows)),
            "input_msrpUSD": np.full((len(rows), 1), 120.0, dtype=np.float32),
            "index": np.arange(len(rows)).reshape(-1, 1),
        }
        for key, value in data.items():
            if key not in drop:
                handle.create_dataset(key, data=value)


def hand_built_rows():
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(3)]
    return [
        (
            501,
            "Robe mérinos".encode("latin-1"),
            "Laine légère, col en V".encode("latin-1"),
            b"DRESSES",
            b"MAXI DRESS",
            pixels[0],
        ),
        (
            501,
            "Robe mérinos".encode("latin-1"),
            "Laine légère, col en V".encode("latin-1"),
            b"DRESSES",
            b"MAXI DRESS",
            pixels[1],
        ),
        (777, "Café shirt".encode("utf-8"), b"Striped cotton poplin", b"TOPS", b"SHIRT", pixels[2]),
    ], pixels


def h5_overrides(path):
    return {"format": "h5", "files.h5": {"train": str(path.name), "val": str(path.name), "test": str(path.name)}}


PUBLISHED_H5 = {"train": "fashiongen_256_256_train.h5", "val": "fashiongen_256_256_validation.h5"}
JSON_INFO = ("train_info.json", "val_info.json", "test_info.json")


def write_published_fashiongen(data_dir):
    """<data_dir>/fashiongen/fashiongen_256_256_{train,validation}.h5 from
    hand_built_rows(), nothing else: what a user of the published files has."""
    folder = Path(data_dir) / "fashiongen"
    folder.mkdir(parents=True, exist_ok=True)
    rows, pixels = hand_built_rows()
    for name in PUBLISHED_H5.values():
        write_h5(folder / name, rows)
    return folder, rows, pixels


def keep_only_layout(world, layout):
    """Delete the FashionGen files of the other layout (h5 keeps the HDF5, json the *_info.json)."""
    folder = Path(world) / "fashiongen"
    doomed = JSON_INFO if layout == "h5" else tuple(PUBLISHED_H5.values())
    for name in doomed:
        (folder / name).unlink()
    return folder
