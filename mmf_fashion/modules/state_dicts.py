"""State-dict key helpers. Plain torch.

Cheatsheet::

    from mmf_fashion.modules.state_dicts import strip_prefix
    weights = strip_prefix(checkpoint["model"])              # DistributedDataParallel's "module." gone
    vqvae = strip_prefix(weights, "vqvae.")                  # the fashion_vqvae model's own prefix gone

The one place that removes a key prefix (torch's consume_prefix_in_state_dict_if_present).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> Dict[str, Any]:
    """A copy of state_dict with `prefix` removed from the keys that start with it (others unchanged)."""
    stripped = dict(state_dict)
    consume_prefix_in_state_dict_if_present(stripped, prefix)
    return stripped
