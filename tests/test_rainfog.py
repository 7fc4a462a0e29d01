"""The `rainfog` architecture: shapes, priors, a short training run and the shipped weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, needs_shared_data
from derain_cli.models.rainfog import SPEC, T_MIN, GlobalAttention, procedural_degradation
from derain_cli.registry import Tiling, get_spec
from tiny_configs import RAINFOG_TINY

TINY = RAINFOG_TINY
REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "derain_cli" / "data" / "weights" / "rainfog.safetensors"


def _tiny_bundle(seed: int = 0):
    torch.manual_seed(seed)
    return SPEC.build(SPEC.config("cpu", **TINY))


def test_spec_is_registered_and_honest_about_tiling():
    assert get_spec("rainfog") is SPEC
    assert SPEC.modes == ("unpaired",) and SPEC.rainify_net is not None
    traits = SPEC.traits(SPEC.config())
    assert traits.tiling is Tiling.APPROXIMATE and traits.min_tile >= 256
    for preset in SPEC.presets:
        SPEC.config(preset)
    assert set(SPEC.build(SPEC.config("cpu")).keys()) == {"extractor", "removal", "generator"}


@pytest.mark.parametrize("h,w", [(37, 53), (64, 64), (5, 9)])
def test_inference_and_rainify_keep_odd_sizes_and_range(h, w):
    bundle = _tiny_bundle().eval()
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        out = SPEC.derain_net(bundle, "default")(x)
        rainy = SPEC.rainify_net(bundle)(x)
    for y in (out, rainy):
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and torch.isfinite(y).all()
    with torch.no_grad():
        again = SPEC.rainify_net(bundle)(x)
    assert torch.equal(rainy, again)  # rainify is deterministic


def test_extractor_outputs_are_physical():
    bundle = _tiny_bundle()
    t, a, r = bundle("extractor", torch.rand(2, 3, 32, 40))
    assert t.shape == (2, 1, 32, 40) and a.shape == (2, 3, 1, 1) and r.shape == (2, 3, 32, 40)
    assert t.min() >= T_MIN and t.max() <= 1 and 0 < a.min() and a.max() < 1 and r.min() >= 0 and r.max() <= 1


def test_global_attention_pools_large_inputs():
    att = GlobalAttention(8, max_tokens=64)
    x = torch.rand(1, 8, 48, 80)
    y = att(x)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_generation_with_identity_features_returns_the_clean_image():
    bundle = _tiny_bundle()  # the generator's residual starts at exactly zero
    j = torch.rand(1, 3, 16, 16)
    out = bundle("generator", j, torch.ones(1, 1, 16, 16), torch.full((1, 3, 1, 1), 0.8), torch.zeros(1, 3, 16, 16))
    assert torch.equal(out, j)


def test_procedural_degradation_is_seeded():
    clean = torch.rand(3, 3, 24, 24)
    a = procedural_degradation(clean, np.random.default_rng(5))
    b = procedural_degradation(clean, np.random.default_rng(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], clean)


def test_prior_draws_heavy_rendered_rain_and_refuses_unknown_kinds():
    """The general weights' prior: rendered families (here a downpour) cover far more of a crop than
    Rain100L-like fine streaks, reproducibly; a kind the prior cannot draw is refused at recipe time."""
    clean = torch.full((4, 3, 64, 64), 0.3)
    fine = procedural_degradation(clean, np.random.default_rng(2), {"fine": 1.0}, fog_free=1.0)
    pour = procedural_degradation(clean, np.random.default_rng(2), {"downpour": 1.0}, fog_free=1.0)
    again = procedural_degradation(clean, np.random.default_rng(2), {"downpour": 1.0}, fog_free=1.0)
    assert all(torch.equal(x, y) for x, y in zip(pour, again))
    covered = [float((r[:, 0] > 0.05).float().mean()) for r in (fine[3], pour[3])]
    assert covered[1] > 3 * covered[0] and covered[1] > 0.3
    assert torch.allclose(pour[0], (clean + pour[3]).clamp(0, 1))  # fog-free: rain alone, added
    for bad in ({"photoreal": 1.0}, {"hail": 1.0}, {"fine": 0.0}):
        with pytest.raises(ValueError, match="prior_rain"):
            SPEC.recipe(SPEC, SPEC.config("cpu", **TINY, prior_rain=bad), "unpaired")


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    cfg = SPEC.config("cpu", **TINY)
    recipe = SPEC.recipe(SPEC, cfg, "unpaired", lr=3e-3)
    recipe.setup(60)
    g = torch.Generator().manual_seed(1)
    batch = {"clean": torch.rand(4, 3, 24, 24, generator=g), "rainy": torch.rand(4, 3, 24, 24, generator=g)}
    supervised = []
    for _ in range(40):
        terms = recipe.train_step(batch, step=0)  # same step -> same procedural rain: a fixed task
        recipe.end_step()
        supervised.append(terms["prior"] + terms["feat"])
        assert all(np.isfinite(v) for v in terms.values())
    assert np.mean(supervised[-5:]) < 0.8 * np.mean(supervised[:5])


def test_recipe_refuses_paired_mode():
    with pytest.raises(ValueError, match="unpaired"):
        SPEC.recipe(SPEC, SPEC.config("cpu", **TINY), "paired")


def _ypsnr(a: np.ndarray, b: np.ndarray) -> float:
    w = np.array([65.481, 128.553, 24.966]) / 255.0
    return float(10 * np.log10(1.0 / np.mean(((a - b) * w).sum(-1) ** 2)))


@needs_shared_data
@pytest.mark.skipif(not WEIGHTS.is_file(), reason="rainfog weights not shipped yet")
def test_shipped_weights_raise_psnr_on_rainy_foggy_crops():
    from derain_cli.imageio import read_rgb8
    from derain_cli.synth import synthesize
    from derain_cli.weightfile import load_weights
    from derain_cli.weights import entry

    state, meta = load_weights(WEIGHTS, architecture="rainfog", sha256=entry("rainfog.rain100l").sha256)
    bundle = SPEC.build(meta["config"])
    bundle.load_state_dict({k: v.float() for k, v in state.items()})
    net = SPEC.derain_net(bundle.eval(), "default")
    gains = []
    for i, name in enumerate(("011.png", "042.png", "077.png")):  # Rain100L *train* images only
        rainy = read_rgb8(SHARED_DATA / "rain100l" / "train" / "rainy" / name)[:160, :160] / 255.0
        clean = read_rgb8(SHARED_DATA / "rain100l" / "train" / "clean" / name)[:160, :160] / 255.0
        foggy, _ = synthesize(rainy, 100 + i, rain="none", fog=0.5)
        with torch.no_grad():
            out = net(torch.from_numpy(foggy).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
        gains.append(_ypsnr(out, clean) - _ypsnr(foggy, clean))
    assert np.mean(gains) > 2.0, gains
