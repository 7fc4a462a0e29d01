"""DCD-GAN: PatchNCE, official size, a short unpaired run, shapes, rainify, shipped weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from derain_cli.models import dcdgan
from derain_cli.synth import rain_mix_layers

SPEC = dcdgan.SPEC
SAMPLES = Path(dcdgan.__file__).resolve().parents[1] / "data" / "samples"
SHIPPED = Path(dcdgan.__file__).resolve().parents[1] / "data" / "weights" / "dcdgan.safetensors"

#: A generator small enough to train for a few steps inside a test.
TINY = dict(ngf=8, n_blocks=2, ndf=8, nce_layers=[4, 8, 12, 13], num_patches=32, nce_dim=32, n_downsampling=2,
            w_prior=0.0)


def test_patchnce_prefers_matching_patches():
    torch.manual_seed(0)
    keys = torch.randn(2 * 64, 32)
    queries = keys + 0.1 * torch.randn_like(keys)
    matched = dcdgan.patch_nce_loss(queries, keys, 0.07, images=2).mean()
    shuffled = dcdgan.patch_nce_loss(queries[torch.randperm(len(queries))], keys, 0.07, images=2).mean()
    assert matched < 0.1 * shuffled
    assert matched < np.log(64)  # better than chance among 64 candidates


def test_paper_generator_has_official_parameter_count():
    bundle = SPEC.build(SPEC.config("paper"))
    assert sum(p.numel() for p in bundle["G_A"].parameters()) == 11_378_179
    assert set(bundle.keys()) == {"G_A", "G_B"}  # discriminators never ship


def test_resampling_keeps_grid():
    x = torch.randn(1, 5, 12, 20)
    assert dcdgan.BlurDownsample(5)(x).shape == (1, 5, 6, 10)
    assert dcdgan.BlurUpsample(5)(x).shape == (1, 5, 24, 40)
    flat = torch.ones(1, 5, 12, 20)  # a constant stays constant through both blurs
    assert torch.allclose(dcdgan.BlurUpsample(5)(dcdgan.BlurDownsample(5)(flat)), flat, atol=1e-6)


def test_encoder_features_and_output_range():
    net = SPEC.build(SPEC.config("cpu", **TINY))["G_A"]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = net(x, TINY["nce_layers"], encode_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (32, 16, 16), (32, 8, 8), (32, 8, 8)]
    y, feats2 = net(x, TINY["nce_layers"])
    assert torch.allclose(y, net(x)) and all(torch.equal(a, b) for a, b in zip(feats, feats2))


def test_additive_rain_mostly_subtracts_when_deraining_and_mostly_adds_when_rainifying():
    """Same weights with and without the constraint: a wrong-sign residual passes at a tenth."""
    torch.manual_seed(0)
    bundle = SPEC.build(SPEC.config("cpu", **TINY, init_gain=1.0, additive_rain=True))  # large residual: sign shows
    free = SPEC.build(SPEC.config("cpu", **TINY, init_gain=1.0))
    free.load_state_dict(bundle.state_dict())
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    slope = dcdgan.WRONG_SIGN_SLOPE
    assert slope < 0.5
    with torch.no_grad():
        for name, sign in (("G_A", -1), ("G_B", 1)):
            y = free[name](x) - x  # the unconstrained residual of the same weights
            assert (y > 1e-2).any() and (y < -1e-2).any()  # both branches are exercised
            expected = x + sign * torch.where(y > 0, y, slope * y)
            assert torch.allclose(bundle[name](x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="global_residual"):
        SPEC.build(SPEC.config("cpu", **TINY, global_residual=False, additive_rain=True))


def test_short_unpaired_run_lowers_generator_loss():
    torch.manual_seed(0)
    cfg = SPEC.config("cpu", **TINY)
    recipe = SPEC.recipe(SPEC, cfg, "unpaired")  # official lr 1e-4
    recipe.setup(60)
    rng = np.random.default_rng(0)
    clean = torch.from_numpy(rng.random((2, 3, 32, 32), dtype=np.float32))
    rainy = (clean + 0.3 * (torch.rand_like(clean) > 0.95)).clamp(0, 1)
    batch = {"clean": clean, "rainy": rainy}
    losses = []
    for step in range(30):
        losses.append(recipe.train_step(batch, step)["G"])
        recipe.end_step()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert set(recipe.optimizers) == {"G", "D", "F"}


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_discriminator_rate_multiplier_follows_the_shared_schedule():
    recipe = SPEC.recipe(SPEC, SPEC.config("cpu", **TINY, lr_d_mult=4.0), "unpaired")
    recipe.setup(100)
    for _ in range(50):
        for scheduler in recipe.schedulers.values():
            scheduler.step()
    lr = {name: opt.param_groups[0]["lr"] for name, opt in recipe.optimizers.items()}
    assert lr["D"] == pytest.approx(4.0 * lr["G"]) and lr["G"] < recipe.lr  # scaled, and still annealed


def test_discriminator_init_gain_is_its_own_config_value():
    def first_conv_std(**overrides):
        torch.manual_seed(0)
        recipe = SPEC.recipe(SPEC, SPEC.config("cpu", **TINY, **overrides), "unpaired")
        return recipe.nets["D_A"].model[0].weight.std().item(), recipe.nets["F1"].mlps[0][0].weight.std().item()

    d_ref, f_ref = first_conv_std()
    d_big, f_same = first_conv_std(init_gain_d=1.0)
    assert d_big == pytest.approx(50 * d_ref, rel=0.05)  # Xavier std is linear in the gain
    assert f_same == pytest.approx(f_ref)  # the projection heads keep init_gain


def test_brightness_jitter_shifts_each_image_as_a_whole_within_the_amount():
    torch.manual_seed(0)
    x = torch.zeros(64, 3, 8, 8)  # mid-grey in [-1, 1], so no clamping
    assert torch.equal(dcdgan.jitter_brightness(x, 0.0), x)
    shifted = dcdgan.jitter_brightness(x, 0.04)
    per_image = shifted.flatten(1)
    assert torch.equal(per_image.min(1).values, per_image.max(1).values)  # one shift per image, all channels
    shifts = per_image[:, 0] / 2  # back to [0, 1] units
    assert shifts.abs().max() <= 0.04 and shifts.std() > 0.01  # bounded, and really random
    assert dcdgan.jitter_brightness(torch.ones(4, 3, 2, 2), 0.5).max() <= 1.0  # stays in range


def test_rain_prior_scores_the_rain_left_in_and_trains_streaks_out():
    """``w_prior``: G_A must return a clean crop from that crop plus procedural rain.

    An identity G_A is charged exactly the added rain; a rain-free mix charges nothing;
    and 100 prior-only steps on a flat crop make G_A take much of the rain out.
    """
    torch.manual_seed(0)
    cfg = SPEC.config("cpu", **{**TINY, "w_prior": 1.0}, prior_rain={"fine": 1.0})
    recipe = SPEC.recipe(SPEC, cfg, "unpaired")  # its optimizers are not used: the test has its own
    clean = torch.full((2, 3, 48, 48), -0.4)  # [-1, 1]; dark, so the rain is not clipped

    rain = torch.as_tensor(rain_mix_layers(2, 48, 48, np.random.default_rng([3, 4099]), {"fine": 1.0}))
    assert rain.max() > 0.1
    identity_loss = recipe._prior(lambda x: x, clean, 3)
    assert identity_loss.item() == pytest.approx((2 * rain).mean().item(), rel=1e-4)
    recipe.config["prior_rain"] = {"none": 1.0}
    assert recipe._prior(lambda x: x, clean, 3).item() == 0.0
    recipe.config["prior_rain"] = {"fine": 1.0}

    G_A = recipe.bundle["G_A"]
    opt = torch.optim.Adam(G_A.parameters(), lr=2e-3)
    for step in range(100):
        opt.zero_grad()
        recipe._prior(G_A, clean, step % 4).backward()
        opt.step()
    with torch.no_grad():
        left = sum(recipe._prior(G_A, clean, s).item() for s in range(4))
        added = sum(recipe._prior(lambda x: x, clean, s).item() for s in range(4))
    assert left < 0.8 * added


def test_recipe_rejects_paired_mode():
    with pytest.raises(ValueError, match="unpaired"):
        SPEC.recipe(SPEC, SPEC.config("cpu", **TINY), "paired")


def _tiny_weights(path: Path) -> Path:
    from derain_cli.weightfile import save_weights

    cfg = SPEC.config("cpu", **TINY)
    torch.manual_seed(1)
    save_weights(path, SPEC.build(cfg).state_dict(), architecture="dcdgan", config=cfg)
    return path


def test_odd_size_round_trip(tmp_path):
    from derain_cli.api import load_model

    weights = _tiny_weights(tmp_path / "tiny.safetensors")
    for task in ("derain", "rainify"):
        model = load_model("dcdgan", weights=weights, device="cpu", task=task)
        rgb = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
        out = model.process(rgb)
        assert out.shape == rgb.shape and out.dtype == np.uint8


def test_rainify_command_writes_same_names(tmp_path, tiny_pairs):
    from typer.testing import CliRunner

    from derain_cli.cli import app

    weights = _tiny_weights(tmp_path / "tiny.safetensors")
    src = tiny_pairs / "clean"
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    result = CliRunner().invoke(app, ["rainify", str(src), "--model", "dcdgan", "--weights", str(weights),
                                      "--device", "cpu", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(before)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched


def test_rainify_refuses_model_without_rain_generator(tmp_path, tiny_pairs):
    from typer.testing import CliRunner

    from derain_cli.cli import app
    from derain_cli.errors import DerainError

    result = CliRunner().invoke(app, ["rainify", str(tiny_pairs / "clean"), "--model", "dualstage",
                                      "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, DerainError)
    assert "rain generator" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_shipped_weights_load_raise_psnr_and_render_rain():
    """The bundled file loads through the registry (sha256-checked), G_A derains, G_B runs.

    Session 8's weights gain about 2 dB on the bundled crops (29.8 -> 31.7); the
    release before them lost 0.3 dB on Rain100L, which this bound would have caught.
    G_B still renders little rain (README), so it is only checked to stay an image of
    the same scene.
    """
    from shipped import psnr_gain_on_crops

    from derain_cli.api import load_model
    from derain_cli.imageio import read_rgb8
    from derain_cli.metrics import psnr_y

    assert SHIPPED.is_file()
    before, after = psnr_gain_on_crops("dcdgan")
    assert after > before + 1.0, (before, after)
    rainify = load_model("dcdgan", device="cpu", task="rainify")
    for f in sorted((SAMPLES / "crops" / "clean").glob("*.png")):
        clean = read_rgb8(f)
        assert psnr_y(rainify.process(clean), clean) > 25.0


def test_full_resolution_generator_keeps_every_layer_at_the_input_size():
    """``n_downsampling=0``: the residual blocks see full resolution, so the odd size passes unpadded."""
    cfg = SPEC.config("cpu", ngf=8, n_blocks=3, n_downsampling=0, nce_layers=[3, 5, 6])
    G = SPEC.build(cfg)["G_A"]
    expected = (3 * 8 * 49 + 8) + 3 * 2 * (8 * 8 * 9 + 8) + (8 * 3 * 49 + 3)  # stem, blocks, head
    assert sum(p.numel() for p in G.parameters()) == expected
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    out, feats = G(x, [3, 5, 6])
    assert out.shape == x.shape
    assert [f.shape[-2:] for f in feats] == [x.shape[-2:]] * 3


def test_full_resolution_generator_learns_the_rain_prior_faster_than_the_reference_layout():
    """Why the option exists: 1-pixel streaks are hard to remove through a quarter-resolution bottleneck.

    Same width, depth, seed and steps; only ``n_downsampling`` differs.
    """
    clean = torch.full((2, 3, 48, 48), -0.4)
    left = {}
    for n_down, layers in ((2, [4, 8, 12, 13]), (0, [3, 4, 5])):
        torch.manual_seed(0)
        cfg = SPEC.config("cpu", **{**TINY, "nce_layers": layers, "n_downsampling": n_down, "w_prior": 1.0},
                          prior_rain={"fine": 1.0})
        recipe = SPEC.recipe(SPEC, cfg, "unpaired")
        G_A = recipe.bundle["G_A"]
        opt = torch.optim.Adam(G_A.parameters(), lr=2e-3)
        for step in range(60):
            opt.zero_grad()
            recipe._prior(G_A, clean, step % 4).backward()
            opt.step()
        with torch.no_grad():
            left[n_down] = sum(recipe._prior(G_A, clean, s).item() for s in range(4))
    assert left[0] < 0.8 * left[2], left  # 0.67 when written


def test_cpu_preset_trains_at_full_resolution_with_the_rain_prior():
    """The shipped CPU layout: NCE layers exist in the full-resolution generator and the prior is on."""
    cfg = SPEC.config("cpu", num_patches=32, nce_dim=32)
    assert cfg["n_downsampling"] == 0 and cfg["w_prior"] > 0
    recipe = SPEC.recipe(SPEC, cfg, "unpaired")
    recipe.setup(4)
    feats = recipe.bundle["G_A"](torch.zeros(1, 3, 20, 28), cfg["nce_layers"], encode_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(cfg["ngf"], 20, 28)] * len(cfg["nce_layers"])
    torch.manual_seed(0)
    batch = {"clean": torch.rand(2, 3, 32, 32), "rainy": torch.rand(2, 3, 32, 32)}
    terms = recipe.train_step(batch, 0)
    assert terms["prior"] > 0 and all(np.isfinite(v) for v in terms.values())
