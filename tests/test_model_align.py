"""ALIGN: the contrastive dual encoder, its retrieval interface and zero-shot classification."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from fixtures_data import build_fashion_dataset
from omegaconf import OmegaConf
from tiny_models import ALIGN_CLASSES, align_batch, align_config, build_model


def build_align(registry, **overrides):
    return build_model(registry, "align", align_config(**overrides)).train()


make_batch = align_batch


def test_contrastive_forward_backward_gives_finite_gradients(mmf_registry):
    model = build_align(mmf_registry, average_views=True)
    batch = make_batch(image_2=torch.randn(4, 3, 64, 64))
    output = model(batch)
    assert list(output["losses"]) == ["train/fashiongen/itc"]
    output["losses"]["train/fashiongen/itc"].backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert missing == []
    assert model.logit_scale.log_scale.grad is not None  # the temperature is learnt
    torch.testing.assert_close(output["image_embedding"].norm(dim=-1), torch.ones(4))
    assert output["text_embedding"].shape == (4, 16)


def test_loss_is_the_label_smoothed_two_way_infonce(mmf_registry):
    model = build_align(mmf_registry, label_smoothing=0.1)
    batch = make_batch()
    loss = model(batch)["losses"]["train/fashiongen/itc"]
    image = model.encode_image(batch["image"])
    text = model.encode_text(batch["input_ids"], batch["attention_mask"])
    logits = model.logit_scale() * image @ text.t()
    labels = torch.arange(4)
    expected = 0.5 * (
        F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(logits.t(), labels, label_smoothing=0.1)
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(model.logit_scale()) == pytest.approx(1 / 0.07, rel=1e-5)


def test_retrieval_interface(mmf_registry):
    model = build_align(mmf_registry).eval()
    texts = model.embed_texts(["a red maxi dress", "white sneakers", "a black tote bag"])
    images = model.embed_images(torch.randn(5, 3, 64, 64), batch_size=2)
    assert texts.shape == (3, 16) and images.shape == (5, 16)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(3))
    batch = make_batch()
    output = model(batch)
    torch.testing.assert_close(output["image_embedding"], model.embed_images(batch["image"]))


def _steer_image_tower(model, images, class_embeddings, targets):
    """Set image_projection so that image i embeds exactly onto the prompt embedding of targets[i]."""
    with torch.no_grad():
        pooled = model.image_features(images)["pooled"]  # (B, C), C >> B: an exact solution exists
        wanted = class_embeddings[targets] * 3.0
        weight = torch.linalg.lstsq(pooled, wanted).solution.t()  # (D, C)
        model.image_projection.weight.copy_(weight)
        model.image_projection.bias.zero_()


def test_zeroshot_picks_the_class_whose_prompt_matches(mmf_registry):
    model = build_align(
        mmf_registry,
        head="zeroshot",
        zeroshot={"class_names": ALIGN_CLASSES, "templates": ["a photo of a {}", "a {} for sale"]},
    )
    model.eval()
    prompts = model.prompts()
    assert prompts[:3] == ["a photo of a maxi dress", "a maxi dress for sale", "a photo of a sneakers"]
    # class embedding = the normalised mean of the class's prompts
    expected_first = F.normalize(model.embed_texts(prompts[:2], max_length=16).mean(0), dim=0)
    class_embeddings = model.class_embeddings()
    torch.testing.assert_close(class_embeddings[0], expected_first, atol=1e-5, rtol=1e-5)

    images = torch.randn(4, 3, 64, 64)
    targets = torch.tensor([2, 0, 3, 1])
    _steer_image_tower(model, images, class_embeddings, targets)
    output = model(_with(images, targets))
    assert output["scores"].shape == (4, len(ALIGN_CLASSES))
    assert output["scores"].argmax(1).tolist() == targets.tolist()
    assert "train/fashiongen/zeroshot_ce" in output["losses"]


def _with(images, targets):
    batch = make_batch(targets=targets)
    batch["image"] = images
    return batch


def test_zeroshot_trains_by_prompts_and_checks_labels(mmf_registry):
    model = build_align(mmf_registry, head="zeroshot", zeroshot={"class_names": ALIGN_CLASSES})
    output = model(make_batch(targets=torch.tensor([0, 1, 2, 3])))
    output["losses"]["train/fashiongen/zeroshot_ce"].backward()
    assert model.text_projection.weight.grad is not None  # the prompts go through the text tower
    with pytest.raises(ValueError, match="class names"):
        model(make_batch(targets=torch.tensor([0, 1, 2, 9])))


def test_class_names_sources(mmf_registry, tmp_path):
    from mmf_fashion.data.synth.vocab import SUBCATEGORIES
    from mmf_fashion.models.align import resolve_class_names

    no_data = OmegaConf.create({"env": {"data_dir": str(tmp_path / "empty")}, "dataset_config": {}})
    listed = tmp_path / "names.json"
    listed.write_text(json.dumps({"subcategory_names": ["a", "b"]}))
    assert resolve_class_names({"class_names_file": str(listed)}, no_data) == ["a", "b"]
    mapped = tmp_path / "mapped.json"
    mapped.write_text(json.dumps({"1": "shirt", "0": "skirt"}))
    assert resolve_class_names({"class_names_file": str(mapped)}, no_data) == ["skirt", "shirt"]
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "skirt", "2": "shirt"}))
    with pytest.raises(ValueError, match="without gaps"):
        resolve_class_names({"class_names_file": str(gap)}, no_data)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_class_names({"class_names_file": "missing.json"}, no_data)

    # relative file names are tried under env.data_dir first
    with_data = OmegaConf.create({"env": {"data_dir": str(tmp_path)}, "dataset_config": {}})
    assert resolve_class_names({"class_names_file": "names.json"}, with_data) == ["a", "b"]
    # the dataset's vocabulary, as its builder registers it; explicit names and files win over it
    mmf_registry.register("testset_subcategory_names", ["x", "y", "z"])
    assert resolve_class_names({"dataset": "testset"}, with_data, mmf_registry) == ["x", "y", "z"]
    assert resolve_class_names({"dataset": "testset", "class_names": ["u"]}, with_data, mmf_registry) == ["u"]
    mmf_registry.register("testset_category_names", ["top", "shoe"])
    assert resolve_class_names({"dataset": "testset", "label_field": "category"}, with_data, mmf_registry) == [
        "top",
        "shoe",
    ]
    assert resolve_class_names({"class_names_source": "synthetic"}, no_data) == [s.name for s in SUBCATEGORIES]
    with pytest.raises(ValueError, match="no class names"):
        resolve_class_names({"dataset": "nothing_here"}, no_data, mmf_registry)

    model = build_align(mmf_registry, head="zeroshot", zeroshot={"class_names": ["MAXI DRESS", "Tote Bag"]})
    assert model.prompts() == ["a photo of a maxi dress", "a photo of a tote bag"]
    with pytest.raises(ValueError, match="head"):
        build_align(mmf_registry, head="fusion")


def test_text_pooling_cls_and_mean():
    from mmf_fashion.modules.encoders import build_text_encoder, masked_mean
    from mmf_fashion.modules.two_stream import text_features

    torch.manual_seed(0)
    encoder = build_text_encoder(
        {"name": "tiny", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "dropout": 0.0}
    ).eval()
    projection = torch.nn.Linear(32, 8)
    input_ids = torch.tensor([[101, 2000, 2001, 102, 0], [101, 2003, 102, 0, 0]])
    mask = (input_ids != 0).long()
    with torch.no_grad():
        hidden = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        cls = text_features(encoder, projection, input_ids, mask, pooling="cls")
        mean = text_features(encoder, projection, input_ids, mask, pooling="mean")
        padded = input_ids.clone()
        padded[0, 4] = 5000  # a different id under a pad position changes nothing
        mean_padded = text_features(encoder, projection, padded, mask, pooling="mean")
    torch.testing.assert_close(cls["embedding"], F.normalize(projection(hidden[:, 0]), dim=-1))
    torch.testing.assert_close(mean["embedding"], F.normalize(projection(masked_mean(hidden, mask)), dim=-1))
    torch.testing.assert_close(mean["embedding"], mean_padded["embedding"])
    with pytest.raises(ValueError, match="pooling"):
        text_features(encoder, projection, input_ids, mask, pooling="max")


# ------------------------------------------------- zero-shot SCR on a dataset
def _brute_force_predictions(model, images, class_names, templates):
    """Every prompt embedded on its own, averaged per class, then the cosine argmax per image."""
    class_vectors = []
    for name in class_names:
        prompts = [template.format(name.lower()) for template in templates]
        embedded = torch.cat([model.embed_texts([prompt], max_length=16) for prompt in prompts])
        class_vectors.append(F.normalize(embedded.mean(0), dim=0))
    classes = torch.stack(class_vectors)
    image_embeddings = model.embed_images(images)
    cosines = image_embeddings @ classes.t()
    return cosines.argmax(1), cosines


def test_zeroshot_reads_the_dataset_vocabulary_and_matches_brute_force(mmf_registry, synthetic_world):
    """No class names in the model config: the fashiongen builder publishes its
    subcategory names on load; the registered accuracy (percent) over the model's
    scores equals a brute-force cosine argmax over the prompt embeddings."""
    from mmf.common.batch_collator import BatchCollator

    templates = ["a photo of a {}", "a {}"]
    dataset = build_fashion_dataset("fashiongen", synthetic_world, "val")
    manifest = json.loads((synthetic_world / "synth_manifest.json").read_text())
    names = [entry["name"] for entry in sorted(manifest["subcategories"], key=lambda entry: entry["id"])]
    assert mmf_registry.get("fashiongen_subcategory_names") == names

    model = build_align(mmf_registry, head="zeroshot", zeroshot={"templates": templates}).eval()
    assert model.class_names() == [name.lower() for name in names]
    accuracy = mmf_registry.get_metric_class("accuracy")()
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, collate_fn=BatchCollator("fashiongen", "val"))
    model_predictions, brute_predictions, targets, margins = [], [], [], []
    correct_by_metric = 0.0
    with torch.no_grad():
        for batch in loader:
            output = model(batch)
            assert output["scores"].shape == (len(batch["targets"]), len(names))
            correct_by_metric += float(accuracy.calculate(batch, output)) * len(batch["targets"])
            model_predictions.append(output["scores"].argmax(1))
            predicted, cosines = _brute_force_predictions(model, batch["image"], names, templates)
            brute_predictions.append(predicted)
            top2 = cosines.topk(2, dim=1).values
            margins.append(top2[:, 0] - top2[:, 1])
            targets.append(batch["targets"])
    model_predictions, brute_predictions = torch.cat(model_predictions), torch.cat(brute_predictions)
    targets, margins = torch.cat(targets), torch.cat(margins)
    assert len(targets) == len(dataset)
    clear = margins > 1e-5  # a float-rounding tie may go either way
    assert bool(clear.float().mean() > 0.9)
    assert torch.equal(model_predictions[clear], brute_predictions[clear])
    brute_accuracy = float((brute_predictions == targets).float().mean())
    # the metric is in percent, like every metric in metrics.json
    assert correct_by_metric / len(targets) == pytest.approx(
        100 * brute_accuracy, abs=100 * float((~clear).float().mean()) + 1e-4
    )


@pytest.mark.slow
def test_zeroshot_scr_config_under_mmf_run_val_matches_brute_force(synthetic_world, tmp_path):
    """projects/align/configs/zeroshot_scr.yaml through `mmf_run run_type=val`, from a
    2-update pretraining checkpoint: the class names come from the dataset and the
    reported accuracy is the brute-force cosine argmax over the prompt embeddings."""
    import subprocess
    import sys

    from mmf_fashion.runtime import build_model_from_config, build_split_dataset, load_config, split_loader

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mmf_run = [sys.executable, "-c", "from mmf_cli.run import run; run()"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    common = [f"env.data_dir={synthetic_world}", "training.num_workers=0", "training.batch_size=8"]
    pretrain = tmp_path / "pretrain"
    for command in (
        [
            "config=projects/align/configs/pretrain.yaml",
            "run_type=train",
            f"env.save_dir={pretrain}",
            "training.max_updates=2",
            "training.checkpoint_interval=2",
            "training.evaluation_interval=2",
        ],
        [
            "config=projects/align/configs/zeroshot_scr.yaml",
            "run_type=val",
            f"env.save_dir={tmp_path / 'scr'}",
            f"checkpoint.resume_file={pretrain / 'align_final.pth'}",
        ],
    ):
        result = subprocess.run(
            mmf_run + command + ["model=align", "dataset=fashiongen"] + common,
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = json.loads((tmp_path / "scr" / "metrics.json").read_text())
    reported = metrics["val/fashiongen/accuracy/value"]

    config = load_config(
        os.path.join(repo, "projects/align/configs/zeroshot_scr.yaml"),
        "align",
        "fashiongen",
        [f"env.data_dir={synthetic_world}"],
    )
    model = build_model_from_config(config, checkpoint=str(pretrain / "align_final.pth"))
    dataset = build_split_dataset(config, "fashiongen", "val")
    manifest = json.loads((synthetic_world / "synth_manifest.json").read_text())
    names = [entry["name"] for entry in sorted(manifest["subcategories"], key=lambda entry: entry["id"])]
    templates = list(config.model_config.align.zeroshot.templates)
    correct, total, ties = 0, 0, 0
    with torch.no_grad():
        for batch in split_loader(dataset, batch_size=16):
            predicted, cosines = _brute_force_predictions(model, batch["image"], names, templates)
            top2 = cosines.topk(2, dim=1).values
            ties += int((top2[:, 0] - top2[:, 1] <= 1e-5).sum())
            correct += int((predicted == batch["targets"]).sum())
            total += len(batch["targets"])
    assert total == len(dataset)
    assert reported == pytest.approx(100 * correct / total, abs=100 * ties / total + 1e-4)  # percent


# ------------------------------------------------ released weights (transformers' ALIGN)
PEER_TOLERANCE = 1e-5


def save_tiny_align(directory, seed=0, with_processor=True):
    """A random AlignModel (2-block EfficientNet at 32 px, 1-layer BERT of width 32 with
    the uncased WordPiece vocabulary; projection 16) saved with save_pretrained, with
    an AlignProcessor (EfficientNetImageProcessor: [-1, 1] scaling, as kakaobrain/align-base)."""
    from transformers import AlignConfig, AlignModel, AlignProcessor, EfficientNetImageProcessor

    from mmf_fashion.modules.encoders import build_tokenizer

    tokenizer = build_tokenizer("minilm")
    config = AlignConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        vision_config={
            "image_size": 32,
            "width_coefficient": 1.0,
            "depth_coefficient": 1.0,
            "kernel_sizes": [3, 3],
            "in_channels": [32, 16],
            "out_channels": [16, 16],
            "strides": [1, 2],
            "num_block_repeats": [1, 1],
            "expand_ratios": [1, 2],
            "hidden_dim": 64,
        },
        projection_dim=16,
        temperature_init_value=0.2,
    )
    torch.manual_seed(seed)
    model = AlignModel(config)
    with torch.no_grad():  # transformers' init leaves a 2-block net with ~1e-9 outputs: give it real ones
        for module in model.vision_model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    model.save_pretrained(str(directory))
    if with_processor:
        processor = EfficientNetImageProcessor(
            size={"height": 32, "width": 32},
            do_center_crop=False,
            rescale_factor=1 / 127.5,
            rescale_offset=True,
            do_normalize=False,
            include_top=False,
        )
        AlignProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def align_dir(tmp_path_factory):
    return save_tiny_align(tmp_path_factory.mktemp("tiny_align"))


def test_released_align_equals_transformers_align(mmf_registry, align_dir):
    """The peer: AlignModel.get_image_features / get_text_features (normalised) and
    AlignModel's logits (text @ image.T / temperature), on the same tiny random checkpoint."""
    from transformers import AlignModel, AutoTokenizer

    model = build_align(
        mmf_registry,
        pretrained=align_dir,
        head="zeroshot",
        zeroshot={"class_names": ALIGN_CLASSES, "templates": ["a photo of a {}"]},
    ).eval()
    peer = AlignModel.from_pretrained(align_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(align_dir)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    prompts = model.prompts()
    with torch.no_grad():
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        image_peer = F.normalize(peer.get_image_features(pixel_values=images).pooler_output, dim=-1)
        text_peer = F.normalize(peer.get_text_features(**tokens).pooler_output, dim=-1)
        output = peer(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=images)
        differences = {
            "image": float((model.embed_images(images) - image_peer).abs().max()),
            "text": float((model.embed_texts(prompts) - text_peer).abs().max()),
            "logits_per_image": float((model.zeroshot_scores(images) - output.logits_per_image).abs().max()),
            "logits_per_text": float((model.zeroshot_scores(images).t() - output.logits_per_text).abs().max()),
        }
    print("align peer max abs differences:", differences)
    assert max(differences.values()) <= PEER_TOLERANCE, differences
    assert float(model.logit_scale()) == pytest.approx(1 / 0.2, rel=1e-6)
    assert float(output.logits_per_image.std()) > 0.1  # not a degenerate checkpoint
    assert model.embed_dim == 16 and model.text_pooling == "cls"


def test_released_align_trains_on_the_raw_text_with_its_tokenizer(mmf_registry, align_dir):
    model = build_align(mmf_registry, pretrained=align_dir, head="contrastive")
    texts = ["a red maxi dress", "white sneakers", "a black tote bag", "a denim jacket"]
    batch = make_batch(text=texts)
    output = model(batch)
    output["losses"]["train/fashiongen/itc"].backward()
    problems = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert problems == []
    assert not any(name.startswith("text_encoder.pooler") for name, _ in model.named_parameters())
    model.eval()
    with torch.no_grad():  # the dataset's input_ids are not read: the checkpoint's tokenizer is
        batch["input_ids"] = torch.randint(5000, 9000, batch["input_ids"].shape)
        torch.testing.assert_close(model(batch)["text_embedding"], model.embed_texts(texts))
    with pytest.raises(KeyError, match="'text'"):
        model(make_batch())


def test_released_align_image_settings(mmf_registry, align_dir):
    """The checkpoint's EfficientNetImageProcessor ([-1, 1] scaling) becomes mean = std = 0.5
    at its size in zeroshot_scr.yaml, the index transform and the processor's own output;
    without released weights the YAML keeps the scratch model's 64 px ImageNet settings."""
    from PIL import Image
    from transformers import CLIPImageProcessor, EfficientNetImageProcessor

    from mmf_fashion.modules.pretrained_towers import eval_transform, settings_from_image_processor

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    project = OmegaConf.load(os.path.join(repo, "projects", "align", "configs", "zeroshot_scr.yaml"))
    params = project.dataset_config.fashiongen.processors.image_processor.params
    assert params.size == 64 and list(params.mean) == [0.485, 0.456, 0.406]
    assert project.checkpoint.resume_file == "./save/align_pretrain/align_final.pth"
    project.model_config.align.pretrained = align_dir
    assert params.size == 32 and list(params.mean) == [0.5] * 3 and list(params.std) == [0.5] * 3
    assert project.checkpoint.resume_file is None  # the pretraining checkpoint is not loaded over released weights

    model = build_align(mmf_registry, pretrained=align_dir)
    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    image = Image.fromarray(pixels.numpy())
    processors = [
        EfficientNetImageProcessor.from_pretrained(align_dir),
        EfficientNetImageProcessor(
            size={"height": 32, "width": 32},
            do_center_crop=False,
            include_top=True,
            image_mean=[0.4, 0.5, 0.6],
            image_std=[0.2, 0.25, 0.3],
        ),
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    ]
    for processor in processors:  # at the native size no resampling: the affine maps must agree
        settings = settings_from_image_processor(processor)
        assert settings.size == 32
        ours = eval_transform(settings.size, settings.mean, settings.std)(image)
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert float((ours - theirs).abs().max()) <= 1e-4, type(processor).__name__
    theirs = processors[0](images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(model.image_transform()(image), theirs, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_zeroshot_scr_config_under_mmf_run_from_released_weights(synthetic_world, align_dir, tmp_path):
    """projects/align/configs/zeroshot_scr.yaml with model_config.align.pretrained=<dir> and
    run_type=val: no training, no pretraining checkpoint; metrics.json has the accuracy."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    save_dir = tmp_path / "scr"
    command = [
        sys.executable,
        "-c",
        "from mmf_cli.run import run; run()",
        "config=projects/align/configs/zeroshot_scr.yaml",
        "model=align",
        "dataset=fashiongen",
        "run_type=val",
        f"model_config.align.pretrained={align_dir}",
        f"env.data_dir={synthetic_world}",
        f"env.save_dir={save_dir}",
        "training.num_workers=0",
    ]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["val/fashiongen/accuracy/value"] <= 100.0
