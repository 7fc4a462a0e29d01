"""Building blocks and losses shared by several architectures."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth L1-like loss used by most deraining papers (robust, PSNR-friendly)."""
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def edge_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Charbonnier distance between Laplacians: rewards sharp, streak-free detail."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device, dtype=x.dtype)
    k = k.expand(x.shape[1], 1, 3, 3)
    lap = lambda t: F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k, groups=t.shape[1])  # noqa: E731
    return charbonnier(lap(x), lap(y))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple; returns the padded tensor and the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class ResBlock(nn.Module):
    """conv-act-conv with a residual link."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)
