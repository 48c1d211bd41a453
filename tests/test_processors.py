"""Processors: whole-word MLM masking, blockwise patch masks, views, soft
attribute labels, image transforms and boxes that follow crops and flips."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from mmf_fashion.processors.boxes import box_problem, finish_boxes, mentions_left_or_right, pixel_boxes
from mmf_fashion.processors.masking import IGNORE_INDEX, blockwise_patch_mask, group_word_positions, whole_word_mask

SPECIAL = [0, 100, 101, 102, 103]


def make_processor(name, **params):
    """Through MMF's Processor wrapper, as a dataset YAML declares it."""
    from mmf.datasets.processors.processors import Processor

    return Processor(OmegaConf.create({"type": name, "params": params}))


def test_every_processor_name_resolves(mmf_registry):
    from mmf_fashion.processors import REGISTERED_PROCESSORS

    for name in REGISTERED_PROCESSORS:
        assert mmf_registry.get_processor_class(name) is not None, name


# --- whole-word masking ------------------------------------------------------------


def _word_ids(words_lengths, pad=3):
    """[CLS] w0 w0 w1 ... [SEP] [PAD]*pad  -> (input_ids, word_ids)"""
    ids, word_ids = [101], [None]
    token = 2000
    for word, length in enumerate(words_lengths):
        for _ in range(length):
            ids.append(token)
            word_ids.append(word)
            token += 1
    ids.append(102)
    word_ids.append(None)
    ids += [0] * pad
    word_ids += [None] * pad
    return torch.tensor(ids), word_ids


def test_whole_word_mask_predicts_every_token_of_a_chosen_word_and_nothing_else():
    input_ids, word_ids = _word_ids([1, 3, 2, 1, 4, 2, 1, 3, 1, 2])
    words = group_word_positions(word_ids)
    for seed in range(200):
        masked, labels = whole_word_mask(
            input_ids,
            word_ids,
            mask_token_id=103,
            vocab_size=30522,
            special_token_ids=SPECIAL,
            probability=0.3,
            generator=torch.Generator().manual_seed(seed),
        )
        predicted = labels != IGNORE_INDEX
        assert predicted.any()
        for positions in words:
            states = predicted[positions]
            assert states.all() or not states.any(), f"seed {seed}: word {positions} partly masked"
        # special tokens and padding are never predicted nor changed
        special_positions = [i for i, w in enumerate(word_ids) if w is None]
        assert not predicted[special_positions].any()
        assert torch.equal(masked[special_positions], input_ids[special_positions])
        assert torch.equal(labels[predicted], input_ids[predicted])
        assert torch.equal(masked[~predicted], input_ids[~predicted])


def test_whole_word_mask_budget_and_80_10_10_split():
    input_ids, word_ids = _word_ids([1] * 40)
    outcomes = {"mask": 0, "random": 0, "same": 0}
    counts = []
    for seed in range(400):
        masked, labels = whole_word_mask(
            input_ids,
            word_ids,
            mask_token_id=103,
            vocab_size=30522,
            special_token_ids=SPECIAL,
            probability=0.15,
            generator=torch.Generator().manual_seed(seed),
        )
        predicted = (labels != IGNORE_INDEX).nonzero().flatten()
        counts.append(len(predicted))
        for position in predicted.tolist():
            if masked[position] == 103:
                outcomes["mask"] += 1
            elif masked[position] == input_ids[position]:
                outcomes["same"] += 1
            else:
                outcomes["random"] += 1
                assert int(masked[position]) not in SPECIAL
    assert set(counts) == {6}  # round(40 * 0.15)
    total = sum(outcomes.values())
    assert abs(outcomes["mask"] / total - 0.8) < 0.05
    assert abs(outcomes["random"] / total - 0.1) < 0.04
    assert abs(outcomes["same"] / total - 0.1) < 0.04


def test_text_tokenizer_whole_words_on_real_wordpieces(mmf_registry):
    processor = make_processor("fashion_text_tokenizer", tokenizer="minilm", max_length=24, mlm_probability=0.5)
    text = "embroidered houndstooth turtleneck with asymmetric hemline"
    plain = processor({"text": text})
    assert set(plain) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.shape == (24,) and v.dtype == torch.long for v in plain.values())
    word_ids = processor.tokenizer(text, max_length=24, padding="max_length", truncation=True).word_ids()
    multi_piece = [p for p in group_word_positions(word_ids) if len(p) > 1]
    assert multi_piece, "the text should hold words split into several WordPieces"
    for seed in range(30):
        out = processor({"text": text, "mlm": True, "generator": torch.Generator().manual_seed(seed)})
        assert torch.equal(out["input_ids"], plain["input_ids"])
        predicted = out["mlm_labels"] != IGNORE_INDEX
        for positions in group_word_positions(word_ids):
            assert predicted[positions].all() or not predicted[positions].any()


# --- blockwise patch mask ------------------------------------------------------------


@pytest.mark.parametrize(
    "grid,count", [((7, 7), 12), ((7, 7), 1), ((7, 7), 24), ((14, 14), 75), ((4, 6), 24), ((7, 7), 0)]
)
def test_blockwise_mask_has_exactly_the_requested_count(grid, count):
    for seed in range(20):
        mask = blockwise_patch_mask(grid, count, generator=torch.Generator().manual_seed(seed))
        assert mask.dtype == torch.bool and mask.shape == (grid[0] * grid[1],)
        assert int(mask.sum()) == count


def test_blockwise_mask_is_deterministic_given_a_generator_and_blocky():
    first = blockwise_patch_mask((7, 7), 12, generator=torch.Generator().manual_seed(5))
    again = blockwise_patch_mask((7, 7), 12, generator=torch.Generator().manual_seed(5))
    other = [blockwise_patch_mask((7, 7), 12, generator=torch.Generator().manual_seed(s)) for s in range(6, 16)]
    assert torch.equal(first, again)
    assert any(not torch.equal(first, o) for o in other)
    # blocks, not scattered cells: most masked cells touch another masked cell
    grid = first.view(7, 7)
    touching = 0
    for r, c in grid.nonzero().tolist():
        neighbours = [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        touching += any(0 <= a < 7 and 0 <= b < 7 and grid[a, b] for a, b in neighbours)
    assert touching >= 10


def test_blockwise_processor_takes_ratio_from_config(mmf_registry):
    processor = make_processor("blockwise_patch_mask", grid=[7, 7], mask_ratio=0.25)
    mask = processor({"generator": torch.Generator().manual_seed(0)})["patch_mask"]
    assert mask.shape == (49,) and int(mask.sum()) == 12


# --- views and attributes --------------------------------------------------------------


def test_multi_view_sampler_picks_two_different_views(mmf_registry):
    sampler = make_processor("multi_view_sampler")
    seen = set()
    for _ in range(50):
        picked = sampler({"views": ["a", "b", "c"], "is_train": True})
        assert picked["first"] != picked["second"] and not picked["second_is_copy"]
        seen.add((picked["first"], picked["second"]))
    assert len(seen) > 3
    assert sampler({"views": ["a", "b", "c"], "is_train": False})["first"] == "a"
    single = sampler({"views": ["only"], "is_train": True})
    assert single["first"] == single["second"] == "only" and single["second_is_copy"]


def test_soft_attribute_labels_are_uniform_and_sum_to_one(mmf_registry):
    processor = make_processor("soft_attribute_labels", num_attributes=10)
    targets = processor({"attribute_ids": [1, 4, 4, 7]})["attribute_targets"]
    assert targets.shape == (10,) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(), torch.tensor(1.0))
    assert torch.allclose(targets[[1, 4, 7]], torch.full((3,), 1 / 3))
    assert torch.equal(processor({"attribute_ids": []})["attribute_targets"], torch.zeros(10))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        processor({"attribute_ids": [10]})


# --- image transforms ----------------------------------------------------------------


def _gray_image(size=(48, 40)):
    return Image.fromarray(np.full((size[1], size[0], 3), [124, 116, 104], dtype=np.uint8))


def test_image_transform_sizes_and_imagenet_normalisation(mmf_registry):
    processor = make_processor("fashion_image_transform", size=32)
    image = _gray_image()
    for is_train in (True, False):
        out = processor({"image": image, "is_train": is_train})["image"]
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        # ImageNet mean colour -> about zero after normalisation
        assert out.abs().max() < 0.03
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    first = processor({"image": noisy, "is_train": False})["image"]
    assert torch.equal(first, processor({"image": noisy, "is_train": False})["image"])
    train_outputs = [processor({"image": noisy, "is_train": True})["image"] for _ in range(4)]
    assert any(not torch.equal(train_outputs[0], other) for other in train_outputs[1:])


# --- boxes ---------------------------------------------------------------------------------


def test_box_transform_matches_torchvision_bounding_boxes(mmf_registry):
    image_processor = make_processor("fashion_image_transform", size=32, scale=[0.3, 1.0], horizontal_flip=0.5)
    box_processor = make_processor("box_transform", max_regions=5, min_visible=0.0)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    boxes = [[4, 5, 20, 12], [30, 10, 10, 25], [0, 0, 48, 40]]
    for seed in range(25):
        torch.manual_seed(seed)
        ours = box_processor(
            {
                "image": image,
                "boxes": boxes,
                "phrases": ["a", "b", "c"],
                "is_train": True,
                "image_processor": image_processor,
            }
        )
        torch.manual_seed(seed)
        reference_boxes = tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32), format="XYWH", canvas_size=(40, 48)
        )
        ref_image, ref_boxes = image_processor.train_transform(image, reference_boxes)
        assert torch.equal(ours["image"], ref_image.as_subclass(torch.Tensor))
        # torchvision's own clamping and conversion to (cx, cy, w, h), then / size
        ref = v2.functional.convert_bounding_box_format(ref_boxes, new_format="CXCYWH").as_subclass(torch.Tensor) / 32
        valid = ours["box_valid"]
        nonempty = (ref[:, 2] > 0) & (ref[:, 3] > 0)
        assert torch.allclose(ours["boxes"][: int(valid.sum())], ref[nonempty][: int(valid.sum())], atol=1e-4)


def _white_box_image(box, size=(64, 48)):
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x, y, w, h = box
    pixels[y : y + h, x : x + w] = 255
    return Image.fromarray(pixels)


def _bright_extent(image_tensor):
    """Normalised (cx, cy, w, h) of the bright pixels of a normalised image."""
    bright = image_tensor.mean(0) > 0.5
    rows, cols = bright.any(1).nonzero().flatten(), bright.any(0).nonzero().flatten()
    size = image_tensor.shape[-1]
    x0, x1, y0, y1 = cols.min().item(), cols.max().item() + 1, rows.min().item(), rows.max().item() + 1
    return torch.tensor([(x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size])


def test_boxes_follow_crops_and_flips_of_the_pixels(mmf_registry):
    image_processor = make_processor("fashion_image_transform", size=48, scale=[0.6, 1.0], horizontal_flip=1.0)
    box_processor = make_processor("box_transform")
    box = [6, 10, 20, 14]  # drawn off-centre so that a flip moves it
    image = _white_box_image(box)
    checked = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = box_processor(
            {
                "image": image,
                "boxes": [box],
                "phrases": ["white patch"],
                "is_train": True,
                "image_processor": image_processor,
            }
        )
        if not out["box_valid"][0]:
            continue
        expected = _bright_extent(out["image"])
        assert torch.allclose(out["boxes"][0], expected, atol=2.5 / 48), (seed, out["boxes"][0], expected)
        assert out["boxes"][0, 0] > 0.5  # the flip put the left-hand patch on the right
        checked += 1
    assert checked >= 10


def test_flip_is_refused_when_a_phrase_says_left_or_right(mmf_registry):
    image_processor = make_processor("fashion_image_transform", size=48, train_crop="none", horizontal_flip=1.0)
    box_processor = make_processor("box_transform")
    box = [6, 10, 20, 14]
    image = _white_box_image(box)
    flipped = box_processor(
        {
            "image": image,
            "boxes": [box],
            "phrases": ["white patch"],
            "is_train": True,
            "image_processor": image_processor,
        }
    )
    kept = box_processor(
        {
            "image": image,
            "boxes": [box],
            "phrases": ["left sleeve"],
            "is_train": True,
            "image_processor": image_processor,
        }
    )
    assert flipped["flip_allowed"] and not kept["flip_allowed"]
    assert flipped["boxes"][0, 0] > 0.5 > kept["boxes"][0, 0]
    assert torch.allclose(kept["boxes"][0], _bright_extent(kept["image"]), atol=2.5 / 48)
    assert mentions_left_or_right(["Right cuff"]) and not mentions_left_or_right(["bright red"])


def test_boxes_mostly_cut_away_are_dropped_and_at_most_five_kept():
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[-6.0, 0, 10, 10], [-4.0, 0, 10, 10], [2.0, 2, 4, 4]] + [[1.0, 1, 2, 2]] * 5),
        format="XYWH",
        canvas_size=(20, 20),
        clamping_mode=None,
    )
    normalised, valid, kept = finish_boxes(boxes, max_regions=5, min_visible=0.5)
    assert kept == [1, 2, 3, 4, 5]  # box 0 is 40% inside: dropped; box 1 60%: kept
    assert valid.tolist() == [True] * 5
    assert torch.allclose(normalised[0], torch.tensor([0.15, 0.25, 0.3, 0.5]))  # clipped to [0, 6] x [0, 10]
    none, none_valid, _ = finish_boxes(pixel_boxes([], (20, 20)), max_regions=5)
    assert none.shape == (5, 4) and not none_valid.any()


def test_box_problem_names_boxes_outside_the_image():
    assert box_problem([0, 0, 32, 32], (32, 32)) is None
    assert "outside" in box_problem([20, 20, 20, 20], (32, 32))
    assert "no area" in box_problem([5, 5, 0, 3], (32, 32))
