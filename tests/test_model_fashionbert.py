"""FashionBERT: patch grid, negatives, adaptive weights, every head through MMF's registry."""

import itertools
import os

import pytest
import torch
from omegaconf import OmegaConf
from tiny_models import (
    FASHIONBERT_B as B,
)
from tiny_models import (
    FASHIONBERT_L as L,
)
from tiny_models import (
    FASHIONBERT_TINY_TEXT as TINY_TEXT,
)
from tiny_models import (
    build_fashionbert as _build,
)
from tiny_models import (
    fashionbert_batch as _sample_list,
)
from tiny_models import (
    fashionbert_config as _config,
)

from mmf_fashion.modules.fashionbert import (
    FashionBert,
    FashionBertOptions,
    SubcategoryTextBank,
    adaptive_loss_weights,
    choose_negative_rows,
    combine_losses,
    masked_patch_loss,
    pair_with_negative_texts,
    query_title_inputs,
    random_patch_mask,
    sample_alignment_negatives,
    task_gradient_gram,
)
from mmf_fashion.modules.fashionbert_patches import (
    PatchFeatureCache,
    fit_to_grid,
    merge_patches,
    precompute_patch_features,
    split_into_patches,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny convolutions gain nothing from a second thread, and on shared cores
    two threads were measured 10x slower than one; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------ patches
def test_patches_tile_the_image_exactly():
    images = torch.randn(2, 3, 64, 48)
    patches = split_into_patches(images, 4)
    assert patches.shape == (2, 16, 3, 16, 12)
    assert torch.equal(merge_patches(patches, 4), images)
    # row-major: patch 6 = grid row 1, column 2
    assert torch.equal(patches[:, 6], images[:, :, 16:32, 24:36])


def test_a_size_not_divisible_by_the_grid_is_resized_up_to_a_multiple():
    images = torch.randn(1, 3, 65, 70)
    fitted = fit_to_grid(images, 8)
    assert fitted.shape[-2:] == (72, 72)
    assert torch.equal(merge_patches(split_into_patches(fitted, 8), 8), fitted)
    assert fit_to_grid(images, 4, patch_size=16).shape[-2:] == (64, 64)
    assert fit_to_grid(fitted, 8) is fitted  # already a multiple: untouched
    with pytest.raises(ValueError, match="not a multiple"):
        split_into_patches(images, 8)


def test_patch_encoder_sees_each_patch_alone():
    net = FashionBert(FashionBertOptions(image_encoder="resnet18", grid_size=2, text_encoder=TINY_TEXT))
    net.eval()
    images = torch.randn(1, 3, 32, 32)
    features = net.encode_patches(images)
    changed = images.clone()
    changed[:, :, :16, :16] += 1.0  # only patch 0 changes
    new = net.encode_patches(changed)
    assert not torch.allclose(features[:, 0], new[:, 0])
    assert torch.allclose(features[:, 1:], new[:, 1:], atol=1e-6)


def test_patch_cache_round_trip_and_signature(tmp_path):
    path = str(tmp_path / "patches.pt")
    options = dict(
        image_encoder="resnet18",
        grid_size=2,
        patch_size=16,
        text_encoder=TINY_TEXT,
        freeze_image_encoder=True,
        patch_cache_file=path,
    )
    net = FashionBert(FashionBertOptions(**options))
    images, ids = torch.randn(3, 3, 32, 32), torch.tensor([7, 8, 9])
    count = precompute_patch_features(net, [(ids, images)])
    assert count == 3 and os.path.isfile(path)
    direct = net.image_encoder(images)
    reloaded = FashionBert(FashionBertOptions(**options))
    reloaded.load_state_dict(net.state_dict())
    assert len(reloaded.patch_cache) == 3
    # cached rows come from the file, whatever pixels are passed now
    assert torch.allclose(reloaded.encode_patches(torch.zeros_like(images), ids), direct, atol=1e-6)
    with pytest.raises(ValueError, match="grid_size"):
        PatchFeatureCache(path, {"encoder": "resnet18", "weights": None, "grid_size": 4, "patch_size": 16})
    with pytest.raises(ValueError, match="frozen"):
        FashionBertOptions(**{**options, "freeze_image_encoder": False})


def test_eval_pair_scoring_runs_the_cnn_once_per_image():
    net = FashionBert(
        FashionBertOptions(
            image_encoder="resnet18",
            grid_size=2,
            patch_size=16,
            text_encoder=TINY_TEXT,
            heads=("alignment",),
            tasks=("alignment",),
        )
    )
    calls = []
    net.image_encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    net.eval()
    images = torch.randn(3, 3, 32, 32)
    pair_rows = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    ids = torch.randint(1000, 2000, (7, L))
    with torch.no_grad():
        direct = net.score_pairs(images[pair_rows], ids, torch.ones_like(ids))
        calls.clear()
        first = net.score_pairs(images[pair_rows[:4]], ids[:4], torch.ones_like(ids[:4]), image_ids=pair_rows[:4])
        second = net.score_pairs(images[pair_rows[4:]], ids[4:], torch.ones_like(ids[4:]), image_ids=pair_rows[4:])
    assert calls == [3]  # images 0, 1, 2 once; the second call reuses them all
    assert torch.allclose(torch.cat([first, second]), direct, atol=1e-5)
    net.train()
    net.eval()  # a mode switch forgets the memo (the weights may have changed)
    with torch.no_grad():
        net.score_pairs(images[:1], ids[:1], torch.ones_like(ids[:1]), image_ids=torch.tensor([0]))
    assert calls == [3, 1]


# --------------------------------------------------------------- negatives
def test_negatives_come_from_the_same_subcategory():
    product = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])
    subcategory = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    for seed in range(20):
        partner = sample_alignment_negatives(product, subcategory, torch.Generator().manual_seed(seed))
        for row in range(5):  # rows with another product of their subcategory
            assert subcategory[partner[row]] == subcategory[row]
            assert product[partner[row]] != product[row]
        # row 5 is alone in subcategory 2: any other product; rows 6, 7 share product 6
        for row in (5, 6, 7):
            assert product[partner[row]] != product[row]
    alone = sample_alignment_negatives(torch.tensor([3, 3]), torch.tensor([1, 1]))
    assert alone.tolist() == [-1, -1]


def test_negative_rows_leave_a_matched_row():
    partner = torch.tensor([1, 0, 3, 2])
    rows = choose_negative_rows(partner, 0.5, torch.Generator().manual_seed(0))
    assert int(rows.sum()) == 2
    assert int(choose_negative_rows(partner, 0.99).sum()) == 3
    assert not choose_negative_rows(torch.tensor([-1, -1]), 0.5).any()


def _alignment_net(**extra):
    return FashionBert(
        FashionBertOptions(
            image_encoder="resnet18",
            grid_size=2,
            patch_size=16,
            text_encoder=TINY_TEXT,
            heads=("alignment",),
            tasks=("alignment",),
            **extra,
        )
    )


def test_in_batch_negatives_swap_the_text_within_the_subcategory():
    net = _alignment_net()
    product, subcategory = torch.arange(B), torch.tensor([0, 0, 1, 1, 2, 2])
    features = torch.randn(B, 4, net.image_encoder.out_channels)
    ids = torch.randint(1000, 2000, (B, L))
    net.eval()  # evaluation: batch negatives only, the bank is neither read nor filled
    result = net.alignment_loss(
        features, ids, torch.ones_like(ids), product, subcategory, generator=torch.Generator().manual_seed(1)
    )
    swapped = result["labels"] == 0
    assert int(swapped.sum()) == 3
    assert torch.equal(subcategory[result["text_product"]], subcategory)
    assert torch.equal(result["text_product"] != product, swapped)
    assert set(result["negative_source"][swapped].tolist()) == {2} and len(net.negative_bank) == 0


def test_bank_negatives_come_from_the_same_subcategory_across_batches():
    """Each batch holds one product per subcategory, so only the bank (earlier
    batches) can give a same-subcategory negative; in-batch falls back to any product."""
    net = _alignment_net(negative_bank_size=3)
    net.train()
    generator = torch.Generator().manual_seed(0)
    subcategory_of, sources = {}, []
    for step in range(8):
        product = torch.arange(B) + 100 * step
        product[0] = 7  # one product (alone in subcategory 0) comes back in every batch: never its own negative
        subcategory = torch.tensor([0, 1, 2, 3, 4, 5]) if step % 2 else torch.tensor([0, 5, 4, 3, 2, 1])
        ids = product[:, None].repeat(1, L)  # a text names its product
        features = torch.randn(B, 4, net.image_encoder.out_channels)
        seen_before = dict(subcategory_of)
        result = net.alignment_loss(features, ids, torch.ones_like(ids), product, subcategory, generator=generator)
        negative = result["labels"] == 0
        for row in negative.nonzero().flatten().tolist():
            other = int(result["text_product"][row])
            assert other != int(product[row])
            own_subcategory = int(subcategory[row])
            if any(s == own_subcategory and p != int(product[row]) for p, s in seen_before.items()):
                assert result["negative_source"][row] == 1 and seen_before[other] == own_subcategory
        sources += result["negative_source"][negative].tolist()
        subcategory_of.update(zip(product.tolist(), subcategory.tolist()))
    assert 2 in sources[:3] and sources.count(1) > sources.count(2)
    assert max(len(bucket) for bucket in net.negative_bank.entries.values()) <= 3


def test_bank_texts_are_fitted_to_the_batch_length():
    bank = SubcategoryTextBank(2)
    bank.add(
        torch.tensor([1]),
        torch.tensor([4]),
        torch.tensor([[101, 9, 9, 102]]),
        torch.ones(1, 4, dtype=torch.long),
        torch.zeros(1, 4, dtype=torch.long),
    )
    ids = torch.tensor([[101, 5, 5, 5, 5, 102], [101, 6, 6, 6, 6, 102]])
    pairs = pair_with_negative_texts(
        ids,
        torch.ones_like(ids),
        None,
        torch.tensor([2, 3]),
        torch.tensor([4, 4]),
        0.5,
        bank,
        torch.Generator().manual_seed(0),
    )
    row = int(pairs["negative"].nonzero())
    assert pairs["input_ids"][row].tolist() == [101, 9, 9, 102, 0, 0]
    assert pairs["attention_mask"][row].tolist() == [1, 1, 1, 1, 0, 0]
    assert int(pairs["source"][row]) == 1 and int(pairs["text_product"][row]) == 1
    assert bank.candidates(4, 1) == []  # never a product's own text


# ---------------------------------------------------------- losses, weights
def _objective(weights, gram, alpha):
    """The FashionBERT sub-problem: 1/2 ||sum_i w_i g_i||^2 + (alpha*K/2) ||w - 1/K||^2."""
    num = gram.shape[0]
    return 0.5 * weights @ gram @ weights + 0.5 * alpha * num * ((weights - 1.0 / num) ** 2).sum()


def _grid_search(gram, alpha, steps):
    num, best, best_value = gram.shape[0], None, float("inf")
    for point in itertools.product(range(steps + 1), repeat=num - 1):
        if sum(point) > steps:
            continue
        weights = torch.tensor([*point, steps - sum(point)], dtype=torch.float64) / steps
        value = float(_objective(weights, gram, alpha))
        if value < best_value:
            best, best_value = weights, value
    return best, best_value


@pytest.mark.parametrize("num, steps", [(2, 2000), (3, 200)])
def test_adaptive_weights_solve_the_subproblem_like_a_grid_search(num, steps):
    generator = torch.Generator().manual_seed(num)
    for trial in range(6):
        gradients = torch.randn(num, 5, generator=generator, dtype=torch.float64)
        gradients *= torch.tensor([10.0, 1.0, 0.2][:num], dtype=torch.float64)[:, None]  # unequal norms
        if trial % 2:  # conflicting tasks
            gradients[1] = -0.5 * gradients[0] + 0.1 * gradients[1]
        gram = gradients @ gradients.t()
        for alpha in (0.0, 0.05, 1.0):
            weights = adaptive_loss_weights(gram, alpha, normalize=False).double()
            assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64)) and (weights >= 0).all()
            grid_weights, grid_value = _grid_search(gram, alpha, steps)
            assert float(_objective(weights, gram, alpha)) <= grid_value + 1e-9
            assert torch.allclose(weights, grid_weights, atol=3.0 / steps + 1e-3)


def test_normalised_weights_ignore_the_gradient_scale():
    gram = torch.tensor([[4.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.1]])
    assert torch.allclose(adaptive_loss_weights(gram), adaptive_loss_weights(1e4 * gram), atol=1e-6)
    assert torch.allclose(adaptive_loss_weights(gram, alpha=1e6), torch.full((3,), 1 / 3), atol=1e-4)
    assert adaptive_loss_weights(torch.ones(1, 1)).tolist() == [1.0]
    assert adaptive_loss_weights(torch.zeros(2, 2), alpha=0.0).tolist() == [0.5, 0.5]
    assert adaptive_loss_weights(torch.full((2, 2), float("nan"))).tolist() == [0.5, 0.5]


def test_a_dominant_gradient_gets_the_smallest_weight_on_a_toy_shared_layer():
    """Three losses read orthogonal directions of one shared linear layer's output,
    with gradient norms 10 : 1 : 0.5; orthogonal gradients make the sub-problem's
    solution w_i ~ 1 / (||g_i||^2 + alpha*K) (Gram normalised by its mean diagonal)."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 3)
    hidden = shared(torch.randn(4, 3))
    scales = torch.tensor([10.0, 1.0, 0.5])
    losses = [scales[i] * hidden[:, i].sum() / 2.0 for i in range(3)]  # d L_i / d hidden[:, i] = scale_i / 2
    gram = task_gradient_gram(losses, [hidden])
    norms = (scales / 2.0) ** 2 * 4  # 4 rows
    assert torch.allclose(gram, torch.diag(norms), atol=1e-5)
    weights = adaptive_loss_weights(gram, alpha=1.0)
    g = norms / norms.mean()
    expected = (1.0 / (g + 3.0)) / (1.0 / (g + 3.0)).sum()
    assert torch.allclose(weights, expected, atol=1e-5)
    assert weights.argmin() == 0 and weights.argmax() == 2
    grid_weights, _ = _grid_search(gram.double() / float(norms.mean()), 1.0, 200)
    assert torch.allclose(weights.double(), grid_weights, atol=0.02)
    # through the parameters (the last_layer stand-in): the same ordering
    by_weight = adaptive_loss_weights(task_gradient_gram(losses, list(shared.parameters())), alpha=1.0)
    assert by_weight.argmin() == 0 and torch.isclose(by_weight.sum(), torch.tensor(1.0))


def test_combined_loss_uses_constant_weights():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(0.5, requires_grad=True)
    total, weights = combine_losses({"mlm": a, "mpm": b}, {"mlm": 0.25, "mpm": 0.75})
    total.backward()
    assert torch.isclose(a.grad, torch.tensor(0.25)) and torch.isclose(b.grad, torch.tensor(0.75))
    assert torch.isclose(total, torch.tensor(0.25 * 2.0 + 0.75 * 0.5))


def test_the_pretraining_step_weights_its_losses_by_the_subproblem(mmf_registry):
    model = _build(mmf_registry, head="pretraining")
    model.train()
    torch.manual_seed(3)
    output = model(_sample_list())
    state = model._adaptive_state
    weights = output["loss_weights"]
    assert set(weights) == {"mlm", "mpm", "alignment"} and state["weights"] is not None
    assert torch.isclose(sum(weights.values()), torch.tensor(1.0)) and all(float(w) >= 0 for w in weights.values())
    assert {task: round(float(w), 5) for task, w in weights.items()} == {
        task: round(w, 5) for task, w in state["weights"].items()
    }
    # they are the sub-problem's solution for this step's gradients (last BERT layer)
    batch = _sample_list()
    input_ids, attention_mask, token_type_ids, labels = model.text_inputs(batch, masked=True)
    result = model.pretraining_losses(
        model.encode_patches(batch["image"]),
        input_ids,
        attention_mask,
        labels,
        batch["product_id"],
        batch["subcategory_id"],
        token_type_ids,
    )
    names = list(result["losses"])
    layer = list(model.text_encoder.encoder.layer[-1].parameters())
    gram = task_gradient_gram([result["losses"][task] for task in names], layer)
    expected = adaptive_loss_weights(gram, alpha=1.0)
    assert torch.allclose(torch.stack([result["weights"][task] for task in names]), expected, atol=1e-6)
    for task, loss in output["unweighted_losses"].items():
        assert torch.isclose(output["losses"][f"train/fashiongen/{task}"], weights[task] * loss)
    model.eval()  # no graph: uniform weights, whatever the training history
    with torch.no_grad():
        evaluated = model(_sample_list())
    assert all(torch.isclose(w, torch.tensor(1 / 3)) for w in evaluated["loss_weights"].values())


def test_weights_and_unweighted_losses_reach_the_training_log(mmf_registry, monkeypatch):
    lines = []

    class Writer:
        def write(self, message, level="info"):
            lines.append(message)

    state = mmf_registry.mapping["state"]
    monkeypatch.setitem(state, "writer", Writer())
    monkeypatch.setitem(state, "config", OmegaConf.merge(state["config"], {"training": {"log_interval": 2}}))
    monkeypatch.setitem(state, "num_updates", 0)
    model = _build(mmf_registry, head="pretraining", loss_weighting={"adaptive": {"grad_source": "sequence_output"}})
    model.train()
    model(_sample_list())
    assert lines == []  # update 1: not a logged update
    monkeypatch.setitem(state, "num_updates", 1)
    model(_sample_list())
    assert len(lines) == 1 and "fashionbert update 2: loss weights mlm:" in lines[0]
    assert "unweighted losses mlm:" in lines[0] and "alignment:" in lines[0]


@pytest.mark.parametrize(
    "weighting, mode, source",
    [
        ({"mode": "fixed", "fixed": {"mlm": 0.5}}, "fixed", "last_layer"),
        ("fixed", "fixed", "last_layer"),
        ({"adaptive": False}, "fixed", "last_layer"),  # the older boolean form
        ({"mode": "adaptive", "adaptive": {"grad_source": "shared", "alpha": 0.5}}, "adaptive", "shared"),
    ],
)
def test_loss_weighting_config_forms(weighting, mode, source):
    from mmf_fashion.models.fashionbert import options_from_config

    options = options_from_config({"loss_weighting": weighting}, "pretraining")
    assert options.loss_weighting == mode and options.grad_source == source
    if isinstance(weighting, dict) and "fixed" in weighting:
        assert options.fixed_weights == {"mlm": 0.5}
    with pytest.raises(ValueError, match="grad_source"):
        options_from_config({"loss_weighting": {"adaptive": {"grad_source": "all"}}}, "pretraining")
    with pytest.raises(ValueError, match=r"model_config.fashionbert.pretraining: unknown option\(s\) \['ratio'\]"):
        options_from_config({"pretraining": {"ratio": 0.2}})


def test_masked_patch_losses():
    target = torch.randn(5, 16)
    assert masked_patch_loss(target.clone(), target, "kl").abs() < 1e-6
    assert masked_patch_loss(target.clone(), target, "mse").abs() < 1e-6
    assert masked_patch_loss(torch.zeros(5, 16), target, "kl") > 0
    prediction = torch.randn(5, 16, requires_grad=True)
    target = torch.randn(5, 16, requires_grad=True)
    masked_patch_loss(prediction, target, "kl").backward()
    assert target.grad is None  # the target is detached
    mask = random_patch_mask(4, 64, 0.1, torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [6, 6, 6, 6]
    assert random_patch_mask(2, 4, 0.1).sum(1).tolist() == [1, 1]


def test_query_title_segments_join_two_texts():
    query = torch.tensor([[101, 5, 6, 102, 0]])
    title = torch.tensor([[101, 7, 8, 9, 102]])
    ids, mask, types, labels = query_title_inputs(
        query, (query > 0).long(), title, torch.ones_like(title), torch.tensor([[-100, 7, -100, -100, -100]])
    )
    assert ids.tolist() == [[101, 5, 6, 102, 0, 7, 8, 9, 102]]
    assert mask.tolist() == [[1, 1, 1, 1, 0, 1, 1, 1, 1]]
    assert types.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1]]
    assert labels.tolist() == [[-100] * 5 + [7, -100, -100, -100]]


# ------------------------------------------------------ through MMF's registry
def _check_gradients(model, unused=()):
    missing, bad = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or name.startswith(tuple(unused)):
            continue
        if parameter.grad is None:
            missing.append(name)
        elif not torch.isfinite(parameter.grad).all():
            bad.append(name)
    assert not missing, f"no gradient: {missing}"
    assert not bad, f"non-finite gradient: {bad}"


@pytest.mark.parametrize(
    "head, extra, expected_losses",
    [
        ("pretraining", {}, {"mlm", "mpm", "alignment"}),
        (
            "pretraining",
            {"pretraining": {"mpm_loss": "mse"}, "loss_weighting": {"mode": "fixed"}},
            {"mlm", "mpm", "alignment"},
        ),
        ("pretraining", {"loss_weighting": {"adaptive": {"grad_source": "shared"}}}, {"mlm", "mpm", "alignment"}),
        ("pretraining", {"segments": "query_title_image"}, {"mlm", "mpm", "alignment"}),
        ("pretraining", {"pretraining": {"tasks": ["mlm", "mpm"]}}, {"mlm", "mpm"}),
        ("alignment", {}, {"alignment"}),
        ("classification", {}, {"classification"}),
    ],
)
def test_every_head_trains_with_finite_gradients(mmf_registry, head, extra, expected_losses):
    model = _build(mmf_registry, head=head, **extra)
    model.train()
    output = model(_sample_list(with_query=extra.get("segments") == "query_title_image"))
    assert {key.split("/")[-1] for key in output["losses"]} == expected_losses
    assert all(key.startswith("train/fashiongen/") for key in output["losses"])
    total = sum(output["losses"].values())
    assert torch.isfinite(total)
    total.backward()
    # without the alignment task nothing reads the pooled [CLS]
    _check_gradients(
        model, unused=() if "alignment" in expected_losses or head != "pretraining" else ("text_encoder.pooler.",)
    )
    if head == "pretraining":
        weights = output["loss_weights"]
        if _config(**extra).loss_weighting.get("mode", "adaptive") == "adaptive":
            assert torch.isclose(sum(weights.values()), torch.tensor(1.0))
        else:
            assert all(float(weight) == 1.0 for weight in weights.values())
        for task, loss in output["unweighted_losses"].items():
            assert torch.isclose(output["losses"][f"train/fashiongen/{task}"], weights[task] * loss)
    if "alignment" in expected_losses or head == "classification":
        assert output["scores"].shape == (B, 5 if head == "classification" else 2)
    else:
        assert not hasattr(model, "alignment_head") and "scores" not in output


def test_match_scores_is_the_alignment_margin_and_keeps_the_mode(mmf_registry):
    model = _build(mmf_registry, head="alignment")
    model.eval()
    batch = _sample_list()
    pairs = {key: batch[key] for key in ("image", "input_ids", "attention_mask", "token_type_ids")}
    scores = model.match_scores(pairs)
    logits = model.alignment_logits(model.encode_patches(batch["image"]), batch["input_ids"], batch["attention_mask"])
    assert scores.shape == (B,)
    assert torch.allclose(scores, logits[:, 1] - logits[:, 0], atol=1e-5)
    assert torch.allclose(
        model.match_scores(batch["image"], batch["input_ids"], batch["attention_mask"]), scores, atol=1e-5
    )
    assert not model.training
    model.train()
    model.match_scores(pairs)
    assert model.training


def test_hundred_negative_metric_scores_pairs_with_the_model(mmf_registry):
    model = _build(mmf_registry, head="alignment")
    model.eval()
    batch = _sample_list()
    report = {
        key: batch[key]
        for key in ("image", "input_ids", "attention_mask", "token_type_ids", "product_id", "subcategory_id")
    }
    report["subcategory_id"] = torch.zeros(B, dtype=torch.long)
    metric = mmf_registry.get_metric_class("r@k_kaleido")(
        num_queries=B, num_negatives=3, seeds=[0], ks=[1, 4], scoring="model"
    )
    values = metric.calculate(report, report, model=model)
    assert values["i2t_r@4"] == 100.0 and values["t2i_r@4"] == 100.0  # 1 positive + 3 negatives
    assert 0.0 <= values["i2t_r@1"] <= 100.0


@pytest.mark.parametrize(
    "config_file, head, new_weights",
    [
        ("itr.yaml", "alignment", ()),
        ("scr.yaml", "classification", ("classification_head.",)),
    ],
)
def test_pretrained_weights_map_into_the_downstream_heads(mmf_registry, config_file, head, new_weights):
    from mmf_fashion.trainers.checkpointing import apply_state_mapping

    pretrained = _build(mmf_registry, head="pretraining")
    downstream = _build(mmf_registry, head=head)
    config = OmegaConf.load(os.path.join(REPO, "projects/fashionbert/configs", config_file))
    assert config.checkpoint.resume_pretrained
    assert config.checkpoint.resume_file.endswith("fashionbert_pretrain/fashionbert_final.pth")
    mapped = apply_state_mapping(pretrained.state_dict(), dict(config.checkpoint.pretrained_state_mapping))
    own = downstream.state_dict()
    # every downstream weight comes from pretraining, except the new head's
    assert set(mapped) == {key for key in own if not key.startswith(new_weights)}
    downstream.load_state_dict(mapped, strict=False)
    assert torch.equal(downstream.image_projection.projection.weight, pretrained.image_projection.projection.weight)
    if head == "alignment":
        assert torch.equal(downstream.alignment_head.weight, pretrained.alignment_head.weight)


def test_shortlist_towers_give_two_stream_embeddings_in_eval(mmf_registry, tmp_path):
    towers = {"image_encoder": "mobilenet_v3_small", "text_encoder": TINY_TEXT, "embed_dim": 16}
    align = mmf_registry.get_model_class("align")(
        OmegaConf.create(
            {"head": "contrastive", "image_encoder": "mobilenet_v3_small", "text_encoder": TINY_TEXT, "embed_dim": 16}
        )
    )
    align.build()
    path = str(tmp_path / "align_final.pth")
    torch.save(align.state_dict(), path)
    model = _build(mmf_registry, head="alignment", shortlist={"enabled": True, "checkpoint": path, **towers})
    assert not any(p.requires_grad for p in model.shortlist.parameters())
    model.eval()
    align.eval()
    batch = _sample_list()
    output = model(batch)
    assert torch.allclose(output["image_embedding"], align.encode_image(batch["image"]), atol=1e-5)
    assert torch.allclose(
        output["text_embedding"],
        align.encode_text(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
        atol=1e-5,
    )
    with pytest.raises(FileNotFoundError, match="no such file"):
        _build(
            mmf_registry, head="alignment", shortlist={"enabled": True, "checkpoint": str(tmp_path / "x.pth"), **towers}
        )


def test_bad_config_and_missing_keys_are_named(mmf_registry):
    with pytest.raises(ValueError, match="head must be one of"):
        _build(mmf_registry, head="itm")
    model = _build(mmf_registry, head="pretraining")
    batch = _sample_list()
    del batch["mlm_labels"]
    with pytest.raises(KeyError, match="mlm_labels"):
        model(batch)
    model = _build(mmf_registry, head="classification", segments="query_title_image")
    with pytest.raises(KeyError, match="query_input_ids"):
        model(_sample_list())
