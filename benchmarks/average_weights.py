"""Average the tensors of weights files of one architecture and config (a "model soup").

Two fine-tunes started from the same file usually sit in one basin, and their mean can
score above either; whether it does is for validation to say (`derain bench VAL --weights OUT`).
When the files continued the same ``--init`` file (which may itself be one of them), the soup takes
a continuation's metadata with their runs' steps added up (all that training is behind it), so
``derain weights add`` counts them without a hand edit.

    python benchmarks/average_weights.py OUT.safetensors A.safetensors B.safetensors [...]
"""
from __future__ import annotations

import sys

from derain_cli.weightfile import load_weights, save_weights, sha256_file


def average(paths: list[str]) -> tuple[dict, dict]:
    states, metas = zip(*(load_weights(p) for p in paths))
    first = metas[0]
    for p, m in zip(paths[1:], metas[1:]):
        if m.get("architecture") != first.get("architecture") or m.get("config") != first.get("config"):
            raise SystemExit(f"{p}: not the same architecture and config as {paths[0]}")
    mean = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            mean[k] = sum(s[k].float() for s in states) / len(states)
        else:
            mean[k] = v
    starts = {(m.get("init") or {}).get("sha256") for m in metas}
    runs = [m for p, m in zip(paths, metas) if sha256_file(p) not in starts]  # a start file adds no steps
    if runs and len({repr(m.get("init")) for m in runs}) == 1 and all("steps" in m for m in runs):
        first = {**runs[0], "steps": sum(int(m["steps"]) for m in runs)}
    return mean, first


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    out, paths = argv[0], argv[1:]
    mean, meta = average(paths)
    info = {k: v for k, v in meta.items() if k not in ("format", "architecture", "config", "val_psnr")}
    info["averaged_from"] = paths
    digest = save_weights(out, mean, architecture=meta["architecture"], config=meta["config"], **info)
    print(f"wrote {out} (mean of {len(paths)} files), sha256 {digest}")


if __name__ == "__main__":
    main(sys.argv[1:])
