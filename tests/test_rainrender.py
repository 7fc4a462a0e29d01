"""Rendered training rain: each family renders what it claims, seeds reproduce, the sampler resumes."""
from __future__ import annotations

import numpy as np
import pytest

from derain_cli.rainrender import (
    FAMILIES,
    GENERAL_EXTRAS,
    RenderConfig,
    StreakTexture,
    parse_mix,
    rain_layer,
    rain_lighting,
    random_crop,
    render_pair,
    streak_angle,
)
from derain_cli.train.data import PatchSampler, RenderSource

NO_EXTRAS = {k: 0.0 for k in GENERAL_EXTRAS}


def tilted_texture(angle: float, h: int = 160, w: int = 260, seed: int = 0) -> StreakTexture:
    """A texture of thin streaks at ``angle`` degrees from vertical, like a Garg-Nayar file."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.uint8)
    a = np.deg2rad(angle)
    for _ in range(120):
        x, y, n = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 30)
        p0, p1 = (int(x * 16), int(y * 16)), (int((x + np.sin(a) * n) * 16), int((y + np.cos(a) * n) * 16))
        cv2.line(img, p0, p1, int(rng.integers(120, 255)), 1, cv2.LINE_AA, shift=4)
    return StreakTexture(img, streak_angle(img))


BANK = [tilted_texture(17, seed=1), tilted_texture(-17, seed=2), tilted_texture(0, seed=3)]


def run_width(layer: np.ndarray, thr: float = 0.1) -> float:
    """Mean length of above-threshold runs along rows: a streak's width for near-vertical rain."""
    runs = []
    for row in layer > thr:
        d = np.diff(np.concatenate([[0], row.astype(int), [0]]))
        runs += list(np.nonzero(d == -1)[0] - np.nonzero(d == 1)[0])
    return float(np.mean(runs)) if runs else 0.0


def layers(family: str, n: int = 12, size: int = 192):
    for seed in range(n):
        yield rain_layer(family, size, size, np.random.default_rng(seed), BANK)


def test_streak_angle_reads_a_known_texture():
    assert abs(BANK[0].angle - 17) < 3 and abs(BANK[1].angle + 17) < 3 and abs(BANK[2].angle) < 3


@pytest.mark.parametrize("family", ["moderate", "downpour", "dash", "backlit", "sheet", "photoreal"])
def test_streaks_fall_in_the_drawn_direction_within_30_degrees_of_vertical(family):
    errors = []
    for layer, p in layers(family):
        assert abs(p["angle"]) <= 30
        errors.append(abs(streak_angle(layer) - p["angle"]))
    assert np.median(errors) < 5 and max(errors) < 12, errors  # layers jitter by up to 4 degrees


def test_one_main_direction_per_image_across_layers():
    for _, p in layers("downpour"):
        assert all(abs(layer["angle"] - p["angle"]) <= 4 for layer in p["layers"])


def test_downpour_is_denser_brighter_and_wider_than_fine_rain():
    fine = list(layers("fine"))
    heavy = list(layers("downpour"))
    cover = lambda ls: np.mean([(layer > 0.1).mean() for layer, _ in ls])  # noqa: E731
    assert cover(heavy) > 2.5 * cover(fine)
    assert np.mean([layer.mean() for layer, _ in heavy]) > 2.5 * np.mean([layer.mean() for layer, _ in fine])
    assert np.mean([run_width(layer) for layer, _ in heavy]) > 1.5 * np.mean([run_width(layer) for layer, _ in fine])
    for _, p in heavy:
        assert 2 <= len(p["layers"]) <= 4
        assert max(layer["length"] for layer in p["layers"]) >= 20


def test_moderate_rain_lies_between_light_rain_and_a_downpour_without_a_veil():
    cover = lambda ls: np.mean([(layer > 0.1).mean() for layer, _ in ls])  # noqa: E731
    light, moderate, heavy = (list(layers(f, n=12)) for f in ("light", "moderate", "downpour"))
    assert 1.5 * cover(light) < cover(moderate) < 0.8 * cover(heavy)
    assert all(0.25 <= p["rate"] <= 0.65 for _, p in moderate)
    black = np.zeros((96, 96, 3), np.float32)
    cfg = RenderConfig(mix={"moderate": 1.0}, extras=NO_EXTRAS)
    for seed in range(3):
        rainy, _, p = render_pair(black, np.random.default_rng(seed), cfg)
        assert "accumulation" not in p
        assert np.percentile(rainy, 10) < 0.01  # no veil: where no streak falls, the black stays black


def test_a_sheet_of_rain_is_streaks_over_a_veil_screen_blended():
    for layer, p in layers("sheet"):
        assert 15 <= p["length"] <= 90
        assert np.percentile(layer, 5) == pytest.approx(p["floor"], abs=1e-4)  # the veil everywhere
        assert layer.max() == pytest.approx(p["peak"], abs=0.02) and (layer > p["floor"] + 0.1).mean() > 0.01
    floors = [p["floor"] for _, p in layers("sheet", n=40)]
    assert max(floors) > 0.5 and min(floors) < 0.1  # from a faint veil to one that washes out half the scene
    gray = np.full((96, 96, 3), 0.5, np.float32)
    rainy, target, p = render_pair(gray, np.random.default_rng(3), RenderConfig(mix={"sheet": 1.0}, extras=NO_EXTRAS))
    lift = (rainy - 0.5) / 0.5  # screen blend: 1 - (1 - x)(1 - L) lifts x by L * (1 - x)
    assert lift.min() >= p["rain"]["floor"] * 0.5 - 1e-3 and lift.max() <= p["rain"]["peak"] + 1e-3
    assert np.array_equal(target, gray)


def test_downpour_nearer_layers_are_longer_and_wider():
    lengths, widths = {0: [], 1: []}, {0: [], 1: []}
    for _, p in layers("downpour", n=30):
        first, last = p["layers"][0], p["layers"][-1]  # far ... near
        lengths[0].append(first["length"]); lengths[1].append(last["length"])
        widths[0].append(first["width"]); widths[1].append(last["width"])
    assert np.mean(lengths[1]) > np.mean(lengths[0]) + 10
    assert np.mean(widths[1]) > np.mean(widths[0])


def test_accumulation_veils_the_background_as_jorders_model_says():
    black = np.zeros((96, 96, 3), np.float32)
    cfg = RenderConfig(mix={"downpour": 1.0}, extras=NO_EXTRAS)
    for seed in range(5):
        rainy, target, p = render_pair(black, np.random.default_rng(seed), cfg)
        alpha, atmos = p["accumulation"]["alpha"], np.array(p["accumulation"]["atmospheric_light"])
        # where no streak falls the output is exactly (1 - alpha) * A
        floor = rainy.reshape(-1, 3)[rainy.sum(-1).ravel().argsort()[:50]].mean(0)
        assert np.allclose(floor, (1 - alpha) * atmos, atol=0.01), (floor, alpha, atmos)
        assert np.array_equal(target, black)


def test_downpour_veils_range_from_faint_to_hiding_half_the_scene():
    cfg = RenderConfig(mix={"downpour": 1.0}, extras=NO_EXTRAS)
    black = np.zeros((32, 32, 3), np.float32)
    alphas = [render_pair(black, np.random.default_rng(s), cfg)[2]["accumulation"]["alpha"] for s in range(60)]
    assert min(alphas) < 0.5 and max(alphas) > 0.9 and min(alphas) >= 0.45


def test_the_target_gets_the_exposure_and_the_scene_haze_and_nothing_else():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.1, 0.9, (64, 64, 3)).astype(np.float32)
    every = {k: 1.0 for k in NO_EXTRAS if k != "night_clear"}  # every extra, and the night has rain
    cfg = RenderConfig(mix={"fine": 1.0}, extras=every)
    rainy, target, p = render_pair(clean, np.random.default_rng(3), cfg)
    e, hz, n = p["exposure"], p["haze"], p["night"]
    exposed = np.clip(clean ** e["gamma"] * e["gain"] * np.array(e["white_balance"], np.float32), 0, 1)
    exposed = exposed ** n["gamma"] * n["gain"] * np.array(n["lamp"], np.float32)
    t = (target - np.array(hz["atmospheric_light"], np.float32)) / (exposed - np.array(hz["atmospheric_light"]))
    assert np.allclose(t, t[..., :1], atol=1e-3) and 0 < t.min() and t.max() <= 1 + 1e-4  # one transmission a pixel
    # the veil extras are recorded as the veil they drew (fine rain: ``veil``, never ``downpour_clear``)
    assert set(p) >= {*every, "rain", "accumulation"} - {"veil", "downpour_clear"}
    assert np.abs(rainy - target).mean() > 0.01


def test_jpeg_and_noise_touch_only_the_input():
    clean = np.full((64, 64, 3), 0.5, np.float32)
    cfg = RenderConfig(mix={"fine": 1.0}, extras={**NO_EXTRAS, "noise": 1.0, "jpeg": 1.0})
    rainy, target, p = render_pair(clean, np.random.default_rng(1), cfg)
    assert np.array_equal(target, clean)
    assert 40 <= p["jpeg"]["quality"] <= 95 and p["noise"]["read"] > 0


def test_a_rain_free_pair_is_the_photo_twice_with_the_scenes_haze_and_exposure():
    """``none``: input and target are the same photo (exposure and a hazy day's haze included), so a
    model learns to leave a photo without rain alone instead of darkening every bright, hazy one."""
    clean = np.random.default_rng(0).uniform(0.5, 0.95, (64, 64, 3)).astype(np.float32)
    no_rain = {**NO_EXTRAS, "exposure": 1.0, "haze": 1.0}
    rainy, target, p = render_pair(clean, np.random.default_rng(2), RenderConfig(mix={"none": 1.0}, extras=no_rain))
    assert p["rain"] == {"family": "none"} and {"exposure", "haze"} <= set(p)
    assert np.array_equal(rainy, target) and not np.allclose(target, clean, atol=0.02)
    rainy, target, _ = render_pair(clean, np.random.default_rng(2), RenderConfig(mix={"light": 1.0}, extras=no_rain))
    assert not np.array_equal(rainy, target)  # the same draw with rain: the comparison can tell


@pytest.mark.parametrize("family", FAMILIES)
def test_the_same_seed_gives_the_same_pair(family):
    clean = np.random.default_rng(0).random((80, 72, 3)).astype(np.float32)
    cfg = RenderConfig(mix={family: 1.0}, bank=BANK)
    a = render_pair(clean, np.random.default_rng(7), cfg)
    b = render_pair(clean, np.random.default_rng(7), cfg)
    c = render_pair(clean, np.random.default_rng(8), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == clean.shape and a[0].dtype == np.float32 and 0 <= a[0].min() and a[0].max() <= 1


def test_random_crop_zooms_out_at_most_as_asked():
    img = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    for seed in range(10):
        assert random_crop(img, 64, np.random.default_rng(seed)).shape == (64, 64, 3)
    assert random_crop(img[:64, :64], 64, np.random.default_rng(0)).shape == (64, 64, 3)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="unknown rain family"):
        RenderConfig(mix={"hail": 1.0})
    with pytest.raises(ValueError, match="streak bank"):
        RenderConfig(mix={"photoreal": 1.0})
    with pytest.raises(ValueError, match="must be a number"):
        parse_mix("downpour=lots")
    assert parse_mix("downpour=0.5, fine") == {"downpour": 0.5, "fine": 1.0}


def _sampler(seed: int = 0) -> PatchSampler:
    rng = np.random.default_rng(0)
    pairs = [rng.integers(0, 255, (70, 90, 3), dtype=np.uint8) for _ in range(3)]
    photos = [rng.integers(0, 255, (120, 100, 3), dtype=np.uint8) for _ in range(2)]
    render = RenderSource(photos, RenderConfig(bank=BANK), ratio=0.6)
    return PatchSampler({"rainy": pairs, "clean": [p // 2 for p in pairs]}, [["rainy", "clean"]], 48, 4, seed,
                        render=render)


def test_a_resumed_sampler_draws_the_same_rendered_batch():
    a = _sampler()
    for _ in range(3):
        a.next_batch()
    state = a.state()
    expect = a.next_batch()
    b = _sampler()
    b.set_state(state)
    got = b.next_batch()
    assert all(np.array_equal(expect[k], got[k]) for k in ("rainy", "clean"))
    assert expect["rainy"].shape == (4, 3, 48, 48) and expect["rainy"].dtype == np.float32


def test_the_render_ratio_mixes_real_and_rendered_pairs():
    s = _sampler()
    real = 0
    for _ in range(50):
        batch = s.next_batch()
        # a real pair's clean crop is exactly half its rainy crop (rounded down, in 1/255 steps)
        real += sum(np.allclose(c, np.floor(r * 255 / 2) / 255, atol=1e-6) for r, c in zip(batch["rainy"], batch["clean"]))
    assert 0.25 < real / 200 < 0.55  # 40% real draws


def test_haze_does_not_gather_around_bright_objects():
    """Haze follows depth, not brightness: a veil thicker beside a bright object teaches dark halos."""
    img = np.zeros((192, 192, 3), np.float32)
    img[72:120, 72:120] = 1.0
    cfg = RenderConfig(mix={"fine": 1.0}, extras={**NO_EXTRAS, "haze": 1.0})
    beside, away = [], []
    for seed in range(30):
        rainy, target, _ = render_pair(img, np.random.default_rng(seed), cfg)
        lift = (target - img).mean(2)
        beside.append(lift[72:120, 124:140].mean())
        away.append(lift[72:120, 0:16].mean())
    assert np.mean(beside) / np.mean(away) < 1.1


def test_night_darkens_the_scene_in_both_and_the_rain_stays_bright_in_the_lamps_colour():
    """``night``: the target is the same dark scene (6-35% of the light), the rain is lit by lamps
    (the lighting map always applies) and stands out against the dark as it does in a dashcam's night."""
    clean = np.random.default_rng(0).uniform(0.3, 0.9, (128, 128, 3)).astype(np.float32)
    cfg = RenderConfig(mix={"dash": 1.0}, extras={**NO_EXTRAS, "night": 1.0})
    for seed in range(6):
        rainy, target, p = render_pair(clean, np.random.default_rng(seed), cfg)
        n = p["night"]
        assert 0.06 <= n["gain"] <= 0.35 and 1.2 <= n["gamma"] <= 2.2 and max(n["lamp"]) == 1.0
        assert target.mean() < 0.3 * clean.mean()
        assert np.allclose(target, clean ** n["gamma"] * n["gain"] * np.array(n["lamp"], np.float32), atol=1e-5)
        assert "lighting" in p
        lift = rainy - target
        assert np.percentile(lift.max(2), 99) > 0.25  # streaks far brighter than the scene behind them
        lamp, per_channel = np.array(n["lamp"]), lift.reshape(-1, 3).sum(0)
        hue = per_channel / per_channel.max()  # the rain takes the lamp's colour (up to its 7% tint)
        assert np.allclose(hue, lamp / lamp[per_channel.argmax()], atol=0.08), (hue, lamp)
    downpour = RenderConfig(mix={"downpour": 1.0}, extras={**NO_EXTRAS, "night": 1.0, "haze": 1.0})
    for seed in range(4):  # a night's veils scatter lamp light: at most half of a day's grey sky
        p = render_pair(clean, np.random.default_rng(seed), downpour)[2]
        assert max(p["accumulation"]["atmospheric_light"]) <= 0.5 and max(p["haze"]["atmospheric_light"]) <= 0.5
    day = RenderConfig(mix={"dash": 1.0}, extras=NO_EXTRAS)
    _, target, p = render_pair(clean, np.random.default_rng(0), day)
    assert "night" not in p and np.array_equal(target, clean)


def test_night_clear_makes_some_nights_rain_free_and_leaves_days_alone():
    """``night_clear``: that share of the night pairs has no rain (input = target), so dark water and
    lit textures are not learnt as rain; daytime pairs keep their rain."""
    clean = np.random.default_rng(0).uniform(0.3, 0.9, (64, 64, 3)).astype(np.float32)
    clear_nights = RenderConfig(mix={"dash": 1.0}, extras={**NO_EXTRAS, "night": 1.0, "night_clear": 1.0})
    rainy, target, p = render_pair(clean, np.random.default_rng(1), clear_nights)
    assert p["rain"] == {"family": "none"} and "night" in p and np.array_equal(rainy, target)
    days = RenderConfig(mix={"dash": 1.0}, extras={**NO_EXTRAS, "night_clear": 1.0})
    rainy, target, p = render_pair(clean, np.random.default_rng(1), days)
    assert p["rain"]["family"] == "dash" and np.abs(rainy - target).max() > 0.2


def test_unevenly_lit_rain_is_bright_on_the_lit_side_only():
    """The lighting extra dims the rain towards its ``low`` end; without it both sides get the same rain."""
    gray = np.full((160, 160, 3), 0.3, np.float32)
    lit = RenderConfig(mix={"sheet": 1.0}, extras={**NO_EXTRAS, "lighting": 1.0})
    light = rain_lighting(160, 160, np.random.default_rng(0))[0]
    assert 0.0 <= light.min() and light.max() <= 1.0 + 1e-6
    ratios = []
    for seed in range(12):
        rainy, target, p = render_pair(gray, np.random.default_rng(seed), lit)
        lift = (rainy - target).mean(2)
        # the screen-blended lift under the ramp's two ends (direction drawn per pair)
        theta = p["lighting"]["direction"]
        yy, xx = np.mgrid[0:160, 0:160]
        along = np.cos(theta) * xx + np.sin(theta) * yy
        hi, lo = lift[along > np.quantile(along, 0.8)].mean(), lift[along < np.quantile(along, 0.2)].mean()
        if p["lighting"]["low"] < 0.3:
            ratios.append(hi / max(lo, 1e-6))
    assert ratios and np.median(ratios) > 1.8
    flat = RenderConfig(mix={"sheet": 1.0}, extras=NO_EXTRAS)
    rainy, target, p = render_pair(gray, np.random.default_rng(0), flat)
    assert "lighting" not in p


def _streak_heights(family: str) -> float:
    """Median height of the streaks one family draws, in pixels (near-vertical rain: their length)."""
    import cv2

    heights = []
    for layer, _ in layers(family, n=6, size=256):
        _, _, stats, _ = cv2.connectedComponentsWithStats((layer > 0.25).astype(np.uint8))
        heights += list(stats[1:, 3][stats[1:, 4] >= 6])
    return float(np.median(heights))


def test_dashes_are_shorter_than_a_downpours_streaks_and_wider_than_light_rains():
    assert _streak_heights("dash") < 30 < 45 < _streak_heights("downpour")
    dash, light = (np.mean([run_width(layer, 0.25) for layer, _ in layers(f)]) for f in ("dash", "light"))
    assert dash > 2 * light, (dash, light)
    for _, p in layers("dash"):
        assert all(6 <= layer["length"] <= 40 and 2 <= layer["width"] <= 4 for layer in p["layers"])


def _drops(family: str) -> tuple[float, list[float]]:
    """Mean number of separate drops per 256 x 256 layer, and every drop's peak brightness."""
    import cv2

    counts, peaks = [], []
    for layer, _ in layers(family, n=6, size=256):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((layer > 0.1).astype(np.uint8))
        peak = np.zeros(n, np.float32)
        np.maximum.at(peak, labels.ravel(), layer.ravel())
        counts.append(n - 1)
        peaks += list(peak[1:][stats[1:, 4] >= 3])
    return float(np.mean(counts)), peaks


def test_backlit_rain_is_many_short_drops_most_dim_a_few_bright():
    many, peaks = _drops("backlit")
    assert many > 3 * _drops("dash")[0]
    assert _streak_heights("backlit") < 16 < _streak_heights("dash")
    assert np.percentile(peaks, 90) > 1.5 * np.median(peaks)  # a wide range of brightness, not one level
    for _, p in layers("backlit"):
        assert 3 <= len(p["layers"]) <= 5
        assert all(3 <= layer["length"] <= 22 and 1 <= layer["width"] <= 2 for layer in p["layers"])


def test_coarse_rain_is_the_same_rain_wider_and_off_draws_nothing():
    from derain_cli.rainrender import coarse_rain_layer

    fine, coarse = [], []
    for seed in range(8):
        layer, p = coarse_rain_layer("light", 192, 192, np.random.default_rng(seed), None, 1.0)
        assert 1.5 <= p["coarse"] <= 4.0 and p["family"] == "light"
        assert layer.shape == (192, 192) and 0 <= layer.min() and layer.max() <= 1
        coarse.append(run_width(layer))
        fine.append(run_width(rain_layer("light", 192, 192, np.random.default_rng(seed))[0]))
    assert np.mean(coarse) > 1.5 * np.mean(fine)
    # chance 0 (every recipe before the extra existed) renders bit-identically, drawing nothing extra
    plain, _ = rain_layer("downpour", 96, 128, np.random.default_rng(5))
    off, p = coarse_rain_layer("downpour", 96, 128, np.random.default_rng(5), None, 0.0)
    assert "coarse" not in p and np.array_equal(plain, off)


def test_the_veil_is_drawn_apart_from_the_streaks_and_off_draws_nothing():
    clean = np.random.default_rng(0).uniform(0.05, 0.5, (64, 64, 3)).astype(np.float32)
    base = {**NO_EXTRAS}

    def veiled(family: str, seed: int, **extras: float) -> bool:
        cfg = RenderConfig(mix={family: 1.0}, extras={**base, **extras})
        return "accumulation" in render_pair(clean, np.random.default_rng(seed), cfg)[2]

    # today's pairs: every downpour veiled, no other family
    assert all(veiled("downpour", s) for s in range(6)) and not any(veiled("dash", s) for s in range(6))
    # downpour_clear: a share of the downpours comes without its veil; veil: a share of the lighter rain gets one
    clear = [veiled("downpour", s, downpour_clear=0.5) for s in range(40)]
    lit = [veiled("dash", s, veil=0.5) for s in range(40)]
    assert 8 <= clear.count(False) <= 32 and 8 <= lit.count(True) <= 32
    assert not any(veiled("sheet", s, veil=1.0) for s in range(6))  # a sheet has its own floor
    # a veiled pair's input has lifted shadows, its target none
    cfg = RenderConfig(mix={"dash": 1.0}, extras={**base, "veil": 1.0})
    rainy, target, p = render_pair(clean, np.random.default_rng(2), cfg)
    assert np.percentile(rainy, 1) > np.percentile(target, 1) + 0.02
    # at 0 (every recipe before these extras existed) the same pair, drawing nothing extra
    for family in ("downpour", "dash"):
        a = render_pair(clean, np.random.default_rng(7), RenderConfig(mix={family: 1.0}, extras=base))
        old = {k: v for k, v in base.items() if k not in ("veil", "downpour_clear")}
        b = render_pair(clean, np.random.default_rng(7), RenderConfig(mix={family: 1.0}, extras=old))
        assert np.array_equal(a[0], b[0]) and a[2] == b[2]
