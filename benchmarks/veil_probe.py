"""How much of a known rain veil a model removes, behind no streaks, light rain or a downpour.

A veil of rain accumulation (JORDER's ``alpha * (B + S) + (1 - alpha) * A``) looks like a
washed-out photo; a model can only tell it apart by what else it sees. This puts the same veil
(alpha 0.7, grey 0.85) over clean photos with no streaks, the renderer's light rain and its
downpour streaks, and prints the share of the veil's mean brightness each output keeps
(1: all of it left, 0: removed, < 0: the photo darkened below the clean one).

    python benchmarks/veil_probe.py CLEAN_DIR [--weights FILE] [--count 10]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

ALPHA, GREY = 0.7, 0.85
LUMA = np.array([0.299, 0.587, 0.114])
STREAKS = ("none", "light", "downpour")


def veiled(clean: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """``clean`` (float RGB in [0, 1]) with ``layer`` (H x W) added as rain, then the veil; uint8."""
    rainy = np.clip(ALPHA * (clean + 0.9 * layer[..., None]) + (1 - ALPHA) * GREY, 0, 1)
    return (rainy * 255 + 0.5).astype(np.uint8)


def veil_left(process: Callable[[np.ndarray], np.ndarray], clean: np.ndarray, layer: np.ndarray) -> float:
    """Share of the veil's mean luma that ``process`` (uint8 RGB -> uint8 RGB) leaves on ``clean`` behind ``layer``."""
    veil = ((ALPHA * clean + (1 - ALPHA) * GREY - clean) * 255 @ LUMA).mean()
    out = process(veiled(clean, layer)).astype(np.float64)
    return float(((out @ LUMA).mean() - (clean * 255 @ LUMA).mean()) / veil)


def main() -> None:
    import cv2

    from derain_cli import load_model
    from derain_cli.rainrender import rain_layer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clean", type=Path, help="a folder of clean photos")
    parser.add_argument("--weights", help="a dualstage weights file (default: the bundled default)")
    parser.add_argument("--count", type=int, default=10, help="photos to use, in name order")
    args = parser.parse_args()
    model = load_model("dualstage", weights=args.weights, device="cpu")
    files = sorted(p for p in args.clean.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:args.count]
    if not files:
        raise SystemExit(f"{args.clean}: no .png or .jpg photos")
    for streaks in STREAKS:
        shares = []
        for i, path in enumerate(files):
            clean = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
            h, w = clean.shape[:2]
            layer = (np.zeros((h, w), np.float32) if streaks == "none"
                     else rain_layer(streaks, h, w, np.random.default_rng(i))[0])
            shares.append(veil_left(model.process, clean, layer))
        print(f"{streaks:9s} share of the veil left {np.mean(shares):5.2f}  (per photo {np.round(shares, 2).tolist()})")


if __name__ == "__main__":
    main()
