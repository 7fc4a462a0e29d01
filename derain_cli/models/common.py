"""Building blocks and losses shared by several architectures."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..tiling import crop_to_box, pad_to_multiple  # noqa: F401  (re-exported for the models)


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth L1-like loss used by most deraining papers (robust, PSNR-friendly)."""
    return torch.sqrt((x - y) ** 2 + eps * eps).mean()


def edge_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Charbonnier distance between Laplacians: rewards sharp, streak-free detail."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device, dtype=x.dtype)
    k = k.expand(x.shape[1], 1, 3, 3)
    lap = lambda t: F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k, groups=t.shape[1])  # noqa: E731
    return charbonnier(lap(x), lap(y))


class ResBlock(nn.Module):
    """conv-act-conv with a residual link."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class FullResRefiner(nn.Module):
    """Residual blocks at full image resolution that correct an output image.

    The CPU presets do most of their work on space-to-depth features, which leaves the
    thin streaks of light rain to very few full-resolution channels. This adds them back.
    Its last conv, and the last conv of every block, start at zero, so a refiner grown onto
    trained weights (``derain train --init`` with ``--set fullres_blocks=N``, whether the
    weights had no refiner or a shallower one) first reproduces the old output exactly.
    """

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.head = nn.Conv2d(6, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        for conv in [self.tail] + [blk.body[-1] for blk in self.blocks]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg: dict) -> "FullResRefiner | None":
        """The refiner a config asks for, or None (configs of older weights lack the keys)."""
        blocks = cfg.get("fullres_blocks", 0)
        return cls(cfg.get("fullres_width", 16), blocks) if blocks else None

    def forward(self, rainy: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.tail(self.blocks(self.head(torch.cat([rainy, out], 1))))
