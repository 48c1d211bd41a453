"""Which model, with which config, the index builds: resolved from a name, a
config file, overrides and a checkpoint. The model itself is built by
mmf_fashion.runtime.build_model_from_config, the one model builder.

Cheatsheet::

    from mmf_fashion.retrieval.model_io import resolve_model_config
    from mmf_fashion.runtime import build_model_from_config

    path = "save/align_itr/align_final.pth"
    config, info, state = resolve_model_config(checkpoint=path)        # name from the ckpt
    config, info, state = resolve_model_config("align", config="projects/align/configs/itr.yaml",
                                               overrides=["embed_dim=64"])
    model = build_model_from_config(config, checkpoint=path, checkpoint_state=state)  # read once
    info   # {"name": "align", "checkpoint": "/abs/...", "config": ..., "overrides": [...]}

The model config is merged, later wins: the model's config_path() defaults,
the checkpoint's saved config, the user's config file (its
model_config.<name>), then `overrides` (dotlist relative to the model
config). The name is the one given, else the checkpoint config's `model`,
else the user config's `model`, else its only model_config entry.
A checkpoint that needs full unpickling is refused unless allow_unsafe
(the user's --allow-unsafe-load) is True.
Imports MMF through the bridge (mmf_fashion.runtime.ensure_mmf()).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from mmf_fashion.retrieval.index import RetrievalError


def _read_checkpoint(path: str, allow_unsafe: bool) -> Any:
    from mmf_fashion.trainers.checkpointing import UnsafeCheckpointError, safe_torch_load

    if not Path(path).is_file():
        raise RetrievalError(f"{path}: checkpoint not found")
    try:
        return safe_torch_load(path, allow_unsafe=allow_unsafe)
    except UnsafeCheckpointError as error:  # the message names the file and the opt-in
        raise RetrievalError(str(error)) from error


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


def resolve_model_config(
    name: Optional[str] = None,
    *,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    checkpoint: Optional[str] = None,
    allow_unsafe: bool = False,
) -> Tuple[Any, Dict, Any]:
    """(config for build_model_from_config, info to rebuild it, the checkpoint
    as read or None) — see the module docstring."""
    from mmf_fashion.runtime import ensure_mmf

    ensure_mmf()
    from mmf.common.registry import registry
    from mmf.utils.configuration import load_yaml
    from omegaconf import OmegaConf

    state = _read_checkpoint(checkpoint, allow_unsafe) if checkpoint else None
    ckpt_config = state.get("config") if isinstance(state, dict) else None
    if ckpt_config is not None and not isinstance(ckpt_config, dict):
        ckpt_config = OmegaConf.to_container(ckpt_config, resolve=True)  # a DictConfig, from a trusted full unpickling
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
    built = OmegaConf.create({"model": name, "model_config": {name: model_config}})
    info = {
        "name": name,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "config": str(Path(config).resolve()) if config else None,
        "overrides": list(overrides),
    }
    return built, info, state
