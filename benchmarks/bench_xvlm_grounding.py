"""Does X-VLM's box head ground phrases? (issue 7) Grounding accuracy (IoU >= 0.5)
on the synthetic region annotations, against box baselines that ignore the image.

    .venv/bin/python -m benchmarks.bench_xvlm_grounding [--pretrain-updates 400] \
        [--grounding-updates 400 1500] [--save-dir save/xvlm_bench] [--out benchmarks/results/xvlm_grounding.md]

Runs (plain `mmf_run` of the project configs, one after the other, 1 torch
thread each; a run whose metrics.json exists under --save-dir is reused):
1. pretraining (projects/xvlm/configs/pretrain.yaml: ITC, ITM and MLM at image
   and region granularity, the box head on the regions) for --pretrain-updates
   updates; its validation retrieval (r@k_general) is reported under the table;
2. grounding fine-tuning (projects/xvlm/configs/grounding.yaml) from that
   checkpoint, and the same from random weights, for each of the
   --grounding-updates schedules.
The baselines (projects/xvlm/grounding_baselines.py) score fixed or
text-only boxes with the same metric: the bar a model must clear to show that
it looks at the image.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import time
from typing import Dict, List

import torch

from mmf_fashion.demo import ensure_data, mmf_run_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = "projects/xvlm/configs/pretrain.yaml"
GROUNDING = "projects/xvlm/configs/grounding.yaml"


def load_baselines():
    path = os.path.join(REPO, "projects", "xvlm", "grounding_baselines.py")
    spec = importlib.util.spec_from_file_location("xvlm_grounding_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.baselines


def schedule(updates: int) -> List[str]:
    return [
        f"training.max_updates={updates}",
        f"training.evaluation_interval={updates}",
        f"training.checkpoint_interval={updates}",
        "training.log_interval=50",
    ]


def run(name: str, config: str, overrides: List[str], save_root: str, data_dir: str) -> Dict:
    """One mmf_run (reused when its metrics.json exists); returns metrics, seconds and the command."""
    save_dir = os.path.join(save_root, name)
    command = " ".join(["mmf_run", f"config={config}", "model=xvlm", "dataset=fashiongen", *overrides])
    done = os.path.join(save_dir, "metrics.json")
    seconds_file = os.path.join(save_dir, "wall_seconds.txt")
    if not os.path.exists(done):
        args = [
            "run_type=train_val",
            f"env.save_dir={save_dir}",
            f"env.data_dir={os.path.abspath(data_dir)}",
            *overrides,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        os.makedirs(save_root, exist_ok=True)
        log_path = os.path.join(save_root, f"{name}.log")
        start = time.time()
        with open(log_path, "w") as log:
            code = subprocess.run(
                mmf_run_command(config, "xvlm", "fashiongen", args),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ).returncode
        if code != 0:
            with open(log_path) as f:
                raise RuntimeError(f"{name} failed (exit {code}); log {log_path}:\n{f.read()[-2500:]}")
        with open(seconds_file, "w") as f:
            f.write(f"{time.time() - start:.1f}\n")
        print(f"[xvlm] {name}: done", flush=True)
    else:
        print(f"[xvlm] {name}: reused {done}", flush=True)
    with open(done) as f:
        metrics = json.load(f)
    seconds = float(open(seconds_file).read()) if os.path.exists(seconds_file) else float("nan")
    return {"metrics": metrics, "seconds": seconds, "command": command.replace(REPO + os.sep, "")}


def grounding_figures(metrics: Dict) -> Dict[str, float]:
    """The grounding_accuracy entries of a metrics.json, by their last key part."""
    return {
        key.rsplit("/", 1)[-1]: float(value)
        for key, value in metrics.items()
        if key.startswith("val/") and "grounding_accuracy" in key
    }


def retrieval_figures(metrics: Dict) -> Dict[str, float]:
    """The r@k_general entries of a metrics.json (the ITR figure of a pretraining run)."""
    return {
        key.rsplit("/", 1)[-1]: float(value)
        for key, value in metrics.items()
        if key.startswith("val/") and "r@k_general" in key
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="data/synthetic")
    parser.add_argument("--pretrain-updates", type=int, default=400)
    parser.add_argument("--grounding-updates", type=int, nargs="+", default=[400, 1500])
    parser.add_argument("--save-dir", default="save/xvlm_bench")
    parser.add_argument("--out", default="benchmarks/results/xvlm_grounding.md")
    args = parser.parse_args(argv)
    ensure_data(args.data_dir, products=600, image_size=64, seed=0)
    load = os.getloadavg()
    start = time.time()

    pretrain = run("pretrain", PRETRAIN, schedule(args.pretrain_updates), args.save_dir, args.data_dir)
    checkpoint = os.path.abspath(os.path.join(args.save_dir, "pretrain", "xvlm_final.pth"))
    models = [(f"X-VLM pretrained only ({args.pretrain_updates} updates, no grounding fine-tuning)", pretrain)]
    for updates in args.grounding_updates:
        scratch = run(
            f"grounding_scratch_{updates}",
            GROUNDING,
            ["checkpoint.resume_file=null", *schedule(updates)],
            args.save_dir,
            args.data_dir,
        )
        tuned = run(
            f"grounding_{updates}",
            GROUNDING,
            [f"checkpoint.resume_file={checkpoint}", *schedule(updates)],
            args.save_dir,
            args.data_dir,
        )
        models += [
            (f"X-VLM grounding from random weights, {updates} updates", scratch),
            (f"X-VLM grounding from the pretraining, {updates} updates", tuned),
        ]
    base = load_baselines()(args.data_dir, "val")

    rows = []
    for name, values in base.items():
        rows.append((f"baseline: {name}", values["accuracy"], values["num_boxes"], "-"))
    for name, result in models:
        figures = grounding_figures(result["metrics"])
        accuracy = figures.get("accuracy", float("nan"))
        boxes = figures.get("num_boxes", float("nan"))
        seconds = result["seconds"]
        rows.append((name, accuracy, boxes, "-" if seconds != seconds else f"{seconds:.0f}"))

    lines = [
        "## X-VLM grounding on the synthetic region annotations",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_xvlm_grounding --pretrain-updates {args.pretrain_updates} "
        f"--grounding-updates {' '.join(map(str, args.grounding_updates))}` "
        f"({(time.time() - start) / 60:.0f} min wall, reused runs included at 0; {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {platform.machine()}, load average at start {tuple(round(x, 2) for x in load)}).",
        "",
        f"Data: `{args.data_dir}` (600 products, 64 px, up to 5 phrase-box regions per image); metric: "
        "grounding_accuracy, the share of validation regions whose predicted box has IoU >= 0.5 with the "
        "annotated one (%). Model: the project configs' sizes (ViT 64 px / patch 8, hidden 64), one seed.",
        "",
        "| predictor | accuracy @ IoU 0.5 (%) | boxes | time (s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {accuracy:.2f} | {boxes:.0f} | {seconds} |" for name, accuracy, boxes, seconds in rows]
    retrieval = retrieval_figures(pretrain["metrics"])
    if retrieval:
        lines += [
            "",
            "Retrieval after the pretraining (val, r@k_general, %): "
            + ", ".join(f"{name} {value:.2f}" for name, value in sorted(retrieval.items()))
            + ".",
        ]
    lines += ["", "Commands (each also with `run_type=train_val env.save_dir=... env.data_dir=...`):", ""]
    lines += [f"- `{result['command']}`" for _, result in models]
    lines.append("")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    previous = open(args.out).read() if os.path.exists(args.out) else ""
    at = previous.find("### Reading")  # a hand-written reading survives a rewrite of the table
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + ("\n" + previous[at:] if at >= 0 else ""))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
