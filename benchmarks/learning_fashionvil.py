"""Does FashionViL learn, and does pretraining help? (issue 5, part 7)

    .venv/bin/python -m benchmarks.learning_fashionvil [--jobs 2] [--threads 1] \
        [--variants full,no_mvc,no_pac] [--tasks itr,tgir,scr,ocir] [--ablation-tasks itr,scr] \
        [--save-dir save/learning] [--out benchmarks/results/learning_fashionvil.md]

Every run is a plain `mmf_run` of the project configs (the same commands as
`make demo`, see mmf_fashion.demo), on the synthetic world in --data-dir:
1. the VQ-VAE tokenizer (reused from --tokenizer when that file exists);
2. pretraining, once per variant: ``full`` (all six tasks, the demo's
   ratios), ``no_mvc`` and ``no_pac`` (the paper's ablations: that task's
   ratio set to 0, the others renormalised by the task sampler);
3. each downstream task fine-tuned from the ``full`` pretraining and from
   scratch, and the --ablation-tasks from the ablated variants too (``checkpoint.resume_file=null``: same model, same schedule,
   random initialisation);
4. each downstream task evaluated with no training at all (``untrained``,
   run_type=val): the empirical chance level of that metric.
Runs go --jobs at a time, each with --threads torch threads. One seed (the
configs' training.seed); the differences below a few points are within the
noise of validation sets of this size, which the table says. A run whose
metrics.json already exists under --save-dir is reused (delete it to redo).
Every figure is a percent; SCR's accuracy and macro_f1 were fractions 0-1 in
runs recorded before they were registered in percent, so delete such scr_*
runs rather than mixing them into a table (--report-only included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import torch

from mmf_fashion.demo import STEPS, ensure_data, mmf_run_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {name: (config, model, dataset) for name, config, model, dataset, _ in STEPS}
VARIANTS = {
    "full": [],
    "no_mvc": ["model_config.fashionvil.pretraining.tasks.mvc=0.0"],
    "no_pac": ["model_config.fashionvil.pretraining.tasks.pac=0.0"],
}
# the metrics the table keeps for each task (the rest stay in each run's metrics.json)
HEADLINE = {
    "pretrain": ["r@k_general/i2t_r@1", "r@k_general/t2i_r@1", "r@k_general/avg"],
    "itr": ["r@k_general/i2t_r@1", "r@k_general/i2t_r@10", "r@k_general/t2i_r@1", "r@k_general/t2i_r@10", "r@k_general/avg"],
    "tgir": ["r@k_fashioniq/r@10", "r@k_fashioniq/r@50"],
    "scr": ["accuracy/value", "macro_f1/value"],
    "ocir": ["r@k_ocir/r@10", "r@k_ocir/r@30", "r@k_ocir/r@50"],
}


def command_text(step: str, overrides: List[str]) -> str:
    config, model, dataset = CONFIGS[step]
    text = " ".join(["mmf_run", f"config={config}", f"model={model}", f"dataset={dataset}", *overrides])
    return text.replace(REPO + os.sep, "")  # paths as typed from the repository root


def run(name: str, step: str, save_root: str, data_dir: str, overrides: List[str], threads: int) -> Dict:
    """One mmf_run in a subprocess; returns its metrics.json and wall time (raises with the log tail on failure)."""
    config, model, dataset = CONFIGS[step]
    save_dir = os.path.join(save_root, name)
    command = command_text(step, overrides)
    done = os.path.join(save_dir, "metrics.json")
    if os.path.exists(done):
        with open(done) as f:
            print(f"[learning] {name}: reused {done}", flush=True)
            return {"name": name, "seconds": recorded_seconds(save_dir), "metrics": json.load(f), "command": command}
    args = [f"env.save_dir={save_dir}", f"env.data_dir={os.path.abspath(data_dir)}", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(save_root, exist_ok=True)
    log_path = os.path.join(save_root, f"{name}.log")
    start = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run(mmf_run_command(config, model, dataset, args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    elapsed = time.time() - start
    if code != 0:
        with open(log_path) as f:
            raise RuntimeError(f"{name} failed (exit {code}); log {log_path}:\n{f.read()[-2500:]}")
    with open(os.path.join(save_dir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(save_dir, WALL_TIME_FILE), "w") as f:
        f.write(f"{elapsed:.1f}\n")
    print(f"[learning] {name}: {elapsed:.0f}s", flush=True)
    return {"name": name, "seconds": elapsed, "metrics": metrics, "command": command}


WALL_TIME_FILE = "wall_seconds.txt"  # written next to metrics.json, so a reused run keeps its time


def recorded_seconds(save_dir: str) -> float:
    """The wall time a finished run recorded (NaN for runs made before the file existed)."""
    try:
        with open(os.path.join(save_dir, WALL_TIME_FILE)) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return float("nan")


def seconds_text(seconds: float) -> str:
    return "not recorded" if seconds != seconds else f"{seconds:.0f}"


def headline(step: str, metrics: Dict) -> Dict[str, float]:
    found = {}
    for suffix in HEADLINE[step]:
        for key, value in metrics.items():
            if key.startswith("val/") and key.endswith(suffix):
                found[suffix] = float(value)
    return found


def read_back(name: str, step: str, save_root: str, data_dir: str, overrides: List[str], threads: int) -> Dict:
    """--report-only: the finished run's metrics, or a 'missing' marker; trains nothing."""
    path = os.path.join(save_root, name, "metrics.json")
    if not os.path.exists(path):
        return {"name": name, "missing": True}
    with open(path) as f:
        return {"name": name, "seconds": recorded_seconds(os.path.join(save_root, name)), "metrics": json.load(f),
                "command": command_text(step, overrides)}


def parallel(jobs: int, calls: List[Tuple], runner=run) -> List[Dict]:
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda call: runner(*call), calls))


def wall_text(args, results: Dict[str, Dict], total: float) -> str:
    if not args.report_only:
        return f"{total / 60:.0f} min wall"
    recorded = [r["seconds"] for r in results.values() if r["seconds"] == r["seconds"]]
    return (f"tables rewritten with --report-only from the finished runs; the {len(recorded)} runs with a recorded "
            f"time took {sum(recorded) / 60:.0f} min of run time, {args.jobs} at a time")


READING_HEADING = "### Reading"  # a hand-written section under this heading survives a rewrite of the tables


def kept_reading(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        text = f.read()
    at = text.find(READING_HEADING)
    return "" if at < 0 else "\n" + text[at:].rstrip() + "\n"


def format_report(args, results: Dict[str, Dict], tasks: List[str], variants: List[str], load: Optional[Tuple], total: float) -> str:
    lines = [
        "## FashionViL: learning evidence on the synthetic world",
        "",
        f"Command: `.venv/bin/python -m benchmarks.learning_fashionvil --jobs {args.jobs} --threads {args.threads} "
        f"--variants {','.join(variants)} --tasks {','.join(tasks)} --ablation-tasks {args.ablation_tasks}"
        f"{'' if args.seed is None else f' --seed {args.seed}'}{'' if args.save_dir == 'save/learning' else f' --save-dir {args.save_dir}'}"
        f"{'' if args.out == 'benchmarks/results/learning_fashionvil.md' else f' --out {args.out}'}` ({wall_text(args, results, total)}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {platform.machine()}, load average at start {load}).",
        f"Data: `{args.data_dir}` (synthetic world, {args.products} products, {args.image_size} px). One seed; the "
        "project configs' sizes and schedules (the `make demo` sizes). `untrained` = the model evaluated with "
        "random weights and no training (the empirical chance level); `scratch` = fine-tuned from random weights "
        "with the same schedule; the other columns = fine-tuned from that pretraining variant.",
        "",
        "### Pretraining (validation retrieval with the pretrained late-fusion embeddings, no fine-tuning)",
        "",
        "| variant | " + " | ".join(HEADLINE["pretrain"]) + " | time (s) |",
        "|---|" + "---|" * (len(HEADLINE["pretrain"]) + 1),
    ]
    for variant in variants:
        result = results.get(f"pretrain_{variant}")
        if result:
            values = headline("pretrain", result["metrics"])
            lines.append(f"| {variant} | " + " | ".join(f"{values.get(k, float('nan')):.2f}" for k in HEADLINE["pretrain"]) + f" | {seconds_text(result['seconds'])} |")
    columns = ["untrained", "scratch", *variants]
    lines += ["", "### Downstream tasks", "", "| task | metric | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for task in tasks:
        per_column = {column: headline(task, results[f"{task}_{column}"]["metrics"]) for column in columns if f"{task}_{column}" in results}
        for metric in HEADLINE[task]:
            cells = [f"{per_column[c][metric]:.2f}" if c in per_column and metric in per_column[c] else "-" for c in columns]
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Commands (each also with `env.save_dir=... env.data_dir=...`):", ""]
    for name, result in sorted(results.items()):
        lines.append(f"- `{name}`: `{result['command']}` ({seconds_text(result['seconds'])} s)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/synthetic")
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--save-dir", default="save/learning")
    parser.add_argument("--tokenizer", default="save/demo/tokenizer/fashion_vqvae_final.pth")
    parser.add_argument("--variants", default="full,no_mvc,no_pac")
    parser.add_argument("--tasks", default="itr,tgir,scr,ocir")
    parser.add_argument("--ablation-tasks", default="itr,scr", help="tasks fine-tuned from the ablated variants")
    parser.add_argument("--seed", type=int, default=None,
                        help="training.seed of every run (default: the configs' own seed); use another --save-dir per seed")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/learning_fashionvil.md")
    parser.add_argument("--report-only", action="store_true", help="write the table from the runs already in --save-dir, run nothing")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    variants = [v for v in args.variants.split(",") if v]
    tasks = [t for t in args.tasks.split(",") if t]
    ablation_tasks = [t for t in args.ablation_tasks.split(",") if t]
    seeded = [] if args.seed is None else [f"training.seed={args.seed}"]
    unknown = sorted(set(variants) - set(VARIANTS)) + sorted(set(tasks) - set(HEADLINE) - {"pretrain"})
    if unknown:
        parser.error(f"unknown variants/tasks {unknown}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.time()
    ensure_data(args.data_dir, args.products, args.image_size, seed=0)
    results: Dict[str, Dict] = {}
    runner = read_back if args.report_only else run

    tokenizer = args.tokenizer
    if not os.path.exists(tokenizer) and not args.report_only:
        results["tokenizer"] = run("tokenizer", "tokenizer", args.save_dir, args.data_dir, ["run_type=train"], args.threads * args.jobs)
        tokenizer = os.path.join(args.save_dir, "tokenizer", "fashion_vqvae_final.pth")

    pretrain_calls = [
        (f"pretrain_{v}", "pretrain", args.save_dir, args.data_dir,
         ["run_type=train_val", f"model_config.fashionvil.tokenizer_checkpoint={os.path.abspath(tokenizer)}", *VARIANTS[v],
          *seeded], args.threads)
        for v in variants
    ]
    finetune_calls = []
    for task in tasks:
        finetune_calls.append((f"{task}_untrained", task, args.save_dir, args.data_dir, ["run_type=val", "checkpoint.resume_file=null", *seeded], args.threads))
        finetune_calls.append((f"{task}_scratch", task, args.save_dir, args.data_dir, ["run_type=train_val", "checkpoint.resume_file=null", *seeded], args.threads))
    # runs that do not need a pretrained checkpoint share the first wave with the pretraining runs
    first_wave = parallel(args.jobs, pretrain_calls + finetune_calls, runner)
    results.update({r["name"]: r for r in first_wave if not r.get("missing")})
    second_wave = [
        (f"{task}_{v}", task, args.save_dir, args.data_dir,
         ["run_type=train_val", f"checkpoint.resume_file={os.path.abspath(os.path.join(args.save_dir, f'pretrain_{v}', 'fashionvil_final.pth'))}",
          *seeded], args.threads)
        for v in variants for task in tasks if v == "full" or task in ablation_tasks
    ]
    results.update({r["name"]: r for r in parallel(args.jobs, second_wave, runner) if not r.get("missing")})

    report = format_report(args, results, tasks, variants, load, time.time() - start) + kept_reading(args.out)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
