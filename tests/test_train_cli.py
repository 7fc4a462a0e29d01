"""``derain train``'s options: a --recipe file, --set keys, recipe options and the old spellings.

The engine is replaced by a recorder, so each test checks the TrainOptions a command line
means without training (the end-to-end runs are in test_train.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clirun import derain
from derain_cli.train import engine
from derain_cli.train.options import TrainOptions, TrainResult
from tiny_configs import SEMIMSN_TINY


@pytest.fixture
def recorded(monkeypatch):
    """The TrainOptions each ``derain train`` passes to the engine."""
    seen: list[TrainOptions] = []

    def record(opts):
        seen.append(opts)
        return TrainResult(step=0, losses={}, best_psnr=None, export=Path(opts.out) / "model.safetensors",
                           stopped="done")

    monkeypatch.setattr(engine, "train", record)
    return seen


def _one_line(code: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("derain: error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _fields(opts: TrainOptions) -> dict:
    return {k: v for k, v in dataclasses.asdict(opts).items() if k != "command"}


def test_a_recipe_file_means_the_same_as_its_command_line(tmp_path, monkeypatch, capsys, recorded):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DERAIN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data, home = tmp_path / "data", tmp_path / "home"
    code, _, err = derain(monkeypatch, capsys, "train", "--model", "semimsn", "--paired", data / "rainy", "clean/",
                          "--render", home / "photos", "--render", "more/", "--val-set", data / "dev",
                          "--set", "channels=4", "--set", "units=1", "--steps", "14000", "--max-minutes", "30",
                          "--half", "-q", "-o", "runs/x")
    assert code == 0, err
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "semimsn"\npaired = ["$DERAIN_DATA/rainy", "clean/"]\n'
                      'render = ["~/photos", "more/"]\nval_set = ["${DERAIN_DATA}/dev"]\n'
                      'set = ["channels=4", "units=1"]\nsteps = 14000\nmax_minutes = 30\nhalf = true\n'
                      'quiet = true\nout = "runs/x"\n')
    code, _, err = derain(monkeypatch, capsys, "train", "--recipe", recipe)
    assert code == 0, err
    assert _fields(recorded[1]) == _fields(recorded[0])
    assert recorded[1].folders == [str(data / "rainy"), "clean"] and recorded[1].steps == 14000

    # the command line wins, a list included; the rest still comes from the file
    code, _, err = derain(monkeypatch, capsys, "train", "--recipe", recipe, "--steps", "5", "--render", "x/")
    assert code == 0, err
    assert recorded[2].steps == 5 and recorded[2].render["folders"] == ["x"]
    assert recorded[2].overrides == {"channels": 4, "units": 1}


@pytest.mark.parametrize("text, needles", [
    ('model = "semimsn"\nstep = 3\n', ("unknown key 'step'", "steps", "val_set")),
    ('steps = "many"\n', ("--steps", "'many' is not an integer")),
    ('paired = ["only-one/"]\n', ("--paired",)),
    ('half = 1\n', ("half is a flag",)),
    ('steps = [\n', ("not valid TOML",)),
    ('paired = ["$DERAIN_DATA/a", "b"]\n', ("$DERAIN_DATA", "not set")),
])
def test_a_bad_recipe_file_is_one_clear_line(tmp_path, monkeypatch, capsys, recorded, text, needles):
    monkeypatch.delenv("DERAIN_DATA", raising=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    code, _, err = derain(monkeypatch, capsys, "train", "--recipe", recipe)
    _one_line(code, err, str(recipe), *needles)
    assert not recorded
    code, _, err = derain(monkeypatch, capsys, "train", "--recipe", tmp_path / "none.toml")
    _one_line(code, err, "no such file")


def test_stage_is_a_recipe_option_and_the_old_spellings_still_work(tmp_path, monkeypatch, capsys, recorded):
    common = ["train", "--model", "jrgr", "--semi", "a", "b", "c", "-q"]
    code, _, err = derain(monkeypatch, capsys, *common, "--set", "stage=1", "--half")
    assert code == 0, err
    code, _, err = derain(monkeypatch, capsys, *common, "--stage", "1", "--bf16")  # weights.toml's commands
    assert code == 0 and "--stage is deprecated" in err and "--set stage=1" in err
    assert recorded[0].recipe_options == recorded[1].recipe_options == {"stage": 1}
    assert recorded[0].overrides == recorded[1].overrides == {}
    assert recorded[0].bf16 is recorded[1].bf16 is True
    assert recorded[0].device == "auto"  # like derain run
    _one_line(*derain(monkeypatch, capsys, *common, "--set", "stage=two")[::2], "stage", "int")
    code, _, err = derain(monkeypatch, capsys, *common, "--stage", "1", "--set", "stage=2")
    _one_line(code, err.replace("derain: warning: --stage is deprecated; write --set stage=1", ""), "disagree")


def _write_pairs(root: Path) -> None:
    from conftest import make_rainy_pair
    import cv2

    for sub in ("rainy", "clean"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        rainy, clean = make_rainy_pair(40, 40, seed=i)
        cv2.imwrite(str(root / "rainy" / f"{i}.png"), rainy[:, :, ::-1])
        cv2.imwrite(str(root / "clean" / f"{i}.png"), clean[:, :, ::-1])


def test_unknown_set_keys_name_the_valid_ones_with_and_without_init(tmp_path, monkeypatch, capsys):
    _write_pairs(tmp_path)
    small = tmp_path / "small.safetensors"
    engine.train(TrainOptions(model="semimsn", mode="paired", folders=[str(tmp_path / "rainy"), str(tmp_path / "clean")],
                              out=tmp_path / "r0", overrides=SEMIMSN_TINY, patch=32, batch=2, steps=1,
                              progress=False, export=small))
    base = ["train", "--model", "semimsn", "--paired", tmp_path / "rainy", tmp_path / "clean", "--patch", "32",
            "--steps", "1", "-q", "-o", tmp_path / "r1", "--set", "chanels=4"]
    for extra in ([], ["--init", small]):
        line = _one_line(*derain(monkeypatch, capsys, *base, *extra)[::2], "unknown --set key for semimsn: chanels",
                         "valid keys:", "channels", "fullres_blocks")
        assert line.count("chanels") == 1
    assert not (tmp_path / "r1" / "log.jsonl").exists()
    # jrgr's recipe option is a valid key, named beside the config keys
    _one_line(*derain(monkeypatch, capsys, "train", "--model", "jrgr", "--paired", tmp_path / "rainy",
                      tmp_path / "clean", "--patch", "32", "--steps", "1", "-q", "-o", tmp_path / "r2",
                      "--set", "nosuch=1")[::2], "nosuch", "stage")


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_shipped_recipe_is_a_valid_train_command(recipe, tmp_path, monkeypatch, capsys, recorded):
    """weights.toml names these files: each must still parse into a training run of its model."""
    monkeypatch.setenv("DERAIN_DATA", str(tmp_path / "data"))
    code, _, err = derain(monkeypatch, capsys, "train", "--recipe", recipe)
    assert code == 0, err
    assert recorded[0].model == recipe.stem.partition("-")[0]
