"""Two-stage retrieval: shortlist by embedding similarity, re-rank by a matching head.

Cheatsheet::

    from mmf_fashion.metrics.rerank import model_pair_scorer, two_stage_general_recalls

    scorer = model_pair_scorer(model, report)          # (text_rows, image_rows) -> (P,)
    two_stage_general_recalls(report["image_embedding"], report["text_embedding"],
                              report["product_id"], scorer, shortlist_k=16)
    # -> {"i2t_r@1": .., ..., "avg": ..}, the keys of ranking.general_recalls

The matching-head interface a model implements (docs/ARCHITECTURE.md)::

    model.match_scores(pairs) -> FloatTensor (P,)      # higher = better match

`pairs` is a batch of P (text, image) pairs built from rows of the evaluation
report: for every key in `text_keys` (default input_ids, attention_mask,
token_type_ids) the rows of the pairs' texts, for every key in `image_keys`
(default image) the rows of the pairs' images, moved to the model's device.
It is a plain dict unless `make_batch` wraps it (registered.py passes MMF's
SampleList). Typical implementation: the ITM logit of the "match" class.
It is called under torch.no_grad() and must not change the model's mode.

No MMF import here: plain torch, testable alone.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from mmf_fashion.metrics import ranking as R

DEFAULT_TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_IMAGE_KEYS = ("image",)


def _model_device(model) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def model_pair_scorer(
    model,
    report: Mapping[str, torch.Tensor],
    *,
    text_keys: Sequence[str] = DEFAULT_TEXT_KEYS,
    image_keys: Sequence[str] = DEFAULT_IMAGE_KEYS,
    make_batch: Callable[[Dict[str, torch.Tensor]], Mapping] = dict,
    method: str = "match_scores",
) -> R.PairScorer:
    """A pair scorer (text_rows, image_rows) -> (P,) backed by model.<method>(pairs)."""
    if not callable(getattr(model, method, None)):
        raise TypeError(
            f"{type(model).__name__} has no {method}(pairs) method: the model must implement "
            f"the matching-head interface (see mmf_fashion/metrics/rerank.py)"
        )
    overlap = set(text_keys) & set(image_keys)
    if overlap:
        raise ValueError(f"keys {sorted(overlap)} are listed both as text keys and image keys")
    missing = [key for key in (*text_keys, *image_keys) if key not in report]
    if missing:
        raise KeyError(f"pair scoring needs report keys {missing}; the report has {sorted(report.keys())}")
    device = _model_device(model)
    score_fn = getattr(model, method)

    def score(text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        batch = {}
        for keys, rows in ((text_keys, text_rows), (image_keys, image_rows)):
            for key in keys:
                value = report[key]
                batch[key] = value[rows.to(value.device)].to(device)
        with torch.no_grad():
            scores = score_fn(make_batch(batch))
        return torch.as_tensor(scores).float().flatten()

    return score


def two_stage_ranks(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    pair_scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    shortlist_k: int = 16,
    chunk_size: int = 1024,
    pair_batch_size: int = 256,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(re-ranked ranks, first-stage ranks) of every query.

    pair_scorer(query_index (P,), gallery_index (P,)) -> (P,): the second
    score of the pairs (indices into query_emb / gallery_emb). Only the
    Q x shortlist_k shortlisted pairs are scored. Recall@k for k <=
    shortlist_k depends on the second stage only; beyond it, on the first.
    """
    if shortlist_k < 1:
        raise ValueError(f"shortlist_k must be >= 1, got {shortlist_k}")
    first = R.first_positive_ranks(query_emb, gallery_emb, query_labels, gallery_labels, chunk_size=chunk_size)
    _, shortlist = R.chunked_topk(query_emb, gallery_emb, shortlist_k, chunk_size=chunk_size)
    num_q, k = shortlist.shape
    query_index = torch.arange(num_q)[:, None].expand(num_q, k).reshape(-1)
    scores = R.score_pairs_in_batches(pair_scorer, query_index, shortlist.reshape(-1), pair_batch_size)
    reranked = R.reranked_first_positive_ranks(shortlist, scores.view(num_q, k), query_labels, gallery_labels, first)
    return reranked, first


def two_stage_general_recalls(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    product_ids: torch.Tensor,
    text_image_scorer: R.PairScorer,
    *,
    shortlist_k: int = 16,
    image_ids: Optional[torch.Tensor] = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    pair_batch_size: int = 256,
) -> Dict[str, float]:
    """The full-ranking protocol (ranking.general_recalls) with a re-ranked shortlist.

    text_image_scorer(text_rows, image_rows) scores pairs of report rows,
    e.g. model_pair_scorer(model, report).
    """
    image_emb = R.check_embeddings("image_embedding", image_emb)
    text_emb = R.check_embeddings("text_embedding", text_emb)
    product_ids = R.check_labels("product_id", product_ids, image_emb.shape[0]).cpu()
    image_rows, text_rows = R.general_rows(product_ids, image_ids)
    images = image_emb[image_rows.to(image_emb.device)]
    texts = text_emb[text_rows.to(text_emb.device)]
    image_products, text_products = product_ids[image_rows], product_ids[text_rows]

    i2t, _ = two_stage_ranks(
        images,
        texts,
        image_products,
        text_products,
        lambda q, g: text_image_scorer(text_rows[g], image_rows[q]),
        shortlist_k=shortlist_k,
        chunk_size=chunk_size,
        pair_batch_size=pair_batch_size,
    )
    t2i, _ = two_stage_ranks(
        texts,
        images,
        text_products,
        image_products,
        lambda q, g: text_image_scorer(text_rows[q], image_rows[g]),
        shortlist_k=shortlist_k,
        chunk_size=chunk_size,
        pair_batch_size=pair_batch_size,
    )
    return R.directional_recalls(i2t, t2i, ks)
