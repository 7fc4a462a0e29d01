"""``derain run`` (a few photos) and ``derain batch`` (a folder, resumable).

Both load the model once through :func:`derain_cli.api.load_model` and write
every output atomically, so an interrupted run never leaves a half-written file
and a re-run of ``batch`` picks up where it stopped. torch is imported inside
the commands only.
"""
from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import List, Optional

import typer

from ..errors import DerainError

ModelOpt = typer.Option(None, "--model", "-m", help="Model name (default: the best shipped model; see `derain models`).")
WeightsOpt = typer.Option(None, "--weights", help="Use this .safetensors file instead of the registered weights.")
VariantOpt = typer.Option(None, "--variant", help="Model variant, for models that have several.")
CompareOpt = typer.Option(False, "--compare", help="Also write <output>_compare: before | after side by side.")
TileOpt = typer.Option(0, "--tile", help="Tile size in pixels; 0 = automatic from free memory.")
OverlapOpt = typer.Option(None, "--tile-overlap", help="Context pixels around each tile (default: the model's margin).")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
HalfOpt = typer.Option(False, "--half", help="bf16/fp16 autocast (GPU, or a CPU with AMX/AVX512-BF16).")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for inference.")
QualityOpt = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality.")
EnsembleOpt = typer.Option(
    False, "--ensemble", help="Average the model over 4 flips of each photo: a little cleaner (+0.2-0.4 dB measured), 4x slower."
)
FlipsOpt = typer.Option(
    None, "--flips", help="Average over N flip views: 2 = with the left-right mirror (2x slower), 4 = --ensemble."
)
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Say which device, dtype and tile size are used.")


def _err(message: str) -> None:
    typer.echo(f"derain: error: {message}", err=True)


def ensemble_views(ensemble: bool, flips: Optional[int]) -> int:
    """Flip views asked for by ``--ensemble`` (four) or ``--flips N`` (1, 2 or 4)."""
    if flips not in (None, 1, 2, 4):
        raise DerainError(f"--flips must be 1, 2 or 4, not {flips}")
    if ensemble and flips not in (None, 4):
        raise DerainError(f"--ensemble means --flips 4; it cannot go with --flips {flips}")
    return 4 if ensemble else (1 if flips is None else flips)


def model_for(model: Optional[str], weights: Optional[Path]) -> Optional[str]:
    """The architecture to build: ``--model``, else the one a ``--weights`` file names in its metadata.

    Without this, ``--weights semimsn.safetensors`` alone would be refused as "not dualstage"
    although the file says what it is. An explicit ``--model`` is still checked against the file.
    """
    if model is not None or weights is None:
        return model
    from ..weightfile import read_metadata

    if not Path(weights).is_file() or Path(weights).suffix != ".safetensors":
        return None  # load_model says what is wrong with the file
    architecture = read_metadata(weights).get("architecture")
    return architecture if isinstance(architecture, str) and architecture else None


def _load(model, weights, variant, device, half, threads, verbose, ensemble=1):
    from ..api import load_model

    model = model_for(model, weights)
    derainer = load_model(model, weights=weights, variant=variant, device=device, threads=threads, half=half,
                          ensemble=ensemble)
    if verbose:
        import torch

        source = derainer.meta.get("weights_source", "?")
        typer.echo(
            f"derain: model {derainer.spec.name} ({derainer.variant}, weights: {source}) on {derainer.device}, "
            f"dtype {derainer.dtype_name}, {torch.get_num_threads()} CPU threads"
            + (f", {derainer.ensemble}-flip ensemble" if derainer.ensemble > 1 else ""),
            err=True,
        )
    return derainer


def _tile_text(derainer) -> str:
    if not derainer.last_tile:
        return "whole image"
    return f"tile {derainer.last_tile} (overlap {derainer.last_overlap})"


def run(
    images: List[Path] = typer.Argument(..., help="Photos to derain (JPEG, PNG, TIFF, WebP, BMP)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output file (one input) or folder; default: <stem>_derained<suffix> beside each input."
    ),
    model: Optional[str] = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    variant: Optional[str] = VariantOpt,
    compare: bool = CompareOpt,
    tile: int = TileOpt,
    tile_overlap: Optional[int] = OverlapOpt,
    device: str = DeviceOpt,
    half: bool = HalfOpt,
    threads: Optional[int] = ThreadsOpt,
    quality: int = QualityOpt,
    ensemble: bool = EnsembleOpt,
    flips: Optional[int] = FlipsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Derain photos; keeps format, bit depth, alpha, orientation, EXIF and colour profile."""
    from ..api import resolve_output
    from ..imageio import IMAGE_SUFFIXES

    for img in images:
        if not img.exists():
            raise DerainError(f"{img}: no such file")
        if img.is_dir():
            raise DerainError(f"{img}: is a folder; use `derain batch {img} -o OUTDIR`")
    if out is not None and len(images) > 1 and out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir():
        raise DerainError(f"-o {out} names one file but {len(images)} images were given; pass a folder")
    targets = [resolve_output(img, out) for img in images]
    inputs = {p.resolve() for p in images}
    for t in targets:
        if t.resolve() in inputs:
            raise DerainError(f"{t}: refusing to overwrite an input image; choose another output")

    derainer = _load(model, weights, variant, device, half, threads, verbose, ensemble_views(ensemble, flips))
    failed = 0
    for img, target in zip(images, targets):
        start = time.perf_counter()
        try:
            derainer.derain_file(img, target, quality=quality, tile=tile, tile_overlap=tile_overlap, compare=compare)
        except DerainError as exc:
            _err(str(exc))
            failed += 1
            continue
        line = f"{img} -> {target}"
        if verbose:
            line += f"  [{_tile_text(derainer)}, {time.perf_counter() - start:.1f} s]"
        typer.echo(line)
    if failed:
        raise typer.Exit(1)


# -- batch ----------------------------------------------------------------------
def find_images(folder: Path, *, recursive: bool, pattern: Optional[str], exclude: Optional[Path] = None) -> list[Path]:
    """Images under ``folder`` (relative paths, sorted); hidden files and ``exclude`` are skipped."""
    from ..imageio import IMAGE_SUFFIXES

    walker = folder.rglob("*") if recursive else folder.glob("*")
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for p in walker:
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if exclude is not None and (p.resolve() == exclude or exclude in p.resolve().parents):
            continue
        if pattern:
            if not PurePosixPath(rel.as_posix()).match(pattern):
                continue
        elif p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        found.append(rel)
    return sorted(found)


def _progress():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Images per second over the images actually derained (skips do not count)."""

        def render(self, task) -> Text:
            done, secs = task.fields.get("worked", 0), task.fields.get("busy", 0.0)
            return Text(f"{done / secs:.2f} img/s" if done and secs else "-- img/s", style="progress.data.speed")

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def batch(
    folder: Path = typer.Argument(..., help="Folder of photos."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; the input's sub-folders are mirrored."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include sub-folders."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo outputs that already exist (default: skip them)."),
    pattern: Optional[str] = typer.Option(
        None, "--glob", help="Only files whose relative path matches, e.g. '*.jpg' (default: all image types)."
    ),
    model: Optional[str] = ModelOpt,
    weights: Optional[Path] = WeightsOpt,
    variant: Optional[str] = VariantOpt,
    compare: bool = CompareOpt,
    tile: int = TileOpt,
    tile_overlap: Optional[int] = OverlapOpt,
    device: str = DeviceOpt,
    half: bool = HalfOpt,
    threads: Optional[int] = ThreadsOpt,
    quality: int = QualityOpt,
    ensemble: bool = EnsembleOpt,
    flips: Optional[int] = FlipsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Derain a folder into OUTDIR with the same names; re-running resumes, failures are listed at the end."""
    from ..imageio import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise DerainError(f"{folder}: not a folder")
    if out.exists() and not out.is_dir():
        raise DerainError(f"-o {out}: exists and is not a folder")
    if out.resolve() == folder.resolve():
        raise DerainError("the output folder must differ from the input folder (inputs are never overwritten)")
    files = find_images(folder, recursive=recursive, pattern=pattern, exclude=out)
    if not files:
        raise DerainError(f"{folder}: no images found" + (f" matching {pattern!r}" if pattern else ""))
    todo = [rel for rel in files if overwrite or not (out / rel).exists()]
    skipped = len(files) - len(todo)
    if skipped:
        typer.echo(f"derain: {skipped} of {len(files)} already done in {out}; skipping them", err=True)
    if not todo:
        return

    derainer = _load(model, weights, variant, device, half, threads, verbose, ensemble_views(ensemble, flips))
    failures: list[tuple[str, str]] = []
    worked, busy = 0, 0.0
    with _progress() as progress:
        task = progress.add_task("derain", total=len(todo), worked=0, busy=0.0)
        for rel in todo:
            src, dst = folder / rel, out / rel
            progress.update(task, description=str(rel)[-40:])
            start = time.perf_counter()
            try:
                if dst.suffix.lower() not in IMAGE_SUFFIXES:
                    raise DerainError(f"{dst.suffix or 'no suffix'}: not an image type derain can write")
                dst.parent.mkdir(parents=True, exist_ok=True)
                derainer.derain_file(src, dst, quality=quality, tile=tile, tile_overlap=tile_overlap, compare=compare)
            except DerainError as exc:
                failures.append((str(rel), str(exc)))
            except OSError as exc:
                failures.append((str(rel), f"cannot write: {exc.strerror or exc}"))
            else:
                worked += 1
                busy += time.perf_counter() - start
                if verbose:
                    progress.console.print(f"{rel}: {_tile_text(derainer)}", highlight=False)
            progress.update(task, advance=1, worked=worked, busy=busy)

    typer.echo(f"derain: {worked} derained, {skipped} skipped, {len(failures)} failed -> {out}", err=True)
    if failures:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Failed images", show_lines=False)
        table.add_column("file", overflow="fold")
        table.add_column("error", overflow="fold")
        for rel, message in failures:
            table.add_row(rel, message)
        Console(stderr=True).print(table)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("batch")(batch)
