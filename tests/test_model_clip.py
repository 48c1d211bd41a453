"""CLIP / FashionCLIP from released weights: the registered `clip` equals transformers'
CLIPModel on a tiny random checkpoint saved locally; every head trains; the
checkpoint's tokenizer and image processor are the ones used; bad checkpoints."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from fixtures_data import build_fashion_dataset, collate
from omegaconf import OmegaConf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "mmf_fashion", "models", "configs", "clip.yaml")
CLASSES = ["maxi dress", "sneakers", "tote bag", "denim jacket"]
TEXTS = ["a red maxi dress", "white leather sneakers", "a black tote bag", "a washed denim jacket"]
BATCH, SIDE = 4, 32
PEER_TOLERANCE = 1e-5


def tiny_clip_tokenizer():
    """A byte-level BPE with CLIP's specials, every byte and a few merges (no hub)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("d", "r"), ("dr", "e"), ("dre", "s"), ("dres", "s</w>"), ("r", "e"), ("re", "d</w>")]
    vocab = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    vocab += [left + right for left, right in merges]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(vocab)}, merges=merges)


def save_tiny_clip(directory, seed=0, with_tokenizer=True, with_processor=True):
    """A random CLIPModel (ViT 32 px / patch 8, 1 layer, width 32; projection 16) saved
    with save_pretrained, with its tokenizer and image processor (CLIPProcessor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "image_size": SIDE,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(str(directory))
    if with_processor:
        processor = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
        if with_tokenizer:
            CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(str(directory))
        else:
            processor.save_pretrained(str(directory))
    elif with_tokenizer:
        tokenizer.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def build_clip(registry, source, **overrides):
    torch.manual_seed(0)
    config = OmegaConf.merge(OmegaConf.load(CONFIG).model_config.clip, {"pretrained": source}, overrides)
    model = registry.get_model_class("clip")(config)
    model.build()
    model.init_losses()
    model.train()
    return model


def make_batch(seed=0, **extra):
    from mmf.common.sample import SampleList

    generator = torch.Generator().manual_seed(seed)
    batch = SampleList()
    batch.add_field("image", torch.randn(BATCH, 3, SIDE, SIDE, generator=generator))
    batch.add_field("text", list(TEXTS))
    # what the datasets also emit: BERT WordPiece ids, which clip does not read
    batch.add_field("input_ids", torch.randint(1000, 5000, (BATCH, 10), generator=generator))
    batch.add_field("attention_mask", torch.ones(BATCH, 10, dtype=torch.long))
    for key, value in extra.items():
        batch.add_field(key, value)
    batch.dataset_type = "train"
    batch.dataset_name = "fashiongen"
    return batch


def test_clip_is_registered_with_its_default_config(mmf_registry):
    from mmf_fashion.models.clip import CLIP

    assert mmf_registry.get_model_class("clip") is CLIP
    defaults = OmegaConf.load(CLIP.config_path()).model_config.clip
    assert defaults.pretrained == "openai/clip-vit-base-patch32"
    assert defaults.head == "contrastive"


def test_embeddings_and_logits_equal_transformers_clip(mmf_registry, clip_dir):
    """The peer: CLIPModel.get_image_features / get_text_features (normalised) and
    CLIPModel's logits_per_image, on the same tiny random checkpoint, float32."""
    from transformers import AutoTokenizer, CLIPModel

    model = build_clip(
        mmf_registry, clip_dir, head="zeroshot", zeroshot={"class_names": CLASSES, "templates": ["a photo of a {}"]}
    ).eval()
    peer = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    images = torch.randn(5, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    prompts = model.prompts()
    assert prompts[0] == "a photo of a maxi dress"
    with torch.no_grad():
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        image_peer = F.normalize(peer.get_image_features(pixel_values=images).pooler_output, dim=-1)
        text_peer = F.normalize(peer.get_text_features(**tokens).pooler_output, dim=-1)
        logits_peer = peer(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=images
        ).logits_per_image
        image_ours, text_ours = model.embed_images(images), model.embed_texts(prompts)
        logits_ours = model.zeroshot_scores(images)
    differences = {
        "image": float((image_ours - image_peer).abs().max()),
        "text": float((text_ours - text_peer).abs().max()),
        "logits": float((logits_ours - logits_peer).abs().max()),
    }
    print("clip peer max abs differences:", differences)
    assert max(differences.values()) <= PEER_TOLERANCE, differences
    assert float(model.logit_scale()) == pytest.approx(float(peer.logit_scale.exp()), rel=1e-6)
    assert float(logits_peer.std()) > 0.1  # not a degenerate checkpoint


def _grad_problems(model):
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]


def _outfit_batch():
    from tiny_models import outfit_fields

    return make_batch(**outfit_fields(SIDE, 5, [[0, 1, 2], [1, 2, 0], [3, 0, 0], [2, 3, 1]], [3, 0, 1, 0]))


@pytest.mark.parametrize(
    "head,freeze",
    [("contrastive", False), ("zeroshot", False), ("composition", False), ("composition", True), ("ocir", False)],
)
def test_every_head_runs_forward_and_backward_with_finite_gradients(mmf_registry, clip_dir, head, freeze):
    model = build_clip(
        mmf_registry,
        clip_dir,
        head=head,
        freeze_towers=freeze,
        zeroshot={"class_names": CLASSES},
        ocir={"num_categories": 4, "num_subspaces": 3, "category_dim": 8},
    )
    if head == "composition":
        batch = make_batch(
            reference_image=torch.randn(BATCH, 3, SIDE, SIDE), target_image=torch.randn(BATCH, 3, SIDE, SIDE)
        )
        expected_loss, keys = "train/fashiongen/batch_classification", ("query_embedding", "target_embedding")
    elif head == "ocir":
        batch, expected_loss, keys = _outfit_batch(), "train/fashiongen/ocir", ("query_embedding", "target_embedding")
    elif head == "zeroshot":
        batch, expected_loss = make_batch(targets=torch.tensor([2, 0, 3, 1])), "train/fashiongen/zeroshot_ce"
        keys = ("scores",)
    else:
        batch, expected_loss, keys = make_batch(), "train/fashiongen/itc", ("image_embedding", "text_embedding")
    output = model(batch)
    assert list(output["losses"]) == [expected_loss]
    loss = output["losses"][expected_loss]
    assert torch.isfinite(loss)
    loss.backward()
    assert _grad_problems(model) == []
    trained = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
    towers = {"image_encoder", "image_projection", "text_encoder", "text_projection"}
    if freeze:
        assert trained == {"combiner", "logit_scale"}
    elif head == "ocir":  # images only: the text tower is frozen
        assert trained == {"image_encoder", "image_projection", "ocir_head", "logit_scale"}
    else:
        assert towers <= trained and "logit_scale" in trained
    for key in keys:
        assert output[key].shape[0] == BATCH
        if key != "scores":
            torch.testing.assert_close(output[key].norm(dim=-1), torch.ones(BATCH))
    if head in ("composition", "ocir"):  # the target is what embed_images gives the gallery
        model.eval()
        with torch.no_grad():
            again = model(batch)
        image_key = "target_image" if head == "composition" else "blank_image"
        torch.testing.assert_close(again["target_embedding"], model.embed_images(batch[image_key]))
        if head == "composition":
            torch.testing.assert_close(
                again["query_embedding"], model.embed_composed(batch["reference_image"], batch["text"])
            )


def test_state_dict_round_trip_and_composed_queries_without_a_combiner(mmf_registry, clip_dir, tmp_path):
    """A saved state dict rebuilds the same model over the same checkpoint (weights only);
    without the composition head, embed_composed is normalise(image emb + text emb)."""
    model = build_clip(mmf_registry, clip_dir, head="composition").eval()
    path = tmp_path / "clip.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    fresh = build_clip(mmf_registry, clip_dir, head="composition")
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    images = torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(4))
    assert torch.equal(model.embed_composed(images, TEXTS[:3]), fresh.embed_composed(images, TEXTS[:3]))

    plain = build_clip(mmf_registry, clip_dir, head="contrastive").eval()
    expected = F.normalize(plain.embed_images(images) + plain.embed_texts(TEXTS[:3]), dim=-1)
    torch.testing.assert_close(plain.embed_composed(images, TEXTS[:3]), expected)


def test_contrastive_head_is_aligns_loss_with_gathered_negatives(mmf_registry, clip_dir, monkeypatch):
    """The loss is modules.losses.contrastive_loss; in training the negatives come
    through gather_with_grad (faked here as a second rank holding other pairs)."""
    import mmf_fashion.modules.losses as losses

    model = build_clip(mmf_registry, clip_dir, head="contrastive", label_smoothing=0.1)
    batch = make_batch()
    other_rank = F.normalize(torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(9)), dim=-1)
    monkeypatch.setattr(losses, "gather_with_grad", lambda x: torch.cat([x, other_rank]))
    monkeypatch.setattr(losses, "get_rank", lambda: 0)
    loss = model(batch)["losses"]["train/fashiongen/itc"]
    image = model.encode_image(batch["image"])
    text = model.embed_texts(TEXTS)
    scale = model.logit_scale()
    labels = torch.arange(BATCH)
    expected = 0.5 * (
        F.cross_entropy(scale * image @ torch.cat([text, other_rank]).t(), labels, label_smoothing=0.1)
        + F.cross_entropy(scale * text @ torch.cat([image, other_rank]).t(), labels, label_smoothing=0.1)
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_the_checkpoints_tokenizer_reads_the_raw_text(mmf_registry, clip_dir):
    """One way to tokenise: the checkpoint's tokenizer, on the batch's `text`; the
    dataset's BERT ids are not read; prompts and embed_texts use the same object."""
    from transformers import AutoTokenizer

    model = build_clip(mmf_registry, clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    assert type(model.released.tokenizer) is type(tokenizer)
    tokens = model.tokenize(TEXTS)
    assert torch.equal(tokens["input_ids"].cpu(), tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"])
    long_text = " ".join(["striped cotton shirt"] * 20)
    assert model.tokenize([long_text])["input_ids"].shape[1] == 32  # capped at the text model's positions
    with torch.no_grad():
        first = model(make_batch())
        changed = make_batch()
        changed["input_ids"] = torch.randint(5000, 9000, (BATCH, 10))
        second = model(changed)
    torch.testing.assert_close(first["text_embedding"], second["text_embedding"])
    torch.testing.assert_close(first["text_embedding"], model.embed_texts(TEXTS))
    with pytest.raises(KeyError, match="'text'"):
        batch = make_batch()
        del batch["text"]
        model(batch)


def test_image_settings_follow_the_checkpoints_image_processor(mmf_registry, clip_dir, tmp_path):
    """The project YAMLs' resolver gives the checkpoint's size / mean / std (the YAML's
    fallback without an image processor), and the index transform agrees."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from mmf_fashion.modules.pretrained_towers import CLIP_MEAN, CLIP_STD

    project = OmegaConf.load(os.path.join(ROOT, "projects", "clip", "configs", "zeroshot_scr.yaml"))
    project.model_config.clip.pretrained = clip_dir
    params = project.dataset_config.fashiongen.processors.image_processor.params
    assert params.size == SIDE
    assert list(params.mean) == pytest.approx(list(CLIP_MEAN)) and list(params.std) == pytest.approx(list(CLIP_STD))
    bare = save_tiny_clip(tmp_path / "bare", with_processor=False)
    project.model_config.clip.pretrained = bare
    assert params.size == 224  # the YAML's fallback: the checkpoint has no image processor

    # the index's transform is the checkpoint's processor: exact at the native size (no
    # resampling); a larger non-square image gets the same resize + centre crop, with
    # bilinear instead of bicubic resampling (close on a smooth image)
    model = build_clip(mmf_registry, clip_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    native = torch.randint(0, 256, (SIDE, SIDE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    rows, columns = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 40), indexing="ij")
    smooth = torch.stack([rows, columns, (rows + columns) / 2], dim=-1).mul(255).round().to(torch.uint8)
    differences = {}
    for name, pixels in (("native", native), ("smooth", smooth)):
        image = Image.fromarray(pixels.numpy())
        ours = model.image_transform()(image)
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, SIDE, SIDE)
        differences[name] = (ours - theirs).abs()
    assert float(differences["native"].max()) <= 1e-4
    assert float(differences["smooth"].mean()) <= 2e-2


def test_bad_checkpoints_are_errors_that_name_them(mmf_registry, clip_dir, tmp_path):
    from test_model_align import save_tiny_align

    align_dir = save_tiny_align(tmp_path / "align")
    with pytest.raises(ValueError) as error:
        build_clip(mmf_registry, align_dir)
    message = str(error.value)
    assert align_dir in message and "'align'" in message and "'clip'" in message
    from test_model_align import build_align

    with pytest.raises(ValueError) as error:
        build_align(mmf_registry, pretrained=clip_dir)
    message = str(error.value)
    assert clip_dir in message and "'clip'" in message and "'align'" in message

    no_tokenizer = save_tiny_clip(tmp_path / "no_tokenizer", with_tokenizer=False)
    with pytest.raises(FileNotFoundError, match="no tokenizer files") as error:
        build_clip(mmf_registry, no_tokenizer)
    assert no_tokenizer in str(error.value)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_clip(mmf_registry, str(tmp_path))
    with pytest.raises(ValueError, match="pretrained"):
        build_clip(mmf_registry, None)
    with pytest.raises(ValueError, match="head"):
        build_clip(mmf_registry, clip_dir, head="fusion")


def test_zeroshot_on_the_dataset_vocabulary(mmf_registry, clip_dir, synthetic_world):
    """As align's zeroshot head: the class names are the builder's subcategory names."""
    dataset = build_fashion_dataset("fashiongen", synthetic_world, "val", image_size=SIDE)
    manifest = json.loads((synthetic_world / "synth_manifest.json").read_text())
    names = [entry["name"] for entry in sorted(manifest["subcategories"], key=lambda entry: entry["id"])]
    model = build_clip(mmf_registry, clip_dir, head="zeroshot").eval()
    assert model.class_names() == [name.lower() for name in names]
    batch = collate(dataset, 4)
    with torch.no_grad():
        scores = model(batch)["scores"]
        expected = model.logit_scale() * model.embed_images(batch["image"]) @ model.class_embeddings().t()
    assert scores.shape == (4, len(names))
    torch.testing.assert_close(scores, expected)


MMF_RUN_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _mmf_run(arguments, cwd):
    import subprocess
    import sys

    command = [sys.executable, "-c", "from mmf_cli.run import run; run()"] + arguments
    result = subprocess.run(command, cwd=cwd, env=MMF_RUN_ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.mark.slow
def test_zeroshot_scr_config_under_mmf_run_val(synthetic_world, clip_dir, tmp_path):
    """projects/clip/configs/zeroshot_scr.yaml as is, from the tiny saved CLIP, run_type=val."""
    save_dir = tmp_path / "scr"
    _mmf_run(
        [
            "config=projects/clip/configs/zeroshot_scr.yaml",
            "model=clip",
            "dataset=fashiongen",
            "run_type=val",
            f"model_config.clip.pretrained={clip_dir}",
            f"env.data_dir={synthetic_world}",
            f"env.save_dir={save_dir}",
            "training.num_workers=0",
        ],
        ROOT,
    )
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["val/fashiongen/accuracy/value"] <= 100.0
    assert "val/fashiongen/macro_f1/value" in metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,dataset,metric",
    [("itr", "fashiongen", "val/fashiongen/r@k_general/"), ("tgir", "fashioniq", "val/fashioniq/r@k_fashioniq/")],
)
def test_training_configs_under_mmf_run(synthetic_world, clip_dir, tmp_path, config, dataset, metric):
    """projects/clip/configs/{itr,tgir}.yaml train 2 updates and evaluate from the tiny CLIP."""
    save_dir = tmp_path / config
    _mmf_run(
        [
            f"config=projects/clip/configs/{config}.yaml",
            "model=clip",
            f"dataset={dataset}",
            "run_type=train_val",
            f"model_config.clip.pretrained={clip_dir}",
            f"env.data_dir={synthetic_world}",
            f"env.save_dir={save_dir}",
            "training.num_workers=0",
            "training.batch_size=8",
            "training.max_updates=2",
            "training.evaluation_interval=2",
            "training.checkpoint_interval=2",
        ],
        ROOT,
    )
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert any(key.startswith(metric) for key in metrics), sorted(metrics)
