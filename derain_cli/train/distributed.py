"""How a recipe's networks are shared across torchrun ranks.

Kept apart from the engine so that the way gradients are synchronised can
change without touching the training loop: the engine calls :func:`wrap_nets`
once, after the recipe's optimizers exist.
"""
from __future__ import annotations


def wrap_nets(recipe, device) -> None:
    """Replace the recipe's trainable ``nets`` entries with DistributedDataParallel wrappers.

    A recipe may list the bundle beside its own sub-networks (G_A, G_B, ...): each
    parameter is wrapped once, preferring the finer-grained entries the recipe calls
    directly. The bundle itself keeps the raw modules, so exports are unaffected.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    others = {id(p) for n, m in recipe.nets.items() if n != "bundle" for p in m.parameters()}
    for name, net in list(recipe.nets.items()):
        params = list(net.parameters())
        if name == "bundle" and any(id(p) in others for p in params):
            continue
        if any(p.requires_grad for p in params):
            recipe.nets[name] = DDP(net, find_unused_parameters=True,
                                    device_ids=[device.index] if device.type == "cuda" else None)
