"""`make demo`: the FashionViL chain on the synthetic world, then one results table.

Cheatsheet::

    python -m mmf_fashion.demo                      # everything, default data dir
    python -m mmf_fashion.demo --steps pretrain,itr  # a subset
    python -m mmf_fashion.demo --save-dir save/demo --data-dir data/synthetic

Each step is a plain `mmf_run` of a project config (what a user would type),
run as a subprocess; the table is read back from each step's metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (step, config, model, dataset, extra overrides)
STEPS = [
    ("tokenizer", "projects/vqvae/configs/train.yaml", "fashion_vqvae", "fashiongen", []),
    ("pretrain", "projects/fashionvil/configs/pretrain.yaml", "fashionvil", "fashiongen", []),
    ("itr", "projects/fashionvil/configs/itr.yaml", "fashionvil", "fashiongen", []),
    ("tgir", "projects/fashionvil/configs/tgir.yaml", "fashionvil", "fashioniq", []),
    ("scr", "projects/fashionvil/configs/scr.yaml", "fashionvil", "fashiongen", []),
    ("ocir", "projects/fashionvil/configs/ocir.yaml", "fashionvil", "polyvore_ocir", []),
]


def mmf_run_command(config: str, model: str, dataset: str, overrides: List[str]) -> List[str]:
    # the start-up hook installs the bridge on `import mmf`; mmf_cli.run is MMF's own entry point
    return [sys.executable, "-c", "from mmf_cli.run import run; run()", f"config={config}", f"model={model}", f"dataset={dataset}", *overrides]


def ensure_data(data_dir: str, products: int, image_size: int, seed: int) -> None:
    if os.path.exists(os.path.join(data_dir, "synth_manifest.json")):
        print(f"[demo] synthetic data found in {data_dir}")
        return
    print(f"[demo] generating the synthetic fashion world in {data_dir}")
    from mmf_fashion.data.synth import generate

    generate(data_dir, products=products, image_size=image_size, seed=seed, progress=True)


def run_step(name, config, model, dataset, overrides, save_root, data_dir, log_dir) -> Dict:
    save_dir = os.path.join(save_root, name)
    args = [f"env.save_dir={save_dir}", f"env.data_dir={os.path.abspath(data_dir)}", "run_type=train_val", *overrides]
    if name != "tokenizer" and name != "pretrain":
        pretrained = os.path.join(save_root, "pretrain", "fashionvil_final.pth")
        args += [f"checkpoint.resume_file={pretrained}"]
    if name == "pretrain":
        tokenizer = os.path.join(save_root, "tokenizer", "fashion_vqvae_final.pth")
        args += [f"model_config.fashionvil.tokenizer_checkpoint={tokenizer}"]
    command = mmf_run_command(config, model, dataset, args)
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.log")
    print(f"[demo] {name}: mmf_run config={config} model={model} dataset={dataset}  (log: {log_path})", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.time() - start
    if result.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"[demo] step {name} failed (exit {result.returncode}) after {elapsed:.0f}s:\n{tail}")
    with open(os.path.join(save_dir, "metrics.json")) as f:
        metrics = json.load(f)
    print(f"[demo] {name}: done in {elapsed:.0f}s", flush=True)
    return {"step": name, "seconds": elapsed, "metrics": metrics}


def format_table(results: List[Dict]) -> str:
    lines = ["| step | metric | value |", "|---|---|---|"]
    for result in results:
        for key, value in result["metrics"].items():
            if key == "num_updates" or "/loss" in key or key.endswith("_loss"):
                continue
            lines.append(f"| {result['step']} | {key} | {value:.2f} |")
        lines.append(f"| {result['step']} | time (s) | {result['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/synthetic")
    parser.add_argument("--save-dir", default="save/demo")
    parser.add_argument("--steps", default=",".join(s[0] for s in STEPS))
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.chdir(REPO)
    ensure_data(args.data_dir, args.products, args.image_size, args.seed)
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {s[0] for s in STEPS})
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {[s[0] for s in STEPS]}")
    results = []
    start = time.time()
    for name, config, model, dataset, overrides in STEPS:
        if name in wanted:
            results.append(run_step(name, config, model, dataset, overrides, args.save_dir, args.data_dir, os.path.join(args.save_dir, "logs")))
    table = format_table(results)
    with open(os.path.join(args.save_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    print(f"\n[demo] total {time.time() - start:.0f}s; table saved to {os.path.join(args.save_dir, 'results.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
