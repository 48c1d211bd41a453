"""Ranking maths for retrieval evaluation (plain torch, never imports MMF).

Cheatsheet::

    from mmf_fashion.metrics import ranking as R

    ranks = R.first_positive_ranks(query_emb, gallery_emb, query_ids, gallery_ids,
                                   chunk_size=1024)       # (Q,) 0-based
    R.recall_at_k(ranks, ks=(1, 5, 10))                   # {1: 41.2, 5: .., 10: ..} percent
    R.general_recalls(image_emb, text_emb, product_ids)   # full ranking both ways
    R.hundred_negative_recalls(product_ids, subcategory_ids,
                               R.embedding_pair_scorer(image_emb, text_emb))
    R.fashioniq_recalls(query_emb, target_ids, query_cats, gallery_emb, gallery_ids, gallery_cats)
    R.ocir_recalls(query_emb, blank_ids, blank_cats, gallery_emb, gallery_ids, gallery_cats)

Rank and tie rule (the same in every function of this package):
- a query's rank is the 0-based position of its BEST-ranked positive (any
  gallery item with the query's label); hit@k <=> rank < k;
- rank = number of NEGATIVES whose score is >= the best positive's score: a
  negative tied with the positive counts as ranked before it (pessimistic),
  so a model that outputs constants scores no hits; other positives never
  push a positive down;
- a query with no positive in its gallery gets rank NO_POSITIVE_RANK (a miss
  at every k);
- scores are dot products of the embeddings as given (models return L2
  normalised embeddings, so these are cosines); half precision is computed in
  float32, float64 stays float64.

Memory: similarities are computed for `chunk_size` queries at a time, so peak
memory is O(chunk_size x gallery), never query x gallery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

NO_POSITIVE_RANK = 2**62

# (text_rows, image_rows) -> scores, higher = better match; rows index a report
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------- checks
def check_embeddings(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """2-D, finite; half precision promoted to float32. Errors name the tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name}: expected shape (N, D), got {tuple(tensor.shape)}")
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    bad = ~torch.isfinite(tensor).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name}: non-finite values (NaN/inf) in rows {rows}")
    return tensor


def check_labels(name: str, tensor: torch.Tensor, length: int) -> torch.Tensor:
    """1-D integer labels of the given length ((N, 1) is flattened)."""
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    if tensor.dim() == 2 and tensor.shape[1] == 1:
        tensor = tensor.flatten()
    if tensor.dim() != 1 or tensor.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},), got {tuple(tensor.shape)}")
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer ids, got {tensor.dtype}")
    return tensor.long()


def _common_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


# ------------------------------------------------------------------- ranking
def first_positive_ranks(
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    *,
    chunk_size: int = 1024,
    query_excluded_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """0-based rank of each query's best positive (see the module's tie rule).

    query_excluded_labels (Q,): optional; gallery items whose label equals it
    are left out of that query's ranking unless they are positives (FashionIQ
    variant that drops the reference image). Returns a LongTensor (Q,) on CPU.
    """
    query_emb = check_embeddings("query embeddings", query_emb)
    gallery_emb = check_embeddings("gallery embeddings", gallery_emb)
    if query_emb.shape[1] != gallery_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: queries {query_emb.shape[1]}, gallery {gallery_emb.shape[1]}")
    num_queries = query_emb.shape[0]
    query_labels = check_labels("query labels", query_labels, num_queries)
    gallery_labels = check_labels("gallery labels", gallery_labels, gallery_emb.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    device = gallery_emb.device
    dtype = _common_dtype(query_emb, gallery_emb)
    gallery = gallery_emb.to(dtype)
    # gallery labels sorted once: a query's positives are found by binary search,
    # so no (chunk x G) label-equality mask is ever built
    sorted_labels, order = torch.sort(gallery_labels.to(device), stable=True)
    excluded = None
    if query_excluded_labels is not None:
        excluded = check_labels("query excluded labels", query_excluded_labels, num_queries)

    ranks = torch.empty(num_queries, dtype=torch.long)
    for start in range(0, num_queries, chunk_size):
        end = min(start + chunk_size, num_queries)
        labels = query_labels[start:end].to(device)
        scores = query_emb[start:end].to(device=device, dtype=dtype) @ gallery.T
        rows, cols = _matching_entries(sorted_labels, order, labels)
        positive_scores = scores[rows, cols]
        best = torch.full((end - start,), float("-inf"), dtype=dtype, device=device)
        best.scatter_reduce_(0, rows, positive_scores, reduce="amax")
        # count everything at or above the best positive, then take the positives
        # (and excluded items) back out; uint8 -> int32 sums are the fastest exact count
        ahead = scores >= best[:, None]
        count = ahead.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()
        del ahead
        count -= _count_at_or_above(rows, positive_scores, best)
        if excluded is not None:
            excluded_labels = excluded[start:end].to(device)
            ex_rows, ex_cols = _matching_entries(sorted_labels, order, excluded_labels)
            keep = excluded_labels[ex_rows] != labels[ex_rows]  # an excluded positive stays
            ex_rows, ex_cols = ex_rows[keep], ex_cols[keep]
            count -= _count_at_or_above(ex_rows, scores[ex_rows, ex_cols], best)
        del scores
        has_positive = torch.zeros(end - start, dtype=torch.bool, device=device)
        has_positive[rows] = True
        count[~has_positive] = NO_POSITIVE_RANK
        ranks[start:end] = count.cpu()
    return ranks


def _matching_entries(
    sorted_labels: torch.Tensor, order: torch.Tensor, labels: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row, gallery index) of every gallery item whose label equals labels[row]."""
    low = torch.searchsorted(sorted_labels, labels)
    counts = torch.searchsorted(sorted_labels, labels, right=True) - low
    rows = torch.repeat_interleave(torch.arange(labels.numel(), device=labels.device), counts)
    first_of_row = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    positions = torch.arange(rows.numel(), device=labels.device) - first_of_row + low[rows]
    return rows, order[positions]


def _count_at_or_above(rows: torch.Tensor, scores: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    flags = (scores >= best[rows]).long()
    return torch.zeros(best.numel(), dtype=torch.long, device=best.device).scatter_add_(0, rows, flags)


def recall_at_k(ranks: torch.Tensor, ks: Iterable[int]) -> Dict[int, float]:
    """{k: percentage of ranks < k}. An empty ranks tensor gives 0.0."""
    ranks = torch.as_tensor(ranks)
    if ranks.numel() == 0:
        return {int(k): 0.0 for k in ks}
    return {int(k): 100.0 * (ranks < int(k)).double().mean().item() for k in ks}


def ranks_among_candidates(
    positive_scores: torch.Tensor, negative_scores: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Rank of the positive among its own candidate list (pessimistic ties).

    positive_scores (Q,), negative_scores (Q, M), valid (Q, M) bool (padding
    columns are False and never counted).
    """
    if not (torch.isfinite(positive_scores).all() and torch.isfinite(negative_scores[valid]).all()):
        raise ValueError("pair scores contain NaN/inf")
    return ((negative_scores >= positive_scores[:, None]) & valid).sum(dim=1).long()


def chunked_topk(
    query_emb: torch.Tensor, gallery_emb: torch.Tensor, k: int, *, chunk_size: int = 1024
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery items per query: (scores (Q, k'), indices (Q, k')), k' = min(k, G).

    Deterministic: equal scores are ordered by gallery index (lower first).
    """
    query_emb = check_embeddings("query embeddings", query_emb)
    gallery_emb = check_embeddings("gallery embeddings", gallery_emb)
    k = min(int(k), gallery_emb.shape[0])
    dtype = _common_dtype(query_emb, gallery_emb)
    gallery = gallery_emb.to(dtype)
    all_scores, all_indices = [], []
    for start in range(0, query_emb.shape[0], chunk_size):
        scores = query_emb[start : start + chunk_size].to(gallery.device, dtype) @ gallery.T
        if k == 0:
            top_scores, top_indices = scores[:, :0], torch.empty(scores.shape[0], 0, dtype=torch.long)
        else:
            top_scores, top_indices = _deterministic_topk(scores, k)
        all_scores.append(top_scores.cpu())
        all_indices.append(top_indices.cpu())
    if not all_scores:
        return torch.empty(0, k, dtype=dtype), torch.empty(0, k, dtype=torch.long)
    return torch.cat(all_scores), torch.cat(all_indices)


def _first_row_of_each(inverse: torch.Tensor, num_labels: int) -> torch.Tensor:
    """first[j] = smallest row r with inverse[r] == j (inverse from torch.unique)."""
    rows = torch.arange(inverse.numel())
    first = torch.full((num_labels,), inverse.numel(), dtype=torch.long)
    return first.scatter_reduce_(0, inverse.cpu(), rows, reduce="amin")


def _deterministic_topk(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """torch.topk, made deterministic: rows where the k-th score is tied with an
    item left out are redone with a stable sort; then order by (score desc, index)."""
    values, indices = scores.topk(k, dim=1)
    kth = values.amin(dim=1, keepdim=True)
    tied_total = (scores == kth).view(torch.uint8).sum(dim=1, dtype=torch.int32)
    ambiguous = (tied_total > (values == kth).sum(dim=1)).nonzero().flatten()
    for row in ambiguous.tolist():
        order = torch.sort(scores[row], descending=True, stable=True).indices[:k]
        values[row], indices[row] = scores[row, order], order
    # lower index first, then a stable sort by score keeps that order among ties
    indices, by_index = torch.sort(indices, dim=1)
    values = values.gather(1, by_index)
    values, by_score = torch.sort(values, dim=1, descending=True, stable=True)
    return values, indices.gather(1, by_score)


def first_occurrence_rows(labels: torch.Tensor) -> torch.Tensor:
    """Row index of the first occurrence of every distinct label, in row order."""
    labels = torch.as_tensor(labels).flatten().cpu()
    if labels.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    unique, inverse = torch.unique(labels, return_inverse=True)
    return torch.sort(_first_row_of_each(inverse, unique.numel())).values


# ------------------------------------------------------- full ranking (general)
def general_recalls(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    product_ids: torch.Tensor,
    *,
    image_ids: Optional[torch.Tensor] = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> Dict[str, float]:
    """Full ranking both ways over an eval set of (image row, text) pairs.

    Rows are image rows; several rows may share a product (views). Texts are
    deduplicated by product id (first row's text); image rows by image_id
    when given (the repeats a DistributedSampler pads with). i2t: each image
    row ranks every product's text; t2i: each text ranks every image row and
    a hit is any view of its product. Keys i2t_r@k, t2i_r@k, avg (percent).
    """
    image_emb = check_embeddings("image_embedding", image_emb)
    text_emb = check_embeddings("text_embedding", text_emb)
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"image_embedding has {image_emb.shape[0]} rows, text_embedding {text_emb.shape[0]}")
    product_ids = check_labels("product_id", product_ids, image_emb.shape[0]).cpu()
    image_rows, text_rows = general_rows(product_ids, image_ids)
    dev_img, dev_txt = image_rows.to(image_emb.device), text_rows.to(text_emb.device)

    i2t = first_positive_ranks(
        image_emb[dev_img],
        text_emb[dev_txt],
        product_ids[image_rows],
        product_ids[text_rows],
        chunk_size=chunk_size,
    )
    t2i = first_positive_ranks(
        text_emb[dev_txt],
        image_emb[dev_img],
        product_ids[text_rows],
        product_ids[image_rows],
        chunk_size=chunk_size,
    )
    return directional_recalls(i2t, t2i, ks)


def general_rows(
    product_ids: torch.Tensor, image_ids: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(image_rows, text_rows) of the full-ranking protocol: image rows
    deduplicated by image_id (all rows when None), one text row per product."""
    product_ids = check_labels("product_id", product_ids, torch.as_tensor(product_ids).shape[0]).cpu()
    image_rows = torch.arange(product_ids.numel())
    if image_ids is not None:
        image_ids = check_labels("image_id", image_ids, product_ids.numel()).cpu()
        _check_image_ids_consistent(image_ids, product_ids)
        image_rows = first_occurrence_rows(image_ids)
    return image_rows, first_occurrence_rows(product_ids)


def directional_recalls(i2t_ranks: torch.Tensor, t2i_ranks: torch.Tensor, ks) -> Dict[str, float]:
    """{"i2t_r@k": .., "t2i_r@k": .., "avg": mean of all of them}."""
    out = {f"i2t_r@{k}": v for k, v in recall_at_k(i2t_ranks, ks).items()}
    out.update({f"t2i_r@{k}": v for k, v in recall_at_k(t2i_ranks, ks).items()})
    out["avg"] = sum(out.values()) / len(out)
    return out


def _check_image_ids_consistent(image_ids: torch.Tensor, product_ids: torch.Tensor) -> None:
    pairs = torch.unique(torch.stack([image_ids, product_ids], dim=1), dim=0)
    if pairs.shape[0] != torch.unique(image_ids).numel():
        ids, counts = torch.unique(pairs[:, 0], return_counts=True)
        bad = ids[counts > 1][0].item()
        raise ValueError(f"image_id {bad} appears with more than one product_id")


# ------------------------------------------------ 100-negative protocol (Kaleido)
@dataclass
class HundredNegativeSample:
    """One seed's draw. Rows index the report; -1 pads short candidate lists.

    query_rows (Q,): one view of each query product: the image query (i2t) and
    the positive image (t2i); its text is the product's text.
    negative_text_rows (Q, M): a row of each negative product (its text).
    negative_image_rows (Q, M): a random view of each negative product.
    """

    query_rows: torch.Tensor
    negative_text_rows: torch.Tensor
    negative_image_rows: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        return self.negative_text_rows >= 0

    @property
    def num_short_queries(self) -> int:
        """Queries with fewer negatives than asked (small subcategory)."""
        return int((~self.valid).any(dim=1).sum())


def sample_hundred_negatives(
    product_ids: torch.Tensor,
    subcategory_ids: torch.Tensor,
    *,
    num_queries: int = 1000,
    num_negatives: int = 100,
    seed: int = 0,
) -> HundredNegativeSample:
    """Draw the 100-negative protocol's candidates, deterministically by seed.

    - queries: `num_queries` distinct products drawn uniformly without
      replacement (all of them if there are fewer) among products whose
      subcategory holds at least one other product (a query with no negative
      would be a free hit); the query uses a random view of its product;
    - negatives: `num_negatives` distinct OTHER products of the SAME
      subcategory, without replacement; if the subcategory has fewer, all of
      them (the candidate list is shorter, never filled from elsewhere).
    Every product must keep one subcategory across its rows.
    """
    product_ids = torch.as_tensor(product_ids)
    product_ids = check_labels("product_id", product_ids, product_ids.shape[0]).cpu()
    subcategory_ids = check_labels("subcategory_id", subcategory_ids, product_ids.shape[0]).cpu()
    if num_queries < 1 or num_negatives < 1:
        raise ValueError(f"num_queries and num_negatives must be >= 1, got {num_queries}, {num_negatives}")
    products, inverse = torch.unique(product_ids, sorted=True, return_inverse=True)
    num_products = products.numel()
    first_row = _first_row_of_each(inverse, num_products)  # first_row[p]: a row of product p
    product_subcategory = subcategory_ids[first_row]
    mismatch = (subcategory_ids != product_subcategory[inverse]).nonzero().flatten()
    if mismatch.numel():
        row = int(mismatch[0])
        raise ValueError(
            f"product_id {int(product_ids[row])} has subcategory_id {int(subcategory_ids[row])} "
            f"in row {row} but {int(product_subcategory[inverse[row]])} in row "
            f"{int(first_row[inverse[row]])}"
        )
    # views of each product: rows sorted by product, with offsets
    rows_by_product = torch.sort(inverse, stable=True).indices
    view_counts = torch.bincount(inverse, minlength=num_products)
    view_offsets = torch.cumsum(view_counts, 0) - view_counts

    members: Dict[int, torch.Tensor] = {}
    for sub in torch.unique(product_subcategory).tolist():
        members[sub] = (product_subcategory == sub).nonzero().flatten()  # sorted product indices
    eligible = torch.tensor(
        [p for p in range(num_products) if members[int(product_subcategory[p])].numel() > 1],
        dtype=torch.long,
    )
    if eligible.numel() == 0:
        raise ValueError("100-negative protocol: no subcategory holds two products")

    generator = torch.Generator().manual_seed(int(seed))

    def random_view(product_index: torch.Tensor) -> torch.Tensor:
        pick = (torch.rand(product_index.shape, generator=generator) * view_counts[product_index]).long()
        pick = torch.minimum(pick, view_counts[product_index] - 1)
        return rows_by_product[view_offsets[product_index] + pick]

    chosen = eligible[torch.randperm(eligible.numel(), generator=generator)[:num_queries]]
    query_rows = random_view(chosen)
    neg_products = torch.full((chosen.numel(), num_negatives), -1, dtype=torch.long)
    for i, product in enumerate(chosen.tolist()):
        group = members[int(product_subcategory[product])]
        own = int(torch.searchsorted(group, product))
        draw = torch.randperm(group.numel() - 1, generator=generator)[:num_negatives]
        draw = draw + (draw >= own).long()  # skip the query's own product
        neg_products[i, : draw.numel()] = group[draw]
    valid = neg_products >= 0
    safe = neg_products.clamp(min=0)
    negative_text_rows = torch.where(valid, first_row[safe], torch.full_like(safe, -1))
    negative_image_rows = torch.where(valid, random_view(safe), torch.full_like(safe, -1))
    return HundredNegativeSample(query_rows, negative_text_rows, negative_image_rows)


def embedding_pair_scorer(image_emb: torch.Tensor, text_emb: torch.Tensor) -> PairScorer:
    """Pair scorer from embeddings: dot(text_emb[t], image_emb[i])."""
    image_emb = check_embeddings("image_embedding", image_emb)
    text_emb = check_embeddings("text_embedding", text_emb)
    dtype = _common_dtype(image_emb, text_emb)

    def score(text_rows: torch.Tensor, image_rows: torch.Tensor) -> torch.Tensor:
        t = text_emb[text_rows.to(text_emb.device)].to(dtype)
        i = image_emb[image_rows.to(image_emb.device)].to(device=t.device, dtype=dtype)
        return (t * i).sum(dim=1)

    return score


def score_pairs_in_batches(
    pair_scorer: PairScorer, text_rows: torch.Tensor, image_rows: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Call pair_scorer on at most batch_size pairs at a time; (P,) float on CPU."""
    out: List[torch.Tensor] = []
    for start in range(0, text_rows.numel(), batch_size):
        t, i = text_rows[start : start + batch_size], image_rows[start : start + batch_size]
        scores = torch.as_tensor(pair_scorer(t, i)).detach().flatten()
        if scores.numel() != t.numel():
            raise ValueError(f"pair scorer returned {scores.numel()} scores for {t.numel()} pairs")
        out.append(scores.double().cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def hundred_negative_ranks(
    sample: HundredNegativeSample, pair_scorer: PairScorer, *, pair_batch_size: int = 8192
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(i2t_ranks, t2i_ranks) of one draw; only the Q x (1 + M) pairs are scored.

    The positive pair (the query product's text, the query view) is shared by
    both directions; i2t negatives pair the query view with other products'
    texts, t2i negatives pair the query text with other products' views.
    """
    q = sample.query_rows
    valid = sample.valid
    query_col = q[:, None].expand_as(valid)
    text_rows = torch.cat([q, sample.negative_text_rows[valid], query_col[valid]])
    image_rows = torch.cat([q, query_col[valid], sample.negative_image_rows[valid]])
    scores = score_pairs_in_batches(pair_scorer, text_rows, image_rows, pair_batch_size)
    num_q, num_valid = q.numel(), int(valid.sum())
    positive = scores[:num_q]
    i2t_neg = torch.zeros(valid.shape, dtype=scores.dtype)
    t2i_neg = torch.zeros(valid.shape, dtype=scores.dtype)
    i2t_neg[valid] = scores[num_q : num_q + num_valid]
    t2i_neg[valid] = scores[num_q + num_valid :]
    return (
        ranks_among_candidates(positive, i2t_neg, valid),
        ranks_among_candidates(positive, t2i_neg, valid),
    )


def hundred_negative_recalls(
    product_ids: torch.Tensor,
    subcategory_ids: torch.Tensor,
    pair_scorer: PairScorer,
    *,
    num_queries: int = 1000,
    num_negatives: int = 100,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    ks: Sequence[int] = (1, 5, 10),
    pair_batch_size: int = 8192,
) -> Dict[str, float]:
    """The 100-negative protocol, each recall averaged over `seeds` draws."""
    if len(seeds) == 0:
        raise ValueError("100-negative protocol: seeds is empty")
    totals: Dict[str, float] = {}
    for seed in seeds:
        sample = sample_hundred_negatives(
            product_ids,
            subcategory_ids,
            num_queries=num_queries,
            num_negatives=num_negatives,
            seed=int(seed),
        )
        i2t, t2i = hundred_negative_ranks(sample, pair_scorer, pair_batch_size=pair_batch_size)
        for key, value in directional_recalls(i2t, t2i, ks).items():
            totals[key] = totals.get(key, 0.0) + value
    return {key: value / len(seeds) for key, value in totals.items()}


# ------------------------------------------------ within-category retrieval
def grouped_first_positive_ranks(
    query_emb: torch.Tensor,
    query_labels: torch.Tensor,
    query_groups: torch.Tensor,
    gallery_emb: torch.Tensor,
    gallery_labels: torch.Tensor,
    gallery_groups: torch.Tensor,
    *,
    chunk_size: int = 1024,
    query_excluded_labels: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """first_positive_ranks where each query only sees the gallery of its group."""
    query_emb = check_embeddings("query embeddings", query_emb)
    gallery_emb = check_embeddings("gallery embeddings", gallery_emb)
    num_q, num_g = query_emb.shape[0], gallery_emb.shape[0]
    query_labels = check_labels("query labels", query_labels, num_q).cpu()
    query_groups = check_labels("query groups", query_groups, num_q).cpu()
    gallery_labels = check_labels("gallery labels", gallery_labels, num_g).cpu()
    gallery_groups = check_labels("gallery groups", gallery_groups, num_g).cpu()
    if query_excluded_labels is not None:
        query_excluded_labels = check_labels("query excluded labels", query_excluded_labels, num_q).cpu()
    ranks = torch.full((num_q,), NO_POSITIVE_RANK, dtype=torch.long)
    for group in torch.unique(query_groups).tolist():
        q_rows = (query_groups == group).nonzero().flatten()
        g_rows = (gallery_groups == group).nonzero().flatten()
        if g_rows.numel() == 0:
            continue
        excluded = None if query_excluded_labels is None else query_excluded_labels[q_rows]
        ranks[q_rows] = first_positive_ranks(
            query_emb[q_rows.to(query_emb.device)],
            gallery_emb[g_rows.to(gallery_emb.device)],
            query_labels[q_rows],
            gallery_labels[g_rows],
            chunk_size=chunk_size,
            query_excluded_labels=excluded,
        )
    return ranks


def unique_gallery(
    embeddings: torch.Tensor, ids: torch.Tensor, groups: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the first row of every distinct (group, id) pair."""
    ids, groups = torch.as_tensor(ids).flatten().long(), torch.as_tensor(groups).flatten().long()
    keys = torch.stack([groups.cpu(), ids.cpu()], dim=1)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    rows = first_occurrence_rows(inverse)
    return embeddings[rows.to(embeddings.device)], ids[rows.to(ids.device)], groups[rows.to(groups.device)]


def _macro_over_groups(
    ranks: torch.Tensor, groups: torch.Tensor, ks: Sequence[int]
) -> Tuple[Dict[int, Dict[int, float]], Dict[int, float]]:
    per_group = {g: recall_at_k(ranks[groups == g], ks) for g in torch.unique(groups).tolist()}
    if not per_group:
        return per_group, {int(k): 0.0 for k in ks}
    mean = {int(k): sum(r[int(k)] for r in per_group.values()) / len(per_group) for k in ks}
    return per_group, mean


def fashioniq_recalls(
    query_emb: torch.Tensor,
    target_ids: torch.Tensor,
    query_categories: torch.Tensor,
    gallery_emb: torch.Tensor,
    gallery_ids: torch.Tensor,
    gallery_categories: torch.Tensor,
    *,
    category_names: Sequence[str] = ("dress", "shirt", "toptee"),
    ks: Sequence[int] = (10, 50),
    chunk_size: int = 1024,
    reference_ids: Optional[torch.Tensor] = None,
) -> Dict[str, float]:
    """TGIR: each query ranks its category's gallery; hit = the target's id.

    Keys "<category>_r@k" for every category present among the queries,
    "r@k" (mean over those categories) and "avg" (mean of the r@k). With
    reference_ids, the reference image is dropped from its query's gallery.
    """
    query_categories = check_labels("fashioniq_category", query_categories, query_emb.shape[0]).cpu()
    ranks = grouped_first_positive_ranks(
        query_emb,
        target_ids,
        query_categories,
        gallery_emb,
        gallery_ids,
        gallery_categories,
        chunk_size=chunk_size,
        query_excluded_labels=reference_ids,
    )
    per_category, mean = _macro_over_groups(ranks, query_categories, ks)
    out: Dict[str, float] = {}
    for category, recalls in per_category.items():
        name = category_names[category] if 0 <= category < len(category_names) else f"category{category}"
        out.update({f"{name}_r@{k}": v for k, v in recalls.items()})
    out.update({f"r@{k}": v for k, v in mean.items()})
    out["avg"] = sum(mean.values()) / len(mean)
    return out


def ocir_recalls(
    query_emb: torch.Tensor,
    blank_ids: torch.Tensor,
    blank_categories: torch.Tensor,
    gallery_emb: torch.Tensor,
    gallery_ids: torch.Tensor,
    gallery_categories: torch.Tensor,
    *,
    ks: Sequence[int] = (10, 30, 50),
    chunk_size: int = 1024,
    per_category: bool = False,
) -> Dict[str, float]:
    """OCIR: each outfit query ranks every gallery item of its blank's category.

    Keys "r@k" averaged over the categories present among the queries (macro),
    "avg" (mean of the r@k); with per_category also "cat<id>_r@k".
    """
    blank_categories = check_labels("blank_category", blank_categories, query_emb.shape[0]).cpu()
    ranks = grouped_first_positive_ranks(
        query_emb,
        blank_ids,
        blank_categories,
        gallery_emb,
        gallery_ids,
        gallery_categories,
        chunk_size=chunk_size,
    )
    groups, mean = _macro_over_groups(ranks, blank_categories, ks)
    out = {f"r@{k}": v for k, v in mean.items()}
    out["avg"] = sum(mean.values()) / len(mean)
    if per_category:
        for category, recalls in groups.items():
            out.update({f"cat{category}_r@{k}": v for k, v in recalls.items()})
    return out


# ------------------------------------------------------ two-stage re-ranking
def reranked_first_positive_ranks(
    shortlist: torch.Tensor,
    rerank_scores: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    first_stage_ranks: torch.Tensor,
) -> torch.Tensor:
    """Ranks after re-ordering each query's shortlist by a second score.

    shortlist (Q, K) gallery indices from chunked_topk; rerank_scores (Q, K)
    the second-stage score of each shortlisted pair. The final order is the
    shortlist re-sorted by rerank score, then the rest in first-stage order:
    a positive inside the shortlist is ranked there (pessimistic ties); a
    query without one keeps its first-stage rank (>= K, as the whole shortlist
    scored at least as high as its best positive).
    """
    query_labels = torch.as_tensor(query_labels).flatten().cpu()
    gallery_labels = torch.as_tensor(gallery_labels).flatten().cpu()
    shortlist, rerank_scores = shortlist.cpu(), rerank_scores.cpu()
    positive = gallery_labels[shortlist] == query_labels[:, None]
    best = rerank_scores.masked_fill(~positive, float("-inf")).amax(dim=1)
    inside = ((rerank_scores >= best[:, None]) & ~positive).sum(dim=1)
    return torch.where(positive.any(dim=1), inside, first_stage_ranks.cpu().long())
