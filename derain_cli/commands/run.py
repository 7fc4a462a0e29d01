"""``derain run`` (a few photos) and ``derain batch`` (a folder, resumable).

Both load the model once through :func:`derain_cli.api.load_model` and write
every output atomically, so an interrupted run never leaves a half-written file
and a re-run of ``batch`` picks up where it stopped. torch is imported inside
the commands only.
"""
from __future__ import annotations

import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import List, Optional

import typer

from ..errors import DerainError, one_line
from ..options import (
    copy_only_option,
    device_option,
    half_option,
    out_option,
    threads_option,
    tile_option,
    work_size_option,
)

ModelOpt = typer.Option(None, "--model", "-m", help="Model name (default: the best shipped model; see `derain models`).")
WeightsOpt = typer.Option(None, "--weights", help="Use this .safetensors file instead of the registered weights.")
VariantOpt = typer.Option(None, "--variant", help="Model variant, for models that have several.")
CompareOpt = typer.Option(False, "--compare", help="Also write <output>_compare: before | after side by side.")
TileOpt = tile_option()
OverlapOpt = typer.Option(None, "--tile-overlap", help="Context pixels around each tile (default: the model's margin).")
DeviceOpt = device_option()
HalfOpt = half_option()
ThreadsOpt = threads_option()
QualityOpt = typer.Option(95, "--quality", min=1, max=100, help="JPEG/WebP quality.")
EnsembleOpt = typer.Option(
    False, "--ensemble", help="Average the model over 4 flips of each photo: a little cleaner (+0.2-0.4 dB measured), 4x slower."
)
FlipsOpt = typer.Option(
    None, "--flips", help="Average over N flip views: 2 = with the left-right mirror (2x slower), 4 = --ensemble."
)
WorkSizeOpt = work_size_option()
CopyOnlyOpt = copy_only_option()
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Say which device, dtype and tile size are used.")
MaxPixelsOpt = typer.Option(
    None, "--max-pixels", min=1,
    help="Refuse images with more pixels than this (default: those whose estimated peak memory does not fit in RAM).",
)


def _err(message: str) -> None:
    typer.echo(f"derain: error: {message}", err=True)


def _debug() -> bool:
    """``derain --debug``: per-file failures show their traceback too."""
    from ..cli import state

    return bool(state.get("debug"))


def _traceback_text(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def _named(path: Path, message: str) -> str:
    """A failure line that names its file once (our ImageErrors already start with the path)."""
    return message if message.startswith(str(path)) else f"{path}: {message}"


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


def _load(model, weights, variant, device, half, threads, verbose, ensemble=1, *, work_size=0, copy_only=False):
    from ..api import load_model

    model = model_for(model, weights)
    derainer = load_model(model, weights=weights, variant=variant, device=device, threads=threads, half=half,
                          ensemble=ensemble, work_size=work_size, copy_only=copy_only)
    if verbose:
        import torch

        from ..devices import cuda_built

        if str(device or "auto").lower() == "auto" and derainer.device.type == "cpu" and not cuda_built():
            typer.echo("derain: no CUDA GPU found (this torch is built without CUDA); running on the CPU", err=True)
        source = derainer.meta.get("weights_source", "?")
        typer.echo(
            f"derain: model {derainer.spec.name} ({derainer.variant}, weights: {source}) on {derainer.device}, "
            f"dtype {derainer.dtype_name}, {torch.get_num_threads()} CPU threads"
            + (f", {derainer.ensemble}-flip ensemble" if derainer.ensemble > 1 else "")
            + (f", rain found at {derainer.work_size} px" + (" only" if derainer.copy_only else " and at full size")
               if derainer.work_size else ""),
            err=True,
        )
    return derainer


def _tile_text(derainer) -> str:
    if not derainer.last_tile:
        return "whole image"
    return f"tile {derainer.last_tile} (overlap {derainer.last_overlap})"


@contextmanager
def _tile_bar(derainer):
    """Progress bars over the tiles of one big photo, and over a model's image-wide context, on stderr
    (none for a photo run whole)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description:8s}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    tasks: dict = {}  # label -> task: each pass (one per flip view) gets fresh bars
    started: list = []  # stopping a bar that never started still prints a blank line

    def update(done: int, total: int, label: str = "tiles") -> None:
        if total <= 1:
            return
        if label not in tasks:
            if not started:
                bar.start()
                started.append(True)
            tasks[label] = bar.add_task(label, total=total)
        bar.update(tasks[label], completed=done, total=total)
        if done >= total:
            bar.remove_task(tasks.pop(label))

    derainer.progress = update
    try:
        yield
    finally:
        derainer.progress = None
        if started:
            bar.stop()


def derain_one(derainer, src: Path, dst: Path, *, max_pixels: Optional[int], progress=None, **kw) -> None:
    """Check the image's size against memory (header only), then derain it into ``dst``; videos frame by frame."""
    from ..preflight import check_memory
    from ..video import derain_video, is_video

    if is_video(src):
        derain_video(derainer, src, dst, progress=progress, **kw)
        return
    check_memory(src, compare=kw.get("compare", False), max_pixels=max_pixels, model_bytes=derainer.host_bytes)
    derainer.derain_file(src, dst, **kw)


def run_targets(images: List[Path], out: Optional[str]) -> list[Path]:
    """Output files for ``derain run``. ``-o`` is a folder only when it is one or ends in ``/``;
    otherwise it names the one output file, whose suffix must be a format derain writes."""
    from ..imageio import default_output, write_problem

    if out is None:
        return [default_output(img) for img in images]
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        return [default_output(img, Path(out)) for img in images]
    if len(images) > 1:
        raise DerainError(f"-o {out} names one file but {len(images)} images were given; "
                          f"to write them into a folder, end it with / (-o {out}/)")
    from ..video import is_video

    problem = None if is_video(out) else write_problem(Path(out).suffix)
    if problem:
        raise DerainError(f"-o {out}: {problem} (to name a folder, end it with /)")
    return [Path(out)]


def run(
    images: List[Path] = typer.Argument(..., help="Photos to derain (JPEG, PNG, TIFF, WebP, BMP, GIF; HEIC with pillow-heif)."),
    out: Optional[str] = out_option(
        None, "Output file (one input), or folder if it exists or ends in /; default: <stem>_derained<suffix> beside each input.",
        metavar="PATH",
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
    max_pixels: Optional[int] = MaxPixelsOpt,
    work_size: int = WorkSizeOpt,
    copy_only: bool = CopyOnlyOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Derain photos; keeps format, bit depth, alpha, orientation, EXIF and colour profile."""
    from ..api import compare_path
    from ..preflight import check_input, check_target
    from ..video import check_video_target, is_video

    for img in images:
        check_input(img)
    targets = run_targets(images, out)
    inputs = {p.resolve() for p in images}
    for t in targets:
        if t.resolve() in inputs:
            raise DerainError(f"{t}: refusing to overwrite an input image; choose another output")
        check_video_target(t) if is_video(t) else check_target(t)  # before the model is even loaded
        if compare and compare_path(t).resolve() in inputs:
            raise DerainError(f"{compare_path(t)}: refusing to overwrite an input image; choose another output")

    derainer = _load(model, weights, variant, device, half, threads, verbose, ensemble_views(ensemble, flips),
                     work_size=work_size, copy_only=copy_only)
    failed = 0
    for img, target in zip(images, targets):
        start = time.perf_counter()
        try:
            with _tile_bar(derainer):
                derain_one(derainer, img, target, max_pixels=max_pixels, quality=quality, tile=tile,
                           tile_overlap=tile_overlap, compare=compare)
        except Exception as exc:  # one bad photo must not stop the others; Ctrl-C still does
            if _debug():
                typer.echo(_traceback_text(exc), err=True)
            _err(_named(img, one_line(exc)))
            failed += 1
            continue
        line = f"{img} -> {target}"
        if verbose:
            line += f"  [{_tile_text(derainer)}, {time.perf_counter() - start:.1f} s]"
        typer.echo(line)
    if failed:
        raise typer.Exit(1)


# -- batch ----------------------------------------------------------------------
def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _why_not(entry: os.DirEntry, rel: Path, pattern: Optional[str]) -> Optional[str]:
    """Why a file under the batch folder is not derained (None: it is); "" when ``--glob`` left it out."""
    from ..imageio import READ_SUFFIXES
    from ..preflight import stale_temp_target

    if entry.name.startswith("."):
        if stale_temp_target(entry.name):
            return "hidden temporary file of an interrupted write"
        return "hidden file"
    if pattern and not PurePosixPath(rel.as_posix()).match(pattern):
        return ""
    try:
        mode = entry.stat().st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(mode):
        return f"{_file_kind(mode)}, not a regular file"
    from ..video import VIDEO_SUFFIXES

    if entry.name.lower().endswith(READ_SUFFIXES + VIDEO_SUFFIXES):
        return None
    suffix = Path(entry.name).suffix
    return f"not an image type derain reads ({suffix or 'no suffix'})"


def find_images(
    folder: Path, *, recursive: bool, pattern: Optional[str], exclude: Optional[Path] = None
) -> tuple[list[Path], list[tuple[str, str]]]:
    """``(images, ignored)`` under ``folder``: relative image paths (sorted), and every other file with why.

    Hidden folders are not entered (one row each); files ``--glob`` leaves out are not listed.
    """
    exclude = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    ignored: list[tuple[str, str]] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        with os.scandir(current) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = Path(entry.path)
                rel = path.relative_to(folder)
                if exclude is not None and (path.resolve() == exclude or exclude in path.resolve().parents):
                    continue
                if entry.is_dir():
                    if not recursive:
                        continue
                    if entry.name.startswith("."):
                        ignored.append((f"{rel.as_posix()}/", "hidden folder (not entered)"))
                    elif entry.is_symlink():
                        ignored.append((f"{rel.as_posix()}/", "link to a folder (not followed)"))
                    else:
                        stack.append(path)
                    continue
                reason = _why_not(entry, rel, pattern)
                if reason is None:
                    found.append(rel)
                elif reason:
                    ignored.append((rel.as_posix(), reason))
    return sorted(found), sorted(ignored)


#: Rows of the ignored-files list shown before the rest are summed up by reason.
IGNORED_SHOWN = 20


def _report_ignored(ignored: list[tuple[str, str]]) -> None:
    """Every file the batch leaves alone, with why (a long list ends with counts per reason)."""
    if not ignored:
        return
    typer.echo(f"derain: ignoring {len(ignored)} file{'s' if len(ignored) > 1 else ''}:", err=True)
    for rel, reason in ignored[:IGNORED_SHOWN]:
        typer.echo(f"  {rel}: {reason}", err=True)
    rest = ignored[IGNORED_SHOWN:]
    if rest:
        counts: dict[str, int] = {}
        for _, reason in rest:
            counts[reason] = counts.get(reason, 0) + 1
        summary = "; ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        typer.echo(f"  ... and {len(rest)} more ({summary})", err=True)


def batch_targets(out: Path, files: list[Path]) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """``(input, output)`` pairs with the same relative names (GIF -> PNG), and inputs whose output another takes."""
    from ..imageio import output_suffix

    pairs, clashes, taken = [], [], {}
    for rel in files:
        dst = out / rel.with_suffix(output_suffix(rel.suffix))
        if dst in taken:
            clashes.append((str(rel), f"its output {dst.name} is already {taken[dst]}'s; rename one of them"))
            continue
        taken[dst] = str(rel)
        pairs.append((rel, dst))
    return pairs, clashes


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
    out: Path = out_option(..., "Output folder; the input's sub-folders are mirrored."),
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
    max_pixels: Optional[int] = MaxPixelsOpt,
    work_size: int = WorkSizeOpt,
    copy_only: bool = CopyOnlyOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Derain a folder into OUTDIR with the same names; re-running resumes, failures are listed at the end."""
    from ..api import compare_path
    from ..preflight import check_folder, remove_stale_temps

    if not folder.is_dir():
        raise DerainError(f"{folder}: not a folder")
    if out.exists() and not out.is_dir():
        raise DerainError(f"-o {out}: exists and is not a folder")
    if out.resolve() == folder.resolve():
        raise DerainError("the output folder must differ from the input folder (inputs are never overwritten)")
    check_folder(out)
    files, ignored = find_images(folder, recursive=recursive, pattern=pattern, exclude=out)
    pairs, clashes = batch_targets(out, files)
    _report_ignored(ignored)
    if not pairs:
        raise DerainError(f"{folder}: no images found" + (f" matching {pattern!r}" if pattern else ""))
    removed = remove_stale_temps([p for _, dst in pairs for p in (dst, compare_path(dst))])
    if removed:
        typer.echo(f"derain: removed {removed} temporary file{'s' if removed > 1 else ''} an interrupted run "
                   f"left in {out}", err=True)
    todo = [(rel, dst) for rel, dst in pairs if overwrite or not dst.exists()]
    skipped = len(pairs) - len(todo)
    if skipped:
        typer.echo(f"derain: {skipped} of {len(pairs)} already done in {out}; skipping them", err=True)
    if not todo and not clashes:
        _summary(0, skipped, ignored, [], out)
        return

    derainer = _load(model, weights, variant, device, half, threads, verbose, ensemble_views(ensemble, flips),
                     work_size=work_size, copy_only=copy_only)
    failures: list[tuple[str, str]] = list(clashes)
    worked, busy = 0, 0.0
    with _progress() as progress:
        task = progress.add_task("derain", total=len(todo), worked=0, busy=0.0)
        for rel, dst in todo:
            progress.update(task, description=str(rel)[-40:])
            start = time.perf_counter()
            try:
                derain_one(derainer, folder / rel, dst, max_pixels=max_pixels, quality=quality, tile=tile,
                           tile_overlap=tile_overlap, compare=compare, progress=progress)
            except Exception as exc:  # every per-file failure is a row of the table; Ctrl-C still stops
                if _debug():
                    progress.console.print(_traceback_text(exc), highlight=False, markup=False)
                failures.append((str(rel), one_line(exc)))
            else:
                worked += 1
                busy += time.perf_counter() - start
                if verbose:
                    progress.console.print(f"{rel}: {_tile_text(derainer)}", highlight=False)
            progress.update(task, advance=1, worked=worked, busy=busy)
    _summary(worked, skipped, ignored, failures, out)
    if failures:
        raise typer.Exit(1)


def _summary(worked: int, skipped: int, ignored: list, failures: list[tuple[str, str]], out: Path) -> None:
    """The closing line (counts) and the table of failed images."""
    typer.echo(f"derain: {worked} derained, {skipped} skipped, {len(ignored)} ignored, {len(failures)} failed "
               f"-> {out}", err=True)
    if not failures:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Failed images", show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("error", overflow="fold")
    for rel, message in failures:
        table.add_row(rel, message)
    Console(stderr=True).print(table)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("batch")(batch)
