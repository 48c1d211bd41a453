"""`mmf_run` end to end in subprocesses: train, evaluate, resume, kill -9, torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "configs", "tiny_align.yaml")
MMF_RUN = [sys.executable, "-c", "from mmf_cli.run import run; run()"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mmf_fashion.data.synth import make_fixture

    return str(make_fixture(str(tmp_path_factory.mktemp("world")), products=40, image_size=32, seed=0))


def mmf_run(save_dir, data_dir, *overrides, launcher=None, timeout=600, wait=True):
    command = (launcher or MMF_RUN) + [
        f"config={CONFIG}",
        "model=align",
        "dataset=fashiongen",
        f"env.save_dir={save_dir}",
        f"env.data_dir={data_dir}",
        *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def final_weights(save_dir):
    return torch.load(os.path.join(save_dir, "align_final.pth"), weights_only=True)


def test_train_writes_checkpoints_and_metrics_then_resumes(tmp_path, data_dir):
    save = str(tmp_path / "run")
    mmf_run(save, data_dir, "run_type=train_val")
    metrics = json.loads(open(os.path.join(save, "metrics.json")).read())
    assert metrics["num_updates"] == 6
    for key in ("i2t_r@1", "t2i_r@10", "avg"):
        value = metrics[f"val/fashiongen/r@k_general/{key}"]
        assert 0.0 <= value <= 100.0
    history = [json.loads(line) for line in open(os.path.join(save, "metrics.jsonl"))]
    assert [h["num_updates"] for h in history][:2] == [3, 6]
    assert os.path.exists(os.path.join(save, "current.ckpt"))
    # training losses, machine-readable at every log_interval
    train = [json.loads(line) for line in open(os.path.join(save, "train.jsonl"))]
    assert [t["num_updates"] for t in train] == [2, 4, 6]  # log_interval 2
    for record in train:
        tasks = {k: v for k, v in record.items() if k.startswith("train/fashiongen/")}
        assert tasks and record["train/total_loss"] == pytest.approx(sum(tasks.values()))
        assert record["train/lr"] >= 0 and record["train/samples_per_s"] > 0
    assert train[0]["train/lr"] > 0 == train[-1]["train/lr"]  # the cosine schedule ends at 0
    assert os.path.exists(os.path.join(save, "align_final.pth"))
    # resume and train further: the run continues from update 6
    mmf_run(save, data_dir, "checkpoint.resume=True", "training.max_updates=8")
    logs = "".join(open(os.path.join(save, "logs", f)).read() for f in os.listdir(os.path.join(save, "logs")))
    assert "Resumed from" in logs and "at update 6" in logs
    assert json.loads(open(os.path.join(save, "metrics.json")).read())["num_updates"] == 8


def test_kill_during_training_then_resume_equals_an_uninterrupted_run(tmp_path, data_dir):
    """Bit-identical on purpose, and safe on any CPU: both runs are the same kind of
    process (one rank, OMP_NUM_THREADS=1, same machine, same shapes) repeating the same
    ops on the same data in the same order, so every kernel sums in the same order. The
    resume restores weights, optimizer, scheduler, RNG and data position exactly, so any
    difference at all is a resume bug, not float noise. Ranks or metrics are not compared."""
    straight = str(tmp_path / "straight")
    mmf_run(straight, data_dir, "training.max_updates=10", "training.evaluation_interval=100")
    interrupted = str(tmp_path / "interrupted")
    process = mmf_run(interrupted, data_dir, "training.max_updates=10", "training.evaluation_interval=100", wait=False)
    marker = os.path.join(interrupted, "models", "model_4.ckpt")
    deadline = time.time() + 300
    while not os.path.exists(marker) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(interrupted, "align_final.pth"))
    mmf_run(
        interrupted, data_dir, "training.max_updates=10", "training.evaluation_interval=100", "checkpoint.resume=True"
    )
    a, b = final_weights(straight), final_weights(interrupted)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.mmf_compat
def test_torchrun_two_cpu_processes_train_on_different_shards(tmp_path, data_dir):
    save = str(tmp_path / "ddp")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        os.path.join(os.path.dirname(sys.executable), "mmf_run"),
    ]
    mmf_run(save, data_dir, "training.log_sample_ids=True", "training.max_updates=4", launcher=launcher)
    seen = []
    for rank in (0, 1):
        lines = open(os.path.join(save, f"sample_ids_rank{rank}.txt")).read().split("\n")
        seen.append([set(line.split()) for line in lines if line])
    assert len(seen[0]) == len(seen[1]) == 4
    for batch0, batch1 in zip(seen[0], seen[1]):
        assert not batch0 & batch1
    assert json.loads(open(os.path.join(save, "metrics.json")).read())["num_updates"] == 4


def test_resume_file_null_on_the_command_line_trains_from_scratch_and_a_missing_file_is_named(tmp_path, data_dir):
    # a project config that starts from a pretrained checkpoint; `checkpoint.resume_file=null`
    # (the string MMF's command line hands over) must mean "no checkpoint", as it does in YAML
    pretrained = tmp_path / "nowhere" / "align_final.pth"
    overrides = ("run_type=val", f"checkpoint.resume_file={pretrained}", "checkpoint.resume_pretrained=True")
    command = MMF_RUN + [
        f"config={CONFIG}",
        "model=align",
        "dataset=fashiongen",
        f"env.save_dir={tmp_path / 'a'}",
        f"env.data_dir={data_dir}",
        *overrides,
    ]
    result = subprocess.run(
        command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600
    )
    assert result.returncode != 0
    assert f"checkpoint.resume_file={pretrained}: no such file" in result.stdout + result.stderr
    save = tmp_path / "b"
    mmf_run(str(save), data_dir, *overrides, "checkpoint.resume_file=null")
    logs = "".join((save / "logs" / name).read_text() for name in os.listdir(save / "logs"))
    assert "Pretrained weights from" not in logs
    assert "val/fashiongen/r@k_general/avg" in json.loads((save / "metrics.json").read_text())
