"""The official FashionViL checkpoints (MMF fork of the FashionViL / FAME-ViL authors) -> our `fashionvil`.

Cheatsheet::

    from mmf_fashion.convert import fashionvil
    fashionvil.is_official(state)                      # key names of the official layout?
    weights, report = fashionvil.convert(state, visual_token_type=1)
    report = fashionvil.convert_file("official.pth", "ours.pth")
    report = fashionvil.load_official(model, state, source="official.pth")

Only parameter names and shapes are used here; the facts behind the
mapping (and where the maths differ) are in docs/models/fashionvil_checkpoints.md.
Nothing is dropped silently: every official key is either mapped, named as
derived (a tied copy or an index buffer) or named as unmatched in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from mmf_fashion.modules.state_dicts import strip_prefix

OFFICIAL_EMBEDDINGS = "model.bert.embeddings."
# keys only BertVisioLinguisticEmbeddings under the MMF model's `model.bert` has
OFFICIAL_MARKERS = (
    OFFICIAL_EMBEDDINGS + "projection.weight",
    OFFICIAL_EMBEDDINGS + "token_type_embeddings_visual.weight",
    OFFICIAL_EMBEDDINGS + "position_embeddings_visual.weight",
)
VISUAL_TYPES = "visual_embeddings.token_type_embeddings.weight"

# official prefix -> our prefixes (ordered: the first match wins). The official
# embeddings apply ONE LayerNorm to [text ; visual]; ours has one per stream, so
# that LayerNorm feeds both.
PREFIXES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("image_encoder.model.", ("image_encoder.trunk.",)),
    (OFFICIAL_EMBEDDINGS + "word_embeddings.", ("text_encoder.embeddings.word_embeddings.",)),
    (OFFICIAL_EMBEDDINGS + "position_embeddings.", ("text_encoder.embeddings.position_embeddings.",)),
    (OFFICIAL_EMBEDDINGS + "token_type_embeddings.", ("text_encoder.embeddings.token_type_embeddings.",)),
    (OFFICIAL_EMBEDDINGS + "LayerNorm.", ("text_encoder.embeddings.LayerNorm.", "visual_embeddings.LayerNorm.")),
    (OFFICIAL_EMBEDDINGS + "projection.", ("image_projection.",)),
    (OFFICIAL_EMBEDDINGS + "position_embeddings_visual.", ("visual_embeddings.position_embeddings.",)),
    (OFFICIAL_EMBEDDINGS + "token_type_embeddings_visual.", ("visual_embeddings.token_type_embeddings.",)),
    ("model.bert.encoder.", ("text_encoder.encoder.",)),
    ("model.bert.pooler.", ("text_encoder.pooler.",)),
    ("model.heads.itm.seq_relationship.", ("itm_head.classifier.",)),  # class 1 = match in both
    ("model.heads.mlm.transform.dense.", ("mlm_head.transform.0.",)),
    ("model.heads.mlm.transform.LayerNorm.", ("mlm_head.transform.2.",)),
)
EXACT = {"model.heads.mlm.bias": ("mlm_head.bias",)}
# official keys that hold no information of their own
DERIVED = {
    "model.heads.mlm.decoder.weight": "tied to model.bert.embeddings.word_embeddings.weight",
    "model.heads.mlm.decoder.bias": "the same tensor as model.heads.mlm.bias",
    OFFICIAL_EMBEDDINGS + "position_ids": "index buffer (0..max_position-1), rebuilt by our model",
    OFFICIAL_EMBEDDINGS + "token_type_ids": "index buffer, rebuilt by our model",
}
# a tied copy counts as derived only if it really equals its twin
TWINS = {
    "model.heads.mlm.decoder.weight": OFFICIAL_EMBEDDINGS + "word_embeddings.weight",
    "model.heads.mlm.decoder.bias": "model.heads.mlm.bias",
}


@dataclass
class ConversionReport:
    source: str
    mapped: List[Tuple[str, str]] = field(default_factory=list)  # (official, ours)
    derived: Dict[str, str] = field(default_factory=dict)  # official -> why nothing is lost
    unmatched: List[str] = field(default_factory=list)  # official keys with no counterpart

    def lines(self) -> List[str]:
        official = {name for name, _ in self.mapped}
        out = [
            f"{self.source}: {len(official)} official tensors mapped to {len(self.mapped)} of ours; "
            f"{len(self.derived)} derived (tied copies, index buffers); {len(self.unmatched)} unmatched",
        ]
        out += [f"  derived: {name} ({why})" for name, why in sorted(self.derived.items())]
        out += [f"  unmatched: {name}" for name in self.unmatched]
        return out


def official_weights(state: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """An MMF checkpoint ({"model": state_dict, ...}) or a bare state dict -> the state dict,
    without DistributedDataParallel's "module." prefix."""
    weights = state.get("model", state) if isinstance(state, Mapping) else None
    if not isinstance(weights, Mapping):
        raise ValueError(f"{source}: expected a state dict or an MMF checkpoint, found {type(state).__name__}")
    return strip_prefix(weights)


def is_official(state: Any) -> bool:
    """Whether `state` (checkpoint or state dict) has the official FashionViL key layout."""
    try:
        weights = official_weights(state)
    except ValueError:
        return False
    return all(marker in weights for marker in OFFICIAL_MARKERS)


def _targets(key: str) -> Optional[Tuple[str, ...]]:
    if key in EXACT:
        return EXACT[key]
    for official, ours in PREFIXES:
        if key.startswith(official):
            rest = key[len(official) :]
            return tuple(prefix + rest for prefix in ours)
    return None


def convert(
    state: Any, visual_token_type: int = 1, source: str = "checkpoint"
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Official checkpoint or state dict -> (our fashionvil state dict, report).

    visual_token_type: the row of our visual token-type table the model uses
    (model_config.fashionvil.visual_token_type). The official model always
    uses row 0, so rows 0 and visual_token_type are swapped."""
    weights = official_weights(state, source)
    if not is_official(weights):
        raise ValueError(
            f"{source} is not an official FashionViL checkpoint: it lacks {list(OFFICIAL_MARKERS)}; "
            f"its first keys are {sorted(weights)[:8]}"
        )
    report = ConversionReport(source=source)
    converted: Dict[str, torch.Tensor] = {}
    for key in sorted(weights):
        value = weights[key]
        if key in DERIVED:
            twin = weights.get(TWINS.get(key, key))
            if isinstance(twin, torch.Tensor) and twin.shape == value.shape and torch.equal(twin, value):
                report.derived[key] = DERIVED[key]
            else:
                report.unmatched.append(key)
            continue
        targets = _targets(key)
        if targets is None or not isinstance(value, torch.Tensor):
            report.unmatched.append(key)
            continue
        for target in targets:
            converted[target] = value.detach().clone()
            report.mapped.append((key, target))
    types = converted.get(VISUAL_TYPES)
    if types is not None:
        row = min(int(visual_token_type), types.shape[0] - 1)
        if row != 0:
            types[[0, row]] = types[[row, 0]]
    return converted, report


def load_official(model: torch.nn.Module, state: Any, source: str = "checkpoint") -> ConversionReport:
    """Convert and load into our fashionvil model; a checkpoint of another size (or no part
    of this model) raises ValueError naming `source` and the first mismatched keys."""
    from mmf_fashion.trainers.checkpointing import load_model_state

    visual = getattr(model, "visual_embeddings", None)
    weights, report = convert(state, visual_token_type=getattr(visual, "visual_token_type", 1), source=source)
    own = model.state_dict()
    if not any(key in own for key in weights):
        raise ValueError(f"{source}: none of the converted keys belong to this model; first: {sorted(weights)[:8]}")
    _, unexpected = load_model_state(model, weights, strict=False, source=source, what="model 'fashionvil'")
    # converted keys this model lacks (e.g. the ITM head of a model built without it)
    for key in unexpected:
        report.unmatched.append(next(o for o, ours in report.mapped if ours == key) + f" (-> {key}: not in this model)")
    report.mapped = [(o, ours) for o, ours in report.mapped if ours not in set(unexpected)]
    return report


def convert_file(path: str, out: str, allow_unsafe: bool = False, visual_token_type: int = 1) -> ConversionReport:
    """Read an official file weights-only (unless allow_unsafe), write our state dict to `out`."""
    from mmf_fashion.trainers.checkpointing import atomic_torch_save, safe_torch_load

    state = safe_torch_load(path, allow_unsafe=allow_unsafe)
    weights, report = convert(state, visual_token_type=visual_token_type, source=str(path))
    atomic_torch_save(weights, out)
    return report
