"""FashionViL: every head and every pretraining task runs forward + backward at tiny size
through MMF's registry; each loss equals its formula; ITM negatives; MPFC masking; PAC targets."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mmf_fashion.modules.fashionvil import tasks as T
from mmf_fashion.modules.fashionvil.heads import CategorySubspaces, CosineClassifier
from mmf_fashion.modules.losses import batch_classification_loss
from tiny_models import (
    FASHIONVIL_BATCH as BATCH,
    FASHIONVIL_GRID as GRID,
    FASHIONVIL_TOKENIZER as TOKENIZER,
    build_fashionvil as build,
    fashionvil_batch as sample_list,
    fashionvil_classification_batch,
    fashionvil_composition_batch,
    fashionvil_config as tiny_config,
    fashionvil_ocir_batch as ocir_batch,
    fashionvil_pretraining_batch as pretraining_batch,
    fashionvil_update_running as update_running,
    write_fashionvil_tokenizer,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_YAML = os.path.join(ROOT, "mmf_fashion", "models", "configs", "fashionvil.yaml")

# parameter-name prefixes each task must train (every parameter under them gets a
# finite gradient) and prefixes it must leave alone (no gradient at all)
TEXT_TOWER = ["text_encoder.embeddings.", "text_encoder.encoder."]
IMAGE_TOWER = ["image_encoder.", "image_projection."]
FUSION = IMAGE_TOWER + TEXT_TOWER + ["visual_embeddings."]
EXPECTED = {
    "itc": (IMAGE_TOWER + TEXT_TOWER + ["logit_scale."], ["visual_embeddings.", "text_encoder.pooler.", "itm_head."]),
    "itm": (FUSION + ["text_encoder.pooler.", "itm_head."], ["logit_scale.", "mlm_head.", "pac_head."]),
    "mlm": (FUSION + ["mlm_head."], ["itm_head.", "mpfc_head.", "logit_scale."]),
    "mpfc": (FUSION + ["mpfc_head."], ["mpfc_tokenizer.", "itm_head.", "mlm_head."]),
    "mvc": (FUSION + ["logit_scale."], ["itm_head.", "text_encoder.pooler.", "pac_head."]),
    "pac": (IMAGE_TOWER + TEXT_TOWER + ["pac_head."], ["visual_embeddings.", "itm_head.", "logit_scale."]),
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
    "contrastive": (lambda: sample_list(), "contrastive",
                    IMAGE_TOWER + TEXT_TOWER + ["logit_scale."], ["visual_embeddings.", "text_encoder.pooler."]),
    "composition": (fashionvil_composition_batch, "batch_classification", FUSION + ["logit_scale."], ["text_encoder.pooler."]),
    "classification": (fashionvil_classification_batch, "cross_entropy",
                       FUSION + ["text_encoder.pooler.", "classification_head."], ["logit_scale."]),
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
    for head, make_batch, name in (("composition", HEAD_CASES["composition"][0], "batch_classification"),
                                   ("ocir", ocir_batch, "ocir")):
        model = build(mmf_registry, tiny_config(head)).eval()
        with torch.no_grad():
            output = model(make_batch())
        logits = float(model.logit_scale().detach()) * output["query_embedding"] @ output["target_embedding"].t()
        expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
        assert torch.allclose(output["losses"][f"train/fashiongen/{name}"], expected, atol=1e-5)


def test_match_scores_is_the_itm_margin(mmf_registry):
    # embed_images / embed_texts / embed_composed unit rows: tests/test_registry.py
    model = build(mmf_registry, tiny_config("contrastive", build_itm_head=True)).eval()
    batch = sample_list()
    positional = model.match_scores(batch["image"], batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    from_pairs = model.match_scores({k: batch[k] for k in ("image", "input_ids", "attention_mask", "token_type_ids")})
    assert positional.shape == (BATCH,) and torch.allclose(positional, from_pairs)
    assert not model.training
    logits = model.itm_head(model.fuse(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                       model.image_tokens(batch["image"])).pooled)
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
    assert torch.equal(torch.argsort(query[0] @ candidates.t(), descending=True), torch.argsort(direct, descending=True))
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
TASK_HEADS = {"pretrain": "pretraining", "itr": "contrastive", "tgir": "composition",
              "scr": "classification", "ocir": "ocir"}


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
            "image_encoder", "image_projection", "text_encoder", "visual_embeddings", "logit_scale", "itm_head"}


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
    user.write_text(f"includes:\n  - {os.path.join(PROJECT, 'pretrain.yaml')}\n  - {os.path.join(PROJECT, 'paper.yaml')}\n")
    config = load_yaml(str(user))
    model = config.model_config.fashionvil
    assert model.head == "pretraining"
    assert model.image_encoder.name == "resnet50" and model.text_encoder.name == "bert-base-uncased"
    assert config.dataset_config.fashiongen.processors.image_processor.params.size == 224
    assert list(config.dataset_config.fashiongen.processors.patch_mask_processor.params.grid) == [7, 7]
    assert config.dataset_config.fashiongen.processors.text_processor.params.max_length == 75
    assert config.optimizer.params.lr == 1e-5 and config.optimizer.params.weight_decay == 1e-4
    assert config.optimizer.lr_multipliers.image_encoder == 20.0
    assert (config.training.batch_size, config.training.max_updates) == (256, 120000)
    assert config.scheduler.params.num_warmup_steps == 15000
    assert config.dataset_config.fashiongen.mlm  # the task's own switches survive
