"""Weights are checked for NaN/Inf at load, outputs before they are written, and a --weights file names its model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from clirun import derain
from derain_cli.api import Derainer, load_model
from derain_cli.errors import DerainError, WeightsError
from derain_cli.weightfile import load_weights
from tiny_spec import installed_tiny_weights, write_random_image

BUNDLED = Path(__file__).resolve().parents[1] / "derain_cli" / "data" / "weights"


@pytest.fixture
def tiny(tmp_path, request):
    return installed_tiny_weights(tmp_path, request)


def _png(path: Path) -> Path:
    return write_random_image(path, 24, 32)


def _poisoned_copy(src: Path, dst: Path, value: float) -> str:
    """``src`` with one value of one tensor replaced, metadata kept; returns the tensor's name."""
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 4)[1]
    tensors[name].view(-1)[3] = value
    save_file(tensors, str(dst), metadata=meta)
    return name


@pytest.mark.parametrize("value,kind", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value, kind):
    bad = tmp_path / "semimsn.safetensors"
    name = _poisoned_copy(BUNDLED / "semimsn.safetensors", bad, value)
    with pytest.raises(WeightsError, match=rf"tensor '{name}' has 1 non-finite value \({kind}\)"):
        load_weights(bad)
    load_weights(BUNDLED / "semimsn.safetensors")  # the original is fine


def test_cli_refuses_nan_weights_in_one_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.safetensors"
    name = _poisoned_copy(BUNDLED / "semimsn.safetensors", bad, float("nan"))
    src = _png(tmp_path / "a.png")
    code, _, err = derain(monkeypatch, capsys, "run", src, "--weights", bad, "--device", "cpu")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("derain: error:") and repr(name) in lines[0] and "non-finite" in lines[0]
    assert not (tmp_path / "a_derained.png").exists()


def test_non_finite_output_is_an_error_never_a_file(tmp_path, monkeypatch, capsys, tiny):
    src = _png(tmp_path / "a.png")
    model = load_model("tinytest", weights=tiny, device="cpu")
    monkeypatch.setattr(Derainer, "_forward", lambda self, x: x * float("nan"))
    with pytest.raises(DerainError, match="NaN/Inf"):
        model.derain_file(src, tmp_path / "api.png")
    assert not (tmp_path / "api.png").exists()
    monkeypatch.setattr(Derainer, "_forward", lambda self, x: x + float("inf"))  # clamping would make it white
    code, _, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny, "--device", "cpu")
    assert code == 1 and "NaN/Inf" in err and "Traceback" not in err
    assert not (tmp_path / "a_derained.png").exists()


def test_weights_file_names_the_model_when_model_is_not_given(tmp_path, monkeypatch, capsys):
    src = _png(tmp_path / "a.png")
    code, out, err = derain(monkeypatch, capsys, "run", src, "--weights", BUNDLED / "semimsn.safetensors",
                            "--device", "cpu", "-v")
    assert code == 0, err
    assert "model semimsn" in err and (tmp_path / "a_derained.png").is_file()
    code, _, err = derain(monkeypatch, capsys, "run", src, "--model", "dualstage", "--weights",
                          BUNDLED / "semimsn.safetensors", "--device", "cpu", "-o", tmp_path / "b.png")
    assert code != 0 and "not 'dualstage'" in err  # an explicit --model that contradicts the file stays an error
    assert not (tmp_path / "b.png").exists()


def test_shipped_models_stay_finite_on_flat_images():
    """The output check must not refuse what the shipped models do on black or white photos."""
    for name in ("dualstage", "semimsn", "dcdgan", "jrgr", "rainfog"):
        model = load_model(name, device="cpu")
        for level in (0.0, 1.0):
            x = torch.full((1, 3, 32, 32), level)
            assert torch.isfinite(model.process_tensor(x)).all(), (name, level)
