"""``derain train --resume RUN_DIR`` with nothing else: the run folder knows its options.

A run's checkpoint keeps its :class:`~derain_cli.train.engine.TrainOptions` (``options``
in ``last/state.json``). Options given beside ``--resume`` may change how the run goes on
(``FREE``: time budget, threads, device, logging, export path, a longer ``--steps``);
any other that differs from the folder is an error, since it would silently train a
different run than the one being resumed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DerainError

#: Command-line parameters that may differ from the run folder when resuming.
FREE = {"resume", "out", "max_minutes", "threads", "quiet", "steps", "export", "device", "save_every", "val_every"}
#: Command-line parameters that pick the data, and the mode each one means.
DATA_FLAGS = {"paired": "paired", "unpaired": "unpaired", "semi": "semi"}
_RENDER_KEYS = {"render": "folders", "render_ratio": "ratio", "render_mix": "mix", "render_extras": "extras",
                "streaks": "streaks"}


def checkpoint_dir(resume: Path) -> Path:
    """The checkpoint folder of ``--resume``: ``RUN_DIR/last``, or the folder itself when it is one."""
    resume = Path(resume)
    return resume / "last" if (resume / "last").is_dir() else resume


def run_state(resume: Path) -> dict[str, Any]:
    """The ``extra`` record of a run folder's last checkpoint (``RUN_DIR`` or ``RUN_DIR/last``)."""
    ckpt = checkpoint_dir(resume)
    try:
        return json.loads((ckpt / "state.json").read_text())["extra"]
    except FileNotFoundError:
        raise DerainError(f"nothing to resume in {resume} (no checkpoint found)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise DerainError(f"{ckpt / 'state.json'} is unreadable ({exc}); cannot resume from it") from None


def _flag(name: str) -> str:
    return "--" + {"sets": "set", "val_sets": "val-set"}.get(name, name).replace("_", "-")


def jsonable(v: Any) -> Any:
    """``v`` as JSON keeps it: paths as strings, tuples as lists, numpy arrays and integers as Python ones.

    The checkpoint stores options and generator states this way, and a resume compares
    command-line values with the stored ones in the same form.
    """
    import numpy as np

    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.integer):
        return int(v)
    return v


def _saved_and_given(name: str, value: Any, saved: dict[str, Any]) -> tuple[Any, Any]:
    """What the folder says and what the command line says, in the same form."""
    if name in DATA_FLAGS:
        return [saved["mode"], saved["folders"]], [DATA_FLAGS[name], jsonable(value)]
    if name in _RENDER_KEYS:
        key = _RENDER_KEYS[name]
        given = jsonable(value)
        if name in ("render_mix", "render_extras"):
            from ..rainrender import parse_extras, parse_mix

            given = (parse_mix if name == "render_mix" else parse_extras)(value)
        was = (saved.get("render") or {}).get(key)
        if name == "render_extras" and isinstance(was, dict):  # a run pinned before an extra existed never drew it
            was = {**{k: 0.0 for k in given}, **was}
        return was, given
    if name == "half":  # --half is recorded under its old name
        return saved.get("bf16"), value
    if name == "stage":
        return saved["recipe_options"].get("stage"), value
    return saved.get(name), jsonable(value)


def check_against_run(params: dict[str, Any], explicit: set[str], saved: dict[str, Any]) -> None:
    """Refuse ``--set``/``--preset`` and every other given option that contradicts the run folder."""
    for name in sorted(explicit - FREE):
        if name in ("sets", "preset", "init"):
            raise DerainError(f"{_flag(name)} cannot change a run being resumed (its config is fixed in the run "
                              "folder); start a new run from its weights with --init RUN_DIR/model.safetensors")
        was, now = _saved_and_given(name, params[name], saved)
        if was != now:
            raise DerainError(f"{_flag(name)} {now!r} contradicts the run being resumed ({was!r}); "
                              "drop the option, or start a new run")


def resumed_options(params: dict[str, Any], explicit: set[str], resume: Path, command: str):
    """TrainOptions for ``--resume RUN_DIR``: the folder's own, with the ``FREE`` options given applied."""
    from .options import TrainOptions

    extra = run_state(resume)
    saved = extra.get("options")
    if saved is None:
        raise DerainError(f"{resume} was made by an older derain that did not record its options; "
                          "give the data options again beside --resume")
    check_against_run(params, explicit, saved)
    opts = TrainOptions(**{**saved, "out": Path(params["out"]) if "out" in explicit else _run_dir(resume),
                           "resume": resume, "command": command, "progress": not params["quiet"]})
    for name in explicit & {"max_minutes", "threads", "steps", "export", "device", "save_every", "val_every"}:
        setattr(opts, name, params[name])
    if opts.val:
        opts.val = tuple(opts.val)
    return opts


def _run_dir(resume: Path) -> Path:
    return resume.parent if resume.name == "last" and (resume / "state.json").is_file() else resume
