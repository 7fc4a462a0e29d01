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
    ("machine path", "names a machine path (/data/rain/jorder_heavy)"),
])
def test_add_refuses_in_one_line(env, monkeypatch, capsys, case, message):  # noqa: F811
    make_weights(env / "run.safetensors")
    command = "derain bench /data/rain/jorder_heavy --model x" if case == "machine path" else "derain bench x"
    monkeypatch.delenv("DERAIN_DATA", raising=False)
    report = _report(env / "r.json", command, results=2 if case == "two models" else 1)
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


def _tiny_run(root: Path, out: str, steps: int, init: Path | None = None) -> Path:
    from derain_cli.train import engine
    from derain_cli.train.options import TrainOptions
    from tiny_configs import SEMIMSN_TINY

    export = root / f"{out}.safetensors"
    engine.train(TrainOptions(model="semimsn", mode="paired", folders=[str(root / "rainy"), str(root / "clean")],
                              out=root / out, overrides={} if init else SEMIMSN_TINY, patch=32, batch=2,
                              steps=steps, progress=False, export=export, init=init))
    return export


def test_steps_and_parent_follow_a_multi_stage_lineage_and_replace_keeps_the_place(env, monkeypatch, capsys):  # noqa: F811
    """Stage files record what they started from, so an entry several runs from a released one gets
    its total steps and parent without hand edits; --replace swaps an entry where it stands."""
    from derain_cli.weightfile import read_metadata
    from test_train_cli import _write_pairs

    _write_pairs(env)
    monkeypatch.setenv("DERAIN_DATA", str(env))  # the runs record their folders as $DERAIN_DATA/...
    linked = weights.toml_path()  # as in the package: a link to the repository's weights.toml
    (env / "repo.toml").write_text(linked.read_text())
    linked.unlink()
    linked.symlink_to(env / "repo.toml")
    base = _tiny_run(env, "r0", 1)
    args = ["--recipe", "recipes/semimsn-general.toml", "--trained-on", "t"]
    assert derain(monkeypatch, capsys, "weights", "add", base, "--tag", "base", *args)[0] == 0
    stage0 = _tiny_run(env, "r1", 2, init=base)
    stage1 = _tiny_run(env, "r2", 3, init=stage0)
    sha0 = hashlib.sha256(base.read_bytes()).hexdigest()
    assert read_metadata(stage1)["init"] == {"sha256": hashlib.sha256(stage0.read_bytes()).hexdigest(),
                                             "steps": 3, "origin": sha0}
    assert derain(monkeypatch, capsys, "weights", "add", stage0, "--tag", "general", *args)[0] == 0
    make_weights(env / "other.safetensors")  # an entry after it, which --replace must keep in place
    assert derain(monkeypatch, capsys, "weights", "add", env / "other.safetensors", "--tag", "x", *args,
                  "--parent", "semimsn.base")[0] == 0  # no record: taken to continue its parent directly
    code, out, err = derain(monkeypatch, capsys, "weights", "add", stage1, "--tag", "general", *args, "--replace")
    assert code == 0 and "replaced [semimsn.general]" in out, err
    entries = weights.load_registry()
    assert list(entries) == ["semimsn.base", "semimsn.general", "dualstage.x"]
    assert (entries["semimsn.general"].steps, entries["semimsn.general"].parent) == (6, sha0)
    assert (entries["dualstage.x"].steps, entries["dualstage.x"].parent) == (2, sha0)
    assert (weights.BUNDLED_DIR / "semimsn-general.safetensors").read_bytes() == stage1.read_bytes()
    assert weights.toml_path().read_text().count('["semimsn.general"]') == 1
    assert linked.is_symlink() and not list(env.glob("*.tmp"))


def test_saved_weights_name_data_folders_as_derain_data_and_add_refuses_machine_paths(env, monkeypatch, capsys):  # noqa: F811
    import torch

    from derain_cli.weightfile import read_metadata, save_weights

    def save(name):
        save_weights(env / name, {"conv.weight": torch.zeros(4, 3, 3, 3)}, architecture="dualstage",
                     config={"c": 4}, steps=1, data={"folders": [f"{env}/research/photos", "runs/data/clean"]})

    monkeypatch.setenv("DERAIN_DATA", str(env / "research"))
    save("portable.safetensors")
    assert read_metadata(env / "portable.safetensors")["data"]["folders"] == ["$DERAIN_DATA/photos", "runs/data/clean"]
    monkeypatch.delenv("DERAIN_DATA")
    save("machine.safetensors")
    code, _, err = derain(monkeypatch, capsys, "weights", "add", env / "machine.safetensors", "--tag", "mine",
                          "--recipe", "recipes/x.toml", "--trained-on", "t")
    assert code != 0 and f"names a machine path ({env}/research/photos)" in err and len(err.strip().splitlines()) == 1
    assert not (weights.BUNDLED_DIR / "dualstage-mine.safetensors").exists()


def test_bundled_weights_name_no_machine_path():
    from safetensors import safe_open

    from derain_cli.weightfile import machine_path

    for path in sorted(weights.BUNDLED_DIR.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            found = {k: machine_path(v) for k, v in (f.metadata() or {}).items() if machine_path(v)}
        assert not found, (path.name, found)
