"""Where a supervised model's error is: at rain pixels or elsewhere, on held-out pairs.

A pixel counts as rain where |rainy - clean| > 8 on the Y channel (BT.601, 8-bit). For each
pair it prints the output's PSNR-Y, the share of rain pixels, and the squared Y error at rain
pixels and elsewhere. This is what motivated the full-resolution refiners (README).

Usage (from the repo root; RainTrainL 191-200 are the held-out validation pairs):

    python benchmarks/rain_pixel_error.py dualstage runs/data/rl_split/val/rainy runs/data/rl_split/val/clean
    python benchmarks/rain_pixel_error.py dualstage VAL_RAINY VAL_CLEAN --weights OLD.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("rainy", type=Path)
    ap.add_argument("clean", type=Path)
    ap.add_argument("--weights", default=None, help="a .safetensors file (default: the shipped weights)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8
    from derain_cli.metrics import psnr_y, rgb_to_y

    torch.set_num_threads(args.threads)
    model = load_model(args.model, weights=args.weights, device="cpu")
    print("image  psnr_y  rain_px%  mse_rain  mse_elsewhere")
    for path in sorted(args.rainy.iterdir()):
        rainy, clean = read_rgb8(path), read_rgb8(args.clean / path.name)
        out = model.process(rainy)
        y = lambda a: rgb_to_y(a).astype(np.float64)  # noqa: E731
        err, rain = y(out) - y(clean), np.abs(y(rainy) - y(clean)) > 8
        print(f"{path.stem:>5}  {psnr_y(out, clean):6.2f}  {100 * rain.mean():8.1f}  {np.mean(err[rain] ** 2):8.1f}"
              f"  {np.mean(err[~rain] ** 2):13.1f}")


if __name__ == "__main__":
    main()
