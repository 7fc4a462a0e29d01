"""ONNX export (``derain export --onnx``) and running the file (``--weights X.onnx``), on tiny random nets."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from clirun import derain
from conftest import make_rainy_pair
from derain_cli.errors import DerainError
from derain_cli.registry import get_spec
from derain_cli.weightfile import save_weights
from tiny_spec import TINY_CONFIGS, randomize

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    HAVE_ONNX = True
except ImportError:
    HAVE_ONNX = False

needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx/onnxruntime not installed (pip install 'derain-cli[onnx]')")


def _tiny_weights(name, path, **overrides):
    """A tiny config of ``name`` (plus ``overrides``) with redrawn weights, saved like a shipped file;
    ``(spec, derain net)``."""
    spec = get_spec(name)
    config = spec.config(**{**TINY_CONFIGS[name], **overrides})
    torch.manual_seed(0)
    bundle = randomize(spec.build(config), gain=0.8)
    save_weights(path, bundle.state_dict(), architecture=name, config=config)
    return spec, spec.derain_net(bundle, spec.variants[0]).eval()


@needs_onnx
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_architecture_exports_and_matches_or_says_why(name, tmp_path):
    from derain_cli.onnx_export import NOT_EXPORTABLE, export_onnx, read_onnx_metadata

    spec, _ = _tiny_weights(name, tmp_path / "w.safetensors")
    out = tmp_path / f"{name}.onnx"
    if name in NOT_EXPORTABLE:
        with pytest.raises(DerainError, match=f"{name} cannot be exported to ONNX: ") as info:
            export_onnx(name, out, weights=tmp_path / "w.safetensors")
        assert "\n" not in str(info.value) and not out.exists()
        return
    done = export_onnx(name, out, weights=tmp_path / "w.safetensors")
    assert done["max_diff"] <= 1e-4
    meta = read_onnx_metadata(out)
    traits = spec.traits(spec.config(**TINY_CONFIGS[name]))
    assert meta["architecture"] == name and int(meta["size_multiple"]) == traits.size_multiple
    assert int(meta["min_size"]) == traits.min_size
    assert meta["dynamic_axes"] == "batch, height, width"
    _assert_file_matches_torch(name, tmp_path / "w.safetensors", out, traits)


def _assert_file_matches_torch(name, weights, onnx_file, traits):
    """Another size and a batch of two, against the torch net loaded from the same (fp16) file."""
    from derain_cli.api import load_model
    from derain_cli.onnx_export import _graph_module, _session

    net = load_model(name, weights=weights, device="cpu").net
    m = traits.size_multiple
    x = torch.rand(2, 3, m * -(-45 // m), m * -(-70 // m))
    with torch.inference_mode():
        reference = _graph_module(net.to(memory_format=torch.contiguous_format), traits.input_range)(x).numpy()
    got = _session(str(onnx_file), threads=1).run(None, {"image": x.numpy()})[0]
    assert got.shape == reference.shape and np.abs(got - reference).max() <= 1e-4


@needs_onnx
def test_a_veil_headed_dualstage_exports_and_matches(tmp_path):
    """The veil head (pooling to a coarse grid, then an upsampled correction) is a graph path of its own."""
    from derain_cli.onnx_export import export_onnx

    veil = {"veil_width": 4, "veil_scale": 4}
    spec, net = _tiny_weights("dualstage", tmp_path / "w.safetensors", **veil)
    assert any(k.startswith("veil.") for k in net.state_dict())
    done = export_onnx("dualstage", tmp_path / "v.onnx", weights=tmp_path / "w.safetensors")
    assert done["max_diff"] <= 1e-4
    traits = spec.traits(spec.config(**{**TINY_CONFIGS["dualstage"], **veil}))
    _assert_file_matches_torch("dualstage", tmp_path / "w.safetensors", tmp_path / "v.onnx", traits)


@needs_onnx
def test_export_and_run_through_the_cli(tmp_path, monkeypatch, capsys):
    import cv2

    from derain_cli.api import load_model

    _tiny_weights("semimsn", tmp_path / "w.safetensors")
    code, out, err = derain(monkeypatch, capsys, "export", "--onnx", "semimsn", "--weights", tmp_path / "w.safetensors",
                            "-o", tmp_path / "m.onnx")
    assert code == 0, err
    assert "m.onnx" in out and "matches torch" in out
    rainy, _ = make_rainy_pair(50, 61)
    cv2.imwrite(str(tmp_path / "in.png"), rainy[:, :, ::-1])
    code, out, err = derain(monkeypatch, capsys, "run", tmp_path / "in.png", "--weights", tmp_path / "m.onnx",
                            "-o", tmp_path / "out.png", "-v")
    assert code == 0, err
    assert "weights: onnx file" in err
    got = cv2.imread(str(tmp_path / "out.png"))[:, :, ::-1]
    want = load_model("semimsn", weights=tmp_path / "w.safetensors", device="cpu").process(rainy)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@needs_onnx
def test_onnx_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from derain_cli.api import load_model
    from derain_cli.onnx_export import export_onnx

    _tiny_weights("jrgr", tmp_path / "w.safetensors")
    export_onnx("jrgr", tmp_path / "j.onnx", weights=tmp_path / "w.safetensors")
    with pytest.raises(DerainError, match="holds a jrgr network, not semimsn"):
        load_model("semimsn", weights=tmp_path / "j.onnx")
    with pytest.raises(DerainError, match="--half"):
        load_model(None, weights=tmp_path / "j.onnx", half=True)
    with pytest.raises(DerainError, match="must end in .onnx"):
        export_onnx("jrgr", tmp_path / "j.bin", weights=tmp_path / "w.safetensors")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DerainError, match="onnxruntime cannot load"):
        load_model(None, weights=tmp_path / "junk.onnx")
    code, _, err = derain(monkeypatch, capsys, "export", "--onnx", "rainfog", "-o", tmp_path / "r.onnx")
    assert code != 0 and err.count("\n") == 1 and "rainfog cannot be exported to ONNX" in err


def test_without_onnxruntime_one_line_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "onnx", None)
    (tmp_path / "m.onnx").write_bytes(b"x")
    from derain_cli.api import load_model

    with pytest.raises(DerainError, match=r"install it with: pip install 'derain-cli\[onnx\]'"):
        load_model(None, weights=tmp_path / "m.onnx")
    code, _, err = derain(monkeypatch, capsys, "export", "--onnx", "semimsn", "-o", tmp_path / "s.onnx")
    assert code != 0 and err.count("\n") == 1 and "pip install 'derain-cli[onnx]'" in err
