"""The one pattern every registered model adapter follows: FashionModelBase.

Cheatsheet::

    from mmf_fashion.models.base import FashionModelBase
    from mmf_fashion.modules.my_family import MyNetworkMethods, MyOptions   # plain torch

    @registry.register_model("my_model")
    class MyModel(MyNetworkMethods, FashionModelBase):
        model_name = "my_model"            # -> configs/my_model.yaml, error messages
        options_class = MyOptions          # a dataclass: one field per top-level YAML key

        def build(self):
            self.build_network(self.build_options())    # options -> the network's modules

        def forward(self, sample_list):
            output = self.run(sample_list["image"], ...)   # the network's maths
            return self.with_loss_keys(sample_list, output)  # {"losses": {"train/<dataset>/itc": ...}}

What the base holds, so no adapter repeats it:
- ``config_path()``: ``models/configs/<model_name>.yaml``, the model's
  default config (MMF merges it under the user's config);
- ``loss_key(sample_list, name)``: MMF's ``<dataset_type>/<dataset_name>/<name>``;
- ``build_options()``: the family's options dataclass from the model config.
  The defaults live in the packaged YAML only (mmf_run merges it under the
  user's config; a key a config built by hand lacks takes the YAML's value,
  a free-form block it holds is taken whole); an unknown key (at any level of
  a typed section) or a field the YAML lacks is an error naming the model
  and the key;
- ``strip_prefix(state_dict)``: DistributedDataParallel's ``module.`` (or
  another) prefix removed (modules/state_dicts.py, the one place that does it).

The network's submodules stay direct children of the adapter (the network
class is a mixin of the adapter), so state_dict keys are the network's own.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any, Dict, Mapping, Optional

from mmf.models.base_model import BaseModel

from mmf_fashion.modules.state_dicts import strip_prefix

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# keys MMF itself puts in a model config
MMF_KEYS = ("model", "losses")


def loss_key(sample_list: Mapping[str, Any], name: str) -> str:
    """MMF's loss name "<dataset_type>/<dataset_name>/<name>" (train/fashiongen when the batch has none)."""
    dataset_type = sample_list.get("dataset_type", None) or "train"
    dataset_name = sample_list.get("dataset_name", None) or "fashiongen"
    return f"{dataset_type}/{dataset_name}/{name}"


def default_config_path(model_name: str) -> str:
    return os.path.join(CONFIG_DIR, f"{model_name}.yaml")


def packaged_defaults(model_name: str) -> Dict[str, Any]:
    """model_config.<model_name> of the packaged YAML, unresolved (interpolations stay strings)."""
    from omegaconf import OmegaConf

    loaded = OmegaConf.load(default_config_path(model_name))
    return OmegaConf.to_container(loaded.model_config[model_name], resolve=False)


def plain_config(config: Any) -> Dict[str, Any]:
    if config is None:
        return {}
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        try:
            return OmegaConf.to_container(config, resolve=True)
        except Exception:  # an interpolation its root cannot resolve (${env.*} outside a run): kept as written
            return OmegaConf.to_container(config, resolve=False)
    return dict(config)


def _flag(value: Any, where: str) -> bool:
    from mmf_fashion.modules.two_stream import config_flag

    return config_flag(value, where)


def _coerce(value: Any, hint: Any, where: str, defaults: Optional[Mapping[str, Any]] = None) -> Any:
    """value as the field's type: nested dataclasses are built, scalars converted."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _coerce(value, inner[0], where, defaults) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ValueError(
                f"{where} must be a mapping of {sorted(f.name for f in dataclasses.fields(hint))}, got {value!r}"
            )
        return options_from_mapping(hint, value, where, defaults=defaults)
    if value is None:
        return None
    if hint is bool:
        return _flag(value, where)
    if hint in (int, float, str):
        try:
            return hint(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where} must be a {hint.__name__}, got {value!r}") from error
    return value


def options_from_mapping(
    options_class, values: Mapping[str, Any], where: str, ignore=(), defaults: Optional[Mapping[str, Any]] = None
):
    """options_class(**values) with every field present, unknown keys refused, scalars converted.

    A key missing from ``values`` takes its value from ``defaults`` (the packaged YAML), also
    inside nested dataclass sections; a free-form block (a Dict field) that ``values`` holds is
    taken whole. ``where`` names the block in errors (``model_config.cots``)."""
    defaults = defaults if isinstance(defaults, Mapping) else {}
    hints = typing.get_type_hints(options_class)
    names = [field.name for field in dataclasses.fields(options_class)]
    unknown = sorted(key for key in values if key not in names and key not in ignore)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; known: {names}")
    missing = [name for name in names if name not in values and name not in defaults]
    if missing:
        raise ValueError(
            f"{where}: option(s) {missing} missing; every option needs a value in the model's default config"
        )
    return options_class(
        **{
            name: _coerce(
                values[name] if name in values else defaults[name], hints[name], f"{where}.{name}", defaults.get(name)
            )
            for name in names
        }
    )


class FashionModelBase(BaseModel):
    """MMF BaseModel plus the pieces every adapter of this package shares (module docstring)."""

    model_name: str = ""
    options_class: Optional[type] = None

    @classmethod
    def config_path(cls) -> str:
        if not cls.model_name:
            raise TypeError(f"{cls.__name__} sets no model_name (the registered name of its YAML)")
        return default_config_path(cls.model_name)

    @staticmethod
    def loss_key(sample_list: Mapping[str, Any], name: str) -> str:
        return loss_key(sample_list, name)

    def with_loss_keys(self, sample_list: Mapping[str, Any], output: Dict[str, Any]) -> Dict[str, Any]:
        """output with its "losses" {name: tensor} renamed to MMF's keys."""
        output["losses"] = {loss_key(sample_list, name): value for name, value in output.get("losses", {}).items()}
        return output

    def build_options(self):
        """The family's options dataclass (``options_class``) from the model config, the packaged
        YAML filling the keys it lacks."""
        if self.options_class is None:
            raise TypeError(f"{type(self).__name__} declares no options_class")
        return options_from_mapping(
            self.options_class,
            plain_config(self.config),
            f"model_config.{self.model_name}",
            ignore=MMF_KEYS,
            defaults=packaged_defaults(self.model_name),
        )

    strip_prefix = staticmethod(strip_prefix)
