"""Crude proxies for how much real rain a jrgr remover takes out, on real photos without ground truth.

Per ``VARIANT@WEIGHTS`` (no file = the shipped weights), over the first N photos of
``--data`` (default ``real_rain/train``; long side fitted to 1024 px, as in ``real_rain_sheet.py``):

* light removed: mean of relu(O - B) in 8-bit units (rain adds light, so a remover that
  takes out more streaks removes more light);
* high-pass ratio: |B - blur(B)| / |O - blur(O)| (below 1: fine structure, streaks among
  it, removed).

Usage (from the repo root):

    python benchmarks/jrgr_real_rain_stats.py 30 synthetic@ real@
    python benchmarks/jrgr_real_rain_stats.py 10 --data runs/data/real_rain/check synthetic@ real@  # held back
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from real_rain_sheet import REAL, fit_long_side


def high_pass_energy(rgb: np.ndarray) -> float:
    import torch

    from derain_cli.models.jrgr import high_pass

    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    return high_pass(t, 1.5).abs().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, help="how many real photos (sorted by name)")
    parser.add_argument("nets", nargs="+", help="VARIANT@WEIGHTS, e.g. real@ or synthetic@runs/x.safetensors")
    parser.add_argument("--data", type=Path, default=REAL, help="folder of real rainy photos")
    args = parser.parse_args()

    import torch

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8

    torch.set_num_threads(1)
    files = sorted(args.data.glob("*.jpg"))[:args.count]
    if not files:
        raise SystemExit(f"no real photos in {args.data}")
    photos = [fit_long_side(read_rgb8(f), 1024) for f in files]
    for spec in args.nets:
        variant, _, weights = spec.partition("@")
        net = load_model("jrgr", weights=weights or None, variant=variant, device="cpu", threads=1)
        removed, ratio = [], []
        for photo in photos:
            background = net.process(photo)
            removed.append(np.clip(photo.astype(np.float64) - background, 0, None).mean())
            ratio.append(high_pass_energy(background) / high_pass_energy(photo))
        print(f"{spec}: light removed {np.mean(removed):.2f}/255, "
              f"high-pass ratio {np.mean(ratio):.3f} ({len(photos)} photos)")


if __name__ == "__main__":
    main()
