"""Margins of discontinuous decisions, for tests that compare two runs.

Two runs that may differ in the last bits (DDP vs one process, another CPU's
kernels, AMP) agree on a threshold decision or a rank only where the value is
farther from the boundary than the runs' disagreement. A test that compares
such decisions first asserts that every margin it relies on is wide enough,
so a near-tie fails loudly as a fixture problem instead of flipping on some
machine.
"""

import torch


def threshold_margin(values: torch.Tensor, threshold) -> float:
    """Smallest distance between any value and the threshold it is compared with."""
    values = torch.as_tensor(values, dtype=torch.float64)
    threshold = torch.as_tensor(threshold, dtype=torch.float64)
    return float((values - threshold).abs().min())


def ranking_margin(scores: torch.Tensor) -> float:
    """Smallest gap between two scores of one row (rows: queries, columns: candidates):
    the order of each row is stable under perturbations smaller than half of it."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.dim() == 1:
        scores = scores.unsqueeze(0)
    if scores.shape[1] < 2:
        return float("inf")
    ordered = scores.sort(dim=1, descending=True).values
    return float((ordered[:, :-1] - ordered[:, 1:]).min())
