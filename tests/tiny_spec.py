"""Test-only models: tiny convolutional nets with known receptive fields, random weights.

Used by the inference-core tests so they do not depend on any trained architecture.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from derain_cli.registry import Card, ModelSpec, Tiling, Traits, register_model, unregister_model
from derain_cli.weightfile import save_weights
from tiny_configs import TINY as TINY_CONFIGS  # every architecture, small (tiling, ONNX tests)


class TinyConv(nn.Module):
    """``layers`` 3x3 convs with a residual: receptive-field margin == ``layers`` pixels."""

    def __init__(self, width: int = 8, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
        for _ in range(layers - 2):
            mods += [nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
        mods += [nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1)]
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return x + 0.5 * self.body(x)


class TinyUNet(nn.Module):
    """Two stride-2 levels (size multiple 4): checks tile alignment for strided models."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.inc = nn.Conv2d(3, width, 3, padding=1)
        self.down1 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.up1 = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        a = torch.relu(self.inc(x))
        b = torch.relu(self.down1(a))
        c = torch.relu(self.down2(b))
        b = b + self.up2(c)
        a = a + self.up1(b)
        return x + 0.5 * self.out(torch.relu(a))


class TinyNorm(nn.Module):
    """InstanceNorm: output depends on whole-image statistics (not tile safe)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.InstanceNorm2d(width)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + 0.3 * self.out(torch.relu(self.norm(self.conv(x))))


class Bundle(nn.Module):
    def __init__(self, net: nn.Module, rain: nn.Module | None = None):
        super().__init__()
        self.derain = net
        if rain is not None:
            self.rain = rain


def _build(config):
    kind = config.get("kind", "conv")
    if kind == "unet":
        net = TinyUNet(config["width"])
    elif kind == "norm":
        net = TinyNorm(config["width"])
    else:
        net = TinyConv(config["width"], config.get("layers", 3))
    return Bundle(net, TinyConv(config["width"], 2) if config.get("rain") else None)


def make_spec(name: str = "tinytest", kind: str = "conv", **fields) -> ModelSpec:
    """A spec of one of the nets above; ``fields`` set spec fields or :class:`Traits` fields."""
    config = {"width": 8, "layers": 3, "kind": kind, "rain": True}
    traits = dict(tile_margin=8, bytes_per_pixel=256.0)
    if kind == "unet":
        traits.update(size_multiple=4, tile_margin=16)
    if kind == "norm":
        traits.update(tiling=Tiling.APPROXIMATE, min_tile=96, tile_margin=16)
    trait_names = {f.name for f in dataclasses.fields(Traits)}
    traits.update({k: v for k, v in fields.items() if k in trait_names})
    base = dict(
        name=name,
        card=Card("test-only tiny net"),
        presets={"tiny": config},
        default_preset="tiny",
        build=_build,
        derain_net=lambda bundle, variant: bundle.derain,
        rainify_net=lambda bundle: bundle.rain,
        traits_of=lambda cfg: Traits(**traits),
    )
    base.update({k: v for k, v in fields.items() if k not in trait_names})
    return ModelSpec(**base)


def tiny_net(name: str, seed: int = 0):
    """``(spec, config, net)``: the derain network of a registered architecture, tiny, seeded, in eval mode."""
    from derain_cli.registry import get_spec

    spec = get_spec(name)
    config = spec.config(**TINY_CONFIGS[name])
    torch.manual_seed(seed)
    bundle = spec.build(config)
    return spec, config, spec.derain_net(bundle, spec.variants[0]).eval()


def randomize(net: nn.Module, gain: float = 1.0, seed: int = 0) -> nn.Module:
    """Redraw every weight matrix at ``gain / sqrt(fan_in)``: untrained nets that change images a lot.

    Default initialisations leave several architectures close to the identity (zeroed last
    layers, small residuals), and an identity agrees with itself however it is tiled.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (gain / p[0].numel() ** 0.5))
    return net


def save_random_weights(spec: ModelSpec, path: Path, seed: int = 0) -> Path:
    """Build ``spec`` with random weights (seeded) and save them like a shipped file."""
    torch.manual_seed(seed)
    config = spec.config()
    bundle = spec.build(config)
    save_weights(path, bundle.state_dict(), architecture=spec.name, config=config)
    return path


def install(request, spec: ModelSpec) -> None:
    """Register ``spec`` through the public API for one test (``--model NAME`` finds it); removed after it."""
    register_model(spec)
    request.addfinalizer(lambda: unregister_model(spec.name))


def installed_tiny_weights(tmp_path: Path, request) -> Path:
    """Register the tiny test model and save random weights for it: the body of a ``tiny`` fixture."""
    spec = make_spec()
    install(request, spec)
    return save_random_weights(spec, tmp_path / "tiny.safetensors")


def write_random_image(path: Path, h: int = 24, w: int = 32) -> Path:
    """A seeded random RGB image in the format ``path``'s suffix names."""
    import cv2
    import numpy as np

    rgb = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    path.write_bytes(cv2.imencode(path.suffix, rgb)[1].tobytes())
    return path
