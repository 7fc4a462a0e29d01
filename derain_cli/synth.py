"""Rain and fog synthesis with the physical degradation model.

A rainy-foggy image is ``I = T * (J + R) + (1 - T) * A`` with ``J`` the clean
scene, ``R`` the rain-streak layer, ``T = exp(-beta * d)`` the transmission for
a depth map ``d`` and ``A`` the atmospheric light. :func:`degrade` and
:func:`transmission` are plain arithmetic, so they work on numpy arrays (data
synthesis) and on torch tensors (the differentiable prior inside ``rainfog``).

Everything random takes a ``numpy.random.Generator``: the same seed gives the
same image, bit for bit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Rain presets: (layers, streak density range, length range px, intensity range, width px, optional blur sigma px).
#: ``drizzle`` is as sparse as Rain100L's streaks (about 5% of pixels covered; ``light`` covers about 20%).
#: ``fine`` imitates the Photoshop-style rain of Rain100L/RainTrainL: many thin streaks, soft-edged
#: (``blur``: Gaussian sigma range in px applied to the drops before the motion blur) and of
#: widely varying brightness.
RAIN_PRESETS: dict[str, dict[str, Any]] = {
    "fine": {"layers": (1, 2), "density": (0.0006, 0.0018), "length": (18, 50), "intensity": (0.2, 0.6), "width": (1, 1), "blur": (0.5, 1.0)},
    "drizzle": {"layers": (1, 2), "density": (0.0003, 0.0012), "length": (12, 35), "intensity": (0.25, 0.6), "width": (1, 2)},
    "light": {"layers": (1, 3), "density": (0.0008, 0.003), "length": (15, 45), "intensity": (0.2, 0.55), "width": (1, 2)},
    "heavy": {"layers": (3, 5), "density": (0.006, 0.016), "length": (18, 45), "intensity": (0.35, 0.75), "width": (1, 3)},
}
RAIN_CHOICES = (*RAIN_PRESETS, "none")

#: ``fog = 1`` gives ``beta = FOG_BETA`` on a depth map in [0, 1] (farthest transmission ~0.1).
FOG_BETA = 2.3


# -- the degradation model (numpy or torch) ---------------------------------------------
def transmission(depth, beta):
    """``T = exp(-beta * d)``; ``depth`` and ``beta`` may be arrays or tensors."""
    if hasattr(depth, "neg") and hasattr(depth, "exp"):  # torch tensor
        return (-beta * depth).exp()
    return np.exp(-np.asarray(beta, dtype=np.float32) * depth).astype(np.float32)


def degrade(clean, trans, atmos, rain=0.0):
    """``I = T * (J + R) + (1 - T) * A`` (broadcasting; T=1 and R=0 return J exactly)."""
    return trans * (clean + rain) + (1 - trans) * atmos


def restore(image, trans, atmos, rain=0.0, t_min: float = 0.05):
    """Invert :func:`degrade` for ``J`` given ``T``, ``A`` and ``R`` (``T`` floored at ``t_min``)."""
    if hasattr(trans, "clamp"):
        t = trans.clamp(min=t_min)
    else:
        t = np.maximum(trans, t_min)
    return (image - (1 - t) * atmos) / t - rain


# -- depth proxies and rain layers (numpy) -----------------------------------------------
def depth_proxy(image: np.ndarray, mode: str = "mixed", horizon: float = 0.0) -> np.ndarray:
    """A plausible ``H x W`` depth in [0, 1] for an outdoor photo (1 = far).

    ``ramp``: far at the top, near at the bottom (outdoor horizon prior).
    ``luminance``: a heavily smoothed brightness map (bright, flat regions such as
    sky tend to be far). ``mixed``: their average, which is what fog uses.
    """
    import cv2

    h, w = image.shape[:2]
    ramp = np.clip(1.0 - np.linspace(0.0, 1.0, h, dtype=np.float32) + horizon, 0.0, 1.0)
    ramp = np.repeat(ramp[:, None], w, axis=1)
    if mode == "ramp":
        return ramp
    lum = image[..., :3].astype(np.float32).mean(axis=2)
    sigma = max(h, w) / 12.0
    lum = cv2.GaussianBlur(lum, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    lo, hi = float(lum.min()), float(lum.max())
    lum = (lum - lo) / (hi - lo) if hi - lo > 1e-6 else np.full_like(lum, 0.5)
    if mode == "luminance":
        return lum.astype(np.float32)
    if mode != "mixed":
        raise ValueError(f"unknown depth proxy {mode!r}")
    return (0.5 * ramp + 0.5 * lum).astype(np.float32)


def _motion_kernel(length: int, angle_deg: float, width: int) -> np.ndarray:
    """A normalised line kernel of ``length`` px at ``angle_deg`` from vertical."""
    import cv2

    size = length + 2 if length % 2 else length + 3
    k = np.zeros((size, size), np.float32)
    c = size // 2
    a = np.deg2rad(angle_deg)
    dx, dy = np.sin(a) * length / 2, np.cos(a) * length / 2
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, thickness=width)
    return k / max(k.sum(), 1e-6)


def render_rain(h: int, w: int, rng: np.random.Generator, preset: str = "light") -> tuple[np.ndarray, list[dict]]:
    """An ``H x W`` rain-streak layer in [0, 1] and the parameters of each layer.

    Each layer: sparse bright noise -> motion blur along one angle and length ->
    scaled to an intensity. Layers share a wind direction with a small jitter,
    as real rain falling through one wind field does.
    """
    import cv2

    p = RAIN_PRESETS[preset]
    n_layers = int(rng.integers(p["layers"][0], p["layers"][1] + 1))
    wind = float(rng.uniform(-30, 30))
    rain = np.zeros((h, w), np.float32)
    layers = []
    for _ in range(n_layers):
        density = float(rng.uniform(*p["density"]))
        length = int(rng.integers(p["length"][0], p["length"][1] + 1))
        angle = wind + float(rng.uniform(-6, 6))
        width = int(rng.integers(p["width"][0], p["width"][1] + 1))
        intensity = float(rng.uniform(*p["intensity"]))
        noise = (rng.random((h, w), dtype=np.float32) < density).astype(np.float32)
        noise *= rng.uniform(0.5, 1.0, size=(h, w)).astype(np.float32)
        if "blur" in p:
            noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(*p["blur"])), borderType=cv2.BORDER_REFLECT)
        streaks = cv2.filter2D(noise, -1, _motion_kernel(length, angle, width), borderType=cv2.BORDER_REFLECT)
        peak = float(np.percentile(streaks[streaks > 0], 99)) if np.any(streaks > 0) else 1.0
        streaks = np.clip(streaks / max(peak, 1e-6), 0, 1) * intensity
        rain = 1 - (1 - rain) * (1 - streaks)  # screen blend: layers never exceed 1
        layers.append({"density": density, "length": length, "angle": angle, "width": width, "intensity": intensity})
    return rain, layers


def check_rain_mix(mix: dict[str, float]) -> None:
    """Refuse a prior mix :func:`rain_mix_layers` cannot draw from, before training starts."""
    from .rainrender import FAMILIES

    rendered = [k for k in FAMILIES if k not in RAIN_PRESETS and k != "photoreal"]
    unknown = set(mix) - set(RAIN_CHOICES) - set(rendered)
    if unknown:
        raise ValueError(f"unknown rain kind(s) {', '.join(sorted(unknown))} in prior_rain; choose from "
                         f"{', '.join([*RAIN_CHOICES, *rendered])}")
    if not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError("prior_rain needs at least one kind with a positive weight")


def rain_mix_layers(n: int, h: int, w: int, rng: np.random.Generator, mix: dict[str, float]) -> np.ndarray:
    """``n`` rain layers ``(n, H, W)``, each of a kind drawn from ``mix`` (kind -> probability).

    A kind is a preset here, ``"none"`` (an empty layer, so a model trained on the
    result also learns to leave rain-free images alone), or one of the rendered
    families of :mod:`derain_cli.rainrender` that need no streak bank (``moderate``,
    ``downpour``, ``dash``, ``backlit``, ``sheet``): the training priors of the unpaired models
    use it, and the families let them see heavy rain as well as Rain100L's. Their recipes
    check the mix once (:func:`check_rain_mix`), not at every step.
    """
    from .rainrender import rain_layer

    kinds, probs = zip(*mix.items())
    probs = np.asarray(probs, np.float64) / sum(probs)
    layers = []
    for _ in range(n):
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        if kind == "none":
            layers.append(np.zeros((h, w), np.float32))
        elif kind in RAIN_PRESETS:
            layers.append(render_rain(h, w, rng, kind)[0])
        else:
            layers.append(rain_layer(kind, h, w, rng)[0].astype(np.float32))
    return np.stack(layers)


def parse_fog(text: str | float) -> tuple[float, float]:
    """``"0.5"`` -> (0.5, 0.5); ``"0.2-0.8"`` -> (0.2, 0.8) (drawn per image)."""
    s = str(text).strip()
    parts = s.split("-", 1) if "-" in s[1:] else [s]
    try:
        lo, hi = (float(parts[0]), float(parts[-1]))
    except ValueError:
        raise ValueError(f"--fog must be a number in 0..1 or a range like 0.2-0.8, not {s!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"--fog must lie in 0..1 (low <= high), not {s!r}")
    return lo, hi


@dataclass
class SynthParams:
    """Everything needed to reproduce one synthesized image (saved as JSON)."""

    seed: int
    rain: str
    fog: float
    beta: float
    atmospheric_light: list[float]
    depth: str = "mixed"
    horizon: float = 0.0
    rain_layers: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthesize(
    clean: np.ndarray, seed: int, rain: str = "light", fog: tuple[float, float] | float = 0.0
) -> tuple[np.ndarray, SynthParams]:
    """Rain and fog on one image (float ``H x W x 3`` in [0, 1]); returns ``(image, params)``.

    The output is clipped to [0, 1]. ``seed`` alone fixes every random choice.
    """
    if rain not in RAIN_CHOICES:
        raise ValueError(f"rain must be one of {', '.join(RAIN_CHOICES)}, not {rain!r}")
    lo, hi = (fog, fog) if isinstance(fog, (int, float)) else fog
    rng = np.random.default_rng(seed)
    h, w = clean.shape[:2]
    clean = clean.astype(np.float32)
    strength = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    beta = FOG_BETA * strength
    gray = float(rng.uniform(0.7, 0.95))
    tint = rng.uniform(-0.03, 0.03, size=3)
    atmos = np.clip(gray + tint, 0, 1).astype(np.float32)
    horizon = float(rng.uniform(-0.1, 0.2))
    rain_layers: list[dict] = []
    r = np.zeros((h, w, 1), np.float32)
    if rain != "none":
        layer, rain_layers = render_rain(h, w, rng, rain)
        r = layer[..., None]
    d = depth_proxy(clean, "mixed", horizon)[..., None]
    out = degrade(clean, transmission(d, beta), atmos, r)
    params = SynthParams(
        seed=int(seed), rain=rain, fog=strength, beta=beta, atmospheric_light=[float(a) for a in atmos],
        depth="mixed", horizon=horizon, rain_layers=rain_layers,
    )
    return np.clip(out, 0.0, 1.0).astype(np.float32), params


def image_seed(base_seed: int, name: str) -> int:
    """A per-image seed from the run seed and the file name (independent of listing order)."""
    import hashlib

    digest = hashlib.sha256(f"{base_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def rms_contrast(image: np.ndarray) -> float:
    """Standard deviation of luminance, the usual global contrast measure."""
    return float(np.asarray(image, np.float32)[..., :3].mean(axis=-1).std())


def local_contrast(image: np.ndarray, sigma: float = 2.0) -> float:
    """RMS of luminance detail (image minus its blur): the contrast fog takes away.

    Global RMS contrast is a poor fog gauge because a depth-varying haze adds a
    smooth gradient of its own; detail contrast is scaled by ``T`` everywhere.
    """
    import cv2

    lum = np.asarray(image, np.float32)[..., :3].mean(axis=-1)
    return float((lum - cv2.GaussianBlur(lum, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)).std())
