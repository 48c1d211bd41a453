"""Pick one pretraining task per update, the same on every rank, resumable.

Cheatsheet::

    sampler = TaskSampler({"itc": .2, "itm": .15, "mlm": .15}, seed=1)
    task = sampler.task_for_update(num_updates)   # pure function of (seed, update)

The draw depends only on the seed and the update number, so every DDP rank
picks the same task without communication, and a resumed run continues the
exact sequence: the sampler's whole state is (tasks, ratios, seed).
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch


class TaskSampler:
    def __init__(self, ratios: Mapping[str, float], seed: int = 0):
        ratios = {str(name): float(weight) for name, weight in dict(ratios).items() if float(weight) > 0}
        if not ratios:
            raise ValueError("TaskSampler needs at least one task with a positive ratio")
        self.tasks = sorted(ratios)
        total = sum(ratios.values())
        self.probabilities = torch.tensor([ratios[name] / total for name in self.tasks], dtype=torch.float64)
        self.seed = int(seed)

    def task_for_update(self, update: int) -> str:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(update))
        index = torch.multinomial(self.probabilities, 1, generator=generator).item()
        return self.tasks[index]

    def state_dict(self) -> Dict:
        return {"tasks": list(self.tasks), "probabilities": self.probabilities.tolist(), "seed": self.seed}

    def load_state_dict(self, state: Mapping) -> None:
        self.tasks = list(state["tasks"])
        self.probabilities = torch.tensor(state["probabilities"], dtype=torch.float64)
        self.seed = int(state["seed"])
