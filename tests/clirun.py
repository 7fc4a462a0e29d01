"""Run the real ``derain`` console entry point inside a test."""
from __future__ import annotations

import sys

from derain_cli import cli


def derain(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``derain ARGS`` like the console script; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["derain", *map(str, args)])
    cli.state["debug"] = False
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
