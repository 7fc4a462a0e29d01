"""``derain synth``: add synthetic rain and fog to images (and build ``rain100l-fog``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import DerainError

EVAL_SETS = ("rain100l-fog",)


def synth(
    src: Optional[Path] = typer.Argument(None, help="Folder of clean images (or rainy ones with --clean)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: rainy/, clean/ and params/ are written there."),
    rain: str = typer.Option("light", "--rain", help="Rain streaks: fine (like Rain100L), drizzle, light, heavy or none "
                             "(physical model, with --fog); or what training renders: moderate, downpour, dash, backlit, sheet, photoreal, general "
                             "(the general weights' mix) or a mix like downpour=0.5,fine=0.5."),
    streaks: Optional[Path] = typer.Option(None, "--streaks", help="Streak textures for photoreal rain (rain_streaks_garg06)."),
    fog: str = typer.Option("0", "--fog", help="Fog strength 0..1, or a range like 0.2-0.8 drawn per image."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same images."),
    clean: Optional[Path] = typer.Option(None, "--clean", help="Ground-truth folder when SRC is already rainy."),
    eval_set: Optional[str] = typer.Option(
        None, "--eval-set", help="Build a named evaluation set instead (rain100l-fog) from --data."
    ),
    data: Optional[Path] = typer.Option(None, "--data", help="Data root holding rain100l/ (for --eval-set)."),
    night: bool = typer.Option(False, "--night", help="Render every image at night (dark scene, lamp-lit rain), as "
                               "training does for 12% of its pairs; with the training families."),
    extras: Optional[str] = typer.Option(None, "--extras", help="How often each extra is drawn, as derain train's "
                                         "--render-extras (e.g. coarse=1,noise=0); with the training families."),
) -> None:
    """Render rain streaks and fog with I = T*(J+R) + (1-T)*A; writes the parameters as JSON.

    Examples: derain synth photos/ -o synth/ --rain heavy --fog 0.4 --seed 1;
    derain synth --eval-set rain100l-fog --data ../shared/data -o sets/rain100l-fog
    """
    from rich.console import Console

    from ..synth import RAIN_CHOICES, parse_fog
    from ..synth_sets import build_rain100l_fog, synthesize_folder

    console = Console(stderr=True)

    def progress(i: int, n: int) -> None:
        if i == n or i % 20 == 0:
            console.print(f"  {i}/{n}", highlight=False)

    if eval_set is not None:
        if eval_set not in EVAL_SETS:
            raise DerainError(f"unknown evaluation set {eval_set!r}; choose one of {', '.join(EVAL_SETS)}")
        if src is not None:
            raise DerainError("give either a source folder or --eval-set, not both")
        if data is None:
            raise DerainError("--eval-set needs --data DIR (the folder that holds rain100l/)")
        build_rain100l_fog(data, out, progress=progress)
        console.print(f"built {eval_set} in {out}")
        return
    if src is None:
        raise DerainError("missing source folder (or use --eval-set NAME --data DIR)")
    if rain in RAIN_CHOICES:  # the physical presets draw no training extras
        for flag, given in (("--night", night), ("--extras", extras is not None)):
            if given:
                raise DerainError(f"{flag} goes with the training families (--rain general, downpour, ...), "
                                  "not the presets")
    render = None if rain in RAIN_CHOICES else training_render(rain, streaks, fog, night, extras)
    try:
        parse_fog(fog)
    except ValueError as exc:
        raise DerainError(str(exc)) from None
    n = synthesize_folder(src, out, rain=rain, fog=fog, seed=seed, clean_dir=clean, progress=progress, render=render)
    console.print(f"wrote {n} images to {out}")


def training_render(rain: str, streaks: Optional[Path], fog: str, night: bool = False, extras: Optional[str] = None):
    """The training renderer's config for ``--rain`` = a family, ``general`` or a mix (``night``: always at
    night; ``extras``: ``--render-extras``' text, over the night or day defaults)."""
    from ..rainrender import (FAMILIES, GENERAL_EXTRAS, GENERAL_MIX, NIGHT_EXTRAS, RenderConfig, load_streak_bank,
                              parse_extras, parse_mix)
    from ..synth import RAIN_CHOICES

    if rain != "general" and rain not in FAMILIES and "=" not in rain and "," not in rain:
        kinds = [*RAIN_CHOICES, *(k for k in FAMILIES if k not in RAIN_CHOICES)]
        raise DerainError(f"--rain must be one of {', '.join(kinds)}, general or a mix like downpour=0.5,fine=0.5; "
                          f"not {rain!r}")
    if fog.strip() not in ("0", "0.0"):
        raise DerainError("--fog goes with the physical presets; the training families draw their own haze")
    try:
        drawn = parse_extras(extras or "", NIGHT_EXTRAS if night else GENERAL_EXTRAS)
    except ValueError as exc:
        raise DerainError(f"--extras: {exc}") from None
    try:
        mix = dict(GENERAL_MIX) if rain == "general" else parse_mix(rain)
        if rain == "general" and streaks is None:
            mix.pop("photoreal")
        return RenderConfig(mix=mix, extras=drawn, bank=load_streak_bank(streaks) if streaks else None)
    except (OSError, ValueError) as exc:
        raise DerainError(f"--rain {rain}: {exc}") from None


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
