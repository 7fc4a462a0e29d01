"""How much a full-resolution refiner costs: forward time on a 481x321 image and a 16x64x64
bf16 training step, per ``BLOCKSxWIDTH`` (0x16 = no refiner), for a model's cpu preset.

Usage (from the repo root; the figures in the session-9 note were taken on 2 threads):

    python benchmarks/refiner_speed_probe.py dualstage 0x16 3x16 3x24 3x32 --threads 2
    python benchmarks/refiner_speed_probe.py semimsn 0x16 3x16 4x32 --threads 2
    python benchmarks/refiner_speed_probe.py dualstage 7x20 16x32 --threads 2 --half   # bf16 forward
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("sizes", nargs="+", help="BLOCKSxWIDTH, e.g. 3x20")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--half", action="store_true", help="forward under bf16 autocast (as derain run --half)")
    args = ap.parse_args()

    import torch

    from derain_cli.registry import get_spec

    torch.set_num_threads(args.threads)
    spec = get_spec(args.model)
    for size in args.sizes:
        blocks, width = map(int, size.split("x"))
        net = spec.build(spec.config("cpu", fullres_blocks=blocks, fullres_width=width))
        net = net.eval().to(memory_format=torch.channels_last)
        x = torch.rand(1, 3, 321, 481).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.half):
            net(x)
            t = time.perf_counter()
            for _ in range(args.repeats):
                net(x)
            forward = (time.perf_counter() - t) / args.repeats
        net.train()
        opt = torch.optim.Adam(net.parameters())
        batch = torch.rand(16, 3, 64, 64).to(memory_format=torch.channels_last)

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = net(batch)
            loss = (y.float() - batch).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        t = time.perf_counter()
        for _ in range(args.repeats):
            step()
        train = (time.perf_counter() - t) / args.repeats
        params = sum(p.numel() for p in net.parameters())
        print(f"{args.model} {size}: {params:,} parameters, forward {forward:.3f} s, train step {train:.3f} s")


if __name__ == "__main__":
    main()
