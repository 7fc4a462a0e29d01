"""``derain weights add`` writes an entry from the file and its bench reports; weights.toml's entries
name their recipe files, parents and lineage, with no machine paths."""
from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest

from clirun import derain
from derain_cli import weights
from test_weights import env, make_weights  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def _report(path: Path, command: str, results: int = 1, dataset: str = "jorder_heavy") -> Path:
    row = {"psnr_y": 21.23456, "ssim_y": 0.712345, "seconds_per_image": 0.41234}
    path.write_text(json.dumps({"command": command, "dataset": {"name": dataset}, "results": [row] * results}))
    return path


def test_add_writes_a_loadable_entry_and_bundles_the_file(env, monkeypatch, capsys):  # noqa: F811
    data = make_weights(env / "run.safetensors")
    monkeypatch.setenv("DERAIN_DATA", str(env / "research"))
    fp32 = _report(env / "a.json", f"derain bench {env}/research/dev/jorder_heavy --model dualstage --weights X")
    half = _report(env / "b.json", "derain bench rain100l --model dualstage --half", dataset="rain100l")
    code, out, err = derain(monkeypatch, capsys, "weights", "add", env / "run.safetensors", "--tag", "mine",
                            "--recipe", "recipes/dualstage-mine.toml", "--trained-on", "my photos (mine)",
                            "--bench", fp32, "--bench", half, "--lineage", "from scratch", "--parent", "a" * 64)
    assert code == 0, err
    assert "added [dualstage.mine]" in out
    e = weights.load_registry()["dualstage.mine"]
    assert e.sha256 == hashlib.sha256(data).hexdigest() and e.size == len(data)
    assert e.config == {"c": 4} and e.steps == 1 and e.parent == "a" * 64 and e.lineage == ["from scratch"]
    assert e.recipe == "recipes/dualstage-mine.toml" and e.trained_on == "my photos (mine)"
    heavy = e.metrics["jorder_heavy"]
    assert heavy["psnr"] == 21.23 and heavy["ssim"] == 0.7123 and heavy["seconds_per_image"] == 0.4123
    assert heavy["command"] == "derain bench $DERAIN_DATA/dev/jorder_heavy --model dualstage --weights X"
    assert e.metrics["rain100l"]["half_psnr"] == 21.23 and "psnr" not in e.metrics["rain100l"]
    assert (weights.BUNDLED_DIR / "dualstage-mine.safetensors").read_bytes() == data


def test_a_long_lineage_is_written_one_step_a_line():
    from derain_cli.weights_add import entry_text

    steps = [f"stage {i}: " + "x" * 300 for i in range(6)]
    text = entry_text("dualstage.mine", {"lineage": steps, "tasks": ["derain"]}, {})
    assert max(len(line) for line in text.splitlines()) < 320
    assert 'tasks = ["derain"]' in text
    assert tomllib.loads(text)["dualstage.mine"]["lineage"] == steps


@pytest.mark.parametrize("case, message", [
    ("twice", "already has [dualstage.mine]"),
    ("two models", "holds 2 models"),
    ("not a report", "not a derain bench --json report"),
    ("bad parent", "--parent 'nosuch'"),
])
def test_add_refuses_in_one_line(env, monkeypatch, capsys, case, message):  # noqa: F811
    make_weights(env / "run.safetensors")
    report = _report(env / "r.json", "derain bench x", results=2 if case == "two models" else 1)
    if case == "not a report":
        report.write_text("{}")
    args = ["weights", "add", env / "run.safetensors", "--tag", "mine", "--recipe", "recipes/x.toml",
            "--trained-on", "t", "--bench", report]
    if case == "bad parent":
        args += ["--parent", "nosuch"]
    if case == "twice":
        assert derain(monkeypatch, capsys, *args)[0] == 0
    before = weights.toml_path().read_text()
    code, out, err = derain(monkeypatch, capsys, *args)
    assert code != 0 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert weights.toml_path().read_text() == before


def test_shipped_entries_name_recipe_files_parents_and_lineage():
    entries = weights.load_registry(REPO / "weights.toml")
    shas = {e.sha256 for e in entries.values()}
    for e in entries.values():
        recipe = tomllib.loads((REPO / e.recipe).read_text())
        assert recipe["model"] == e.model, e.name
        assert e.parent is None or e.parent in shas, e.name
        assert all(len(step) < 300 for step in e.lineage), e.name


def test_weights_toml_and_recipes_hold_no_machine_paths_or_diary():
    files = [REPO / "weights.toml", *sorted((REPO / "recipes").glob("*.toml"))]
    for f in files:
        text = f.read_text()
        assert not re.search(r"(^|[\s\"'=])/(work|home|Users|tmp|root|mnt)/", text, re.M), f
        assert not re.search(r"\bsession", text, re.I), f
        assert max(len(line) for line in text.splitlines()) < 1200, f
