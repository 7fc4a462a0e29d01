"""Checks made before any inference: a file we can read, a size that fits in memory, an output we can write.

A batch of a thousand photos must not stop at the 900th because of one hostile
file, nor swap the machine to death, nor spend an hour deraining into a folder it
cannot write: each of these is found out here, from headers and file modes, in
milliseconds, and becomes one line.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import DerainError, ImageError
from .imageio import Header, not_regular, read_header, write_problem

#: Peak host bytes per pixel of ``derain_file`` beyond the model's tile working set, by bits per
#: sample: decoded image, upright RGB copy, float32 accumulator, output, encoded bytes.
#: Measured with ``benchmarks/memory_per_pixel.py`` at 4000 x 3000 (identity net, 512-pixel tiles):
#: JPEG 23.0, PNG 25.2, 16-bit PNG 45.7 bytes per pixel; ``--compare`` 46.3 and 88.2. Rounded up
#: for alpha planes and allocator slack.
PEAK_BYTES_PER_PIXEL = {8: 32, 16: 56}
#: ``--compare`` writes a second, twice as wide image: measured 1.84x (8-bit) and 1.93x (16-bit).
COMPARE_FACTOR = 2.0
GIB = float(1 << 30)
#: The model's own peak host bytes for an image of so many pixels (``Derainer.host_bytes``).
ModelBytes = Callable[[int], int]


def estimate_bytes(header: Header, *, compare: bool = False, model_bytes: ModelBytes | None = None) -> int:
    """Peak host memory to derain an image of this header's size.

    The model's own memory comes on top: ``model_bytes(pixels)`` (``Derainer.host_bytes``: its
    activations, which automatic tiling bounds, and a shared context, which it does not).
    """
    per_pixel = PEAK_BYTES_PER_PIXEL[16 if header.bits > 8 else 8] * (COMPARE_FACTOR if compare else 1.0)
    return int(header.pixels * per_pixel) + (model_bytes(header.pixels) if model_bytes else 0)


def _size_text(header: Header) -> str:
    return f"{header.width}x{header.height} ({header.pixels / 1e6:.0f} Mpx)"


def check_memory(path: str | os.PathLike, *, compare: bool = False, max_pixels: int | None = None,
                 model_bytes: ModelBytes | None = None, available: int | None = None) -> Header | None:
    """Refuse, from its header alone, an image past the limit: ``max_pixels`` when given, else the available RAM.

    Returns the header (None when Pillow cannot parse it: the decoder will judge the file).
    """
    header = read_header(path)
    if header is None:
        return None
    need = estimate_bytes(header, compare=compare, model_bytes=model_bytes)
    if max_pixels is not None:
        if header.pixels > max_pixels:
            raise ImageError(f"{path}: {_size_text(header)} is over --max-pixels {max_pixels} (it would need about "
                             f"{need / GIB:.1f} GiB of memory); raise --max-pixels to derain it")
        return header
    if available is None:
        from .devices import available_ram

        available = available_ram()
    if need > available:
        raise ImageError(f"{path}: {_size_text(header)} would need about {need / GIB:.1f} GiB of memory and "
                         f"{available / GIB:.1f} GiB is available; refused before decoding "
                         f"(--max-pixels {header.pixels} tries anyway)")
    return header


def check_input(path: str | os.PathLike) -> None:
    """A path ``derain run`` can read: exists, is not a folder, is a regular file (a FIFO would block)."""
    p = Path(path)
    if not p.exists():
        raise DerainError(f"{path}: no such file")
    if p.is_dir():
        raise DerainError(f"{path}: is a folder; use `derain batch {path} -o OUTDIR`")
    problem = not_regular(p)
    if problem:
        raise DerainError(f"{path}: {problem}; derain reads image files only")


def _existing_ancestor(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_folder(folder: str | os.PathLike, what: str = "output folder") -> None:
    """``folder`` exists as a writable folder, or can be created (checked by writing a probe file)."""
    folder = Path(folder)
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise DerainError(f"{what} {folder}: {base} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".derain-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DerainError(f"{what} {folder}: cannot write in {base} ({exc.strerror or exc})") from None


def check_target(target: str | os.PathLike) -> None:
    """An output file we can write: a known format, not an existing folder, in a writable folder."""
    target = Path(target)
    problem = write_problem(target.suffix)
    if problem:
        raise DerainError(f"{target}: {problem}")
    if target.is_dir():
        raise DerainError(f"{target}: is a folder; an output file must not replace it")
    check_folder(target.parent)


#: Temporary files of :func:`derain_cli.weightfile.atomic_write_bytes`: ``.NAME.XXXXXXXX.tmp``
#: (``tempfile.mkstemp`` with prefix ``.NAME.`` draws 8 characters from a-z, 0-9 and _).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def stale_temp_target(filename: str) -> str | None:
    """The output name a leftover temporary file was being written for, or None if it is not one."""
    match = _TEMP_RE.match(filename)
    return match.group("name") if match else None


def remove_stale_temps(targets: Iterable[Path]) -> int:
    """Delete the temporary files an interrupted (kill -9) run left for these outputs; returns how many.

    Only ``.NAME.XXXXXXXX.tmp`` beside a target NAME is touched: files for other names are
    someone else's.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        by_folder.setdefault(target.parent, set()).add(target.name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # not created yet
        for entry in entries:
            if stale_temp_target(entry.name) in names and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError:
                    pass  # gone already, or not ours to delete: the batch goes on
    return removed
