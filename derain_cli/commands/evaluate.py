"""``derain eval`` (score outputs, or a model, against references) and ``derain bench``.

torch is imported only inside the commands that run a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import DerainError
from ..options import copy_only_option, device_option, half_option, threads_option, tile_option, work_size_option
from .run import FlipsOpt, ensemble_views


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
    device: str = device_option("(with --model)"),
    threads: Optional[int] = threads_option("(with --model)"),
    tile: int = tile_option("(with --model)"),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average the model over 4 flips of each image (with --model; 4x slower)."),
    flips: Optional[int] = FlipsOpt,
    half: bool = half_option("(with --model)"),
    work_size: int = work_size_option("(with --model)"),
    copy_only: bool = copy_only_option("(with --model)"),
) -> None:
    """Score images against references: PSNR and SSIM on the Y channel (the deraining convention) and RGB PSNR.

    Examples: derain eval derained/ clean/ --report scores.csv;
    derain eval --model dualstage rainy/ clean/
    """
    from rich.console import Console

    from .. import evaluate as ev
    from .. import reports

    console = Console(stderr=True)
    if model is None:
        extras = [n for n, v in (("--weights", weights), ("--save-dir", save_dir), ("--threads", threads),
                                 ("--tile", tile or None), ("--variant", variant), ("--ensemble", ensemble or None),
                                 ("--flips", flips), ("--half", half or None), ("--work-size", work_size or None),
                                 ("--copy-only", copy_only or None))
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
                                    ensemble=ensemble_views(ensemble, flips), half=half, work_size=work_size,
                                    copy_only=copy_only)
        bar, update = _progress(console, f"{model}")
        with bar:
            result = ev.score_model(derainer, first_dir, gt_dir, tile=tile, save_dir=save_dir, progress=update)
        info = reports.eval_model_info(derainer, model, ev.weights_text(derainer, weights), str(first_dir),
                                       str(gt_dir), ev.device_of(derainer))
    _stdout_console().print(reports.eval_line(result), highlight=False)
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
    device: str = device_option(),
    threads: Optional[int] = threads_option(),
    tile: int = tile_option(),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average the model over 4 flips of each image (4x slower)."),
    flips: Optional[int] = FlipsOpt,
    half: bool = half_option(),
    work_size: int = work_size_option(),
    copy_only: bool = copy_only_option(),
) -> None:
    """Measure models on a benchmark: PSNR/SSIM (Y), speed, peak memory, parameters; published figures beside.

    Speed excludes file I/O and one warm-up image. Example: derain bench rain100l --model dualstage --limit 10
    """
    from rich.console import Console

    from .. import evaluate as ev
    from .. import reports
    from ..datasets import resolve_dataset

    console = Console(stderr=True)
    if limit is not None and limit < 1:
        raise DerainError("--limit must be at least 1")
    if json_path is not None and json_path.suffix.lower() != ".json":
        raise DerainError(f"--json {json_path}: use a .json file name")
    views = ensemble_views(ensemble, flips)
    ds = resolve_dataset(dataset, data=data)
    n_pairs = len(ds.pairs())
    names, skipped = ev.bench_names(model, weights=weights, variant=variant)
    if skipped:
        console.print(f"skipping models without weights here: {', '.join(skipped)}", highlight=False)
    console.print(f"dataset {ds.name}: {ds.root} ({ds.origin}), {min(n_pairs, limit or n_pairs)} of {n_pairs} pairs",
                  highlight=False)

    results = []
    for name in names:
        bar, update = _progress(console, name)
        with bar:  # tile None: the JSON has always said null for the automatic tile
            results.append(ev.bench_model(
                name, ds, weights=weights, device=device, threads=threads, tile=tile or None, limit=limit,
                save_dir=(save_dir / name) if save_dir else None, progress=update, variant=variant,
                ensemble=views, half=half, work_size=work_size, copy_only=copy_only,
            ))

    out = _stdout_console()
    out.print(reports.bench_table(ds.name, results))
    for line in reports.bench_notes(results, tile):
        out.print(line, highlight=False)
    published = ev.published_figures(ds.name)
    if published:
        out.print(reports.published_table(ds.name, published))
        out.print("full sources and notes: derain_cli/data/published.toml", highlight=False)
    if json_path is not None:
        ev.write_json(json_path, reports.bench_payload(ev.environment(), ds, results, published))
        console.print(f"wrote {json_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("bench")(bench_command)
