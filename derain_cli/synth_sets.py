"""Folders of synthesized rain-fog images: ``derain synth`` and the ``rain100l-fog`` set.

Output layout (the same as the benchmark sets): ``OUT/rainy/NAME.png``,
``OUT/clean/NAME.png`` and ``OUT/params/NAME.json``. Every file is written
atomically and an output folder that contains an input is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DerainError, ImageError
from .imageio import list_images, read_rgb8
from .rainrender import RenderConfig, render_pair
from .synth import image_seed, parse_fog, synthesize
from .imageio import write_png  # noqa: F401 (one implementation, in imageio)
from .weightfile import atomic_write_bytes


#: The rain100l-fog evaluation set: Rain100L test *rainy* images with fog only.
RAIN100L_FOG = {"fog": 0.5, "seed": 2024, "rain": "none"}


class RenderedParams:
    """The JSON record of one rendered pair: its seed and every drawn parameter."""

    def __init__(self, seed: int, info: dict):
        self.seed, self.info = seed, info

    def to_dict(self) -> dict:
        return {"seed": int(self.seed), "renderer": "rainrender", **self.info}


def _check_out(out: Path, *inputs: Path) -> None:
    out_r = out.resolve()
    for src in inputs:
        src_r = src.resolve()
        if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
            raise DerainError(f"output folder {out} overlaps input folder {src}; choose another -o")


def synthesize_folder(
    src: Path,
    out: Path,
    *,
    rain: str = "light",
    fog: str | float = 0.0,
    seed: int = 0,
    clean_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    render: RenderConfig | None = None,
) -> int:
    """Synthesize every image of ``src`` into ``out``; returns the image count.

    ``clean_dir`` (optional) holds the ground truth for already-rainy inputs
    (matched by file stem); without it the input itself is the clean copy.
    ``render`` replaces the physical presets with the training renderer
    (:mod:`derain_cli.rainrender`); its clean output is the exposed target.
    """
    if render is not None and clean_dir is not None:
        raise DerainError("--clean is for rainy inputs; the training rain families render on clean photos")
    src, out = Path(src), Path(out)
    fog_range = parse_fog(fog)
    files = list_images(src)
    _check_out(out, src, *( [Path(clean_dir)] if clean_dir else []))
    clean_by_stem = {p.stem: p for p in list_images(Path(clean_dir))} if clean_dir else {}
    if clean_dir:
        missing = [p.name for p in files if p.stem not in clean_by_stem]
        if missing:
            raise DerainError(f"{len(missing)} images have no clean match in {clean_dir} (first: {missing[0]})")
    for i, path in enumerate(files):
        img = read_rgb8(path).astype(np.float32) / 255.0
        s = image_seed(seed, path.name)
        if render is not None:  # what training sees: rendered rain, the target after the same exposure
            rainy, target, info = render_pair(img, np.random.default_rng(s), render)
            clean, params = (target * 255).round().astype(np.uint8), RenderedParams(s, info)
        else:
            rainy, params = synthesize(img, s, rain=rain, fog=fog_range)
            clean = read_rgb8(clean_by_stem[path.stem]) if clean_dir else (img * 255).round().astype(np.uint8)
        if clean.shape != img.shape:
            raise DerainError(f"{path.name}: clean image size {clean.shape[:2]} differs from {img.shape[:2]}")
        name = path.stem + ".png"
        write_png(out / "rainy" / name, rainy)
        write_png(out / "clean" / name, clean)
        info = params.to_dict() | {"source": path.name, "base_seed": seed}
        atomic_write_bytes(out / "params" / (path.stem + ".json"), (json.dumps(info, indent=1) + "\n").encode())
        if progress:
            progress(i + 1, len(files))
    return len(files)


def build_rain100l_fog(data_root: str | os.PathLike, out: str | os.PathLike, progress=None) -> Path:
    """Build ``rain100l-fog`` from ``DATA/rain100l/test`` into ``out`` (fixed fog and seed).

    ``data_root`` may be the folder holding ``rain100l/`` or ``rain100l/test`` itself.
    """
    root = Path(data_root)
    for cand in (root / "rain100l" / "test", root / "test", root):
        if (cand / "rainy").is_dir() and (cand / "clean").is_dir():
            test = cand
            break
    else:
        raise DerainError(f"no Rain100L test set (rainy/ and clean/) under {root}")
    synthesize_folder(
        test / "rainy", Path(out), rain=RAIN100L_FOG["rain"], fog=RAIN100L_FOG["fog"],
        seed=RAIN100L_FOG["seed"], clean_dir=test / "clean", progress=progress,
    )
    return Path(out)
