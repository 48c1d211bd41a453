"""Training-loop benchmarks (issue: Performance), each a ratio measured in one run.

    .venv/bin/python -m benchmarks.bench_training [--steps 20] [--out benchmarks/results/training.md]

a. fashion_trainer step (MMF adapter, loss dict, AMP/accumulation plumbing)
   against a bare forward + backward + AdamW step of the same module on the
   same batch (target <= 1.10);
b. our `align` against transformers' AlignModel at a comparable small size:
   training samples per second (target >= 1.0);
c. the data loader (2 workers) against the model's consumption rate.
Runs on the synthetic fixture; CPU here, CUDA when available.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def build_trainer(data_dir: str, save_dir: str, image_size: int, batch_size: int, workers: int):
    from mmf.common.registry import registry

    from mmf_fashion.runtime import load_config

    overrides = [
        f"env.data_dir={data_dir}", f"env.save_dir={save_dir}", f"training.batch_size={batch_size}",
        f"training.num_workers={workers}", "training.log_interval=100000", "training.checkpoint_interval=100000",
        "training.evaluation_interval=100000", "training.max_updates=100000",
        f"dataset_config.fashiongen.image_size={image_size}",
    ]
    config = load_config("projects/align/configs/pretrain.yaml", "align", "fashiongen", overrides)
    trainer = registry.get_trainer_class("fashion_trainer")(config)
    trainer.load()
    trainer.max_updates = 10**9
    trainer._timer = time.time()
    trainer._start_update = 0
    trainer._set_train_mode()
    return trainer


def bench_overhead(trainer, steps: int):
    batch = trainer._prepare(next(iter(trainer.loaders["train"][0])))

    def trainer_step():
        losses = trainer._forward_backward(batch, sync=True)
        trainer._optimizer_step(losses)

    bare_model = copy.deepcopy(trainer.model)
    bare_optimizer = torch.optim.AdamW(bare_model.parameters(), lr=1e-4)

    def bare_step():
        output = bare_model(batch)
        loss = sum(v.mean() for v in output["losses"].values())
        bare_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bare_optimizer.step()

    t_trainer = timed(trainer_step, steps)
    t_bare = timed(bare_step, steps)
    return t_trainer, t_bare


def bench_hf_align(batch_size: int, image_size: int, steps: int, text_config: dict):
    """transformers AlignModel (EfficientNet-B0-like vision, same tiny BERT) vs ours."""
    from transformers import AlignConfig, AlignModel

    config = AlignConfig(
        text_config=dict(vocab_size=30522, hidden_size=text_config["hidden_size"], num_hidden_layers=text_config["num_hidden_layers"],
                         num_attention_heads=text_config["num_attention_heads"], intermediate_size=text_config["intermediate_size"]),
        vision_config=dict(image_size=image_size, width_coefficient=1.0, depth_coefficient=1.0),
        projection_dim=256,
    )
    model = AlignModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randn(batch_size, 3, image_size, image_size)
    ids = torch.randint(1000, 5000, (batch_size, 32))
    mask = torch.ones_like(ids)

    def step():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    parameters = sum(p.numel() for p in model.parameters())
    return timed(step, steps, warmup=2), parameters


def bench_loader(trainer, batches: int):
    loader = trainer.loaders["train"][0]
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        try:
            count += len(next(iterator)["image"])
        except StopIteration:
            iterator = iter(loader)
    return count / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--products", type=int, default=160)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "training.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    from mmf_fashion.data.synth import make_fixture

    work = tempfile.mkdtemp(prefix="mmf_fashion_bench_")
    data_dir = make_fixture(work, products=args.products, image_size=args.image_size, seed=0)
    trainer = build_trainer(str(data_dir), os.path.join(work, "save"), args.image_size, args.batch_size, workers=2)
    t_trainer, t_bare = bench_overhead(trainer, args.steps)
    align_config = trainer.config.model_config.align
    text = dict(align_config.text_encoder)
    ours_params = sum(p.numel() for p in trainer.model.parameters())
    t_hf, hf_params = bench_hf_align(args.batch_size, args.image_size, args.steps, text)
    loader_rate = bench_loader(trainer, 20)
    model_rate = args.batch_size / t_trainer
    rows = [
        ("a. trainer step / bare step (time)", f"{t_trainer * 1000:.0f} ms / {t_bare * 1000:.0f} ms", f"{t_trainer / t_bare:.3f}", "<= 1.10"),
        (f"b. align ({ours_params / 1e6:.1f}M) / transformers AlignModel ({hf_params / 1e6:.1f}M) (samples/s)",
         f"{args.batch_size / t_trainer:.1f} / {args.batch_size / t_hf:.1f}", f"{t_hf / t_trainer:.2f}", ">= 1.0"),
        ("c. loader (2 workers) / model consumption (samples/s)", f"{loader_rate:.0f} / {model_rate:.0f}", f"{loader_rate / model_rate:.2f}", "> 1.0"),
    ]
    header = (
        f"# Training-loop benchmark\n\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, device {trainer.device}, threads {torch.get_num_threads()}.\n"
        f"Command: `.venv/bin/python -m benchmarks.bench_training --steps {args.steps} --batch-size {args.batch_size} "
        f"--image-size {args.image_size}` (align pretrain config, tiny BERT, efficientnet_b0 at {args.image_size} px).\n\n"
        "| measurement | values | ratio | target |\n|---|---|---|---|\n"
    )
    table = header + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
