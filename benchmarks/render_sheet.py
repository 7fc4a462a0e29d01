"""Contact sheet of what `derain train --render` shows a model: one row per rain family.

Each row renders the training pipeline's own draws (random crop at a random scale, mirror,
rain family, extras) on clean photos; then the general weights' mix with every extra at its
training probability, the clean targets of the same draws, and the same mix always at night. Usage, the
figure in docs/training.md (Kodak photos need no attribution):

    python benchmarks/render_sheet.py --clean "$DERAIN_DATA/clean_photos/kodak" \\
        --streaks "$DERAIN_DATA/rain_streaks_garg06" --out docs/rendered_rain.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from figure_png import write_png
from real_rain_sheet import GAP, LABEL_W, label_strip


def draws(source, rng, n: int, patch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [source.draw(rng, patch) for _ in range(n)]


def to_u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=Path, required=True, help="folder of clean photos")
    parser.add_argument("--streaks", type=Path, required=True, help="streak texture folder (photoreal family)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cols", type=int, default=5)
    parser.add_argument("--patch", type=int, default=192)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    from derain_cli.rainrender import FAMILIES, GENERAL_EXTRAS, GENERAL_MIX, NIGHT_EXTRAS, RenderConfig, load_streak_bank
    from derain_cli.train.data import RenderSource, load_folder

    photos = load_folder(args.clean, args.patch)
    bank = load_streak_bank(args.streaks)
    none = {k: 0.0 for k in GENERAL_EXTRAS}
    rows = []
    for family in FAMILIES:
        src = RenderSource(photos, RenderConfig(mix={family: 1.0}, extras=none, bank=bank), ratio=1.0)
        rows.append((family, [to_u8(r) for r, _ in draws(src, np.random.default_rng(args.seed), args.cols, args.patch)]))
    src = RenderSource(photos, RenderConfig(mix=dict(GENERAL_MIX), bank=bank), ratio=1.0)
    mixed = draws(src, np.random.default_rng(args.seed + 1), args.cols, args.patch)
    rows.append(("general mix + extras", [to_u8(r) for r, _ in mixed]))
    rows.append(("its targets", [to_u8(c) for _, c in mixed]))
    src = RenderSource(photos, RenderConfig(mix=dict(GENERAL_MIX), extras=dict(NIGHT_EXTRAS), bank=bank), ratio=1.0)
    rows.append(("at night", [to_u8(r) for r, _ in draws(src, np.random.default_rng(args.seed + 2), args.cols, args.patch)]))

    c = args.patch
    canvas = np.full((len(rows) * (c + GAP) - GAP, LABEL_W + args.cols * (c + GAP), 3), 255, np.uint8)
    for r, (label, crops) in enumerate(rows):
        y = r * (c + GAP)
        canvas[y:y + c, :LABEL_W] = label_strip(label, c)
        for i, crop in enumerate(crops):
            x = LABEL_W + i * (c + GAP)
            canvas[y:y + c, x:x + c] = crop
    write_png(canvas, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
