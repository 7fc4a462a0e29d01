"""Where the padding goes, and what flip views add: Y-PSNR of a model on a folder of pairs.

A network whose windows need sides that are multiples of 32 (dualstage) sees mirrored
padding at inference that it never saw on its training crops. This scores the same
weights with the padding at the bottom/right only (before session 14), split between
both sides (what ``pad_to_multiple`` does now), and averaged over flip views.

    python benchmarks/padding_probe.py dualstage runs/data/rl_split/val [--weights FILE] [--limit N]

Session 14, shipped dualstage of session 13, RainTrainL 191-200: bottom/right 36.205,
split 36.320, top/left 36.305; identity + left-right flip 36.470, + up-down 36.421.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from derain_cli import load_model
from derain_cli.imageio import read_image
from derain_cli.metrics import psnr_y


def padded_forward(net, multiple: int, where: str):
    """The net on an input padded to ``multiple`` at ``where`` (br, tl, split), cropped back."""
    def forward(x):
        h, w = x.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        top, left = {"br": (0, 0), "tl": (ph, pw), "split": (ph // 2, pw // 2)}[where]
        y = net(F.pad(x, (left, pw - left, top, ph - top), mode="reflect"))
        return y[..., top:top + h, left:left + w]
    return forward


def flip_views(net, flips):
    def forward(x):
        return sum(torch.flip(net(torch.flip(x, d)), d) if d else net(x) for d in flips) / len(flips)
    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("folder", type=Path, help="folder with rainy/ and clean/")
    ap.add_argument("--weights")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--multiple", type=int, default=32, help="the side multiple the net pads to")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_model(args.model, weights=args.weights, device="cpu", threads=args.threads).net
    rainy = sorted((args.folder / "rainy").glob("*.png"))[: args.limit or None]
    pairs = [(read_image(p).rgb, read_image(args.folder / "clean" / p.name).rgb) for p in rainy]
    variants = {
        "bottom/right": padded_forward(net, args.multiple, "br"),
        "top/left": padded_forward(net, args.multiple, "tl"),
        "split": padded_forward(net, args.multiple, "split"),
        "split, flips id+lr": flip_views(padded_forward(net, args.multiple, "split"), [(), (3,)]),
        "split, flips id+ud": flip_views(padded_forward(net, args.multiple, "split"), [(), (2,)]),
    }
    for name, fn in variants.items():
        t0, scores = time.perf_counter(), []
        with torch.inference_mode():
            for r, c in pairs:
                x = torch.from_numpy(r).permute(2, 0, 1)[None].float() / 255
                y = (fn(x)[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
                scores.append(psnr_y(y, c))
        print(f"{name:22s} {np.mean(scores):.3f} dB  {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
