"""``derain train --recipe FILE.toml``: train's options written down once, in a file.

Keys are train's long options with underscores (``model``, ``paired``, ``val_set``,
``max_minutes``, ``set``); values are what the command line would take: a string or
number, ``true`` for a flag, a list for options with several values or given several
times. ``$DERAIN_DATA`` and a leading ``~`` are expanded in strings; relative paths stay
relative to the current folder. Options on the command line win over the file's.

The file's values are turned into command-line words and parsed by the ``train``
command itself, so they are checked and converted exactly like typed options.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..errors import DerainError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Parameters a recipe file cannot set: itself, and the hidden old spellings.
_NOT_IN_FILES = {"recipe_file"}


def recipe_keys(command) -> dict[str, Any]:
    """Key -> the click parameter it sets: every visible long option, dashes as underscores."""
    keys = {}
    for param in command.params:
        if param.param_type_name != "option" or param.hidden or param.name in _NOT_IN_FILES:
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                keys[opt[2:].replace("-", "_")] = param
    return keys


def read_recipe(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DerainError(f"--recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DerainError(f"--recipe {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DerainError(f"--recipe {path}: not valid TOML ({exc})") from None


def expand(path: Path, key: str, text: str) -> str:
    """``$DERAIN_DATA`` (or ``${DERAIN_DATA}``) and a leading ``~`` expanded; relative paths left as they are."""
    if "$DERAIN_DATA" in text or "${DERAIN_DATA}" in text:
        data = os.environ.get("DERAIN_DATA")
        if not data:
            raise DerainError(f"--recipe {path}: {key} uses $DERAIN_DATA, which is not set")
        text = text.replace("${DERAIN_DATA}", data).replace("$DERAIN_DATA", data)
    return os.path.expanduser(text) if text.startswith("~") else text


def _words(path: Path, key: str, param, value: Any) -> list[str]:
    """The command-line words that say ``key = value``."""
    flag = next(o for o in param.opts if o.startswith("--"))

    def word(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise DerainError(f"--recipe {path}: {key} takes strings or numbers, not {v!r}")
        return expand(path, key, v) if isinstance(v, str) else str(v)

    if param.is_flag:
        if not isinstance(value, bool):
            raise DerainError(f"--recipe {path}: {key} is a flag: write {key} = true or false")
        return [flag] if value else []
    items = value if isinstance(value, list) else [value]
    if param.nargs > 1:
        return [flag, *map(word, items)]
    if param.multiple:
        return [f"{flag}={word(v)}" for v in items]
    if isinstance(value, list):
        raise DerainError(f"--recipe {path}: {key} takes one value, not a list")
    return [f"{flag}={word(value)}"]


def apply_recipe_file(ctx, path: Path, params: dict[str, Any], explicit: set[str]) -> set[str]:
    """Put the file's values into ``params`` where the command line gave none; returns the names it set."""
    from ..cli import _cx, usage_message

    keys = recipe_keys(ctx.command)
    data = read_recipe(path)
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise DerainError(f"--recipe {path}: unknown key {unknown[0]!r}; the keys are train's long options with "
                          f"underscores: {', '.join(sorted(keys))}")
    chosen = {key: keys[key] for key in data if keys[key].name not in explicit}
    words = [w for key, param in chosen.items() for w in _words(path, key, param, data[key])]
    try:
        parsed = ctx.command.make_context(ctx.info_name, words, parent=ctx.parent)
    except _cx.ClickException as exc:  # click's usage errors: a bad number, a wrong count of folders
        raise DerainError(f"--recipe {path}: {usage_message(exc, words)}") from None
    names = {param.name for param in chosen.values()}
    for name in names:
        params[name] = parsed.params[name]
    return names
