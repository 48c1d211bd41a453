"""FashionBERT (SIGIR 2020): patches + text in one BERT, the MMF adapter.

Cheatsheet::

    mmf_run config=projects/fashionbert/configs/pretrain.yaml model=fashionbert dataset=fashiongen
    mmf_run config=projects/fashionbert/configs/itr.yaml model=fashionbert dataset=fashiongen
    mmf_run config=projects/fashionbert/configs/scr.yaml model=fashionbert dataset=fashiongen

    model = registry.get_model_class("fashionbert")(config); model.build()
    out = model(sample_list)        # {"losses": {"train/fashiongen/mlm": ..., ...}, "scores": ...}
    model.match_scores(pairs)       # (P,) alignment score of P image/text pairs

The maths is in mmf_fashion/modules/fashionbert.py (and fashionbert_patches.py);
this file reads the config and the sample list.

Heads (``model_config.fashionbert.head``):
- ``pretraining``: MLM (whole-word masking from the data), masked patch
  modelling and text-image alignment in one forward; losses weighted by
  ``loss_weighting`` (``mode: adaptive``: the paper's gradient-based weights,
  ``adaptive.grad_source`` says which gradients; ``mode: fixed``). The losses
  returned are the WEIGHTED task losses (their sum is the objective);
  ``unweighted_losses`` and ``loss_weights`` are returned beside them and
  written to the training log at every ``training.log_interval``.
  ``scores``: alignment logits.
- ``alignment`` (ITR): matched / not-matched cross entropy; a negative pairs
  the image with the text of another product of the same subcategory, from
  a bank of earlier training batches (``negative_bank_size``), else from the
  batch; retrieval ranks pairs by
  ``match_scores`` (r@k_kaleido with ``scoring: model``). ``scores`` (B, 2).
- ``classification`` (SCR): pooled [CLS] -> linear; ``scores`` (B, num_labels),
  cross entropy against ``targets``.

Two-stage retrieval: with ``shortlist.enabled`` the model also holds a frozen
two-stream model (the towers of an ALIGN checkpoint, ``shortlist.checkpoint``)
and, in eval mode, returns its ``image_embedding`` / ``text_embedding``; the
r@k_general metric with ``rerank_k: k`` shortlists by them and re-ranks the
top k by ``match_scores`` (mmf_fashion/metrics/rerank.py).

Sample list keys: ``image`` (B, 3, H, W); ``input_ids``, ``attention_mask``,
``token_type_ids`` (B, L); ``masked_input_ids``, ``mlm_labels`` (B, L)
[pretraining with mlm]; ``product_id``, ``subcategory_id`` (B,)
[pretraining, alignment]; ``targets`` (B,) [classification]; optional
``image_id`` (B,) [patch cache]. With ``segments: query_title_image`` also
``query_input_ids``, ``query_attention_mask`` (B, Lq): the query, while
input_ids holds the product title.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from mmf.common.registry import registry

from mmf_fashion.models.base import (
    MMF_KEYS,
    FashionModelBase,
    options_from_mapping,
    packaged_defaults,
    plain_config,
)
from mmf_fashion.modules.fashionbert import FashionBertMixin, FashionBertOptions
from mmf_fashion.modules.two_stream import ShortlistTowers  # noqa: F401  (the shortlist of two-stage retrieval)

PRETRAINING, ALIGNMENT, CLASSIFICATION = "pretraining", "alignment", "classification"
HEADS = (PRETRAINING, ALIGNMENT, CLASSIFICATION)


@dataclass
class ImageEncoderConfig:
    name: str
    pretrained: Optional[str]
    freeze: bool
    chunk_size: int


@dataclass
class PatchCacheConfig:
    file: Optional[str]
    flush_every: int


@dataclass
class PretrainingConfig:
    tasks: List[str]
    patch_mask_ratio: float
    mpm_loss: str


@dataclass
class AdaptiveWeightingConfig:
    grad_source: str
    alpha: float
    normalize: bool
    every: int


@dataclass
class LossWeightingConfig:
    mode: str
    adaptive: AdaptiveWeightingConfig
    fixed: Dict[str, float]


@dataclass
class FashionBertConfig:
    """model_config.fashionbert, key for key; no defaults: they live in models/configs/fashionbert.yaml.
    to_network_options() turns it into the network's FashionBertOptions."""

    head: str
    image_encoder: ImageEncoderConfig
    grid_size: int
    patch_size: Optional[int]
    patch_cache: PatchCacheConfig
    eval_patch_memo: int
    text_encoder: Dict[str, Any]
    segments: str
    negative_fraction: float
    negative_bank_size: int
    pretraining: PretrainingConfig
    loss_weighting: LossWeightingConfig
    num_labels: int
    shortlist: Dict[str, Any]

    def to_network_options(self) -> FashionBertOptions:
        if self.head not in HEADS:
            raise ValueError(f"model_config.fashionbert.head must be one of {HEADS}, got '{self.head}'")
        image, weighting, pretraining = self.image_encoder, self.loss_weighting, self.pretraining
        tasks = tuple(str(task) for task in pretraining.tasks)
        adaptive = weighting.adaptive
        return FashionBertOptions(
            image_encoder=image.name,
            image_pretrained=image.pretrained or None,
            freeze_image_encoder=image.freeze,
            patch_chunk_size=int(image.chunk_size or 0),
            grid_size=self.grid_size,
            patch_size=self.patch_size or None,
            patch_cache_file=self.patch_cache.file or None,
            patch_cache_flush_every=self.patch_cache.flush_every,
            eval_patch_memo=self.eval_patch_memo,
            text_encoder=dict(self.text_encoder or {"name": "tiny"}),
            segments=self.segments,
            tasks=tasks if self.head == PRETRAINING else ("alignment",),
            patch_mask_ratio=pretraining.patch_mask_ratio,
            mpm_loss=pretraining.mpm_loss,
            negative_fraction=self.negative_fraction,
            negative_bank_size=self.negative_bank_size,
            loss_weighting=weighting.mode,
            grad_source=adaptive.grad_source,
            adaptive_alpha=adaptive.alpha,
            normalize_gradients=adaptive.normalize,
            adaptive_every=adaptive.every,
            fixed_weights={str(k): float(v) for k, v in dict(weighting.fixed or {}).items()} or {t: 1.0 for t in tasks},
            num_labels=int(self.num_labels or 0),
            heads={PRETRAINING: tasks, ALIGNMENT: ("alignment",), CLASSIFICATION: ("classification",)}[self.head],
        )


def _older_forms(config: Dict[str, Any]) -> Dict[str, Any]:
    """The short forms still accepted, written out: ``image_encoder: resnet50`` (a name),
    ``loss_weighting: fixed`` (a mode) and ``loss_weighting.adaptive: true|false``."""
    config = dict(config)
    if isinstance(config.get("image_encoder"), str):
        config["image_encoder"] = {"name": config["image_encoder"]}
    weighting = config.get("loss_weighting")
    if isinstance(weighting, str):
        weighting = {"mode": weighting}
    if isinstance(weighting, Mapping):
        weighting = dict(weighting)
        if weighting.get("detach", True) is False:
            raise ValueError(
                "fashionbert loss_weighting.detach: false is gone; the adaptive weights solve a "
                "separate problem and are constants of the step"
            )
        weighting.pop("detach", None)
        if isinstance(weighting.get("adaptive"), bool):
            enabled = weighting.pop("adaptive")
            weighting.setdefault("mode", "adaptive" if enabled else "fixed")
        config["loss_weighting"] = weighting
    return config


def read_config(config: Mapping[str, Any], head: Optional[str] = None) -> FashionBertConfig:
    """FashionBertConfig from a model config (the packaged YAML fills missing keys); head overrides its head."""
    values = _older_forms(plain_config(config))
    if head is not None:
        values["head"] = head
    return options_from_mapping(
        FashionBertConfig,
        values,
        "model_config.fashionbert",
        ignore=MMF_KEYS,
        defaults=packaged_defaults("fashionbert"),
    )


def options_from_config(config: Mapping[str, Any], head: Optional[str] = None) -> FashionBertOptions:
    """The network's FashionBertOptions from the YAML block model_config.fashionbert."""
    return read_config(config, head).to_network_options()


@registry.register_model("fashionbert")
class FashionBERT(FashionBertMixin, FashionModelBase):
    """FashionBERT: image patches and text in one BERT (pretraining | alignment | classification)."""

    model_name = "fashionbert"

    def build(self):
        config = read_config(self.config)
        self.head = config.head
        self.build_network(config.to_network_options())
        shortlist = config.shortlist or {}
        self.shortlist = ShortlistTowers(shortlist) if shortlist.get("enabled", False) else None

    # ----------------------------------------------------------- forward
    def forward(self, sample_list) -> Dict[str, Any]:
        """Returns {"losses": {"<type>/<dataset>/<task>": scalar}, "scores": logits, ...}
        (see the module docstring for the keys each head reads and returns)."""
        output = self.with_loss_keys(sample_list, self.run(sample_list, self.head))
        if self.head == PRETRAINING and self.training:
            self._log_weights(output)
        if self.shortlist is not None and not self.training:
            output["image_embedding"] = self.shortlist.encode_image(sample_list["image"])
            output["text_embedding"] = self.shortlist.encode_text(
                sample_list["input_ids"], sample_list["attention_mask"], sample_list.get("token_type_ids", None)
            )
        return output

    def _log_weights(self, output: Mapping[str, Any]) -> None:
        """Mean weights and unweighted losses since the last log line, written through the
        trainer's writer just before the update the trainer logs (training.log_interval):
        the trainer itself only logs the weighted losses."""
        sums = self.__dict__.setdefault("_weight_log", {"count": 0, "weights": {}, "losses": {}, "logged": -1})
        sums["count"] += 1
        for group, values in (("weights", output["loss_weights"]), ("losses", output["unweighted_losses"])):
            for task, value in values.items():
                sums[group][task] = sums[group].get(task, 0.0) + float(value)
        from mmf_fashion.utils.run_log import as_writer  # MMF main's writer is a logging.Logger

        writer, config = as_writer(registry.get("writer", no_warning=True)), registry.get("config", no_warning=True)
        training = config.training if config is not None and "training" in config else {}
        interval = int(training.get("log_interval", 0) or 0)
        update = int(registry.get("num_updates", 0, no_warning=True) or 0) + 1
        if writer is None or interval <= 0 or update % interval or sums["logged"] == update:
            return
        count = sums["count"]
        weights = ", ".join(f"{task}: {value / count:.3f}" for task, value in sums["weights"].items())
        losses = ", ".join(f"{task}: {value / count:.4f}" for task, value in sums["losses"].items())
        writer.write(f"fashionbert update {update}: loss weights {weights}; unweighted losses {losses}", "info")
        self.__dict__["_weight_log"] = {"count": 0, "weights": {}, "losses": {}, "logged": update}
