"""The MMF metric classes: computed on an accumulated report, equal to the pure
functions (themselves checked against brute force in test_metrics_ranking.py);
MMF's classification metrics re-registered in percent (MMF's value x 100);
gathering across two real gloo processes with shards of different sizes.
Every registered metric against a brute-force reference: tests/test_registry.py."""

import os
import warnings

import pytest
import torch

from mmf_fashion.metrics import ranking as R


def quarter(n, dim=6, seed=0, low=-2, high=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, dim), generator=g).double() / 4


def retrieval_report(n=60, products=25, subcategories=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    product_id = torch.randint(0, products, (n,), generator=g) * 7
    text = quarter(n, seed=seed + 1)
    first = {}
    for row, p in enumerate(product_id.tolist()):
        first.setdefault(p, row)
        text[row] = text[first[p]]
    return {
        "image_embedding": quarter(n, seed=seed + 2),
        "text_embedding": text,
        "product_id": product_id,
        "image_id": torch.arange(n) + 1000,
        "subcategory_id": (product_id // 7) % subcategories,
    }


def tgir_report(seed=0, queries=50):
    g = torch.Generator().manual_seed(seed)
    gallery_category = torch.tensor([0] * 12 + [1] * 9 + [2] * 14)
    gallery_id = torch.arange(35) + 500  # global ids
    categories = torch.randint(0, 3, (queries,), generator=g)
    pick = torch.stack([torch.randint(0, 35, (1,), generator=g) for _ in range(queries)]).flatten()
    # a target of the query's own category
    target_rows = torch.tensor(
        [
            int((gallery_category == c).nonzero()[p % int((gallery_category == c).sum())])
            for c, p in zip(categories.tolist(), pick.tolist())
        ]
    )
    gallery = quarter(35, seed=seed + 3)
    return {
        "query_embedding": quarter(queries, seed=seed + 4),
        "target_embedding": gallery[target_rows],
        "target_id": gallery_id[target_rows],
        "reference_id": gallery_id[torch.roll(target_rows, 1)],
        "fashioniq_category": categories,
        "gallery_embedding": gallery,
        "gallery_id": gallery_id,
        "gallery_category": gallery_category,
    }


def ocir_report(seed=0):
    tgir = tgir_report(seed)
    return {
        "query_embedding": tgir["query_embedding"],
        "target_embedding": tgir["target_embedding"],
        "blank_id": tgir["target_id"],
        "blank_category": tgir["fashioniq_category"],
        "gallery_embedding": tgir["gallery_embedding"],
        "gallery_id": tgir["gallery_id"],
        "gallery_category": tgir["gallery_category"],
    }


def build(mmf_registry, name, **params):
    return mmf_registry.get_metric_class(name)(**params)


class DotMatcher(torch.nn.Module):
    """A matching head scoring a pair by a scaled dot product of its row features."""

    def __init__(self, text_key="text_embedding", image_key="image_embedding"):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.text_key, self.image_key = text_key, image_key
        self.pairs_seen = 0

    def match_scores(self, pairs):
        self.pairs_seen += pairs[self.text_key].shape[0]
        return self.scale * (pairs[self.text_key] * pairs[self.image_key]).sum(1)


# ------------------------------------------------------------------ params
def test_required_params_follow_the_params(mmf_registry):
    assert build(mmf_registry, "r@k_general").required_params == [
        "image_embedding",
        "text_embedding",
        "product_id",
        "image_id",
    ]
    assert "input_ids" in build(mmf_registry, "r@k_general", rerank_k=8).required_params
    model_mode = build(mmf_registry, "r@k_kaleido", scoring="model").required_params
    assert "image" in model_mode and "image_embedding" not in model_mode
    split = build(mmf_registry, "r@k_fashioniq").required_params
    assert {"gallery_embedding", "gallery_id", "gallery_category"} <= set(split)
    unique = build(mmf_registry, "r@k_fashioniq", gallery="unique_targets", exclude_reference=True)
    assert "target_embedding" in unique.required_params and "reference_id" in unique.required_params
    assert "target_embedding" in build(mmf_registry, "r@k_ocir", gallery="blanks").required_params
    with pytest.raises(ValueError, match="gallery must be one of"):
        build(mmf_registry, "r@k_ocir", gallery="unique_targets")
    with pytest.raises(ValueError, match="scoring must be"):
        build(mmf_registry, "r@k_kaleido", scoring="fast")


# ------------------------------------------------------------------ general
def test_general_on_a_report_equals_the_pure_function(mmf_registry):
    from mmf.common.sample import SampleList

    report = retrieval_report()
    metric = build(mmf_registry, "r@k_general", ks=[1, 5, 10], chunk_size=8)
    # keys may sit in either object; the trainer passes the same report twice
    sample_list = SampleList({k: report[k] for k in ("product_id", "image_id")})
    model_output = {k: report[k] for k in ("image_embedding", "text_embedding")}
    value = metric.calculate(sample_list, model_output)
    expected = R.general_recalls(
        report["image_embedding"], report["text_embedding"], report["product_id"], image_ids=report["image_id"]
    )
    assert value == expected
    assert set(value) == {"i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "avg"}
    # MMF's own Report (what the trainer accumulates) works as both arguments
    from mmf.common.report import Report

    full = Report(sample_list, model_output)
    assert metric.calculate(full, full) == expected
    assert all(isinstance(v, float) and 0 <= v <= 100 for v in value.values())


def test_general_missing_key_lists_what_is_there(mmf_registry):
    report = retrieval_report()
    del report["text_embedding"]
    with pytest.raises(KeyError, match=r"no 'text_embedding'.*image_embedding"):
        build(mmf_registry, "r@k_general").calculate(report, report)


def test_general_rerank_uses_the_models_matching_head(mmf_registry):
    report = retrieval_report(seed=3)
    # the head scores with a second pair of features: re-ranking must change the result
    report["text_feature"] = quarter(60, seed=30)
    report["image_feature"] = quarter(60, seed=31)
    metric = build(
        mmf_registry,
        "r@k_general",
        rerank_k=100,
        text_keys=["text_feature"],
        image_keys=["image_feature"],
        pair_batch_size=50,
    )
    model = DotMatcher("text_feature", "image_feature")
    with pytest.raises(ValueError, match="needs calculate"):
        metric.calculate(report, report)
    value = metric.calculate(report, report, model=model)
    # a full shortlist re-ranks everything: equal to full ranking by the head's features
    expected = R.general_recalls(report["image_feature"], report["text_feature"], report["product_id"])
    assert value == pytest.approx(expected)
    assert value != pytest.approx(metric_without_rerank(mmf_registry, report))
    assert model.pairs_seen > 0


def metric_without_rerank(mmf_registry, report):
    return build(mmf_registry, "r@k_general").calculate(report, report)


# ------------------------------------------------------------------ kaleido
def test_kaleido_embedding_and_model_scoring_agree(mmf_registry):
    report = retrieval_report(n=80, products=40, seed=5)
    params = dict(num_queries=30, num_negatives=6, seeds=[0, 1, 2], ks=[1, 5])
    with pytest.warns(UserWarning, match="fewer than 6"):  # small subcategories in this report
        by_embedding = build(mmf_registry, "r@k_kaleido", **params).calculate(report, report)
    expected = R.hundred_negative_recalls(
        report["product_id"],
        report["subcategory_id"],
        R.embedding_pair_scorer(report["image_embedding"], report["text_embedding"]),
        num_queries=30,
        num_negatives=6,
        seeds=[0, 1, 2],
        ks=[1, 5],
    )
    assert by_embedding == pytest.approx(expected)
    model = DotMatcher()
    with pytest.warns(UserWarning, match="fewer than 6"):
        by_model = build(
            mmf_registry,
            "r@k_kaleido",
            scoring="model",
            text_keys=["text_embedding"],
            image_keys=["image_embedding"],
            pair_batch_size=64,
            **params,
        ).calculate(report, report, model=model)
    assert by_model == pytest.approx(by_embedding)
    draws = [
        R.sample_hundred_negatives(
            report["product_id"], report["subcategory_id"], num_queries=30, num_negatives=6, seed=s
        )
        for s in (0, 1, 2)
    ]
    # only each query's own candidates: 1 positive + its negatives both ways
    assert model.pairs_seen == sum(30 + 2 * int(d.valid.sum()) for d in draws)
    assert model.pairs_seen <= 3 * 30 * (1 + 2 * 6)


def test_kaleido_warns_about_small_subcategories(mmf_registry):
    report = retrieval_report(n=40, products=12, subcategories=3)
    metric = build(mmf_registry, "r@k_kaleido", num_queries=10, num_negatives=100, seeds=[0])
    with pytest.warns(UserWarning, match="fewer than 100 same-subcategory negatives"):
        metric.calculate(report, report)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.calculate(report, report)  # warned once per metric object


# ------------------------------------------------------------- fashioniq
def test_fashioniq_split_gallery_from_report_keys(mmf_registry):
    report = tgir_report()
    value = build(mmf_registry, "r@k_fashioniq", chunk_size=4).calculate(report, report)
    expected = R.fashioniq_recalls(
        report["query_embedding"],
        report["target_id"],
        report["fashioniq_category"],
        report["gallery_embedding"],
        report["gallery_id"],
        report["gallery_category"],
    )
    assert value == expected
    assert set(value) == {
        "dress_r@10",
        "dress_r@50",
        "shirt_r@10",
        "shirt_r@50",
        "toptee_r@10",
        "toptee_r@50",
        "r@10",
        "r@50",
        "avg",
    }
    # a gallery repeated (as when every rank adds it) gives the same numbers
    doubled = dict(report)
    for key in ("gallery_embedding", "gallery_id", "gallery_category"):
        doubled[key] = torch.cat([report[key], report[key]])
    assert build(mmf_registry, "r@k_fashioniq").calculate(doubled, doubled) == expected


def test_fashioniq_unique_targets_and_reference_exclusion(mmf_registry):
    report = tgir_report(seed=1)
    unique = build(mmf_registry, "r@k_fashioniq", gallery="unique_targets", ks=[1, 5])
    emb, ids, cats = R.unique_gallery(report["target_embedding"], report["target_id"], report["fashioniq_category"])
    expected = R.fashioniq_recalls(
        report["query_embedding"], report["target_id"], report["fashioniq_category"], emb, ids, cats, ks=(1, 5)
    )
    without_gallery = {k: v for k, v in report.items() if not k.startswith("gallery")}
    assert unique.calculate(without_gallery, without_gallery) == expected
    excluding = build(mmf_registry, "r@k_fashioniq", exclude_reference=True, ks=[1, 5])
    expected_ex = R.fashioniq_recalls(
        report["query_embedding"],
        report["target_id"],
        report["fashioniq_category"],
        report["gallery_embedding"],
        report["gallery_id"],
        report["gallery_category"],
        ks=(1, 5),
        reference_ids=report["reference_id"],
    )
    assert excluding.calculate(report, report) == expected_ex


class ColourEmbedder(torch.nn.Module):
    """embed_images: a fixed linear map of the mean colour, L2 normalised."""

    def __init__(self, dim=6):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.proj = torch.nn.Linear(3, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 3, generator=g))

    def embed_images(self, images):
        return torch.nn.functional.normalize(self.proj(images.mean(dim=(2, 3))), dim=1)


class GalleryDataset(torch.utils.data.Dataset):
    def __init__(self, n=20):
        g = torch.Generator().manual_seed(2)
        self.images = torch.rand(n, 3, 4, 4, generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {
            "image": self.images[index],
            "target_id": torch.tensor(100 + index),
            "fashioniq_category": torch.tensor(index % 3),
        }


class Holder:
    def __init__(self):
        self.gallery = GalleryDataset()

    def gallery_dataset(self):
        return self.gallery


def test_fashioniq_embeds_the_gallery_dataset_when_given(mmf_registry):
    model, holder = ColourEmbedder(), Holder()
    gallery = model.embed_images(holder.gallery.images)
    ids = torch.arange(20) + 100
    cats = torch.arange(20) % 3
    queries = gallery[[1, 5, 9, 12]] + 0.01
    report = {"query_embedding": queries, "target_id": ids[[1, 5, 9, 12]], "fashioniq_category": cats[[1, 5, 9, 12]]}
    metric = build(mmf_registry, "r@k_fashioniq", ks=[1])
    with pytest.raises(KeyError, match="gallery_dataset"):
        metric.calculate(report, report)
    value = metric.calculate(report, report, model=model, dataset=holder)
    assert value == R.fashioniq_recalls(queries, ids[[1, 5, 9, 12]], cats[[1, 5, 9, 12]], gallery, ids, cats, ks=(1,))
    assert value["r@1"] == 100.0


# ------------------------------------------------------------------ ocir
def test_ocir_split_and_blanks_galleries(mmf_registry):
    report = ocir_report(seed=2)
    value = build(mmf_registry, "r@k_ocir", per_category=True).calculate(report, report)
    expected = R.ocir_recalls(
        report["query_embedding"],
        report["blank_id"],
        report["blank_category"],
        report["gallery_embedding"],
        report["gallery_id"],
        report["gallery_category"],
        per_category=True,
    )
    assert value == expected
    assert {"r@10", "r@30", "r@50", "avg"} <= set(value)
    blanks = build(mmf_registry, "r@k_ocir", gallery="blanks", ks=[1, 2])
    emb, ids, cats = R.unique_gallery(report["target_embedding"], report["blank_id"], report["blank_category"])
    assert blanks.calculate(report, report) == R.ocir_recalls(
        report["query_embedding"], report["blank_id"], report["blank_category"], emb, ids, cats, ks=(1, 2)
    )


# ------------------------------------------------------------------- SCR
def classification_report(seed, n=300, classes=12):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, classes, generator=g)
    targets = torch.randint(0, classes, (n,), generator=g)
    targets[targets == classes - 1] = classes - 2  # a class never in the targets, maybe predicted
    return {"scores": scores, "targets": targets}


def _inputs_for(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    if name.startswith("multilabel"):
        return {"scores": torch.randn(80, 5, generator=g), "targets": torch.randint(0, 2, (80, 5), generator=g)}
    if name in ("f1", "binary_f1"):
        return {"scores": torch.randn(80, 2, generator=g), "targets": torch.randint(0, 2, (80,), generator=g)}
    # every class among the targets: ROC AUC and AP are undefined for a class without positives
    return {"scores": torch.randn(80, 5, generator=g), "targets": torch.arange(80) % 5}


def test_every_fraction_metric_of_mmf_a_model_can_reach_is_percent(mmf_registry):
    """Same names as MMF, our classes (subclasses of MMF's), exactly MMF's value x 100."""
    from mmf_fashion.metrics.registered import PERCENT_OF_MMF

    assert {"accuracy", "macro_f1", "micro_f1", "binary_f1", "roc_auc"} <= set(PERCENT_OF_MMF)
    for name, (mmf_class, defaults) in PERCENT_OF_MMF.items():
        ours = mmf_registry.get_metric_class(name)
        assert ours.__module__ == "mmf_fashion.metrics.registered" and issubclass(ours, mmf_class), name
        report = _inputs_for(name)
        params = {"average": "samples"} if name == "multilabel_f1" else {}  # its sklearn default is binary
        fraction = float(mmf_class(**{**defaults, **params}).calculate(report, report))
        value = float(ours(**params).calculate(report, report))
        assert 0.0 <= fraction <= 1.0, name
        assert value == pytest.approx(100 * fraction, rel=1e-6), name


def test_the_percent_metrics_stay_the_ones_configs_get(mmf_registry):
    """After another setup_imports(), through our trainer's MetricSet and MMF's own
    Metrics: `metrics: [accuracy, macro_f1]` resolves to the percent classes."""
    from mmf.common.sample import SampleList
    from mmf.modules.metrics import Metrics
    from mmf.utils.env import setup_imports
    from omegaconf import OmegaConf

    from mmf_fashion.metrics.registered import PERCENT_OF_MMF
    from mmf_fashion.trainers.evaluation import MetricSet

    setup_imports()
    report = classification_report(3)
    expected = {
        name: 100 * float(PERCENT_OF_MMF[name][0]().calculate(report, report)) for name in ("accuracy", "macro_f1")
    }
    names = OmegaConf.create(["accuracy", {"type": "macro_f1"}])
    values = MetricSet(names).compute(report, "val", "fashiongen")
    assert values == {f"val/fashiongen/{name}/value": pytest.approx(v, rel=1e-6) for name, v in expected.items()}
    batch = SampleList({**report, "dataset_type": "val", "dataset_name": "fashiongen"})
    mmf_values = Metrics(names)(batch, report)
    assert {key: float(v) for key, v in mmf_values.items()} == {
        f"val/fashiongen/{name}": pytest.approx(v, rel=1e-6) for name, v in expected.items()
    }


# -------------------------------------------------------------- distributed
def _ddp_worker(rank, world, init_file, shards, out_dir):
    import mmf_fashion.bridge

    mmf_fashion.bridge.install()
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from mmf.common.registry import registry

        from mmf_fashion.metrics.registered import (
            FashionIQRecall,
            GeneralRecall,
            HundredNegativeRecall,
            gather_rows,
        )

        retrieval, tgir, classification = shards[rank]
        flags = torch.arange(retrieval["product_id"].numel()) % 2 == 0
        percent = {name: registry.get_metric_class(name)() for name in ("accuracy", "macro_f1")}
        results = {
            **{name: metric.calculate(classification, classification) for name, metric in percent.items()},
            "general": GeneralRecall(chunk_size=5).calculate(retrieval, retrieval),
            "kaleido": HundredNegativeRecall(
                num_queries=20,
                num_negatives=5,
                seeds=[0, 1],
                scoring="model",
                text_keys=["text_embedding"],
                image_keys=["image_embedding"],
                pair_batch_size=33,
            ).calculate(retrieval, retrieval, model=DotMatcher()),
            "fashioniq": FashionIQRecall().calculate(tgir, tgir),
            "flags": gather_rows(flags),
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still uses it (a SIGABRT otherwise)
    finally:
        dist.destroy_process_group()


def test_metrics_gather_uneven_shards_across_two_processes(tmp_path, mmf_registry):
    import torch.multiprocessing as mp

    retrieval = retrieval_report(n=70, products=30, seed=7)
    tgir = tgir_report(seed=7, queries=40)
    cut_r, cut_t = 23, 31  # uneven shards
    shard = lambda d, a, b: {k: v[a:b] for k, v in d.items()}  # noqa: E731
    gallery = {k: v for k, v in tgir.items() if k.startswith("gallery")}
    # SCR: 5 classes, class 4 only on rank 1, so per-rank macro F1s average to another figure
    generator = torch.Generator().manual_seed(7)
    targets = torch.cat([torch.randint(0, 4, (13,), generator=generator), torch.full((6,), 4)])
    classification = {"targets": targets, "scores": torch.randn(19, 5, generator=generator)}
    classification["scores"][::3] += 3 * torch.nn.functional.one_hot(targets[::3], 5)  # some right, some wrong
    cut_c = 11
    shards = [
        (shard(retrieval, 0, cut_r), {**shard(tgir, 0, cut_t), **gallery}, shard(classification, 0, cut_c)),
        # every rank has the gallery
        (shard(retrieval, cut_r, 70), {**shard(tgir, cut_t, 40), **gallery}, shard(classification, cut_c, 19)),
    ]
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), shards, str(tmp_path)), nprocs=2, join=True)
    outputs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    general = mmf_registry.get_metric_class("r@k_general")().calculate(retrieval, retrieval)
    kaleido = mmf_registry.get_metric_class("r@k_kaleido")(num_queries=20, num_negatives=5, seeds=[0, 1]).calculate(
        retrieval, retrieval
    )
    fashioniq = mmf_registry.get_metric_class("r@k_fashioniq")().calculate(tgir, tgir)
    from sklearn.metrics import accuracy_score, f1_score

    predicted = classification["scores"].argmax(1)
    accuracy = 100 * accuracy_score(classification["targets"], predicted)
    macro_f1 = 100 * f1_score(classification["targets"], predicted, average="macro")
    shard_f1s = [
        100 * f1_score(classification["targets"][a:b], predicted[a:b], average="macro") for a, b in ((0, 11), (11, 19))
    ]
    assert abs(sum(shard_f1s) / 2 - macro_f1) > 1  # the test can tell a gathered F1 from averaged shards
    for out in outputs:
        assert out["accuracy"] == pytest.approx(accuracy)
        assert out["macro_f1"] == pytest.approx(macro_f1)
        assert out["general"] == general
        assert out["kaleido"] == pytest.approx(kaleido)
        assert out["fashioniq"] == fashioniq
        expected_flags = torch.cat([torch.arange(cut_r) % 2 == 0, torch.arange(70 - cut_r) % 2 == 0])
        assert out["flags"].dtype == torch.bool and torch.equal(out["flags"], expected_flags)
