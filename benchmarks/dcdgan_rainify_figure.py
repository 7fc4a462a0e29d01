"""Make docs/dcdgan_rainify.png: clean crops, DCD-GAN's rain rendered on them, and the dataset's own rain.

Rows: clean input | ``derain rainify --model dcdgan`` output | the RainTrainL rainy
image of the same scene (synthetic rain from the dataset, for comparison; these
rainy images 001..100 were never shown to the model, which trained on rainy
101..200). Usage (from the repo root):

    python benchmarks/dcdgan_rainify_figure.py [--weights FILE] [--out docs/dcdgan_rainify.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "rain100l" / "train"
STEMS = ("003", "017", "042")
CROP = 120
GAP = 4


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="dcdgan weights (default: the shipped file)")
    parser.add_argument("--data", type=Path, default=TRAIN, help="folder with clean/ and rainy/ (RainTrainL)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dcdgan_rainify.png")
    args = parser.parse_args()

    import cv2

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8
    from derain_cli.weightfile import atomic_write_bytes

    model = load_model("dcdgan", weights=args.weights, device="cpu", threads=1, task="rainify")
    rows: list[list[np.ndarray]] = [[], [], []]
    for stem in STEMS:
        clean = read_rgb8(args.data / "clean" / f"{stem}.png")
        rainy = read_rgb8(args.data / "rainy" / f"{stem}.png")
        rendered = model.process(clean)  # whole image: InstanceNorm statistics as in use
        for row, img in zip(rows, (clean, rendered, rainy)):
            row.append(center_crop(img, CROP))

    white = 255
    width = len(STEMS) * CROP + (len(STEMS) - 1) * GAP
    canvas = np.full((3 * CROP + 2 * GAP, width, 3), white, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = r * (CROP + GAP), c * (CROP + GAP)
            canvas[y:y + CROP, x:x + CROP] = img
    ok, buf = cv2.imencode(".png", canvas[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise SystemExit("could not encode the figure")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, buf.tobytes())
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB): rows = clean, dcdgan rainify, dataset rain")


if __name__ == "__main__":
    main()
