"""Make docs/jrgr_rainify.png: clean crops, the rain jrgr's G2 renders on them, and Rain100L's rain.

Rows: clean input | ``derain rainify --model jrgr`` output (B + G2(streak layer), see
``derain_cli.models.jrgr.RealRainRenderer``) | the Rain100L *test* rainy image of the same
scene, for comparison (test images were never used in training). Photos are processed
whole and a centre crop is shown. Usage (from the repo root):

    python benchmarks/jrgr_rainify_figure.py [--weights FILE] [--out docs/jrgr_rainify.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEST = REPO.parent / "shared" / "data" / "rain100l" / "test"
STEMS = ("004", "021", "057")
CROP = 140
GAP = 4


def crop_middle(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    size = min(size, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="jrgr weights (default: the shipped file)")
    parser.add_argument("--data", type=Path, default=TEST, help="folder with clean/ and rainy/")
    parser.add_argument("--stems", nargs="*", default=list(STEMS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "jrgr_rainify.png")
    args = parser.parse_args()

    import cv2

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8
    from derain_cli.weightfile import atomic_write_bytes

    model = load_model("jrgr", weights=args.weights, device="cpu", threads=1, task="rainify")
    columns = []
    for stem in args.stems:
        clean = read_rgb8(args.data / "clean" / f"{stem}.png")
        rainy = read_rgb8(args.data / "rainy" / f"{stem}.png")
        columns.append([crop_middle(img, CROP) for img in (clean, model.process(clean), rainy)])

    n = len(columns)
    canvas = np.full((3 * CROP + 2 * GAP, n * CROP + (n - 1) * GAP, 3), 255, np.uint8)
    for c, column in enumerate(columns):
        for r, img in enumerate(column):
            y, x = r * (CROP + GAP), c * (CROP + GAP)
            canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
    ok, buf = cv2.imencode(".png", canvas[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise SystemExit("could not encode the figure")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, buf.tobytes())
    print(f"wrote {args.out}: rows = clean, jrgr rainify (G2), Rain100L rain")


if __name__ == "__main__":
    main()
