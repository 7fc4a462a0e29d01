"""Make a contact sheet of models side by side on real rainy photos (no ground truth exists for them).

Each ``--row LABEL=MODEL[:VARIANT][@WEIGHTS][+workN[-copy]]`` adds a row (``+workN``: derained with
``--work-size N``, ``-copy`` adding ``--copy-only``); the first row is always the input. Photos are downscaled to ``--size`` on
their long side (as training loads them), enlarged ``--enlarge`` times if asked (a camera with
more pixels), derained whole, and a ``--crop`` square from the centre of each is shown, so
streaks stay visible at the sheet's size. Usage (from the repo root), the two figures in the README:

    python benchmarks/real_rain_sheet.py --out docs/jrgr_real.png --photos 2.jpg 88.jpg 14.jpg 61.jpg \\
        --crop 160 --row "G1 (stage 1)=jrgr:synthetic" --row "G3 (stage 2)=jrgr:real"
    python benchmarks/real_rain_sheet.py --out docs/semimsn_real.png --photos 2.jpg 88.jpg 14.jpg 61.jpg \\
        --crop 160 --row "semi, 8066 steps=semimsn@runs/semimsn2/model.safetensors" \\
        --row "paired only, 8245 steps=semimsn@runs/semimsn_paired_final.safetensors"

The ``runs/`` files are training outputs (not shipped); the commands that made them are in
``weights.toml`` and the README.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from figure_png import center_crop, write_png

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_rain" / "train"
PHOTOS = ("2.jpg", "14.jpg", "37.jpg", "61.jpg", "88.jpg")
LABEL_W = 120
GAP = 4


def parse_row(text: str) -> tuple[str, str, str, str | None, int, bool]:
    """``LABEL=MODEL[:VARIANT][@WEIGHTS][+workN[-copy]]`` -> (label, model, variant, weights, work size, copy only)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"--row must look like LABEL=MODEL[:VARIANT][@WEIGHTS][+workN[-copy]], not {text!r}")
    work = re.search(r"\+work(\d+)(-copy)?$", rest)
    rest = rest[: work.start()] if work else rest
    rest, _, weights = rest.partition("@")
    model, _, variant = rest.partition(":")
    return (label, model, variant or "default", weights or None, int(work.group(1)) if work else 0,
            bool(work and work.group(2)))


def fit_long_side(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return img
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def enlarge(img: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    if factor == 1:
        return img
    h, w = img.shape[:2]
    return cv2.resize(img, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_CUBIC)


def label_strip(text: str, height: int) -> np.ndarray:
    import cv2

    strip = np.full((height, LABEL_W, 3), 255, np.uint8)
    lines = text.split(" ", 1) if len(text) > 12 else [text]
    for i, line in enumerate(lines):
        y = height // 2 - 8 * (len(lines) - 1) + 18 * i
        cv2.putText(strip, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", required=True, help="LABEL=MODEL[:VARIANT][@WEIGHTS]")
    parser.add_argument("--photos", nargs="*", default=list(PHOTOS), help="file names in --data")
    parser.add_argument("--data", type=Path, default=REAL)
    parser.add_argument("--size", type=int, default=1024, help="long side the photos are scaled to")
    parser.add_argument("--enlarge", type=float, default=1.0, help="then enlarge them this many times (bicubic)")
    parser.add_argument("--crop", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8

    photos = [enlarge(fit_long_side(read_rgb8(args.data / name), args.size), args.enlarge) for name in args.photos]
    rows = [("input", [center_crop(p, args.crop) for p in photos])]
    for text in args.row:
        label, model, variant, weights, work_size, copy_only = parse_row(text)
        net = load_model(model, weights=weights, variant=variant, device="cpu", threads=1, work_size=work_size,
                         copy_only=copy_only)
        rows.append((label, [center_crop(net.process(p), args.crop) for p in photos]))

    c = args.crop
    width = LABEL_W + len(photos) * (c + GAP)
    canvas = np.full((len(rows) * (c + GAP) - GAP, width, 3), 255, np.uint8)
    for r, (label, crops) in enumerate(rows):
        y = r * (c + GAP)
        canvas[y:y + c, :LABEL_W] = label_strip(label, c)
        for i, crop in enumerate(crops):
            x = LABEL_W + i * (c + GAP)
            canvas[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    write_png(canvas, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB): rows = input, "
          + ", ".join(parse_row(t)[0] for t in args.row))


if __name__ == "__main__":
    main()
