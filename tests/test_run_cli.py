"""``derain run`` and ``derain batch`` end to end (in-process, through the real ``main``)."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from derain_cli import cli
from derain_cli.api import Derainer
from derain_cli.imageio import read_image
from tiny_spec import install, make_spec, save_random_weights
from clirun import derain  # noqa: E402




@pytest.fixture
def tiny(tmp_path, request):
    """A registered test-only model ``tinytest`` and its random weights file."""
    spec = make_spec()
    install(request, spec)
    return save_random_weights(spec, tmp_path / "tiny.safetensors")


def _png(path: Path, seed: int = 0, h: int = 40, w: int = 56) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    path.write_bytes(cv2.imencode(path.suffix, rgb)[1].tobytes())
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("derain: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_run_default_output_and_verbose(tmp_path, monkeypatch, capsys, tiny):
    src = _png(tmp_path / "street.png")
    before = _digest(src)
    code, out, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny,
                            "--device", "cpu", "--tile", "32", "-v")
    assert code == 0, err
    target = tmp_path / "street_derained.png"
    assert target.is_file() and f"-> {target}" in out
    assert "cpu" in err and "float32" in err and "tile 32" in out
    assert _digest(src) == before
    result = read_image(target)
    assert result.rgb.shape == (40, 56, 3)
    assert not np.array_equal(result.rgb, read_image(src).rgb)  # the model really ran


def test_run_auto_device_says_it_fell_back(tmp_path, monkeypatch, capsys, tiny):
    import torch

    src = _png(tmp_path / "a.jpg")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)  # a CUDA build without a GPU: say so
    code, _, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny)
    assert code == 0 and "no CUDA GPU found; running on the CPU" in err
    assert (tmp_path / "a_derained.jpg").is_file()
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)  # a CPU-only torch never had a GPU to miss
    code, _, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny)
    assert code == 0 and err == ""
    code, _, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny, "-v")
    assert code == 0 and "running on the CPU" in err  # -v tells


def test_run_out_file_folder_and_compare(tmp_path, monkeypatch, capsys, tiny):
    a, b = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    code, _, err = derain(monkeypatch, capsys, "run", a, "-o", tmp_path / "x" / "clean.png", "--model", "tinytest",
                          "--weights", tiny, "--device", "cpu", "--compare")
    assert code == 0, err
    assert (tmp_path / "x" / "clean.png").is_file()
    compare = read_image(tmp_path / "x" / "clean_compare.png")
    assert compare.rgb.shape == (40, 112, 3)
    np.testing.assert_array_equal(compare.rgb[:, :56], read_image(a).rgb)
    code, _, err = derain(monkeypatch, capsys, "run", a, b, "-o", f"{tmp_path / 'outdir'}/", "--model", "tinytest",
                          "--weights", tiny, "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == ["a_derained.png", "b_derained.png"]


def test_run_refuses_to_overwrite_input(tmp_path, monkeypatch, capsys, tiny):
    src = _png(tmp_path / "keep.png")
    before = _digest(src)
    code, _, err = derain(monkeypatch, capsys, "run", src, "-o", src, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu")
    assert code != 0 and "overwrite an input" in _one_error_line(err)
    assert _digest(src) == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "{tmp}/missing.png"], "no such file"),
        (["run", "{img}", "--model", "nosuch"], "unknown model"),
        (["run", "{img}", "--model", "tinytest", "--weights", "{tmp}/none.safetensors"], "weights file not found"),
        (["run", "{img}", "--model", "tinytest", "--weights", "{tiny}", "--device", "cuda"], "cuda"),
        (["run", "{img}", "--model", "tinytest", "--weights", "{img}"], "safetensors"),
        (["batch", "{img}", "-o", "{tmp}/o"], "not a folder"),
        (["batch", "{tmp}/empty", "-o", "{tmp}/o"], "no images found"),
    ],
)
def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys, tiny, args, message):
    img = _png(tmp_path / "p.png")
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, img=img, tiny=tiny) for a in args]
    code, _, err = derain(monkeypatch, capsys, *args)
    assert code != 0
    assert message in _one_error_line(err)


def test_run_corrupt_inputs_continue(tmp_path, monkeypatch, capsys, tiny):
    good = _png(tmp_path / "good.png")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    cut = tmp_path / "cut.png"
    cut.write_bytes(_png(tmp_path / "whole.png").read_bytes()[:100])
    code, out, err = derain(monkeypatch, capsys, "run", tmp_path / "junk.jpg", cut, good, "--model", "tinytest",
                            "--weights", tiny, "--device", "cpu")
    assert code == 1
    assert err.count("derain: error:") == 2 and "Traceback" not in err
    assert (tmp_path / "good_derained.png").is_file()
    assert not (tmp_path / "junk_derained.jpg").exists() and not (tmp_path / "cut_derained.png").exists()


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_batch_mirrors_skips_and_reports_failures(tmp_path, monkeypatch, capsys, tiny):
    src = tmp_path / "in"
    _png(src / "a.png", 1)
    _png(src / "sub" / "b.jpg", 2)
    _png(src / "sub" / "deeper" / "c.png", 3)
    (src / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (src / "notes.txt").write_text("not an image, not selected")
    out = tmp_path / "out"
    args = ["batch", src, "-o", out, "--model", "tinytest", "--weights", tiny, "--device", "cpu"]

    code, _, err = derain(monkeypatch, capsys, *args)
    assert code == 0 and _tree(out) == ["a.png"]  # not recursive

    code, _, err = derain(monkeypatch, capsys, *args, "--recursive")
    assert code == 1
    assert _tree(out) == ["a.png", "sub/b.jpg", "sub/deeper/c.png"]
    assert "Failed images" in err and "broken.png" in err and "Traceback" not in err
    assert "1 skipped" in err

    stamp = (out / "a.png").stat().st_mtime_ns
    code, _, err = derain(monkeypatch, capsys, *args, "--recursive", "--glob", "*.png")
    assert code == 1 and "2 of 3 already done" in err  # only broken.png was retried
    assert (out / "a.png").stat().st_mtime_ns == stamp

    code, _, err = derain(monkeypatch, capsys, *args, "--overwrite", "--glob", "a.png")
    assert code == 0 and "1 derained" in err
    assert (out / "a.png").stat().st_mtime_ns != stamp


def test_batch_resumes_after_interruption(tmp_path, monkeypatch, capsys, tiny):
    src = tmp_path / "in"
    for i in range(5):
        _png(src / f"{i}.png", i)
    out = tmp_path / "out"
    args = ["batch", src, "-o", out, "--model", "tinytest", "--weights", tiny, "--device", "cpu"]

    real = Derainer.process
    calls = {"n": 0}

    def interrupted(self, rgb, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third image is being derained
        return real(self, rgb, **kw)

    monkeypatch.setattr(Derainer, "process", interrupted)
    code, _, err = derain(monkeypatch, capsys, *args)
    assert code == 130 and "interrupted" in err
    done = _tree(out)
    assert done == ["0.png", "1.png"]  # complete files only, no temporaries
    stamps = {name: (out / name).stat().st_mtime_ns for name in done}

    monkeypatch.setattr(Derainer, "process", real)
    code, _, err = derain(monkeypatch, capsys, *args)
    assert code == 0 and "2 of 5 already done" in err and "3 derained" in err
    assert _tree(out) == [f"{i}.png" for i in range(5)]
    assert {name: (out / name).stat().st_mtime_ns for name in done} == stamps


def test_batch_output_must_differ_from_input(tmp_path, monkeypatch, capsys, tiny):
    src = tmp_path / "in"
    img = _png(src / "a.png")
    before = _digest(img)
    code, _, err = derain(monkeypatch, capsys, "batch", src, "-o", src, "--model", "tinytest", "--weights", tiny)
    assert code != 0 and "must differ" in _one_error_line(err)
    assert _digest(img) == before and _tree(src) == ["a.png"]


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from tiny_spec import make_spec
from derain_cli.registry import register_model
register_model(make_spec())
from derain_cli import cli
sys.argv = ["derain"] + sys.argv[1:]
cli.main()
"""


def test_real_ctrl_c_leaves_no_partial_file(tmp_path):
    """A real SIGINT to a running ``derain batch``: exit 130, only complete outputs, no temp files."""
    import os
    import signal
    import subprocess
    import time

    spec = make_spec()
    weights = save_random_weights(spec, tmp_path / "tiny.safetensors")
    src, out = tmp_path / "in", tmp_path / "out"
    # Enough work that the batch is still running when the signal lands, even on an idle machine.
    for i in range(80):
        _png(src / f"{i:02d}.png", i, 640, 640)
    script = _CHILD.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "batch", str(src), "-o", str(out), "--model", "tinytest",
         "--weights", str(weights), "--device", "cpu", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (out.is_dir() and any(out.glob("*.png"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    names = sorted(p.name for p in out.iterdir())
    assert 0 < len(names) < 40 and all(not n.startswith(".") for n in names)
    for n in names:  # every file that exists is a complete image
        assert read_image(out / n).rgb.shape == (640, 640, 3)


def test_python_api_derain_file(tmp_path):
    import derain_cli

    spec = make_spec()
    weights = save_random_weights(spec, tmp_path / "w.safetensors")
    src = _png(tmp_path / "photo.png")
    model = derain_cli.load_model(spec, weights=weights, device="cpu")
    assert (model.spec, model.device.type) == (spec, "cpu") and not model.net.training
    out = derain_cli.derain_file(src, model=model)
    assert out == tmp_path / "photo_derained.png"
    out2 = derain_cli.derain_file(src, tmp_path / "o", model=spec, weights=weights, device="cpu", tile=16)
    assert out2 == tmp_path / "o" / "photo_derained.png"
    assert np.abs(read_image(out).rgb.astype(int) - read_image(out2).rgb.astype(int)).max() <= 1


def test_two_flips_are_the_mean_of_the_photo_and_its_mirror(tmp_path, monkeypatch, capsys, tiny):
    import torch

    from derain_cli.api import load_model

    plain = load_model("tinytest", weights=tiny, device="cpu")
    two = load_model("tinytest", weights=tiny, device="cpu", ensemble=2)
    x = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ((plain.net(x) + torch.flip(plain.net(torch.flip(x, (3,))), (3,))) / 2).clamp(0, 1)
    assert torch.allclose(two.process_tensor(x), expected, atol=1e-5)
    src = _png(tmp_path / "lane.png")
    code, out, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny,
                            "--device", "cpu", "--flips", "2", "-v", "-o", f"{tmp_path / 'two'}/")
    assert code == 0, err
    assert "2-flip ensemble" in err
    for bad, message in ((["--flips", "3"], "--flips must be 1, 2 or 4"),
                         (["--flips", "2", "--ensemble"], "--ensemble means --flips 4")):
        code, out, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny,
                                "--device", "cpu", "-o", f"{tmp_path / 'bad'}/", *bad)
        assert code != 0 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_ensemble_is_the_mean_over_four_flips(tmp_path, monkeypatch, capsys, tiny):
    import torch

    from derain_cli.api import load_model

    plain = load_model("tinytest", weights=tiny, device="cpu")
    ensemble = load_model("tinytest", weights=tiny, device="cpu", ensemble=True)
    x = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(3))  # odd size: padded, then flipped
    by_hand = []
    for dims in ((), (3,), (2,), (2, 3)):
        xx = torch.flip(x, dims) if dims else x
        # process_tensor clamps; the ensemble averages unclamped outputs, so compare with the net itself
        with torch.no_grad():
            y = plain.net(xx)  # the tiny conv net has size multiple 1: no padding involved
        by_hand.append(torch.flip(y, dims) if dims else y)
    expected = torch.stack(by_hand).mean(0).clamp(0, 1)
    got = ensemble.process_tensor(x)
    assert got.shape == x.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain.process_tensor(x), atol=1e-3)  # the flips really changed something
    src = _png(tmp_path / "lane.png")
    code, out, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny,
                            "--device", "cpu", "--ensemble", "-v")
    assert code == 0, err
    assert "4-flip ensemble" in err
