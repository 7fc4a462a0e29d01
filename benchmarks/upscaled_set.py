"""Copy a rainy/clean folder pair enlarged by a factor: the same rain, as a camera with more pixels sees it.

Rain in a 24-megapixel photo is many pixels wide; the benchmark sets are 0.15-0.5 megapixels.
Enlarging both sides of every pair (bicubic) keeps the pairs exact and makes the rain that
many times coarser, which is what ``derain run --work-size`` is for. For measuring only: the
enlarged sets are test sets still.

    python benchmarks/upscaled_set.py SRC DST --factor 3
    derain bench DST --model dualstage --work-size 512
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="a folder with rainy/ and clean/")
    parser.add_argument("dst", type=Path)
    parser.add_argument("--factor", type=float, default=3.0)
    args = parser.parse_args()
    if not (args.src / "rainy").is_dir() or not (args.src / "clean").is_dir():
        raise SystemExit(f"{args.src}: needs rainy/ and clean/ folders")
    if args.factor <= 1:
        raise SystemExit("--factor must be above 1")
    for side in ("rainy", "clean"):
        (args.dst / side).mkdir(parents=True, exist_ok=True)
        for path in sorted((args.src / side).iterdir()):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                continue
            h, w = img.shape[:2]
            big = cv2.resize(img, (round(w * args.factor), round(h * args.factor)), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(args.dst / side / (path.stem + ".png")), big)
    print(f"wrote {args.dst} (x{args.factor:g})")


if __name__ == "__main__":
    main()
