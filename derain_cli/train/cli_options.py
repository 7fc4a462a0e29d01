"""``derain train``'s parameters (command line, ``--recipe`` file) as one :class:`TrainOptions`.

The command only parses; this decides what the parameters mean: which data mode, which
model, which ``--set`` keys are model config and which are the recipe's own options,
and whether a ``--resume`` takes everything from its run folder.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import DerainError
from .resume import DATA_FLAGS, check_against_run, resumed_options, run_state


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` items; values are JSON when they parse as JSON (numbers, true, lists), else strings."""
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


def _given(ctx) -> set[str]:
    """Parameters the user wrote (by name: typer vendors its own click, so its ParameterSource is not click's)."""
    return {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}


def _aliases(params: dict[str, Any], explicit: set[str]) -> None:
    """Old spellings: ``--bf16`` is ``--half``; ``--stage N`` (deprecated) is ``--set stage=N``."""
    if "bf16" in explicit:
        params["half"] = params["half"] or params["bf16"]
        explicit.discard("bf16")
        explicit.add("half")
    if "stage" in explicit:
        from ..devices import say

        say(f"warning: --stage is deprecated; write --set stage={params['stage']}")


def train_options(ctx) -> Any:
    """The TrainOptions a ``derain train`` command line (and its ``--recipe`` file) asks for."""
    params, explicit = dict(ctx.params), _given(ctx)
    command = "derain " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if params.get("recipe_file") is not None:
        from .recipe_file import apply_recipe_file

        explicit |= apply_recipe_file(ctx, params["recipe_file"], params, explicit)
    explicit.discard("recipe_file")
    _aliases(params, explicit)
    resume = params["resume"]
    if resume is not None and not explicit & (set(DATA_FLAGS) | {"render"}):
        return resumed_options(params, explicit, resume, command)
    return _new_run(params, explicit, command)


def _data(params: dict[str, Any]) -> tuple[str, Any]:
    """The one data mode given, and its folders (``--render`` alone is paired training on rendered rain)."""
    chosen = [(m, params[m]) for m in ("paired", "unpaired", "semi") if params[m]]
    if not chosen and params["render"]:
        chosen = [("paired", ())]
    if len(chosen) != 1:
        raise DerainError("give exactly one of --paired RAINY CLEAN, --unpaired CLEAN RAINY, --semi RAINY CLEAN REAL "
                          "(or --render CLEAN_DIR alone)")
    return chosen[0]


def _model(params: dict[str, Any], explicit: set[str], mode: str) -> str:
    """``--model``, the resumed run's, or the default for the data (said in one line)."""
    from ..registry import default_model

    resume, model = params["resume"], params["model"]
    saved = run_state(resume).get("options") if resume is not None else None
    if saved is not None:
        check_against_run(params, explicit, saved)
        model = model or saved["model"]
    elif resume is not None and explicit & {"sets", "preset"}:
        check_against_run(params, explicit & {"sets", "preset"}, {})
    if model is None:
        model = default_model(mode)
        print(f"derain: training {model}, the default for --{mode} data (choose another with --model)",
              file=sys.stderr)
    return model


def _render(params: dict[str, Any]) -> dict[str, Any] | None:
    if not params["render"]:
        return None
    from ..rainrender import parse_extras, parse_mix

    try:
        mix = parse_mix(params["render_mix"]) if params["render_mix"] else None
    except ValueError as exc:
        raise DerainError(f"--render-mix: {exc}") from None
    try:
        extras = parse_extras(params["render_extras"]) if params.get("render_extras") else None
    except ValueError as exc:
        raise DerainError(f"--render-extras: {exc}") from None
    streaks = params["streaks"]
    return {"folders": [str(f) for f in params["render"]], "ratio": params["render_ratio"], "mix": mix,
            "extras": extras, "streaks": str(streaks) if streaks else None}


def _new_run(params: dict[str, Any], explicit: set[str], command: str) -> Any:
    """TrainOptions of a new run (or of a resume that names its data again)."""
    from ..registry import get_spec
    from .options import TrainOptions
    from .recipe import split_sets

    mode, folders = _data(params)
    if params["resume"] is not None and params["init"] is not None:
        raise DerainError("--resume and --init exclude each other")
    model = _model(params, explicit, mode)
    spec = get_spec(model)  # unknown model -> clear error before importing the engine
    overrides, recipe_options = split_sets(spec, parse_sets(params["sets"]))
    if params["stage"] is not None:
        if recipe_options.get("stage", params["stage"]) != params["stage"]:
            raise DerainError("--stage and --set stage= disagree; give --set stage=N alone")
        recipe_options["stage"] = params["stage"]
    val = params["val"]
    return TrainOptions(
        model=model, mode=mode, folders=[str(f) for f in folders], out=params["out"] or Path("runs") / model,
        preset=params["preset"], overrides=overrides, patch=params["patch"], batch=params["batch"],
        steps=params["steps"], epochs=params["epochs"], max_minutes=params["max_minutes"], lr=params["lr"],
        ema=params["ema"], seed=params["seed"], val=tuple(map(str, val)) if val else None,
        val_sets=[str(v) for v in params["val_sets"]], render=_render(params), val_every=params["val_every"],
        save_every=params["save_every"], resume=params["resume"], init=params["init"], export=params["export"],
        threads=params["threads"], bf16=params["half"], channels_last=params["channels_last"],
        device=params["device"], recipe_options=recipe_options, progress=not params["quiet"], command=command,
    )
