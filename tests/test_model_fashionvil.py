"""FashionViL: every head and every pretraining task runs forward + backward at tiny size
through MMF's registry; each loss equals its formula; ITM negatives; MPFC masking; PAC targets;
ITC / MVC projection heads; OCIR same-category negatives; CR (category targets)."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tiny_models import (
    FASHIONVIL_BATCH as BATCH,
)
from tiny_models import (
    FASHIONVIL_CONTRASTIVE_DIM as CONTRASTIVE_DIM,
)
from tiny_models import (
    FASHIONVIL_GRID as GRID,
)
from tiny_models import (
    FASHIONVIL_TOKENIZER as TOKENIZER,
)
from tiny_models import (
    build_fashionvil as build,
)
from tiny_models import (
    fashionvil_batch as sample_list,
)
from tiny_models import (
    fashionvil_classification_batch,
    fashionvil_composition_batch,
    write_fashionvil_tokenizer,
)
from tiny_models import (
    fashionvil_config as tiny_config,
)
from tiny_models import (
    fashionvil_ocir_batch as ocir_batch,
)
from tiny_models import (
    fashionvil_pretraining_batch as pretraining_batch,
)
from tiny_models import (
    fashionvil_update_running as update_running,
)

from mmf_fashion.modules.fashionvil import tasks as T
from mmf_fashion.modules.fashionvil.heads import CategorySubspaces, CosineClassifier, resolve_contrastive_dim
from mmf_fashion.modules.losses import batch_classification_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_YAML = os.path.join(ROOT, "mmf_fashion", "models", "configs", "fashionvil.yaml")

# parameter-name prefixes each task must train (every parameter under them gets a
# finite gradient) and prefixes it must leave alone (no gradient at all)
TEXT_TOWER = ["text_encoder.embeddings.", "text_encoder.encoder."]
IMAGE_TOWER = ["image_encoder.", "image_projection."]
FUSION = IMAGE_TOWER + TEXT_TOWER + ["visual_embeddings."]
EXPECTED = {
    "itc": (
        IMAGE_TOWER + TEXT_TOWER + ["logit_scale.", "itc_projection."],
        ["visual_embeddings.", "text_encoder.pooler.", "itm_head.", "mvc_projection."],
    ),
    "itm": (
        FUSION + ["text_encoder.pooler.", "itm_head."],
        ["logit_scale.", "mlm_head.", "pac_head.", "itc_projection."],
    ),
    "mlm": (FUSION + ["mlm_head."], ["itm_head.", "mpfc_head.", "logit_scale."]),
    "mpfc": (FUSION + ["mpfc_head."], ["mpfc_tokenizer.", "itm_head.", "mlm_head."]),
    "mvc": (
        FUSION + ["logit_scale.", "mvc_projection."],
        ["itm_head.", "text_encoder.pooler.", "pac_head.", "itc_projection."],
    ),
    "pac": (
        IMAGE_TOWER + TEXT_TOWER + ["pac_head."],
        ["visual_embeddings.", "itm_head.", "logit_scale.", "itc_projection.", "mvc_projection."],
    ),
}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return write_fashionvil_tokenizer(tmp_path_factory.mktemp("vq") / "fashion_vqvae_final.pth")


@pytest.fixture(scope="module")
def pretraining_model(mmf_registry, tokenizer_path):
    config = tiny_config("pretraining", tokenizer_checkpoint=tokenizer_path, tokenizer_config=TOKENIZER)
    return build(mmf_registry, config)


def check_gradients(model, trained, untouched):
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in trained) and parameter.requires_grad:
            assert parameter.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        if any(name.startswith(prefix) for prefix in untouched):
            assert parameter.grad is None or not parameter.grad.any(), f"{name} should not be trained by this task"
    for prefix in trained:
        norms = [p.grad.norm() for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None]
        assert norms and float(sum(norms)) > 0, f"no gradient reaches {prefix}"


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_pretraining_task_forward_backward(pretraining_model, mmf_registry, task):
    model = pretraining_model
    model.train()
    model.zero_grad(set_to_none=True)
    mmf_registry.register("num_updates", update_running(model, task))
    try:
        output = model(pretraining_batch())
    finally:
        mmf_registry.register("num_updates", 0)
    assert output["task"] == task
    assert list(output["losses"]) == [f"train/fashiongen/{task}"]
    loss = output["losses"][f"train/fashiongen/{task}"]
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    check_gradients(model, *EXPECTED[task])
    assert not any(p.requires_grad for p in model.mpfc_tokenizer.parameters())


def test_pretraining_eval_runs_itc_whatever_the_update(pretraining_model):
    # the eval keys and unit norms of every head: tests/test_registry.py
    model = pretraining_model.eval()
    with torch.no_grad():
        output = model(pretraining_batch())
    model.train()
    assert output["task"] == "itc" and list(output["losses"]) == ["train/fashiongen/itc"]


def test_tokenizer_stays_frozen_in_training(pretraining_model):
    pretraining_model.train()
    assert not pretraining_model.mpfc_tokenizer.training
    before = {k: v.clone() for k, v in pretraining_model.mpfc_tokenizer.state_dict().items()}
    T.run_mpfc(pretraining_model, pretraining_batch())
    after = pretraining_model.mpfc_tokenizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_itm_mining_never_pairs_an_image_with_its_own_text(pretraining_model):
    pretraining_model.train()
    pretraining_model.itm_swap_probability = 1.0
    try:
        batch = pretraining_batch()
        batch["product_id"] = torch.tensor([7, 7, 8, 9])  # two views of one product
        output = T.run_itm(pretraining_model, batch)
    finally:
        pretraining_model.itm_swap_probability = 0.5
    index, labels = output["itm_text_index"], output["itm_labels"]
    assert torch.equal(labels, torch.zeros(BATCH, dtype=torch.long))
    assert not (index == torch.arange(BATCH)).any()
    assert index[0] not in (0, 1) and index[1] not in (0, 1)


def test_mpfc_loss_of_the_model_covers_exactly_the_masked_cells(pretraining_model):
    batch = pretraining_batch()
    output = T.run_mpfc(pretraining_model, batch)
    logits, codes, mask = output["mpfc_logits"], output["mpfc_codes"], batch["patch_mask"]
    assert codes.shape == mask.shape == (BATCH, GRID)
    expected = F.cross_entropy(logits[mask], codes[mask])
    assert torch.allclose(output["losses"]["mpfc"], expected)
    # the masked cells reached the transformer as zero features: their token is the projection bias
    tokens = pretraining_model.image_tokens(batch["image"], mask)
    bias = pretraining_model.image_projection.bias
    assert torch.allclose(tokens[mask], bias.expand(int(mask.sum()), -1))
    assert not torch.allclose(tokens[~mask], bias.expand(int((~mask).sum()), -1))


def test_pac_rejects_targets_that_are_not_probability_rows(pretraining_model):
    batch = pretraining_batch()
    batch["attribute_targets"] = batch["attribute_targets"] * 2
    with pytest.raises(ValueError, match="row 0 sums to 2"):
        T.run_pac(pretraining_model, batch)


def test_missing_key_names_the_task_and_the_option(pretraining_model):
    batch = sample_list()
    with pytest.raises(KeyError, match="mvc.*image_2"):
        T.run_mvc(pretraining_model, batch)


# ---------------------------------------------------------------- downstream heads
HEAD_CASES = {
    "contrastive": (
        lambda: sample_list(),
        "contrastive",
        IMAGE_TOWER + TEXT_TOWER + ["logit_scale.", "itc_projection."],
        ["visual_embeddings.", "text_encoder.pooler."],
    ),
    "composition": (
        fashionvil_composition_batch,
        "batch_classification",
        FUSION + ["logit_scale."],
        ["text_encoder.pooler."],
    ),
    "classification": (
        fashionvil_classification_batch,
        "cross_entropy",
        FUSION + ["text_encoder.pooler.", "classification_head."],
        ["logit_scale."],
    ),
    "ocir": (ocir_batch, "ocir", IMAGE_TOWER + ["ocir_head.", "logit_scale."], TEXT_TOWER + ["visual_embeddings."]),
}


@pytest.mark.parametrize("head", sorted(HEAD_CASES))
def test_downstream_head_forward_backward(mmf_registry, head):
    make_batch, loss_name, trained, untouched = HEAD_CASES[head]
    model = build(mmf_registry, tiny_config(head))
    model.train()
    output = model(make_batch())
    loss = output["losses"][f"train/fashiongen/{loss_name}"]
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    check_gradients(model, trained, untouched)


def test_composition_and_ocir_losses_equal_their_formula(mmf_registry):
    # ocir with negatives "all" is the plain batch classification; the default masks: see below
    for head, make_batch, name, extra in (
        ("composition", HEAD_CASES["composition"][0], "batch_classification", {}),
        ("ocir", ocir_batch, "ocir", {"ocir": {"negatives": "all"}}),
    ):
        model = build(mmf_registry, tiny_config(head, **extra)).eval()
        with torch.no_grad():
            output = model(make_batch())
        logits = float(model.logit_scale().detach()) * output["query_embedding"] @ output["target_embedding"].t()
        expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
        assert torch.allclose(output["losses"][f"train/fashiongen/{name}"], expected, atol=1e-5)


def _masked_ocir_by_hand(logits, categories):
    rows = []
    for i in range(len(categories)):
        same = [j for j in range(len(categories)) if categories[j] == categories[i]]
        rows.append(-(logits[i, i] - logits[i, same].exp().sum().log()))
    return torch.stack(rows).mean()


def test_ocir_training_negatives_are_the_blanks_of_the_same_category(mmf_registry):
    batch = ocir_batch()
    categories = batch["blank_category"].tolist()
    assert len(set(categories)) > 1 and len(set(categories)) < len(categories)  # mixed, with shared ones
    model = build(mmf_registry, tiny_config("ocir")).eval()  # default: same_category
    with torch.no_grad():
        output = model(batch)
    logits = float(model.logit_scale().detach()) * output["query_embedding"] @ output["target_embedding"].t()
    loss = output["losses"]["train/fashiongen/ocir"]
    assert torch.allclose(loss, _masked_ocir_by_hand(logits, categories), atol=1e-5)
    unmasked = -torch.log_softmax(logits, dim=1).diagonal().mean()
    assert not torch.allclose(loss, unmasked, atol=1e-4)


def test_ocir_loss_ignores_candidates_of_other_categories():
    generator = torch.Generator().manual_seed(11)
    query = F.normalize(torch.randn(5, 6, generator=generator), dim=-1)
    target = F.normalize(torch.randn(5, 6, generator=generator), dim=-1)
    category = torch.tensor([0, 1, 0, 2, 1])
    scale = torch.tensor(4.0)
    loss = T.ocir_loss(query, target, category, scale)
    assert torch.allclose(loss, _masked_ocir_by_hand(scale * query @ target.t(), category.tolist()), atol=1e-6)
    # moving the blanks of categories 1 and 2 does not change the loss of the category-0 queries
    moved = target.clone()
    moved[[1, 3, 4]] = F.normalize(torch.randn(3, 6, generator=generator), dim=-1)
    rows = torch.tensor([0, 2])
    assert torch.allclose(
        T.ocir_loss(query[rows], target[rows], category[rows], scale),
        T.ocir_loss(query[rows], moved[rows], category[rows], scale),
    )
    # a query whose category has no other blank has nothing to rank against: zero loss
    assert torch.allclose(T.ocir_loss(query[3:4], target[3:4], category[3:4], scale), torch.tensor(0.0))
    everything = T.ocir_loss(query, target, category, scale, same_category=False)
    assert torch.allclose(everything, batch_classification_loss(query, target, scale), atol=1e-6)


def test_ocir_negatives_option_is_checked(mmf_registry):
    with pytest.raises(ValueError, match="ocir.negatives"):
        build(mmf_registry, tiny_config("ocir", ocir={"negatives": "other"}))


# ---------------------------------------------------------------- ITC / MVC projections
def _symmetric_infonce(a, b, scale):
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    labels = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


@pytest.mark.parametrize("head", ["contrastive", "pretraining"])
def test_retrieval_embeddings_are_the_itc_projections(mmf_registry, tokenizer_path, head):
    extra = {"tokenizer_checkpoint": tokenizer_path, "tokenizer_config": TOKENIZER} if head == "pretraining" else {}
    model = build(mmf_registry, tiny_config(head, **extra)).eval()
    hidden = model.hidden_size
    assert CONTRASTIVE_DIM < hidden
    batch = sample_list()
    with torch.no_grad():
        output = model(batch)
        image_hidden = model.image_embedding(batch["image"])
        text_hidden = model.text_embedding(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        image = model.itc_projection.f(image_hidden)
        text = model.itc_projection.g(text_hidden)
        loss_name = "itc" if head == "pretraining" else "contrastive"
        expected = _symmetric_infonce(image, text, model.logit_scale())
        assert torch.allclose(output["losses"][f"train/fashiongen/{loss_name}"], expected, atol=1e-5)
        # the hidden space would give another loss: the logits come from the projections
        assert not torch.allclose(_symmetric_infonce(image_hidden, text_hidden, model.logit_scale()), expected)
        for key, projected in (("image_embedding", image), ("text_embedding", text)):
            assert output[key].shape == (BATCH, CONTRASTIVE_DIM)
            assert torch.allclose(output[key], F.normalize(projected, dim=-1), atol=1e-6)
        assert torch.allclose(model.embed_images(batch["image"]), output["image_embedding"], atol=1e-5)
        assert model.embed_texts(["red silk dress", "black boots"]).shape == (2, CONTRASTIVE_DIM)


def test_mvc_uses_its_own_projection_not_the_itc_one(pretraining_model):
    model = pretraining_model.train()
    assert model.mvc_projection is not model.itc_projection
    assert model.mvc_projection.f.weight.shape == (CONTRASTIVE_DIM, model.hidden_size)
    batch = pretraining_batch()
    with torch.no_grad():
        model.eval()  # no dropout: two forwards give the same numbers
        output = T.run_mvc(model, batch)
        image = model.mvc_projection.f(model.image_embedding(batch["image"]))
        fused = model.fuse(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], model.image_tokens(batch["image_2"])
        )
        composed = model.mvc_projection.g(fused.visual_mean())
        assert torch.allclose(
            output["losses"]["mvc"], _symmetric_infonce(image, composed, model.logit_scale()), atol=1e-5
        )
        assert output["mvc_image_embedding"].shape == (BATCH, CONTRASTIVE_DIM)
        # changing ITC's head leaves MVC unchanged
        saved = {k: v.clone() for k, v in model.itc_projection.state_dict().items()}
        for parameter in model.itc_projection.parameters():
            parameter.add_(1.0)
        try:
            assert torch.allclose(T.run_mvc(model, batch)["losses"]["mvc"], output["losses"]["mvc"], atol=1e-6)
        finally:
            model.itc_projection.load_state_dict(saved)
    model.train()


def test_contrastive_dim_default_and_no_projection(mmf_registry):
    assert resolve_contrastive_dim(None, 768) == 256  # the paper's BERT-base size
    assert resolve_contrastive_dim(0, 768) == 0
    with pytest.raises(ValueError, match="contrastive_dim"):
        resolve_contrastive_dim(-1, 768)
    model = build(mmf_registry, tiny_config("contrastive", contrastive_dim=0)).eval()
    assert not list(model.itc_projection.parameters())
    with torch.no_grad():
        output = model(sample_list())
    assert output["image_embedding"].shape == (BATCH, model.hidden_size)


# ---------------------------------------------------------------- CR / SCR targets
@pytest.mark.parametrize("target,key", [("subcategory", "subcategory_id"), ("category", "category_id")])
def test_classification_takes_the_configured_labels(mmf_registry, target, key):
    batch = fashionvil_classification_batch()
    assert not torch.equal(batch["category_id"], batch["subcategory_id"])
    model = build(mmf_registry, tiny_config("classification", classification={"target": target})).eval()
    with torch.no_grad():
        output = model(batch)
    expected = F.cross_entropy(output["scores"], batch[key])
    assert torch.allclose(output["losses"]["train/fashiongen/cross_entropy"], expected)
    # accuracy / macro_f1 read `targets` from the output before the batch: the same labels
    assert torch.equal(output["targets"], batch[key])
    from mmf_fashion.trainers.evaluation import Accumulator

    accumulator = Accumulator(["scores", "targets"])
    accumulator.add(batch, output)
    assert torch.equal(accumulator.report()["targets"], batch[key])


def test_category_recognition_reads_category_id_not_targets(mmf_registry):
    batch = fashionvil_classification_batch()
    del batch["targets"]  # CR needs only category_id
    model = build(mmf_registry, tiny_config("classification", classification={"target": "category"}))
    assert "train/fashiongen/cross_entropy" in model(batch)["losses"]
    with pytest.raises(ValueError, match="classification.target"):
        build(mmf_registry, tiny_config("classification", classification={"target": "colour"}))


def test_match_scores_is_the_itm_margin(mmf_registry):
    # embed_images / embed_texts / embed_composed unit rows: tests/test_registry.py
    model = build(mmf_registry, tiny_config("contrastive", build_itm_head=True)).eval()
    batch = sample_list()
    positional = model.match_scores(
        batch["image"], batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    from_pairs = model.match_scores({k: batch[k] for k in ("image", "input_ids", "attention_mask", "token_type_ids")})
    assert positional.shape == (BATCH,) and torch.allclose(positional, from_pairs)
    assert not model.training
    logits = model.itm_head(
        model.fuse(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], model.image_tokens(batch["image"])
        ).pooled
    )
    assert torch.allclose(positional, logits[:, 1] - logits[:, 0], atol=1e-5)


def test_downstream_starts_from_the_pretraining_weights(pretraining_model, mmf_registry):
    from mmf_fashion.trainers.checkpointing import apply_state_mapping, load_model_state

    mapping = OmegaConf.load(os.path.join(ROOT, "projects", "fashionvil", "configs", "itr.yaml"))
    mapping = dict(mapping.checkpoint.pretrained_state_mapping)
    model = build(mmf_registry, tiny_config("contrastive", build_itm_head=True))
    weights = apply_state_mapping(pretraining_model.state_dict(), mapping)
    load_model_state(model, weights, strict=False, source="pretraining")
    own = model.state_dict()
    for key, value in pretraining_model.state_dict().items():
        if key.split(".")[0] in mapping:
            assert torch.equal(own[key], value), key
    assert not any(key.startswith("mpfc_tokenizer.") for key in own)


# ---------------------------------------------------------------- losses vs formulas
def _cross_entropy_by_hand(logits, labels):
    return torch.stack([-(logits[i, labels[i]] - logits[i].exp().sum().log()) for i in range(len(labels))]).mean()


def test_itc_and_mvc_equal_symmetric_infonce():
    generator = torch.Generator().manual_seed(4)
    image, text = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    scale = torch.tensor(4.0)
    a, b = image / image.norm(dim=1, keepdim=True), text / text.norm(dim=1, keepdim=True)
    logits = scale * a @ b.t()
    labels = torch.arange(5)
    expected = (_cross_entropy_by_hand(logits, labels) + _cross_entropy_by_hand(logits.t(), labels)) / 2
    assert torch.allclose(T.itc_loss(image, text, scale), expected, atol=1e-6)
    assert torch.allclose(T.mvc_loss(image, text, scale), expected, atol=1e-6)


def test_itm_and_mlm_equal_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    assert torch.allclose(T.itm_loss(logits, labels), _cross_entropy_by_hand(logits, labels))
    vocab_logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(5))
    mlm_labels = torch.tensor([[-100, 4, -100], [1, -100, -100]])
    expected = _cross_entropy_by_hand(torch.stack([vocab_logits[0, 1], vocab_logits[1, 0]]), torch.tensor([4, 1]))
    assert torch.allclose(T.mlm_loss(vocab_logits, mlm_labels), expected, atol=1e-6)
    assert T.mlm_loss(vocab_logits, torch.full((2, 3), -100)).item() == 0.0


def test_mpfc_loss_is_the_mean_over_masked_cells_only():
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 4, 5, generator=generator, requires_grad=True)
    codes = torch.tensor([[1, 2, 3, 4], [0, 0, 1, 1]])
    mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    expected = _cross_entropy_by_hand(torch.stack([logits[0, 0], logits[0, 3], logits[1, 1]]), torch.tensor([1, 4, 0]))
    loss = T.mpfc_loss(logits, codes, mask)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert not logits.grad[~mask].any() and logits.grad[mask].abs().sum(-1).gt(0).all()
    changed = logits.detach().clone()
    changed[~mask] = 100.0
    assert torch.allclose(T.mpfc_loss(changed, codes, mask), expected, atol=1e-6)


def test_pac_is_the_sum_of_two_soft_cross_entropies_over_cosine_logits():
    head = CosineClassifier(8, 4, scale=10.0)
    generator = torch.Generator().manual_seed(7)
    image, text = torch.randn(3, 8, generator=generator), torch.randn(3, 8, generator=generator)
    cosine = F.cosine_similarity(image.unsqueeze(1), head.prototypes.unsqueeze(0), dim=-1)
    assert torch.allclose(head(image), 10.0 * cosine, atol=1e-5)
    targets = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    T.check_soft_targets(targets)
    assert torch.allclose(targets.sum(-1)[:2], torch.ones(2))

    def soft_ce(logits):
        rows = [-(targets[i] * torch.log_softmax(logits[i], -1)).sum() for i in range(2)]
        return torch.stack(rows).mean()

    expected = soft_ce(head(image)) + soft_ce(head(text))
    assert torch.allclose(T.pac_loss(head(image), head(text), targets), expected, atol=1e-5)


def test_batch_classification_equals_one_way_infonce():
    generator = torch.Generator().manual_seed(8)
    query = F.normalize(torch.randn(4, 6, generator=generator), dim=-1)
    target = F.normalize(torch.randn(4, 6, generator=generator), dim=-1)
    expected = _cross_entropy_by_hand(4.0 * query @ target.t(), torch.arange(4))
    assert torch.allclose(batch_classification_loss(query, target, torch.tensor(4.0)), expected, atol=1e-6)


def test_ocir_query_ranks_like_the_mean_subspace_compatibility():
    torch.manual_seed(9)
    head = CategorySubspaces(6, num_categories=3, num_subspaces=2, category_dim=4)
    items = torch.randn(1, 3, 6)
    categories, valid, blank = torch.tensor([[0, 1, 2]]), torch.tensor([[True, True, False]]), torch.tensor([2])
    query = head.outfit_query(items, categories, valid, blank)
    candidates = F.normalize(torch.randn(10, 6), dim=-1)
    unit = F.normalize(items[0], dim=-1)
    masks = head.pair_mask(categories[0], blank.expand(3))
    direct = torch.stack([sum((masks[i] * unit[i] * masks[i] * y).sum() for i in range(2)) / 2 for y in candidates])
    assert torch.equal(
        torch.argsort(query[0] @ candidates.t(), descending=True), torch.argsort(direct, descending=True)
    )
    assert torch.allclose(F.normalize(direct, dim=0), F.normalize(query[0] @ candidates.t(), dim=0), atol=1e-5)
    with pytest.raises(ValueError, match="num_categories"):
        head.outfit_query(items, categories, valid, torch.tensor([5]))


# ---------------------------------------------------------------- ITM negative choice
def test_hardest_negative_is_the_most_similar_other_text_never_the_positive():
    similarity = torch.tensor([[9.0, 1.0, 3.0], [0.0, 9.0, 5.0], [2.0, 8.0, 9.0]])
    assert T.hardest_negative_texts(similarity).tolist() == [2, 2, 1]
    same_item = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    assert T.hardest_negative_texts(similarity, same_item).tolist() == [1, 2, 1]
    assert T.hardest_negative_texts(torch.ones(1, 1)).tolist() == [-1]


@pytest.mark.parametrize("seed", range(5))
def test_itm_choice_never_labels_the_positive_as_negative(seed):
    generator = torch.Generator().manual_seed(seed)
    batch = 8
    similarity = torch.randn(batch, batch, generator=generator) + 10 * torch.eye(batch)
    products = torch.randint(0, 4, (batch,), generator=generator)
    same = products.unsqueeze(0) == products.unsqueeze(1)
    index, labels = T.itm_text_choice(similarity, 0.5, same, generator=generator)
    own = torch.arange(batch)
    assert torch.equal(labels == 1, index == own)
    swapped = labels == 0
    assert not same[own[swapped], index[swapped]].any()
    index, labels = T.itm_text_choice(similarity, 1.0, same, generator=generator)
    has_negative = (~same).any(dim=1)
    assert torch.equal(labels == 0, has_negative)
    assert math.isclose(float(T.itm_text_choice(similarity, 0.0)[1].float().mean()), 1.0)


# ---------------------------------------------------------------- project configs
PROJECT = os.path.join(ROOT, "projects", "fashionvil", "configs")
TASK_HEADS = {
    "pretrain": "pretraining",
    "itr": "contrastive",
    "tgir": "composition",
    "scr": "classification",
    "cr": "classification",
    "ocir": "ocir",
}


@pytest.mark.parametrize("task", sorted(TASK_HEADS))
def test_project_config_selects_its_head_and_a_buildable_model_config(task):
    config = OmegaConf.load(os.path.join(PROJECT, f"{task}.yaml"))
    model = OmegaConf.merge(OmegaConf.load(MODEL_YAML).model_config.fashionvil, config.model_config.fashionvil)
    assert model.head == TASK_HEADS[task]
    assert config.training.trainer == "fashion_trainer"
    if task != "pretrain":
        assert config.checkpoint.resume_pretrained
        assert config.checkpoint.resume_file.endswith("fashionvil_pretrain/fashionvil_final.pth")
        assert set(config.checkpoint.pretrained_state_mapping) <= {
            "image_encoder",
            "image_projection",
            "text_encoder",
            "visual_embeddings",
            "logit_scale",
            "itm_head",
            "itc_projection",
        }


def test_itr_reports_full_ranking_and_the_100_negative_protocol():
    metrics = OmegaConf.load(os.path.join(PROJECT, "itr.yaml")).evaluation.metrics
    by_type = {metric.type: metric.get("params", {}) for metric in metrics}
    assert set(by_type) == {"r@k_general", "r@k_kaleido"}
    kaleido = by_type["r@k_kaleido"]
    assert (kaleido.num_queries, kaleido.num_negatives, list(kaleido.seeds)) == (1000, 100, [0, 1, 2, 3, 4])
    assert list(kaleido.ks) == list(by_type["r@k_general"].ks) == [1, 5, 10]


def test_itr_keeps_the_pretraining_itc_space():
    # itc_projection is carried over by pretrained_state_mapping: its size must match
    pretrain = OmegaConf.load(os.path.join(PROJECT, "pretrain.yaml")).model_config.fashionvil
    itr = OmegaConf.load(os.path.join(PROJECT, "itr.yaml"))
    assert "contrastive_dim" in pretrain and pretrain.contrastive_dim == itr.model_config.fashionvil.contrastive_dim
    assert itr.checkpoint.pretrained_state_mapping.itc_projection == "itc_projection"


def test_classification_configs_pick_their_labels():
    scr = OmegaConf.load(os.path.join(PROJECT, "scr.yaml")).model_config.fashionvil.classification
    cr = OmegaConf.load(os.path.join(PROJECT, "cr.yaml")).model_config.fashionvil.classification
    assert (scr.target, scr.num_classes) == ("subcategory", 121)
    assert (cr.target, cr.num_classes) == ("category", 48)


def test_pretraining_uses_the_tokenizer_sizes_it_was_trained_with():
    pretrain = OmegaConf.load(os.path.join(PROJECT, "pretrain.yaml")).model_config.fashionvil
    vqvae = OmegaConf.load(os.path.join(ROOT, "projects", "vqvae", "configs", "train.yaml")).model_config.fashion_vqvae
    assert pretrain.tokenizer_checkpoint.rstrip("/").endswith("vqvae/fashion_vqvae_final.pth")
    for key, value in pretrain.tokenizer_config.items():
        assert vqvae[key] == value, key
    paper = OmegaConf.load(os.path.join(PROJECT, "paper.yaml")).model_config
    assert dict(paper.fashionvil.tokenizer_config) == dict(paper.fashion_vqvae)


def test_paper_override_gives_the_paper_sizes(tmp_path, mmf_registry):
    from mmf.utils.configuration import load_yaml

    user = tmp_path / "paper_pretrain.yaml"
    user.write_text(
        f"includes:\n  - {os.path.join(PROJECT, 'pretrain.yaml')}\n  - {os.path.join(PROJECT, 'paper.yaml')}\n"
    )
    config = load_yaml(str(user))
    model = config.model_config.fashionvil
    assert model.head == "pretraining"
    assert model.image_encoder.name == "resnet50" and model.text_encoder.name == "bert-base-uncased"
    assert config.dataset_config.fashiongen.processors.image_processor.params.size == 224
    assert list(config.dataset_config.fashiongen.processors.patch_mask_processor.params.grid) == [7, 7]
    assert config.dataset_config.fashiongen.processors.text_processor.params.max_length == 75
    assert config.optimizer.params.lr == 1e-5 and config.optimizer.params.weight_decay == 1e-4
    assert config.optimizer.lr_multipliers.image_encoder == 20.0
    assert model.contrastive_dim == 256 and config.optimizer.lr_multipliers.itc_projection == 20.0
    assert (config.training.batch_size, config.training.max_updates) == (256, 120000)
    assert config.scheduler.params.num_warmup_steps == 15000
    assert config.dataset_config.fashiongen.mlm  # the task's own switches survive
