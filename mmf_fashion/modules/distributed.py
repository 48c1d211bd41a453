"""Collectives that degrade to no-ops in a single process.

Cheatsheet::

    from mmf_fashion.modules.distributed import gather_with_grad, all_gather_nograd
    all_image = gather_with_grad(image_emb)   # (world*B, D), grads flow to the local slice

Contrastive losses need negatives from every rank; the local slice of the
gathered tensor must keep its gradient, which a plain all_gather drops.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_nograd(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0 (same shape on every rank)."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """all_gather for shards whose first dimension differs between ranks (no grad)."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = all_gather_nograd(size).tolist()
    max_size = max(sizes)
    padded = tensor.new_zeros((max_size,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = all_gather_nograd(padded)
    chunks = [gathered[i * max_size : i * max_size + n] for i, n in enumerate(sizes)]
    return torch.cat(chunks, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor):
        ctx.batch = tensor.shape[0]
        return all_gather_nograd(tensor)

    @staticmethod
    def backward(ctx, grad_output):
        # every rank computed a loss over the full gathered batch: sum the
        # gradients from all ranks, then keep the slice of this rank
        grad = grad_output.contiguous()
        dist.all_reduce(grad)
        start = get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """all_gather that keeps the gradient of the local slice."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def broadcast_from_rank0(value):
    """Rank 0's value on every rank (a picklable object); the value itself when not distributed."""
    if not is_distributed():
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]
