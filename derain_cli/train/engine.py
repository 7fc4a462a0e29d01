"""The training engine shared by every architecture: ``train(opts)`` and ``export_checkpoint``.

The loop itself is :class:`~derain_cli.train.trainer.Trainer` (setup, resume, step,
validate, checkpoint, export); the architecture's :class:`~derain_cli.train.recipe.Recipe`
owns the networks and losses. The names below are the engine's public interface.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from ..errors import DerainError
from ..registry import get_spec
from ..weightfile import save_weights
from .control import fit_to_budget
from .options import SAVED_FIELDS, TrainOptions, TrainResult, saved_options
from .resume import checkpoint_dir, run_state
from .validation import load_val_sets, validate

__all__ = ["SAVED_FIELDS", "TrainOptions", "TrainResult", "export_checkpoint", "fit_to_budget", "get_spec",
           "load_val_sets", "saved_options", "train", "validate"]


def train(opts: TrainOptions) -> TrainResult:
    """Run (or resume) one training job; returns when done, out of time, or interrupted."""
    from .trainer import Trainer

    return Trainer(opts, get_spec(opts.model)).run()


def export_checkpoint(run_dir: Path, out_file: Path, use_ema: bool = True) -> Path:
    """Write an inference weights file from a run folder's last checkpoint (``derain export``)."""
    from safetensors.torch import load_file

    ckpt = checkpoint_dir(Path(run_dir))
    if not (ckpt / "state.json").is_file():
        raise DerainError(f"no checkpoint in {run_dir}")
    extra = run_state(Path(run_dir))
    spec = get_spec(extra["model"])
    recipe = spec.recipe(spec, extra["config"], extra["mode"], **extra.get("recipe_options", {}))
    tensors = load_file(str(ckpt / "state.safetensors"))
    ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if use_ema and ema_state:
        recipe.bundle.load_state_dict(ema_state)
    else:
        for name, net in recipe.nets.items():
            prefix = f"net.{name}."
            net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    save_weights(out_file, recipe.bundle.state_dict(), architecture=spec.name, config=extra["config"],
                 steps=extra["step"], data=extra.get("data"), date=_dt.date.today().isoformat(),
                 command=extra.get("command", ""), val_psnr=extra.get("best_psnr"),
                 **({"tasks": extra["tasks"]} if extra.get("tasks") else {}),
                 **({"init": extra["init_record"]} if extra.get("init_record") else {}))
    return Path(out_file)
