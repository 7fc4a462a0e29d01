"""Rewrite a weights file's metadata so it names data locations as ``$DERAIN_DATA/...``, not this machine's.

A run's metadata records the folders and the command it was trained with, as given: absolute
paths of the machine that trained it. Shipped files must not carry them. Tensors are copied
unchanged (same dtypes and values); only metadata strings change. Usage:

    python benchmarks/scrub_paths.py IN.safetensors OUT.safetensors --root "$DERAIN_DATA"
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--root", required=True, help="the absolute data folder to call $DERAIN_DATA")
    args = parser.parse_args()

    from safetensors import safe_open

    from derain_cli.weightfile import machine_path, portable, write_safetensors

    with safe_open(str(args.src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata() or {}
    os.environ["DERAIN_DATA"] = args.root  # what portable() writes as $DERAIN_DATA
    clean = {k: portable(v) for k, v in metadata.items()}
    write_safetensors(args.dst, tensors, clean)
    left = [k for k, v in clean.items() if machine_path(v)]
    print(f"wrote {args.dst}; metadata keys still naming a machine path: {left or 'none'}")

if __name__ == "__main__":
    main()
