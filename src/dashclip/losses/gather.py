"""Gathering tensors across DDP ranks: the one place where losses talk to other processes.

Contrastive losses see more negatives when every rank scores its batch against the batches of all
ranks. `all_gather_with_grad` concatenates the ranks' tensors and lets gradients flow back to the
rank that produced each slice, so every rank computes the same global loss and DDP's gradient
averaging yields exactly the gradient of that loss (see `_AllGatherWithGrad.backward`).
Outside `torch.distributed` (one process), every function here is the identity.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather in forward; in backward, each rank receives the sum over ranks of the gradient
    with respect to its own slice.

    Every rank computes the same loss L from the gathered tensor, and DDP averages parameter
    gradients over the ranks, so the slice's gradient must be summed over ranks (world_size times
    dL/dslice) for the average to equal dL/dparams. all_reduce is used rather than reduce_scatter
    because gloo (CPU) does not implement reduce_scatter.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0 (rank order), keeping gradients.
    Every rank must pass a tensor of the same shape (the loop gives each rank equal batches)."""
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, without gradients (ids, labels)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def local_slice(n_local: int) -> slice:
    """Rows of the gathered tensor that belong to this rank."""
    r = rank()
    return slice(r * n_local, (r + 1) * n_local)
