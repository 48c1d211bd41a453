"""`make demo`: the FashionViL chain on the synthetic world, then one results table.

Cheatsheet::

    python -m mmf_fashion.demo                      # everything, default data dir
    python -m mmf_fashion.demo --steps pretrain,itr  # a subset
    python -m mmf_fashion.demo --save-dir save/demo --data-dir data/synthetic

Each step is a plain `mmf_run` of a project config (what a user would type),
run as a subprocess; the table is read back from each step's metrics.json.
While a step runs, a bar follows its updates (rate, ETA, last loss) from the
train.jsonl and train.log it writes; when it ends, its key metric is printed.

The four fine-tunes only need the pretraining, so they run `--jobs` at a time
(default: 2 where there are 2 CPUs or more), the CPUs shared out between them:
small models use two single-threaded runs better than one run on two threads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

POLL_SECONDS = 0.5
# what fashion_trainer logs once the run knows its length (train.log of the save_dir)
START_LINE = re.compile(r"Starting training at update (\d+) of (\d+)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _updates(count: int) -> List[str]:
    return [f"training.{key}={count}" for key in ("max_updates", "evaluation_interval", "checkpoint_interval")]


# (step, config, model, dataset, extra overrides): the project configs, with the demo's schedules. Its world
# is small: images are decoded faster in the training process than handed over by worker processes. The
# fine-tunes run two at a time (OCIR beside SCR, TGIR and ITR), so these schedules fill two lanes of equal
# length; figures measured on the demo world, one seed.
NO_WORKERS = "training.num_workers=0"
STEPS = [
    # 120 updates: reconstruction error 0.98 (0.77 at 200); its codes are only MPFC's targets
    ("tokenizer", "projects/vqvae/configs/train.yaml", "fashion_vqvae", "fashiongen", [NO_WORKERS, *_updates(120)]),
    ("pretrain", "projects/fashionvil/configs/pretrain.yaml", "fashionvil", "fashiongen", [NO_WORKERS]),
    # R@k avg 41.2 at 250 updates, 32.2 at 200
    ("itr", "projects/fashionvil/configs/itr.yaml", "fashionvil", "fashiongen", [NO_WORKERS, *_updates(250)]),
    # R@10 38.3 at 200 updates, 33.8 at 150
    ("tgir", "projects/fashionvil/configs/tgir.yaml", "fashionvil", "fashioniq", [NO_WORKERS, *_updates(200)]),
    # accuracy 40.1 at 200 updates, 13.7 at 120
    ("scr", "projects/fashionvil/configs/scr.yaml", "fashionvil", "fashiongen", [NO_WORKERS]),
    # every in-batch blank as a negative, not only those of the query's category (the paper-faithful
    # default), and 64 of them: R@10 53.1 (batch 64, 140 updates) against 46.1 (batch 32, 280 updates,
    # the same images seen) and 42.7 (batch 32, same-category negatives, 150 updates)
    (
        "ocir",
        "projects/fashionvil/configs/ocir.yaml",
        "fashionvil",
        "polyvore_ocir",
        [NO_WORKERS, "model_config.fashionvil.ocir.negatives=all", "training.batch_size=64", *_updates(140)],
    ),
]
# steps that start from another one's checkpoint; the others (the fine-tunes) may run side by side
NEEDS = {"pretrain": "tokenizer", "itr": "pretrain", "tgir": "pretrain", "scr": "pretrain", "ocir": "pretrain"}


def mmf_run_command(config: str, model: str, dataset: str, overrides: List[str]) -> List[str]:
    # the start-up hook installs the bridge on `import mmf`; mmf_cli.run is MMF's own entry point
    return [
        sys.executable,
        "-c",
        "from mmf_cli.run import run; run()",
        f"config={config}",
        f"model={model}",
        f"dataset={dataset}",
        *overrides,
    ]


def thread_env(threads: Optional[int]) -> Dict[str, str]:
    """The environment of a child run limited to `threads` OpenMP / MKL / BLAS threads
    (None or 0: inherited), so that runs side by side do not oversubscribe the CPUs."""
    env = dict(os.environ)
    if threads:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def ensure_data(data_dir: str, products: Optional[int], image_size: Optional[int], seed: int) -> None:
    """The `demo` preset's world (docs/synthetic_data.md); products/image_size override it.
    A world written by an older generator or with other sizes is generated again."""
    from mmf_fashion.data.synth import GENERATOR_VERSION, generate, preset_arguments

    sizes = preset_arguments("demo")
    if products is not None:  # as `mmf-fashion data synth --products`: pairs and outfits follow
        sizes = {key: value for key, value in sizes.items() if key not in ("fashioniq_pairs", "outfits")}
    sizes.update({k: v for k, v in (("products", products), ("image_size", image_size)) if v is not None})
    manifest_path = os.path.join(data_dir, "synth_manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        found = {key: manifest.get(key) for key in sizes}
        if manifest.get("version") == GENERATOR_VERSION and found == sizes and manifest.get("seed") == seed:
            print(f"[demo] synthetic data found in {data_dir}")
            return
        print(
            f"[demo] {data_dir} holds another world (generator {manifest.get('version')}, {found}); "
            "generating the demo's again"
        )
        import shutil

        for name in ("fashiongen", "fashioniq", "polyvore_outfits", "synth_manifest.json"):
            path = os.path.join(data_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    print(f"[demo] generating the synthetic fashion world in {data_dir}: {sizes}")
    generate(data_dir, seed=seed, progress=True, **sizes)


class FileTail:
    """The complete lines appended to a file since this object was made: a
    save_dir reused by an earlier demo already holds that run's lines."""

    def __init__(self, path: str):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self.partial = ""

    def new_lines(self) -> List[str]:
        if not os.path.exists(self.path):
            return []
        if os.path.getsize(self.path) < self.offset:  # replaced by a fresh file
            self.offset, self.partial = 0, ""
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            handle.seek(self.offset)
            text = handle.read()
            self.offset = handle.tell()
        text = self.partial + text
        lines = text.split("\n")
        self.partial = lines.pop()  # a line still being written waits for its newline
        return [line for line in lines if line.strip()]


def bar_update(records: List[Dict], position: int) -> Tuple[int, Optional[str]]:
    """train.jsonl records -> (updates to add to a bar standing at `position`,
    postfix text or None). Records from before `position` (a resume) add nothing."""
    advance, postfix = 0, None
    for record in records:
        updates = int(record.get("num_updates", 0))
        if updates > position + advance:
            advance = updates - position
        if "train/total_loss" in record:
            postfix = f"loss {record['train/total_loss']:.4f}"
            if "train/lr" in record:
                postfix += f", lr {record['train/lr']:.1e}"
    return advance, postfix


class StepProgress:
    """Follows one step's save_dir while mmf_run writes it: the length of the run
    from train.log, the updates done and the last loss from train.jsonl."""

    def __init__(self, save_dir: str):
        self.records = FileTail(os.path.join(save_dir, "train.jsonl"))
        self.log = FileTail(os.path.join(save_dir, "train.log"))
        self.total: Optional[int] = None
        self.start: Optional[int] = None

    def poll(self, position: int) -> Tuple[Optional[int], int, Optional[str]]:
        """(total updates or None while unknown, updates to add, postfix or None)."""
        for line in self.log.new_lines():
            match = START_LINE.search(line)
            if match:
                self.start, self.total = int(match.group(1)), int(match.group(2))
        records = []
        for line in self.records.new_lines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # not ours to judge: the step's own tests check the file
        advance, postfix = bar_update(records, max(position, self.start or 0))
        if self.start and position < self.start:
            advance += self.start - position  # a resumed run starts at its checkpoint
        return self.total, advance, postfix


def key_metric(metrics: Dict[str, float], preferred: Optional[str] = None) -> Optional[Tuple[str, float]]:
    """The number a step is judged by: the `preferred` metric (a key ending with
    "/<preferred>") where there is one, else an average recall, else an
    accuracy-like value, else the first non-loss metric, else the first loss."""
    keys = [key for key in sorted(metrics) if key != "num_updates"]
    if preferred:
        found = [key for key in keys if key.endswith("/" + preferred)]
        if found:
            return found[0], float(metrics[found[0]])
    non_loss = [key for key in keys if len(key.split("/")) >= 4]
    for wanted in ("/avg", "/value"):
        found = [key for key in non_loss if key.endswith(wanted)]
        if found:
            return found[0], float(metrics[found[0]])
    chosen = (non_loss or keys or [None])[0]
    return (chosen, float(metrics[chosen])) if chosen else None


def _follow(process, save_dir: str, name: str, position: int = 0) -> None:
    """A bar of the step's updates until its process exits (`position`: its line among the bars)."""
    from tqdm import tqdm

    progress = StepProgress(save_dir)
    bar = tqdm(total=None, unit="update", desc=f"[demo] {name}", file=sys.stderr, dynamic_ncols=True, position=position)
    try:
        while True:
            finished = process.poll() is not None
            total, advance, postfix = progress.poll(bar.n)
            if total is not None and bar.total != total:
                bar.total = total
                bar.refresh()
            if advance:
                bar.update(advance)
            if postfix:
                bar.set_postfix_str(postfix)
            if finished:
                return
            time.sleep(POLL_SECONDS)
    finally:
        bar.close()


def run_step(
    name, config, model, dataset, overrides, save_root, data_dir, log_dir, threads: Optional[int] = None, position=0
) -> Dict:
    """One step as a subprocess; `threads` caps its torch/OpenMP threads (None: as the environment says)."""
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
    shown = " ".join([f"config={config}", f"model={model}", f"dataset={dataset}", *overrides])
    print(f"[demo] {name}: mmf_run {shown}  (log: {log_path})", flush=True)
    env = thread_env(threads)
    start = time.time()
    with open(log_path, "w") as log:
        # stderr is the log file, not a terminal: mmf_run writes plain progress lines there
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _follow(process, save_dir, name, position)
        finally:
            if process.poll() is None:  # interrupted: do not leave the run behind
                process.terminate()
            returncode = process.wait()
    elapsed = time.time() - start
    if returncode != 0:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        full_log = os.path.join(save_dir, "train.log")
        raise SystemExit(
            f"[demo] step {name} failed (exit {returncode}) after {elapsed:.0f}s:\n{tail}\n"
            f"[demo] log: {log_path} (MMF's log of the run: {full_log})"
        )
    with open(os.path.join(save_dir, "metrics.json")) as f:
        metrics = json.load(f)
    best = key_metric(metrics, KEY_METRICS.get(name))
    shown = f"; {best[0]} = {best[1]:.2f}" if best else ""
    print(f"[demo] {name}: done in {elapsed:.0f}s{shown}", flush=True)
    return {"step": name, "seconds": elapsed, "metrics": metrics}


# The figure each task is judged by (a metrics.json key ends with "/<metric>/<key>") and its
# chance level: mmf_fashion.data.synth.chance.demo_chance, computed exactly from the data.
MAIN_METRICS = {
    "itr": "r@k_general/avg",
    "tgir": "r@k_fashioniq/r@10",
    "scr": "accuracy/value",
    "ocir": "r@k_ocir/r@10",
}


# the figure printed when a step ends: the tasks' main metrics, the tokenizer's reconstruction
# error (its commitment loss is ~0 once the codebook has settled) and the pretraining's retrieval
KEY_METRICS = {**MAIN_METRICS, "tokenizer": "reconstruction", "pretrain": "r@k_general/avg"}


def run_steps(wanted: List[str], save_dir: str, data_dir: str, jobs: int) -> List[Dict]:
    """The wanted steps, each after the step it starts from (when that one is wanted too); steps that are
    ready together run `jobs` at a time, the CPUs shared out between them. Results in STEPS order."""
    log_dir = os.path.join(save_dir, "logs")
    todo = [step for step in STEPS if step[0] in wanted]
    done: Dict[str, Dict] = {}
    cpus = os.cpu_count() or 1
    while todo:
        ready = [step for step in todo if NEEDS.get(step[0]) not in wanted or NEEDS[step[0]] in done]
        todo = [step for step in todo if step not in ready]
        lanes = max(1, min(jobs, len(ready)))
        threads = max(1, cpus // lanes) if lanes > 1 else None
        if lanes == 1:
            for step in ready:
                done[step[0]] = run_step(*step, save_dir, data_dir, log_dir)
            continue
        # the longest first (STEPS lists the fine-tunes from the quickest, OCIR last); a lane keeps its bar line
        free = list(range(lanes))
        lock = threading.Lock()

        def lane_run(step):
            with lock:
                position = free.pop(0)
            try:
                return run_step(*step, save_dir, data_dir, log_dir, threads=threads, position=position)
            finally:
                with lock:
                    free.append(position)

        with ThreadPoolExecutor(max_workers=lanes) as pool:
            futures = {step[0]: pool.submit(lane_run, step) for step in reversed(ready)}
            failures = []
            for name, future in futures.items():
                try:
                    done[name] = future.result()
                except SystemExit as failure:  # the others finish; the first failure is reported
                    failures.append(failure)
        if failures:
            raise failures[0]
    return [done[step[0]] for step in STEPS if step[0] in done]


def world_chance(data_dir: str) -> Dict[str, float]:
    """Chance of each task's main metric in percent ({} when the world is not a synthetic one)."""
    from mmf_fashion.data.synth.chance import demo_chance

    try:
        return demo_chance(data_dir)
    except (OSError, KeyError, ValueError):
        return {}


def _chance_cells(step: str, key: str, chance: Dict[str, float], value: float) -> Tuple[str, str]:
    main = MAIN_METRICS.get(step)
    if main is None or step not in chance or not key.endswith("/" + main):
        return "", ""
    level = chance[step]
    return f"{level:.2f}", (f"{value / level:.1f}x" if level > 0 else "")


def format_table(results: List[Dict], chance: Optional[Dict[str, float]] = None) -> str:
    """Every figure of every step; the main metric of a task also gets its chance level and
    the ratio to it (a summary of those comes first)."""
    chance = chance or {}
    summary = ["| task | main metric | value | chance | x chance |", "|---|---|---|---|---|"]
    lines = ["| step | metric | value | chance | x chance |", "|---|---|---|---|---|"]
    for result in results:
        for key, value in result["metrics"].items():
            if key == "num_updates" or "/loss" in key or key.endswith("_loss"):
                continue
            level, ratio = _chance_cells(result["step"], key, chance, value)
            lines.append(f"| {result['step']} | {key} | {value:.2f} | {level} | {ratio} |")
            if level:
                summary.append(f"| {result['step']} | {key} | {value:.2f} | {level} | {ratio} |")
        lines.append(f"| {result['step']} | time (s) | {result['seconds']:.0f} | | |")
    if len(summary) == 2:
        return "\n".join(lines)
    return "\n".join(summary + [""] + lines)


# the retrieval grids drawn after the runs: task -> the step whose checkpoint ranks it
PICTURE_TASKS = ("itr", "tgir", "ocir")


def write_pictures(save_dir: str, data_dir: str, parallel: int = 1) -> List[str]:
    """One retrieval grid per task (`mmf-fashion plot retrieval`, 8 queries, top 5) and the
    pretraining's curves (`mmf-fashion plot curves`), each from the step's save_dir when it is
    there, `parallel` at a time. Returns the files written, in that order; a picture that cannot
    be drawn is reported and skipped."""
    steps = {name: (config, model, dataset, overrides) for name, config, model, dataset, overrides in STEPS}
    plot = [sys.executable, "-m", "mmf_fashion.cli.main", "plot"]
    jobs = []
    for task in PICTURE_TASKS:
        config, model, _, overrides = steps[task]
        checkpoint = os.path.join(save_dir, task, f"{model}_final.pth")
        out = os.path.join(save_dir, f"{task}_grid.png")
        jobs.append(
            (
                out,
                checkpoint,
                plot
                + [
                    "retrieval",
                    "--config",
                    config,
                    "--model",
                    model,
                    "--task",
                    task,
                    "--checkpoint",
                    checkpoint,
                    "--queries",
                    "8",
                    "--out",
                    out,
                    f"env.data_dir={os.path.abspath(data_dir)}",
                    *overrides,
                ],
            )
        )
    curves = os.path.join(save_dir, "pretrain_curves.png")
    jobs.append(
        (
            curves,
            os.path.join(save_dir, "pretrain", "train.jsonl"),
            plot
            + [
                "curves",
                os.path.join(save_dir, "pretrain"),
                "--out",
                curves,
                "--title",
                "FashionViL pretraining on the synthetic world",
            ],
        )
    )

    def draw(job) -> Optional[str]:
        out, needed, command = job
        name = os.path.basename(out)
        if not os.path.exists(needed):
            print(f"[demo] picture {name} skipped: no {needed} (its step did not run)", flush=True)
            return None
        try:
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            failed = done.returncode != 0 or not os.path.isfile(out)
            reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1] if failed else ""
        except OSError as error:
            failed, reason = True, str(error)
        if failed:
            print(f"[demo] picture {name} not drawn: {reason}", flush=True)
            return None
        return out

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return [out for out in pool.map(draw, jobs) if out]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/synthetic")
    parser.add_argument("--save-dir", default="save/demo")
    parser.add_argument("--steps", default=",".join(s[0] for s in STEPS))
    parser.add_argument("--products", type=int, default=None, help="default: the demo preset's")
    parser.add_argument("--image-size", type=int, default=None, help="default: the demo preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="fine-tunes at a time (they share the CPUs)"
    )
    args = parser.parse_args(argv)
    os.chdir(REPO)
    ensure_data(args.data_dir, args.products, args.image_size, args.seed)
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {s[0] for s in STEPS})
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {[s[0] for s in STEPS]}")
    start = time.time()
    results = run_steps(wanted, args.save_dir, args.data_dir, args.jobs)
    table = format_table(results, world_chance(args.data_dir))
    with open(os.path.join(args.save_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    print(f"\n[demo] total {time.time() - start:.0f}s; table saved to {os.path.join(args.save_dir, 'results.md')}")
    pictures = write_pictures(args.save_dir, args.data_dir, args.jobs)
    if pictures:
        with open(os.path.join(args.save_dir, "results.md"), "a") as f:
            f.write("\nPictures:\n" + "".join(f"- {os.path.basename(path)}\n" for path in pictures))
        print("[demo] pictures:\n" + "\n".join(f"  {path}" for path in pictures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
