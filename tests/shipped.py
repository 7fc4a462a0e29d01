"""Shared check: a model's shipped weights load (sha256-checked) and raise PSNR on the bundled crops."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import derain_cli

CROPS = Path(derain_cli.__file__).resolve().parent / "data" / "samples" / "crops"


def psnr_gain_on_crops(model: str, variant: str | None = None) -> tuple[float, float]:
    """(mean input PSNR-Y, mean output PSNR-Y) over the bundled rainy/clean crops."""
    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8
    from derain_cli.metrics import psnr_y

    d = load_model(model, variant=variant, device="cpu", threads=1)
    before, after = [], []
    for rainy_path in sorted((CROPS / "rainy").glob("*.png")):
        rainy, clean = read_rgb8(rainy_path), read_rgb8(CROPS / "clean" / rainy_path.name)
        before.append(psnr_y(rainy, clean))
        after.append(psnr_y(d.process(rainy), clean))
    assert before, "no bundled crops"
    return float(np.mean(before)), float(np.mean(after))


def psnr_on_clean_crops(model: str) -> float:
    """Mean PSNR-Y of the model's output on the bundled *clean* crops against themselves: what it does
    to a photo without rain."""
    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8
    from derain_cli.metrics import psnr_y

    d = load_model(model, device="cpu", threads=1)
    clean = [read_rgb8(p) for p in sorted((CROPS / "clean").glob("*.png"))]
    assert clean, "no bundled crops"
    return float(np.mean([psnr_y(d.process(image), image) for image in clean]))
