"""How a recipe's networks stay identical across torchrun ranks.

No DistributedDataParallel wrapper: GAN recipes call one network several times
before a backward, index sub-networks of a bundle and step several optimizers in
one batch, all of which a DDP wrapper refuses or silently breaks. Instead every
optimizer update averages its parameters' gradients over the ranks just before
it steps (:func:`average_gradients`), and the ranks start from rank 0's
parameters and keep rank 0's buffers (:func:`broadcast_state`), which is what
DDP itself does. On one process both are no-ops.
"""
from __future__ import annotations

from typing import Any, Iterable


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_state(nets: Iterable[Any], parameters: bool = True) -> None:
    """Copy rank 0's parameters (unless ``parameters=False``) and buffers to every rank.

    Buffers alone after each step keep BatchNorm statistics as DDP keeps them.
    """
    if not is_distributed():
        return
    import torch.distributed as dist

    seen: set[int] = set()
    for net in nets:
        for t in (list(net.parameters()) if parameters else []) + list(net.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[Any]) -> None:
    """Replace each gradient by its mean over the ranks, in one all-reduce.

    A parameter no rank used keeps ``grad = None`` (so optimizers skip it, as on
    one process); one used on some ranks only counts zeros for the others.
    """
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    params = [p for p in dict.fromkeys(params) if p.requires_grad]
    if not params:
        return
    ref = params[0]
    used = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=ref.device)
    flat = torch.cat([used] + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                               for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = len(params)
    for i, p in enumerate(params):
        n = p.numel()
        if flat[i] > 0:
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def optimizer_params(*optimizers: Any) -> list[Any]:
    """Every parameter the optimizers update, in order, each once."""
    return list(dict.fromkeys(p for opt in optimizers for g in opt.param_groups for p in g["params"]))
