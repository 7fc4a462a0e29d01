"""The ``derain`` command line. Commands live in :mod:`derain_cli.commands`, one module each.

Nothing here imports torch: ``derain --help`` stays instant.

Errors follow one style, like git's and ruff's: ``derain: error: WHAT`` on one
line; usage mistakes add ``Try 'derain CMD --help'.`` and exit 2, failures while
running exit 1 (a :class:`DerainError` keeps its own ``exit_code``).
"""
from __future__ import annotations

import sys
import warnings

import typer
from typer.core import TyperCommand, TyperGroup

from .errors import DerainError

try:  # typer >= 0.22 vendors click; older releases raise click's own exceptions
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _cx

#: Ctrl-D at a prompt: typer's own Abort, and click's where an older typer raises that.
_ABORTS = tuple({typer.Abort, getattr(_cx, "Abort", typer.Abort)})

#: Set by ``--debug``: show tracebacks instead of one-line errors.
state = {"debug": False}

#: How pydantic (typer's value parser) names a bad value, as the rest of a ``--opt: VALUE ...`` line.
_VALUE_PROBLEMS = {
    "int_parsing": "is not an integer",
    "int_from_float": "is not an integer",
    "int_type": "is not an integer",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "bool_parsing": "is not true or false",
}
#: Pydantic's bound checks: the word for the bound and the key of its value.
_BOUNDS = {
    "less_than_equal": ("at most", "le"),
    "less_than": ("below", "lt"),
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("above", "gt"),
}
DASH_HINT = "to name a file that starts with '-', put it after --"


class _PlainFlags:
    """Help shows a boolean flag as ``--compare``, not ``--compare <bool>``: a flag takes no value.

    Recent typer prints a type after every option, flags included; an empty
    metavar is what its help formatter prints instead.
    """

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
                param.metavar = ""
        return params


class _Command(_PlainFlags, TyperCommand):
    """Every ``derain`` command."""


class _Group(_PlainFlags, TyperGroup):
    """``derain`` and its command groups (``derain weights``)."""


app = typer.Typer(
    name="derain",
    help="Remove rain (and the fog that comes with it) from photos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    state["debug"] = debug


def _register_commands() -> None:
    import importlib

    for name in ("run", "weights", "evaluate", "train", "synth", "rainify"):
        importlib.import_module(f"derain_cli.commands.{name}").register(app)


def _use_plain_flags(typer_app: typer.Typer) -> None:
    """Give every registered command and group the classes above (modules register plain commands)."""
    from typer.models import DefaultPlaceholder

    for info in typer_app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = _Command
    for group in typer_app.registered_groups:
        if group.cls in (None, TyperGroup) or isinstance(group.cls, DefaultPlaceholder):
            group.cls = _Group
        _use_plain_flags(group.typer_instance)


_register_commands()
_use_plain_flags(app)


# -- usage errors -------------------------------------------------------------------
def _lower_first(text: str) -> str:
    """click's ``No such option: -3.`` as the middle of our line: ``no such option: -3`` (``CUDA ...`` kept)."""
    text = text.strip().rstrip(".")
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]


def param_name(param) -> str:
    """How a user wrote (or should write) a parameter: ``--tile`` for options, ``IMAGES`` for arguments."""
    opts = list(getattr(param, "opts", None) or [])
    if getattr(param, "param_type_name", "") == "option" and opts:
        return max(opts, key=lambda o: (o.startswith("--"), len(o)))
    metavar = getattr(param, "metavar", None)
    return metavar or (param.name or "").upper()


def _value_problem(exc) -> str:
    """``'abc' is not an integer`` from the validation error typer wraps in BadParameter, else its message."""
    errors = getattr(exc.__cause__, "errors", None)
    if not callable(errors) or not errors():
        return _lower_first(exc.message or "invalid value")
    first = errors()[0]
    value, kind, ctx = first.get("input"), first.get("type", ""), first.get("ctx") or {}
    shown = repr(value) if isinstance(value, str) else str(value)
    if kind in _VALUE_PROBLEMS:
        return f"{shown} {_VALUE_PROBLEMS[kind]}"
    if kind in _BOUNDS and _BOUNDS[kind][1] in ctx:
        word, key = _BOUNDS[kind]
        return f"{shown} is out of range: it must be {word} {ctx[key]}"
    return f"{shown}: {_lower_first(str(first.get('msg', exc.message)))}"


def _looks_like_a_file(option: str, argv: list[str]) -> bool:
    """True when the unknown "option" is the start of a word that names a file (``-35_dash.jpg``)."""
    from pathlib import Path

    for word in argv:
        if word.startswith(option) and word.startswith("-") and "=" not in word:
            if Path(word).exists() or Path(word).suffix or not word.lstrip("-")[:1].isalpha():
                return True
    return False


def usage_message(exc, argv: list[str]) -> str:
    """The one-line text for a click usage error: names the option and the value, git style."""
    if isinstance(exc, _cx.MissingParameter) and exc.param is not None:
        kind = "option" if exc.param.param_type_name == "option" else "argument"
        return f"missing {kind} {param_name(exc.param)}"
    if isinstance(exc, _cx.BadParameter):
        problem = _value_problem(exc)
        return f"{param_name(exc.param)}: {problem}" if exc.param is not None else problem
    if isinstance(exc, _cx.NoSuchOption):
        text = _lower_first(exc.format_message())
        if _looks_like_a_file(exc.option_name, argv):
            text += f"; {DASH_HINT}"
        return text
    return _lower_first(exc.format_message())


def _help_command(exc, argv: list[str]) -> str:
    """``derain run`` for the hint line: the failing context's path, else the command named in argv."""
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.command_path:
        return ctx.command_path
    names = {info.name for info in app.registered_commands} | {g.name for g in app.registered_groups}
    words = [w for w in argv if not w.startswith("-")]
    return "derain" + (f" {words[0]}" if words and words[0] in names else "")


def _usage_error(exc, argv: list[str]) -> int:
    """Print a usage error (or the help a bare ``derain`` asks for); returns the exit code."""
    if isinstance(exc, _cx.NoArgsIsHelpError):
        if exc.message.strip():  # rich has already printed the help; plain click returns it
            print(exc.message)
        return 0
    print(f"derain: error: {usage_message(exc, argv)}", file=sys.stderr)
    print(f"Try '{_help_command(exc, argv)} --help'.", file=sys.stderr)
    return 2


# -- warnings ---------------------------------------------------------------------------
def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Any warning, ours or a library's, as one ``derain: warning: ...`` line; never a source location.

    numpy's arithmetic notes ("invalid value encountered in divide") say nothing a user can act
    on and are dropped (``--debug`` keeps them): a NaN that matters is caught as an error.
    """
    text = " ".join(str(message).split()) or category.__name__
    if issubclass(category, RuntimeWarning) and " encountered in " in text and not state["debug"]:
        return
    print(f"derain: warning: {text}", file=sys.stderr if file is None else file)


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        _main(sys.argv[1:])


def _main(argv: list[str]) -> None:
    try:
        # with standalone_mode=False click *returns* the code of `raise typer.Exit(n)`;
        # typer turns Ctrl-C into Exit(130)
        code = app(args=argv, prog_name="derain", standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130:
                print("derain: interrupted", file=sys.stderr)
            sys.exit(code)
    except DerainError as exc:
        if state["debug"]:
            raise
        print(f"derain: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("derain: interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except _cx.UsageError as exc:
        sys.exit(_usage_error(exc, argv))
    except _cx.ClickException as exc:
        print(f"derain: error: {_lower_first(exc.format_message())}", file=sys.stderr)
        sys.exit(exc.exit_code or 1)
    except _ABORTS:
        print("derain: aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        if state["debug"]:
            raise
        print(f"derain: error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
