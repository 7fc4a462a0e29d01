"""Make the training and validation folders that weights.toml's commands name (``runs/data/...``).

The folders hold symbolic links into the research data (``$DERAIN_DATA`` or ``--data``), never copies:

- ``rl_split/train`` = RainTrainL pairs 001-190, ``rl_split/val`` = 191-200 (held out);
- ``val/rl_heldout`` = the same 191-200;
- ``val/{jorder_heavy,sirr_val,rain13k_sample}`` = every 2nd pair of dev_foreign_rain in numeric order
  (rain13k_sample: of the pairs up to 1024 px on the long side), for choosing checkpoints only;
- ``val/rain_free`` = the clean images of those four, as input and target: what a model does to a
  photo without rain (it should leave it alone);
- ``val/night_rl`` = rain rendered at night on the clean images of ``val/rl_heldout`` (the only folder
  written, not linked: ``derain synth ... --rain general --night --seed 7`` with the streak bank), to see
  whether a model removes lamp-lit rain from dark scenes;
- ``val/backlit_rl`` = the renderer's ``backlit`` family (dense short drops lit from behind) on the same
  clean images, with the default extras (``derain synth ... --rain backlit --seed 9``);
- ``real_rain/train`` = 90 of the 100 real rainy photos, ``real_rain/check`` = 10.jpg, 20.jpg ... 100.jpg
  (never trained on: a visual check set);
- ``jrgr/{train,val}`` = RainTrainL 001-195 / 196-200 (the jrgr.rain100l recipe);
- ``dcdgan/clean`` = clean 001-100, ``dcdgan/rainy`` = rainy 101-190, ``dcdgan/val`` = pairs 191-200;
- ``rainfog/clean`` = clean 001-100, ``rainfog/rainy`` = rainy 151-190, ``rainfog/val`` = pairs 191-200 and
  ``rainfog/fog_source`` = rainy 101-150, to be fogged into ``rainfog/rainy`` (recipes/rainfog-rain100l.toml);
- ``rainfog_general/clean`` = clean 001-190 and the 73 clean photos, ``rainfog_general/rainy`` = rainy 101-190 and
  ``real_rain/train``, ``rainfog_general/photos`` = the clean photos to render rain on (recipes/rainfog-general.toml).

Usage: ``python benchmarks/make_splits.py [--data DIR] [--out runs/data]``.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from PIL import Image


def numeric(path: Path) -> tuple[int, str]:
    """Sort key: the last number in the stem, so 2.png comes before 10.png."""
    found = re.findall(r"\d+", path.stem)
    return (int(found[-1]) if found else -1, path.name)


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.resolve())


def link_pairs(root: Path, names: list[str], out: Path) -> None:
    for name in names:
        for side in ("rainy", "clean"):
            link(root / side / name, out / side / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("DERAIN_DATA"),
                        help="the research data folder (default: $DERAIN_DATA)")
    parser.add_argument("--out", type=Path, default=Path("runs/data"))
    args = parser.parse_args()
    if args.data is None:
        raise SystemExit("give --data DIR or set DERAIN_DATA")
    rl = args.data / "rain100l" / "train"
    names = sorted((p.name for p in (rl / "rainy").iterdir()), key=lambda n: numeric(Path(n)))
    link_pairs(rl, names[:190], args.out / "rl_split" / "train")
    link_pairs(rl, names[190:], args.out / "rl_split" / "val")
    link_pairs(rl, names[190:], args.out / "val" / "rl_heldout")
    link_pairs(rl, names[:195], args.out / "jrgr" / "train")
    link_pairs(rl, names[195:], args.out / "jrgr" / "val")
    for arch, rainy in (("dcdgan", names[100:190]), ("rainfog", names[150:190])):
        for name in names[:100]:
            link(rl / "clean" / name, args.out / arch / "clean" / name)
        for name in rainy:
            link(rl / "rainy" / name, args.out / arch / "rainy" / name)
        link_pairs(rl, names[190:], args.out / arch / "val")
    for name in names[100:150]:
        link(rl / "rainy" / name, args.out / "rainfog" / "fog_source" / name)
    photos = [f for sub in ("kodak", "wikimedia") for f in sorted((args.data / "clean_photos" / sub).iterdir(), key=numeric)
              if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
    for name in names[:190]:
        link(rl / "clean" / name, args.out / "rainfog_general" / "clean" / name)
    for name in names[100:190]:
        link(rl / "rainy" / name, args.out / "rainfog_general" / "rainy" / name)
    for f in photos:
        link(f, args.out / "rainfog_general" / "clean" / f"{f.parent.name}_{f.name}")
        link(f, args.out / "rainfog_general" / "photos" / f"{f.parent.name}_{f.name}")
    for dev in ("jorder_heavy", "sirr_val", "rain13k_sample"):
        root = args.data / "dev_foreign_rain" / dev
        files = sorted((root / "rainy").iterdir(), key=numeric)
        files = [f for f in files if max(Image.open(f).size) <= 1024]
        link_pairs(root, [f.name for f in files[::2]], args.out / "val" / dev)
    for dev in ("jorder_heavy", "sirr_val", "rain13k_sample", "rl_heldout"):
        for f in sorted((args.out / "val" / dev / "clean").iterdir()):
            for side in ("rainy", "clean"):
                link(f, args.out / "val" / "rain_free" / side / f"{dev}_{f.name}")
    from derain_cli.rainrender import GENERAL_MIX, NIGHT_EXTRAS, RenderConfig, load_streak_bank
    from derain_cli.synth_sets import synthesize_folder

    rendered = {  # folder: (seed, its renderer), on the held-out RainTrainL scenes; made once
        "night_rl": (7, lambda: RenderConfig(mix=dict(GENERAL_MIX), extras=dict(NIGHT_EXTRAS),
                                             bank=load_streak_bank(args.data / "rain_streaks_garg06"))),
        "backlit_rl": (9, lambda: RenderConfig(mix={"backlit": 1.0})),
    }
    for name, (seed, render) in rendered.items():
        if not (args.out / "val" / name / "rainy").is_dir():
            synthesize_folder(args.out / "val" / "rl_heldout" / "clean", args.out / "val" / name, seed=seed, render=render())
    real = sorted((args.data / "real_rain" / "train").iterdir(), key=numeric)
    real = [f for f in real if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
    for f in real:
        part = "check" if numeric(f)[0] % 10 == 0 else "train"
        link(f, args.out / "real_rain" / part / f.name)
        if part == "train":
            link(f, args.out / "rainfog_general" / "rainy" / f"real_{f.name}")
    for sub in sorted(p for p in args.out.rglob("*") if p.is_dir() and not any(q.is_dir() for q in p.iterdir())):
        print(f"{sub}: {sum(1 for _ in sub.iterdir())} files")


if __name__ == "__main__":
    main()
