"""Run the performance benchmarks and assemble benchmarks/RESULTS.md.

    make bench                                          # = .venv/bin/python -m benchmarks.run_all
    .venv/bin/python -m benchmarks.run_all --quick      # shorter, every ratio still measured
    .venv/bin/python -m benchmarks.run_all --only a,b   # some of them (a b c d e gpu)
    .venv/bin/python -m benchmarks.run_all --quick --out-dir /tmp/bench   # scratch run, results kept elsewhere
    .venv/bin/python -m benchmarks.run_all --assemble-only    # only rebuild RESULTS.md from results/

a. fashion_trainer step / bare forward + backward + optimizer step (<= 1.10)
b. our `align` / transformers AlignModel, training samples/s (>= 1.0)
c. train loader (2 workers) / model consumption rate, and the data wait in a training loop
d. chunked full ranking / the naive similarity matrix: time and peak memory
e. FashionBERT pair scoring / two-stream query: time per query
gpu. paper sizes on CUDA (ResNet-50 + BERT-base, 224 px, bf16): samples/s and MFU;
     skipped with a line on a machine without CUDA (a CPU check of its FLOP counting runs instead)

Each benchmark writes <out-dir>/results/<name>.md (its section, with the
machine line) and <name>.json (its summary rows); RESULTS.md is a summary
table over every section present followed by the sections, then the files of
OTHERS (learning.md, cots_filter.md, xvlm_grounding.md, ann_index.md, ...)
verbatim when they exist (written by other scripts). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Dict, List

import torch

from benchmarks.common import REPO, Row, Section, machine_line, table

BENCHMARKS = ("a", "b", "c", "d", "e", "gpu")
SECTION_ORDER = [
    "training_overhead",
    "align_vs_transformers",
    "loader_vs_model",
    "ranking",
    "query_cost",
    "gpu_paper_sizes",
]
SECTION_OF = {
    "a": "training_overhead",
    "b": "align_vs_transformers",
    "c": "loader_vs_model",
    "d": "ranking",
    "e": "query_cost",
    "gpu": "gpu_paper_sizes",
}
OTHERS = [
    (
        "learning.md",
        "Learning evidence over seeds (every model row, mean ± std, paired differences)",
        "benchmarks/learning.py",
    ),
    (
        "learning_fashionvil.md",
        "Learning: FashionViL, one seed (earlier runner)",
        "benchmarks/learning_fashionvil.py, since replaced by benchmarks/learning.py",
    ),
    (
        "learning_fashionvil_seed2.md",
        "Learning: FashionViL, a second seed (earlier runner)",
        "benchmarks/learning_fashionvil.py --seed 2, since replaced by benchmarks/learning.py",
    ),
    (
        "cots_filter.md",
        "COTS filter on the demo world (earlier runner)",
        "benchmarks/bench_cots_filter.py, since replaced by benchmarks/learning.py --rows cots",
    ),
    (
        "xvlm_grounding.md",
        "X-VLM grounding on the demo world (earlier runner)",
        "benchmarks/bench_xvlm_grounding.py, since replaced by benchmarks/learning.py --rows xvlm",
    ),
    ("ann_index.md", "ANN index: flat, IVF, HNSW on 1M x 256", "benchmarks/bench_ann_index.py"),
]


def parse_only(text: str) -> List[str]:
    wanted = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = sorted(set(wanted) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; choose from {','.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in wanted]


def failure_section(names: List[str], error: BaseException, quick: bool) -> List[Section]:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    sections = []
    for name in names:
        file = SECTION_OF[name]
        rows = [Row(f"{name}. (failed: {type(error).__name__})", None, "error", "-", False, f"results/{file}.md")]
        markdown = f"## {name}. FAILED\n\n{machine_line()}\n\n```\n{text[-4000:]}\n```\n"
        sections.append(Section(file, f"{name} (failed)", rows, markdown, quick=quick))
    return sections


def run_benchmarks(selected: List[str], results_dir: str, quick: bool, log: List[List[str]]) -> List[Section]:
    """Run the selected benchmarks; append [names, seconds, load at start, load at end] to `log`."""
    from benchmarks import bench_gpu, bench_query_cost, bench_ranking, bench_training

    jobs: List[tuple] = []  # (names, function)
    training = "".join(name for name in ("a", "b", "c") if name in selected)
    if training:
        jobs.append(([n for n in training], lambda: bench_training.run(results_dir, quick=quick, only=training)))
    if "d" in selected:
        jobs.append((["d"], lambda: [bench_ranking.run(results_dir, quick=quick)]))
    if "e" in selected:
        jobs.append((["e"], lambda: [bench_query_cost.run(results_dir, quick=quick)]))
    if "gpu" in selected:
        jobs.append((["gpu"], lambda: [bench_gpu.run(results_dir, quick=quick)]))
    threads = torch.get_num_threads()
    sections: List[Section] = []
    for names, function in jobs:
        started = time.time()
        load = os.getloadavg()[0]
        print(f"[run_all {time.strftime('%H:%M:%S')}] {','.join(names)}: start (load {load:.2f})", flush=True)
        try:
            produced = function()
        except Exception as error:  # one broken benchmark must not hide the others
            traceback.print_exc()
            produced = failure_section(names, error, quick)
            for section in produced:
                section.write(results_dir)
        finally:
            torch.set_num_threads(threads)  # e.g. the query-cost benchmark runs on 1 thread
        sections += produced
        log.append(
            [
                ", ".join(names),
                time.strftime("%H:%M:%S", time.localtime(started)),
                f"{time.time() - started:.0f} s",
                f"{load:.2f}",
                f"{os.getloadavg()[0]:.2f}",
            ]
        )
        print(
            f"[run_all {time.strftime('%H:%M:%S')}] {','.join(names)}: done in {time.time() - started:.0f} s",
            flush=True,
        )
    return sections


def load_sections(results_dir: str) -> List[Dict]:
    """The summary rows of every section present in results_dir (from its .json), in the fixed order."""
    found = []
    for name in SECTION_ORDER:
        path = os.path.join(results_dir, f"{name}.json")
        if os.path.exists(path) and os.path.exists(os.path.join(results_dir, f"{name}.md")):
            with open(path) as handle:
                found.append(json.load(handle))
    return found


def verdict(passed) -> str:
    return {True: "pass", False: "**FAIL**", None: "-"}[passed]


def assemble(out_dir: str, reassembled: bool = False) -> str:
    """Write RESULTS.md from results/run_all.json (the last run's header) and the sections present."""
    results_dir = os.path.join(out_dir, "results")
    run_path = os.path.join(results_dir, "run_all.json")
    run = {}
    if os.path.exists(run_path):
        with open(run_path) as handle:
            run = json.load(handle)
    sections = load_sections(results_dir)
    rows = []
    for section in sections:
        for row in section["rows"]:
            rows.append(
                [
                    row["benchmark"],
                    row["ratio_text"],
                    row["target"],
                    verdict(row["passed"]),
                    f"[{row['result_file']}]({row['result_file']})",
                ]
            )
    this_run = run.get("sections", [])
    earlier = [s for s in sections if s["name"] not in this_run]
    quick = bool(run.get("quick"))
    quick_sections = [s["name"] for s in sections if s.get("quick")]
    lines = ["# Results", ""]
    # the hand-written reading of the learning evidence comes first (results/evidence_summary.md)
    summary_path = os.path.join(results_dir, "evidence_summary.md")
    if os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as handle:
            lines += [handle.read().strip(), ""]
    present = [(file, title) for file, title, _ in OTHERS if os.path.exists(os.path.join(results_dir, file))]
    if present:
        lines += [
            "Performance (the table below and sections a-e, GPU), then the learning evidence: "
            + "; ".join(f"{title} (results/{file})" for file, title in present)
            + ".",
            "",
        ]
    if run:
        lines += [
            f"Written by `{run['command']}` on {run['date']}"
            f"{' (quick run: shorter measurements)' if quick else ''}; "
            f"that run took {run['seconds'] / 60:.1f} min"
            + (
                f"; RESULTS.md re-assembled on {time.strftime('%Y-%m-%d %H:%M')} with --assemble-only"
                if reassembled
                else ""
            )
            + ". How to run it and what each comparison means: [README.md](README.md).",
            "",
            run["machine"],
            "",
        ]
    if quick_sections and not quick:
        lines += [f"Sections from a quick run: {', '.join(quick_sections)}.", ""]
    lines += [
        "Every ratio is measured within one run of its benchmark, both sides on the same machine under the same "
        "load (alternating rounds where the two sides can share a process). Targets a and b come from the "
        "issue; c's 'never the bottleneck' is read as loader rate >= consumption and <= 5% of the loop waiting; "
        "d and e have no number in the issue, their targets are ours (see the sections).",
        "",
        table(["benchmark", "measured ratio", "target", "pass/fail", "result file"], rows, "lllll"),
        "",
    ]
    if run.get("log"):
        lines += [
            "Run log (1-minute load average at the start and end of each benchmark; the machine has "
            f"{os.cpu_count()} CPUs, and a load above the benchmark's own threads means other jobs shared them):",
            "",
            table(["benchmark", "started", "wall time", "load at start", "load at end"], run["log"], "llrrr"),
            "",
        ]
    if earlier:
        lines += [
            "Sections from an earlier run (not selected in the run above): "
            + ", ".join(f"{s['name']} (finished {s['finished']})" for s in earlier)
            + ".",
            "",
        ]
    for section in sections:
        with open(os.path.join(results_dir, f"{section['name']}.md")) as handle:
            lines += [handle.read().rstrip(), ""]
    for file, title, producer in OTHERS:
        path = os.path.join(results_dir, file)
        if os.path.exists(path):
            with open(path) as handle:
                lines += [
                    f"## {title} (results/{file}, written by `{producer}`, included verbatim)",
                    "",
                    handle.read().rstrip(),
                    "",
                ]
    text = "\n".join(lines).rstrip() + "\n"
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as handle:
        handle.write(text)
    return table(["benchmark", "measured ratio", "target", "pass/fail", "result file"], rows, "lllll")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter measurements; every ratio still measured")
    parser.add_argument(
        "--assemble-only",
        action="store_true",
        help="run nothing: rebuild RESULTS.md from the sections already in results/ "
        "(e.g. after learning_fashionvil.md or cots_filter.md was written)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed (default: only on errors)"
    )
    parser.add_argument(
        "--out-dir",
        default=os.path.join(REPO, "benchmarks"),
        help="where results/ and RESULTS.md go (default: benchmarks/)",
    )
    args = parser.parse_args(argv)
    selected = parse_only(args.only)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    results_dir = os.path.join(args.out_dir, "results")
    os.makedirs(results_dir, exist_ok=True)
    print(f"[run_all] {machine_line()}", flush=True)
    if args.assemble_only:
        print("[run_all] --assemble-only: rebuilding RESULTS.md from the sections in results/", flush=True)
    elif "gpu" in selected and not torch.cuda.is_available():
        print(
            "[run_all] gpu: CUDA not available, the paper-size GPU benchmark is skipped "
            "(a CPU check of its FLOP counting runs instead)",
            flush=True,
        )
    log: List[List[str]] = []
    if args.assemble_only:
        summary = assemble(args.out_dir, reassembled=True)
        print("\n" + summary + "\n")
        print(f"[run_all] wrote {os.path.join(args.out_dir, 'RESULTS.md')}")
        return 0
    machine = machine_line()
    sections = run_benchmarks(selected, results_dir, args.quick, log)
    command = "python -m benchmarks.run_all " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(results_dir, "run_all.json"), "w") as handle:
        json.dump(
            {
                "command": command.strip(),
                "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
                "seconds": time.time() - started,
                "quick": args.quick,
                "machine": machine,
                "log": log,
                "sections": [s.name for s in sections],
            },
            handle,
            indent=1,
        )
    summary = assemble(args.out_dir)
    print("\n" + summary + "\n")
    print(f"[run_all] wrote {os.path.join(args.out_dir, 'RESULTS.md')} in {(time.time() - started) / 60:.1f} min")
    crashed = [row for section in sections for row in section.rows if row.ratio_text == "error"]
    missed = [row for section in sections for row in section.rows if row.passed is False]
    if missed:
        print(f"[run_all] {len(missed)} target(s) missed: " + "; ".join(row.benchmark for row in missed))
    return 1 if crashed or (args.strict and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
