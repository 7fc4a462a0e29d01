"""DCD-GAN: unpaired deraining by dual contrastive learning (Chen et al., CVPR 2022).

Two ResNet generators translate between the rain and clean domains
(``G_A``: rain -> clean, ``G_B``: clean -> rain) while two PatchGAN
discriminators judge the results. Instead of a cycle loss, each translation is
tied to its input by PatchNCE: the *output* of one generator is encoded by the
*other* generator's encoder and every output patch must pick out the feature of
the same input location among all patches of the batch (the "dual" pairing of
the authors' code, inherited from DCLGAN). Identity L1 terms keep each
generator still on images already in its target domain.

The networks follow the authors' code (which is built on CUT/DCLGAN):
anti-aliased down- and upsampling (BlurPool), InstanceNorm without affine
parameters, Xavier init with gain 0.02, hinge GAN loss, no image pool, and the
weighting ``loss_G = 0.5 (GAN_A + GAN_B) + 0.5 (NCE_1 + NCE_2) + 0.5 (idt_A + idt_B)``
with ``NCE_i`` already scaled by ``lambda_nce = 2``. All widths and depths are
config values; the ``paper`` preset is the official size (11,378,179 parameters
per generator).

One deliberate, configurable deviation: ``global_residual`` makes a generator
predict ``x + tanh(...)`` instead of ``tanh(...)``. The official model
(``paper`` preset) leaves it off; the ``cpu`` preset turns it on so that a few
thousand CPU steps start from the identity instead of from a grey image.

Four optional levers, off in both presets until a run shows they help (four
CPU probes of 1,000-2,000 steps with them stayed at or below the input's
validation PSNR; see the README).
``additive_rain`` says rain streaks add light (O = B + R with R >= 0, the
model behind Rain100L and JRGR), so ``G_A`` mostly subtracts,
``x - leaky_relu(.)``, and ``G_B`` mostly adds, ``x + leaky_relu(.)`` (a
change of the wrong sign passes at a tenth). It answers what the shipped CPU
model does: a uniform brightening and faint noise over the whole image, with
the streaks left alone. ``lr_d_mult`` scales the discriminators' learning
rate, for discriminators that sit at chance. ``init_gain_d`` is the discriminators'
Xavier gain (0.02 in the reference): trained alone on clean vs rainy Rain100L
crops, our small PatchGAN told them apart 55% of the time after 1,000 steps
with gain 0.02 and 75% with gain 1.0 (``benchmarks/dcdgan_discriminator_probe.py``).
``brightness_jitter`` hides a brightness gap between the unpaired sets
(:func:`jitter_brightness`).

``w_prior`` (session 6) adds a rain prior that needs no pairs: clean crops plus
procedural streaks from :func:`derain_cli.synth.render_rain` (mix ``prior_rain``)
must come back clean through ``G_A``, as in ``rainfog``. It is not in the paper;
it gives the generator a signal about what rain is while the discriminators are
still near chance. With the reference generator, which sees full resolution only
in its first and last convolution, two CPU probes stayed below the input (README):
it took out about a tenth of the procedural rain in 2,250 steps.

``n_downsampling`` (session 7; 2 in the reference) is the generator's number of
stride-2 stages. At 0 its residual blocks run at full resolution, and the same
prior-only probe (400 steps) lifted validation from 28.03 to 29.95 dB where the
reference layout stayed at 28.03.

The ``cpu`` preset (session 8) uses both: ``n_downsampling=0`` and ``w_prior=100``.
In full unpaired training the GAN and NCE terms outweighed a weaker prior: with
``w_prior`` 10 and 40, validation sat at 28.0 and 28.5 dB after 1,000-2,500 steps;
with 100 it passed 29 by step 1,000. The ``paper`` preset stays the reference.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Card, ModelSpec, Tiling, Training, Traits, register_model
from .common import ReflectResBlock, norm_layer

# ---------------------------------------------------------------------------
# anti-aliased resampling (Zhang 2019, "Making convolutional networks shift-invariant again")


def _binomial_filter(size: int) -> torch.Tensor:
    """Normalised 2-D binomial kernel: [1,2,1] for size 3, [1,3,3,1] for size 4."""
    row = torch.tensor([1.0])
    for _ in range(size - 1):
        row = torch.cat([row, torch.zeros(1)]) + torch.cat([torch.zeros(1), row])
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class BlurDownsample(nn.Module):
    """Blur with a fixed [1,2,1] kernel, then keep every second pixel (no parameters)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        kernel = _binomial_filter(3)[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel, stride=2, groups=self.channels)


class BlurUpsample(nn.Module):
    """Zero-insertion x2 upsampling smoothed by a fixed [1,3,3,1] kernel (no parameters)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        kernel = _binomial_filter(4)[None, None].repeat(channels, 1, 1, 1) * 4.0
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        y = F.conv_transpose2d(x, self.kernel, stride=2, padding=2, groups=self.channels)
        return y[:, :, 1:-1, 1:-1]  # (2H + 2) -> 2H, aligned with the input grid


def _instance_norm(channels: int) -> nn.Module:
    return norm_layer("instance", channels)


#: How much of a residual of the wrong sign ``additive_rain`` lets through.
WRONG_SIGN_SLOPE = 0.1


class ResnetGenerator(nn.Module):
    """The CUT/DCLGAN ResNet generator, one flat layer list so encoder layers have stable indices.

    Layer order (as in the reference code, which the ``nce_layers`` indices refer to):
    0 pad, 1 conv7, 2 norm, 3 relu, then per downsampling conv/norm/relu/blur
    (4-7 and 8-11), then one entry per residual block (12...), then per
    upsampling blur/conv/norm/relu, then pad, conv7, tanh.

    ``n_downsampling`` is 2 in the reference. With 0 the residual blocks work at
    full resolution (entries 4... are the blocks), so a 1-pixel streak never has
    to pass a quarter-resolution bottleneck; at a quarter of the width this costs
    the same per pixel as the reference layout.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, global_residual: bool = False, residual_sign: int = 0,
                 n_downsampling: int = 2):
        super().__init__()
        self.global_residual = global_residual
        self.residual_sign = residual_sign  # -1: x - leaky(y), +1: x + leaky(y), 0: x + y (needs global_residual)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), _instance_norm(ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(n_downsampling):
            layers += [nn.Conv2d(ch, ch * 2, 3, padding=1), _instance_norm(ch * 2), nn.ReLU(True), BlurDownsample(ch * 2)]
            ch *= 2
        layers += [ReflectResBlock(ch, "instance") for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [BlurUpsample(ch), nn.Conv2d(ch, ch // 2, 3, padding=1), _instance_norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, layers: Sequence[int] | None = None, encode_only: bool = False):
        """Translate ``x`` (in [-1, 1]); with ``layers``, also return those layers' features.

        ``encode_only`` stops after the deepest requested layer and returns only the
        features, which is all PatchNCE needs.
        """
        if not layers:
            return self._output(x, self.model(x))
        wanted = set(layers)
        last = max(wanted)
        feats = []
        h = x
        for i, layer in enumerate(self.model):
            h = layer(h)
            if i in wanted:
                feats.append(h)
            if encode_only and i == last:
                return feats
        return self._output(x, h), feats

    def _output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The image: ``y`` itself, or ``x`` plus the (optionally sign-constrained) residual ``y``."""
        if not self.global_residual:
            return y
        if self.residual_sign == 0:
            return x + y
        # leaky, not a plain ReLU: the identity loss drove every pixel of a ReLU residual
        # below zero within 360 steps, where no gradient could ever revive it
        return x + self.residual_sign * F.leaky_relu(y, WRONG_SIGN_SLOPE)

    def feature_channels(self, layers: Sequence[int]) -> list[int]:
        """Channel count of each requested layer's output (for sizing the projection heads)."""
        with torch.no_grad():
            feats = self(torch.zeros(1, 3, 16, 16), layers, encode_only=True)
        return [f.shape[1] for f in feats]


class PatchDiscriminator(nn.Module):
    """PatchGAN (70x70 receptive field at n_layers 3) with anti-aliased strides, as in CUT."""

    def __init__(self, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, padding=1), nn.LeakyReLU(0.2, True), BlurDownsample(ndf)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, padding=1), _instance_norm(ndf * mult),
                       nn.LeakyReLU(0.2, True), BlurDownsample(ndf * mult)]
        prev, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, padding=1), _instance_norm(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchSampleMLP(nn.Module):
    """Samples the same random locations from each feature map and projects them to unit vectors.

    One two-layer MLP per encoder layer (CUT's ``PatchSampleF`` with ``mlp_sample``).
    Passing the ``ids`` returned for one image set samples the same locations
    from another, which is what makes patches comparable across the two encoders.
    """

    def __init__(self, channels: Sequence[int], dim: int = 256):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, dim), nn.ReLU(), nn.Linear(dim, dim)) for c in channels
        )

    def forward(self, feats: Sequence[torch.Tensor], num_patches: int, ids: Sequence[torch.Tensor] | None = None):
        out, used = [], []
        for k, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            b, c, h, w = feat.shape
            flat = feat.permute(0, 2, 3, 1).reshape(b, h * w, c)
            if ids is None:
                idx = torch.randperm(h * w, device=feat.device)[: min(num_patches, h * w)]
            else:
                idx = ids[k]
            sample = flat[:, idx, :].reshape(-1, c)
            out.append(F.normalize(mlp(sample), dim=1, eps=1e-7))
            used.append(idx)
        return out, used


def patch_nce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, tau: float = 0.07, images: int = 1) -> torch.Tensor:
    """InfoNCE over patches: each query must pick out its own key among the other keys.

    ``feat_q`` and ``feat_k`` are ``N x D`` with N = ``images`` x patches, image
    by image (as :class:`PatchSampleMLP` returns them). Keys are detached. The
    reference trains with one image per batch, so its negatives are the other
    patches *of the same image*; with ``images`` > 1 we keep exactly that
    (negatives never cross images), which also keeps the cost linear in the
    batch size. Returns the per-patch loss (``N``).
    """
    feat_k = feat_k.detach()
    q = F.normalize(feat_q, dim=1, eps=1e-8).reshape(images, -1, feat_q.shape[1])
    k = F.normalize(feat_k, dim=1, eps=1e-8).reshape(images, -1, feat_k.shape[1])
    logits = torch.bmm(q, k.transpose(1, 2))  # B x P x P cosine similarities; diagonal = positives
    p = logits.shape[1]
    pos = logits.diagonal(dim1=1, dim2=2).unsqueeze(2)
    neg = logits.masked_fill(torch.eye(p, dtype=torch.bool, device=logits.device)[None], -10.0)
    out = (torch.cat([pos, neg], dim=2) / tau).reshape(images * p, p + 1)
    return F.cross_entropy(out, torch.zeros(images * p, dtype=torch.long, device=out.device), reduction="none")


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss, averaged over real and fake as in the reference (x 0.5)."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


def jitter_brightness(x: torch.Tensor, amount: float) -> torch.Tensor:
    """Shift each image's brightness by U(-amount, amount) (in [0, 1] units) on a [-1, 1] tensor.

    Unpaired sets differ in average brightness by chance (RainTrainL clean 001-100
    average 107.5/255, rainy 101-190 106.4/255 whose own clean frames average 100.8),
    and a discriminator uses that cue before it learns what rain looks like; the
    generator then brightens everything. Random shifts much larger than the gap hide it.
    """
    if amount <= 0:
        return x
    shift = (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2 - 1) * (2 * amount)
    return (x + shift).clamp(-1, 1)


def init_xavier(module: nn.Module, gain: float = 0.02) -> None:
    """The reference init: Xavier-normal weights with gain 0.02, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------
# spec


class GeneratorPair(nn.ModuleDict):
    """``{"G_A": rain -> clean, "G_B": clean -> rain}``; calling it dispatches by name.

    Calling through the container (not ``bundle["G_A"]``) keeps every forward
    pass inside whatever wrapper the engine puts around the bundle (DDP).
    """

    def forward(self, which: str, x: torch.Tensor, layers: Sequence[int] | None = None, encode_only: bool = False):
        return self[which](x, layers, encode_only)


def build(config: dict[str, Any]) -> GeneratorPair:
    """The shipped bundle: both generators, no discriminators."""
    additive = bool(config.get("additive_rain", False))  # weights from before session 4 lack the key
    if additive and not config["global_residual"]:
        raise ValueError("additive_rain needs global_residual (it constrains the residual's sign)")
    n_down = int(config.get("n_downsampling", 2))  # weights from before session 7 lack the key
    bundle = GeneratorPair({
        "G_A": ResnetGenerator(config["ngf"], config["n_blocks"], config["global_residual"], -1 if additive else 0, n_down),
        "G_B": ResnetGenerator(config["ngf"], config["n_blocks"], config["global_residual"], 1 if additive else 0, n_down),
    })
    init_xavier(bundle, config["init_gain"])
    return bundle


_COMMON = {
    "n_layers_d": 3,
    "nce_dim": 256,
    "num_patches": 256,
    "nce_tau": 0.07,
    "lambda_gan": 1.0,
    "lambda_nce": 2.0,
    "lambda_idt": 1.0,
    "lr_heads": 1e-3,
    "lr_d_mult": 1.0,
    "init_gain": 0.02,
    "init_gain_d": 0.02,
    "brightness_jitter": 0.0,
    "additive_rain": False,
    "w_prior": 0.0,
    "n_downsampling": 2,
    "prior_rain": {"none": 0.1, "fine": 0.6, "drizzle": 0.2, "light": 0.1},
}

PRESETS = {
    # The authors' configuration: resnet_9blocks, ngf/ndf 64, NCE on layers 4, 8, 12, 16.
    "paper": {"ngf": 64, "n_blocks": 9, "ndf": 64, "nce_layers": [4, 8, 12, 16], "global_residual": False, **_COMMON},
    # Small enough to train on one CPU core in under two hours (session 7): residual blocks at full
    # resolution, NCE on the stem's ReLU and blocks 2 and 4, and the procedural rain prior weighted so
    # that it, not the discriminators near chance, leads the first thousands of steps.
    "cpu": {"ngf": 16, "n_blocks": 4, "ndf": 16, "nce_layers": [3, 5, 7], "global_residual": True,
            **_COMMON, "n_downsampling": 0, "w_prior": 100.0},
}


def traits(config: dict[str, Any]) -> Traits:
    """Sides a multiple of 2 ** n_downsampling (each stride-2 stage halves them and the upsampling
    doubles them back); the 7x7 reflection pad needs 4 pixels, and the residual blocks' pads 2 at
    the coarsest scale."""
    m = 2 ** int(config.get("n_downsampling", 2))  # as build(): files from before the key had 2
    # InstanceNorm statistics depend on the whole image: tiles only approximate it
    return Traits(size_multiple=m, min_size=max(4, 2 * m) - m + 1,  # the smallest side padding up to max(4, 2m)
                  tiling=Tiling.APPROXIMATE, tile_margin=64, min_tile=768, bytes_per_pixel=2048.0,
                  input_range=(-1.0, 1.0))


SPEC = register_model(ModelSpec(
    "dcdgan", build=build, traits_of=traits, presets=PRESETS, default_for=("unpaired", "rainify"),
    derain_net=lambda bundle, variant: bundle["G_A"], rainify_net=lambda bundle: bundle["G_B"],
    training=Training("derain_cli.train.recipes.dcdgan:DCDGANRecipe", modes=("unpaired",)),
    card=Card("Unpaired deraining GAN with dual contrastive (PatchNCE) guidance; also renders rain.",
              "Chen et al., Unpaired Deep Image Deraining Using Dual Contrastive Learning, CVPR 2022"),
))
