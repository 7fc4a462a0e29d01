"""The options several commands share, defined once: name, meaning, default and help.

``run``, ``batch``, ``eval``, ``bench``, ``train`` and ``export`` take these, so a flag
means the same everywhere: ``--device auto`` is CUDA when it works, else the CPU;
``--half`` is the one name for reduced precision; ``--tile 0`` is the automatic tile.
Each function returns a fresh typer option; ``note`` adds what the option means for
one command (``(with --model)``). Nothing here imports torch.
"""
from __future__ import annotations

from typing import Any

import typer

#: Default of ``--device`` in every command.
DEVICE_DEFAULT = "auto"
DEVICE_HELP = "auto (CUDA when it works, else the CPU), cpu, cuda, cuda:N or mps."
HALF_HELP = ("Reduced precision: bfloat16 autocast (float16 on GPUs without bf16); on a CPU only with AMX or "
             "AVX512-BF16, where it is faster.")
#: Default of ``--tile`` in every command: 0, the automatic tile (the whole image when it fits in memory).
TILE_DEFAULT = 0
TILE_HELP = "Tile size in pixels; 0 = automatic from free memory (the whole image when it fits)."
THREADS_HELP = "CPU threads for torch (default: torch's own choice)."
WORK_SIZE_HELP = ("Also find the rain of larger photos on a copy this many pixels long, and take what is coarser "
                  "than the copy's pixels from there: for rain that looks coarse in a big photo (try 1024). "
                  "0 = only at the photo's own size.")
COPY_ONLY_HELP = ("With --work-size: derain only the copy and subtract its rain (seconds, not minutes, for a big "
                  "photo, and far less memory); rain finer than the copy's pixels stays.")


def _with(text: str, note: str) -> str:
    return f"{text[:-1]} {note}." if note else text


def device_option(note: str = "") -> Any:
    """``--device``: where the model runs."""
    return typer.Option(DEVICE_DEFAULT, "--device", help=_with(DEVICE_HELP, note))


def half_option(note: str = "") -> Any:
    """``--half``: reduced precision (``derain train`` also takes its old name ``--bf16``)."""
    return typer.Option(False, "--half", help=_with(HALF_HELP, note))


def tile_option(note: str = "") -> Any:
    """``--tile``: the tile side for inference; 0 lets the memory decide."""
    return typer.Option(TILE_DEFAULT, "--tile", help=_with(TILE_HELP, note))


def work_size_option(note: str = "") -> Any:
    """``--work-size``: the long side at which larger photos have their rain found (0 = their own)."""
    return typer.Option(0, "--work-size", help=_with(WORK_SIZE_HELP, note))


def copy_only_option(note: str = "") -> Any:
    """``--copy-only``: with ``--work-size``, skip the pass at the photo's own size."""
    return typer.Option(False, "--copy-only", help=_with(COPY_ONLY_HELP, note))


def threads_option(note: str = "") -> Any:
    """``--threads``: intra-op CPU threads."""
    return typer.Option(None, "--threads", help=_with(THREADS_HELP, note))


def out_option(default: Any, help: str, *aliases: str, metavar: str | None = None) -> Any:
    """``-o/--out``: where a command writes (a file, a folder or a run folder: ``help`` says which)."""
    extra = {"metavar": metavar} if metavar else {}
    return typer.Option(default, "--out", "-o", *aliases, help=help, **extra)
