"""What one training run is asked to do (:class:`TrainOptions`) and what it ended with (:class:`TrainResult`).

The command line, a ``--recipe`` file and a run folder's checkpoint all become a
TrainOptions; the checkpoint keeps the ``SAVED_FIELDS`` so ``--resume RUN_DIR`` needs nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .resume import jsonable


@dataclass
class TrainOptions:
    model: str
    mode: str
    folders: list[str]
    out: Path
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    patch: int = 64
    batch: int = 16
    steps: int | None = None
    epochs: int | None = None
    max_minutes: float | None = None
    lr: float | None = None
    ema: float = 0.0
    seed: int = 0
    val: tuple[str, str] | None = None
    #: More validation sets, each a folder with ``rainy/`` and ``clean/``; the score is the mean over sets.
    val_sets: list[str] = field(default_factory=list)
    #: Rendered rain on clean photos: ``{"folders", "ratio", "mix", "streaks"[, "extras"]}`` (train.data.build_render).
    render: dict[str, Any] | None = None
    val_every: int = 500
    save_every: int = 500
    log_every: int = 10
    resume: Path | None = None
    init: Path | None = None
    export: Path | None = None
    threads: int | None = None
    #: Reduced precision (``--half``): bfloat16 autocast. The name is the checkpoint's, kept for old run folders.
    bf16: bool = False
    channels_last: bool = False
    #: ``auto`` (CUDA when it works, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
    device: str = "auto"
    #: Values of the options the recipe declares (``Recipe.recipe_options``, e.g. jrgr's ``stage``).
    recipe_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    command: str = ""


@dataclass
class TrainResult:
    step: int
    losses: dict[str, float]
    best_psnr: float | None
    export: Path | None
    stopped: str  # "done", "time budget", "interrupted"


#: TrainOptions fields a run folder keeps, so that ``derain train --resume RUN_DIR`` needs nothing else.
SAVED_FIELDS = ("model", "mode", "folders", "preset", "overrides", "patch", "batch", "steps", "epochs", "max_minutes",
                "lr", "ema", "seed", "val", "val_sets", "val_every", "save_every", "log_every", "export", "threads",
                "bf16", "channels_last", "device", "recipe_options", "render")


def saved_options(opts: TrainOptions) -> dict[str, Any]:
    """The run's options as JSON values (paths as strings, tuples as lists)."""
    return {name: jsonable(getattr(opts, name)) for name in SAVED_FIELDS}
