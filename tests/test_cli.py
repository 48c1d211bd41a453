"""The `mmf-fashion` commands, run in-process through mmf_fashion.cli.main.main.

Covers plot curves, plot embeddings, new-builder (and the test it writes)
and info. Each test checks the files a user would look at.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmf_fashion.cli.main import main

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"

CONTRACT = {
    "models": ["fashionvil", "fashionbert", "xvlm", "cots", "align", "clip", "fashion_vqvae"],
    "builders": ["fashiongen", "fashioniq", "polyvore_ocir", "fashionall"],
    "metrics": ["r@k_general", "r@k_kaleido", "r@k_fashioniq", "r@k_ocir"],
}


def run_cli(capsys, *argv):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_real_png(path, min_width=300, min_height=200):
    assert os.path.isfile(path), f"{path} was not written"
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert width >= min_width and height >= min_height, image.size
    # something was drawn: not a blank canvas
    assert pixels.std() > 5.0
    assert os.path.getsize(path) > 5_000


def write_metrics(path, records, extra_lines=()):
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        for line in extra_lines:
            handle.write(line + "\n")


def training_records():
    records = []
    for step in range(1, 6):
        records.append(
            {
                "num_updates": step * 20,
                "val/fashiongen/itc": 4.0 / step,
                "val/fashiongen/itm": 0.7 - 0.05 * step,
                "val/fashiongen/r@k_general/t2i_r@1": 0.05 * step,
                "val/fashiongen/r@k_general/t2i_r@10": 0.15 * step,
                "val/fashiongen/r@k_general/i2t_r@10": 0.12 * step,
                "val/fashiongen/accuracy/value": 0.1 * step,
            }
        )
    return records


# ---------------------------------------------------------------- plot curves
def test_plot_curves_draws_every_family(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, training_records())
    out = tmp_path / "curves.png"
    code, stdout, stderr = run_cli(capsys, "plot", "curves", metrics, "--out", out)
    assert code == 0, stderr
    assert_real_png(out)
    assert "6 curve(s) from 5 record(s) in 3 panel(s)" in stdout
    assert "loss" in stdout and "r@k_general" in stdout and "accuracy" in stdout


def test_plot_curves_keys_select_families_globs_and_keys(tmp_path, capsys):
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    write_metrics(save_dir / "metrics.jsonl", training_records())
    out = tmp_path / "selected.png"
    # a save_dir works in place of the file; a family, a glob and an exact key
    code, stdout, stderr = run_cli(
        capsys, "plot", "curves", save_dir, "--keys", "loss,*t2i_r@10,val/fashiongen/accuracy/value", "--out", out
    )
    assert code == 0, stderr
    assert_real_png(out)
    assert "4 curve(s)" in stdout and "3 panel(s)" in stdout


def test_plot_curves_unknown_key_lists_what_exists(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, training_records())
    out = tmp_path / "none.png"
    code, _, stderr = run_cli(capsys, "plot", "curves", metrics, "--keys", "r@k_ocir", "--out", out)
    assert code == 2
    assert "'r@k_ocir' matches no metric" in stderr and "r@k_general" in stderr
    assert not out.exists()


def test_plot_curves_names_the_bad_line(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, training_records()[:2], extra_lines=['{"num_updates": 60, "val/x/itc": "high"}'])
    code, _, stderr = run_cli(capsys, "plot", "curves", metrics, "--out", tmp_path / "bad.png")
    assert code == 2
    assert "metrics.jsonl, line 3" in stderr and "'val/x/itc'" in stderr


def test_plot_curves_resumed_run_keeps_the_last_value_per_update():
    from mmf_fashion.visualize import curve_series

    records = [
        {"num_updates": 10, "val/d/itc": 3.0},
        {"num_updates": 20, "val/d/itc": 2.0},
        {"num_updates": 10, "val/d/itc": 2.5},  # resumed from update 10
    ]
    series = curve_series(records, ["val/d/itc"])["val/d/itc"]
    assert series.tolist() == [[10.0, 2.5], [20.0, 2.0]]


PRETRAIN_TASKS = ("itc", "itm", "mlm", "mpfr", "pac", "mvlm")


def pretrain_train_records(updates=60, log_interval=5):
    """train.jsonl as FashionViL pretraining writes it: one sampled task per
    update, so each line holds one task's loss (the others have gaps)."""
    records = []
    for step in range(log_interval, updates + 1, log_interval):
        task = PRETRAIN_TASKS[(step // log_interval) % len(PRETRAIN_TASKS)]
        loss = 5.0 / (1 + step / 20)
        records.append(
            {
                f"train/fashiongen/{task}": loss,
                "train/total_loss": loss,
                "train/lr": 1e-4 * (1 - step / updates),
                "train/samples_per_s": 90.0 + step,
                "num_updates": step,
            }
        )
    return records


def test_plot_curves_reads_train_jsonl_beside_metrics(tmp_path, capsys):
    from mmf_fashion.cli.plot import read_run_records
    from mmf_fashion.visualize import curve_panels

    save_dir = tmp_path / "run"
    save_dir.mkdir()
    write_metrics(save_dir / "metrics.jsonl", training_records())
    write_metrics(save_dir / "train.jsonl", pretrain_train_records())
    out = tmp_path / "curves.png"
    # the metrics file alone finds train.jsonl beside it
    code, stdout, stderr = run_cli(capsys, "plot", "curves", save_dir / "metrics.jsonl", "--out", out)
    assert code == 0, stderr
    assert_real_png(out)
    records, paths = read_run_records(str(save_dir))
    assert sorted(os.path.basename(p) for p in paths) == ["metrics.jsonl", "train.jsonl"]
    panels = curve_panels(records)
    assert list(panels) == ["train losses", "lr", "loss", "accuracy", "r@k_general", "samples_per_s"]
    assert f"in {len(panels)} panel(s) ({', '.join(panels)})" in stdout
    train_losses = panels["train losses"]
    assert set(train_losses) == {f"train/fashiongen/{task}" for task in PRETRAIN_TASKS} | {"train/total_loss"}
    assert list(train_losses)[-1] == "train/total_loss"  # drawn last, over the tasks
    # every task is a line of its own over the updates it was logged at, never a single dot
    assert all(len(points) > 1 for points in train_losses.values())
    assert len(train_losses["train/total_loss"]) == 12
    itc = train_losses["train/fashiongen/itc"]
    assert np.all(np.diff(itc[:, 0]) > 5)  # its gaps: updates where another task was sampled
    assert list(panels["lr"]) == ["train/lr"]
    assert set(panels["loss"]) == {"val/fashiongen/itc", "val/fashiongen/itm"}


def test_plot_curves_train_jsonl_alone_and_key_selection(tmp_path, capsys):
    save_dir = tmp_path / "fresh"  # no evaluation yet
    save_dir.mkdir()
    write_metrics(save_dir / "train.jsonl", pretrain_train_records())
    (save_dir / "metrics.jsonl").write_text("")
    out = tmp_path / "train.png"
    code, stdout, stderr = run_cli(capsys, "plot", "curves", save_dir, "--keys", "train losses,lr", "--out", out)
    assert code == 0, stderr
    assert_real_png(out)
    assert "8 curve(s) from 12 record(s) in 2 panel(s) (train losses, lr)" in stdout
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(capsys, "plot", "curves", tmp_path / "empty", "--out", out)
    assert code == 2 and "no metrics.jsonl or train.jsonl" in stderr


# ---------------------------------------------------------------- embeddings (pure part)
def test_plot_embeddings_adapts_perplexity_to_a_handful_of_points(tmp_path):
    from mmf_fashion.visualize import default_perplexity, plot_embeddings

    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 2, 2])
    image = rng.normal(size=(6, 8)) + 4.0 * labels[:, None]
    text = image + 0.1 * rng.normal(size=(6, 8))
    out = tmp_path / "tsne.png"
    coordinates = plot_embeddings(
        {"image": image, "text": text, "fused": rng.normal(size=(6, 4))},
        labels,
        out,
        label_names={0: "dress", 1: "shirt", 2: "bag"},
    )
    assert default_perplexity(12) < 12 and default_perplexity(1000) == 30.0
    assert {kind: points.shape for kind, points in coordinates.items()} == {
        "image": (6, 2),
        "text": (6, 2),
        "fused": (6, 2),
    }
    assert all(np.isfinite(points).all() for points in coordinates.values())
    assert_real_png(out)


def test_plot_embeddings_rejects_label_count_mismatch(tmp_path):
    from mmf_fashion.visualize import PlotError, plot_embeddings

    with pytest.raises(PlotError, match="'image': 5 points but 4 labels"):
        plot_embeddings({"image": np.zeros((5, 3))}, [0, 1, 0, 1], tmp_path / "x.png")


# ---------------------------------------------------------------- embeddings (command)
TINY_FASHIONVIL = """
model_config:
  fashionvil:
    head: contrastive
    image_encoder: {name: resnet18}
    text_encoder: {name: tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2,
                   intermediate_size: 64}
    max_text_length: 16
dataset_config:
  fashiongen:
    processors:
      image_processor: {params: {size: 32}}
      text_processor: {params: {max_length: 16}}
training:
  device: cpu
"""


@pytest.fixture
def tiny_fixture(tmp_path):
    from mmf_fashion.data.synth import make_fixture

    config = tmp_path / "tiny_fashionvil.yaml"
    config.write_text(TINY_FASHIONVIL)
    return make_fixture(tmp_path), config


def test_plot_embeddings_on_the_synthetic_fixture(tmp_path, capsys, restore_mmf_state, tiny_fixture):
    import torch

    from mmf_fashion import runtime

    data_dir, config_path = tiny_fixture
    overrides = [f"env.data_dir={data_dir}"]
    # a checkpoint with weights other than a fresh build's, to see they are loaded
    config = runtime.load_config(str(config_path), "fashionvil", "fashiongen", overrides)
    model = runtime.build_model_from_config(config)
    with torch.no_grad():
        model.image_projection.weight.mul_(-2.0)
    checkpoint = tmp_path / "fashionvil_final.pth"
    torch.save(model.state_dict(), checkpoint)
    reloaded = runtime.build_model_from_config(config, checkpoint=str(checkpoint))
    assert not reloaded.training
    assert torch.equal(reloaded.image_projection.weight, model.image_projection.weight)

    out = tmp_path / "tsne.png"
    code, stdout, stderr = run_cli(
        capsys,
        "plot",
        "embeddings",
        "--config",
        config_path,
        "--model",
        "fashionvil",
        "--dataset",
        "fashiongen",
        "--checkpoint",
        checkpoint,
        "--split",
        "val",
        "--max-items",
        12,
        "--out",
        out,
        *overrides,
    )
    assert code == 0, stderr
    assert_real_png(out, min_width=1000)
    # fashionvil has embed_composed: a fused panel beside image and text
    assert "t-SNE of image 12, text 12, fused 12 point(s)" in stdout
    assert "embedding" in stderr  # the tqdm progress bar


def test_plot_embeddings_reports_a_missing_checkpoint(tmp_path, capsys, restore_mmf_state, tiny_fixture):
    data_dir, config_path = tiny_fixture
    code, _, stderr = run_cli(
        capsys,
        "plot",
        "embeddings",
        "--config",
        config_path,
        "--model",
        "fashionvil",
        "--dataset",
        "fashiongen",
        "--checkpoint",
        tmp_path / "nope.pth",
        "--out",
        tmp_path / "x.png",
        f"env.data_dir={data_dir}",
    )
    assert code == 2
    assert "nope.pth: no such file" in stderr
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- new-builder
GENERATED = ["__init__.py", "builder.py", "dataset.py", "configs/defaults.yaml", "tests/test_{name}.py"]


def test_new_builder_writes_the_plugin_and_refuses_to_overwrite(tmp_path, capsys):
    name = "shop_catalogue"
    code, stdout, stderr = run_cli(capsys, "new-builder", name, "--out", tmp_path)
    assert code == 0, stderr
    folder = tmp_path / name
    for relative in GENERATED:
        path = folder / relative.format(name=name)
        assert path.is_file(), f"missing {path}"
        assert path.stat().st_size > 100
        if path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")  # valid Python
    builder_text = (folder / "builder.py").read_text()
    assert '@registry.register_builder("shop_catalogue")' in builder_text
    assert "class ShopCatalogueBuilder" in builder_text
    for word in ("TODO", "NotImplementedError", "__NAME__", "__CLASS__"):
        for relative in GENERATED:
            assert word not in (folder / relative.format(name=name)).read_text()
    assert "env.user_dir=" in stdout

    before = {relative: (folder / relative.format(name=name)).read_text() for relative in GENERATED}
    (folder / "dataset.py").write_text(before["dataset.py"] + "\n# my edit\n")
    code, _, stderr = run_cli(capsys, "new-builder", name, "--out", tmp_path)
    assert code == 2
    assert "refusing to overwrite" in stderr and "dataset.py" in stderr
    assert (folder / "dataset.py").read_text().endswith("# my edit\n")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("my-shop", "not a valid Python identifier"),
        ("class", "not a valid Python identifier"),
        ("json", "already an importable Python module"),
        ("fashiongen", "is a builder of mmf_fashion"),
    ],
)
def test_new_builder_refuses_bad_names(tmp_path, capsys, name, reason):
    code, _, stderr = run_cli(capsys, "new-builder", name, "--out", tmp_path)
    assert code == 2
    assert reason in stderr
    assert list(tmp_path.iterdir()) == []


def _write_catalogue(root, name, split, rows):
    folder = root / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,title,category"]
    for index, (title, category) in enumerate(rows):
        Image.new("RGB", (36, 28), (40 * index % 255, 90, 200)).save(folder / "images" / f"{split}_{index}.png")
        lines.append(f"images/{split}_{index}.png,{title},{category}")
    (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.mmf_compat
def test_generated_builder_loads_through_mmf_in_process(tmp_path, capsys, mmf_registry):
    """The generated plugin, imported as env.user_dir does, builds a dataset
    whose batches hold the ARCHITECTURE.md keys."""
    from mmf.common.batch_collator import BatchCollator
    from mmf.utils.build import build_dataset
    from mmf.utils.configuration import load_yaml_with_defaults
    from mmf.utils.env import import_user_module

    name = "cli_inprocess_catalogue"
    assert run_cli(capsys, "new-builder", name, "--out", tmp_path / "plugins")[0] == 0
    import_user_module(str(tmp_path / "plugins" / name))
    builder_class = mmf_registry.get_builder_class(name)
    assert builder_class is not None and builder_class.__name__ == "CliInprocessCatalogueBuilder"

    data_dir = tmp_path / "data"
    _write_catalogue(
        data_dir, name, "train", [("red shirt", "shirts"), ("blue jeans", "trousers"), ("green shirt", "shirts")]
    )
    _write_catalogue(data_dir, name, "val", [("black jeans", "trousers")])
    config = load_yaml_with_defaults(builder_class.config_path()).dataset_config[name]
    config.data_dir = str(data_dir)
    config.processors.image_processor.params.size = 32
    config.processors.text_processor.params.max_length = 12
    train = build_dataset(name, config, "train")
    batch = BatchCollator(name, "train")([train[index] for index in range(len(train))])
    assert tuple(batch.image.shape) == (3, 3, 32, 32)
    assert tuple(batch.input_ids.shape) == tuple(batch.attention_mask.shape) == (3, 12)
    assert batch.category_id.tolist() == batch.targets.tolist() == [0, 1, 0]
    assert batch.product_id.tolist() == [0, 1, 2]
    assert list(batch.text) == ["red shirt", "blue jeans", "green shirt"]
    assert mmf_registry.get(f"{name}_category_names") == ["shirts", "trousers"]
    val = build_dataset(name, config, "val")
    assert int(val[0].category_id) == 1  # same id as in train


@pytest.mark.slow
def test_generated_test_passes_under_pytest(tmp_path, capsys):
    """What a contributor runs first: the generated test, in a fresh process."""
    name = "cli_subprocess_catalogue"
    assert run_cli(capsys, "new-builder", name, "--out", tmp_path)[0] == 0
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    environment = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / name / "tests")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "8 passed" in result.stdout


# ---------------------------------------------------------------- info
def test_info_lists_every_contract_name(capsys):
    code, stdout, stderr = run_cli(capsys, "info")
    assert code == 0, stderr
    lines = stdout.splitlines()
    for kind, names in CONTRACT.items():
        for name in names:
            listed = [line for line in lines if line.split()[:1] == [name]]
            assert listed, f"{kind[:-1]} '{name}' not listed by info"
            # one line each: the name and what it is (a class or function docstring's first line)
            assert len(listed[0].split()) > 1, f"{kind[:-1]} '{name}' is listed without a description"
    assert any(line.split()[:1] == ["fashion_trainer"] for line in lines)


def test_info_weights_names_an_existing_option_for_every_registered_model(capsys, mmf_registry):
    from omegaconf import OmegaConf

    from mmf_fashion.plugin import ours
    from mmf_fashion.released_weights import RELEASED_WEIGHTS

    assert set(RELEASED_WEIGHTS) == set(ours()["model"])  # a new model must say what it loads
    for model, sources in RELEASED_WEIGHTS.items():
        defaults = OmegaConf.load(mmf_registry.get_model_class(model).config_path()).model_config[model]
        for source in sources:
            assert OmegaConf.select(defaults, source.option, default="absent") != "absent", (model, source.option)
    code, stdout, stderr = run_cli(capsys, "info", "--weights")
    assert code == 0, stderr
    assert "model_config.clip.pretrained=openai/clip-vit-base-patch32" in stdout
    assert "model_config.align.pretrained=kakaobrain/align-base" in stdout
