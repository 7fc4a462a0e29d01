"""The model registry: adding an architecture is one module plus its test, as this file shows.

``TwoConv`` below is a throwaway architecture (two convolutions and a residual). It is
registered through the public API only (``register_model``), then loaded, run through
``derain run``, checked against the contract every built-in keeps, and trained one step.
Another package registers the same way through a ``derain_cli.models`` entry point.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clirun import derain
from derain_cli import load_model
from derain_cli.models.common import charbonnier
from derain_cli.registry import (BUILTIN_MODULES, ROLES, Card, ModelSpec, Tiling, Training, Traits, default_model,
                                 get_spec, model_names, rainify_models, register_model, unregister_model)
from derain_cli.train.recipe import Recipe
from derain_cli.weightfile import load_weights, save_weights

REPO = Path(__file__).resolve().parents[1]


# -- the throwaway architecture: everything a new module needs ----------------------------------
class TwoConv(nn.Module):
    """Two 3x3 convolutions and a residual: a receptive-field margin of 2 pixels."""

    def __init__(self, config: dict):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, config["width"], 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(config["width"], 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class TwoConvRecipe(Recipe):
    lr = 1e-2

    def train_step(self, batch, step):
        loss = charbonnier(self.nets["bundle"](batch["rainy"]), batch["clean"])
        self.optimize(loss)
        return {"loss": loss.detach()}


TWOCONV = ModelSpec(
    name="twoconv",
    build=TwoConv,
    derain_net=lambda bundle, variant: bundle,
    traits_of=lambda config: Traits(tiling=Tiling.MARGIN, tile_margin=4, bytes_per_pixel=64.0),
    presets={"cpu": {"width": 4}},
    training=Training(TwoConvRecipe, modes=("paired",)),
    card=Card("two convolutions (test only)"),
)


@pytest.fixture
def twoconv(tmp_path):
    """``twoconv`` registered for one test, and a random weights file of it."""
    register_model(TWOCONV)
    torch.manual_seed(0)
    path = tmp_path / "twoconv.safetensors"
    save_weights(path, TWOCONV.build(TWOCONV.config()).state_dict(), architecture="twoconv",
                 config=TWOCONV.config())
    yield path
    unregister_model("twoconv")


def _image(h=37, w=53, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_a_registered_architecture_loads_runs_and_keeps_the_contract(twoconv, tmp_path):
    assert "twoconv" in model_names() and get_spec("twoconv") is TWOCONV
    model = load_model("twoconv", weights=twoconv, device="cpu")
    assert model.traits.tile_margin == 4 and model.traits.tasks == ("derain",)
    for h, w in ((1, 1), (13, 17), (37, 29)):  # odd, tiny and non-square sizes come back whole
        assert model.process(_image(h, w)).shape == (h, w, 3)
    img = _image(90, 130).astype(np.float32) / 255
    whole = model.process(img, tile=0)
    assert np.abs(model.process(img, tile=32) - whole).max() < 1e-5  # MARGIN: tiles are exact
    # the weights survive a save/load round trip
    state, meta = load_weights(twoconv, architecture="twoconv")
    again = TWOCONV.build(meta["config"])
    again.load_state_dict(state, strict=True)
    assert meta["config"] == TWOCONV.config()


def test_derain_run_finds_a_registered_architecture(twoconv, tmp_path, monkeypatch, capsys):
    import cv2

    photo, out = tmp_path / "photo.png", tmp_path / "out.png"
    cv2.imwrite(str(photo), _image())
    code, _, err = derain(monkeypatch, capsys, "run", photo, "-o", out, "--model", "twoconv",
                          "--weights", twoconv, "--device", "cpu")
    assert code == 0, err
    assert cv2.imread(str(out)).shape == (37, 53, 3)


def test_a_registered_architecture_trains_through_its_recipe(twoconv):
    recipe = TWOCONV.recipe(TWOCONV, TWOCONV.config(), "paired")
    recipe.setup(2)
    before = [p.detach().clone() for p in recipe.bundle.parameters()]
    batch = {"rainy": torch.rand(2, 3, 16, 16), "clean": torch.rand(2, 3, 16, 16)}
    assert np.isfinite(float(recipe.train_step(batch, 0)["loss"]))
    assert all(not torch.equal(a, b) for a, b in zip(before, recipe.bundle.parameters()))


def test_registration_refuses_what_would_be_ambiguous():
    get_spec("dualstage")  # registered by its module
    with pytest.raises(ValueError, match="already registered"):
        register_model(dataclasses.replace(TWOCONV, name="dualstage"))
    with pytest.raises(ValueError, match="identifier"):
        register_model(dataclasses.replace(TWOCONV, name="two.conv"))
    with pytest.raises(ValueError, match="roles"):
        register_model(dataclasses.replace(TWOCONV, name="other", default_for=("photos",)))
    with pytest.raises(ValueError, match="rainify_net"):
        register_model(dataclasses.replace(TWOCONV, name="other", default_for=("rainify",)))
    assert "other" not in model_names()


def test_every_role_has_exactly_one_built_in_default():
    specs = [get_spec(n) for n in BUILTIN_MODULES]
    for role in ROLES:
        claims = [s.name for s in specs if role in s.default_for]
        assert claims == [default_model(role)], (role, claims)
    assert default_model() == "dualstage"
    assert rainify_models() == [s.name for s in specs if s.rainify_net is not None]


_PLUGIN = '''
import torch
from derain_cli.registry import Card, ModelSpec, Traits


class Net(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


SPEC = ModelSpec(name="plugdemo", build=Net, derain_net=lambda bundle, variant: bundle,
                 traits_of=lambda config: Traits(size_multiple=2), presets={"cpu": {}}, card=Card("from a plug-in"))
'''

_PLUGIN_USER = '''
import sys
import numpy as np
from derain_cli import load_model
from derain_cli.registry import get_spec, model_names
from derain_cli.weightfile import save_weights

spec = get_spec("plugdemo")
save_weights(sys.argv[1], spec.build({}).state_dict(), architecture="plugdemo", config={})
model = load_model("plugdemo", weights=sys.argv[1], device="cpu")
print(" ".join(model_names()))
print(spec.summary, model.traits.size_multiple, model.process(np.zeros((5, 7, 3), np.uint8)).shape)
'''


def test_another_package_registers_through_an_entry_point(tmp_path):
    """An installed package (here a dist-info on PYTHONPATH) adds an architecture; derain's files are untouched."""
    site = tmp_path / "site"
    (site / "derain_plugin_demo-0.1.dist-info").mkdir(parents=True)
    (site / "derain_plugin_demo.py").write_text(_PLUGIN)
    (site / "derain_plugin_demo-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: derain-plugin-demo\nVersion: 0.1\n")
    (site / "derain_plugin_demo-0.1.dist-info" / "entry_points.txt").write_text(
        "[derain_cli.models]\nplugdemo = derain_plugin_demo:SPEC\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _PLUGIN_USER, str(tmp_path / "w.safetensors")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    names, summary = result.stdout.strip().splitlines()
    assert names.split() == [*BUILTIN_MODULES, "plugdemo"]
    assert summary == "from a plug-in 2 (5, 7, 3)"


def test_inference_never_imports_training_code():
    code = textwrap.dedent("""
        import sys
        from derain_cli import load_model
        from derain_cli.registry import all_specs
        model = load_model("dualstage", device="cpu")
        all_specs()
        print(sorted(m for m in sys.modules if m.startswith("derain_cli.train")))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_readme_models_table_lists_exactly_the_registered_architectures():
    text = (REPO / "README.md").read_text()
    section = text.split("## Models and weights", 1)[1].split("\n## ", 1)[0]
    table = section.split("\n\n")[1]  # the first table after the heading
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([^`]+)`", row).group(1) for row in rows] == list(model_names())


def test_derain_models_json_comes_from_the_registry(twoconv, monkeypatch, capsys):
    code, out, err = derain(monkeypatch, capsys, "models", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [m["name"] for m in listed["models"]] == [*BUILTIN_MODULES, "twoconv"]
    assert listed["default"] == default_model()
    rows = {m["name"]: m for m in listed["models"]}
    assert rows["twoconv"]["kind"] == "paired" and rows["twoconv"]["summary"].startswith("two convolutions")
    assert [n for n, m in rows.items() if "rainify" in m["tasks"]] == rainify_models()
