"""Rainy/clean training pairs rendered from clean photos, one new rendering per crop.

A model trained on one dataset's rain learns that rain; users' photos have other
rain. :func:`render_pair` draws a rain *family* and the things real photos also
carry, and returns the rainy input and the clean target:

* ``fine``: Rain100L-like thin soft streaks (the ``fine`` preset of :mod:`synth`).
* ``light``: sparse streaks of several widths (the ``light`` preset).
* ``moderate``: the rain between those and a downpour (Rain800/Rain1400-like): the
  downpour's layers at a quarter to two thirds of its density and no accumulation veil.
* ``downpour``: Rain100H-like heavy rain: dense, long (40-170 px), thin and bright streaks
  in several layers around one main direction (within 30 degrees of vertical), then JORDER's
  accumulation ``O = alpha * (B + sum_t S_t) + (1 - alpha) * A``.
* ``dash``: short, wide, soft dashes, rain caught by a fast shutter (Rain800-like).
* ``backlit``: many short drops, most dim and a few bright: a downpour lit from behind
  (a lamp, a flash, a dark street); not in the default mix.
* ``sheet``: sheets of rain, the Photoshop pipeline behind Rain800 and Rain1400: noise
  motion-blurred along the rain into long streaks, a levels curve whose floor is the
  veil of drops too small and many to resolve, screen-blended onto the photo.
* ``photoreal``: Garg & Nayar's rendered streak textures (a streak bank folder),
  scaled, rotated, motion-blurred and added in depth layers: far layers small and
  dim, near ones large, bright and soft.

Extras, each drawn per pair: exposure, white balance and depth haze (the scene's, applied
to the target too), night (a dark scene under lamps, rain lit bright against it; a quarter of
the nights without rain), uneven lighting of the rain, out-of-focus near drops, sensor noise and
JPEG compression of the rainy input; off unless asked, coarser rain and an accumulation veil drawn
apart from the streaks' density. The target never gets rain, drops, noise or JPEG.

Everything random comes from one ``numpy.random.Generator``, so a seed (or a
saved generator state) reproduces a pair bit for bit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .synth import render_rain

FAMILIES = ("fine", "light", "moderate", "downpour", "dash", "backlit", "sheet", "photoreal", "none")

#: The family mix of the ``general`` weights: rain rates from drizzle to downpour without a gap
#: (real rain is a continuum), photoreal streaks, and Rain100L-like fine streaks so the
#: light-rain benchmark is not forgotten.
GENERAL_MIX: dict[str, float] = {"fine": 0.15, "light": 0.1, "moderate": 0.15, "downpour": 0.2, "dash": 0.15,
                                 "sheet": 0.15, "photoreal": 0.1}

#: Probability of each extra per pair.
GENERAL_EXTRAS: dict[str, float] = {"exposure": 0.6, "night": 0.12, "night_clear": 0.25, "lighting": 0.5, "haze": 0.3,
                                    "drops": 0.15, "noise": 0.4, "jpeg": 0.4, "coarse": 0.0,
                                    "downpour_clear": 0.0, "veil": 0.0}

#: The extras with every pair at night and raining: what `derain synth --night` and the night figures show.
NIGHT_EXTRAS: dict[str, float] = {**GENERAL_EXTRAS, "night": 1.0, "night_clear": 0.0}


@dataclass
class RenderConfig:
    """What to render: a family mix, extras' probabilities and the streak bank."""

    mix: dict[str, float] = field(default_factory=lambda: dict(GENERAL_MIX))
    extras: dict[str, float] = field(default_factory=lambda: dict(GENERAL_EXTRAS))
    bank: list[StreakTexture] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown rain famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(FAMILIES)}")
        if not self.mix or min(self.mix.values()) < 0 or sum(self.mix.values()) <= 0:
            raise ValueError("the rain mix needs at least one family with a positive weight")
        unknown = set(self.extras) - set(GENERAL_EXTRAS)
        if unknown:
            raise ValueError(f"unknown extra(s) {', '.join(sorted(unknown))}; choose from {', '.join(GENERAL_EXTRAS)}")
        if self.mix.get("photoreal", 0) > 0 and not self.bank:
            raise ValueError("the photoreal family needs a streak bank (--streaks DIR)")


def parse_mix(text: str) -> dict[str, float]:
    """``"downpour=0.5,fine=0.5"`` -> ``{"downpour": 0.5, "fine": 0.5}``; a bare family gets weight 1."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, weight = item.partition("=")
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"rain mix weight must be a number, not {weight!r} in {text!r}") from None
    return out


def parse_extras(text: str, base: dict[str, float] = GENERAL_EXTRAS) -> dict[str, float]:
    """``"night=0,noise=0.6"`` -> every extra's probability: ``base`` (:data:`GENERAL_EXTRAS`) with those changed."""
    changed = parse_mix(text)
    for name, p in changed.items():
        if name not in GENERAL_EXTRAS:
            raise ValueError(f"unknown extra {name!r}; choose from {', '.join(GENERAL_EXTRAS)}")
        if not 0 <= p <= 1:
            raise ValueError(f"{name}={p:g}: a probability is between 0 and 1")
    return {**base, **changed}


@dataclass(frozen=True)
class StreakTexture:
    """One streak texture and the angle (degrees from vertical) its streaks already fall at."""

    image: np.ndarray
    angle: float


def streak_angle(layer: np.ndarray) -> float:
    """Dominant streak direction in degrees from vertical, positive leaning right going down.

    From the structure tensor: streaks are where the gradient is perpendicular to them.
    A slight blur first, so that the staircase of thin, aliased streaks does not bias it
    towards the diagonals.
    """
    import cv2

    gy, gx = np.gradient(cv2.GaussianBlur(np.asarray(layer, np.float64), (0, 0), 1.5))
    jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    return -0.5 * float(np.degrees(np.arctan2(2 * jxy, jxx - jyy)))


def load_streak_bank(folder: str | os.PathLike) -> list[StreakTexture]:
    """Grayscale streak textures (white streaks on black) from a folder of PNGs, with their own angle."""
    import cv2

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".png")
    images = [img for img in (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files) if img is not None]
    if not images:
        raise ValueError(f"no streak textures (.png) in {folder}")
    return [StreakTexture(img, streak_angle(img)) for img in images]


# -- rain layers --------------------------------------------------------------------------
def _line_kernel(length: int, angle: float, width: int) -> np.ndarray:
    """A normalised anti-aliased line of ``length`` px, ``angle`` degrees from vertical."""
    import cv2

    size = length + 4 + width
    size += 1 - size % 2
    k = np.zeros((size, size), np.float32)
    c, a = size / 2, np.deg2rad(angle)
    dx, dy = np.sin(a) * length / 2, np.cos(a) * length / 2
    shift = 4
    p0 = (int(round((c - dx) * 16)), int(round((c - dy) * 16)))
    p1 = (int(round((c + dx) * 16)), int(round((c + dy) * 16)))
    cv2.line(k, p0, p1, 1.0, thickness=width, lineType=cv2.LINE_AA, shift=shift)
    return k / max(float(k.sum()), 1e-6)


def _streak_layer(h: int, w: int, rng: np.random.Generator, spec: dict, angle: float,
                  blur: tuple[float, float], jitter: float) -> np.ndarray:
    """One layer of streaks: random seeds of random strength, softened and drawn out near ``angle``.

    ``spec`` holds density, length, width and intensity; the softening and the layer's own
    angle are drawn here and added to it.
    """
    import cv2

    seeds = (rng.random((h, w), dtype=np.float32) < spec["density"]).astype(np.float32)
    seeds *= rng.uniform(0.3, 1.0, size=(h, w)).astype(np.float32)
    spec["blur"] = float(rng.uniform(*blur))
    seeds = cv2.GaussianBlur(seeds, (0, 0), spec["blur"], borderType=cv2.BORDER_REFLECT)
    spec["angle"] = angle + float(rng.uniform(-jitter, jitter))
    streaks = cv2.filter2D(seeds, -1, _line_kernel(spec["length"], spec["angle"], spec["width"]),
                           borderType=cv2.BORDER_REFLECT)
    nz = streaks[streaks > 1e-6]
    peak = float(np.percentile(nz, 95)) if nz.size else 1.0
    return np.clip(streaks / max(peak, 1e-6), 0, 1) * spec["intensity"]


def _drop_layer(h: int, w: int, rng: np.random.Generator, spec: dict) -> np.ndarray:
    """One layer of drops whose strength is u^3 (most dim, a few as bright as ``spec["intensity"]``),
    each drawn as a softened line of ``spec``'s length, width, blur and angle."""
    import cv2

    seeds = (rng.random((h, w), dtype=np.float32) < spec["density"]) * rng.random((h, w), dtype=np.float32) ** 3
    kernel = cv2.GaussianBlur(_line_kernel(spec["length"], spec["angle"], spec["width"]), (0, 0), spec["blur"])
    layer = cv2.filter2D(seeds.astype(np.float32), -1, kernel / kernel.max(), borderType=cv2.BORDER_REFLECT)
    return np.clip(layer * spec["intensity"], 0, 1)


def _layered(h: int, w: int, rng: np.random.Generator, count: tuple[int, int],
             draw, layer) -> tuple[np.ndarray, list[dict]]:
    """``count`` layers from far to near, screen-combined: ``draw(near)`` gives a layer's spec,
    ``layer(spec)`` its ``H x W`` streaks in [0, 1]."""
    n = int(rng.integers(*count))
    rain = np.zeros((h, w), np.float32)
    layers = []
    for i in range(n):
        near = (i + rng.random()) / n  # 0 = far, 1 = near
        spec = draw(near)
        rain = 1 - (1 - rain) * (1 - layer(spec))
        layers.append(spec)
    return rain, layers


def downpour_layers(h: int, w: int, rng: np.random.Generator, angle: float,
                    rate: float = 1.0) -> tuple[np.ndarray, list[dict]]:
    """Heavy rain: 2-4 layers of dense, long, thin streaks; nearer layers longer and wider.

    ``rate`` scales every layer's density (the ``moderate`` family draws it below 1).
    """
    def draw(near: float) -> dict:
        return {"density": float(rng.uniform(0.0015, 0.004) * (1.3 - 0.6 * near) * rate),
                "length": int(rng.integers(40, 90) + near * rng.integers(20, 80)),
                "width": int(1 + round(near * rng.uniform(0, 1.5))),
                "intensity": float(rng.uniform(0.45, 0.8) + 0.2 * near)}

    return _layered(h, w, rng, (2, 5), draw, lambda spec: _streak_layer(h, w, rng, spec, angle, (0.3, 0.6), 4))


def dash_layers(h: int, w: int, rng: np.random.Generator, angle: float) -> tuple[np.ndarray, list[dict]]:
    """Short, wide, soft dashes (6-40 px long, 2-4 px wide): rain caught by a fast shutter.

    A phone in daylight exposes for 1/500 s or less, so drops stay short dashes instead of
    the long streaks of a slow exposure; Rain800's rain looks like this too.
    """
    def draw(near: float) -> dict:
        return {"density": float(rng.uniform(0.001, 0.004) * (1.2 - 0.5 * near)),
                "length": int(rng.integers(6, 24) + near * rng.integers(0, 17)),
                "width": int(2 + round(near * rng.uniform(0, 2))),
                "intensity": float(rng.uniform(0.3, 0.6) + 0.2 * near)}

    return _layered(h, w, rng, (1, 4), draw, lambda spec: _streak_layer(h, w, rng, spec, angle, (0.6, 1.2), 6))


def backlit_layers(h: int, w: int, rng: np.random.Generator, angle: float) -> tuple[np.ndarray, list[dict]]:
    """Many short drops in 3-5 layers (3-22 px long, 1-2 px wide), most dim, a few bright: a downpour lit from behind.

    Against a dark street, under a lamp or in a flash every drop in the air shines, far more of
    them than a daylight photo resolves, and their brightness spans a wide range (near the light or
    far from it). ``dash`` draws sparse, evenly bright dashes and ``downpour`` long streaks; neither
    looks like this field of speckled short streaks over the whole frame.
    """
    def draw(near: float) -> dict:
        return {"density": float(rng.uniform(0.004, 0.02) * (1.3 - 0.6 * near)),
                "length": int(rng.integers(3, 10) + near * rng.integers(0, 15)),
                "width": int(1 + round(near * rng.uniform(0, 1.4))),
                "intensity": float(rng.uniform(0.5, 0.8) + 0.2 * near),
                "blur": float(rng.uniform(0.3, 0.8)),
                "angle": angle + float(rng.uniform(-8, 8))}

    return _layered(h, w, rng, (3, 6), draw, lambda spec: _drop_layer(h, w, rng, spec))


def sheet_layer(h: int, w: int, rng: np.random.Generator, angle: float) -> tuple[np.ndarray, dict]:
    """Sheets of rain: streaks over a veil, in [floor, peak].

    Gaussian noise at a grain of 1-2.5 px is blurred along the rain into 15-90 px streaks;
    a levels curve turns what stands ``threshold`` deviations above the mean into streaks
    and lifts everything to ``floor``, the veil that unresolved drops cast.
    """
    import cv2

    grain = float(rng.uniform(1.0, 2.5))
    small = rng.standard_normal((int(h / grain) + 1, int(w / grain) + 1)).astype(np.float32)
    noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    length = int(rng.integers(15, 91))
    a = angle + float(rng.uniform(-4, 4))
    streaks = cv2.filter2D(noise, -1, _line_kernel(length, a, 1), borderType=cv2.BORDER_REFLECT)
    z = (streaks - streaks.mean()) / max(float(streaks.std()), 1e-6)
    threshold, spread = float(rng.uniform(0.3, 1.8)), float(rng.uniform(0.8, 2.5))
    floor = float(rng.uniform(0.0, 0.65))  # a lit sheet's veil can wash out more than half the scene
    peak = float(rng.uniform(max(0.45, floor + 0.3), 0.95))
    layer = floor + (peak - floor) * np.clip((z - threshold) / spread, 0, 1)
    return layer.astype(np.float32), {"grain": grain, "length": length, "angle": a, "threshold": threshold,
                                      "spread": spread, "floor": floor, "peak": peak}


def photoreal_layers(h: int, w: int, rng: np.random.Generator, angle: float,
                     bank: list[StreakTexture]) -> tuple[np.ndarray, list[dict]]:
    """1-3 depth layers cut from the streak bank: scaled, rotated and motion-blurred."""
    import cv2

    n = int(rng.integers(1, 4))
    rain = np.zeros((h, w), np.float32)
    layers = []
    for i in range(n):
        near = (i + rng.random()) / n
        k = int(rng.integers(len(bank)))
        tex = bank[k].image
        scale = float(0.35 + near * rng.uniform(0.4, 1.4))  # output px per texture px
        a = angle + float(rng.uniform(-4, 4))
        th, tw = tex.shape
        # output -> texture: rotate about the crop centre (turning the texture's own streak
        # angle into ``a``), scale, land at a random texture point
        cx, cy = float(rng.uniform(0.3, 0.7) * tw), float(rng.uniform(0.3, 0.7) * th)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), bank[k].angle - a, 1.0 / scale)
        m[:, 2] += (cx - w / 2, cy - h / 2)
        layer = cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT).astype(np.float32) / 255.0
        blur_len = int(rng.integers(1, 4) + near * rng.integers(0, 12))
        if blur_len > 2:
            layer = cv2.filter2D(layer, -1, _line_kernel(blur_len, a, 1), borderType=cv2.BORDER_REFLECT)
        gain = float(rng.uniform(0.6, 1.0) + 0.6 * near)
        layer = np.clip(layer * gain, 0, 1)
        rain = 1 - (1 - rain) * (1 - layer)
        layers.append({"texture": k, "scale": scale, "angle": a, "motion_blur": blur_len, "gain": gain})
    return rain, layers


def rain_layer(family: str, h: int, w: int, rng: np.random.Generator,
               bank: list[StreakTexture] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``H x W`` streak layer of one family in [0, 1], and its parameters."""
    angle = float(np.clip(rng.normal(0, 12), -30, 30))  # one main direction per image
    if family == "none":  # a photo without rain: the model must learn to leave it (and its veil-like haze) alone
        return np.zeros((h, w), np.float32), {"family": family}
    if family in ("fine", "light"):
        layer, layers = render_rain(h, w, rng, family)
        return layer, {"family": family, "layers": layers}
    if family == "downpour":
        layer, layers = downpour_layers(h, w, rng, angle)
    elif family == "moderate":
        rate = float(rng.uniform(0.25, 0.65))
        layer, layers = downpour_layers(h, w, rng, angle, rate)
        return layer, {"family": family, "angle": angle, "rate": rate, "layers": layers}
    elif family == "dash":
        layer, layers = dash_layers(h, w, rng, angle)
    elif family == "backlit":
        layer, layers = backlit_layers(h, w, rng, angle)
    elif family == "sheet":
        layer, sheet = sheet_layer(h, w, rng, angle)
        return layer, {"family": family, "angle": angle, **sheet}
    elif family == "photoreal":
        if not bank:
            raise ValueError("the photoreal family needs a streak bank")
        layer, layers = photoreal_layers(h, w, rng, angle, bank)
    else:
        raise ValueError(f"unknown rain family {family!r}; choose from {', '.join(FAMILIES)}")
    return layer, {"family": family, "angle": angle, "layers": layers}


def coarse_rain_layer(family: str, h: int, w: int, rng: np.random.Generator, bank: list[StreakTexture] | None,
                      chance: float) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`rain_layer`, drawn ``1.5-4`` times coarser with probability ``chance``: the same rain as a
    camera with that many more pixels across sees it, over a background that keeps its own detail.

    Photos of 12-50 megapixels hold rain many pixels wide, which networks trained on 0.15-0.5
    megapixel pairs leave. The layer is rendered on a grid that much smaller and enlarged
    (bicubic). With ``chance`` 0 no number is drawn, so earlier recipes render what they did.
    """
    if not chance or rng.random() >= chance:
        return rain_layer(family, h, w, rng, bank)
    import cv2

    scale = float(np.exp(rng.uniform(np.log(1.5), np.log(4.0))))
    small, params = rain_layer(family, max(8, round(h / scale)), max(8, round(w / scale)), rng, bank)
    layer = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)
    return layer, {**params, "coarse": scale}


# -- what else real photos carry -------------------------------------------------------------
def expose(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Exposure gain, gamma and white balance: a camera's rendering, shared by input and target."""
    gain = float(np.exp(rng.uniform(np.log(0.7), np.log(1.3))))
    gamma = float(rng.uniform(0.85, 1.15))
    wb = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    out = np.clip(np.power(np.clip(img, 0, 1), gamma) * gain * wb, 0, 1).astype(np.float32)
    return out, {"gain": gain, "gamma": gamma, "white_balance": [float(v) for v in wb]}


def night(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A scene at night or in a dark downpour, shared by input and target: 6-35% of the light, deeper
    shadows (gamma 1.2-2.2) and a lamp's colour, from sodium orange to cool white LED.

    Dashcams, CCTV and photographers meet rain most visibly at night: streaks lit by lamps or
    headlights, bright against a dark scene. Daylight backgrounds never show that contrast.
    The lamp colour lights the rain too, and the ``ambient`` light (a fraction of the lamp's)
    is what a night's haze or rain veil scatters: a grey daylight veil would wash the night out.
    """
    gain = float(np.exp(rng.uniform(np.log(0.06), np.log(0.35))))
    gamma = float(rng.uniform(1.2, 2.2))
    warm = float(rng.uniform(-0.3, 1.0))  # > 0: tungsten to sodium; < 0: cool LED
    lamp = np.array([1 + 0.5 * min(warm, 0), 1 - 0.3 * max(warm, 0), 1 - 0.6 * max(warm, 0)], np.float32)
    lamp = np.clip(lamp + rng.uniform(-0.04, 0.04, size=3), 0, None).astype(np.float32)
    lamp /= lamp.max()
    ambient = float(rng.uniform(0.15, 0.5))
    out = (np.power(np.clip(img, 0, 1), gamma) * gain * lamp).astype(np.float32)
    return out, {"gain": gain, "gamma": gamma, "lamp": [float(v) for v in lamp], "ambient": ambient}


def _atmosphere(rng: np.random.Generator) -> np.ndarray:
    gray = float(rng.uniform(0.7, 1.0))
    return np.clip(gray + rng.uniform(-0.03, 0.03, size=3), 0, 1).astype(np.float32)


def accumulate(img: np.ndarray, rng: np.random.Generator, light: np.ndarray | float = 1.0) -> tuple[np.ndarray, dict]:
    """JORDER's rain accumulation: ``alpha * O + (1 - alpha) * A``, a veil of scattered light.

    Down to ``alpha = 0.45``: in a real downpour the veil can hide more than half the scene.
    ``light`` scales the atmospheric light (a night's lamps, not a grey sky).
    """
    alpha = float(rng.uniform(0.45, 0.95))
    atmos = (_atmosphere(rng) * light).astype(np.float32)
    return alpha * img + (1 - alpha) * atmos, {"alpha": alpha, "atmospheric_light": [float(v) for v in atmos]}


def scene_depth(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A depth in [0, 1] (1 = far) that does not follow the picture: far at the top, plus a smooth random field.

    Not the image's blurred luminance (``synth.depth_proxy``): at crop scale that puts more haze
    right around bright objects, and a model trained on it learns to darken their surroundings,
    leaving dark halos in clean photos.
    """
    import cv2

    ramp = np.clip(1.0 - np.linspace(0.0, 1.0, h, dtype=np.float32) + float(rng.uniform(-0.1, 0.2)), 0, 1)
    field = cv2.resize(rng.random((3, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(0.7 * ramp[:, None] + 0.3 * field, 0, 1).astype(np.float32)


def rain_lighting(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """How brightly the rain at each place is lit, in ``[low, 1]``: a ramp in a random direction and a smooth field.

    Rain shows where light falls on it (the bright side of the sky, a street lamp, the
    sun behind it) and nearly vanishes elsewhere, so one photo holds a bright veil and
    faint streaks side by side; a uniformly lit layer never teaches that.
    """
    import cv2

    theta = float(rng.uniform(0, 2 * np.pi))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    ramp = np.cos(theta) * xx + np.sin(theta) * yy
    field = cv2.resize(rng.random((3, 3), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    m = 0.6 * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6) + 0.4 * np.clip(field, 0, 1)
    low = float(rng.uniform(0.0, 0.7))
    light = low + (1 - low) * (m - m.min()) / max(float(np.ptp(m)), 1e-6)
    return light.astype(np.float32), {"direction": theta, "low": low}


def haze(img: np.ndarray, depth: np.ndarray, rng: np.random.Generator,
         light: np.ndarray | float = 1.0) -> tuple[np.ndarray, dict]:
    """Depth haze ``T * B + (1 - T) * A`` with ``T = exp(-beta * d)`` (mild: beta <= 1.2); ``light`` scales ``A``."""
    beta = float(rng.uniform(0.15, 1.2))
    atmos = (_atmosphere(rng) * light).astype(np.float32)
    t = np.exp(-beta * depth)[..., None].astype(np.float32)
    return t * img + (1 - t) * atmos, {"beta": beta, "atmospheric_light": [float(v) for v in atmos]}


def near_drops(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Out-of-focus drops near the lens: soft bright discs showing a blurred background."""
    import cv2

    h, w = img.shape[:2]
    n = int(rng.integers(1, 7))
    blurred = cv2.GaussianBlur(img, (0, 0), max(2.0, min(h, w) / 40), borderType=cv2.BORDER_REFLECT)
    mask = np.zeros((h, w), np.float32)
    radii = []
    for _ in range(n):
        r = float(rng.uniform(0.02, 0.1) * min(h, w)) + 2
        cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        cv2.circle(mask, (int(cx * 16), int(cy * 16)), int(r * 16), 1.0, -1, cv2.LINE_AA, shift=4)
        radii.append(r)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, float(np.mean(radii)) / 3))[..., None]
    lift = float(rng.uniform(0.03, 0.15))
    drop = np.clip(blurred + lift, 0, 1)
    return img * (1 - mask) + drop * mask, {"count": n, "radii": radii, "lift": lift}


def sensor_noise(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Shot plus read noise: ``sigma^2 = k * I + s^2``."""
    k = float(rng.uniform(0, 0.004))
    s = float(rng.uniform(0.002, 0.02))
    sigma = np.sqrt(k * np.clip(img, 0, 1) + s * s)
    return img + rng.standard_normal(img.shape, dtype=np.float32) * sigma, {"shot": k, "read": s}


def jpeg(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """JPEG round trip at a random quality (40-95), as phones and dashcams save."""
    import cv2

    q = int(rng.integers(40, 96))
    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
    return out, {"quality": q}


def _veiled(family: str, extras: dict[str, float], rng: np.random.Generator) -> bool:
    """Whether the rain's accumulation veil goes over this pair: a downpour's, unless ``downpour_clear``
    draws it clear; a lighter rain's (not a sheet's, which has its own floor) with probability ``veil``.

    Always veiling a downpour and nothing else ties the veil to dense streaks, so a model learns to
    remove a veil only where it sees them; drawn apart, it must find the veil in the photo itself
    (lifted shadows, lost contrast). At 0 neither draws a number, so earlier recipes render what
    they did.
    """
    if family == "downpour":
        p = extras.get("downpour_clear", 0)
        return not (p and rng.random() < p)
    p = extras.get("veil", 0)
    return family not in ("sheet", "none") and bool(p) and rng.random() < p


def render_pair(clean: np.ndarray, rng: np.random.Generator,
                cfg: RenderConfig | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(rainy, target, params)`` for a float ``H x W x 3`` clean image in [0, 1].

    The target is ``clean`` after the same exposure and scene haze as the input, nothing else:
    the rain's own veil (a downpour's accumulation, a sheet's floor) is removed, a hazy day's
    atmosphere is not, or the model learns to dehaze every photo and darkens hazy scenes.
    """
    cfg = cfg or RenderConfig()
    h, w = clean.shape[:2]
    x = np.asarray(clean, np.float32)[..., :3]
    params: dict[str, Any] = {}
    ex = cfg.extras
    if rng.random() < ex.get("exposure", 0):
        x, params["exposure"] = expose(x, rng)
    lamp, ambient = np.ones(3, np.float32), np.ones(3, np.float32)
    if rng.random() < ex.get("night", 0):
        x, params["night"] = night(x, rng)
        lamp = np.asarray(params["night"]["lamp"], np.float32)
        ambient = lamp * params["night"]["ambient"]
    depth = scene_depth(h, w, rng)
    if rng.random() < ex.get("haze", 0):  # a hazy day's haze is the scene's: the target keeps it
        x, params["haze"] = haze(x, depth, rng, ambient)
    target = x
    kinds, probs = zip(*cfg.mix.items())
    p = np.asarray(probs, np.float64) / sum(probs)
    family = kinds[int(rng.choice(len(kinds), p=p))]
    if "night" in params and ex.get("night_clear", 0) and rng.random() < ex["night_clear"]:
        family = "none"  # a night without rain: dark water and lit textures are not rain to remove
    layer, params["rain"] = coarse_rain_layer(family, h, w, rng, cfg.bank, ex.get("coarse", 0))
    if "coarse" in params["rain"]:  # recorded beside the other extras
        params["coarse"] = {"scale": params["rain"].pop("coarse")}
    # rain is light: it adds to the scene, dimmer where the scene is far
    fade = 1.0 - float(rng.uniform(0, 0.5)) * depth
    if "night" in params or rng.random() < ex.get("lighting", 0):  # at night only lamps light the rain
        light, params["lighting"] = rain_lighting(h, w, rng)
        fade = fade * light
    tint = rng.uniform(0.93, 1.0, size=3).astype(np.float32) * lamp
    if family == "sheet":  # screen blend, as the pipeline it follows: the veil never clips highlights
        rainy = 1 - (1 - x) * (1 - (layer * fade)[..., None] * tint)
    else:
        rainy = x + (layer * fade)[..., None] * tint
    if _veiled(family, ex, rng):
        rainy, params["accumulation"] = accumulate(rainy, rng, ambient)
    if rng.random() < ex.get("drops", 0):
        rainy, params["drops"] = near_drops(np.clip(rainy, 0, 1), rng)
    if rng.random() < ex.get("noise", 0):
        rainy, params["noise"] = sensor_noise(rainy, rng)
    rainy = np.clip(rainy, 0, 1).astype(np.float32)
    if rng.random() < ex.get("jpeg", 0):
        rainy, params["jpeg"] = jpeg(rainy, rng)
    return rainy, np.ascontiguousarray(target, dtype=np.float32), params


def random_crop(img: np.ndarray, patch: int, rng: np.random.Generator, max_zoom_out: float = 3.0) -> np.ndarray:
    """A ``patch`` x ``patch`` crop at a random scale (a region up to ``max_zoom_out`` x larger, shrunk)."""
    import cv2

    h, w = img.shape[:2]
    top = min(max_zoom_out, min(h, w) / patch)
    s = float(np.exp(rng.uniform(0, np.log(top)))) if top > 1 else 1.0
    side = max(patch, int(round(patch * s)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    c = img[y:y + side, x:x + side]
    if side != patch:
        c = cv2.resize(c, (patch, patch), interpolation=cv2.INTER_AREA)
    return c
