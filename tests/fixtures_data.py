"""Shared data fixtures and helpers for tests (import what you use).

Cheatsheet::

    from fixtures_data import synthetic_world, fresh_world, build_fashion_dataset, collate

    def test_something(synthetic_world):          # session-wide, read only
        dataset = build_fashion_dataset("fashiongen", synthetic_world, "val", format="h5")
        batch = collate(dataset, 4)               # MMF SampleList through a DataLoader

    def test_that_edits_files(fresh_world):       # a private copy per test
        ...

build_fashion_dataset merges the builder's defaults.yaml with data_dir,
32-pixel images and any dotted overrides ("processors.image_processor.params.size"),
then goes through MMF's build_dataset (build + load + update_registry_for_model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

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
