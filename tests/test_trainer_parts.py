"""Pieces of fashion_trainer that can be checked without a model."""

import json
import os

import numpy as np
import pytest
import torch

from mmf_fashion.trainers import checkpointing as ckpt
from mmf_fashion.trainers.evaluation import Accumulator, write_results
from mmf_fashion.trainers.loaders import ResumableSampler


def test_resumable_sampler_shards_are_disjoint_and_cover_the_data():
    shards = [list(ResumableSampler(10, seed=3, shuffle=True, rank=r, world_size=2, pad=False)) for r in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_resumable_sampler_order_depends_only_on_seed_and_epoch_and_skips():
    a = ResumableSampler(20, seed=1, shuffle=True)
    a.set_epoch(2)
    full = list(a)
    b = ResumableSampler(20, seed=1, shuffle=True)
    b.set_epoch(2)
    b.skip_batches(3, batch_size=4)
    assert list(b) == full[12:]
    a.set_epoch(3)
    assert list(a) != full


def test_padded_training_shards_have_equal_length():
    lengths = [len(ResumableSampler(11, seed=0, shuffle=True, rank=r, world_size=2, pad=True)) for r in range(2)]
    assert lengths == [6, 6]


def test_atomic_save_keeps_the_previous_file_when_a_save_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "current.ckpt")
    ckpt.atomic_torch_save({"w": torch.ones(2)}, path)

    def exploding_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_torch_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.safe_torch_load(path)["w"], torch.ones(2))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


class _Payload:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_unsafe_checkpoint_is_refused_unless_allowed(tmp_path):
    path = str(tmp_path / "evil.ckpt")
    torch.save({"model": {}, "extra": _Payload()}, path)
    with pytest.raises(ckpt.UnsafeCheckpointError, match="allow_unsafe_load"):
        ckpt.safe_torch_load(path)
    assert "extra" in ckpt.safe_torch_load(path, allow_unsafe=True)


def test_rng_capture_round_trips_and_is_weights_only_loadable(tmp_path):
    state = ckpt.capture_rng()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    path = str(tmp_path / "rng.ckpt")
    ckpt.atomic_torch_save({"rng": state}, path)
    ckpt.restore_rng(ckpt.safe_torch_load(path)["rng"])
    again = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_load_model_state_names_missing_and_unexpected_keys():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError) as info:
        ckpt.load_model_state(
            model, {"weight": torch.zeros(2, 2), "other": torch.zeros(1)}, strict=True, source="x.ckpt"
        )
    message = str(info.value)
    assert "bias" in message and "other" in message and "x.ckpt" in message


def test_non_finite_parameters_are_found():
    assert ckpt.non_finite_parameters([("a", torch.tensor([1.0, float("nan")])), ("b", torch.ones(1))]) == ["a"]


def test_state_mapping_renames_prefixes():
    mapped = ckpt.apply_state_mapping(
        {"module.encoder.w": torch.ones(1), "head.b": torch.ones(1)}, {"backbone": "encoder"}
    )
    assert list(mapped) == ["backbone.w"]


def test_results_files_are_flat_and_appended(tmp_path):
    write_results(str(tmp_path), {"val/fashiongen/r@k_general/t2i_r@10": 12.5}, 10)
    write_results(str(tmp_path), {"val/fashiongen/r@k_general/t2i_r@10": 20.0}, 20)
    current = json.loads((tmp_path / "metrics.json").read_text())
    assert current == {"val/fashiongen/r@k_general/t2i_r@10": 20.0, "num_updates": 20}
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["num_updates"] for h in history] == [10, 20]


def test_accumulator_concatenates_tensors_and_lists():
    acc = Accumulator(["image_embedding", "text", "product_id"])
    acc.add({"product_id": torch.tensor([1, 2]), "text": ["a", "b"]}, {"image_embedding": torch.ones(2, 3)})
    acc.add({"product_id": torch.tensor([3]), "text": ["c"]}, {"image_embedding": torch.zeros(1, 3)})
    report = acc.report()
    assert report["image_embedding"].shape == (3, 3)
    assert report["product_id"].tolist() == [1, 2, 3] and report["text"] == ["a", "b", "c"]


# ---------------------------------------------------------------- tensorboard
def _read_scalars(log_dir):
    """{tag: [(step, value)]} of every event file in log_dir, with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_write_scalars_puts_a_train_record_in_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from mmf_fashion.trainers.evaluation import write_scalars, write_train_record

    writer = SummaryWriter(str(tmp_path / "tb"))
    record = write_train_record(str(tmp_path), {"fashiongen/itc": 2.5, "fashiongen/itm": 0.5}, 1e-4, 64.0, 10)
    write_scalars(writer, record)
    write_scalars(None, record)  # tensorboard off: nothing, no error
    writer.close()
    scalars = _read_scalars(tmp_path / "tb")
    assert set(scalars) == {
        "train/fashiongen/itc",
        "train/fashiongen/itm",
        "train/total_loss",
        "train/lr",
        "train/samples_per_s",
    }
    assert scalars["train/total_loss"] == [(10, pytest.approx(3.0))]


@pytest.mark.slow
def test_mmf_run_with_training_tensorboard_writes_the_jsonl_records(tmp_path):
    """training.tensorboard=true through mmf_run: every train.jsonl and metrics.jsonl
    value is a scalar at its update, in <save_dir>/tensorboard (no tensorboard_logdir)."""
    pytest.importorskip("tensorboard")
    import subprocess
    import sys

    from mmf_fashion.data.synth import make_fixture

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data_dir = str(make_fixture(str(tmp_path / "world"), products=40, image_size=32, seed=0))
    save_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-c",
        "from mmf_cli.run import run; run()",
        f"config={os.path.join(repo, 'tests', 'configs', 'tiny_align.yaml')}",
        "model=align",
        "dataset=fashiongen",
        f"env.save_dir={save_dir}",
        f"env.data_dir={data_dir}",
        "run_type=train_val",
        "training.max_updates=4",
        "training.tensorboard=true",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    scalars = _read_scalars(save_dir / "tensorboard")
    expected = {}
    for name in ("train.jsonl", "metrics.jsonl"):
        for line in open(save_dir / name):
            record = json.loads(line)
            for key, value in record.items():
                if key != "num_updates":
                    expected.setdefault(key, []).append((record["num_updates"], pytest.approx(value, rel=1e-5)))
    assert "train/total_loss" in expected and "val/fashiongen/r@k_general/avg" in expected
    assert scalars == expected
