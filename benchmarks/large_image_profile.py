"""Where the time of a big photo goes: `derain run`'s steps on a 24 MP JPEG, timed one by one in-process.

`bench_large_image.py` times the real command as a whole; this splits the same work: importing
torch, decoding, dualstage's head (all before its attention: the context's head tiles), its
attention blocks, its tail (the layers after them: the tiles), encoding and writing. Per pixel,
each phase is set beside the same phase of a 481 x 321 photo run whole (the prediction
`bench_large_image.py` uses), so what tiling adds shows where it is.

    python benchmarks/large_image_profile.py --threads 2
    python benchmarks/large_image_profile.py --threads 2 --width 3000 --height 2000

Tiles run on several workers at once, so the tiled tail is timed as a whole (wall time), not per layer.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_large_image import make_photo


class Clock:
    """Wall seconds per label, summed; ``wrap`` times every call of an object's method."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def add(self, label: str, seconds: float) -> None:
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds

    def wrap(self, obj, name: str, label: str) -> None:
        method = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)

        setattr(obj, name, timed)


def instrument(derainer, clock: Clock) -> None:
    """Time dualstage's attention blocks, what follows them, its tile context and each process() call."""
    net = derainer.net
    for block in net.stage2.blocks:
        clock.wrap(block, "forward_lean", "attention")
        clock.wrap(block, "forward", "attention")
    clock.wrap(net.stage2, "finish", "tail")
    if net.fullres is not None:
        clock.wrap(net.fullres, "forward", "tail")
    clock.wrap(derainer, "tile_context", "context")
    clock.wrap(derainer, "process", "process")


def phases(clock: Clock) -> dict[str, float]:
    """Wall seconds of the head (everything before the attention), the attention and the tail.

    Tiled, the tail is the tiles' phase as a whole (they run on several workers at once);
    whole, it is stage 2's last layers plus the refiner, and the head what is left.
    """
    s = clock.seconds
    attention, context = s.get("attention", 0.0), s.get("context", 0.0)
    if context:
        return {"head": context - attention, "attention": attention, "tail": s["process"] - context}
    tail = s.get("tail", 0.0)
    return {"head": s["process"] - attention - tail, "attention": attention, "tail": tail}


def small_phases(derainer, clock: Clock, repeats: int) -> tuple[dict[str, float], int]:
    """The phases of a 481 x 321 photo run whole, median of ``repeats`` runs, in seconds per run."""
    rgb = np.random.default_rng(1).integers(0, 256, (321, 481, 3), dtype=np.uint8)
    derainer.process(rgb)
    runs = []
    for _ in range(repeats):
        clock.seconds.clear()
        derainer.process(rgb)
        runs.append(phases(clock))
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}, rgb.shape[0] * rgb.shape[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dualstage", help="a dualstage weights name (its phases are timed)")
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="derain-profile-"))
    src, out = work / "rainy_large.jpg", work / "rainy_large_derained.jpg"
    make_photo(src, args.width, args.height)
    clock = Clock()
    start = time.perf_counter()
    import torch  # noqa: F401  (timed: the CLI pays it once per command)

    clock.add("import torch", time.perf_counter() - start)
    from derain_cli.api import load_model
    from derain_cli.imageio import read_image, write_image

    start = time.perf_counter()
    derainer = load_model(args.model, device="cpu", threads=args.threads, notify=lambda _: None)
    if derainer.spec.name != "dualstage":
        sys.exit(f"{args.model}: this profile times dualstage's phases; bench_large_image.py times any model")
    clock.add("load model", time.perf_counter() - start)
    start = time.perf_counter()
    photo = read_image(src)
    clock.add("decode JPEG", time.perf_counter() - start)
    fixed = dict(clock.seconds)

    instrument(derainer, clock)
    small, small_px = small_phases(derainer, clock, args.repeats)
    clock.seconds.clear()
    rgb = derainer.process(photo.rgb)
    big = phases(clock)
    start = time.perf_counter()
    write_image(out, photo.with_pixels(rgb))
    fixed["encode + write JPEG"] = time.perf_counter() - start

    px = args.width * args.height
    print(f"{args.model} on a {args.width}x{args.height} JPEG, {args.threads} thread(s), tile {derainer.last_tile}")
    print(f"{'step':28s} {'seconds':>8s} {'us/px':>7s} {'481x321 us/px':>14s}")
    for label, seconds in fixed.items():
        print(f"{label:28s} {seconds:8.2f}")
    predicted = sum(small.values()) / small_px * px
    for label, seconds in big.items():
        print(f"{label:28s} {seconds:8.2f} {seconds / px * 1e6:7.3f} {small[label] / small_px * 1e6:14.3f}")
    network = sum(big.values())
    print(f"{'network (process)':28s} {network:8.2f} {network / px * 1e6:7.3f} {predicted / px * 1e6:14.3f}"
          f"   ratio {network / predicted:.2f} (481x321: median of {args.repeats})")
    total = network + sum(fixed.values())
    print(f"{'total':28s} {total:8.2f}   ratio {total / predicted:.2f} with the steps around the network")
    for p in work.iterdir():
        p.unlink()
    work.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
