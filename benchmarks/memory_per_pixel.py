"""Measure the host memory ``derain_file`` needs per pixel, beyond the model's own tile working set.

``derain run``/``batch`` refuse an image whose estimated peak does not fit in the
available RAM (``preflight.PEAK_BYTES_PER_PIXEL``); this is where those factors
come from. Each case runs in a fresh process: the model's network is replaced by
an identity (so only the pixel-proportional arrays count: decoded image, upright
copy, float32 accumulator, output, encoded bytes) with a fixed 512-pixel tile, and
the peak resident memory (``VmHWM``) minus the resident memory just before the
call is divided by the pixel count.

    python benchmarks/memory_per_pixel.py                # 4000 x 3000
    python benchmarks/memory_per_pixel.py --size 6000x4000
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = (  # (name, input suffix, bits, --compare)
    ("jpeg 8-bit", ".jpg", 8, False),
    ("png 8-bit", ".png", 8, False),
    ("png 8-bit --compare", ".png", 8, True),
    ("png 16-bit", ".png", 16, False),
    ("png 16-bit --compare", ".png", 16, True),
)

_CHILD = r"""
import sys, numpy as np, cv2, torch
from derain_cli.api import load_model
w, h, bits, compare, src, dst = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5], sys.argv[6]
top = 255 if bits == 8 else 65535
rng = np.random.default_rng(0)
img = (rng.random((h, w, 3), dtype=np.float32) * top).astype(np.uint8 if bits == 8 else np.uint16)
cv2.imwrite(src, img)
del img
model = load_model("semimsn", device="cpu")
model.net = torch.nn.Identity()
def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = vm("VmRSS:")
model.derain_file(src, dst, tile=512, compare=compare)
print((vm("VmHWM:") - base) / (w * h))
"""


def measure(width: int, height: int, suffix: str, bits: int, compare: bool, folder: Path) -> float:
    src, dst = folder / f"in{suffix}", folder / f"out{suffix}"
    res = subprocess.run([sys.executable, "-c", _CHILD, str(width), str(height), str(bits), str(int(compare)),
                          str(src), str(dst)], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the test image")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, suffix, bits, compare in CASES:
            print(f"{name:24s} {measure(width, height, suffix, bits, compare, Path(tmp)):6.1f} bytes/pixel", flush=True)


if __name__ == "__main__":
    main()
