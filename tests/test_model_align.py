"""ALIGN: the contrastive dual encoder, its retrieval interface and zero-shot classification."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from fixtures_data import build_fashion_dataset, synthetic_world  # noqa: F401
from omegaconf import OmegaConf

CONFIG = os.path.join(os.path.dirname(__file__), "..", "mmf_fashion", "models", "configs", "align.yaml")
TINY = {
    "image_encoder": "mobilenet_v3_small",
    "text_encoder": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "dropout": 0.0},
    "embed_dim": 16,
}
CLASSES = ["maxi dress", "sneakers", "tote bag", "denim jacket"]


def build_align(registry, **overrides):
    torch.manual_seed(0)
    config = OmegaConf.merge(OmegaConf.load(CONFIG).model_config.align, TINY, overrides)
    model = registry.get_model_class("align")(config)
    model.build()
    model.init_losses()
    model.train()
    return model


def make_batch(batch=4, length=10, seed=0, **extra):
    from mmf.common.sample import SampleList

    generator = torch.Generator().manual_seed(seed)
    sample_list = SampleList()
    sample_list.add_field("image", torch.randn(batch, 3, 64, 64, generator=generator))
    sample_list.add_field("input_ids", torch.randint(1000, 5000, (batch, length), generator=generator))
    sample_list.add_field("attention_mask", torch.ones(batch, length, dtype=torch.long))
    for key, value in extra.items():
        sample_list.add_field(key, value)
    sample_list.dataset_type = "train"
    sample_list.dataset_name = "fashiongen"
    return sample_list


def test_contrastive_forward_backward_gives_finite_gradients(mmf_registry):
    model = build_align(mmf_registry, average_views=True)
    batch = make_batch(image_2=torch.randn(4, 3, 64, 64))
    output = model(batch)
    assert list(output["losses"]) == ["train/fashiongen/itc"]
    output["losses"]["train/fashiongen/itc"].backward()
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
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
    expected = 0.5 * (F.cross_entropy(logits, labels, label_smoothing=0.1)
                      + F.cross_entropy(logits.t(), labels, label_smoothing=0.1))
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
    model = build_align(mmf_registry, head="zeroshot",
                        zeroshot={"class_names": CLASSES, "templates": ["a photo of a {}", "a {} for sale"]})
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
    assert output["scores"].shape == (4, len(CLASSES))
    assert output["scores"].argmax(1).tolist() == targets.tolist()
    assert "train/fashiongen/zeroshot_ce" in output["losses"]


def _with(images, targets):
    batch = make_batch(targets=targets)
    batch["image"] = images
    return batch


def test_zeroshot_trains_by_prompts_and_checks_labels(mmf_registry):
    model = build_align(mmf_registry, head="zeroshot", zeroshot={"class_names": CLASSES})
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
    assert resolve_class_names({"dataset": "testset", "label_field": "category"}, with_data, mmf_registry) == ["top", "shoe"]
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
    encoder = build_text_encoder({"name": "tiny", "hidden_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "dropout": 0.0}).eval()
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
        100 * brute_accuracy, abs=100 * float((~clear).float().mean()) + 1e-4)


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
        ["config=projects/align/configs/pretrain.yaml", "run_type=train", f"env.save_dir={pretrain}",
         "training.max_updates=2", "training.checkpoint_interval=2", "training.evaluation_interval=2"],
        ["config=projects/align/configs/zeroshot_scr.yaml", "run_type=val", f"env.save_dir={tmp_path / 'scr'}",
         f"checkpoint.resume_file={pretrain / 'align_final.pth'}"],
    ):
        result = subprocess.run(mmf_run + command + ["model=align", "dataset=fashiongen"] + common, cwd=repo,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    metrics = json.loads((tmp_path / "scr" / "metrics.json").read_text())
    reported = metrics["val/fashiongen/accuracy/value"]

    config = load_config(os.path.join(repo, "projects/align/configs/zeroshot_scr.yaml"), "align", "fashiongen",
                         [f"env.data_dir={synthetic_world}"])
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
