"""The pure ranking functions against brute-force references written with plain
Python loops (sort every candidate list, negatives first among equal scores).

Embeddings are small multiples of 1/4 in a few dimensions: every dot product is
exact in float32 and float64, so ties are real ties in both implementations.
"""

import pytest
import torch

from mmf_fashion.metrics import ranking as R

NO_POS = R.NO_POSITIVE_RANK


# ---------------------------------------------------------------- references
def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def brute_rank(query_vec, gallery_vecs, query_label, gallery_labels, excluded=None):
    """Position of the first positive after sorting by score, negatives first on ties."""
    candidates = []
    for vec, label in zip(gallery_vecs, gallery_labels):
        is_positive = label == query_label
        if not is_positive and excluded is not None and label == excluded:
            continue
        candidates.append((-dot(query_vec, vec), is_positive))
    candidates.sort(key=lambda c: (c[0], c[1]))  # False (negative) before True on ties
    for position, (_, is_positive) in enumerate(candidates):
        if is_positive:
            return position
    return NO_POS


def brute_recall(ranks, k):
    return 100.0 * sum(1 for r in ranks if r < k) / len(ranks)


def brute_general(image, text, products, ks=(1, 5, 10)):
    image, text, products = image.tolist(), text.tolist(), products.tolist()
    text_of_product = {}
    for row, product in enumerate(products):
        text_of_product.setdefault(product, text[row])
    gallery_products = list(text_of_product)
    gallery_texts = [text_of_product[p] for p in gallery_products]
    i2t = [brute_rank(image[r], gallery_texts, products[r], gallery_products) for r in range(len(image))]
    t2i = [brute_rank(text_of_product[p], image, p, products) for p in gallery_products]
    out = {f"i2t_r@{k}": brute_recall(i2t, k) for k in ks}
    out.update({f"t2i_r@{k}": brute_recall(t2i, k) for k in ks})
    out["avg"] = sum(out.values()) / len(out)
    return out


def quarter_embeddings(n, dim=6, seed=0, low=-3, high=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, dim), generator=g).double() / 4


def assert_dicts_close(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], abs=1e-9), key


# ----------------------------------------------------------- first positives
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_positive_ranks_match_brute_force_with_ties_and_duplicates(seed):
    queries = quarter_embeddings(40, seed=seed, low=-1, high=2)  # coarse: many ties
    gallery = quarter_embeddings(60, seed=seed + 10, low=-1, high=2)
    g = torch.Generator().manual_seed(seed)
    gallery_labels = torch.randint(0, 25, (60,), generator=g)  # several positives per label
    query_labels = torch.randint(0, 30, (40,), generator=g)  # some labels have no positive
    ranks = R.first_positive_ranks(queries, gallery, query_labels, gallery_labels, chunk_size=7)
    expected = [
        brute_rank(q, gallery.tolist(), ql, gallery_labels.tolist())
        for q, ql in zip(queries.tolist(), query_labels.tolist())
    ]
    assert ranks.tolist() == expected
    assert NO_POS in expected  # the case is exercised


def test_chunked_equals_unchunked_for_every_chunk_size():
    queries, gallery = quarter_embeddings(50, seed=3), quarter_embeddings(70, seed=4)
    ql, gl = torch.arange(50) % 20, torch.arange(70) % 20
    reference = R.first_positive_ranks(queries, gallery, ql, gl, chunk_size=10_000)
    for chunk in (1, 3, 16, 49, 50):
        assert torch.equal(R.first_positive_ranks(queries, gallery, ql, gl, chunk_size=chunk), reference)
    # float32 gives the same ranks as float64 on exact values
    f32 = R.first_positive_ranks(queries.float(), gallery.float(), ql, gl, chunk_size=8)
    assert torch.equal(f32, reference)


def test_tie_with_a_negative_counts_against_the_positive():
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # positive, tied negative, worse
    ranks = R.first_positive_ranks(query, gallery, torch.tensor([5]), torch.tensor([5, 6, 7]))
    assert ranks.tolist() == [1]
    # a constant model scores no hit at k=1 and a hit at k=3
    constant = torch.ones(4, 3)
    ranks = R.first_positive_ranks(constant, constant, torch.arange(4), torch.arange(4))
    assert ranks.tolist() == [3, 3, 3, 3]
    assert R.recall_at_k(ranks, (1, 4)) == {1: 0.0, 4: 100.0}


def test_other_positives_do_not_push_the_best_positive_down():
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[0.9, 0.0], [1.0, 0.0], [0.8, 0.0]])  # pos, pos, neg
    ranks = R.first_positive_ranks(query, gallery, torch.tensor([1]), torch.tensor([1, 1, 2]))
    assert ranks.tolist() == [0]


def test_excluded_labels_leave_the_gallery_unless_positive():
    queries = quarter_embeddings(20, seed=5, low=-1, high=2)
    gallery = quarter_embeddings(30, seed=6, low=-1, high=2)
    gl = torch.arange(30) % 12
    ql = torch.arange(20) % 12
    excluded = (torch.arange(20) * 7) % 12  # sometimes equal to the query's own label
    ranks = R.first_positive_ranks(queries, gallery, ql, gl, chunk_size=4, query_excluded_labels=excluded)
    expected = [
        brute_rank(q, gallery.tolist(), a, gl.tolist(), excluded=e)
        for q, a, e in zip(queries.tolist(), ql.tolist(), excluded.tolist())
    ]
    assert ranks.tolist() == expected


def test_non_finite_embeddings_and_bad_labels_raise_clear_errors():
    good = torch.ones(3, 2)
    bad = good.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        R.first_positive_ranks(bad, good, torch.arange(3), torch.arange(3))
    with pytest.raises(ValueError, match="query labels"):
        R.first_positive_ranks(good, good, torch.arange(4), torch.arange(3))
    with pytest.raises(ValueError, match="integer ids"):
        R.first_positive_ranks(good, good, torch.ones(3), torch.arange(3))


def test_recall_at_k_is_a_percentage():
    ranks = torch.tensor([0, 1, 4, 9, NO_POS])
    assert R.recall_at_k(ranks, (1, 5, 10)) == {1: 20.0, 5: 60.0, 10: 80.0}


# -------------------------------------------------------------- full ranking
@pytest.mark.parametrize("seed", [0, 1])
def test_general_recalls_match_brute_force_with_multi_view_products(seed):
    g = torch.Generator().manual_seed(seed)
    products = torch.randint(0, 15, (45,), generator=g)  # ~3 views per product
    image = quarter_embeddings(45, seed=seed + 20, low=-1, high=2)
    text = quarter_embeddings(45, seed=seed + 30, low=-1, high=2)
    # views of one product share one text, as a builder emits them
    first = {}
    for row, p in enumerate(products.tolist()):
        first.setdefault(p, row)
        text[row] = text[first[p]]
    actual = R.general_recalls(image, text, products, chunk_size=4)
    assert_dicts_close(actual, brute_general(image, text, products))


def test_general_t2i_hit_is_any_view_of_the_product():
    # product 0 has two views; the second view matches the text best
    image = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    products = torch.tensor([0, 0, 1])
    out = R.general_recalls(image, text, products, ks=(1,))
    assert out["t2i_r@1"] == 50.0  # text 0 -> view 1 first (hit); text 1 -> image 1 first (miss)
    assert out["i2t_r@1"] == pytest.approx(100 / 3)  # view 0 -> text 1 (miss), view 1 hit, row 2 miss


def test_general_deduplicates_image_rows_by_image_id():
    image, text = quarter_embeddings(12, seed=7), quarter_embeddings(12, seed=8)
    products = torch.arange(12) // 2
    image_ids = torch.arange(12)
    once = R.general_recalls(image, text, products, image_ids=image_ids)
    # the same rows again (as DistributedSampler pads), with the same image ids
    repeated = R.general_recalls(
        torch.cat([image, image[:5]]),
        torch.cat([text, text[:5]]),
        torch.cat([products, products[:5]]),
        image_ids=torch.cat([image_ids, image_ids[:5]]),
    )
    assert repeated == once
    with pytest.raises(ValueError, match="image_id 0"):
        R.general_recalls(image, text, products, image_ids=torch.zeros(12, dtype=torch.long))


def test_chunked_topk_orders_ties_by_gallery_index():
    query = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.0], [1.0, 0.0]])
    scores, indices = R.chunked_topk(query, gallery, 3, chunk_size=1)
    assert indices.tolist() == [[1, 3, 2]]
    assert scores.tolist() == [[1.0, 1.0, 0.5]]
    many = quarter_embeddings(30, seed=9)
    s1, i1 = R.chunked_topk(many, many, 5, chunk_size=4)
    s2, i2 = R.chunked_topk(many, many, 5, chunk_size=100)
    assert torch.equal(i1, i2) and torch.equal(s1, s2)


# ------------------------------------------------------- 100-negative sampler
def kaleido_world(num_products=120, num_subcategories=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = torch.randint(1, 4, (num_products,), generator=g)
    products = torch.repeat_interleave(torch.arange(num_products) * 10 + 3, views)
    sub_of_product = torch.randint(0, num_subcategories, (num_products,), generator=g)
    subcategories = torch.repeat_interleave(sub_of_product, views)
    order = torch.randperm(products.numel(), generator=g)  # rows in no particular order
    return products[order], subcategories[order]


def test_sampler_draws_only_same_subcategory_negatives_never_the_positive():
    products, subs = kaleido_world()
    sample = R.sample_hundred_negatives(products, subs, num_queries=50, num_negatives=8, seed=3)
    assert sample.query_rows.numel() == 50
    query_products = products[sample.query_rows].tolist()
    assert len(set(query_products)) == 50  # distinct products
    for i, row in enumerate(sample.query_rows.tolist()):
        valid = sample.valid[i]
        neg_products = products[sample.negative_text_rows[i][valid]].tolist()
        assert products[sample.negative_image_rows[i][valid]].tolist() == neg_products
        assert query_products[i] not in neg_products
        assert len(set(neg_products)) == len(neg_products)
        assert set(subs[sample.negative_text_rows[i][valid]].tolist()) == {int(subs[row])}
        others = len(set(products[subs == subs[row]].tolist())) - 1
        assert len(neg_products) == min(8, others)


def test_sampler_is_deterministic_by_seed_and_changes_with_it():
    products, subs = kaleido_world()
    a = R.sample_hundred_negatives(products, subs, num_queries=30, num_negatives=5, seed=11)
    b = R.sample_hundred_negatives(products, subs, num_queries=30, num_negatives=5, seed=11)
    c = R.sample_hundred_negatives(products, subs, num_queries=30, num_negatives=5, seed=12)
    for field in ("query_rows", "negative_text_rows", "negative_image_rows"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.query_rows, c.query_rows)


def test_sampler_short_subcategories_and_ineligible_queries():
    # subcategory 0 has three products, subcategory 1 only one (never a query)
    products = torch.tensor([1, 1, 2, 3, 4])
    subs = torch.tensor([0, 0, 0, 0, 1])
    sample = R.sample_hundred_negatives(products, subs, num_queries=10, num_negatives=100, seed=0)
    assert sorted(products[sample.query_rows].tolist()) == [1, 2, 3]
    assert sample.valid.sum(dim=1).tolist() == [2, 2, 2]
    assert sample.num_short_queries == 3
    with pytest.raises(ValueError, match="product_id 1 has subcategory_id 5"):
        R.sample_hundred_negatives(torch.tensor([1, 1]), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="no subcategory holds two products"):
        R.sample_hundred_negatives(torch.tensor([1, 2]), torch.tensor([0, 1]))


def test_hundred_negative_recalls_match_brute_force_over_the_same_draws():
    products, subs = kaleido_world(seed=1)
    n = products.numel()
    image = quarter_embeddings(n, seed=40, low=-1, high=2)
    text = quarter_embeddings(n, seed=41, low=-1, high=2)
    seeds, ks = (0, 1, 2), (1, 5, 10)
    actual = R.hundred_negative_recalls(
        products,
        subs,
        R.embedding_pair_scorer(image, text),
        num_queries=40,
        num_negatives=12,
        seeds=seeds,
        ks=ks,
        pair_batch_size=37,
    )
    img, txt = image.tolist(), text.tolist()
    totals = {}
    for seed in seeds:
        s = R.sample_hundred_negatives(products, subs, num_queries=40, num_negatives=12, seed=seed)
        i2t, t2i = [], []
        for i, q in enumerate(s.query_rows.tolist()):
            positive = dot(img[q], txt[q])
            texts = [r for r in s.negative_text_rows[i].tolist() if r >= 0]
            views = [r for r in s.negative_image_rows[i].tolist() if r >= 0]
            i2t.append(sum(1 for r in texts if dot(img[q], txt[r]) >= positive))
            t2i.append(sum(1 for r in views if dot(img[r], txt[q]) >= positive))
        for k in ks:
            totals[f"i2t_r@{k}"] = totals.get(f"i2t_r@{k}", 0) + brute_recall(i2t, k) / len(seeds)
            totals[f"t2i_r@{k}"] = totals.get(f"t2i_r@{k}", 0) + brute_recall(t2i, k) / len(seeds)
    totals["avg"] = sum(totals.values()) / len(totals)
    assert_dicts_close(actual, totals)


def test_pair_scorer_size_mismatch_is_reported():
    with pytest.raises(ValueError, match="returned 1 scores for 3 pairs"):
        R.score_pairs_in_batches(lambda t, i: torch.zeros(1), torch.arange(3), torch.arange(3), 10)


# ------------------------------------------------------ fashioniq and ocir
def brute_grouped(query, q_labels, q_groups, gallery, g_labels, g_groups, ks, excluded=None):
    per_group = {}
    for i, (vec, label, group) in enumerate(zip(query.tolist(), q_labels.tolist(), q_groups.tolist())):
        rows = [j for j, gg in enumerate(g_groups.tolist()) if gg == group]
        rank = brute_rank(
            vec,
            [gallery.tolist()[j] for j in rows],
            label,
            [g_labels.tolist()[j] for j in rows],
            excluded=None if excluded is None else excluded.tolist()[i],
        )
        per_group.setdefault(group, []).append(rank)
    return {g: {k: brute_recall(r, k) for k in ks} for g, r in per_group.items()}


def tgir_world(seed=0):
    g = torch.Generator().manual_seed(seed)
    gallery_cats = torch.tensor([0] * 20 + [1] * 15 + [2] * 25)
    gallery_ids = torch.cat([torch.arange(20), torch.arange(15), torch.arange(25)])  # per category
    gallery = quarter_embeddings(60, seed=seed + 50, low=-1, high=2)
    query_cats = torch.randint(0, 3, (70,), generator=g)
    sizes = torch.tensor([20, 15, 25])
    target_ids = (torch.rand(70, generator=g) * sizes[query_cats]).long()
    reference_ids = (torch.rand(70, generator=g) * sizes[query_cats]).long()
    query = quarter_embeddings(70, seed=seed + 60, low=-1, high=2)
    return query, target_ids, query_cats, reference_ids, gallery, gallery_ids, gallery_cats


@pytest.mark.parametrize("drop_reference", [False, True])
def test_fashioniq_recalls_match_brute_force(drop_reference):
    query, targets, q_cats, refs, gallery, g_ids, g_cats = tgir_world()
    actual = R.fashioniq_recalls(
        query,
        targets,
        q_cats,
        gallery,
        g_ids,
        g_cats,
        ks=(1, 10),
        chunk_size=6,
        reference_ids=refs if drop_reference else None,
    )
    per = brute_grouped(
        query, targets, q_cats, gallery, g_ids, g_cats, (1, 10), excluded=refs if drop_reference else None
    )
    expected = {}
    for cat, name in enumerate(("dress", "shirt", "toptee")):
        expected.update({f"{name}_r@{k}": per[cat][k] for k in (1, 10)})
    for k in (1, 10):
        expected[f"r@{k}"] = sum(per[c][k] for c in per) / 3
    expected["avg"] = (expected["r@1"] + expected["r@10"]) / 2
    assert_dicts_close(actual, expected)


def test_fashioniq_unique_targets_gallery_and_missing_categories():
    query, targets, q_cats, _, gallery, g_ids, g_cats = tgir_world(seed=2)
    # gallery made of the query rows' targets, some repeated
    rows = [0, 0, 21, 21, 40]
    emb, ids, cats = R.unique_gallery(gallery[rows], g_ids[rows], g_cats[rows])
    assert ids.tolist() == [0, 1, 5] and cats.tolist() == [0, 1, 2]  # row 40 is toptee id 5
    assert torch.equal(emb, gallery[[0, 21, 40]])
    only_shirts = q_cats == 1
    out = R.fashioniq_recalls(query[only_shirts], targets[only_shirts], q_cats[only_shirts], gallery, g_ids, g_cats)
    assert set(out) == {"shirt_r@10", "shirt_r@50", "r@10", "r@50", "avg"}
    assert out["r@50"] == out["shirt_r@50"] == 100.0  # 15 shirts in the gallery < 50


def test_ocir_recalls_are_macro_averaged_over_categories():
    query, blanks, q_cats, _, gallery, g_ids, g_cats = tgir_world(seed=4)
    actual = R.ocir_recalls(query, blanks, q_cats, gallery, g_ids, g_cats, ks=(1, 3, 5), per_category=True)
    per = brute_grouped(query, blanks, q_cats, gallery, g_ids, g_cats, (1, 3, 5))
    for k in (1, 3, 5):
        assert actual[f"r@{k}"] == pytest.approx(sum(per[c][k] for c in per) / len(per))
        for c in per:
            assert actual[f"cat{c}_r@{k}"] == pytest.approx(per[c][k])
    assert actual["avg"] == pytest.approx(sum(actual[f"r@{k}"] for k in (1, 3, 5)) / 3)


def test_query_of_a_category_without_gallery_is_a_miss():
    query = torch.ones(2, 2)
    out = R.ocir_recalls(
        query,
        torch.tensor([0, 0]),
        torch.tensor([0, 1]),
        torch.ones(1, 2),
        torch.tensor([0]),
        torch.tensor([0]),
        ks=(10,),
    )
    assert out["r@10"] == 50.0  # category 0: hit (100), category 1: no gallery (0)


# ----------------------------------------------------------------- re-rank
def test_reranked_ranks_match_a_brute_force_two_stage_list():
    queries, gallery = quarter_embeddings(25, seed=70), quarter_embeddings(40, seed=71)
    ql, gl = torch.arange(25) % 13, torch.arange(40) % 13
    rerank = quarter_embeddings(40, seed=72, low=-1, high=2)  # a second, coarse embedding
    k = 6
    first = R.first_positive_ranks(queries, gallery, ql, gl)
    _, shortlist = R.chunked_topk(queries, gallery, k, chunk_size=7)
    second = torch.stack([(rerank[s] * rerank[q % 40]).sum(1) for q, s in enumerate(shortlist)])
    actual = R.reranked_first_positive_ranks(shortlist, second, ql, gl, first)
    for q in range(25):
        ordered = sorted(range(k), key=lambda j: (-second[q, j].item(), bool(gl[shortlist[q, j]] == ql[q])))
        positives = [pos for pos, j in enumerate(ordered) if gl[shortlist[q, j]] == ql[q]]
        expected = positives[0] if positives else first[q].item()
        assert actual[q].item() == expected
        if not positives:
            assert expected >= k


# ------------------------------------------- two-stage with a matching head
class TinyMatcher(torch.nn.Module):
    """A bilinear matching head: summed word vectors . linear(mean pixel colour).

    Weights and inputs are multiples of 1/4, so scores are exact whatever the
    batch a pair is scored in.
    """

    def __init__(self, vocab=30, dim=5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.words = torch.nn.Embedding(vocab, dim)
        self.colour = torch.nn.Linear(3, dim, bias=False)
        with torch.no_grad():
            self.words.weight.copy_(torch.randint(-2, 3, (vocab, dim), generator=g) / 4)
            self.colour.weight.copy_(torch.randint(-2, 3, (dim, 3), generator=g) / 4)
        self.calls = 0

    def match_scores(self, pairs):
        self.calls += 1
        words = (self.words(pairs["input_ids"]) * pairs["attention_mask"][..., None]).sum(1)
        return (words * self.colour(pairs["image"].mean(dim=(2, 3)))).sum(1)


def matcher_report(n=24, products=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    product_id = torch.randint(0, products, (n,), generator=g)
    ids_of_product = torch.randint(1, 30, (products, 4), generator=g)
    report = {
        "product_id": product_id,
        "input_ids": ids_of_product[product_id],
        "attention_mask": (torch.rand(products, 4, generator=g) > 0.3).long()[product_id],
        "token_type_ids": torch.zeros(n, 4, dtype=torch.long),
        "image": torch.randint(0, 4, (n, 3, 2, 2), generator=g).float(),
        "image_embedding": quarter_embeddings(n, seed=seed + 80),
        "text_embedding": quarter_embeddings(n, seed=seed + 81),
    }
    return report


def test_two_stage_with_a_full_shortlist_equals_ranking_by_the_matching_head():
    from mmf_fashion.metrics.rerank import model_pair_scorer, two_stage_general_recalls

    report = matcher_report()
    model = TinyMatcher()
    scorer = model_pair_scorer(model, report)
    actual = two_stage_general_recalls(
        report["image_embedding"],
        report["text_embedding"],
        report["product_id"],
        scorer,
        shortlist_k=1000,
        ks=(1, 3, 5),
        pair_batch_size=7,
    )
    # brute force: score every (text row, image row) pair with the head, rank with loops
    n = report["product_id"].numel()
    products = report["product_id"].tolist()
    text_rows = {}
    for row, p in enumerate(products):
        text_rows.setdefault(p, row)
    with torch.no_grad():
        grid_t = torch.arange(n).repeat_interleave(n)
        grid_i = torch.arange(n).repeat(n)
        full = (
            model.match_scores(
                {k: report[k][grid_t] for k in ("input_ids", "attention_mask")} | {"image": report["image"][grid_i]}
            )
            .view(n, n)
            .tolist()
        )

    def rank(scores_and_labels, label):
        ordered = sorted(scores_and_labels, key=lambda c: (-c[0], c[1] == label))
        return next(pos for pos, (_, lab) in enumerate(ordered) if lab == label)

    i2t = [rank([(full[t][i], p) for p, t in text_rows.items()], products[i]) for i in range(n)]
    t2i = [rank([(full[t][i], products[i]) for i in range(n)], p) for p, t in text_rows.items()]
    expected = {f"i2t_r@{k}": brute_recall(i2t, k) for k in (1, 3, 5)}
    expected.update({f"t2i_r@{k}": brute_recall(t2i, k) for k in (1, 3, 5)})
    expected["avg"] = sum(expected.values()) / 6
    assert_dicts_close(actual, expected)
    assert model.calls > 2  # scored in batches of 7 pairs


def test_two_stage_scores_only_the_shortlist_and_keeps_first_stage_beyond_it():
    from mmf_fashion.metrics.rerank import two_stage_ranks

    queries, gallery = quarter_embeddings(10, seed=90), quarter_embeddings(30, seed=91)
    ql, gl = torch.arange(10), torch.arange(30) % 15
    scored = []

    def scorer(q, g):
        scored.append(q.numel())
        return -g.double()  # prefers low gallery indices

    reranked, first = two_stage_ranks(queries, gallery, ql, gl, scorer, shortlist_k=4, pair_batch_size=8)
    assert sum(scored) == 40  # 10 queries x 4 shortlisted pairs, nothing else
    _, shortlist = R.chunked_topk(queries, gallery, 4)
    for q in range(10):
        members = shortlist[q].tolist()
        positives = [g for g in members if gl[g] == ql[q]]
        if positives:  # the head orders the shortlist by gallery index
            best = min(positives)
            assert reranked[q] == sum(1 for g in members if g < best and gl[g] != ql[q])
        else:
            assert reranked[q] == first[q] and first[q] >= 4
    assert 0 < sum(1 for q in range(10) if (gl[shortlist[q]] == ql[q]).any()) < 10


def test_pair_scorer_reports_missing_method_and_keys():
    from mmf_fashion.metrics.rerank import model_pair_scorer

    with pytest.raises(TypeError, match="has no match_scores"):
        model_pair_scorer(torch.nn.Linear(2, 2), matcher_report())
    report = matcher_report()
    del report["image"]
    with pytest.raises(KeyError, match=r"\['image'\]"):
        model_pair_scorer(TinyMatcher(), report)


def test_chunked_topk_equals_a_stable_full_sort_with_many_ties():
    queries = quarter_embeddings(30, seed=95, low=-1, high=2)  # coarse values: ties at every k
    gallery = quarter_embeddings(45, seed=96, low=-1, high=2)
    for k in (1, 4, 10, 45):
        scores, indices = R.chunked_topk(queries, gallery, k, chunk_size=8)
        for q in range(30):
            full = [dot(queries[q].tolist(), g) for g in gallery.tolist()]
            expected = sorted(range(45), key=lambda j: (-full[j], j))[:k]
            assert indices[q].tolist() == expected
            assert scores[q].tolist() == [full[j] for j in expected]
