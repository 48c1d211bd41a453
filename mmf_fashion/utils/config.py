"""Config blocks as plain dicts."""
from __future__ import annotations

from typing import Any, Dict


def plain_dict(config: Any) -> Dict[str, Any]:
    """A model_config block (OmegaConf node, mapping or None) as a resolved plain dict.

    The models read their YAML through .get() on this, so interpolations are
    resolved once here and a missing block reads as empty.
    """
    if config is None:
        return {}
    from omegaconf import OmegaConf  # MMF's config library; imported late like the callers did

    if OmegaConf.is_config(config):
        return dict(OmegaConf.to_container(config, resolve=True))
    return dict(config)
