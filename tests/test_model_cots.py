"""COTS: queues, EMA, task-level KL, the adaptive momentum filter, resume, and the MMF model."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from tiny_models import (
    COTS_TINY,
    COTS_TOKENIZER,
    COTS_VIT,
    ROOT,
    build_cots,
    build_model,
    cots_all_tasks_batch,
    cots_vit_batch,
    default_config,
)
from tiny_models import (
    cots_batch as make_batch,
)
from torch import nn

from mmf_fashion.modules import cots as cots_ops
from mmf_fashion.modules.two_stream import average_by_group, average_view_embeddings


# ------------------------------------------------------------------ queues
def test_queue_is_fifo_and_wraps_around():
    queue = cots_ops.FifoQueue(5, {"image": 2, "text": 2})
    for step in range(4):  # 8 rows into 5 slots: rows 0..2 were dequeued (overwritten) first
        rows = torch.tensor([[2 * step], [2 * step + 1]], dtype=torch.float).repeat(1, 2)
        queue.enqueue(image=rows, text=-rows)
    images, texts = queue.ordered("image", "text")
    assert images[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert texts[:, 0].tolist() == [-3.0, -4.0, -5.0, -6.0, -7.0]  # the fields stay aligned
    assert int(queue.count) == 5 and int(queue.pointer) == 8 % 5


def test_queue_partial_fill_and_oversized_batch():
    queue = cots_ops.FifoQueue(4, {"image": 1})
    queue.enqueue(image=torch.tensor([[1.0], [2.0]]))
    assert len(queue) == 2
    assert queue.valid("image").flatten().tolist() == [1.0, 2.0]
    queue.enqueue(image=torch.arange(10, 16, dtype=torch.float).reshape(6, 1))  # more rows than slots
    assert queue.ordered("image")[0].flatten().tolist() == [12.0, 13.0, 14.0, 15.0]
    with pytest.raises(ValueError, match="fields"):
        queue.enqueue(text=torch.zeros(1, 1))


def _gather_worker(rank, world, init_file, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        queue = cots_ops.FifoQueue(6, {"image": 1, "text": 1})
        rows = torch.tensor([[10.0 * rank], [10.0 * rank + 1]])
        queue.enqueue(image=rows, text=rows + 0.5)
        results[rank] = (queue.ordered("image")[0].flatten().tolist(), queue.ordered("text")[0].flatten().tolist())
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_queues_hold_the_features_of_every_rank(tmp_path):
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    assert results[0] == results[1]  # identical queues on every rank
    assert results[0][0] == [0.0, 1.0, 10.0, 11.0]  # rank 0's rows first, then rank 1's
    assert results[0][1] == [0.5, 1.5, 10.5, 11.5]


# --------------------------------------------------------------------- EMA
def test_ema_update_follows_the_formula():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    momentum = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # moves the online running statistics
    before = {name: tensor.clone() for name, tensor in momentum.state_dict().items()}
    cots_ops.ema_update([online], [momentum], 0.9)
    after = momentum.state_dict()
    for name, value in online.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * value)
        else:
            assert torch.equal(after[name], value)  # num_batches_tracked is copied


# ---------------------------------------------------------------------- KL
def test_symmetric_kl_is_symmetric_zero_on_equal_and_matches_definition():
    torch.manual_seed(0)
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.allclose(cots_ops.symmetric_kl(a, b), cots_ops.symmetric_kl(b, a))
    assert float(cots_ops.symmetric_kl(a, a.clone())) == pytest.approx(0.0, abs=1e-7)
    assert float(cots_ops.symmetric_kl(a, a + 3.0)) == pytest.approx(0.0, abs=1e-6)  # same softmax
    p, q = a.softmax(-1), b.softmax(-1)
    expected = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    assert float(cots_ops.symmetric_kl(a, b)) == pytest.approx(float(expected), rel=1e-5)
    assert float(cots_ops.symmetric_kl(a, b)) > 0


# ------------------------------------------------------------------ filter
def test_filter_keeps_exactly_the_pairs_at_or_above_mean_minus_k_std():
    amf = cots_ops.MomentumFilter(size=8, k=1.0, min_count=4)
    similarity = torch.tensor([0.9, 0.1, 0.5, 0.49])
    assert amf.keep_mask(similarity).all()  # no history yet: nothing is dropped
    history = torch.tensor([0.2, 0.4, 0.6, 0.8])
    amf.update(history)
    threshold = history.mean() - history.std(unbiased=False)  # 0.5 - 0.2236
    assert float(amf.threshold()) == pytest.approx(float(threshold))
    similarity = torch.tensor([0.9, 0.1, threshold.item() + 1e-4, threshold.item() - 1e-4])
    assert amf.keep_mask(similarity).tolist() == [True, False, True, False]


def test_masked_losses_use_only_the_kept_rows():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    keep = torch.tensor([True, False, True, False])
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert float(cots_ops.masked_cross_entropy(logits, labels, keep)) == pytest.approx(float(expected))
    other = torch.randn(4, 6)
    assert float(cots_ops.symmetric_kl(logits, other, keep)) == pytest.approx(
        float(cots_ops.symmetric_kl(logits[keep], other[keep]))
    )
    nothing = cots_ops.masked_cross_entropy(logits.requires_grad_(), labels, torch.zeros(4, dtype=torch.bool))
    assert float(nothing) == 0.0 and nothing.requires_grad


def test_queue_logits_put_the_own_momentum_key_first_then_the_queue():
    query = F.normalize(torch.randn(3, 4), dim=-1)
    keys = F.normalize(torch.randn(3, 4), dim=-1)
    queue_keys = F.normalize(torch.randn(5, 4), dim=-1)
    logits, labels = cots_ops.queue_logits(query, keys, queue_keys, torch.tensor(2.0))
    assert logits.shape == (3, 8) and labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(logits[:, 3:], 2.0 * query @ queue_keys.t())


def test_token_head_loss_is_computed_at_the_masked_positions_of_kept_rows_only():
    torch.manual_seed(0)
    head = cots_ops.CrossModalTokenHead(token_dim=6, other_dim=4, num_classes=11, hidden_size=8)
    tokens, other = torch.randn(3, 5, 6), torch.randn(3, 4)
    labels = torch.full((3, 5), -100)
    labels[0, 1], labels[1, 3], labels[2, 0] = 4, 7, 2
    keep = torch.tensor([True, True, False])
    full_logits = head(tokens, other.unsqueeze(1).expand(-1, 5, -1))  # every position, then select
    expected = F.cross_entropy(full_logits[[0, 1], [1, 3]], torch.tensor([4, 7]))
    loss = cots_ops.masked_token_loss(head, tokens, other, labels, keep)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # the image feature matters: another paired feature changes the prediction
    assert float(cots_ops.masked_token_loss(head, tokens, other + 1.0, labels, keep)) != pytest.approx(float(loss))
    none = cots_ops.masked_token_loss(head, tokens.requires_grad_(), other, labels, torch.zeros(3, dtype=torch.bool))
    assert float(none) == 0.0 and none.requires_grad


def test_keys_of_the_same_product_are_not_negatives():
    torch.manual_seed(0)
    query = F.normalize(torch.randn(2, 4), dim=-1)
    keys = F.normalize(torch.randn(2, 4), dim=-1)
    queue_keys = F.normalize(torch.randn(3, 4), dim=-1)
    ids, queue_ids = torch.tensor([7, 9]), torch.tensor([9, 7, 5])
    logits, labels = cots_ops.queue_logits(query, keys, queue_keys, torch.tensor(2.0), ids, queue_ids)
    plain, _ = cots_ops.queue_logits(query, keys, queue_keys, torch.tensor(2.0))
    masked = logits == cots_ops.MASKED_LOGIT
    # row 0 (product 7): its older queue entry (column 2 + 1) is masked; its own key (column 0) is not
    assert masked.tolist() == [[False, False, False, True, False], [False, False, True, False, False]]
    torch.testing.assert_close(logits[~masked], plain[~masked])
    assert torch.isfinite(cots_ops.symmetric_kl(logits, logits.flip(0)))


# ----------------------------------------------------------------- helpers
def test_view_averaging_and_masking_helpers():
    views = F.normalize(torch.randn(2, 3, 4), dim=-1)
    product = average_view_embeddings(views, torch.tensor([[True, True, False], [True, False, False]]))
    torch.testing.assert_close(product[1], views[1, 0])
    torch.testing.assert_close(product[0], F.normalize(views[0, :2].mean(0), dim=0))
    ids, grouped = average_by_group(views[:, 0], torch.tensor([7, 7]))
    assert ids.tolist() == [7] and grouped.shape == (1, 4)
    images = torch.ones(1, 3, 4, 4)
    masked = cots_ops.mask_image_patches(images, torch.tensor([[True, False, False, True]]), (2, 2))
    assert masked[0, 0, :2, :2].sum() == 0 and masked[0, 0, :2, 2:].sum() == 4 and masked[0, 0, 2:, 2:].sum() == 0
    resized = cots_ops.resize_patch_mask(torch.ones(2, 49, dtype=torch.bool), (7, 7), (2, 2))
    assert resized.shape == (2, 4) and resized.all()


def test_token_masking_fallback_masks_only_real_tokens():
    input_ids = torch.tensor([[101, 2000, 2001, 2002, 102, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    masked, labels = cots_ops.mask_tokens(
        input_ids, attention, 103, 30522, [0, 101, 102, 103], 0.5, generator=torch.Generator().manual_seed(0)
    )
    chosen = labels != -100
    assert chosen.any() and not chosen[0, [0, 4, 5, 6]].any()
    assert torch.equal(labels[chosen], input_ids[chosen])
    assert torch.equal(masked[~chosen], input_ids[~chosen])


# --------------------------------------------------------------- MMF model
def test_every_task_trains_with_a_filled_queue(mmf_registry, tmp_path):
    # the first step (empty queue), eval keys and unit rows: tests/test_registry.py
    model = build_cots(mmf_registry, tmp_path)
    batch = cots_all_tasks_batch()  # two views of product 1
    output = model(batch)
    output = model(batch)  # second step: the queue now holds this batch's products
    assert set(output["losses"]) == {f"train/fashiongen/{task}" for task in ("itc", "kl", "cmlm", "cmvm")}
    sum(output["losses"].values()).backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert not any(name.startswith(("momentum_encoders.", "image_tokenizer.")) for name, _ in trainable)
    missing = [name for name, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    # the fallbacks (no masked_input_ids / patch_mask from the dataset) also train
    fallback = model(make_batch(seed=1))
    assert all(torch.isfinite(value) for value in fallback["losses"].values())


def test_eval_returns_embeddings_and_leaves_queues_alone(mmf_registry):
    model = build_cots(mmf_registry, loss_weights={"cmlm": 0.0, "cmvm": 0.0})
    model(make_batch())
    state = {name: value.clone() for name, value in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        output = model(make_batch(seed=3))
    assert output["image_embedding"].shape == (4, 16) and "train/fashiongen/itc" in output["losses"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert not hasattr(model, "cmlm_head") and not hasattr(model, "image_tokenizer")
    assert model.embed_texts(["a red dress", "black boots"]).shape == (2, 16)
    assert model.embed_images(torch.randn(3, 3, 64, 64)).shape == (3, 16)


def test_filtered_pairs_leave_the_loss_but_enter_the_queues(mmf_registry):
    model = build_cots(mmf_registry, loss_weights={"cmlm": 0.0, "cmvm": 0.0}, momentum=1.0)
    batch = make_batch(batch=6, seed=5)
    image_m, text_m = model._momentum_embeddings(batch)
    similarity = (image_m * text_m).sum(-1)
    # a history whose mean - k * std lies at the batch median: the lower half must be dropped
    threshold = similarity.median()
    model.momentum_filter.k = 1.0
    model.momentum_filter.update(torch.tensor([threshold - 0.01, threshold + 0.01] * 8) + 0.0)
    expected_keep = similarity >= model.momentum_filter.threshold()
    assert 0 < int(expected_keep.sum()) < 6

    output = model(batch)
    assert float(output["kept_fraction"]) == pytest.approx(float(expected_keep.float().mean()))
    # the queue now holds the momentum features of all six pairs, kept or not
    queued_images, queued_texts = model.queue.ordered("image", "text")
    torch.testing.assert_close(queued_images, image_m)
    torch.testing.assert_close(queued_texts, text_m)
    # and the loss is the loss of the kept rows only (queue was empty: batch keys only)
    image = model.encode_image(batch["image"])
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    expected = cots_ops.momentum_contrastive_losses(
        image, text, image_m, text_m, model.logit_scale(), keep=expected_keep
    )
    assert float(output["losses"]["train/fashiongen/itc"]) == pytest.approx(float(expected["itc"]), rel=1e-4)
    # every similarity enters the filter's history too (size 16: the six newest are this batch's)
    assert len(model.momentum_filter.history) == 16
    newest = model.momentum_filter.history.ordered("similarity")[0].flatten()[-6:]
    torch.testing.assert_close(newest, similarity)


def test_state_dict_round_trip_restores_queues_and_momentum_towers(mmf_registry, tmp_path):
    model = build_cots(mmf_registry, tmp_path, momentum=0.5)
    for seed in range(2):
        output = model(make_batch(seed=seed))
        sum(output["losses"].values()).backward()
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.grad is not None:
                    parameter.add_(parameter.grad, alpha=-0.1)  # so the EMA copies differ from the online towers
        model.zero_grad()
    assert len(model.queue) == 8 and int(model.queue.pointer) == 0
    assert not torch.equal(model.momentum_encoders["text_projection"].weight, model.text_projection.weight)
    path = tmp_path / "cots.pth"
    torch.save({"model": model.state_dict()}, path)

    restored = build_cots(mmf_registry, tmp_path, momentum=0.5)
    torch.manual_seed(123)
    for parameter in restored.parameters():
        parameter.data.normal_()
    restored.load_state_dict(torch.load(path, weights_only=True)["model"])
    original = model.state_dict()
    for name, value in restored.state_dict().items():
        assert torch.equal(value, original[name]), name
    for key in (
        "queue.image",
        "queue.text",
        "queue.ids",
        "queue.pointer",
        "queue.count",
        "momentum_filter.history.similarity",
        "momentum_encoders.image_encoder.trunk.0.0.weight",
    ):
        assert key in original
    # and the restored model continues exactly like the original would
    model.eval(), restored.eval()
    torch.testing.assert_close(model.embed_images(make_batch()["image"]), restored.embed_images(make_batch()["image"]))


def test_switches_written_on_the_command_line_are_read_as_booleans(mmf_registry, tmp_path):
    """`mmf_run ... model_config.cots.filter.enabled=false` reaches the model as the string
    'false' (MMF decodes Python literals only); it must switch the filter off."""
    from mmf_fashion.modules.two_stream import config_flag

    model = build_cots(
        mmf_registry,
        filter={"enabled": "false"},
        mask_same_product="False",
        learnable_temperature="no",
        loss_weights={"cmlm": 0.0, "cmvm": 0.0},
    )
    assert model.momentum_filter is None and model.mask_same_product is False
    assert not model.logit_scale.log_scale.requires_grad
    assert build_cots(mmf_registry, tmp_path, filter={"enabled": "true"}).momentum_filter is not None
    assert [config_flag(v) for v in (True, "TRUE", "on", 1, "1", False, "false", "Off", 0, None)] == [True] * 5 + [
        False
    ] * 5
    with pytest.raises(ValueError, match="filter.enabled"):
        build_cots(mmf_registry, tmp_path, filter={"enabled": "maybe"})


def test_online_towers_loaded_alone_become_the_momentum_towers(mmf_registry, tmp_path):
    """A warm start from a two-tower checkpoint without momentum copies (ALIGN's
    layout, through pretrained_state_mapping) must not leave random momentum towers."""
    from mmf_fashion.modules.two_stream import TOWER_NAMES
    from mmf_fashion.trainers import checkpointing as ckpt

    source = build_cots(mmf_registry, tmp_path)
    torch.manual_seed(7)
    for parameter in source.parameters():
        parameter.data.normal_()
    towers_only = {key: value for key, value in source.state_dict().items() if key.split(".")[0] in TOWER_NAMES}
    model = build_cots(mmf_registry, tmp_path)
    mapping = {name: name for name in TOWER_NAMES}
    missing, _ = ckpt.load_model_state(model, ckpt.apply_state_mapping(towers_only, mapping), strict=False, source="x")
    assert any(key.startswith("momentum_encoders.") for key in missing)
    for name in TOWER_NAMES:
        online = getattr(model, name).state_dict()
        for key, value in model.momentum_encoders[name].state_dict().items():
            assert torch.equal(value, online[key]), f"{name}.{key}"
        torch.testing.assert_close(online, getattr(source, name).state_dict())
    # a checkpoint that has the momentum towers keeps them
    full = source.state_dict()
    with torch.no_grad():
        full["momentum_encoders.text_projection.weight"] = torch.zeros_like(
            full["momentum_encoders.text_projection.weight"]
        )
    model.load_state_dict(full)
    assert torch.equal(
        model.momentum_encoders["text_projection"].weight, torch.zeros_like(model.text_projection.weight)
    )


def test_queue_size_zero_means_in_batch_negatives_only(mmf_registry):
    model = build_cots(mmf_registry, queue_size=0, loss_weights={"cmlm": 0.0, "cmvm": 0.0}, filter={"enabled": False})
    assert model.queue is None and model.momentum_filter is None
    output = model(make_batch())
    assert math.isfinite(float(output["losses"]["train/fashiongen/itc"]))
    assert "kept_fraction" not in output


# ------------------------------------------------------- CMVM's tokenizer
def test_cmvm_without_a_trained_tokenizer_is_an_error_that_says_how_to_get_one(mmf_registry, tmp_path):
    from omegaconf import OmegaConf

    bare = OmegaConf.merge(default_config("cots"), COTS_TINY)  # cmvm on, tokenizer_checkpoint null
    with pytest.raises(ValueError) as error:
        build_model(mmf_registry, "cots", bare)
    message = str(error.value)
    for needed in (
        "model_config.cots.cmvm.tokenizer_checkpoint",
        "projects/vqvae/configs/train.yaml",
        "model_config.fashionvil.tokenizer_checkpoint",
        "model_config.cots.cmvm.tokenizer=random",
        "loss_weights.cmvm=0",
    ):
        assert needed in message
    absent = OmegaConf.merge(bare, {"cmvm": {"tokenizer_checkpoint": str(tmp_path / "nothing.pth")}})
    with pytest.raises(FileNotFoundError, match="projects/vqvae/configs/train.yaml"):
        build_model(mmf_registry, "cots", absent)
    with pytest.raises(ValueError, match="cmvm.tokenizer must be one of"):
        build_model(mmf_registry, "cots", OmegaConf.merge(bare, {"cmvm": {"tokenizer": "untrained"}}))
    # no CMVM: no tokenizer needed; the random one only when named
    assert not hasattr(
        build_model(mmf_registry, "cots", OmegaConf.merge(bare, {"loss_weights": {"cmvm": 0.0}})), "image_tokenizer"
    )
    model = build_model(mmf_registry, "cots", OmegaConf.merge(bare, {"cmvm": {"tokenizer": "random"}}))
    model.train()
    assert torch.isfinite(model(cots_all_tasks_batch())["losses"]["train/fashiongen/cmvm"])


def test_the_tokenizer_checkpoint_is_loaded_and_its_codes_are_the_targets(mmf_registry, tmp_path):
    from mmf_fashion.modules.vqvae import load_frozen_tokenizer

    model = build_cots(mmf_registry, tmp_path)
    path = model.config.cmvm.tokenizer_checkpoint
    expected = load_frozen_tokenizer(path, COTS_TOKENIZER)
    images = make_batch()["image"]
    assert torch.equal(model.image_tokenizer.encode_codes(images), expected.encode_codes(images))


def test_pretrain_config_reads_the_tokenizer_the_vqvae_project_writes():
    from omegaconf import OmegaConf

    cots = OmegaConf.load(os.path.join(ROOT, "projects/cots/configs/pretrain.yaml")).model_config.cots
    vqvae = OmegaConf.load(os.path.join(ROOT, "projects/vqvae/configs/train.yaml"))
    fashionvil = OmegaConf.load(os.path.join(ROOT, "projects/fashionvil/configs/pretrain.yaml"))
    written = os.path.normpath(os.path.join(vqvae.env.save_dir, "fashion_vqvae_final.pth"))
    assert os.path.normpath(cots.cmvm.tokenizer_checkpoint) == written
    assert os.path.normpath(fashionvil.model_config.fashionvil.tokenizer_checkpoint) == written
    assert dict(cots.cmvm.tokenizer_config) == dict(vqvae.model_config.fashion_vqvae)
    assert float(cots.loss_weights.cmvm) > 0 and cots.cmvm.get("tokenizer", "checkpoint") == "checkpoint"
    header = open(os.path.join(ROOT, "projects/cots/configs/pretrain.yaml")).read().split("model_config:")[0]
    assert "projects/vqvae/configs/train.yaml" in header


# ------------------------------------------------------------ CMLM fusion
def test_token_head_adds_the_projected_global_feature_to_each_token():
    torch.manual_seed(0)
    head = cots_ops.CrossModalTokenHead(token_dim=6, other_dim=4, num_classes=11, hidden_size=8)
    tokens, other = torch.randn(3, 6), torch.randn(3, 4)
    fused = tokens + other @ head.other_projection.weight.t() + head.other_projection.bias
    torch.testing.assert_close(head.fuse_tokens(tokens, other), fused)
    expected = head.decoder(F.layer_norm(F.gelu(head.transform(fused)), (8,), head.norm.weight, head.norm.bias))
    torch.testing.assert_close(head(tokens, other), expected)
    same_width = cots_ops.CrossModalTokenHead(token_dim=6, other_dim=6, num_classes=11)
    other6 = torch.randn(3, 6)
    torch.testing.assert_close(same_width.fuse_tokens(tokens, other6), tokens + other6)  # no projection needed
    concat = cots_ops.CrossModalTokenHead(token_dim=6, other_dim=4, num_classes=11, fusion="concat")
    torch.testing.assert_close(concat.fuse_tokens(tokens, other), torch.cat([tokens, other], -1))
    with pytest.raises(ValueError, match="fusion"):
        cots_ops.CrossModalTokenHead(6, 4, 11, fusion="attention")


def test_cmlm_fuses_text_tokens_plus_the_projected_image_embedding(mmf_registry, tmp_path):
    model = build_cots(mmf_registry, tmp_path, loss_weights={"itc": 0.0, "kl": 0.0, "cmvm": 0.0})
    assert model.cmlm_head.fusion == "add"
    seen = []
    model.cmlm_head.transform.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    batch = make_batch(mlm=True)
    output = model(batch)
    assert set(output["losses"]) == {"train/fashiongen/cmlm"}
    labels = batch["mlm_labels"]
    rows, columns = (labels != -100).nonzero(as_tuple=True)
    with torch.no_grad():
        hidden = model.text_encoder(
            input_ids=batch["masked_input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        image = model.encode_image(batch["image"])  # train mode: the same batch statistics as in forward
        expected = hidden[rows, columns] + model.cmlm_head.other_projection(image[rows])
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-5)
    concat = build_cots(
        mmf_registry, tmp_path, loss_weights={"itc": 0.0, "kl": 0.0, "cmvm": 0.0}, cmlm={"fusion": "concat"}
    )
    assert concat.cmlm_head.transform.in_features == 32 + 16
    assert torch.isfinite(concat(batch)["losses"]["train/fashiongen/cmlm"])


# --------------------------------------------------------- the ViT tower
def test_vit_tower_masks_tokens_and_cmvm_predicts_exactly_the_masked_patches(mmf_registry, tmp_path):
    model = build_cots(mmf_registry, tmp_path, **{**COTS_VIT, "loss_weights": {"itc": 0.0, "kl": 0.0, "cmlm": 0.0}})
    vit = model.image_encoder
    assert isinstance(vit, cots_ops.MaskedPatchViT) and vit.grid_size == (4, 4)
    encoder_inputs, tower_outputs, head_inputs = [], [], []
    # the embeddings' output is what the transformer layers read
    vit.vit.embeddings.register_forward_hook(lambda module, args, output: encoder_inputs.append(output.detach()))
    vit.register_forward_hook(lambda module, args, output: tower_outputs.append(output))
    model.cmvm_head.register_forward_pre_hook(lambda module, args: head_inputs.append(args))
    batch = cots_vit_batch()
    mask, images = batch["patch_mask"], batch["image"]
    output = model(batch)
    loss = output["losses"]["train/fashiongen/cmvm"]

    # the transformer's input: the mask token (+ position) at the masked patches, the patch embedding elsewhere
    embeddings = vit.vit.embeddings
    entered = encoder_inputs[-1][:, 1:]
    with torch.no_grad():
        patches = embeddings.patch_embeddings(images) + embeddings.position_embeddings[:, 1:]
        masked = (embeddings.mask_token + embeddings.position_embeddings[:, 1:]).expand_as(patches)
    torch.testing.assert_close(entered[mask], masked[mask])
    torch.testing.assert_close(entered[~mask], patches[~mask])
    assert not torch.allclose(entered[mask], patches[mask])

    # the head saw the masked patches' features only, and their targets are their VQ codes
    tokens, text_global = head_inputs[-1]
    assert tokens.shape[0] == int(mask.sum())
    torch.testing.assert_close(tokens, tower_outputs[-1][:, 1:][mask])
    codes = model.image_tokenizer.encode_codes(images)
    assert codes.shape == mask.shape  # one code per patch
    expected = F.cross_entropy(model.cmvm_head(tokens, text_global), codes[mask])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)

    loss.backward()
    mask_token = embeddings.mask_token
    assert mask_token.grad is not None and mask_token.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.momentum_encoders["image_encoder"].vit.embeddings.mask_token.requires_grad is False


def test_vit_tower_needs_one_code_per_patch_and_builds_no_idle_mask_token(mmf_registry, tmp_path):
    with pytest.raises(ValueError, match="patch_size"):
        build_cots(mmf_registry, tmp_path, **{**COTS_VIT, "vit": {**COTS_VIT["vit"], "patch_size": 32}})
    without_cmvm = build_cots(mmf_registry, tmp_path, **{**COTS_VIT, "loss_weights": {"cmvm": 0.0}})
    assert without_cmvm.image_encoder.vit.embeddings.mask_token is None
    output = without_cmvm(cots_vit_batch())
    sum(output["losses"].values()).backward()
    assert all(p.grad is not None for p in without_cmvm.image_encoder.parameters())
    without_cmvm.eval()
    assert without_cmvm.embed_images(torch.randn(2, 3, 64, 64)).shape == (2, 16)
