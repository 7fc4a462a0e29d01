"""Training data: folders of images held in memory, served as random augmented patches.

Datasets are small (hundreds of images), so decoding once and cropping from RAM
is far faster than re-reading files every step, and it lets every image be
checked before training starts (a bad file is an error up front, not at step 5000).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DerainError
from ..imageio import list_images, read_rgb8


#: Real photos are often far larger than synthetic training images; rain streaks in a
#: 12-megapixel photo are many times wider than in Rain100L, so very large images are
#: downscaled on load to this longest side to keep the two domains at a similar scale.
MAX_SIDE = 1024


def _load(files: list[Path], patch: int, max_side: int | None) -> list[np.ndarray]:
    import cv2

    images = []
    for f in files:
        img = read_rgb8(f)
        h, w = img.shape[:2]
        if max_side and max(h, w) > max_side:
            s = max_side / max(h, w)
            img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            h, w = img.shape[:2]
        if min(h, w) < patch:
            raise DerainError(f"{f}: image is {w}x{h}, smaller than the training patch {patch}; use a smaller --patch")
        images.append(img)
    return images


def load_paired(rainy_dir, clean_dir, patch: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Pairs by file stem; a missing partner is an error naming the stems."""
    rainy = {p.stem: p for p in list_images(rainy_dir)}
    clean = {p.stem: p for p in list_images(clean_dir)}
    only_r, only_c = sorted(set(rainy) - set(clean)), sorted(set(clean) - set(rainy))
    if only_r or only_c:
        parts = []
        if only_r:
            parts.append(f"rainy without clean: {', '.join(only_r[:10])}{' ...' if len(only_r) > 10 else ''}")
        if only_c:
            parts.append(f"clean without rainy: {', '.join(only_c[:10])}{' ...' if len(only_c) > 10 else ''}")
        raise DerainError("unpaired files in paired training data; " + "; ".join(parts))
    stems = sorted(rainy)
    r = _load([rainy[s] for s in stems], patch, None)
    c = _load([clean[s] for s in stems], patch, None)
    for s, a, b in zip(stems, r, c):
        if a.shape != b.shape:
            raise DerainError(f"pair {s!r}: rainy is {a.shape[1]}x{a.shape[0]} but clean is {b.shape[1]}x{b.shape[0]}")
    return r, c, stems


def load_folder(folder, patch: int, max_side: int | None = MAX_SIDE) -> list[np.ndarray]:
    return _load(list_images(folder), patch, max_side)


class RenderSource:
    """Clean photos that become a new rainy/clean pair at every draw (:mod:`derain_cli.rainrender`).

    ``ratio`` is the share of pair draws it serves; the rest come from the real pairs
    (all of them when there are none). Draws use the sampler's generator, so a saved
    sampler state reproduces the rendered batches too.
    """

    def __init__(self, images: list[np.ndarray], cfg, ratio: float, max_zoom_out: float = 3.0):
        if not images:
            raise DerainError("no clean photos to render rain on")
        if not 0.0 < ratio <= 1.0:
            raise DerainError(f"--render-ratio must lie in (0, 1], not {ratio}")
        self.images, self.cfg, self.ratio, self.max_zoom_out = images, cfg, ratio, max_zoom_out

    def draw(self, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]:
        """One ``(rainy, clean)`` pair of ``P x P x 3`` float32 crops in [0, 1]."""
        from ..rainrender import random_crop, render_pair

        img = self.images[int(rng.integers(len(self.images)))]
        crop = random_crop(img, patch, rng, self.max_zoom_out)
        if rng.integers(0, 2):
            crop = crop[:, ::-1]
        rainy, clean, _ = render_pair(crop.astype(np.float32) / 255.0, rng, self.cfg)
        return rainy, clean


class PatchSampler:
    """Draws batches of random crops, mirrored left-right and/or turned upside down.

    No quarter turns: they would make falling rain horizontal, which no test image and no
    photo has, and a small model would spend capacity on streaks it never meets. Both
    mirrors keep streaks near-vertical, only their slant changes sign.

    ``sources`` maps batch keys to lists of images; keys in the same ``aligned``
    group share image index, crop and augmentation (rainy/clean pairs).
    ``rank``/``world`` shard the images so each DDP rank sees its own part.
    ``render`` (optional) serves part of the ``rainy``/``clean`` draws with rendered rain.
    """

    def __init__(self, sources: dict[str, list[np.ndarray]], groups: list[list[str]], patch: int,
                 batch: int, seed: int, rank: int = 0, world: int = 1, render: RenderSource | None = None):
        self.sources, self.groups, self.patch, self.batch = sources, groups, patch, batch
        self.render = render
        self.index = {}
        for group in groups:
            n = len(sources[group[0]])
            idx = np.arange(n)
            self.index[group[0]] = idx[rank::world] if n >= world else idx
        self.rng = np.random.default_rng([seed, rank])

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def _crop(self, imgs: list[np.ndarray]) -> list[np.ndarray]:
        p, rng = self.patch, self.rng
        h, w = imgs[0].shape[:2]
        y, x = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
        flip, half_turns = rng.integers(0, 2), rng.integers(0, 2)
        out = []
        for im in imgs:
            c = im[y:y + p, x:x + p]
            if flip:
                c = c[:, ::-1]
            out.append(np.rot90(c, 2 * half_turns))
        return out

    def next_batch(self) -> dict[str, np.ndarray]:
        """A dict of ``B x 3 x P x P`` float32 arrays in [0, 1]."""
        out: dict[str, list] = {k: [] for g in self.groups for k in g}
        for group in self.groups:
            idx = self.index[group[0]]
            rendered = self.render is not None and group == ["rainy", "clean"]
            for _ in range(self.batch):
                if rendered and (len(idx) == 0 or self.rng.random() < self.render.ratio):
                    rainy, clean = self.render.draw(self.rng, self.patch)
                    out["rainy"].append(rainy)
                    out["clean"].append(clean)
                    continue
                i = idx[self.rng.integers(0, len(idx))]
                for key, crop in zip(group, self._crop([self.sources[k][i] for k in group])):
                    out[key].append(crop.astype(np.float32) / 255.0)
        return {k: np.ascontiguousarray(np.stack(v).transpose(0, 3, 1, 2), dtype=np.float32)
                for k, v in out.items()}


def build_render(render: dict | None, patch: int) -> tuple[RenderSource | None, dict | None]:
    """The :class:`RenderSource` for ``{"folders", "ratio", "mix", "streaks"[, "extras"]}`` and its description."""
    if not render:
        return None, None
    from ..rainrender import GENERAL_EXTRAS, GENERAL_MIX, RenderConfig, load_streak_bank

    mix = dict(render.get("mix") or GENERAL_MIX)
    streaks = render.get("streaks")
    if not streaks and not render.get("mix"):
        mix.pop("photoreal", None)  # the default mix without a streak bank: the procedural families
    try:
        bank = load_streak_bank(streaks) if streaks else None
    except (OSError, ValueError) as exc:
        raise DerainError(f"--streaks: {exc}") from None
    try:
        cfg = RenderConfig(mix=mix, extras=dict(render.get("extras") or GENERAL_EXTRAS), bank=bank)
    except ValueError as exc:
        raise DerainError(f"--render-mix: {exc}") from None
    images = [img for folder in render["folders"] for img in load_folder(folder, patch)]
    source = RenderSource(images, cfg, float(render.get("ratio", 1.0)))
    info = {"folders": [str(f) for f in render["folders"]], "count": len(images), "ratio": source.ratio,
            "mix": mix, "extras": cfg.extras, "streaks": str(streaks) if streaks else None}
    return source, info


def build_sampler(mode: str, folders: list[str], patch: int, batch: int, seed: int,
                  rank: int = 0, world: int = 1, render: dict | None = None) -> tuple[PatchSampler, dict]:
    """The sampler for a training mode plus a description of the data for the weights metadata.

    ``render`` adds rendered pairs to the paired part (``paired`` mode may then have no folders).
    """
    source, render_info = build_render(render, patch)
    if source is not None and mode == "unpaired":
        raise DerainError("--render adds rainy/clean pairs: use it with --paired or --semi, not --unpaired")
    if mode == "paired" and not folders:
        if source is None:
            raise DerainError("paired training needs --paired RAINY CLEAN, --render CLEAN_DIR, or both")
        source.ratio = 1.0
        sources, groups = {"rainy": [], "clean": []}, [["rainy", "clean"]]
        info = {"rendered": render_info}
    elif mode == "paired":
        rainy, clean, _ = load_paired(folders[0], folders[1], patch)
        sources, groups = {"rainy": rainy, "clean": clean}, [["rainy", "clean"]]
        info = {"paired": {"rainy": str(folders[0]), "clean": str(folders[1]), "count": len(rainy)}}
    elif mode == "unpaired":
        clean, rainy = load_folder(folders[0], patch), load_folder(folders[1], patch)
        sources, groups = {"clean": clean, "rainy": rainy}, [["clean"], ["rainy"]]
        info = {"unpaired": {"clean": str(folders[0]), "clean_count": len(clean),
                             "rainy": str(folders[1]), "rainy_count": len(rainy)}}
    elif mode == "semi":
        rainy, clean, _ = load_paired(folders[0], folders[1], patch)
        real = load_folder(folders[2], patch)
        sources, groups = {"rainy": rainy, "clean": clean, "real": real}, [["rainy", "clean"], ["real"]]
        info = {"semi": {"rainy": str(folders[0]), "clean": str(folders[1]), "count": len(rainy),
                         "real": str(folders[2]), "real_count": len(real)}}
    else:
        raise DerainError(f"unknown training mode {mode!r}")
    if render_info is not None:
        info["rendered"] = render_info
    return PatchSampler(sources, groups, patch, batch, seed, rank, world, source), info
