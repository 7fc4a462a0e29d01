"""The ``derain`` command line. Commands live in :mod:`derain_cli.commands`, one module each.

Nothing here imports torch: ``derain --help`` stays instant.
"""
from __future__ import annotations

import sys

import typer

from .errors import DerainError

app = typer.Typer(
    name="derain",
    help="Remove rain (and the fog that comes with it) from photos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Set by ``--debug``: show tracebacks instead of one-line errors.
state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    state["debug"] = debug


def _register_commands() -> None:
    import importlib

    for name in ("run", "weights", "evaluate", "train", "synth", "rainify"):
        try:
            module = importlib.import_module(f"derain_cli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"derain_cli.commands.{name}":
                continue  # command not built yet
            raise
        module.register(app)


_register_commands()


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    try:
        # with standalone_mode=False click *returns* the code of `raise typer.Exit(n)`;
        # typer turns Ctrl-C into Exit(130)
        code = app(standalone_mode=False)
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
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("derain: aborted", file=sys.stderr)
            sys.exit(1)
        if state["debug"]:
            raise
        print(f"derain: error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
