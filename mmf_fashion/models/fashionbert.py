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

import os
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from mmf.common.registry import registry
from mmf.models.base_model import BaseModel
from torch import nn

from mmf_fashion.modules.fashionbert import FashionBertMixin, FashionBertOptions, query_title_inputs
from mmf_fashion.modules.two_stream import TOWER_NAMES, TwoStreamMixin
from mmf_fashion.utils.config import plain_dict as _plain

PRETRAINING, ALIGNMENT, CLASSIFICATION = "pretraining", "alignment", "classification"
HEADS = (PRETRAINING, ALIGNMENT, CLASSIFICATION)


def options_from_config(config: Mapping[str, Any], head: str) -> FashionBertOptions:
    """FashionBertOptions from the YAML block model_config.fashionbert (see configs/fashionbert.yaml)."""
    config = _plain(config)
    image = config.get("image_encoder") or {}
    image = {"name": image} if isinstance(image, str) else dict(image)
    cache = dict(config.get("patch_cache") or {})
    pretraining = dict(config.get("pretraining") or {})
    weighting = _weighting_from_config(config.get("loss_weighting"))
    tasks = tuple(str(task) for task in pretraining.get("tasks", ("mlm", "mpm", "alignment")))
    heads = {PRETRAINING: tasks, ALIGNMENT: ("alignment",), CLASSIFICATION: ("classification",)}[head]
    defaults = FashionBertOptions.__dataclass_fields__
    fixed = weighting["fixed"]
    return FashionBertOptions(
        image_encoder=str(image.get("name", defaults["image_encoder"].default)),
        image_pretrained=image.get("pretrained") or None,
        freeze_image_encoder=bool(image.get("freeze", False)),
        patch_chunk_size=int(image.get("chunk_size", 0) or 0),
        grid_size=int(config.get("grid_size", 8)),
        patch_size=config.get("patch_size") or None,
        patch_cache_file=cache.get("file") or None,
        patch_cache_flush_every=int(cache.get("flush_every", 256)),
        eval_patch_memo=int(config.get("eval_patch_memo", 4096)),
        text_encoder=dict(config.get("text_encoder") or {"name": "tiny"}),
        segments=str(config.get("segments", "text_image")),
        tasks=tasks if head == PRETRAINING else ("alignment",),
        patch_mask_ratio=float(pretraining.get("patch_mask_ratio", 0.1)),
        mpm_loss=str(pretraining.get("mpm_loss", "kl")),
        negative_fraction=float(config.get("negative_fraction", pretraining.get("negative_fraction", 0.5))),
        negative_bank_size=int(config.get("negative_bank_size", defaults["negative_bank_size"].default)),
        loss_weighting=weighting["mode"],
        grad_source=str(weighting["adaptive"].get("grad_source", defaults["grad_source"].default)),
        adaptive_alpha=float(weighting["adaptive"].get("alpha", weighting["alpha"])),
        normalize_gradients=bool(weighting["adaptive"].get("normalize", True)),
        adaptive_every=int(weighting["adaptive"].get("every", 1)),
        fixed_weights={str(k): float(v) for k, v in dict(fixed).items()} or {t: 1.0 for t in tasks},
        num_labels=int(config.get("num_labels", 0) or 0),
        heads=heads,
    )


def _weighting_from_config(weighting: Any) -> Dict[str, Any]:
    """loss_weighting as {mode, adaptive: {...}, alpha, fixed}. Accepts the string form
    (``loss_weighting: fixed``), the block form (``mode: adaptive``, ``adaptive: {grad_source,
    alpha, normalize, every}``, ``fixed: {task: w}``) and the older ``adaptive: true|false``."""
    if isinstance(weighting, str):
        weighting = {"mode": weighting}
    weighting = _plain(weighting)
    adaptive = weighting.get("adaptive", True)
    block = _plain(adaptive) if isinstance(adaptive, Mapping) else {}
    mode = weighting.get("mode", None) or ("fixed" if adaptive is False else "adaptive")
    if weighting.get("detach", True) is False:
        raise ValueError("fashionbert loss_weighting.detach: false is gone; the adaptive weights solve a separate "
                         "problem and are constants of the step")
    return {"mode": str(mode), "adaptive": block, "alpha": float(weighting.get("alpha", 1.0)),
            "fixed": _plain(weighting.get("fixed"))}


class ShortlistTowers(TwoStreamMixin, nn.Module):
    """A frozen two-stream model (ALIGN's towers) that shortlists candidates for re-ranking."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.build_towers(
            image_encoder=config.get("image_encoder", "efficientnet_b0"),
            image_pretrained=config.get("image_pretrained") or None,
            text_encoder=config.get("text_encoder") or {"name": "tiny"},
            embed_dim=int(config.get("embed_dim", 640)),
        )
        checkpoint = config.get("checkpoint") or None
        if checkpoint:
            self.load_towers(str(checkpoint))
        self.requires_grad_(False)

    def load_towers(self, path: str, allow_unsafe: Optional[bool] = None) -> None:
        """Load the four towers from a checkpoint of a two-stream model (ALIGN: save/<run>/align_final.pth),
        weights-only unless allow_unsafe (None: the run's checkpoint.allow_unsafe_load)."""
        from mmf_fashion.trainers import checkpointing as ckpt

        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"fashionbert shortlist.checkpoint '{path}': no such file (train the two-stream model first, "
                "e.g. projects/align/configs/pretrain.yaml)"
            )
        if allow_unsafe is None:
            allow_unsafe = ckpt.unsafe_load_allowed()
        state = ckpt.safe_torch_load(path, allow_unsafe=allow_unsafe)
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise ValueError(f"fashionbert shortlist.checkpoint '{path}': not a state dict or a checkpoint "
                             "with a 'model' entry")
        state = ckpt.strip_module_prefix(state)
        towers = {k: v for k, v in state.items() if k.split(".", 1)[0] in TOWER_NAMES}
        missing, _ = self.load_state_dict(towers, strict=False)
        if missing:
            raise ValueError(f"fashionbert shortlist.checkpoint '{path}': no weights for {missing[:8]} "
                             "(is it a two-stream model with the same shortlist sizes?)")

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: batch-norm statistics and dropout stay in eval mode


@registry.register_model("fashionbert")
class FashionBERT(FashionBertMixin, BaseModel):
    """FashionBERT: image patches and text in one BERT (pretraining | alignment | classification)."""

    def __init__(self, config):
        super().__init__(config)

    @classmethod
    def config_path(cls):
        return os.path.join(os.path.dirname(__file__), "configs", "fashionbert.yaml")

    def build(self):
        config = _plain(self.config)
        self.head = str(config.get("head", PRETRAINING))
        if self.head not in HEADS:
            raise ValueError(f"model_config.fashionbert.head must be one of {HEADS}, got '{self.head}'")
        self.build_network(options_from_config(config, self.head))
        shortlist = dict(config.get("shortlist") or {})
        self.shortlist = ShortlistTowers(shortlist) if shortlist.get("enabled", False) else None

    # ------------------------------------------------------------ inputs
    def _text_inputs(self, sample_list, masked: bool):
        """(input_ids, attention_mask, token_type_ids, mlm_labels) of the batch, (B, L) each."""
        if masked:
            missing = [key for key in ("masked_input_ids", "mlm_labels") if sample_list.get(key, None) is None]
            if missing:
                raise KeyError(f"fashionbert pretraining with the mlm task needs sample keys {missing}: turn on "
                               "the dataset's mlm option, or drop mlm from pretraining.tasks")
            input_ids, labels = sample_list["masked_input_ids"], sample_list["mlm_labels"]
        else:
            input_ids, labels = sample_list["input_ids"], None
        attention_mask = sample_list["attention_mask"]
        token_type_ids = sample_list.get("token_type_ids", None)
        if self.options.segments == "query_title_image":
            query_ids = sample_list.get("query_input_ids", None)
            query_mask = sample_list.get("query_attention_mask", None)
            if query_ids is None or query_mask is None:
                raise KeyError("fashionbert segments=query_title_image needs sample keys query_input_ids and "
                               "query_attention_mask (the query) beside input_ids (the title)")
            input_ids, attention_mask, token_type_ids, labels = query_title_inputs(
                query_ids, query_mask, input_ids, attention_mask, labels)
        return input_ids, attention_mask, token_type_ids, labels

    def _patches(self, sample_list) -> torch.Tensor:
        return self.encode_patches(sample_list["image"], sample_list.get("image_id", None))

    @staticmethod
    def _key(sample_list, name: str) -> str:
        dataset_type = sample_list.get("dataset_type", None) or "train"
        dataset_name = sample_list.get("dataset_name", None) or "fashiongen"
        return f"{dataset_type}/{dataset_name}/{name}"

    # ----------------------------------------------------------- forward
    def forward(self, sample_list) -> Dict[str, Any]:
        """Returns {"losses": {"<type>/<dataset>/<task>": scalar}, "scores": logits, ...}
        (see the module docstring for the keys each head reads and returns)."""
        if self.head == PRETRAINING:
            output = self._forward_pretraining(sample_list)
        elif self.head == ALIGNMENT:
            output = self._forward_alignment(sample_list)
        else:
            output = self._forward_classification(sample_list)
        if self.shortlist is not None and not self.training:
            output["image_embedding"] = self.shortlist.encode_image(sample_list["image"])
            output["text_embedding"] = self.shortlist.encode_text(
                sample_list["input_ids"], sample_list["attention_mask"], sample_list.get("token_type_ids", None))
        return output

    def _forward_pretraining(self, sample_list) -> Dict[str, Any]:
        input_ids, attention_mask, token_type_ids, labels = self._text_inputs(
            sample_list, masked="mlm" in self.options.tasks)
        result = self.pretraining_losses(
            self._patches(sample_list), input_ids, attention_mask, labels, sample_list["product_id"],
            sample_list.get("subcategory_id", None), token_type_ids)
        losses = {self._key(sample_list, task): result["weights"][task] * loss
                  for task, loss in result["losses"].items()}
        output = {"losses": losses, "unweighted_losses": {task: loss.detach() for task, loss in result["losses"].items()},
                  "loss_weights": {task: weight.detach() for task, weight in result["weights"].items()},
                  "negative_source": result["negative_source"]}
        if result["alignment_logits"] is not None:
            output["scores"] = result["alignment_logits"]
        if self.training:
            self._log_weights(output)
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
        writer, config = registry.get("writer", no_warning=True), registry.get("config", no_warning=True)
        interval = int(config.training.get("log_interval", 0) or 0) if config is not None and "training" in config else 0
        update = int(registry.get("num_updates", 0, no_warning=True) or 0) + 1
        if writer is None or interval <= 0 or update % interval or sums["logged"] == update:
            return
        count = sums["count"]
        weights = ", ".join(f"{task}: {value / count:.3f}" for task, value in sums["weights"].items())
        losses = ", ".join(f"{task}: {value / count:.4f}" for task, value in sums["losses"].items())
        writer.write(f"fashionbert update {update}: loss weights {weights}; unweighted losses {losses}", "info")
        self.__dict__["_weight_log"] = {"count": 0, "weights": {}, "losses": {}, "logged": update}

    def _forward_alignment(self, sample_list) -> Dict[str, Any]:
        input_ids, attention_mask, token_type_ids, _ = self._text_inputs(sample_list, masked=False)
        result = self.alignment_loss(self._patches(sample_list), input_ids, attention_mask,
                                     sample_list["product_id"], sample_list.get("subcategory_id", None),
                                     token_type_ids)
        return {"losses": {self._key(sample_list, "alignment"): result["loss"]}, "scores": result["logits"],
                "alignment_labels": result["labels"], "negative_source": result["negative_source"]}

    def _forward_classification(self, sample_list) -> Dict[str, Any]:
        input_ids, attention_mask, token_type_ids, _ = self._text_inputs(sample_list, masked=False)
        scores = self.classification_logits(self._patches(sample_list), input_ids, attention_mask, token_type_ids)
        output: Dict[str, Any] = {"scores": scores, "losses": {}}
        targets = sample_list.get("targets", None)
        if targets is not None:
            if int(targets.max()) >= scores.shape[1] or int(targets.min()) < 0:
                raise ValueError(f"fashionbert classification: targets reach {int(targets.max())} but "
                                 f"num_labels is {scores.shape[1]}; set model_config.fashionbert.num_labels")
            output["losses"][self._key(sample_list, "classification")] = F.cross_entropy(scores, targets.long())
        return output

    # ------------------------------------------------------ pair scoring
    def match_scores(self, pairs, input_ids: Optional[torch.Tensor] = None,
                     attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Alignment score (P,) of P image/text pairs, higher = better match.

        `pairs`: a mapping / SampleList with image (P, 3, H, W), input_ids,
        attention_mask [, token_type_ids, image_id, query_input_ids,
        query_attention_mask] (P, L) (the rerank.py interface), or the images
        themselves with input_ids and attention_mask given as arguments.
        Leaves the model's train/eval mode as it is.
        """
        if isinstance(pairs, torch.Tensor):
            pairs = {"image": pairs, "input_ids": input_ids, "attention_mask": attention_mask}
        text_ids, text_mask, token_types, _ = self._text_inputs(pairs, masked=False)
        return self.score_pairs(pairs["image"], text_ids, text_mask, token_types, pairs.get("image_id", None))
