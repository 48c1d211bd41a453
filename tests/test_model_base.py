"""The one adapter pattern (mmf_fashion/models/base.py): loss keys, options, prefixes, config paths."""

import dataclasses
import os
from typing import Dict, Optional

import pytest
import torch

import mmf_fashion.plugin
from mmf_fashion.models.base import FashionModelBase, loss_key, options_from_mapping
from mmf_fashion.modules.state_dicts import strip_prefix


def test_every_registered_model_follows_the_pattern(mmf_registry):
    for name in sorted(mmf_fashion.plugin.ours().get("model", {})):
        model_class = mmf_registry.get_model_class(name)
        assert issubclass(model_class, FashionModelBase), f"{name} does not extend FashionModelBase"
        assert model_class.model_name == name
        assert os.path.isfile(model_class.config_path()), model_class.config_path()


def test_loss_key_reads_the_batch_names(mmf_registry):
    from mmf.common.sample import SampleList

    batch = SampleList()
    batch.add_field("image", torch.zeros(1))
    batch.dataset_type, batch.dataset_name = "val", "fashioniq"
    assert loss_key(batch, "itc") == "val/fashioniq/itc"
    assert loss_key({}, "itc") == "train/fashiongen/itc"  # a plain mapping without names


def test_strip_prefix_removes_only_the_leading_prefix():
    state = {"module.a.weight": 1, "b": 2, "module.c.module.d": 3}
    assert strip_prefix(state) == {"a.weight": 1, "b": 2, "c.module.d": 3}
    assert "module.a.weight" in state  # the input is left alone
    assert strip_prefix({"vqvae.x": 1}, "vqvae.") == {"x": 1}


@dataclasses.dataclass
class Inner:
    enabled: bool
    size: int


@dataclasses.dataclass
class Outer:
    name: str
    scale: Optional[float]
    inner: Inner
    extra: Dict[str, int]


def test_options_are_typed_and_unknown_or_missing_keys_are_named():
    options = options_from_mapping(
        Outer, {"name": "x", "scale": "2", "inner": {"enabled": "false", "size": "3"}, "extra": {"a": 1}}, "m.x"
    )
    assert options == Outer("x", 2.0, Inner(False, 3), {"a": 1})
    with pytest.raises(ValueError, match=r"m.x.inner: unknown option\(s\) \['sise'\]"):
        options_from_mapping(
            Outer, {"name": "x", "scale": None, "inner": {"enabled": True, "size": 1, "sise": 2}, "extra": {}}, "m.x"
        )
    with pytest.raises(ValueError, match=r"m.x: option\(s\) \['inner'\] missing"):
        options_from_mapping(Outer, {"name": "x", "scale": None, "extra": {}}, "m.x")
    with pytest.raises(ValueError, match="m.x.inner.enabled must be true or false"):
        options_from_mapping(
            Outer, {"name": "x", "scale": None, "inner": {"enabled": "maybe", "size": 1}, "extra": {}}, "m.x"
        )


def test_a_typo_in_a_model_config_names_the_model_and_the_key(mmf_registry):
    from omegaconf import OmegaConf

    for name, typo in (("cots", {"queue_sise": 8}), ("align", {"embed_dims": 8}), ("fashion_vqvae", {"decai": 0.9})):
        model = mmf_registry.get_model_class(name)(OmegaConf.create(typo))
        with pytest.raises(ValueError, match=rf"model_config.{name}: unknown option\(s\) \['{list(typo)[0]}'\]"):
            model.build()


def test_options_default_to_the_packaged_yaml(mmf_registry):
    """Keys a hand-built config lacks come from the model's YAML; a free-form block it holds is kept whole."""
    from omegaconf import OmegaConf

    config = {"queue_size": 8, "model": "cots", "filter": {"size": 16}, "text_encoder": {"name": "tiny"}}
    options = mmf_registry.get_model_class("cots")(OmegaConf.create(config)).build_options()
    assert options.queue_size == 8 and options.filter.size == 16 and options.filter.k == 1.5
    assert options.loss_weights.cmvm == 1.0 and options.text_encoder == {"name": "tiny"}
