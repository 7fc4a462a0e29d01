"""semimsn: semi-supervised multi-scale deraining with mean/covariance feature matching.

Qiu et al., "Single image de-raining algorithm based on semi-supervised learning".
Image -> feature transform -> semi-supervised matching network (cascade convolution
learning blocks, CCLB) -> multi-scale deraining network (units joined by residual and
dense links; inside a unit S_i = MaxPool_{2^(i-1)}(F), Z_i = CCLB_i(S_i), F^ = sum of the
upsampled Z_i) -> image transform. The matching loss pulls the first- and second-order
statistics of synthetic-rain and real-rain features together (section 3.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Card, ModelSpec, Training, Traits, register_model
from .common import FullResRefiner, crop_to_box, pad_to_multiple


class CCLB(nn.Module):
    """Cascade Convolution Learning Block: conv-ReLU layers in cascade, every stage's
    output fused by a 1x1 conv, plus a residual link."""

    def __init__(self, ch: int, depth: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(depth))
        self.fuse = nn.Conv2d(ch * depth, ch, 1)

    def forward(self, x):
        outs, h = [], x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            outs.append(h)
        return x + self.fuse(torch.cat(outs, 1))


class MultiScaleUnit(nn.Module):
    """S_i = MaxPool(2^(i-1)); Z_i = CCLB_i(S_i); sum of the upsampled Z_i, residual out."""

    def __init__(self, ch: int, scales: int, depth: int):
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList(CCLB(ch, depth) for _ in range(scales))
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        h, w = x.shape[-2:]
        total = 0
        for i, branch in enumerate(self.branches):
            k = 2 ** i
            s = F.max_pool2d(x, k, k, ceil_mode=True) if k > 1 else x
            z = branch(s)
            if k > 1:
                z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
            total = total + z
        return x + self.out(total)


class SemiMSN(nn.Module):
    """Rainy image in [0, 1] -> derained image. ``features`` gives the matched features."""

    def __init__(self, cfg: dict):
        super().__init__()
        ch, r = cfg["channels"], cfg["unshuffle"]
        # unshuffle > 1 works on space-to-depth features (lossless, r*r times fewer positions):
        # the CPU preset's way to afford the multi-scale units at full image resolution.
        self.transform_in = nn.Sequential(nn.PixelUnshuffle(r), nn.Conv2d(3 * r * r, ch, 3, padding=1),
                                          nn.LeakyReLU(0.2))
        self.matching = nn.Sequential(*[CCLB(ch, cfg["cclb_depth"]) for _ in range(cfg["matching_blocks"])])
        self.units = nn.ModuleList(MultiScaleUnit(ch, cfg["scales"], cfg["cclb_depth"]) for _ in range(cfg["units"]))
        # Dense links: unit k sees the matched features and every earlier unit's output.
        self.dense = nn.ModuleList(nn.Conv2d(ch * (k + 1), ch, 1) for k in range(cfg["units"]))
        self.transform_out = nn.Sequential(nn.Conv2d(ch, 3 * r * r, 3, padding=1), nn.PixelShuffle(r))
        self.multiple = r
        self.fullres = FullResRefiner.from_config(cfg)

    def features(self, x):
        return self.matching(self.transform_in(x))

    def forward(self, x, real=None):
        """Derain ``x``; with ``real`` (same size) also return the matched features of both.

        Training goes through ``forward`` (not ``features``) so that under DDP the
        gradients of every term are all-reduced across ranks.
        """
        xp, box = pad_to_multiple(x, self.multiple)
        if real is None:
            return self.refine(x, crop_to_box(self.derain_features(xp, self.features(xp)), box))
        rp, _ = pad_to_multiple(real, self.multiple)
        both = self.features(torch.cat([xp, rp], 0))
        fs, fr = both[: xp.shape[0]], both[xp.shape[0]:]
        return self.refine(x, crop_to_box(self.derain_features(xp, fs), box)), fs, fr

    def derain_features(self, x, f):
        outs = [f]
        for unit, dense in zip(self.units, self.dense):
            outs.append(unit(dense(torch.cat(outs, 1))))
        return x + self.transform_out(outs[-1] + f)

    def refine(self, x, out):
        """The full-resolution refiner, run on the unpadded image (padding only serves the pooling)."""
        return out if self.fullres is None else self.fullres(x, out)


def matching_loss(fs: torch.Tensor, fr: torch.Tensor) -> torch.Tensor:
    """L_match = ||M_s - M_r|| + (1/d) ||C_s - C_r||_F on B x d x H x W feature maps.

    Every spatial position of every image is one d-dimensional sample. The paper writes
    the second-order term with unnormalised scatter matrices (F - M)(F - M)^T; we divide
    by the number of samples (true covariances, as CORAL does) so the loss does not grow
    with patch size or batch size.
    """
    d = fs.shape[1]
    xs = fs.float().transpose(0, 1).reshape(d, -1)
    xr = fr.float().transpose(0, 1).reshape(d, -1)
    ms, mr = xs.mean(1, keepdim=True), xr.mean(1, keepdim=True)
    cs = (xs - ms) @ (xs - ms).T / xs.shape[1]
    cr = (xr - mr) @ (xr - mr).T / xr.shape[1]
    return torch.linalg.vector_norm(ms - mr) + torch.linalg.matrix_norm(cs - cr) / d


PRESETS = {
    "cpu": dict(channels=24, unshuffle=2, cclb_depth=2, matching_blocks=1, units=3, scales=3, match_weight=1.0,
                fullres_blocks=8, fullres_width=32),
    "paper": dict(channels=32, unshuffle=1, cclb_depth=3, matching_blocks=2, units=4, scales=3, match_weight=1.0,
                  fullres_blocks=0, fullres_width=32),
}

def traits(config: dict) -> Traits:
    """Tiles must start on the grid of the pixel-unshuffle times the coarsest max-pool
    (``2 ** (scales - 1)``) to see the pooling windows the whole image sees."""
    c = {**PRESETS["cpu"], **config}
    return Traits(size_multiple=c["unshuffle"] * 2 ** (c["scales"] - 1), tile_margin=48, bytes_per_pixel=1500.0)


SPEC = register_model(ModelSpec(
    "semimsn", build=SemiMSN, traits_of=traits, presets=PRESETS,
    training=Training("derain_cli.train.recipes.semimsn:SemiMSNRecipe", modes=("semi", "paired")),
    card=Card("Multi-scale deraining units; semi-supervised mean/covariance matching with real rain.",
              "Qiu et al., Single image de-raining algorithm based on semi-supervised learning"),
))
