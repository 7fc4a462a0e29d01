"""The rain-fog degradation model, the streak renderer and `derain synth`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_rainy_pair
from derain_cli.errors import DerainError
from derain_cli.synth import (
    degrade,
    depth_proxy,
    local_contrast,
    parse_fog,
    render_rain,
    restore,
    rms_contrast,
    synthesize,
    transmission,
)
from derain_cli.synth_sets import build_rain100l_fog, synthesize_folder


def _clean(h=48, w=56, seed=0) -> np.ndarray:
    return make_rainy_pair(h, w, seed)[1].astype(np.float32) / 255.0


def test_identity_transmission_and_no_rain_return_the_scene_exactly():
    j = np.random.default_rng(0).random((17, 23, 3)).astype(np.float32)
    out = degrade(j, np.ones((17, 23, 1), np.float32), np.array([0.8, 0.7, 0.9], np.float32), 0.0)
    assert np.array_equal(out, j)


def test_identity_holds_for_torch_tensors():
    torch = pytest.importorskip("torch")
    j = torch.rand(2, 3, 9, 11)
    out = degrade(j, torch.ones(2, 1, 9, 11), torch.full((2, 3, 1, 1), 0.85), torch.zeros(2, 3, 9, 11))
    assert torch.equal(out, j)
    assert torch.equal(transmission(torch.zeros(1, 1, 2, 2), 1.7), torch.ones(1, 1, 2, 2))


def test_restore_inverts_degrade():
    rng = np.random.default_rng(1)
    j = rng.random((20, 30, 3)).astype(np.float32)
    r = (rng.random((20, 30, 1)) * 0.3).astype(np.float32)
    t = transmission(depth_proxy(j), 1.2)[..., None]
    a = np.array([0.9, 0.85, 0.8], np.float32)
    assert np.allclose(restore(degrade(j, t, a, r), t, a, r), j, atol=1e-5)


def test_synthesize_is_deterministic_for_a_seed():
    c = _clean()
    a, pa = synthesize(c, 42, rain="heavy", fog=(0.2, 0.8))
    b, pb = synthesize(c, 42, rain="heavy", fog=(0.2, 0.8))
    other, _ = synthesize(c, 43, rain="heavy", fog=(0.2, 0.8))
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, other)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


def test_fog_lowers_contrast_monotonically_with_beta():
    for scene in (_clean(), np.random.default_rng(3).random((40, 40, 3)).astype(np.float32)):
        detail = [local_contrast(synthesize(scene, 5, rain="none", fog=f)[0]) for f in np.linspace(0, 1, 6)]
        assert all(x > y for x, y in zip(detail, detail[1:])), detail
    # with a uniform depth, global RMS contrast shrinks with beta too (it is scaled by T)
    scene = _clean()
    depth = np.full(scene.shape[:2] + (1,), 0.7, np.float32)
    rms = [rms_contrast(degrade(scene, transmission(depth, b), 0.85)) for b in (0.0, 0.5, 1.0, 2.0, 3.0)]
    assert all(x > y for x, y in zip(rms, rms[1:])), rms


def test_rain_layers_are_bounded_and_heavy_is_denser():
    rng = np.random.default_rng(0)
    light = [render_rain(64, 80, rng, "light")[0].mean() for _ in range(6)]
    heavy = [render_rain(64, 80, rng, "heavy")[0].mean() for _ in range(6)]
    layer, params = render_rain(64, 80, np.random.default_rng(1), "heavy")
    assert layer.min() >= 0 and layer.max() <= 1 and layer.max() > 0.1
    assert len(params) >= 3 and {"angle", "length", "intensity"} <= set(params[0])
    assert np.mean(heavy) > np.mean(light) > 0


def _soft_share(layer: np.ndarray) -> float:
    """Share of covered pixels (> 0.02) below half the layer's peak: the streaks' soft edges."""
    covered = layer > 0.02
    return float((covered & (layer < 0.5 * layer.max())).sum() / max(covered.sum(), 1))


def test_fine_rain_has_soft_streaks_and_is_reproducible():
    fine = [_soft_share(render_rain(96, 96, np.random.default_rng(s), "fine")[0]) for s in range(4)]
    drizzle = [_soft_share(render_rain(96, 96, np.random.default_rng(s), "drizzle")[0]) for s in range(4)]
    assert min(fine) > max(drizzle)
    a, b = render_rain(40, 50, np.random.default_rng(3), "fine")[0], render_rain(40, 50, np.random.default_rng(3), "fine")[0]
    assert np.array_equal(a, b) and 0 < a.max() <= 1


def test_odd_sizes_and_no_rain_no_fog_keep_the_image():
    c = _clean(37, 53)
    out, params = synthesize(c, 1, rain="none", fog=0.0)
    assert out.shape == (37, 53, 3)
    assert np.allclose(out, c, atol=1e-6) and params.beta == 0.0
    rainy, _ = synthesize(c, 1, rain="light", fog=0.3)
    assert rainy.shape == (37, 53, 3) and not np.allclose(rainy, c)


def test_parse_fog():
    assert parse_fog("0.5") == (0.5, 0.5)
    assert parse_fog("0.2-0.8") == (0.2, 0.8)
    for bad in ("2", "0.8-0.2", "fog", "-0.1"):
        with pytest.raises(ValueError):
            parse_fog(bad)


def test_synthesize_folder_writes_all_outputs_atomically_and_reproducibly(tiny_pairs: Path, tmp_path: Path):
    src = tiny_pairs / "clean"
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    n = synthesize_folder(src, tmp_path / "a", rain="light", fog="0.2-0.6", seed=3)
    synthesize_folder(src, tmp_path / "b", rain="light", fog="0.2-0.6", seed=3)
    assert n == 6
    for sub in ("rainy", "clean"):
        names = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert names == sorted(before)  # no temp files left behind
        for name in names:
            assert (tmp_path / "a" / sub / name).read_bytes() == (tmp_path / "b" / sub / name).read_bytes()
    params = json.loads((tmp_path / "a" / "params" / "000.json").read_text())
    assert params["rain"] == "light" and 0.2 <= params["fog"] <= 0.6 and params["source"] == "000.png"
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched
    with pytest.raises(DerainError, match="overlaps"):
        synthesize_folder(src, src / "out")


def test_rain100l_fog_builder_adds_fog_only_and_keeps_clean_targets(tiny_pairs: Path, tmp_path: Path):
    from derain_cli.imageio import read_rgb8

    data = tmp_path / "data" / "rain100l" / "test"
    data.mkdir(parents=True)
    for sub in ("rainy", "clean"):
        (tiny_pairs / sub).rename(data / sub)
    out = build_rain100l_fog(tmp_path / "data", tmp_path / "set")
    for name in ("000.png", "005.png"):
        assert np.array_equal(read_rgb8(out / "clean" / name), read_rgb8(data / "clean" / name))
        src, fogged = read_rgb8(data / "rainy" / name) / 255.0, read_rgb8(out / "rainy" / name) / 255.0
        assert local_contrast(fogged) < local_contrast(src)
    assert json.loads((out / "params" / "000.json").read_text())["rain"] == "none"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "derain_cli", "synth", *args], capture_output=True, text=True)


def test_cli_errors_are_one_line(tiny_pairs: Path, tmp_path: Path):
    cases = [
        (str(tmp_path / "missing"), "-o", str(tmp_path / "o")),
        (str(tiny_pairs / "clean"), "-o", str(tmp_path / "o"), "--rain", "monsoon"),
        (str(tiny_pairs / "clean"), "-o", str(tmp_path / "o"), "--fog", "1.5"),
        ("--eval-set", "nope", "-o", str(tmp_path / "o")),
        ("--eval-set", "rain100l-fog", "-o", str(tmp_path / "o"), "--data", str(tiny_pairs / "clean")),
    ]
    for args in cases:
        res = _cli(*args)
        assert res.returncode != 0, args
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("derain: error:"), (args, res.stderr)
    assert not (tmp_path / "o").exists()
    ok = _cli(str(tiny_pairs / "clean"), "-o", str(tmp_path / "ok"), "--rain", "heavy", "--fog", "0.3")
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "ok" / "rainy").glob("*.png"))) == 6


def test_synth_renders_what_training_sees_reproducibly(tiny_pairs: Path, tmp_path: Path):
    from derain_cli.imageio import read_rgb8
    from derain_cli.rainrender import RenderConfig

    cfg = RenderConfig(mix={"downpour": 1.0})
    a = synthesize_folder(tiny_pairs / "clean", tmp_path / "a", seed=5, render=cfg)
    synthesize_folder(tiny_pairs / "clean", tmp_path / "b", seed=5, render=cfg)
    assert a == 6
    for name in ("000.png", "003.png"):
        assert np.array_equal(read_rgb8(tmp_path / "a" / "rainy" / name), read_rgb8(tmp_path / "b" / "rainy" / name))
    params = json.loads((tmp_path / "a" / "params" / "000.json").read_text())
    assert params["renderer"] == "rainrender" and params["rain"]["family"] == "downpour"
    assert "accumulation" in params
    rainy, clean = read_rgb8(tmp_path / "a" / "rainy" / "000.png"), read_rgb8(tmp_path / "a" / "clean" / "000.png")
    assert rainy.astype(int).mean() > clean.astype(int).mean() + 5  # heavy rain and its veil add light


def test_synth_cli_training_families_and_their_errors(tiny_pairs: Path, tmp_path: Path):
    from derain_cli.imageio import read_rgb8

    ok = _cli(str(tiny_pairs / "clean"), "-o", str(tmp_path / "g"), "--rain", "general")
    assert ok.returncode == 0, ok.stderr
    assert len(list((tmp_path / "g" / "rainy").glob("*.png"))) == 6
    ok = _cli(str(tiny_pairs / "clean"), "-o", str(tmp_path / "n"), "--rain", "general", "--night")
    assert ok.returncode == 0, ok.stderr
    for name in ("000", "004"):  # every image at night: the target darker than the photo it came from
        assert "night" in json.loads((tmp_path / "n" / "params" / f"{name}.json").read_text())
        night_clean = read_rgb8(tmp_path / "n" / "clean" / f"{name}.png").mean()
        assert night_clean < 0.5 * read_rgb8(tiny_pairs / "clean" / f"{name}.png").mean()
    for args, needle in (
        (("--rain", "heavy", "--night"), "--night goes with the training families"),
        (("--rain", "photoreal"), "streak bank"),
        (("--rain", "downpour", "--fog", "0.3"), "draw their own haze"),
        (("--rain", "downpour=x"), "must be a number"),
        (("--rain", "downpour", "--clean", str(tiny_pairs / "rainy")), "--clean is for rainy inputs"),
        (("--rain", "heavy", "--extras", "coarse=1"), "--extras goes with the training families"),
        (("--rain", "general", "--extras", "hail=1"), "unknown extra 'hail'"),
        (("--rain", "general", "--extras", "coarse=2"), "between 0 and 1"),
    ):
        res = _cli(str(tiny_pairs / "clean"), "-o", str(tmp_path / "bad"), *args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0 and len(lines) == 1 and needle in lines[0], (args, res.stderr)
    assert not (tmp_path / "bad").exists()
    ok = _cli(str(tiny_pairs / "clean"), "-o", str(tmp_path / "c"), "--rain", "dash", "--night", "--extras", "coarse=1,noise=0")
    assert ok.returncode == 0, ok.stderr
    params = json.loads((tmp_path / "c" / "params" / "000.json").read_text())
    assert 1.5 <= params["coarse"]["scale"] <= 4 and "night" in params and "noise" not in params
