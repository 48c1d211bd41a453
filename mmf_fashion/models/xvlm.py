"""X-VLM (ICML 2022): multi-grained image/region-text alignment, the MMF adapter.

Cheatsheet::

    mmf_run config=projects/xvlm/configs/pretrain.yaml model=xvlm dataset=fashiongen
    mmf_run config=projects/xvlm/configs/itr.yaml model=xvlm dataset=fashiongen run_type=train_val
    mmf_run config=projects/xvlm/configs/grounding.yaml model=xvlm dataset=fashiongen run_type=train_val

    model = registry.get_model_class("xvlm")(config); model.build()
    out = model(sample_list)   # {"losses": {"train/fashiongen/itc": ..., ...}, ...}
    model.embed_images(images), model.embed_texts(["a red dress"])   # (N, E) L2-normalised
    model.match_scores(pairs)  # (P,) ITM margin, for ITC-shortlist + ITM re-rank (rerank.py)

The maths is in mmf_fashion/modules/xvlm.py and xvlm_ops.py; this file reads
the config and the sample list. docs/models/xvlm.md describes the model as
built (the text/fusion split of one BERT, the losses per granularity, options).

Heads (``model_config.xvlm.head``) and their default ``tasks``:
- ``pretraining``: itc, itm, mlm, box. ITC and ITM run on every (concept,
  text) pair of the batch: whole images with their captions and, when the
  batch has regions, each region (box-pooled concept) with its phrase. MLM at
  both granularities: ``mlm`` on the captions (whole image), ``mlm_region`` on
  the phrases (their region, always masked in the model); the box head
  (L1 + GIoU) on the regions.
- ``retrieval`` (ITR): itc, itm. Evaluation: ``image_embedding`` /
  ``text_embedding`` for r@k_general; with its ``rerank_k: k`` the top k of
  the ITC ranking are re-ranked by ``match_scores`` (the ITM head).
- ``grounding``: box. Evaluation: ``predicted_boxes`` (B, R, 4) for the
  ``grounding_accuracy`` metric (IoU >= 0.5, mmf_fashion/metrics/grounding.py).

Losses are named ``<dataset_type>/<dataset_name>/<task>`` with tasks itc,
itm, mlm, mlm_region, box_l1, box_giou, each times ``loss_weights.<task>``.
A task with nothing to learn from in a batch (no regions, no negative) is
left out.

Sample list keys: ``image`` (B, 3, S, S) with S = image_encoder.image_size;
``input_ids``, ``attention_mask`` (B, L) [pretraining, retrieval];
``product_id`` (B,) (captions of one product are ITC positives of each
other; absent = only the aligned pair); ``boxes`` (B, R, 4) normalised
(cx, cy, w, h), ``box_valid`` (B, R) bool, ``box_input_ids``,
``box_attention_mask`` (B, R, Lb) [regions: grounding, optional elsewhere];
``masked_input_ids``, ``mlm_labels`` (B, L) when ``mlm.source: data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
from mmf.common.registry import registry

from mmf_fashion.models.base import FashionModelBase
from mmf_fashion.modules.xvlm import XVLMMixin

PRETRAINING, RETRIEVAL, GROUNDING = "pretraining", "retrieval", "grounding"
HEADS = (PRETRAINING, RETRIEVAL, GROUNDING)
TASKS = ("itc", "itm", "mlm", "box")
DEFAULT_TASKS = {PRETRAINING: ("itc", "itm", "mlm", "box"), RETRIEVAL: ("itc", "itm"), GROUNDING: ("box",)}
REGION_KEYS = ("boxes", "box_valid", "box_input_ids", "box_attention_mask")


@dataclass
class XvlmMlmConfig:
    source: str
    probability: float
    max_masks: int


@dataclass
class XvlmLossWeights:
    itc: float
    itm: float
    mlm: float
    mlm_region: float
    box_l1: float
    box_giou: float


@dataclass
class XvlmConfig:
    """model_config.xvlm, key for key; no defaults: they live in models/configs/xvlm.yaml.
    The network (modules/xvlm.py) is built from it as a mapping."""

    head: str
    tasks: Optional[List[str]]
    use_regions: bool
    eval_losses: bool
    image_encoder: Dict[str, Any]
    text_encoder: Dict[str, Any]
    cross_encoder: Dict[str, Any]
    tokenizer: Optional[str]
    max_text_length: int
    embed_dim: int
    temperature: float
    min_temperature: float
    max_temperature: float
    mlm: XvlmMlmConfig
    loss_weights: XvlmLossWeights


@registry.register_model("xvlm")
class XVLM(XVLMMixin, FashionModelBase):
    """X-VLM: box-pooled visual concepts aligned with texts (pretraining | retrieval | grounding)."""

    model_name = "xvlm"
    options_class = XvlmConfig

    def build(self):
        options = self.build_options()
        self.head = options.head
        if self.head not in HEADS:
            raise ValueError(f"model_config.xvlm.head must be one of {HEADS}, got '{self.head}'")
        tasks = options.tasks or DEFAULT_TASKS[self.head]
        unknown = [task for task in tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"model_config.xvlm.tasks: unknown {unknown}; choose from {TASKS}")
        self.tasks = tuple(str(task) for task in tasks)
        self.use_regions = options.use_regions
        self.eval_losses = options.eval_losses
        self.mlm_source = options.mlm.source
        if self.mlm_source not in ("model", "data"):
            raise ValueError(f"model_config.xvlm.mlm.source must be 'model' or 'data', got '{self.mlm_source}'")
        self.loss_weights = dataclasses.asdict(options.loss_weights)
        self.build_network(dataclasses.asdict(options))

    # ------------------------------------------------------------ inputs
    def _regions(self, sample_list, required: bool) -> Dict[str, Optional[torch.Tensor]]:
        found = {key: sample_list.get(key, None) for key in REGION_KEYS}
        missing = [key for key in REGION_KEYS if found[key] is None]
        if required and missing:
            raise KeyError(
                f"xvlm head '{self.head}' needs region keys {missing} in the sample list: turn on the "
                "dataset's region boxes (fashiongen / fashionall with regions)"
            )
        if missing or not (self.use_regions or required):
            return {key: None for key in REGION_KEYS}
        return found

    def _captions(self, sample_list):
        missing = [key for key in ("input_ids", "attention_mask") if sample_list.get(key, None) is None]
        if missing:
            raise KeyError(f"xvlm head '{self.head}' needs sample keys {missing}")
        return sample_list["input_ids"], sample_list["attention_mask"]

    # ----------------------------------------------------------- forward
    def forward(self, sample_list) -> Dict[str, Any]:
        """Returns {"losses": {"<type>/<dataset>/<task>": scalar}} and, in eval mode,
        image_embedding / text_embedding (B, E) [pretraining, retrieval] and
        predicted_boxes (B, R, 4) [grounding; pretraining when the batch has regions]."""
        if self.head == GROUNDING:
            return self._forward_grounding(sample_list)
        return self._forward_pairs(sample_list)

    def _forward_pairs(self, sample_list) -> Dict[str, Any]:
        input_ids, attention_mask = self._captions(sample_list)
        regions = self._regions(sample_list, required=False)
        image_tokens = self.encode_image(sample_list["image"])
        pairs = self.build_pairs(
            image_tokens, input_ids, attention_mask, sample_list.get("product_id", None), **regions
        )
        output: Dict[str, Any] = {"losses": {}}
        evaluating = not self.training
        # in evaluation every batch with region keys reports predicted_boxes (zeros where there is no
        # valid region), so the evaluation report can concatenate them batch after batch
        report_boxes = evaluating and "box" in self.tasks and regions["boxes"] is not None
        if evaluating:
            output["image_embedding"] = pairs.concept_feat[: pairs.num_whole]
            output["text_embedding"] = pairs.text_feat[: pairs.num_whole]
            if not self.eval_losses:
                if report_boxes:
                    predicted = None
                    if pairs.num_pairs > pairs.num_whole:
                        start = pairs.num_whole
                        predicted = self.predict_region_boxes(
                            image_tokens, pairs.image_index[start:], pairs.text_hidden[start:], pairs.text_mask[start:]
                        )
                    output["predicted_boxes"] = self._place_boxes(regions["boxes"], pairs, predicted)
                return output
        losses: Dict[str, Optional[torch.Tensor]] = {}
        if "itc" in self.tasks:
            losses["itc"] = self.itc_loss(pairs)
        if "itm" in self.tasks:
            losses["itm"] = self.itm_loss(pairs)
        if "mlm" in self.tasks:
            masked = labels = None
            if self.mlm_source == "data":
                masked, labels = sample_list.get("masked_input_ids", None), sample_list.get("mlm_labels", None)
                if masked is None or labels is None:
                    raise KeyError(
                        "xvlm mlm.source 'data' needs sample keys masked_input_ids and mlm_labels: turn "
                        "on the dataset's mlm option, or set model_config.xvlm.mlm.source: model"
                    )
            losses["mlm"] = self.mlm_loss(pairs, image_tokens, masked, labels)
            losses["mlm_region"] = self.region_mlm_loss(pairs)
        if "box" in self.tasks:
            losses["box_l1"], losses["box_giou"], predicted = self.box_loss(pairs, image_tokens)
            if report_boxes:
                output["predicted_boxes"] = self._place_boxes(regions["boxes"], pairs, predicted)
        output["losses"] = self._weighted(sample_list, losses)
        return output

    def _forward_grounding(self, sample_list) -> Dict[str, Any]:
        regions = self._regions(sample_list, required=True)
        image_tokens = self.encode_image(sample_list["image"])
        l1 = giou = predicted = pairs = None
        if bool(regions["box_valid"].bool().any()):
            pairs = self.build_pairs(image_tokens, **regions)
            l1, giou, predicted = self.box_loss(pairs, image_tokens)
        output: Dict[str, Any] = {"losses": self._weighted(sample_list, {"box_l1": l1, "box_giou": giou})}
        if not self.training:
            output["predicted_boxes"] = self._place_boxes(regions["boxes"], pairs, predicted)
        return output

    @staticmethod
    def _place_boxes(boxes: torch.Tensor, pairs, predicted: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, R, 4) like the batch's boxes: each region row's prediction in its (sample, slot), zeros elsewhere."""
        placed = boxes.new_zeros(boxes.shape)
        if predicted is not None:
            slot = pairs.region_slot
            placed[slot[:, 0], slot[:, 1]] = predicted.detach().to(boxes.dtype)
        return placed

    def _weighted(self, sample_list, losses: Mapping[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        return {
            self.loss_key(sample_list, name): self.loss_weights[name] * loss
            for name, loss in losses.items()
            if loss is not None
        }
