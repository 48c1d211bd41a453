"""Shared pieces of the benchmarks: machine line, interleaved timing, results.

Every comparison in benchmarks/ is a ratio of two things measured in the same
process, in the same run, one after the other in alternating rounds
(``interleaved``): a change of machine load during the run then hits both
sides alike, and the per-round ratios show how steady the figure was.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: str = "cpu", threads: Optional[int] = None, load: Optional[float] = None) -> str:
    """One line naming the machine: CPUs, torch, device, threads, load average at start."""
    import torch

    if threads is None:
        threads = torch.get_num_threads()
    if load is None:
        load = os.getloadavg()[0]
    device_text = str(device)
    if device_text.startswith("cuda") and torch.cuda.is_available():
        device_text += f" ({torch.cuda.get_device_name()})"
    return (
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), torch {torch.__version__}, Python "
        f"{platform.python_version()}, device {device_text}, {threads} torch thread(s), "
        f"1-minute load average {load:.2f} at start."
    )


def interleaved(
    functions: Dict[str, Callable[[], object]],
    rounds: int,
    calls: int,
    warmup: int = 2,
    sync: Optional[Callable[[], None]] = None,
) -> Dict[str, List[float]]:
    """Seconds per call of each function, per round: every round runs each
    function `calls` times, in turn, the order turning by one each round
    (A B, B A, A B ...), after `warmup` calls of each."""
    sync = sync or (lambda: None)
    for function in functions.values():
        for _ in range(warmup):
            function()
    sync()
    per_round: Dict[str, List[float]] = {name: [] for name in functions}
    names = list(functions)
    for index in range(rounds):
        # the order turns every round (A B C, B C A, ...): no contender always runs first
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            function = functions[name]
            start = time.perf_counter()
            for _ in range(calls):
                function()
            sync()
            per_round[name].append((time.perf_counter() - start) / calls)
    return per_round


def ratio_stats(numerator: List[float], denominator: List[float]) -> Dict[str, float]:
    """Median, quartiles, min and max of the per-round ratios numerator / denominator."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    if len(ratios) >= 2:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
    else:
        q1 = q3 = ratios[0]
    return {
        "median": statistics.median(ratios),
        "q1": q1,
        "q3": q3,
        "min": min(ratios),
        "max": max(ratios),
        "rounds": len(ratios),
    }


@dataclass
class Row:
    """One line of the summary table."""

    benchmark: str
    ratio: Optional[float]  # None: not measured (skipped)
    ratio_text: str  # how the ratio reads, e.g. "1.02 (0.99-1.05 over 5 rounds)"
    target: str  # e.g. "<= 1.10"
    passed: Optional[bool]  # None: no target / skipped
    result_file: str  # relative to the benchmarks folder


@dataclass
class Section:
    """What one benchmark produced: its summary rows and its markdown section."""

    name: str  # file stem under results/
    title: str
    rows: List[Row] = field(default_factory=list)
    markdown: str = ""
    seconds: float = 0.0
    quick: bool = False

    def write(self, results_dir: str) -> str:
        os.makedirs(results_dir, exist_ok=True)
        path = os.path.join(results_dir, f"{self.name}.md")
        with open(path, "w") as handle:
            handle.write(self.markdown.rstrip() + "\n")
        with open(os.path.join(results_dir, f"{self.name}.json"), "w") as handle:
            json.dump(
                {
                    "name": self.name,
                    "title": self.title,
                    "seconds": self.seconds,
                    "quick": self.quick,
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "rows": [asdict(row) for row in self.rows],
                },
                handle,
                indent=1,
            )
        return path


def check(value: float, target: str) -> bool:
    """Does `value` meet a target written as '<= 1.10', '>= 1.0', '> 1.0' or '< 0.1'?"""
    operator, _, bound = target.partition(" ")
    bound_value = float(bound)
    return {"<=": value <= bound_value, ">=": value >= bound_value, "<": value < bound_value, ">": value > bound_value}[
        operator
    ]


def table(header: List[str], rows: List[List[str]], align: Optional[str] = None) -> str:
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_seconds(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"
