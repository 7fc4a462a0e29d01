"""Benchmark: how close tiled output comes to whole-image output, on a mosaic of Rain100L test photos.

Six test photos (481 x 321) are laid out 3 x 2 into one 1443 x 642 image, derained
whole (the reference) and tiled, and the tiled result is scored against the whole one
by PSNR over the 8-bit RGB output (inf = identical). Tiles use the model's default
overlap; the automatic tile size is whatever ``--tile 0`` picks on this machine (it
depends on free memory, capped at 2 GiB on the CPU), or ``--budget-mib`` if given.

    python benchmarks/tile_consistency.py --data DIR        # DIR holds rainy/, or rain100l/test/rainy
    DERAIN_DATA=DIR python benchmarks/tile_consistency.py --model semimsn --tile 256 --tile 384
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_rainy(root: Path) -> Path:
    """The folder of rainy test photos under ``root`` (itself, rainy/, or rain100l/test/rainy)."""
    for candidate in (root / "rain100l" / "test" / "rainy", root / "test" / "rainy", root / "rainy", root):
        if candidate.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in candidate.iterdir()):
            return candidate
    raise SystemExit(f"tile_consistency: no Rain100L test photos under {root} (give --data DIR)")


def mosaic(folder: Path, cols: int = 3, rows: int = 2) -> np.ndarray:
    """The first ``cols * rows`` photos, cropped to the smallest size, tiled into one RGB image."""
    from derain_cli.imageio import read_rgb8

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: cols * rows]
    if len(paths) < cols * rows:
        raise SystemExit(f"tile_consistency: need {cols * rows} photos in {folder}, found {len(paths)}")
    images = [read_rgb8(p) for p in paths]
    h, w = min(i.shape[0] for i in images), min(i.shape[1] for i in images)
    images = [i[:h, :w] for i in images]
    return np.concatenate([np.concatenate(images[r * cols:(r + 1) * cols], 1) for r in range(rows)], 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="Rain100L test folder or a folder above it ($DERAIN_DATA)")
    ap.add_argument("--model", default="dualstage")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--tile", type=int, action="append", default=None, help="Tile sizes to try (repeatable; 0 = auto)")
    ap.add_argument("--tile-overlap", type=int, default=None, help="Overlap (default: the model's tile_margin)")
    ap.add_argument("--budget-mib", type=int, default=None, help="Memory the automatic tile size may plan with")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    root = args.data or (Path(os.environ["DERAIN_DATA"]) if os.environ.get("DERAIN_DATA") else None)
    if root is None:
        raise SystemExit("tile_consistency: give --data DIR or set $DERAIN_DATA")
    img = mosaic(find_rainy(root))

    from derain_cli import tiling
    from derain_cli.api import load_model
    from derain_cli.metrics import psnr_rgb

    if args.budget_mib is not None:
        tiling.CPU_BUDGET = args.budget_mib << 20
        tiling.free_memory = lambda device: (args.budget_mib << 20) / tiling.MEMORY_SHARE.get(device.type, 0.5)
    model = load_model(args.model, weights=args.weights, device="cpu", threads=args.threads)
    start = time.perf_counter()
    whole = model.process(img, tile=max(img.shape))  # a tile as big as the image = no tiling
    print(f"{args.model} on a {img.shape[1]}x{img.shape[0]} mosaic; whole image {time.perf_counter() - start:.1f} s")
    for tile in args.tile or [256, 0]:
        start = time.perf_counter()
        tiled = model.process(img, tile=tile, tile_overlap=args.tile_overlap)
        seconds = time.perf_counter() - start
        label = "auto" if tile == 0 else str(tile)
        used = f"tile {model.last_tile}, overlap {model.last_overlap}" if model.last_tile else "whole image"
        score = psnr_rgb(tiled, whole)
        print(f"--tile {label:>4} ({used}): tiled vs whole PSNR {score:.2f} dB, "
              f"max |diff| {int(np.abs(tiled.astype(int) - whole.astype(int)).max())}/255, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
