"""``rainfog``: asymmetric unsupervised rain-and-fog removal with a physical degradation prior.

Three sub-networks share the model ``I = T * (J + R) + (1 - T) * A``
(:mod:`derain_cli.synth`):

* :class:`FeatureExtractor` reads a rainy-foggy image and predicts the
  transmission ``T`` (smooth, at quarter resolution), the atmospheric light
  ``A`` (one colour per image) and the rain layer ``R``. Local attention gates
  features by their *local discrepancy* (streaks differ from their
  neighbourhood); global attention relates every position to every other
  (rain and fog are self-similar across the image), on a pooled grid of at
  most ``attn_tokens`` positions so that it stays affordable.
* :class:`RemovalNet` maps the rainy image to the clean scene. It sees the
  image, the physical inversion ``(I - (1 - T) A) / T - R`` and the priors, and
  predicts where to trust that inversion plus a correction.
* :class:`GenerationNet` turns a clean image plus (T, A, R) into a rainy-foggy
  one: the degradation model followed by a small learned residual.

Training (:class:`~derain_cli.train.recipes.rainfog.RainFogRecipe`) runs the two asymmetric paths on unpaired
data: Rain -> Clean -> Rain (derain a real rainy image, re-degrade it with its
own extracted features, match the input) and Clean -> Rain -> Clean (degrade a
clean image with features extracted from an *unrelated* rainy image, derain
it, match the clean image). Discriminators (LSGAN PatchGANs) judge derained
images against clean ones and generated rain against real rain; feature
losses ask the extractor to recover the features a generated image was made
with. Clean images are also degraded with procedural rain and fog from
:func:`derain_cli.synth.render_rain` (the physics prior, no paired data), which
gives the extractor supervised features from the first step. The prior's rain
looks like the target rain (mostly the ``fine`` preset for Rain100L-style
streaks): the closer it looks, the more of it the removal network learns to take out.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Card, ModelSpec, Tiling, Training, Traits, register_model
from ..synth import FOG_BETA, degrade, rain_mix_layers, render_rain, restore
from . import common
from .common import box_extreme, crop_to_box, pad_to_multiple

T_MIN = 0.08


# ---------------------------------------------------------------------------------------------
# building blocks
def ResBlock(ch: int) -> nn.Module:
    """The shared conv-act-conv residual block with rainfog's LeakyReLU(0.2) (keys ``body.0``, ``body.2``)."""
    return common.ResBlock(ch, act=lambda: nn.LeakyReLU(0.2, True))


class LocalAttention(nn.Module):
    """Gate features by local discrepancy: a streak stands out from its 5x5 neighbourhood."""

    def __init__(self, ch: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2, True), nn.Conv2d(ch, ch, 1), nn.Sigmoid())
        self.body = ResBlock(ch)

    def forward(self, x):
        discrepancy = x - F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        return self.body(x * (1 + self.gate(discrepancy)))


class GlobalAttention(nn.Module):
    """Non-local self-similarity over a pooled grid of at most ``max_tokens`` positions."""

    def __init__(self, ch: int, max_tokens: int = 1024):
        super().__init__()
        self.max_tokens = max_tokens
        self.dim = max(8, ch // 2)
        self.qkv = nn.Conv2d(ch, 2 * self.dim + ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, x):
        b, c, h, w = x.shape
        y = x
        if h * w > self.max_tokens:
            f = math.sqrt(h * w / self.max_tokens)
            y = F.adaptive_avg_pool2d(x, (max(1, int(h / f)), max(1, int(w / f))))
        hh, ww = y.shape[-2:]
        q, k, v = self.qkv(y).flatten(2).split([self.dim, self.dim, c], dim=1)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(self.dim), dim=-1)  # B x N x N
        out = (v @ attn.transpose(1, 2)).view(b, c, hh, ww)
        if (hh, ww) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return x + self.scale * self.proj(out)


def dark_channel(x: torch.Tensor, size: int = 7) -> torch.Tensor:
    """Minimum over colours and a ``size`` window: haze lifts it to about ``(1 - T) A`` (He et al.)."""
    m = x.min(dim=1, keepdim=True).values
    p = size // 2
    return box_extreme(F.pad(m, (p, p, p, p), mode="replicate"), size, torch.minimum)


# ---------------------------------------------------------------------------------------------
# the three sub-networks
class FeatureExtractor(nn.Module):
    """Image -> (T: Bx1xHxW, A: Bx3x1x1, R: Bx3xHxW). Input H, W must be multiples of 4.

    The dark channel is an extra input: a hand-made haze cue that lets a small
    network learn the transmission in a few thousand CPU steps.
    """

    def __init__(self, width: int, local_blocks: int, global_blocks: int, attn_tokens: int):
        super().__init__()
        c = width
        self.head = nn.Conv2d(3 + 1, c, 3, padding=1)
        self.local = nn.Sequential(*[LocalAttention(c) for _ in range(local_blocks)])
        self.down = nn.Sequential(
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2, True),
        )
        self.glob = nn.ModuleList([GlobalAttention(2 * c, attn_tokens) for _ in range(global_blocks)])
        self.glob_res = nn.ModuleList([ResBlock(2 * c) for _ in range(global_blocks)])
        self.t_head = nn.Conv2d(2 * c, 1, 3, padding=1)
        self.a_head = nn.Sequential(nn.Linear(2 * c, c), nn.LeakyReLU(0.2, True), nn.Linear(c, 3))
        self.up = nn.Conv2d(2 * c, c, 1)
        self.r_head = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.LeakyReLU(0.2, True), nn.Conv2d(c, 3, 3, padding=1))
        with torch.no_grad():
            self.t_head.bias.fill_(2.0)  # start near T = 0.88 (little fog)
            self.r_head[-1].bias.fill_(-4.0)  # and near R = 0
            self.a_head[-1].bias.fill_(1.5)  # A near 0.8

    def forward(self, x):
        f = self.local(self.head(torch.cat([x, dark_channel(x)], 1)))
        g = self.down(f)
        for att, res in zip(self.glob, self.glob_res):
            g = res(att(g))
        t = torch.sigmoid(F.interpolate(self.t_head(g), size=x.shape[-2:], mode="bilinear", align_corners=False))
        a = torch.sigmoid(self.a_head(g.mean(dim=(2, 3))))[:, :, None, None]
        up = F.interpolate(self.up(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        r = torch.sigmoid(self.r_head(torch.cat([f, up], 1)))
        return t.clamp(min=T_MIN), a, r


class RemovalNet(nn.Module):
    """(rainy image, T, A, R) -> clean image: a small U-Net blending the image with its physical inversion.

    The output is ``x + g * (J0 - x) + residual`` where ``J0`` inverts the
    degradation model with the extracted priors and the gate ``g`` says where
    that inversion can be trusted. It starts as the identity (``g`` near 0,
    residual 0), so a half-trained model never makes a clear image worse by
    much. Most blocks run at half resolution (width ``2 * width``) to stay
    affordable on a CPU; one block at full resolution on each side keeps thin
    streak edges.
    """

    def __init__(self, width: int, blocks: int):
        super().__init__()
        c = width
        self.head = nn.Sequential(nn.Conv2d(3 + 3 + 1 + 3, c, 3, padding=1), ResBlock(c))
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.mid = nn.Sequential(*[ResBlock(2 * c) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 1), nn.PixelShuffle(2))
        self.dec = nn.Sequential(nn.Conv2d(2 * c, c, 1), ResBlock(c))
        self.tail = nn.Conv2d(c, 3 + 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        with torch.no_grad():
            self.tail.bias[3] = -3.0  # gate starts near 0.05

    def forward(self, x, t, a, r):
        j0 = restore(x, t, a, r, t_min=T_MIN).clamp(0, 1)
        e = self.head(torch.cat([x, j0, t, r], 1))
        m = self.up(self.mid(self.down(e)))
        residual, gate = self.tail(self.dec(torch.cat([e, m], 1))).split([3, 1], dim=1)
        return x + torch.sigmoid(gate) * (j0 - x) + residual


class GenerationNet(nn.Module):
    """(clean image, T, A, R) -> rainy-foggy image: the degradation model plus a learned residual."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        c = width
        self.body = nn.Sequential(
            nn.Conv2d(3 + 3 + 1 + 3, c, 3, padding=1), nn.LeakyReLU(0.2, True),
            *[ResBlock(c) for _ in range(blocks)], nn.Conv2d(c, 3, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, j, t, a, r):
        i0 = degrade(j, t, a, r)
        return i0 + 0.2 * torch.tanh(self.body(torch.cat([i0, j, t, r], 1)))


class RainFogBundle(nn.ModuleDict):
    """``{"extractor", "removal", "generator"}``; ``bundle(name, ...)`` dispatches (keeps DDP happy)."""

    def forward(self, which: str, *args):
        return self[which](*args)


def build(config: dict[str, Any]) -> RainFogBundle:
    return RainFogBundle({
        "extractor": FeatureExtractor(config["ext_width"], config["local_blocks"], config["global_blocks"], config["attn_tokens"]),
        "removal": RemovalNet(config["width"], config["blocks"]),
        "generator": GenerationNet(config["gen_width"], config["gen_blocks"]),
    })


# ---------------------------------------------------------------------------------------------
# inference wrappers
class RainFogRemover(nn.Module):
    """Derain + defog any H x W: pads to a multiple of 4, runs extractor and removal, crops, clamps."""

    def __init__(self, bundle: RainFogBundle):
        super().__init__()
        self.bundle = bundle

    def forward(self, x):
        xp, box = pad_to_multiple(x, 4)
        t, a, r = self.bundle("extractor", xp)
        return crop_to_box(self.bundle("removal", xp, t, a, r), box).clamp(0, 1)


class RainFogRainifier(nn.Module):
    """Add rain and fog to clean images: procedural rain layer and depth-proxy fog, refined by the generator.

    Deterministic: ``seed`` fixes the streaks; ``fog`` (0..1) and ``rain`` as in ``derain synth``.
    """

    def __init__(self, bundle: RainFogBundle, seed: int = 0, rain: str = "light", fog: float = 0.4):
        super().__init__()
        self.bundle, self.seed, self.rain, self.fog = bundle, seed, rain, fog

    def forward(self, j):
        b, _, h, w = j.shape
        rng = np.random.default_rng(self.seed)
        layers = [render_rain(h, w, rng, self.rain)[0] if self.rain != "none" else np.zeros((h, w), np.float32) for _ in range(b)]
        r = torch.as_tensor(np.stack(layers), dtype=j.dtype, device=j.device)[:, None].expand(b, 3, h, w)
        ramp = torch.linspace(1.0, 0.0, h, dtype=j.dtype, device=j.device)[None, None, :, None]
        lum = F.avg_pool2d(j.mean(1, keepdim=True), 9, stride=1, padding=4, count_include_pad=False)
        d = (0.5 * ramp + 0.5 * lum).expand(b, 1, h, w)
        t = torch.exp(-FOG_BETA * self.fog * d).clamp(min=T_MIN)
        a = torch.full((b, 3, 1, 1), 0.85, dtype=j.dtype, device=j.device)
        return self.bundle("generator", j, t, a, r).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# training parts
class PatchDiscriminator(nn.Module):
    """A small PatchGAN: one real/fake score per ~22 px receptive field."""

    def __init__(self, width: int):
        super().__init__()
        c = width
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * c, 1, 3, padding=1),
        )

    def forward(self, x):
        return self.net(x)


#: The procedural prior of the first shipped weights: 3x denser rain than Rain100L, so the
#: extractor learned a rain layer everywhere and darkened fog-free images.
LEGACY_PRIOR_RAIN = {"none": 0.2, "light": 0.55, "heavy": 0.25}


def procedural_degradation(clean: torch.Tensor, rng: np.random.Generator,
                           rain_mix: dict[str, float] | None = None, fog_free: float = 0.25):
    """Degrade a batch of clean crops with procedural rain and fog; returns (image, T, A, R).

    Fog in a crop is a nearly constant transmission with a gentle vertical
    gradient (a crop spans little depth); rain is drawn from ``rain_mix``
    (preset -> probability, ``"none"`` included) and fog is absent with
    probability ``fog_free``, so the networks also learn rain-only and fog-only
    images (and, when both are absent, to leave clean images alone).
    """
    b, _, h, w = clean.shape
    dev, dt = clean.device, clean.dtype
    rs = rain_mix_layers(b, h, w, rng, rain_mix or LEGACY_PRIOR_RAIN)
    r = torch.as_tensor(rs, device=dev, dtype=dt)[:, None].expand(b, 3, h, w).contiguous()
    beta = torch.as_tensor(rng.uniform(0.0, FOG_BETA * 0.9, b), device=dev, dtype=dt)
    beta = beta * torch.as_tensor(rng.random(b) >= fog_free, device=dev, dtype=dt)
    d0 = torch.as_tensor(rng.uniform(0.2, 1.0, b), device=dev, dtype=dt)
    slope = torch.as_tensor(rng.uniform(0.0, 0.3, b), device=dev, dtype=dt)
    ramp = torch.linspace(0.5, -0.5, h, device=dev, dtype=dt)[None, None, :, None]
    d = (d0[:, None, None, None] + slope[:, None, None, None] * ramp).clamp(0, 1).expand(b, 1, h, w)
    t = torch.exp(-beta[:, None, None, None] * d).clamp(min=T_MIN)
    a = torch.as_tensor(rng.uniform(0.7, 0.95, (b, 1, 1, 1)) + rng.uniform(-0.03, 0.03, (b, 3, 1, 1)), device=dev, dtype=dt).clamp(0, 1)
    return degrade(clean, t, a, r).clamp(0, 1), t, a, r


_LOSS = {"w_cycle": 1.0, "w_prior": 3.0, "w_feat": 0.5, "w_rain": 5.0, "w_adv": 0.05, "step_seeded": True,
         # the procedural prior: rain preset -> probability, and the share of fog-free crops; mostly
         # `fine` streaks, which look like Rain100L's (session 4's weights used none 0.15, drizzle 0.4,
         # light 0.3, heavy 0.15 with w_prior 1; session 5's w_prior 2)
         "prior_rain": {"none": 0.1, "fine": 0.55, "drizzle": 0.15, "light": 0.1, "heavy": 0.1}, "prior_fog_free": 0.35}

PRESETS = {
    # Full size: wide sub-networks and more attention blocks (needs a GPU to train).
    "paper": {"ext_width": 48, "local_blocks": 3, "global_blocks": 2, "attn_tokens": 4096, "width": 64, "blocks": 10,
              "gen_width": 48, "gen_blocks": 4, "disc_width": 64, **_LOSS},
    # Small enough to train on one CPU thread in about an hour.
    "cpu": {"ext_width": 16, "local_blocks": 1, "global_blocks": 1, "attn_tokens": 1024, "width": 16, "blocks": 5,
            "gen_width": 16, "gen_blocks": 1, "disc_width": 16, **_LOSS},
}


def traits(config: dict[str, Any]) -> Traits:
    """Any size (the remover pads to 4 itself); tiles only approximate the whole image."""
    # global attention and the image-wide atmospheric light see the whole image
    return Traits(tiling=Tiling.APPROXIMATE, tile_margin=64, min_tile=512, bytes_per_pixel=3072.0)


SPEC = register_model(ModelSpec(
    "rainfog", build=build, traits_of=traits, presets=PRESETS,
    derain_net=lambda bundle, variant: RainFogRemover(bundle), rainify_net=RainFogRainifier,
    training=Training("derain_cli.train.recipes.rainfog:RainFogRecipe", modes=("unpaired",)),
    card=Card("Unpaired rain-and-fog removal with a physical degradation prior and global/local attention; "
              "also adds rain and fog.",
              "Asymmetric unsupervised end-to-end image deraining network with rain-fog priors "
              "(rain-fog feature extraction, generation and removal)"),
))
