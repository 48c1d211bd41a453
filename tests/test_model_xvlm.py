"""X-VLM: box-to-patch rule, concept pooling, restricted cross-attention, ITC/ITM/MLM/box maths,
the text/fusion split of one BERT, region MLM, every head through MMF's registry, and the
grounding metric."""

import pytest
import torch
from omegaconf import OmegaConf
from tiny_models import (
    XVLM_B as B,
)
from tiny_models import (
    XVLM_L as L,
)
from tiny_models import (
    XVLM_LB as LB,
)
from tiny_models import (
    XVLM_R as R,
)
from tiny_models import (
    XVLM_TINY as TINY,
)
from tiny_models import (
    build_xvlm as _build,
)
from tiny_models import (
    xvlm_batch as _sample_list,
)
from torchvision.ops import box_convert, generalized_box_iou, generalized_box_iou_loss

from mmf_fashion.modules import xvlm_ops as X
from mmf_fashion.modules.encoders import masked_mean
from mmf_fashion.modules.xvlm import XVLMNetwork, temperature


# ------------------------------------------------------------ box -> patches
@pytest.mark.parametrize(
    "box, expected_ranges, expected_patches",
    [
        # (x, y, w, h) pixels on a 64 px image, patch 16 -> 4 x 4 grid, patches row-major
        ((0, 0, 16, 16), (0, 1, 0, 1), [0]),
        ((10, 20, 30, 10), (0, 3, 1, 2), [4, 5, 6]),  # floor(10/16)=0, ceil(40/16)=3; rows 1..2
        ((33, 33, 1, 1), (2, 3, 2, 3), [10]),  # inside one patch
        ((16, 16, 16, 16), (1, 2, 1, 2), [5]),  # on patch borders: no spill into the next patch
        ((60, 60, 4, 4), (3, 4, 3, 4), [15]),  # bottom-right corner
        ((64, 0, 0, 8), (3, 4, 0, 1), [3]),  # zero width at the edge: clamped, still one patch
        ((32, 8, 0, 0), (2, 3, 0, 1), [2]),  # no area on a patch border: x_max = x_min + 1
        ((0, 0, 64, 64), (0, 4, 0, 4), list(range(16))),  # whole image
    ],
)
def test_box_to_patch_rule_on_hand_worked_boxes(box, expected_ranges, expected_patches):
    pixels = torch.tensor([box], dtype=torch.float)
    ranges = X.box_patch_ranges(pixels, patch_size=16, grid_hw=(4, 4))
    assert ranges.tolist() == [list(expected_ranges)]
    mask = X.boxes_to_patch_mask(pixels, patch_size=16, grid_hw=(4, 4))
    assert mask.shape == (1, 16)
    assert mask[0].nonzero().flatten().tolist() == expected_patches


def test_normalised_boxes_map_to_the_same_patches_despite_float_error():
    # cx 0.375, w 0.25 on 64 px -> x = 16, w = 16 exactly: only patch column 1
    boxes = torch.tensor([[0.375, 0.375, 0.25, 0.25], [0.1, 0.8, 0.2, 0.1]])
    pixels = X.normalized_to_pixel_xywh(boxes, (64, 64))
    assert torch.allclose(pixels[0], torch.tensor([16.0, 16.0, 16.0, 16.0]))
    mask = X.boxes_to_patch_mask(pixels, 16, (4, 4))
    assert mask[0].nonzero().flatten().tolist() == [5]
    # x = 0.0 .. 12.8 -> column 0; y = 48 .. 54.4 -> row 3
    assert mask[1].nonzero().flatten().tolist() == [12]


def test_non_square_grid_is_row_major():
    mask = X.boxes_to_patch_mask(torch.tensor([[8.0, 8.0, 8.0, 8.0]]), patch_size=8, grid_hw=(2, 4))
    assert mask.shape == (1, 8)
    assert mask[0].nonzero().flatten().tolist() == [5]  # row 1, column 1 of a 2 x 4 grid


# ---------------------------------------------------------- concept pooling
def test_concept_cls_is_the_masked_mean_of_the_patches_inside():
    torch.manual_seed(0)
    tokens = torch.randn(3, 1 + 6, 5)
    patch_mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled, attention = X.pool_concept(tokens, patch_mask)
    for row in range(3):
        expected = tokens[row, 1:][patch_mask[row]].mean(0)
        assert torch.allclose(pooled[row, 0], expected, atol=1e-6)
    assert torch.allclose(pooled[:, 0], masked_mean(tokens[:, 1:], patch_mask))
    assert torch.equal(pooled[:, 1:], tokens[:, 1:])
    assert attention[:, 0].tolist() == [1, 1, 1]
    assert torch.equal(attention[:, 1:].bool(), patch_mask)


def _tiny_network(**overrides):
    torch.manual_seed(0)
    net = XVLMNetwork({**TINY, **overrides})
    return net.eval()


def test_region_cross_attention_sees_only_the_patches_in_its_box():
    net = _tiny_network()
    image_tokens = torch.randn(2, 17, 32)
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5]], [[0.875, 0.875, 0.25, 0.25]]])  # top-left 2x2; corner patch
    valid = torch.ones(2, 1, dtype=torch.bool)
    phrase = torch.randint(1000, 2000, (2, 1, LB))
    phrase_mask = torch.ones(2, 1, LB, dtype=torch.long)
    inside = net.region_patch_masks(boxes[:, 0])
    assert inside[0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert inside[1].nonzero().flatten().tolist() == [15]

    def region_outputs(tokens):
        pairs = net.build_pairs(
            tokens, boxes=boxes, box_valid=valid, box_input_ids=phrase, box_attention_mask=phrase_mask
        )
        fused = net.fuse(pairs.text_hidden, pairs.text_mask, pairs.concept_tokens, pairs.concept_mask)
        return fused, pairs.concept_feat

    with torch.no_grad():
        fused, feat = region_outputs(image_tokens)
        outside = image_tokens.clone()
        outside[:, 0] += 3.0  # the ViT [CLS] is not part of a region concept
        outside[0, 1:][~inside[0]] += 5.0
        outside[1, 1:][~inside[1]] -= 5.0
        fused_out, feat_out = region_outputs(outside)
        changed = image_tokens.clone()
        changed[0, 1 + 5] += 5.0  # a patch inside the first box
        fused_in, _ = region_outputs(changed)
    assert torch.allclose(fused, fused_out, atol=1e-5)
    assert torch.allclose(feat, feat_out, atol=1e-6)
    assert not torch.allclose(fused[0], fused_in[0], atol=1e-3)
    assert torch.allclose(fused[1], fused_in[1], atol=1e-5)  # the other image is untouched


def test_fusing_in_buckets_cut_to_the_real_length_changes_nothing():
    net = _tiny_network()
    torch.manual_seed(3)
    tokens = torch.randn(4, 17, 32)
    concept_mask = torch.ones(4, 17, dtype=torch.long)
    concept_mask[1, 5:] = 0
    hidden = torch.randn(4, 9, 32)
    text_mask = torch.ones(4, 9, dtype=torch.long)
    text_mask[2:, 3:] = 0  # two short texts
    hidden[2:, 3:] = 0.0
    with torch.no_grad():
        full = net.fuse(hidden, text_mask, tokens, concept_mask)[:, 0]
        bucketed = net.fused_cls(hidden, text_mask, tokens, concept_mask, bucket=torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(full, bucketed, atol=1e-5)


# ------------------------------------------------ one BERT: text half + fusion half
def _saved_bert(tmp_path, layers=4):
    from transformers import BertConfig, BertModel

    torch.manual_seed(5)
    bert = BertModel(
        BertConfig(
            vocab_size=3000,
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        add_pooling_layer=False,
    )
    with torch.no_grad():  # distinct non-trivial values everywhere (LayerNorms and biases start at 1 / 0)
        for parameter in bert.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = tmp_path / "bert"
    bert.save_pretrained(path)
    return bert.eval(), str(path)


def _split_network(path, **text):
    torch.manual_seed(0)
    config = {**TINY, "text_encoder": {"name": path, **text}}
    return XVLMNetwork(config).eval()


def test_text_and_fusion_layers_come_from_one_saved_bert(tmp_path):
    from transformers.models.bert.modeling_bert import BertLayer

    bert, path = _saved_bert(tmp_path, layers=4)
    net = _split_network(path)
    assert len(net.text_encoder.encoder.layer) == 2 and len(net.cross_encoder.layers) == 2  # half and half
    assert net.text_encoder.config.num_hidden_layers == 2
    assert net.cross_encoder.split.tolist() == [2, 2]
    for index in range(2):
        lower, own = bert.encoder.layer[index].state_dict(), net.text_encoder.encoder.layer[index].state_dict()
        assert lower.keys() == own.keys() and all(torch.equal(lower[k], own[k]) for k in lower)
    for index, fusion in enumerate(net.cross_encoder.layers):
        assert isinstance(fusion, BertLayer) and hasattr(fusion, "crossattention")
        upper = bert.encoder.layer[2 + index].state_dict()
        state = fusion.state_dict()
        copied = [k for k in state if not k.startswith("crossattention.")]
        assert sorted(copied) == sorted(upper)  # self-attention + feed-forward, by name
        for key in copied:
            assert torch.equal(state[key], upper[key]), key
        cross = {k[len("crossattention.") :]: v for k, v in state.items() if k.startswith("crossattention.")}
        assert set(cross) == {k[len("attention.") :] for k in upper if k.startswith("attention.")}
        for key, value in cross.items():  # random: not a copy of any BERT attention weight
            if key.endswith("weight") and "LayerNorm" not in key:
                assert not any(
                    torch.equal(value, layer.state_dict()["attention." + key]) for layer in bert.encoder.layer
                )
    # the text encoder computes what the saved BERT's lower half computes
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        reference = bert(
            input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), output_hidden_states=True
        ).hidden_states[2]
        assert torch.allclose(net.encode_text(ids, mask), reference, atol=1e-5)


def test_split_point_is_an_option_and_fusion_self_attention_is_bidirectional(tmp_path):
    bert, path = _saved_bert(tmp_path, layers=4)
    net = _split_network(path, fusion_layers=1)
    assert len(net.text_encoder.encoder.layer) == 3 and len(net.cross_encoder.layers) == 1
    fusion = net.cross_encoder.layers[0].state_dict()
    assert torch.equal(fusion["intermediate.dense.weight"], bert.encoder.layer[3].intermediate.dense.weight)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="text_encoder.fusion_layers"):
            _split_network(path, fusion_layers=bad)
    with pytest.raises(ValueError, match="text_encoder.fusion_layers"):
        XVLMNetwork({**TINY, "cross_encoder": {"num_hidden_layers": 2}})
    # a fusion layer is a BERT *decoder* layer only to get its cross-attention: no causal mask
    hidden = torch.randn(1, 6, 32)
    tokens = torch.randn(1, 17, 32)
    text_mask, image_mask = torch.ones(1, 6, dtype=torch.long), torch.ones(1, 17, dtype=torch.long)
    changed = hidden.clone()
    changed[0, -1] += 3.0
    with torch.no_grad():
        first = net.fuse(hidden, text_mask, tokens, image_mask)[0, 0]
        again = net.fuse(changed, text_mask, tokens, image_mask)[0, 0]
    assert not torch.allclose(first, again, atol=1e-4)


def test_a_checkpoint_of_another_layout_is_refused_by_name(tmp_path, mmf_registry):
    from mmf_fashion.trainers.checkpointing import apply_state_mapping, load_model_state

    net = _tiny_network()
    state = net.state_dict()
    # the old layout: cross layers on top of a whole (here 2-layer) text encoder, no split entry
    old = {k: v for k, v in state.items() if k != "cross_encoder.split"}
    for key, value in list(old.items()):
        if key.startswith("text_encoder.encoder.layer.0."):
            old[key.replace("layer.0.", "layer.1.")] = value.clone()
    torch.manual_seed(1)
    fresh = XVLMNetwork(TINY).eval()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="old X-VLM layout.*text_encoder.fusion_layers"):
        fresh.load_state_dict(old, strict=False)
    # also when a loader first drops the keys the model lacks (pretrained_state_mapping in fashion_trainer)
    mapped = apply_state_mapping(old, {"text_encoder": "text_encoder", "cross_encoder": "cross_encoder"})
    with pytest.raises(ValueError, match="text_encoder.fusion_layers"):
        load_model_state(fresh, mapped, strict=False, source="old.pth")
    # and on the strict path (resume, runtime.build_model_from_config): the layout, not a key list
    with pytest.raises(ValueError, match="old X-VLM layout.*text_encoder.fusion_layers"):
        load_model_state(fresh, old, strict=True, source="old.pth")
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # nothing half loaded
    assert not torch.equal(
        before["cross_encoder.layers.0.intermediate.dense.weight"],
        state["cross_encoder.layers.0.intermediate.dense.weight"],
    )
    # another split of the same depth: named too
    other = XVLMNetwork(
        {**TINY, "text_encoder": {**TINY["text_encoder"], "num_hidden_layers": 3, "fusion_layers": 2}}
    ).state_dict()
    with pytest.raises(ValueError, match="1 text \\+ 2 fusion layers.*text_encoder.fusion_layers"):
        fresh.load_state_dict(other, strict=False)
    # the same layout loads; so does a text-only transfer (no fusion weights)
    fresh.load_state_dict(state, strict=True)
    text_only = {k: v for k, v in state.items() if k.startswith("text_encoder.")}
    fresh.load_state_dict(text_only, strict=False)
    model = _build(mmf_registry, head="retrieval")
    with pytest.raises(ValueError, match="text_encoder.fusion_layers"):
        model.load_state_dict(old, strict=False)
    # the way out the message gives: record the old split, build that layout (2 text + 1 fusion)
    from mmf_fashion.modules.xvlm import mark_old_layout

    with pytest.raises(ValueError, match="2 text layers \\+ 1 cross layers.*mark_old_layout"):
        fresh.load_state_dict(old, strict=False)
    rebuilt = XVLMNetwork(
        {**TINY, "text_encoder": {**TINY["text_encoder"], "num_hidden_layers": 3, "fusion_layers": 1}}
    )
    rebuilt.load_state_dict(mark_old_layout(old), strict=True)
    assert torch.equal(
        rebuilt.cross_encoder.layers[0].crossattention.self.key.weight,
        state["cross_encoder.layers.0.crossattention.self.key.weight"],
    )


# --------------------------------------------------------------- region MLM
def test_region_mlm_predicts_phrase_tokens_from_the_box_pooled_concept():
    net = _tiny_network()
    image_tokens = torch.randn(2, 17, 32)
    boxes = torch.tensor([[[0.25, 0.25, 0.5, 0.5]], [[0.875, 0.875, 0.25, 0.25]]])
    valid = torch.ones(2, 1, dtype=torch.bool)
    phrase = torch.randint(1000, 2000, (2, 1, LB))
    phrase[..., 0], phrase[..., -1] = 101, 102
    phrase_mask = torch.ones(2, 1, LB, dtype=torch.long)
    inside = net.region_patch_masks(boxes[:, 0])

    def loss(tokens, seed=0):
        pairs = net.build_pairs(
            tokens, boxes=boxes, box_valid=valid, box_input_ids=phrase, box_attention_mask=phrase_mask
        )
        return net.region_mlm_loss(pairs, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        reference = loss(image_tokens)
        outside = image_tokens.clone()
        outside[0, 1:][~inside[0]] += 5.0
        outside[1, 1:][~inside[1]] -= 5.0
        changed = image_tokens.clone()
        changed[0, 1 + 5] += 5.0  # a patch inside the first box
        assert reference is not None and torch.isfinite(reference)
        assert torch.allclose(loss(outside), reference, atol=1e-5)
        assert not torch.allclose(loss(changed), reference, atol=1e-5)
        # by hand: mask the phrases the same way, fuse with the concepts, predict with the tied head
        pairs = net.build_pairs(
            image_tokens, boxes=boxes, box_valid=valid, box_input_ids=phrase, box_attention_mask=phrase_mask
        )
        tokenizer = net.tokenizer
        masked, labels = X.mask_tokens(
            pairs.text_ids,
            pairs.text_mask,
            tokenizer.all_special_ids,
            tokenizer.mask_token_id,
            net.text_encoder.config.vocab_size,
            0.25,
            8,
            torch.Generator().manual_seed(0),
        )
        fused = net.fuse(
            net.encode_text(masked, pairs.text_mask), pairs.text_mask, pairs.concept_tokens, pairs.concept_mask
        )
        chosen = labels != -100
        expected = torch.nn.functional.cross_entropy(net.mlm_head(fused[chosen]), labels[chosen])
    assert reference.item() == pytest.approx(expected.item(), rel=1e-5)
    assert chosen.sum(1).tolist() == [1, 1]  # 4 real tokens * 0.25 -> 1 per phrase
    # captions only: no region MLM
    captions = net.build_pairs(image_tokens, torch.randint(1000, 2000, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    assert net.region_mlm_loss(captions) is None


# ------------------------------------------------------------------ losses
def test_box_losses_equal_torchvision_giou_and_hand_values():
    pred = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 0.4, 0.2]])
    target = torch.tensor([[0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 0.4, 0.2]])
    l1, giou = X.box_regression_losses(pred, target)
    # box 0: disjoint quarters, union 0.5, hull 1 -> GIoU = 0 - 0.5 / 1 -> loss 1.5; box 1: identical -> 0
    assert giou.item() == pytest.approx((1.5 + 0.0) / 2, abs=1e-6)
    reference = (
        1 - generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy")).diagonal()
    )
    assert giou.item() == pytest.approx(reference.mean().item(), abs=1e-6)
    assert l1.item() == pytest.approx((0.5 + 0.5 + 0 + 0) / 2, abs=1e-6)  # summed over coords, mean over boxes
    with pytest.raises(ValueError, match="box losses"):
        X.box_regression_losses(pred, target[:1])


def test_giou_loss_equals_torchvision_generalized_box_iou_loss_on_random_boxes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(64, 2, generator=generator)
    sizes = torch.rand(64, 2, generator=generator) * 0.6 + 0.01
    pred = torch.cat((centres, sizes), dim=1)
    target = torch.cat(
        (torch.rand(64, 2, generator=generator), torch.rand(64, 2, generator=generator) * 0.6 + 0.01), dim=1
    )
    target[:8] = pred[:8]  # some identical, some overlapping, most apart

    def corners(boxes):  # (cx, cy, w, h) -> (x0, y0, x1, y1), written out by hand
        cx, cy, w, h = boxes.unbind(-1)
        return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)

    l1, giou = X.box_regression_losses(pred, target)
    reference = generalized_box_iou_loss(corners(pred), corners(target), reduction="none")
    assert giou.item() == pytest.approx(reference.mean().item(), rel=1e-5)
    assert l1.item() == pytest.approx((pred - target).abs().sum(1).mean().item(), rel=1e-5)
    assert reference[:8].abs().max().item() < 1e-4 and reference.max().item() > 1.0  # both regimes are exercised


def test_itc_soft_targets_share_positives_by_id():
    torch.manual_seed(0)
    concept = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(10.0)
    ids = torch.tensor([7, 7, 9])
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    log_c2t = torch.log_softmax(scale * concept @ text.t(), dim=1)
    log_t2c = torch.log_softmax(scale * text @ concept.t(), dim=1)
    expected = (-(targets * log_c2t).sum(1).mean() - (targets * log_t2c).sum(1).mean()) / 2
    assert X.itc_loss(concept, text, scale, ids).item() == pytest.approx(expected.item(), rel=1e-5)
    one_hot = (
        torch.nn.functional.cross_entropy(scale * concept @ text.t(), torch.arange(3))
        + torch.nn.functional.cross_entropy(scale * text @ concept.t(), torch.arange(3))
    ) / 2
    assert X.itc_loss(concept, text, scale, None).item() == pytest.approx(one_hot.item(), rel=1e-5)


def test_itc_gathers_rows_of_other_ranks_with_the_right_offset(monkeypatch):
    torch.manual_seed(0)
    other_concept = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    other_text = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    concept = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1).requires_grad_()
    text = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    others = iter([other_text, other_concept])

    def fake_variable(tensor):  # rank 0 holds 3 rows, this rank (1) holds 2
        return torch.tensor([3, 2]) if tensor.numel() == 1 else torch.cat((torch.tensor([1, 2, 3]), tensor))

    monkeypatch.setattr(X, "get_world_size", lambda: 2)
    monkeypatch.setattr(X, "get_rank", lambda: 1)
    monkeypatch.setattr(X, "all_gather_variable", fake_variable)
    monkeypatch.setattr(X, "gather_with_grad", lambda padded: torch.cat((next(others), padded)))
    ids = torch.tensor([4, 5])
    loss = X.itc_loss(concept, text, torch.tensor(5.0), ids)
    all_text, all_concept = torch.cat((other_text, text)), torch.cat((other_concept, concept))
    expected = (
        torch.nn.functional.cross_entropy(5.0 * concept @ all_text.t(), torch.tensor([3, 4]))
        + torch.nn.functional.cross_entropy(5.0 * text @ all_concept.t(), torch.tensor([3, 4]))
    ) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(concept.grad).all()


def test_temperature_starts_at_0_07_and_is_clamped():
    net = _tiny_network()
    assert temperature(net.itc_scale) == pytest.approx(0.07, rel=1e-5)
    with torch.no_grad():
        net.itc_scale.log_scale.fill_(20.0)
    assert temperature(net.itc_scale) == pytest.approx(0.001, rel=1e-5)
    with torch.no_grad():
        net.itc_scale.log_scale.fill_(-20.0)
    assert temperature(net.itc_scale) == pytest.approx(0.5, rel=1e-5)


def test_itm_negatives_are_never_positives_and_follow_the_similarity():
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    for _ in range(50):
        similarity = torch.randn(6, 6) * 5
        neg_text, neg_concept, has_text, has_concept = X.sample_itm_negatives(similarity, ids, generator)
        assert has_text.all() and has_concept.all()
        assert (ids[neg_text] != ids).all()
        assert (ids[neg_concept] != ids).all()
    # a very peaked similarity picks the hardest non-positive
    similarity = torch.full((3, 3), -50.0)
    similarity[0, 2] = similarity[1, 0] = similarity[2, 1] = 50.0
    neg_text, neg_concept, _, _ = X.sample_itm_negatives(similarity, None, generator)
    assert neg_text.tolist() == [2, 0, 1]
    assert neg_concept.tolist() == [1, 2, 0]
    # every pair shares one id: nothing to sample
    _, _, has_text, has_concept = X.sample_itm_negatives(torch.randn(3, 3), torch.tensor([5, 5, 5]), generator)
    assert not has_text.any() and not has_concept.any()


def test_mlm_masks_a_quarter_of_real_tokens_at_most_eight():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 40))
    ids[:, 0] = 101
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 9:] = 0  # 8 real tokens after [CLS] -> 2 masked
    ids[1, 8] = 102
    ids[1, 9:] = 0
    mask[2, 3:] = 0  # 2 real tokens -> at least 1 masked
    masked, labels = X.mask_tokens(ids, mask, [0, 101, 102], 103, 30522, 0.25, 8, generator)
    chosen = labels != -100
    assert chosen.sum(1).tolist() == [8, 2, 1]  # row 0: 39 * 0.25 -> 10, capped at 8
    assert torch.equal(labels[chosen], ids[chosen])
    assert not chosen[:, 0].any() and not chosen[1, 8:].any() and not chosen[2, 3:].any()
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_grounding_hits_use_iou_half():
    # dyadic coordinates: every IoU below is exact in float32, so the tie at 0.5 is a real tie
    target = torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 3)
    pred = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.25], [0.5, 0.5, 0.5, 0.125]])
    assert X.paired_box_iou(pred, target).tolist() == [1.0, 0.5, 0.25]
    assert X.grounding_hits(pred, target, 0.5).tolist() == [True, True, False]


def test_paired_box_iou_is_the_diagonal_of_torchvision_box_iou():
    from torchvision.ops import box_iou

    g = torch.Generator().manual_seed(0)
    pred = torch.cat([torch.rand(50, 2, generator=g), 0.05 + 0.5 * torch.rand(50, 2, generator=g)], dim=1)
    target = torch.cat([torch.rand(50, 2, generator=g), 0.05 + 0.5 * torch.rand(50, 2, generator=g)], dim=1)
    target[:10] = pred[:10]  # some identical, most partly or not overlapping
    expected = box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(target, "cxcywh", "xyxy")).diagonal()
    torch.testing.assert_close(X.paired_box_iou(pred, target), expected)
    assert bool((expected == 0).any()) and bool(((expected > 0) & (expected < 1)).any())


# -------------------------------------------------------- through MMF's registry
@pytest.mark.parametrize(
    "head, expected",
    [
        ("pretraining", {"itc", "itm", "mlm", "mlm_region", "box_l1", "box_giou"}),
        ("retrieval", {"itc", "itm"}),
        ("grounding", {"box_l1", "box_giou"}),
    ],
)
def test_every_head_returns_its_losses(mmf_registry, head, expected):
    # gradients of every head (and what each leaves untrained): tests/test_registry.py
    model = _build(mmf_registry, head=head)
    model.train()
    output = model(_sample_list())
    assert set(output["losses"]) == {f"train/fashiongen/{name}" for name in expected}


def test_pretraining_without_regions_or_with_data_masking(mmf_registry):
    model = _build(mmf_registry, head="pretraining", mlm={"source": "data"})
    sample_list = _sample_list()
    sample_list["box_valid"] = torch.zeros(B, R, dtype=torch.bool)  # boxes present, none valid
    sample_list["masked_input_ids"], sample_list["mlm_labels"] = sample_list["input_ids"], torch.full((B, L), -100)
    output = model(sample_list)
    # nothing to mask in the captions; no region: no box and no region MLM
    assert set(output["losses"]) == {"train/fashiongen/itc", "train/fashiongen/itm"}
    for key in ("boxes", "box_valid", "box_input_ids", "box_attention_mask", "masked_input_ids", "mlm_labels"):
        del sample_list[key]
    with pytest.raises(KeyError, match="masked_input_ids"):
        model(sample_list)
    labels = torch.full((B, L), -100)
    labels[:, 2] = sample_list["input_ids"][:, 2]
    masked = sample_list["input_ids"].clone()
    masked[:, 2] = 103
    sample_list["masked_input_ids"], sample_list["mlm_labels"] = masked, labels
    output = model(sample_list)
    assert set(output["losses"]) == {"train/fashiongen/itc", "train/fashiongen/itm", "train/fashiongen/mlm"}


def test_eval_outputs_embeddings_boxes_and_grounding_accuracy(mmf_registry):
    model = _build(mmf_registry, head="pretraining").eval()
    sample_list = _sample_list("val")
    with torch.no_grad():
        output = model(sample_list)
    assert output["image_embedding"].shape == (B, 16) and output["text_embedding"].shape == (B, 16)
    assert torch.allclose(output["image_embedding"].norm(dim=-1), torch.ones(B), atol=1e-5)
    assert "val/fashiongen/box_giou" in output["losses"]
    predicted = output["predicted_boxes"]
    assert predicted.shape == (B, R, 4)
    assert (predicted[~sample_list["box_valid"]] == 0).all() and (predicted[sample_list["box_valid"]] > 0).all()

    grounding = _build(mmf_registry, head="grounding").eval()
    with torch.no_grad():
        boxes = grounding(sample_list)["predicted_boxes"]
        direct = grounding.predict_boxes(
            sample_list["image"],
            sample_list["box_input_ids"],
            sample_list["box_attention_mask"],
            sample_list["box_valid"],
        )
    assert torch.allclose(boxes, direct, atol=1e-5)
    metric = mmf_registry.get_metric_class("grounding_accuracy")()
    perfect = metric.calculate(sample_list, {"predicted_boxes": sample_list["boxes"].clone()})
    assert perfect == {"accuracy": 100.0, "num_boxes": 6.0}
    shifted = sample_list["boxes"].clone()
    shifted[..., 0] += 0.5  # moved right by more than the widths (<= 0.4): IoU 0
    assert metric.calculate(sample_list, {"predicted_boxes": shifted})["accuracy"] == 0.0
    value = metric.calculate(sample_list, {"predicted_boxes": boxes})
    assert 0.0 <= value["accuracy"] <= 100.0 and value["num_boxes"] == 6.0


def test_retrieval_interface_and_itm_rerank(mmf_registry):
    model = _build(mmf_registry, head="retrieval").train()
    sample_list = _sample_list("val")
    images = model.embed_images(sample_list["image"])
    texts = model.embed_texts(["a red silk dress", "blue denim jacket with a collar"])
    assert images.shape == (B, 16) and texts.shape == (2, 16)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)
    from PIL import Image

    pixels = model.image_transform()(Image.new("RGB", (80, 50), (200, 30, 30)))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    with torch.no_grad():
        scores = model.match_scores(sample_list)
        again = model.match_scores(sample_list["image"], sample_list["input_ids"], sample_list["attention_mask"])
    assert model.training  # the mode is left as it was
    model.eval()
    with torch.no_grad():
        scores = model.match_scores(sample_list)
        tokens = model.encode_image(sample_list["image"])
        hidden = model.encode_text(sample_list["input_ids"], sample_list["attention_mask"])
        logits = model.itm_logits(
            tokens, torch.ones(tokens.shape[:2], dtype=torch.long), hidden, sample_list["attention_mask"]
        )
        output = model(sample_list)
    assert again.shape == (B,)
    assert torch.allclose(scores, logits[:, 1] - logits[:, 0], atol=1e-5)
    report = {**sample_list, **output}
    metric = mmf_registry.get_metric_class("r@k_general")(ks=[1, 2], rerank_k=2)
    result = metric.calculate(report, report, model=model)
    assert set(result) >= {"i2t_r@1", "t2i_r@1", "avg"}


def test_pretrained_weights_load_into_every_downstream_head(mmf_registry):
    pretrained = _build(mmf_registry, head="pretraining")
    for head in ("retrieval", "grounding"):
        downstream = _build(mmf_registry, head=head)
        downstream.load_state_dict(pretrained.state_dict(), strict=True)
        assert torch.equal(downstream.box_head[0].weight, pretrained.box_head[0].weight)
    assert not any(key.startswith("mlm_head._tied") for key in pretrained.state_dict())


def test_bad_config_and_inputs_are_named(mmf_registry):
    with pytest.raises(ValueError, match="head must be one of"):
        _build(mmf_registry, head="captioning")
    with pytest.raises(ValueError, match="unknown"):
        _build(mmf_registry, tasks=["itc", "vqa"])
    model = _build(mmf_registry, head="grounding")
    sample_list = _sample_list()
    del sample_list["boxes"]
    with pytest.raises(KeyError, match="boxes"):
        model(sample_list)
    with pytest.raises(ValueError, match="image_size"):
        model.encode_image(torch.randn(1, 3, 64, 64))


def test_torchvision_vit_gives_cls_and_patch_tokens():
    from mmf_fashion.modules.xvlm import build_vit

    encoder = build_vit({"type": "torchvision", "name": "vit_b_32", "image_size": 64})
    assert (encoder.patch_size, encoder.hidden_size) == (32, 768)
    with torch.no_grad():
        tokens = encoder(torch.randn(1, 3, 64, 64))
    assert tokens.shape == (1, 1 + 4, 768)
    with pytest.raises(ValueError, match="type"):
        build_vit({"type": "swin"})


# ------------------------------------------------------- grounding metric: padding
def test_grounding_metric_counts_valid_regions_whatever_the_padding(mmf_registry):
    metric = mmf_registry.get_metric_class("grounding_accuracy")(threshold=0.5)
    # sample 0: 2 regions (hit, miss); sample 1: 1 region (hit); sample 2: none
    target = torch.tensor(
        [
            [[0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.2, 0.2]],
            [[0.7, 0.3, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    predicted = target.clone()
    predicted[0, 1] = torch.tensor([0.8, 0.8, 0.2, 0.2])
    expected = {"accuracy": pytest.approx(200.0 / 3), "num_boxes": 3.0}
    report = {"boxes": target, "box_valid": valid}
    assert metric.calculate(report, {"predicted_boxes": predicted}) == expected

    def pad(tensor, slots, value):
        extra = tensor.new_full((tensor.shape[0], slots - tensor.shape[1]) + tuple(tensor.shape[2:]), value)
        return torch.cat((tensor, extra), dim=1)

    # padded to 5 slots with junk boxes where box_valid is False: the same answer
    wide = {"boxes": pad(target, 5, 0.5), "box_valid": pad(valid, 5, False)}
    assert metric.calculate(wide, {"predicted_boxes": pad(predicted, 5, 0.5)}) == expected
    # the prediction padded to another width than the annotation
    assert metric.calculate(wide, {"predicted_boxes": predicted}) == expected
    assert metric.calculate(report, {"predicted_boxes": pad(predicted, 4, 0.0)}) == expected
    # invalid slots are never counted, even when the prediction there is right
    report_all = {"boxes": target, "box_valid": torch.ones(3, 2, dtype=torch.bool)}
    assert metric.calculate(report_all, {"predicted_boxes": predicted})["num_boxes"] == 6.0
    # a valid region without a predicted slot is an error, not a silent miss
    with pytest.raises(ValueError, match="slot 1"):
        metric.calculate(report, {"predicted_boxes": predicted[:, :1]})
    with pytest.raises(KeyError, match="box_valid"):
        metric.calculate({"boxes": target}, {"predicted_boxes": predicted})
    # flat (K, 4) rows
    flat = metric.calculate({"boxes": target[valid]}, {"predicted_boxes": predicted[valid]})
    assert flat == expected
    assert metric.calculate(
        {"boxes": target[:0, 0], "box_valid": valid[:0, 0]}, {"predicted_boxes": predicted[:0, 0]}
    ) == {"accuracy": 0.0, "num_boxes": 0.0}


def test_pretraining_eval_reports_boxes_for_batches_without_regions(mmf_registry):
    model = _build(mmf_registry, head="pretraining").eval()
    sample_list = _sample_list("val")
    sample_list["box_valid"] = torch.zeros(B, R, dtype=torch.bool)
    with torch.no_grad():
        output = model(sample_list)
    assert output["predicted_boxes"].shape == (B, R, 4) and not output["predicted_boxes"].any()
    silent = _build(mmf_registry, head="pretraining", eval_losses=False).eval()
    with torch.no_grad():
        full = silent(_sample_list("val"))
    assert full["losses"] == {} and full["predicted_boxes"].shape == (B, R, 4)
    assert (full["predicted_boxes"][_sample_list()["box_valid"]] > 0).all()


# -------------------------------------------- region-aware crop (box_transform)
def _make_processor(name, **params):
    from mmf.datasets.processors.processors import Processor

    return Processor(OmegaConf.create({"type": name, "params": params}))


def _two_box_image():
    import numpy as np
    from PIL import Image

    pixels = np.zeros((48, 64, 3), dtype=np.uint8)  # H 48, W 64
    pixels[6:20, 4:24, 0] = 255  # red box (x 4, y 6, w 20, h 14)
    pixels[26:44, 40:60, 1] = 255  # green box (x 40, y 26, w 20, h 18)
    return Image.fromarray(pixels), [[4, 6, 20, 14], [40, 26, 20, 18]]


def _channel_extent(image_tensor, channel):
    bright = image_tensor[channel] > 0.5  # ImageNet-normalised: 255 -> > 2, 0 -> < -1.5
    rows, cols = bright.any(1).nonzero().flatten(), bright.any(0).nonzero().flatten()
    size = image_tensor.shape[-1]
    x0, x1, y0, y1 = cols.min().item(), cols.max().item() + 1, rows.min().item(), rows.max().item() + 1
    return torch.tensor([(x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size])


def test_keep_box_crop_keeps_the_picked_region_whole_and_follows_the_pixels(mmf_registry):
    image_processor = _make_processor("fashion_image_transform", size=32, horizontal_flip=0.5)
    box_processor = _make_processor("box_transform", max_regions=5, min_visible=0.5, keep_box_crop=True)
    image, boxes = _two_box_image()
    anchors, widths, flips = set(), set(), 0
    for seed in range(40):
        torch.manual_seed(seed)
        out = box_processor(
            {
                "image": image,
                "boxes": boxes,
                "phrases": ["red patch", "green patch"],
                "is_train": True,
                "image_processor": image_processor,
            }
        )
        assert out["image"].shape == (3, 32, 32)
        first = out["box_phrases"][0]
        channel = 0 if first == "red patch" else 1
        anchors.add(first)
        assert out["box_valid"][0]
        box = out["boxes"][0]
        # whole: the box's own pixels are all in the crop and the box matches them
        assert torch.allclose(box, _channel_extent(out["image"], channel), atol=1.5 / 32), (seed, box)
        assert (box[:2] - box[2:] / 2 >= -1e-6).all() and (box[:2] + box[2:] / 2 <= 1 + 1e-6).all()
        widths.add(round(box[2].item(), 3))
        flips += int(
            _channel_extent(out["image"], 0)[0] > _channel_extent(out["image"], 1)[0]
            if out["box_valid"].sum() == 2
            else 0
        )
        # the other region is kept only when at least half of it is in the crop, and then follows its pixels
        if out["box_valid"][1]:
            other = 1 - channel
            assert torch.allclose(out["boxes"][1], _channel_extent(out["image"], other), atol=1.5 / 32)
    assert anchors == {"red patch", "green patch"}
    assert len(widths) > 5  # the crop is random
    assert flips > 0  # some crops were flipped (red ends up right of green)


def test_keep_box_crop_never_flips_left_or_right_phrases_and_leaves_evaluation_alone(mmf_registry):
    image_processor = _make_processor("fashion_image_transform", size=32, horizontal_flip=1.0)
    box_processor = _make_processor("box_transform", keep_box_crop=True)
    image, boxes = _two_box_image()
    for seed in range(10):
        torch.manual_seed(seed)
        out = box_processor(
            {
                "image": image,
                "boxes": boxes,
                "phrases": ["left patch", "green patch"],
                "is_train": True,
                "image_processor": image_processor,
            }
        )
        assert not out["flip_allowed"]
        if out["box_valid"].sum() == 2:
            assert _channel_extent(out["image"], 0)[0] < _channel_extent(out["image"], 1)[0]
    evaluation = box_processor(
        {"image": image, "boxes": boxes, "phrases": ["a", "b"], "is_train": False, "image_processor": image_processor}
    )
    reference = image_processor({"image": image, "is_train": False})["image"]
    assert torch.equal(evaluation["image"], reference)
    assert evaluation["box_phrases"][:2] == ["a", "b"]
