"""``derain train`` and ``derain export``: the command every shipped weight file was made with."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from ..errors import DerainError


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise DerainError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def train_command(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Architecture to train (see `derain models`); default: jrgr for paired/semi data, dcdgan for unpaired."
    ),
    paired: Optional[Tuple[Path, Path]] = typer.Option(None, "--paired", help="RAINY_DIR CLEAN_DIR, paired by file stem."),
    render: List[Path] = typer.Option([], "--render", help="CLEAN_DIR of photos to render new rain on at every step (repeatable); with --paired or --semi, mixed in at --render-ratio."),
    render_ratio: float = typer.Option(0.7, "--render-ratio", help="Share of training pairs rendered with --render (the rest are the real pairs)."),
    render_mix: Optional[str] = typer.Option(None, "--render-mix", help="Rain families and weights, e.g. downpour=0.4,photoreal=0.3,fine=0.2,light=0.1 (the default)."),
    streaks: Optional[Path] = typer.Option(None, "--streaks", help="Folder of streak textures for the photoreal family (e.g. rain_streaks_garg06)."),
    unpaired: Optional[Tuple[Path, Path]] = typer.Option(None, "--unpaired", help="CLEAN_DIR RAINY_DIR, unrelated images."),
    semi: Optional[Tuple[Path, Path, Path]] = typer.Option(None, "--semi", help="RAINY_DIR CLEAN_DIR REAL_RAINY_DIR."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, log). Default runs/MODEL."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Named size preset of the model (e.g. cpu, paper)."),
    sets: List[str] = typer.Option([], "--set", help="Override a config value: key=value (repeatable)."),
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
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast (fast on CPUs with AMX, and on GPUs)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="channels_last memory format (faster convs)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N."),
    stage: Optional[int] = typer.Option(None, "--stage", help="Training stage, for recipes that have stages (jrgr)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a model on paired, unpaired or semi-supervised data (resumable; torchrun-ready).

    `derain train --resume RUN_DIR` alone continues a run with the options its folder recorded.
    """
    from ..train.resume import DATA_FLAGS, check_against_run, resumed_options, run_state

    # by name: typer vendors its own click, so its ParameterSource is not click's
    explicit = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    command = "derain " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if resume is not None and not explicit & (set(DATA_FLAGS) | {"render"}):
        opts = resumed_options(ctx.params, explicit, resume, command)
        return _train_and_report(opts)
    chosen = [(m, v) for m, v in (("paired", paired), ("unpaired", unpaired), ("semi", semi)) if v]
    if not chosen and render:
        chosen = [("paired", ())]
    if len(chosen) != 1:
        raise DerainError("give exactly one of --paired RAINY CLEAN, --unpaired CLEAN RAINY, --semi RAINY CLEAN REAL "
                          "(or --render CLEAN_DIR alone)")
    if resume is not None and init is not None:
        raise DerainError("--resume and --init exclude each other")
    mode, folders = chosen[0]
    from ..registry import DEFAULT_TRAIN_MODELS, get_spec

    saved = run_state(resume).get("options") if resume is not None else None
    if saved is not None:
        check_against_run(ctx.params, explicit, saved)
        model = model or saved["model"]
    elif resume is not None and explicit & {"sets", "preset"}:
        check_against_run(ctx.params, explicit & {"sets", "preset"}, {})
    if model is None:
        model = DEFAULT_TRAIN_MODELS[mode]
        typer.echo(f"derain: training {model}, the default for --{mode} data (choose another with --model)", err=True)

    get_spec(model)  # unknown model -> clear error before importing the engine
    from ..train.engine import TrainOptions

    options = {"stage": stage} if stage is not None else {}
    render_opts = None
    if render:
        from ..rainrender import parse_mix

        try:
            mix = parse_mix(render_mix) if render_mix else None
        except ValueError as exc:
            raise DerainError(f"--render-mix: {exc}") from None
        render_opts = {"folders": [str(f) for f in render], "ratio": render_ratio, "mix": mix,
                       "streaks": str(streaks) if streaks else None}
    opts = TrainOptions(
        model=model, mode=mode, folders=[str(f) for f in folders], out=out or Path("runs") / model,
        preset=preset, overrides=_parse_sets(sets), patch=patch, batch=batch, steps=steps, epochs=epochs,
        max_minutes=max_minutes, lr=lr, ema=ema, seed=seed, val=tuple(map(str, val)) if val else None,
        val_sets=[str(v) for v in val_sets], render=render_opts,
        val_every=val_every, save_every=save_every, resume=resume, init=init, export=export,
        threads=threads, bf16=bf16, channels_last=channels_last, device=device,
        recipe_options=options, progress=not quiet, command=command,
    )
    _train_and_report(opts)


def _train_and_report(opts) -> None:
    from ..train.engine import train

    result = train(opts)
    best = f", best val PSNR-Y {result.best_psnr:.2f} dB" if result.best_psnr is not None else ""
    typer.echo(f"{result.stopped} at step {result.step}{best}; weights: {result.export}")
    if result.stopped == "interrupted":
        raise typer.Exit(130)


def export_command(
    run_dir: Optional[Path] = typer.Argument(None, help="Run folder of `derain train` (not with --onnx)."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write: .safetensors, or .onnx with --onnx."),
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
