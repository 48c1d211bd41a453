"""MMF metrics of the fashion retrieval tasks: r@k_general, r@k_kaleido,
r@k_fashioniq, r@k_ocir; for SCR, MMF's `accuracy`, `macro_f1` and the other
scores/targets classification metrics re-registered in percent.

Cheatsheet (project YAML)::

    evaluation:
      metrics:
      - type: r@k_general
        params: {ks: [1, 5, 10], chunk_size: 1024}
      - type: r@k_kaleido
        params: {num_queries: 1000, num_negatives: 100, seeds: [0, 1, 2, 3, 4]}

    # in Python
    metric = registry.get_metric_class("r@k_general")(chunk_size=512)
    metric.calculate(report, report)          # {"i2t_r@1": 12.5, ..., "avg": 30.1}

Contract with the trainer (docs/ARCHITECTURE.md keys):
- `calculate(sample_list, model_output, *args, model=None, dataset=None)`;
  sample_list and model_output are the same report accumulated over the
  whole evaluation set (every tensor concatenated along dim 0); keys are read
  from model_output first, then sample_list. `model` is needed only by the
  modes that score pairs with a matching head; `dataset` only when a gallery
  must be embedded here (see r@k_fashioniq).
- It returns a DICT of python floats, percentages 0-100 as papers report
  them; the trainer flattens it to "<split>/<dataset>/<metric>/<key>".
- `self.required_params` lists the report keys the metric reads (it depends
  on the params: a re-ranking or pair-scoring mode adds the model's input
  keys). Keys marked optional below are used when present.
- Params are the keyword arguments of each class (from the config's
  `params`; the bridge makes rc10 pass them). Lists may be ListConfig.
- Distributed: every tensor read is all-gathered from every rank first
  (shards may differ in size; bool tensors travel as uint8, CPU tensors go
  through CUDA under NCCL), then every rank computes the same numbers.
  Pass `gather: false` if the trainer already gathered the report.
- Ranks, ties and chunking: see mmf_fashion/metrics/ranking.py (pessimistic
  ties: a negative scored equal to the positive is ranked ahead of it).

r@k_general (full ranking): reads image_embedding (N, D), text_embedding
  (N, D), product_id (N,), image_id (optional, dedupes the image rows a
  DistributedSampler repeats). Texts are deduplicated by product id. Params
  ks=[1,5,10], chunk_size=1024; rerank_k=0: when > 0, each query's top
  rerank_k candidates are re-ordered by `model.match_scores(pairs)` (pairs =
  text_keys rows of the texts + image_keys rows of the images; see rerank.py),
  pair_batch_size=256. Keys i2t_r@k, t2i_r@k, avg.

r@k_kaleido (100-negative protocol, FashionBERT/Kaleido-BERT/FashionViL):
  reads product_id, subcategory_id, and image_embedding + text_embedding
  (scoring: embedding, dot products) or the model's input keys (scoring:
  model, every query's 1 + num_negatives pairs through model.match_scores;
  under DDP the pairs are split between ranks). Params num_queries=1000,
  num_negatives=100, seeds=[0..4], ks, pair_batch_size. Queries are distinct
  products (a random view each); negatives are other products of the same
  subcategory, fewer when the subcategory is small (a warning says how many
  queries were short). Recalls averaged over the seeds. Keys as r@k_general.

r@k_fashioniq (TGIR): reads query_embedding (Q, D), target_id (Q,),
  fashioniq_category (Q,) (0 dress, 1 shirt, 2 toptee), reference_id when
  exclude_reference. Gallery (param `gallery`):
  - "split" (default, the standard protocol): every image of the category's
    split. Either the report holds gallery_embedding (G, D), gallery_id (G,),
    gallery_category (G,) (G unrelated to Q; the trainer may add them after
    embedding dataset.gallery_dataset() with
    mmf_fashion.retrieval.embed_image_dataset), or calculate() gets
    `dataset=` (an object with gallery_dataset()) and `model=` (with
    embed_images) and embeds the gallery here. Duplicate (category, id) rows
    are dropped, so a gallery repeated on every rank is harmless.
  - "unique_targets" (FashionViL's code): the distinct targets of the
    queries, from target_embedding (Q, D).
  Params ks=[10,50], categories=[dress, shirt, toptee], exclude_reference
  =false. Keys <category>_r@k, r@k (mean over categories), avg.

r@k_ocir (outfit complementary item retrieval): reads query_embedding,
  blank_id, blank_category; gallery "split" (gallery_* keys or dataset=, as
  above, ids/categories read from blank_id/blank_category of the gallery
  items unless gallery_id_key/gallery_category_key say otherwise) or
  "blanks" (the distinct blanks, from target_embedding). ks=[10,30,50],
  per_category=false. Keys r@k (averaged over categories), avg,
  cat<id>_r@k with per_category.

SCR (and any classification head: reads scores (B, C) logits and targets):
`accuracy`, `macro_f1` and the rest of PERCENT_OF_MMF are MMF rc10's own
classes, registered again under the same names so that they return PERCENT
0-100 like every other metric here (MMF's return fractions 0-1). accuracy is
the share of argmax predictions equal to the targets; macro_f1 is
sklearn.metrics.f1_score(average="macro") on argmax predictions, over the
labels present in targets or predictions; the others are MMF's computation
times 100. Distributed, each gathers scores and targets from every rank
first (as above; `gather: false` turns it off), so macro F1 is that of the
whole split, not the mean of per-rank F1s that MMF's reduce would give.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from mmf.common.registry import registry
from mmf.common.sample import SampleList
from mmf.modules import metrics as mmf_metrics
from mmf.modules.metrics import BaseMetric

from mmf_fashion.metrics import ranking as R
from mmf_fashion.metrics.rerank import (
    DEFAULT_IMAGE_KEYS,
    DEFAULT_TEXT_KEYS,
    model_pair_scorer,
    two_stage_general_recalls,
)
from mmf_fashion.modules.distributed import (
    all_gather_variable,
    get_rank,
    get_world_size,
    is_distributed,
)


# ------------------------------------------------------------ shared helpers
def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor's rows from every rank (any shard sizes); no-op alone."""
    if not is_distributed():
        return tensor
    device = tensor.device
    work = tensor
    if dist.get_backend() == "nccl" and not work.is_cuda:
        work = work.cuda()
    is_bool = work.dtype == torch.bool
    if is_bool:
        work = work.to(torch.uint8)
    gathered = all_gather_variable(work.contiguous())
    if is_bool:
        gathered = gathered.bool()
    return gathered.to(device)


def _int_list(values, name: str) -> List[int]:
    try:
        return [int(v) for v in values]
    except TypeError:
        return [int(values)]
    except ValueError as error:
        raise ValueError(f"param {name}: expected integers, got {values!r}") from error


def _unwrap(model):
    # DistributedDataParallel hides the model's own methods behind .module
    return getattr(model, "module", model) if model is not None else None


def _shard_pairs_across_ranks(scorer: R.PairScorer) -> R.PairScorer:
    """Every rank scores a contiguous slice of each batch; scores are gathered."""
    if not is_distributed():
        return scorer

    def score(text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        world, rank = get_world_size(), get_rank()
        per_rank = math.ceil(text_rows.numel() / world)
        start, end = rank * per_rank, min(text_rows.numel(), (rank + 1) * per_rank)
        if end > start:
            local = torch.as_tensor(scorer(text_rows[start:end], image_rows[start:end])).float()
        else:
            local = torch.empty(0)
        return gather_rows(local.flatten()).cpu()

    return score


def report_value(key: str, sample_list, model_output):
    """The value under `key` in model_output, else in sample_list; None if neither has it.

    The one lookup rule of the contract above, shared by every metric that
    reads a report, so they cannot disagree on which side wins.
    """
    for source in (model_output, sample_list):
        if source is not None and key in source and source[key] is not None:
            return source[key]
    return None


class _ReportMetric(BaseMetric):
    """Reads (and gathers) report tensors by name, with errors that list what is there."""

    def __init__(self, name: str, gather: bool = True):
        super().__init__(name)
        self.gather = bool(gather)

    def _available(self, sample_list, model_output) -> List[str]:
        keys = set()
        for source in (model_output, sample_list):
            if source is not None:
                keys.update(k for k in source.keys() if isinstance(source[k], torch.Tensor))
        return sorted(keys)

    def _read(self, sample_list, model_output, key: str, optional: bool = False):
        value = report_value(key, sample_list, model_output)
        if value is None:
            if optional:
                return None
            raise KeyError(
                f"{self.name}: the report has no '{key}' (needs {self.required_params}); "
                f"tensors present: {self._available(sample_list, model_output)}"
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{self.name}: report key '{key}' is a {type(value).__name__}, not a tensor")
        return gather_rows(value) if self.gather else value


# --------------------------------------------------------------- r@k_general
@registry.register_metric("r@k_general")
class GeneralRecall(_ReportMetric):
    """Full-ranking image<->text recall@k (FashionGen "general" protocol)."""

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 1024,
        rerank_k: int = 0,
        pair_batch_size: int = 256,
        text_keys: Sequence[str] = DEFAULT_TEXT_KEYS,
        image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS,
        gather: bool = True,
    ):
        super().__init__("r@k_general", gather)
        self.ks = _int_list(ks, "ks")
        self.chunk_size = int(chunk_size)
        self.rerank_k = int(rerank_k)
        self.pair_batch_size = int(pair_batch_size)
        self.text_keys, self.image_keys = list(text_keys), list(image_keys)
        self.required_params = ["image_embedding", "text_embedding", "product_id", "image_id"]
        if self.rerank_k > 0:
            self.required_params += self.text_keys + self.image_keys

    def calculate(self, sample_list, model_output, *args, model=None, **kwargs) -> Dict[str, float]:
        image = self._read(sample_list, model_output, "image_embedding")
        text = self._read(sample_list, model_output, "text_embedding")
        products = self._read(sample_list, model_output, "product_id")
        image_ids = self._read(sample_list, model_output, "image_id", optional=True)
        if self.rerank_k <= 0:
            return R.general_recalls(image, text, products, image_ids=image_ids, ks=self.ks, chunk_size=self.chunk_size)
        if model is None:
            raise ValueError("r@k_general: rerank_k > 0 needs calculate(..., model=model)")
        pairs = {key: self._read(sample_list, model_output, key) for key in self.text_keys + self.image_keys}
        scorer = model_pair_scorer(
            _unwrap(model),
            pairs,
            text_keys=self.text_keys,
            image_keys=self.image_keys,
            make_batch=SampleList,
        )
        return two_stage_general_recalls(
            image,
            text,
            products,
            _shard_pairs_across_ranks(scorer),
            shortlist_k=self.rerank_k,
            image_ids=image_ids,
            ks=self.ks,
            chunk_size=self.chunk_size,
            pair_batch_size=self.pair_batch_size,
        )


# --------------------------------------------------------------- r@k_kaleido
@registry.register_metric("r@k_kaleido")
class HundredNegativeRecall(_ReportMetric):
    """Recall@k among the positive + 100 same-subcategory negatives, over seeds."""

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        num_queries: int = 1000,
        num_negatives: int = 100,
        seeds: Sequence[int] = (0, 1, 2, 3, 4),
        scoring: str = "embedding",
        pair_batch_size: Optional[int] = None,
        text_keys: Sequence[str] = DEFAULT_TEXT_KEYS,
        image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS,
        gather: bool = True,
    ):
        super().__init__("r@k_kaleido", gather)
        if scoring not in ("embedding", "model"):
            raise ValueError(f"r@k_kaleido: scoring must be 'embedding' or 'model', got {scoring!r}")
        self.ks = _int_list(ks, "ks")
        self.seeds = _int_list(seeds, "seeds")
        self.num_queries, self.num_negatives = int(num_queries), int(num_negatives)
        self.scoring = scoring
        default_batch = 8192 if scoring == "embedding" else 256
        self.pair_batch_size = int(pair_batch_size or default_batch)
        self.text_keys, self.image_keys = list(text_keys), list(image_keys)
        self.required_params = ["product_id", "subcategory_id"]
        if scoring == "embedding":
            self.required_params += ["image_embedding", "text_embedding"]
        else:
            self.required_params += self.text_keys + self.image_keys
        self._warned = False

    def calculate(self, sample_list, model_output, *args, model=None, **kwargs) -> Dict[str, float]:
        products = self._read(sample_list, model_output, "product_id")
        subcategories = self._read(sample_list, model_output, "subcategory_id")
        if self.scoring == "embedding":
            scorer = R.embedding_pair_scorer(
                self._read(sample_list, model_output, "image_embedding"),
                self._read(sample_list, model_output, "text_embedding"),
            )
        else:
            if model is None:
                raise ValueError("r@k_kaleido: scoring 'model' needs calculate(..., model=model)")
            pairs = {key: self._read(sample_list, model_output, key) for key in self.text_keys + self.image_keys}
            scorer = _shard_pairs_across_ranks(
                model_pair_scorer(
                    _unwrap(model),
                    pairs,
                    text_keys=self.text_keys,
                    image_keys=self.image_keys,
                    make_batch=SampleList,
                )
            )
        self._warn_short(products, subcategories)
        return R.hundred_negative_recalls(
            products,
            subcategories,
            scorer,
            num_queries=self.num_queries,
            num_negatives=self.num_negatives,
            seeds=self.seeds,
            ks=self.ks,
            pair_batch_size=self.pair_batch_size,
        )

    def _warn_short(self, products, subcategories) -> None:
        if self._warned:
            return
        sample = R.sample_hundred_negatives(
            products,
            subcategories,
            num_queries=self.num_queries,
            num_negatives=self.num_negatives,
            seed=self.seeds[0],
        )
        if sample.num_short_queries:
            warnings.warn(
                f"r@k_kaleido: {sample.num_short_queries} of {sample.query_rows.numel()} queries "
                f"have fewer than {self.num_negatives} same-subcategory negatives (small "
                f"subcategories); they are ranked among fewer candidates"
            )
        self._warned = True


# ------------------------------------------------------ galleries (TGIR, OCIR)
class _GalleryMetric(_ReportMetric):
    gallery_modes = ("split",)
    fallback_mode = ""

    def __init__(self, name, gallery, gallery_id_key, gallery_category_key, query_keys, gather):
        super().__init__(name, gather)
        if gallery not in self.gallery_modes:
            raise ValueError(f"{name}: gallery must be one of {self.gallery_modes}, got {gallery!r}")
        self.gallery = gallery
        self.gallery_id_key, self.gallery_category_key = gallery_id_key, gallery_category_key
        self.id_key, self.category_key = query_keys
        self.required_params = ["query_embedding", self.id_key, self.category_key]
        if gallery == "split":
            self.required_params += ["gallery_embedding", "gallery_id", "gallery_category"]
        else:
            self.required_params += ["target_embedding"]

    def _gallery(self, sample_list, model_output, model, dataset):
        if self.gallery == self.fallback_mode:
            return R.unique_gallery(
                self._read(sample_list, model_output, "target_embedding"),
                self._read(sample_list, model_output, self.id_key),
                self._read(sample_list, model_output, self.category_key),
            )
        keys = ("gallery_embedding", "gallery_id", "gallery_category")
        found = [report_value(key, sample_list, model_output) for key in keys]
        if all(value is not None for value in found):
            return R.unique_gallery(*(self._read(sample_list, model_output, key) for key in keys))
        if dataset is not None and hasattr(dataset, "gallery_dataset") and model is not None:
            from mmf_fashion.retrieval.gallery import embed_image_dataset

            embedded = embed_image_dataset(
                _unwrap(model),
                dataset.gallery_dataset(),
                id_key=self.gallery_id_key,
                category_key=self.gallery_category_key,
                progress=False,
            )
            return R.unique_gallery(embedded["embedding"], embedded["id"], embedded["category"])
        raise KeyError(
            f"{self.name}: gallery '{self.gallery}' needs report keys {list(keys)} or "
            f"calculate(..., model=, dataset=) with dataset.gallery_dataset(); tensors present: "
            f"{self._available(sample_list, model_output)}"
        )


@registry.register_metric("r@k_fashioniq")
class FashionIQRecall(_GalleryMetric):
    """Text-guided image retrieval recall@k per FashionIQ category and their mean."""

    gallery_modes = ("split", "unique_targets")
    fallback_mode = "unique_targets"

    def __init__(
        self,
        ks: Sequence[int] = (10, 50),
        categories: Sequence[str] = ("dress", "shirt", "toptee"),
        gallery: str = "split",
        exclude_reference: bool = False,
        chunk_size: int = 1024,
        gallery_id_key: str = "target_id",
        gallery_category_key: str = "fashioniq_category",
        gather: bool = True,
    ):
        super().__init__(
            "r@k_fashioniq",
            gallery,
            gallery_id_key,
            gallery_category_key,
            ("target_id", "fashioniq_category"),
            gather,
        )
        self.ks = _int_list(ks, "ks")
        self.categories = [str(c) for c in categories]
        self.exclude_reference = bool(exclude_reference)
        self.chunk_size = int(chunk_size)
        if self.exclude_reference:
            self.required_params.append("reference_id")

    def calculate(self, sample_list, model_output, *args, model=None, dataset=None, **kwargs):
        query = self._read(sample_list, model_output, "query_embedding")
        targets = self._read(sample_list, model_output, "target_id")
        categories = self._read(sample_list, model_output, "fashioniq_category")
        references = self._read(sample_list, model_output, "reference_id") if self.exclude_reference else None
        gallery_emb, gallery_ids, gallery_cats = self._gallery(sample_list, model_output, model, dataset)
        return R.fashioniq_recalls(
            query,
            targets,
            categories,
            gallery_emb,
            gallery_ids,
            gallery_cats,
            category_names=self.categories,
            ks=self.ks,
            chunk_size=self.chunk_size,
            reference_ids=references,
        )


@registry.register_metric("r@k_ocir")
class OCIRRecall(_GalleryMetric):
    """Outfit complementary item retrieval recall@k within the blank's category."""

    gallery_modes = ("split", "blanks")
    fallback_mode = "blanks"

    def __init__(
        self,
        ks: Sequence[int] = (10, 30, 50),
        gallery: str = "split",
        per_category: bool = False,
        chunk_size: int = 1024,
        gallery_id_key: str = "blank_id",
        gallery_category_key: str = "blank_category",
        gather: bool = True,
    ):
        super().__init__(
            "r@k_ocir",
            gallery,
            gallery_id_key,
            gallery_category_key,
            ("blank_id", "blank_category"),
            gather,
        )
        self.ks = _int_list(ks, "ks")
        self.per_category = bool(per_category)
        self.chunk_size = int(chunk_size)

    def calculate(self, sample_list, model_output, *args, model=None, dataset=None, **kwargs):
        query = self._read(sample_list, model_output, "query_embedding")
        blanks = self._read(sample_list, model_output, "blank_id")
        categories = self._read(sample_list, model_output, "blank_category")
        gallery_emb, gallery_ids, gallery_cats = self._gallery(sample_list, model_output, model, dataset)
        return R.ocir_recalls(
            query,
            blanks,
            categories,
            gallery_emb,
            gallery_ids,
            gallery_cats,
            ks=self.ks,
            chunk_size=self.chunk_size,
            per_category=self.per_category,
        )


# ------------------------------------------------ classification, in percent
# The contract wants every metric in percent. MMF's classification metrics
# return fractions, so each one a scores/targets model can reach is registered
# again under its own name as a subclass that multiplies by 100. Why here and
# not as a bridge patch: percent is this project's convention, not an rc10
# defect the bridge repairs (a newer MMF returns fractions too), and patching
# F1.calculate would scale MacroF1 & co. through their parent. Our
# registration wins because this module imports mmf.modules.metrics (where
# MMF registers them) first and MMF's registry overwrites a name; MetricSet
# and MMF's Metrics both look names up at build time, so `evaluation.metrics:
# [accuracy, macro_f1]` gets these. MMF's VQA, caption, visual-dialog r@1/5/10
# and mean_rr metrics stay out: nothing here produces their inputs (answers,
# captions, 100 dialog candidates).
# name -> (MMF's class, default sklearn params). Three of rc10's classes
# compute the wrong quantity: micro_ap and macro_ap subclass ROC_AUC (they
# return ROC AUC) and multilabel_macro_f1 subclasses F1 (it argmaxes the
# multi-hot targets); here they are built on the right parent instead.
PERCENT_OF_MMF = {
    "accuracy": (mmf_metrics.Accuracy, {}),
    "f1": (mmf_metrics.F1, {}),
    "macro_f1": (mmf_metrics.MacroF1, {}),
    "micro_f1": (mmf_metrics.MicroF1, {}),
    "binary_f1": (mmf_metrics.BinaryF1, {}),
    "multilabel_f1": (mmf_metrics.MultiLabelF1, {}),
    "multilabel_micro_f1": (mmf_metrics.MultiLabelMicroF1, {}),
    "multilabel_macro_f1": (mmf_metrics.MultiLabelF1, {"average": "macro"}),
    "roc_auc": (mmf_metrics.ROC_AUC, {}),
    "micro_roc_auc": (mmf_metrics.MicroROC_AUC, {}),
    "macro_roc_auc": (mmf_metrics.MacroROC_AUC, {}),
    "ap": (mmf_metrics.AveragePrecision, {}),
    "micro_ap": (mmf_metrics.AveragePrecision, {"average": "micro"}),
    "macro_ap": (mmf_metrics.AveragePrecision, {"average": "macro"}),
}


def _percent_metric(name: str, mmf_class: type, defaults: dict) -> type:
    def __init__(self, *args, gather: bool = True, **kwargs):
        mmf_class.__init__(self, *args, **{**defaults, **kwargs})
        self.name = name
        self.gather = bool(gather)

    def calculate(self, sample_list, model_output, *args, **kwargs):
        if self.gather and is_distributed():
            # MMF's classes read model_output["scores"] and sample_list["targets"]
            sample_list = {"targets": gather_rows(sample_list["targets"])}
            model_output = {"scores": gather_rows(model_output["scores"])}
        return 100.0 * mmf_class.calculate(self, sample_list, model_output, *args, **kwargs)

    # a subclass, so params, required_params and isinstance stay MMF's
    return type(
        f"Percent{mmf_class.__name__}",
        (mmf_class,),
        {
            "__module__": __name__,
            "__doc__": f"MMF's {name} ({mmf_class.__name__}) in percent (0-100), not a fraction.",
            "__init__": __init__,
            "calculate": calculate,
        },
    )


for _name, (_mmf_class, _defaults) in PERCENT_OF_MMF.items():
    registry.register_metric(_name)(_percent_metric(_name, _mmf_class, _defaults))
del _name, _mmf_class, _defaults
