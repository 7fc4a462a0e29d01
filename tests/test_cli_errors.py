"""One error style for usage mistakes (git/ruff-like), exit codes, and help without value placeholders."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clirun import derain
from tiny_spec import installed_tiny_weights, write_random_image


@pytest.fixture
def tiny(tmp_path, request):
    return installed_tiny_weights(tmp_path, request)


def _png(path: Path) -> Path:
    return write_random_image(path, 20, 24)


def _usage_lines(err: str) -> list[str]:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2, err
    assert lines[0].startswith("derain: error: ") and "Traceback" not in err
    return lines


def test_bare_derain_shows_help_and_exits_0(monkeypatch, capsys):
    code, out, err = derain(monkeypatch, capsys)
    assert code == 0, err
    assert "Usage: derain" in out and "run" in out
    assert "error" not in err.lower()


def test_missing_option_names_it_and_points_to_help(tmp_path, monkeypatch, capsys):
    code, _, err = derain(monkeypatch, capsys, "batch", tmp_path)
    assert code == 2
    assert _usage_lines(err) == ["derain: error: missing option --out", "Try 'derain batch --help'."]


def test_bad_value_names_the_option_and_the_value(tmp_path, monkeypatch, capsys):
    code, _, err = derain(monkeypatch, capsys, "run", tmp_path / "x.jpg", "--tile", "abc")
    assert code == 2
    assert _usage_lines(err) == ["derain: error: --tile: 'abc' is not an integer", "Try 'derain run --help'."]
    code, _, err = derain(monkeypatch, capsys, "run", tmp_path / "x.jpg", "--quality", "300")
    assert code == 2 and _usage_lines(err)[0] == "derain: error: --quality: '300' is out of range: it must be at most 100"


@pytest.mark.parametrize(
    "args,first",
    [
        (["run"], "derain: error: missing argument IMAGES"),
        (["run", "x.png", "--tile"], "derain: error: option '--tile' requires an argument"),
        (["nosuch"], "derain: error: no such command 'nosuch'"),
    ],
)
def test_other_usage_errors_are_two_lines_and_exit_2(monkeypatch, capsys, args, first):
    code, _, err = derain(monkeypatch, capsys, *args)
    assert code == 2
    lines = _usage_lines(err)
    assert lines[0] == first and lines[1].startswith("Try 'derain") and lines[1].endswith(" --help'.")


def test_a_file_starting_with_a_dash_works_after_double_dash(tmp_path, monkeypatch, capsys, tiny):
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "-35_dash.png")
    code, _, err = derain(monkeypatch, capsys, "run", "-35_dash.png", "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu")
    assert code == 2
    line = _usage_lines(err)[0]
    assert "no such option: -3" in line and "put it after --" in line
    code, out, err = derain(monkeypatch, capsys, "run", "--model", "tinytest", "--weights", tiny, "--device", "cpu",
                            "--", "-35_dash.png")
    assert code == 0, err
    assert (tmp_path / "-35_dash_derained.png").is_file()
    code, _, err = derain(monkeypatch, capsys, "run", "x.png", "--nosuch")
    assert code == 2 and "put it after --" not in err  # a mistyped option is not a file name


def test_failures_while_running_keep_their_codes(tmp_path, monkeypatch, capsys, tiny):
    code, _, err = derain(monkeypatch, capsys, "run", tmp_path / "missing.png")
    assert code == 2  # DerainError keeps its own exit code, and gets no "Try" line
    assert [ln for ln in err.splitlines() if ln.strip()] == [f"derain: error: {tmp_path / 'missing.png'}: no such file"]
    (tmp_path / "junk.png").write_bytes(b"not a png")
    code, _, err = derain(monkeypatch, capsys, "run", tmp_path / "junk.png", "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu")
    assert code == 1 and "Try" not in err


@pytest.mark.parametrize("command", [[], ["run"], ["batch"], ["weights", "pull"]])
def test_help_shows_flags_without_value_placeholders(monkeypatch, capsys, command):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = derain(monkeypatch, capsys, *command, "--help")
    assert code == 0
    assert "<bool>" not in out and "--help" in out
    if command == ["run"]:
        assert "--compare" in out and "<int>" in out  # valued options keep their type


def test_help_does_not_import_torch():
    code = ("import sys; sys.argv = ['derain', 'run', '--help']\n"
            "from derain_cli import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "TORCH False" in res.stdout, res.stderr
