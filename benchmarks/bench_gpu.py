"""GPU benchmark at the paper's sizes: training samples/s and model FLOPs utilisation.

    .venv/bin/python -m benchmarks.bench_gpu [--batch-size 128] [--peak-tflops 989] [--rounds 10]
    .venv/bin/python -m benchmarks.bench_gpu --cpu-check     # the same code path, tiny, on CPU

An ALIGN-like dual encoder at the FashionViL paper's sizes: ResNet-50 image
tower (random weights), BERT-base text tower (12 x 768, 12 heads, built from
a transformers BertConfig: nothing is downloaded), 640-d embeddings, 224 px
images, text length 75, bf16 autocast (training.amp), channels_last. It is
our registered `align` model built by fashion_trainer from
projects/align/configs/pretrain.yaml with those overrides, on a batch of the
synthetic fixture. Three contenders, timed in alternating rounds:
- the fashion_trainer step (what `mmf_run` runs);
- a bare step of a deep copy (autocast forward, backward, torch AdamW);
- the same bare step with cudnn.benchmark on: the trainer sets
  cudnn.deterministic (and benchmark off) whenever training.seed is set.
Model FLOPs = torch.utils.flop_counter.FlopCounterMode over one forward +
backward of the bare copy (optimizer not counted; scaled-dot-product
attention counted on every backend, the CPU one included through a custom
mapping). MFU = FLOPs per step / seconds per step / the GPU's peak dense
bf16 FLOP/s, looked up from the device name (H100 SXM: 989e12) or given with
--peak-tflops; the assumed peak is printed and written.
Without CUDA it writes a section saying it was skipped and runs the CPU
check: the same trainer, model and FLOP counting at a tiny size, plus two
exactness checks of the counter (a Linear against 6*B*in*out, BERT with
SDPA against BERT with eager attention).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks.common import RESULTS_DIR, Row, Section, fmt_seconds, interleaved, machine_line, table

# peak dense bf16 FLOP/s (tensor cores, no sparsity), by device name; first match wins
PEAKS: List[Tuple[str, float, str]] = [
    ("H100 PCIe", 756e12, "H100 PCIe"),
    ("H100 NVL", 835e12, "H100 NVL"),
    ("GH200", 989e12, "GH200 (H100 SXM class)"),
    ("H100", 989e12, "H100 SXM"),
    ("H200", 989e12, "H200 (H100 SXM class compute)"),
    ("H800", 989e12, "H800 SXM"),
    ("A100", 312e12, "A100"),
    ("L40S", 362e12, "L40S"),
    ("L4", 121e12, "L4"),
]
DEFAULT_PEAK = (989e12, "unknown GPU: H100 SXM figure assumed (give --peak-tflops)")

PAPER = {
    "image_size": 224,
    "text_length": 75,
    "batch_size": 128,
    "embed_dim": 640,
    "image_encoder": "resnet50",
    "text": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
TINY = {
    "image_size": 32,
    "text_length": 16,
    "batch_size": 4,
    "embed_dim": 32,
    "image_encoder": "resnet50",
    "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256},
}


def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, query, key, value)


def custom_flop_mapping() -> Dict:
    """FlopCounterMode knows the CUDA attention kernels but not the CPU one: count it alike."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward
    return mapping


def count_flops(function) -> int:
    """FLOPs of one call of `function` (a forward + backward), counted by FlopCounterMode."""
    with FlopCounterMode(display=False, custom_mapping=custom_flop_mapping()) as counter:
        function()
    return int(counter.get_total_flops())


def peak_flops(device_name: str, override_tflops: Optional[float] = None) -> Tuple[float, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s given with --peak-tflops"
    for pattern, value, label in PEAKS:
        if pattern in device_name:
            return value, f"{value / 1e12:.0f} TFLOP/s dense bf16 ({label}, from the device name '{device_name}')"
    return DEFAULT_PEAK[0], f"{DEFAULT_PEAK[0] / 1e12:.0f} TFLOP/s ({DEFAULT_PEAK[1]}; device '{device_name}')"


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
    return flops_per_step / seconds_per_step / peak


def size_overrides(size: Dict, device: str) -> List[str]:
    text = size["text"]
    return [
        f"model_config.align.image_encoder={size['image_encoder']}",
        f"model_config.align.embed_dim={size['embed_dim']}",
        "model_config.align.text_pooling=cls",
        *(f"model_config.align.text_encoder.{key}={value}" for key, value in text.items()),
        f"dataset_config.fashiongen.processors.text_processor.params.max_length={size['text_length']}",
        "training.amp.enabled=true",
        "training.amp.dtype=bfloat16",
        f"training.channels_last={'true' if device.startswith('cuda') else 'false'}",
    ]


def bare_amp_step_fn(trainer, batch, cudnn_benchmark: Optional[bool] = None):
    """A deep copy of the model: bf16 autocast forward, float32 loss, backward, torch AdamW.
    cudnn_benchmark: True/False sets torch.backends.cudnn for this step only (restored after)."""
    model = copy.deepcopy(trainer.model)
    params = dict(trainer.config.optimizer.get("params", {}) or {})
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(params.get("lr", 1e-4)), weight_decay=float(params.get("weight_decay", 1e-2))
    )
    device_type = trainer.device.type

    def forward_backward():
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            output = model(batch)
        loss = sum(value.float().mean() for value in output["losses"].values())
        loss.backward()

    def step():
        saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn_benchmark, not cudnn_benchmark
        try:
            optimizer.zero_grad(set_to_none=True)
            forward_backward()
            optimizer.step()
        finally:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved

    return step, forward_backward, model, optimizer


def counter_checks() -> List[List[str]]:
    """Exactness of the FLOP counting path on CPU: [check, counted, expected, ok]."""
    rows = []
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64, requires_grad=True)
    counted = count_flops(lambda: linear(x).sum().backward())
    expected = 6 * 8 * 64 * 32  # forward 2BIO, backward 2BIO (input) + 2BIO (weight)
    rows.append(
        [
            "Linear(64, 32), batch 8, forward + backward",
            f"{counted:,}",
            f"{expected:,} (6 B I O)",
            "ok" if counted == expected else "MISMATCH",
        ]
    )
    from transformers import BertConfig, BertModel

    ids = torch.randint(1000, 2000, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0
    counts = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        bert = BertModel(
            BertConfig(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=256,
                attn_implementation=implementation,
            )
        )
        counts[implementation] = count_flops(
            lambda: bert(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
        )
    rows.append(
        [
            "BERT 2 x 64 with SDPA attention (CPU kernel, custom mapping), forward + backward",
            f"{counts['sdpa']:,}",
            f"{counts['eager']:,} (the same BERT, eager attention: plain matmuls)",
            "ok" if counts["sdpa"] == counts["eager"] else "MISMATCH",
        ]
    )
    peak, _ = peak_flops("NVIDIA H100 80GB HBM3")
    value = mfu(peak * 0.5, 1.0, peak)
    rows.append(
        [
            "peak lookup for 'NVIDIA H100 80GB HBM3' (H100 SXM) and MFU of half its peak",
            f"{peak / 1e12:.0f} TFLOP/s, MFU {value:.0%}",
            "989 TFLOP/s, MFU 50%",
            "ok" if peak == 989e12 and abs(value - 0.5) < 1e-12 else "MISMATCH",
        ]
    )
    return rows


def measure(
    size: Dict, device: str, rounds: int, calls: int, peak_tflops: Optional[float] = None, products: int = 0
) -> Dict:
    """Build the trainer at `size` on `device`, count FLOPs, time the contenders."""
    from benchmarks.bench_training import build_trainer, trainer_step_fn
    from mmf_fashion.data.synth import make_fixture

    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="mmf_fashion_bench_gpu_")
    products = products or max(48, int(size["batch_size"] * 1.6) + 16)  # ~70% of products are train
    started = time.perf_counter()
    data_dir = make_fixture(work, products=products, image_size=size["image_size"], seed=0)
    fixture_seconds = time.perf_counter() - started
    workers = min(8, max(2, (os.cpu_count() or 2) // 2))
    trainer = build_trainer(
        str(data_dir),
        os.path.join(work, "save"),
        size["image_size"],
        size["batch_size"],
        workers,
        device=device,
        extra=size_overrides(size, device),
    )
    cuda = trainer.device.type == "cuda"
    batch = trainer._prepare(next(iter(trainer.loaders["train"][0])))
    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)  # (the model too on CUDA)
    batch_size = int(batch["image"].shape[0])
    contenders = {"trainer": trainer_step_fn(trainer, batch)}
    bare, forward_backward, bare_model, bare_optimizer = bare_amp_step_fn(trainer, batch)
    contenders["bare"] = bare
    if cuda:
        contenders["bare, cudnn.benchmark"] = bare_amp_step_fn(trainer, batch, cudnn_benchmark=True)[0]
    bare_optimizer.zero_grad(set_to_none=True)
    flops = count_flops(forward_backward)
    bare_optimizer.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing_start = time.perf_counter()
    times = interleaved(contenders, rounds=rounds, calls=calls, warmup=3 if cuda else 1, sync=sync)
    timing_seconds = time.perf_counter() - timing_start
    shutil.rmtree(work, ignore_errors=True)
    device_name = torch.cuda.get_device_name(trainer.device) if cuda else "cpu"
    peak, peak_text = peak_flops(device_name, peak_tflops) if cuda or peak_tflops else (None, "no peak for a CPU")
    results = {}
    for name, values in times.items():
        seconds = statistics.median(values)
        results[name] = {
            "seconds": seconds,
            "samples_per_s": batch_size / seconds,
            "tflops": flops / seconds / 1e12,
            "mfu": mfu(flops, seconds, peak) if peak else None,
        }
    return {
        "results": results,
        "flops": flops,
        "batch_size": batch_size,
        "peak": peak,
        "peak_text": peak_text,
        "device": trainer.device,
        "device_name": device_name,
        "timing_seconds": timing_seconds,
        "fixture_seconds": fixture_seconds,
        "products": products,
        "workers": workers,
        "parameters": sum(p.numel() for p in bare_model.parameters()),
        "text_length": int(batch["input_ids"].shape[1]),
        "image_shape": tuple(batch["image"].shape[1:]),
        "max_memory": torch.cuda.max_memory_allocated(trainer.device) if cuda else None,
        "deterministic": bool(torch.backends.cudnn.deterministic),
        "rounds": rounds,
        "calls": calls,
    }


def describe(size: Dict, measured: Dict) -> str:
    text = size["text"]
    return (
        f"ALIGN-like dual encoder (our `align`): {size['image_encoder']} (random weights) + BERT "
        f"{text['num_hidden_layers']} x {text['hidden_size']} ({text['num_attention_heads']} heads, built "
        f"from a BertConfig, random weights), {size['embed_dim']}-d embeddings, [CLS] pooling, images "
        f"{measured['image_shape'][-1]} px, text length {measured['text_length']}, batch "
        f"{measured['batch_size']}, bf16 autocast; {measured['parameters'] / 1e6:.1f}M parameters"
    )


def results_table(measured: Dict) -> str:
    rows = []
    for name, r in measured["results"].items():
        rows.append(
            [
                name,
                fmt_seconds(r["seconds"]),
                f"{r['samples_per_s']:,.1f}",
                f"{r['tflops']:.2f}",
                f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a",
            ]
        )
    return table(["contender", "median time per step", "samples/s", "achieved TFLOP/s", "MFU"], rows, "lrrrr")


def run(
    out_dir: str = None,
    quick: bool = False,
    batch_size: Optional[int] = None,
    peak_tflops: Optional[float] = None,
    rounds: Optional[int] = None,
    force_cpu_check: bool = False,
) -> Section:
    started = time.time()
    load = os.getloadavg()[0]
    lines = ["## GPU: paper sizes (ResNet-50 + BERT-base, 224 px, bf16)", ""]
    if torch.cuda.is_available() and not force_cpu_check:
        size = dict(PAPER, batch_size=batch_size or PAPER["batch_size"])
        rounds = rounds or (4 if quick else 10)
        measured = measure(size, "cuda", rounds=rounds, calls=5, peak_tflops=peak_tflops)
        print(f"[bench_gpu] assumed peak: {measured['peak_text']}", flush=True)
        trainer_result = measured["results"]["trainer"]
        bare_result = measured["results"]["bare"]
        lines += [
            machine_line(measured["device"], load=load),
            "",
            describe(size, measured) + ".",
            "",
            f"Model FLOPs per step (FlopCounterMode, one forward + backward): {measured['flops'] / 1e12:.3f} TFLOP "
            f"= {measured['flops'] / measured['batch_size'] / 1e9:.1f} GFLOP per sample. "
            f"**Assumed peak: {measured['peak_text']}.** MFU = model FLOPs per step / seconds per step / peak.",
            "",
            f"Timing: {measured['rounds']} rounds of {measured['calls']} steps per contender, the order turning "
            f"every round, 3 warm-up steps each; medians. Peak memory allocated: "
            f"{measured['max_memory'] / 2**30:.1f} GiB. The trainer runs with cudnn.deterministic="
            f"{measured['deterministic']} (training.seed is set); the third row shows what cudnn.benchmark "
            f"would give.",
            "",
            results_table(measured),
            "",
            f"**fashion_trainer: {trainer_result['samples_per_s']:,.0f} samples/s, MFU "
            f"{trainer_result['mfu']:.1%}; bare step {bare_result['samples_per_s']:,.0f} samples/s, MFU "
            f"{bare_result['mfu']:.1%}; trainer / bare time "
            f"{trainer_result['seconds'] / bare_result['seconds']:.3f}.**",
        ]
        row = Row(
            "GPU, paper sizes, bf16: fashion_trainer samples/s and MFU",
            trainer_result["mfu"],
            f"{trainer_result['samples_per_s']:,.0f} samples/s, MFU {trainer_result['mfu']:.1%}",
            "recorded",
            None,
            "results/gpu_paper_sizes.md",
        )
    else:
        reason = (
            "forced CPU check"
            if force_cpu_check and torch.cuda.is_available()
            else "torch.cuda.is_available() is False"
        )
        print(f"[bench_gpu] GPU benchmark skipped: {reason}; running the CPU check of its code path", flush=True)
        checks = counter_checks()
        measured = measure(TINY, "cpu", rounds=1, calls=1, peak_tflops=None)
        r = measured["results"]["trainer"]
        lines += [
            machine_line(measured["device"], load=load),
            "",
            f"**Skipped: no CUDA device here ({reason}).** On a CUDA machine `make bench` (or "
            "`python -m benchmarks.bench_gpu`) runs it at ResNet-50 + BERT-base, 224 px, bf16, batch "
            f"{PAPER['batch_size']}, and writes samples/s and MFU here.",
            "",
            "CPU check of the same code path at a tiny size (fixture, trainer with bf16 autocast, bare step, "
            "interleaved timing, FLOP counting):",
            "",
            describe(TINY, measured) + ".",
            "",
            f"Counted model FLOPs per step: {measured['flops'] / 1e9:.3f} GFLOP "
            f"({measured['flops'] / measured['batch_size'] / 1e6:.1f} MFLOP per sample); "
            f"trainer step {fmt_seconds(r['seconds'])}, {r['samples_per_s']:.1f} samples/s, "
            f"{r['tflops'] * 1e3:.2f} GFLOP/s achieved; MFU not computed ({measured['peak_text']}).",
            "",
            "Exactness of the FLOP counter:",
            "",
            table(["check", "counted FLOPs", "expected", "result"], checks, "lrrl"),
        ]
        ok = all(c[-1] == "ok" for c in checks) and measured["flops"] > 0
        row = Row(
            "GPU, paper sizes, bf16: samples/s and MFU",
            None,
            f"skipped: no CUDA (CPU check of the FLOP counting path: {'ok' if ok else 'FAILED'})",
            "recorded",
            None if ok else False,
            "results/gpu_paper_sizes.md",
        )
    lines += ["", f"(benchmark wall time {time.time() - started:.0f} s)"]
    section = Section(
        "gpu_paper_sizes", "GPU paper sizes", [row], "\n".join(lines), seconds=time.time() - started, quick=quick
    )
    section.write(out_dir or RESULTS_DIR)
    return section


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the GPU")
    parser.add_argument("--cpu-check", action="store_true", help="run the tiny CPU check even with CUDA")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    section = run(args.out_dir, args.quick, args.batch_size, args.peak_tflops, args.rounds, args.cpu_check)
    print(section.markdown)
    return 0 if all(row.passed is not False for row in section.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
