"""How much of a model's remaining error is one tone change per photo (a gain and an offset per channel).

A veil of rain accumulation the model left, or a brightness it changed, is a global affine map
between its output and the clean photo; streaks it left are not. Fitting that map to each output
with the clean photo in hand (an oracle: no model sees the clean photo) says how far a perfect
global tone correction would go, and so whether the error left is tone or streaks.

    derain bench FOLDER --model dualstage.general --save-dir OUT
    python benchmarks/tone_oracle.py OUT/dualstage.general FOLDER/clean
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def fit_tone(output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``output`` (uint8 RGB) mapped by the least-squares gain and offset of each channel onto ``reference``."""
    out = output.astype(np.float64)
    fitted = np.empty_like(out)
    for c in range(3):
        x, y = out[..., c].ravel(), reference[..., c].astype(np.float64).ravel()
        design = np.stack([x, np.ones_like(x)], 1)
        gain, offset = np.linalg.lstsq(design, y, rcond=None)[0]
        fitted[..., c] = out[..., c] * gain + offset
    return np.clip(fitted, 0, 255).round().astype(np.uint8)


def mean_y_offset(output: np.ndarray, reference: np.ndarray) -> float:
    """Mean luma (BT.601, 0-255) of ``output`` minus ``reference``'s: > 0, a veil left; < 0, the photo darkened."""
    weights = np.array([0.299, 0.587, 0.114])
    return float((output.astype(np.float64) @ weights).mean() - (reference.astype(np.float64) @ weights).mean())


def main() -> None:
    from derain_cli.datasets import pair_by_stem
    from derain_cli.errors import DerainError
    from derain_cli.evaluate import OUTPUT_TAG, read_for_scoring
    from derain_cli.metrics import psnr_y, to_uint8

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", type=Path, help="a model's outputs (derain bench --save-dir OUT writes them to OUT/MODEL)")
    parser.add_argument("clean", type=Path, help="the clean photos, paired by file name")
    args = parser.parse_args()
    try:
        pairs = pair_by_stem(args.outputs, args.clean, "output", "reference", first_tag=OUTPUT_TAG)
    except DerainError as exc:
        raise SystemExit(str(exc))
    rows = []
    for pair in pairs:
        out, ref = to_uint8(read_for_scoring(pair.first)), to_uint8(read_for_scoring(pair.second))
        if out.ndim != 3 or ref.ndim != 3:
            raise SystemExit(f"{pair.stem}: colour images only")
        rows.append((pair.stem, psnr_y(out, ref), psnr_y(fit_tone(out, ref), ref)))
        print(f"{pair.stem:24s} output {rows[-1][1]:6.2f}  tone oracle {rows[-1][2]:6.2f}  "
              f"mean Y {mean_y_offset(out, ref):+6.1f} levels")
    mean = np.mean([r[1:] for r in rows], axis=0)
    print(f"{'mean of ' + str(len(rows)):24s} output {mean[0]:6.2f}  tone oracle {mean[1]:6.2f}  (Y-PSNR, dB)")


if __name__ == "__main__":
    main()
