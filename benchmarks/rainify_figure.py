"""Make docs/MODEL_rainify.png: clean images, the rain a model renders on them, and the dataset's own rain.

Rows: clean input | ``derain rainify --model MODEL`` output | the dataset's rainy image of
the same scene, for comparison. Images are processed whole (dcdgan's InstanceNorm
statistics as in use) and a centre crop is shown. Per model (its defaults below):

* ``dcdgan`` (G_B): RainTrainL 003, 017, 042. Its rainy images 001..100 were never shown
  to the model, which trained on rainy 101..190.
* ``jrgr`` (B + G2(streak layer), see ``derain_cli.models.jrgr.RealRainRenderer``): the
  Rain100L *test* images 004, 021, 057 (never used in training).

Usage (from the repo root):

    python benchmarks/rainify_figure.py dcdgan [--weights FILE] [--out docs/dcdgan_rainify.png]
    python benchmarks/rainify_figure.py jrgr
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from figure_png import center_crop, grid, write_png

REPO = Path(__file__).resolve().parents[1]
RAIN100L = REPO.parent / "shared" / "data" / "rain100l"
#: model -> (data folder with clean/ and rainy/, stems, crop size, label of the third row)
DEFAULTS = {
    "dcdgan": (RAIN100L / "train", ("003", "017", "042"), 120, "dataset rain"),
    "jrgr": (RAIN100L / "test", ("004", "021", "057"), 140, "Rain100L rain"),
}
GAP = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(DEFAULTS))
    parser.add_argument("--weights", type=Path, default=None, help="weights file (default: the shipped one)")
    parser.add_argument("--data", type=Path, default=None, help="folder with clean/ and rainy/")
    parser.add_argument("--stems", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=None, help="default docs/MODEL_rainify.png")
    args = parser.parse_args()
    data, stems, crop, third = DEFAULTS[args.model]
    data, stems = args.data or data, args.stems or stems
    out = args.out or REPO / "docs" / f"{args.model}_rainify.png"

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8

    model = load_model(args.model, weights=args.weights, device="cpu", threads=1, task="rainify")
    rows: list[list[np.ndarray]] = [[], [], []]
    for stem in stems:
        clean = read_rgb8(data / "clean" / f"{stem}.png")
        rainy = read_rgb8(data / "rainy" / f"{stem}.png")
        for row, img in zip(rows, (clean, model.process(clean), rainy)):
            row.append(center_crop(img, crop))
    write_png(grid(rows, crop, GAP), out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB): rows = clean, {args.model} rainify, {third}")


if __name__ == "__main__":
    main()
