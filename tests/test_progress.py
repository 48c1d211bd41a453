"""Live progress: the trainer's terminal bar vs plain log lines, and `make demo`'s
reader of a growing train.jsonl."""

import io
import json
import os
import re
import types

import pytest


class RecordingWriter:
    def __init__(self):
        self.lines = []

    def write(self, message, level="info", *args, **kwargs):
        self.lines.append(str(message))


class Terminal(io.StringIO):
    def isatty(self):
        return True


def bare_trainer(tmp_path, max_updates=6):
    """A FashionTrainer with only what _logistics_after_update reads: no model, no data."""
    import torch

    from mmf_fashion.trainers.fashion_trainer import FashionTrainer

    trainer = FashionTrainer.__new__(FashionTrainer)
    trainer.training_config = types.SimpleNamespace(
        log_interval=2, batch_size=4, checkpoint_interval=10**6, evaluation_interval=10**6
    )
    trainer.num_updates, trainer.max_updates, trainer._start_update = 0, max_updates, 0
    trainer._timer = __import__("time").time()
    trainer.distributed = False
    trainer.save_dir = str(tmp_path)
    trainer.update_frequency = 1
    trainer.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    trainer.writer = RecordingWriter()
    trainer.tb_writer = None
    return trainer


def train(trainer):
    while trainer.num_updates < trainer.max_updates:
        trainer.num_updates += 1
        trainer._logistics_after_update({"fashiongen/itc": 1.5})


def test_not_a_terminal_keeps_the_plain_progress_lines(tmp_path, monkeypatch):
    piped = io.StringIO()  # isatty() is False, as for a log file or a pipe
    monkeypatch.setattr("sys.stderr", piped)
    trainer = bare_trainer(tmp_path)
    train(trainer)
    progress = [line for line in trainer.writer.lines if line.startswith("progress:")]
    assert [
        re.match(r"progress: (\d+)/6, itc: 1\.5000, lr: 1\.00e-02, ups: [\d.]+, eta: \d\d:\d\d:\d\d$", line) is not None
        for line in progress
    ] == [True, True, True]
    assert trainer._progress_bar is None and piped.getvalue() == ""


def test_a_terminal_gets_a_bar_with_rate_and_eta_and_the_log_its_lines(tmp_path, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    trainer = bare_trainer(tmp_path)
    train(trainer)
    shown = terminal.getvalue()
    assert "training" in shown and "6/6" in shown and "loss: 1.5000" in shown
    assert re.search(r"update/s|s/update", shown)
    assert re.search(r"<\d\d:\d\d", shown)  # the ETA
    assert len([line for line in trainer.writer.lines if line.startswith("progress:")]) == 3
    assert trainer._progress_bar is None  # closed at the last update
    assert [json.loads(line)["num_updates"] for line in open(tmp_path / "train.jsonl")] == [2, 4, 6]


# ---------------------------------------------------------------- make demo's reader
def test_bar_update_turns_records_into_bar_steps():
    from mmf_fashion.demo import bar_update

    records = [
        {"num_updates": 5, "train/fashiongen/itc": 2.0, "train/total_loss": 2.0, "train/lr": 1e-4},
        {"num_updates": 10, "train/fashiongen/mlm": 1.5, "train/total_loss": 1.5, "train/lr": 5e-5},
    ]
    assert bar_update(records, 0) == (10, "loss 1.5000, lr 5.0e-05")
    assert bar_update(records, 7) == (3, "loss 1.5000, lr 5.0e-05")
    assert bar_update(records[:1], 10)[0] == 0  # never backwards
    assert bar_update([], 4) == (0, None)


def test_step_progress_follows_a_growing_train_jsonl(tmp_path):
    from mmf_fashion.demo import StepProgress

    save_dir = tmp_path / "pretrain"
    save_dir.mkdir()
    # an earlier demo's lines in a reused save_dir are not this run's progress
    (save_dir / "train.jsonl").write_text(json.dumps({"num_updates": 90, "train/total_loss": 9.0}) + "\n")
    (save_dir / "train.log").write_text("x | INFO | mmf.train : Starting training at update 0 of 90\n")
    progress = StepProgress(str(save_dir))
    position = 0
    assert progress.poll(position) == (None, 0, None)  # mmf_run still starting

    with open(save_dir / "train.log", "a") as log:
        log.write("2026 | INFO | mmf.train : Starting training at update 0 of 20\n")
    seen = []
    with open(save_dir / "train.jsonl", "a") as handle:
        for step in range(5, 21, 5):
            line = json.dumps({"num_updates": step, "train/total_loss": 4.0 / step, "train/lr": 1e-3})
            # half a line first: a record counts only once its newline is written
            handle.write(line[:10])
            handle.flush()
            total, advance, postfix = progress.poll(position)
            assert (total, advance) == (20, 0)
            handle.write(line[10:] + "\n")
            handle.flush()
            total, advance, postfix = progress.poll(position)
            position += advance
            seen.append((position, postfix))
    assert [p for p, _ in seen] == [5, 10, 15, 20]
    assert seen[-1][1] == "loss 0.2000, lr 1.0e-03"
    assert progress.poll(position) == (20, 0, None)


def test_step_progress_of_a_resumed_run_starts_at_its_checkpoint(tmp_path):
    from mmf_fashion.demo import StepProgress

    progress = StepProgress(str(tmp_path))
    (tmp_path / "train.log").write_text("t | INFO | mmf.train : Starting training at update 40 of 60\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"num_updates": 45, "train/total_loss": 1.0}) + "\n")
    total, advance, _ = progress.poll(0)
    assert (total, advance) == (60, 45)


def test_key_metric_prefers_an_average_recall_then_a_value():
    from mmf_fashion.demo import key_metric

    assert key_metric(
        {"val/d/r@k_general/i2t_r@1": 10.0, "val/d/r@k_general/avg": 30.0, "val/d/itc": 2.0, "num_updates": 3}
    ) == ("val/d/r@k_general/avg", 30.0)
    assert key_metric({"val/d/accuracy/value": 70.0, "val/d/ce": 1.0}) == ("val/d/accuracy/value", 70.0)
    assert key_metric({"val/d/mlm": 3.0, "num_updates": 3}) == ("val/d/mlm", 3.0)
    assert key_metric({"num_updates": 3}) is None
    # the tokenizer is judged by its reconstruction error, not by the first loss in the file
    tokenizer = {"val/d/commitment": 0.001, "val/d/reconstruction": 0.77}
    assert key_metric(tokenizer, "reconstruction") == ("val/d/reconstruction", 0.77)
    assert key_metric(tokenizer, "not_there") == ("val/d/commitment", 0.001)


FAKE_RUN = """
import json, os, sys, time
save = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("env.save_dir=")][0]
os.makedirs(save, exist_ok=True)
print("Logging to: somewhere", flush=True)
with open(os.path.join(save, "train.log"), "a") as log:
    log.write("t | INFO | mmf.train : Starting training at update 0 of 4\\n")
for step in range(1, 5):
    time.sleep(0.3)
    with open(os.path.join(save, "train.jsonl"), "a") as f:
        f.write(json.dumps({"num_updates": step, "train/total_loss": 1.0 / step, "train/lr": 1e-3}) + "\\n")
if FAIL:
    print("Traceback: the model exploded", flush=True)
    sys.exit(3)
with open(os.path.join(save, "metrics.json"), "w") as f:
    json.dump({"val/d/r@k_general/avg": 42.5, "val/d/itc": 1.0, "num_updates": 4}, f)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_demo_step_shows_a_bar_then_its_metric_or_its_log(tmp_path, monkeypatch, capsys, fail):
    import sys

    from mmf_fashion import demo

    script = FAKE_RUN.replace("FAIL", str(fail))
    monkeypatch.setattr(demo, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(demo, "mmf_run_command", lambda *args: [sys.executable, "-c", script, *args[3]])
    step = ("itr", "c.yaml", "fashionvil", "fashiongen", [])
    if fail:
        with pytest.raises(SystemExit) as failure:
            demo.run_step(*step, str(tmp_path / "save"), str(tmp_path / "data"), str(tmp_path / "logs"))
        message = str(failure.value)
        assert "step itr failed (exit 3)" in message and "the model exploded" in message
        assert str(tmp_path / "logs" / "itr.log") in message
    else:
        result = demo.run_step(*step, str(tmp_path / "save"), str(tmp_path / "data"), str(tmp_path / "logs"))
        assert result["metrics"]["num_updates"] == 4
    captured = capsys.readouterr()
    assert "[demo] itr" in captured.err and "4/4" in captured.err
    assert re.search(r"update/s|s/update", captured.err)  # the rate (tqdm flips it below 1/s)
    assert ("val/d/r@k_general/avg = 42.50" in captured.out) != fail


TIMED_RUN = """
import json, os, sys, time
save = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("env.save_dir=")][0]
os.makedirs(save, exist_ok=True)
start = time.time()
time.sleep(0.6)
record = {"start": start, "end": time.time(), "threads": os.environ.get("OMP_NUM_THREADS"), "args": sys.argv[1:]}
with open(os.path.join(save, "metrics.json"), "w") as f:
    json.dump({"val/d/r@k_general/avg": 1.0, "num_updates": 1}, f)
with open(os.path.join(save, "when.json"), "w") as f:
    json.dump(record, f)
"""


def test_demo_runs_the_fine_tunes_side_by_side_after_the_pretraining(tmp_path, monkeypatch):
    import sys

    from mmf_fashion import demo

    monkeypatch.setattr(demo, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(demo, "mmf_run_command", lambda *args: [sys.executable, "-c", TIMED_RUN, *args[3]])
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 4)
    save = tmp_path / "save"
    results = demo.run_steps([s[0] for s in demo.STEPS], str(save), str(tmp_path / "data"), jobs=2)
    assert [r["step"] for r in results] == [s[0] for s in demo.STEPS]  # the table keeps the chain's order
    when = {s[0]: json.loads((save / s[0] / "when.json").read_text()) for s in demo.STEPS}
    assert when["tokenizer"]["end"] <= when["pretrain"]["start"]
    fine_tunes = ["itr", "tgir", "scr", "ocir"]
    assert all(when["pretrain"]["end"] <= when[name]["start"] for name in fine_tunes)
    # two at a time, 4 CPUs shared out: 2 threads each; never more than two at once
    assert {when[name]["threads"] for name in fine_tunes} == {"2"}
    overlaps = [
        (a, b)
        for a in fine_tunes
        for b in fine_tunes
        if a < b and when[a]["start"] < when[b]["end"] and when[b]["start"] < when[a]["end"]
    ]
    assert overlaps
    for t in [when[name]["start"] + 0.3 for name in fine_tunes]:
        assert sum(when[n]["start"] <= t < when[n]["end"] for n in fine_tunes) <= 2
    # the fine-tunes start from the pretraining's checkpoint
    pretrained = f"checkpoint.resume_file={save / 'pretrain' / 'fashionvil_final.pth'}"
    assert all(pretrained in when[name]["args"] for name in fine_tunes)
    # one job: one after the other, threads as the environment says
    results = demo.run_steps(["itr", "tgir"], str(tmp_path / "one"), str(tmp_path / "data"), jobs=1)
    one = {name: json.loads((tmp_path / "one" / name / "when.json").read_text()) for name in ("itr", "tgir")}
    assert one["itr"]["end"] <= one["tgir"]["start"] and one["itr"]["threads"] == os.environ.get("OMP_NUM_THREADS")
