"""``derain eval`` (score outputs, or a model, against references) and ``derain bench``.

torch is imported only inside the commands that run a model.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import DerainError
from .run import FlipsOpt, ensemble_views


def _fmt(x: float, digits: int) -> str:
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


def _stdout_console() -> Any:
    """Results go to stdout; when piped (to a file or a note) do not squeeze tables into 80 columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _progress(console: Any, label: str):
    """A rich progress bar on stderr; returns (context manager, callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    task = bar.add_task(label, total=None)

    def update(i: int, n: int) -> None:
        bar.update(task, completed=i, total=n)

    return bar, update


def eval_command(
    first_dir: Path = typer.Argument(..., help="Derained outputs (or rainy inputs with --model)."),
    gt_dir: Path = typer.Argument(..., help="Clean references; files pair with FIRST_DIR by file stem (a _derained suffix is ignored)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Derain FIRST_DIR with this model first."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights file for --model (default: the registered one)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Model variant, e.g. jrgr's 'synthetic' remover (see derain models)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Per-image figures to FILE.csv or FILE.json."),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="Keep the derained outputs here (with --model)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps (with --model)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (with --model)."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size, 0 = automatic (with --model)."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average the model over 4 flips of each image (with --model; 4x slower)."),
    flips: Optional[int] = FlipsOpt,
    half: bool = typer.Option(False, "--half", help="bf16/fp16 autocast (GPU, or a CPU with AMX/AVX512-BF16; with --model)."),
) -> None:
    """Score images against references: PSNR and SSIM on the Y channel (the deraining convention) and RGB PSNR.

    Examples: derain eval derained/ clean/ --report scores.csv;
    derain eval --model dualstage rainy/ clean/
    """
    from rich.console import Console

    from .. import evaluate as ev

    console = Console(stderr=True)
    if model is None:
        extras = [n for n, v in (("--weights", weights), ("--save-dir", save_dir), ("--threads", threads),
                                 ("--tile", tile), ("--variant", variant), ("--ensemble", ensemble or None),
                                 ("--flips", flips), ("--half", half or None))
                  if v is not None]
        if extras:
            raise DerainError(f"{', '.join(extras)} only apply with --model")
        if report is not None and report.suffix.lower() not in (".csv", ".json"):
            raise DerainError(f"--report {report}: use a .csv or .json file name")
        bar, update = _progress(console, "scoring")
        with bar:
            result = ev.score_folders(first_dir, gt_dir, progress=update)
        info: dict[str, Any] = {"outputs": str(first_dir), "references": str(gt_dir)}
    else:
        if report is not None and report.suffix.lower() not in (".csv", ".json"):
            raise DerainError(f"--report {report}: use a .csv or .json file name")
        ev.check_save_dir(save_dir, first_dir, gt_dir)
        derainer = ev.load_derainer(model, weights=weights, device=device, threads=threads, variant=variant,
                                    ensemble=ensemble_views(ensemble, flips), half=half)
        bar, update = _progress(console, f"{model}")
        with bar:
            result = ev.score_model(derainer, first_dir, gt_dir, tile=tile, save_dir=save_dir, progress=update)
        info = {"model": model, "variant": derainer.variant, "ensemble": derainer.ensemble, "precision": derainer.dtype_name, "weights": ev.weights_text(derainer, weights), "rainy": str(first_dir),
                "references": str(gt_dir), "device": ev.device_of(derainer)}
    mean = result.mean
    out = _stdout_console()
    out.print(
        f"{len(result.rows)} images  PSNR-Y {_fmt(mean.psnr_y, 2)} dB  SSIM-Y {_fmt(mean.ssim_y, 4)}  "
        f"PSNR-RGB {_fmt(mean.psnr_rgb, 2)} dB",
        highlight=False,
    )
    if report is not None:
        ev.write_report(report, result, {**info, "command": ev.environment()["command"]})
        console.print(f"per-image report: {report}", highlight=False)


def bench_command(
    dataset: str = typer.Argument(..., help="Registered dataset (rain100l, rain100h, rain12, rain100l-fog) or a folder with rainy/ and clean/."),
    model: str = typer.Option("all", "--model", "-m", help="Model name, or 'all' for every model whose weights are available."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights file (only with a single --model)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Model variant, e.g. jrgr's 'synthetic' remover (see derain models)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Where the dataset is (overrides $DERAIN_DATA and the hub)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write all figures and per-image rows to this JSON file."),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="Keep the derained outputs in DIR/<model>/."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N image pairs (a quick look)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Tile size, 0 = automatic."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average the model over 4 flips of each image (4x slower)."),
    flips: Optional[int] = FlipsOpt,
    half: bool = typer.Option(False, "--half", help="bf16/fp16 autocast (GPU, or a CPU with AMX/AVX512-BF16)."),
) -> None:
    """Measure models on a benchmark: PSNR/SSIM (Y), speed, peak memory, parameters; published figures beside.

    Speed excludes file I/O and one warm-up image. Example: derain bench rain100l --model dualstage --limit 10
    """
    from rich.console import Console
    from rich.table import Table

    from .. import evaluate as ev
    from ..datasets import resolve_dataset
    from ..registry import MODEL_NAMES

    console = Console(stderr=True)
    if limit is not None and limit < 1:
        raise DerainError("--limit must be at least 1")
    if json_path is not None and json_path.suffix.lower() != ".json":
        raise DerainError(f"--json {json_path}: use a .json file name")
    views = ensemble_views(ensemble, flips)
    ds = resolve_dataset(dataset, data=data)
    n_pairs = len(ds.pairs())
    if model == "all":
        if weights is not None or variant is not None:
            raise DerainError("--weights and --variant need a single --model, not 'all'")
        names = ev.available_models()
        if not names:
            raise DerainError("no registered model has weights available; pass --model NAME --weights FILE")
        skipped = [n for n in MODEL_NAMES if not any(x.partition(".")[0] == n for x in names)]
        if skipped:
            console.print(f"skipping models without weights here: {', '.join(skipped)}", highlight=False)
    elif model.partition(".")[0] in MODEL_NAMES:
        names = [model]
    else:
        raise DerainError(f"unknown model {model!r}; available: {', '.join(MODEL_NAMES)} (or NAME.TAG) or 'all'")

    console.print(f"dataset {ds.name}: {ds.root} ({ds.origin}), {min(n_pairs, limit or n_pairs)} of {n_pairs} pairs",
                  highlight=False)

    results = []
    for name in names:
        bar, update = _progress(console, name)
        with bar:
            results.append(ev.bench_model(
                name, ds, weights=weights, device=device, threads=threads, tile=tile, limit=limit,
                save_dir=(save_dir / name) if save_dir else None, progress=update, variant=variant,
                ensemble=views, half=half,
            ))

    table = Table(title=f"derain bench {ds.name} ({results[0].images} images, Y channel)")
    for col in ("model", "PSNR-Y", "SSIM-Y", "PSNR-RGB", "s/image", "MP/s", "peak mem", "params", "device", "threads"):
        table.add_column(col, justify="left" if col in ("model", "device") else "right", no_wrap=True)
    for r in results:
        table.add_row(r.model, _fmt(r.psnr_y, 2), _fmt(r.ssim_y, 4), _fmt(r.psnr_rgb, 2), f"{r.seconds_per_image:.4f}",
                      f"{r.megapixels_per_second:.3f}", f"{r.peak_memory_mb:.0f} MB", f"{r.parameters:,}", r.device,
                      str(r.threads))
    out = _stdout_console()
    out.print(table)
    if len(results) > 1 and not results[0].memory_kind.startswith("CUDA"):
        out.print("several models share one process: a peak can include tens of MB that earlier models left "
                  "(kernel caches, imports); bench one --model for its exact figure", highlight=False)
    out.print(f"speed excludes file I/O and one warm-up image; peak mem = {results[0].memory_kind}; tile = "
              f"{tile or 'auto'}; weights: " + ", ".join(f"{r.model} = {r.weights}" for r in results), highlight=False)

    published = ev.published_figures(ds.name)
    if published:
        ptable = Table(title=f"published figures on {ds.name} (from their papers, not measured here)")
        for col in ("method", "ours", "PSNR", "SSIM", "source"):
            ptable.add_column(col, justify="right" if col in ("PSNR", "SSIM") else "left", no_wrap=True)
        for p in published:
            ptable.add_row(
                p["method"], p.get("architecture", ""),
                f"{p['psnr']:.2f}" if "psnr" in p else "not stated",
                str(p['ssim']) if "ssim" in p else "not stated",
                p.get("cite", p["source"]),
            )
        out.print(ptable)
        out.print("full sources and notes: derain_cli/data/published.toml", highlight=False)

    if json_path is not None:
        payload = {
            **ev.environment(),
            "dataset": {"name": ds.name, "root": str(ds.root), "origin": ds.origin, "pairs_used": results[0].images},
            "results": [{**r.summary(), "images_detail": [vars(x) for x in r.rows]} for r in results],
            "published": published,
        }
        ev.write_json(json_path, payload)
        console.print(f"wrote {json_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("bench")(bench_command)
