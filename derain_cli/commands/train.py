"""``derain train`` and ``derain export``: the command every shipped weight file was made with."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from ..errors import DerainError
from ..options import device_option, half_option, out_option, threads_option


def train_command(
    ctx: typer.Context,
    recipe_file: Optional[Path] = typer.Option(None, "--recipe", help="TOML file of these options (long names with underscores, e.g. max_minutes = 60); the command line overrides it."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Architecture to train (see `derain models`); default: jrgr for paired/semi data, dcdgan for unpaired."
    ),
    paired: Optional[Tuple[Path, Path]] = typer.Option(None, "--paired", help="RAINY_DIR CLEAN_DIR, paired by file stem."),
    render: List[Path] = typer.Option([], "--render", help="CLEAN_DIR of photos to render new rain on at every step (repeatable); with --paired or --semi, mixed in at --render-ratio."),
    render_ratio: float = typer.Option(0.7, "--render-ratio", help="Share of training pairs rendered with --render (the rest are the real pairs)."),
    render_mix: Optional[str] = typer.Option(None, "--render-mix", help="Rain families and weights, e.g. fine=0.15,light=0.1,moderate=0.15,downpour=0.2,dash=0.15,sheet=0.15,photoreal=0.1 (the default)."),
    render_extras: Optional[str] = typer.Option(None, "--render-extras", help="Change how often each extra is drawn, e.g. night=0,noise=0.6 (default exposure=0.6,night=0.12,night_clear=0.25,lighting=0.5,haze=0.3,drops=0.15,noise=0.4,jpeg=0.4)."),
    streaks: Optional[Path] = typer.Option(None, "--streaks", help="Folder of streak textures for the photoreal family (e.g. rain_streaks_garg06)."),
    unpaired: Optional[Tuple[Path, Path]] = typer.Option(None, "--unpaired", help="CLEAN_DIR RAINY_DIR, unrelated images."),
    semi: Optional[Tuple[Path, Path, Path]] = typer.Option(None, "--semi", help="RAINY_DIR CLEAN_DIR REAL_RAINY_DIR."),
    out: Optional[Path] = out_option(None, "Run folder (checkpoints, log). Default runs/MODEL."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named size preset of the model (e.g. cpu, paper)."),
    sets: List[str] = typer.Option([], "--set", help="A config value, or an option of the model's recipe (jrgr: stage): key=value (repeatable)."),
    patch: int = typer.Option(64, "--patch", help="Training crop size."),
    batch: int = typer.Option(16, "--batch", help="Batch size per process."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimizer steps."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (passes over the images) if --steps is not given."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Time budget; ends cleanly with a checkpoint."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (overrides the recipe's)."),
    ema: float = typer.Option(0.0, "--ema", help="EMA decay of the weights (0 = off; e.g. 0.999)."),
    seed: int = typer.Option(0, "--seed"),
    val: Optional[Tuple[Path, Path]] = typer.Option(None, "--val", help="RAINY_DIR CLEAN_DIR scored by Y-PSNR; the best is kept."),
    val_sets: List[Path] = typer.Option([], "--val-set", help="A folder with rainy/ and clean/ to validate on (repeatable; the score is the mean over sets)."),
    val_every: int = typer.Option(500, "--val-every"),
    save_every: int = typer.Option(500, "--save-every"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Run folder to continue exactly where it stopped."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from an exported .safetensors weights file."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also write the inference weights file here."),
    threads: Optional[int] = threads_option(),
    half: bool = half_option(),
    bf16: bool = typer.Option(False, "--bf16", hidden=True, help="Old name of --half."),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format (faster convs)."),
    device: str = device_option(),
    stage: Optional[int] = typer.Option(None, "--stage", hidden=True, help="Deprecated: --set stage=N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model on paired, unpaired or semi-supervised data (resumable; torchrun-ready).

    `derain train --resume RUN_DIR` alone continues a run with the options its folder recorded;
    `derain train --recipe FILE.toml` reads the options from a file.
    """
    from .. import reports
    from ..train import engine
    from ..train.cli_options import train_options

    result = engine.train(train_options(ctx))
    typer.echo(reports.train_line(result))
    if result.stopped == "interrupted":
        raise typer.Exit(130)


def export_command(
    run_dir: Optional[Path] = typer.Argument(None, help="Run folder of `derain train` (not with --onnx)."),
    output: Path = out_option(..., "File to write: .safetensors, or .onnx with --onnx.", "--output"),
    no_ema: bool = typer.Option(False, "--no-ema", help="Export the raw weights even if an EMA exists."),
    onnx: Optional[str] = typer.Option(None, "--onnx", help="Write this model (NAME or NAME.TAG) as ONNX instead; needs the onnx extra."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="With --onnx: the .safetensors file to export (default: the model's registered weights)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="With --onnx: the model variant to export."),
) -> None:
    """Write the inference weights file (safetensors + metadata) from a run's last checkpoint, or a model as ONNX."""
    if onnx is not None:
        if run_dir is not None:
            raise DerainError("give a run folder or --onnx MODEL, not both")
        from ..onnx_export import export_onnx

        done = export_onnx(onnx, output, weights=weights, variant=variant)
        typer.echo(f"{done['path']}  {done['architecture']}, onnxruntime matches torch within {done['max_diff']:.1e}")
        return
    if run_dir is None:
        raise DerainError("give the run folder of `derain train` to export, or --onnx MODEL")
    if output.suffix != ".safetensors":
        raise DerainError("the exported file must end in .safetensors")
    from ..train.engine import export_checkpoint
    from ..weightfile import sha256_file

    path = export_checkpoint(run_dir, output, use_ema=not no_ema)
    typer.echo(f"{path}  sha256 {sha256_file(path)}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("export")(export_command)
