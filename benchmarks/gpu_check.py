"""The prepared CUDA check: one command, sized for about 8 minutes of a lent H100/H200.

    .venv/bin/python -m benchmarks.gpu_check                 # on the GPU machine
    .venv/bin/python -m benchmarks.gpu_check --dry           # the same steps, tiny, on CPU (checks the script)

Steps, in order, each under its own time limit (a step that overruns is
reported as such and the next one runs):
1. the device tests (tests/test_cuda.py) with CUDA visible;
2. `mmf_run` of projects/fashionvil/configs/pretrain.yaml at the paper's sizes
   (ResNet-50 and a BERT-base-shaped text model, random weights: the machine
   has no hub; 224 px; bf16 autocast; channels_last) on a synthetic world
   generated at 224 px, for a fixed number of updates, without and with
   torch.compile; samples/s and peak memory come from the run's train.jsonl,
   MFU from the FLOPs of one forward + backward counted by FlopCounterMode
   (benchmarks/bench_gpu.py's counter) over the peak bf16 FLOP/s of the device;
3. the same run in fp32 without autocast or compile: the reference ratio;
4. the chunked full ranking at 100k x 100k on the GPU (benchmarks/bench_ranking.py);
5. a few DDP updates of the same model under `torchrun --nproc_per_node=1`, so
   that NCCL initialises (MMF's own launcher refuses a world of one process:
   "Cannot initialize distributed with distributed_world_size=1", so this step
   drives DistributedDataParallel directly; gloo in the dry run).
Writes benchmarks/results/gpu_check.md (with the device name) and a log per step
under --work-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
PRETRAIN = "projects/fashionvil/configs/pretrain.yaml"
VQVAE = "projects/vqvae/configs/train.yaml"

# BERT-base shape and ResNet-50 at 224 px, random weights (nothing downloaded: the
# project config's image_encoder.pretrained is null, the text model "tiny" is random)
PAPER = {
    "image_size": 224,
    "products": 600,
    "batch_size": 64,
    "updates": 30,
    "vqvae_updates": 20,
    "image_encoder": "resnet50",
    "text": "{name: tiny, hidden_size: 768, num_hidden_layers: 12, "
    "num_attention_heads: 12, intermediate_size: 3072, dropout: 0.1}",
    "contrastive_dim": 256,
    "ranking_n": 100_000,
}
DRY = {
    "image_size": 64,
    "products": 40,
    "batch_size": 4,
    "updates": 3,
    "vqvae_updates": 2,
    "image_encoder": "resnet18",
    "text": "{name: tiny, hidden_size: 32, num_hidden_layers: 1, "
    "num_attention_heads: 2, intermediate_size: 64, dropout: 0.0}",
    "contrastive_dim": 16,
    "ranking_n": 2_000,
}


def run_step(name: str, command: List[str], work: Path, limit: int, env: Optional[Dict] = None) -> Dict:
    """Run one step, its output to <work>/<name>.log; never raises."""
    log = work / f"{name}.log"
    start = time.time()
    with open(log, "w") as handle:
        try:
            code = subprocess.run(
                command,
                cwd=ROOT,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                timeout=limit,
            ).returncode
            status = "ok" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"over its {limit} s limit"
    seconds = time.time() - start
    print(f"[{name}] {status} in {seconds:.0f} s (log: {log})", flush=True)
    return {"step": name, "status": status, "seconds": seconds, "log": str(log)}


def check_run_command(config: str, model: str, save: Path, data: Path, size: Dict, extra: List[str]) -> List[str]:
    """mmf_run (as the demo starts it) on the check's world, evaluation and checkpoints off."""
    from mmf_fashion.demo import mmf_run_command

    settings = [
        f"env.save_dir={save}",
        f"env.data_dir={data}",
        "training.log_interval=5",
        f"training.batch_size={size['batch_size']}",
        "training.evaluation_interval=100000",
        "training.checkpoint_interval=100000",
        "run_type=train",
    ]
    return mmf_run_command(config, model, "fashiongen", settings + list(extra))


def pretrain_overrides(size: Dict, device: str, tokenizer: Path) -> List[str]:
    return [
        f"model_config.fashionvil.image_encoder.name={size['image_encoder']}",
        f"model_config.fashionvil.text_encoder={size['text']}",
        f"model_config.fashionvil.contrastive_dim={size['contrastive_dim']}",
        f"model_config.fashionvil.tokenizer_checkpoint={tokenizer}",
        f"training.max_updates={size['updates']}",
        f"training.device={device}",
        "training.num_workers=4",
    ]


def last_train_record(save: Path) -> Dict:
    path = save / "train.jsonl"
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def model_flops_per_sample(size: Dict, data: Path, tokenizer: Path, device: str) -> Optional[float]:
    """FLOPs of one forward + backward of the pretraining model on a batch of 2, per sample."""
    import torch

    from benchmarks.bench_gpu import count_flops
    from mmf_fashion.runtime import build_model_from_config, build_split_dataset, load_config, split_loader

    overrides = pretrain_overrides(size, device, tokenizer) + [f"env.data_dir={data}"]
    config = load_config(str(ROOT / PRETRAIN), "fashionvil", "fashiongen", overrides)
    model = build_model_from_config(config, device=device).train()
    batch = next(iter(split_loader(build_split_dataset(config, "fashiongen", "train"), batch_size=2))).to(device)

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            losses = model(batch)["losses"]
        sum(value.float().mean() for value in losses.values()).backward()

    return count_flops(step) / 2


def ddp_updates(size: Dict, data: Path, tokenizer: Path, device: str) -> None:
    """Under torchrun: NCCL (gloo on CPU) process group, the pretraining model in DDP, a few updates."""
    import torch
    import torch.distributed as dist

    from mmf_fashion.runtime import build_model_from_config, build_split_dataset, load_config, split_loader

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        overrides = pretrain_overrides(size, device, tokenizer) + [f"env.data_dir={data}"]
        config = load_config(str(ROOT / PRETRAIN), "fashionvil", "fashiongen", overrides)
        model = build_model_from_config(config, device=device).train()
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.startswith("cuda") else None, find_unused_parameters=True
        )
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
        loader = split_loader(build_split_dataset(config, "fashiongen", "train"), batch_size=size["batch_size"])
        for update, batch in zip(range(size["updates"]), loader):
            losses = ddp(batch.to(device))["losses"]
            loss = sum(value.mean() for value in losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(f"[ddp] rank {dist.get_rank()} update {update + 1}: loss {loss.item():.4f}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on CPU: checks the script, measures nothing")
    parser.add_argument("--work-dir", default=str(ROOT / "save" / "gpu_check"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.md"))
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--ddp-updates", action="store_true", help=argparse.SUPPRESS)  # step 5, under torchrun
    args = parser.parse_args(argv)

    import torch

    from benchmarks.bench_gpu import peak_flops

    dry = args.dry or not torch.cuda.is_available()
    size, device = (DRY, "cpu") if dry else (PAPER, "cuda")
    # about 8 minutes in all on the GPU; compiling takes most of the compiled run's limit
    limits = (
        {"tests": 90, "vqvae": 60, "run": 150, "ranking": 90, "torchrun": 60}
        if not dry
        else {"tests": 300, "vqvae": 300, "run": 300, "ranking": 120, "torchrun": 300}
    )
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "world"
    tokenizer = work / "vqvae" / "fashion_vqvae_final.pth"
    if args.ddp_updates:
        ddp_updates(size, data, tokenizer, device)
        return 0
    steps = []
    device_name = torch.cuda.get_device_name(0) if not dry else "CPU (dry run)"
    print(f"gpu_check on {device_name}; work dir {work}", flush=True)

    steps.append(run_step("tests", [sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"], work, limits["tests"]))
    if not (data / "fashiongen").is_dir():
        steps.append(
            run_step(
                "world",
                [
                    sys.executable,
                    "-m",
                    "mmf_fashion.cli.main",
                    "data",
                    "synth",
                    "--out",
                    str(data),
                    "--products",
                    str(size["products"]),
                    "--image-size",
                    str(size["image_size"]),
                    "--no-progress",
                ],
                work,
                limits["run"],
            )
        )
    steps.append(
        run_step(
            "vqvae",
            check_run_command(
                VQVAE,
                "fashion_vqvae",
                work / "vqvae",
                data,
                size,
                [f"training.max_updates={size['vqvae_updates']}", f"training.device={device}"],
            ),
            work,
            limits["vqvae"],
        )
    )

    bf16 = ["training.amp.enabled=True", "training.amp.dtype=bfloat16", "training.channels_last=True"]
    variants = {
        "bf16_eager": bf16 + ["training.compile=False"],
        "bf16_compile": bf16 + ["training.compile=True"],
        "fp32_eager": ["training.amp.enabled=False", "training.compile=False"],
    }
    if dry:  # inductor compiles this model for over 5 minutes on 2 CPU cores: the GPU run covers it
        variants.pop("bf16_compile")
    runs = {}
    for name, extra in variants.items():
        save = work / name
        command = check_run_command(
            PRETRAIN, "fashionvil", save, data, size, pretrain_overrides(size, device, tokenizer) + extra
        )
        steps.append(run_step(name, command, work, limits["run"]))
        runs[name] = last_train_record(save)

    ranking_out = work / "ranking.md"
    steps.append(
        run_step(
            "ranking",
            [
                sys.executable,
                "-m",
                "benchmarks.bench_ranking",
                "--n",
                str(size["ranking_n"]),
                "--device",
                device,
                "--out",
                str(ranking_out),
            ],
            work,
            limits["ranking"],
        )
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        "-m",
        "benchmarks.gpu_check",
        "--ddp-updates",
        "--work-dir",
        str(work),
        *(["--dry"] if dry else []),
    ]
    steps.append(run_step("torchrun", torchrun, work, limits["torchrun"]))

    flops = None
    try:
        flops = model_flops_per_sample(size, data, tokenizer, device)
    except Exception as error:  # noqa: BLE001 - reported in the table, the check goes on
        print(f"[flops] not counted: {type(error).__name__}: {error}", flush=True)
    peak, peak_name = peak_flops(device_name, args.peak_tflops) if not dry else (None, "n/a on CPU")

    lines = [
        f"# CUDA check ({'dry run on CPU: sizes are tiny, figures mean nothing' if dry else device_name})",
        "",
        f"torch {torch.__version__}; batch {size['batch_size']}, {size['updates']} updates, "
        f"{size['image_size']} px; peak bf16: {peak_name}",
        "",
        "| step | status | seconds |",
        "|---|---|---:|",
    ]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} |" for s in steps]
    lines += ["", "| run | samples/s | peak memory (GiB) | MFU |", "|---|---:|---:|---:|"]
    for name, record in runs.items():
        rate = record.get("train/samples_per_s")
        memory = record.get("train/max_memory_gib")
        utilisation = f"{100 * flops * rate / peak:.1f}%" if (flops and rate and peak) else "-"
        lines.append(f"| {name} | {rate:.1f} |" if rate else f"| {name} | - |")
        lines[-1] += f" {memory:.1f} | {utilisation} |" if memory else f" - | {utilisation} |"
    eager, fp32 = (
        runs.get("bf16_eager", {}).get("train/samples_per_s"),
        runs.get("fp32_eager", {}).get("train/samples_per_s"),
    )
    if eager and fp32:
        lines += ["", f"bf16 eager / fp32 eager samples/s: {eager / fp32:.2f}x (target >= 1.3x)"]
    if ranking_out.is_file():
        lines += ["", ranking_out.read_text()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not dry:
        Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
