"""Build a registered MMF model for the index, from its name, configs and a checkpoint.

Cheatsheet::

    from mmf_fashion.retrieval.model_io import load_model

    model, info = load_model(checkpoint="save/align_itr/align_final.pth")   # name from the ckpt
    model, info = load_model("align", config="projects/align/configs/itr.yaml",
                             overrides=["embed_dim=64"], device="cpu")
    info   # {"name": "align", "checkpoint": "/abs/...", "config": ..., "overrides": [...]}

The model config is merged, later wins: the model's config_path() defaults,
the checkpoint's saved config, the user's config file (its
model_config.<name>), then `overrides` (dotlist relative to the model
config). The name is the one given, else the checkpoint config's `model`,
else the user config's `model`, else its only model_config entry.
Imports MMF through the bridge (mmf_fashion.plugin.register_all()).
"""
from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from mmf_fashion.retrieval.index import RetrievalError


def _load_checkpoint(path: str) -> Dict:
    if not Path(path).is_file():
        raise RetrievalError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError):
        # MMF checkpoints may pickle config objects: the user's own file, so full load
        return torch.load(path, map_location="cpu", weights_only=False)


def _model_section(config, name: str, where: str):
    from omegaconf import OmegaConf

    section = OmegaConf.select(OmegaConf.create(config), f"model_config.{name}") if config else None
    if config and "model_config" in config and section is None:
        raise RetrievalError(f"{where}: model_config has no '{name}' entry")
    return section


def _resolve_name(name, checkpoint_config, user_config, registry) -> str:
    candidates = [name]
    for config in (checkpoint_config, user_config):
        if config:
            candidates.append(config.get("model"))
    if user_config and "model_config" in user_config and len(user_config["model_config"]) == 1:
        candidates.append(next(iter(user_config["model_config"])))
    for candidate in candidates:
        if candidate:
            if registry.get_model_class(candidate) is None:
                known = sorted(registry.mapping["model_name_mapping"])
                raise RetrievalError(f"no model registered as '{candidate}'; registered: {known}")
            return str(candidate)
    raise RetrievalError("which model? give --model, or a checkpoint/config that names it")


class _StderrWriter:
    """Stands in for MMF's Logger, which would take over sys.stdout and write
    log files under ./save: a command line tool only needs messages."""

    def write(self, message, level="info", *args, **kwargs):
        if level not in ("debug",):
            print(f"{level}: {message}", file=sys.stderr)


def _ensure_mmf_globals(registry) -> None:
    # some models read the global config or writer while they build
    if registry.get("config", no_warning=True) is None:
        from mmf.utils.configuration import Configuration

        registry.register("config", Configuration().get_config())
    if registry.get("writer", no_warning=True) is None:
        registry.register("writer", _StderrWriter())


def load_model(
    name: Optional[str] = None,
    *,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    checkpoint: Optional[str] = None,
    device: str = "cpu",
) -> Tuple[torch.nn.Module, Dict]:
    """(model in eval mode on `device`, info to rebuild it) — see the module docstring."""
    import mmf_fashion.plugin

    mmf_fashion.plugin.register_all()
    from mmf.common.registry import registry
    from mmf.utils.configuration import load_yaml
    from omegaconf import OmegaConf

    ckpt = _load_checkpoint(checkpoint) if checkpoint else None
    ckpt_config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if ckpt_config is not None and not isinstance(ckpt_config, dict):
        ckpt_config = OmegaConf.to_container(ckpt_config, resolve=True)
    user_config = None
    if config:
        if not Path(config).is_file():
            raise RetrievalError(f"{config}: config file not found")
        user_config = OmegaConf.to_container(load_yaml(config), resolve=False)
    name = _resolve_name(name, ckpt_config, user_config, registry)
    model_cls = registry.get_model_class(name)

    layers = []
    default_path = model_cls.config_path() if hasattr(model_cls, "config_path") else None
    if default_path:
        layers.append(_model_section(OmegaConf.to_container(load_yaml(default_path)), name, default_path))
    layers.append(_model_section(ckpt_config, name, f"{checkpoint} (saved config)"))
    layers.append(_model_section(user_config, name, str(config)))
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    except Exception as error:  # omegaconf raises several grammar errors
        raise RetrievalError(f"bad override in {list(overrides)}: {error}") from error
    model_config = OmegaConf.merge(*[OmegaConf.create(layer) for layer in layers if layer is not None])

    _ensure_mmf_globals(registry)
    model = model_cls(model_config)
    if hasattr(model, "build"):
        model.build()
    if ckpt is not None:
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
        if not isinstance(state, dict):
            raise RetrievalError(f"{checkpoint}: no state dict (expected a 'model' entry or a state dict)")
        state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if missing or unexpected:
            raise RetrievalError(
                f"{checkpoint} does not fit model '{name}': missing {missing[:5]} "
                f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})"
            )
    model.to(device).eval()
    info = {
        "name": name,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "config": str(Path(config).resolve()) if config else None,
        "overrides": list(overrides),
    }
    return model, info
