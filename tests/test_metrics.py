"""Known answers for the field's PSNR/SSIM (Y channel, MATLAB convention)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchscripts import benchmark_script
from conftest import SHARED_DATA, make_rainy_pair, needs_shared_data
from derain_cli import metrics
from derain_cli.errors import ImageError


def _gray_rgb(value: int, h: int = 20, w: int = 24) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def test_y_channel_is_matlab_rgb2ycbcr_rounded():
    # R=G=B=v gives Y = 16 + 219 v / 255; MATLAB rounds uint8 output: 100 -> 101.88 -> 102, 110 -> 110.47 -> 110
    assert metrics.rgb_to_y(_gray_rgb(100))[0, 0] == 102
    assert metrics.rgb_to_y(_gray_rgb(110))[0, 0] == 110
    assert metrics.rgb_to_y(_gray_rgb(0))[0, 0] == 16
    assert metrics.rgb_to_y(_gray_rgb(255))[0, 0] == 235
    pure = np.zeros((1, 1, 3), np.uint8)
    pure[..., 0] = 255  # red: 16 + 65.481 = 81.481 -> 81
    assert metrics.rgb_to_y(pure)[0, 0] == 81


def test_psnr_known_answer_on_synthetic_pair():
    # Y differs by exactly 8 everywhere (102 vs 110): PSNR = 20 log10(255 / 8)
    expected = 20 * math.log10(255 / 8)
    assert metrics.psnr_y(_gray_rgb(100), _gray_rgb(110)) == pytest.approx(expected, abs=1e-9)
    # RGB PSNR sees the raw difference of 10 on every channel
    assert metrics.psnr_rgb(_gray_rgb(100), _gray_rgb(110)) == pytest.approx(20 * math.log10(25.5), abs=1e-9)


def test_psnr_known_answer_on_random_pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (31, 37, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (31, 37, 3), dtype=np.uint8)
    ya = np.floor(16 + a.astype(float) @ np.array([65.481, 128.553, 24.966]) / 255 + 0.5)
    yb = np.floor(16 + b.astype(float) @ np.array([65.481, 128.553, 24.966]) / 255 + 0.5)
    expected = 10 * math.log10(255**2 / np.mean((ya - yb) ** 2))
    assert metrics.psnr_y(a, b) == pytest.approx(expected, abs=1e-9)


def test_identical_images():
    rainy, _ = make_rainy_pair(48, 56, seed=3)
    assert metrics.ssim_y(rainy, rainy) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr_y(rainy, rainy) == math.inf


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Direct transcription of Wang et al.'s SSIM_index.m (window loop, 'valid' region)."""
    x = np.arange(-5, 6)
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, wd = a.shape
    vals = []
    for i in range(h - 10):
        for j in range(wd - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * pa * pa).sum() - ma * ma
            vb = (w * pb * pb).sum() - mb * mb
            cov = (w * pa * pb).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_direct_window_computation():
    rainy, clean = make_rainy_pair(23, 29, seed=1)
    ya, yb = metrics.rgb_to_y(rainy), metrics.rgb_to_y(clean)
    expected = _ssim_reference(ya, yb)
    assert expected < 0.99  # the pair really differs
    assert metrics.ssim_y(rainy, clean) == pytest.approx(expected, abs=1e-9)


def test_16bit_is_scaled_like_im2uint8():
    rainy, clean = make_rainy_pair(30, 30, seed=2)
    r16, c16 = rainy.astype(np.uint16) * 257, clean.astype(np.uint16) * 257
    assert metrics.score(r16, c16) == metrics.score(rainy, clean)
    assert np.array_equal(metrics.to_uint8(np.array([0, 128, 65535], np.uint16)), [0, 0, 255])
    assert metrics.to_uint8(np.array([32896], np.uint16))[0] == 128  # 128 * 257


def test_scoring_and_writing_share_one_8_bit_conversion():
    """One to_uint8 (imageio's): its integer formula is round(x / 257) for every 16-bit value."""
    from derain_cli import imageio

    assert metrics.to_uint8 is imageio.to_uint8
    every = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(imageio.to_uint8(every), np.floor(every / 257.0 + 0.5).astype(np.uint8))
    assert np.array_equal(imageio.to_uint8(np.array([-0.1, 0.5, 0.502, 1.2], np.float32)), [0, 128, 128, 255])


def test_gray_images():
    rainy, clean = make_rainy_pair(30, 30, seed=4)
    g_r, g_c = rainy[:, :, 1], clean[:, :, 1]
    # both gray: the gray values are the luma, as in the field's scripts
    assert metrics.psnr_y(g_r, g_c) == pytest.approx(metrics.psnr(g_r, g_c))
    # gray vs colour: the gray one is scored as R = G = B
    as_rgb = np.repeat(g_r[:, :, None], 3, axis=2)
    assert metrics.score(g_r, clean) == metrics.score(as_rgb, clean)


def test_size_mismatch_and_tiny_images_are_clear_errors():
    with pytest.raises(ImageError, match="size mismatch"):
        metrics.score(_gray_rgb(1, 20, 20), _gray_rgb(1, 20, 21))
    with pytest.raises(ImageError, match="smaller than the 11x11"):
        metrics.ssim_y(_gray_rgb(1, 10, 30), _gray_rgb(1, 10, 30))


def test_mean_is_per_image_then_over_images():
    s = [metrics.Scores(30.0, 0.9, 29.0), metrics.Scores(40.0, 0.8, 39.0)]
    assert metrics.mean_scores(s) == metrics.Scores(35.0, pytest.approx(0.85), 34.0)


@needs_shared_data
def test_rain100l_rainy_inputs_give_the_published_input_figures():
    from derain_cli.datasets import pair_by_stem
    from derain_cli.imageio import read_rgb8

    test = SHARED_DATA / "rain100l" / "test"
    pairs = pair_by_stem(test / "rainy", test / "clean", "rainy", "clean")
    assert len(pairs) == 100
    scores = [metrics.score(read_rgb8(p.first), read_rgb8(p.second)) for p in pairs]
    mean = metrics.mean_scores(scores)
    assert round(mean.psnr_y, 2) == 26.90
    assert round(mean.ssim_y, 3) == 0.838


def test_tone_oracle_undoes_a_veil_but_not_streaks():
    """benchmarks/tone_oracle.py (behind docs/models.md's tone figures): a per-channel gain and offset,
    so a uniform veil is undone to rounding and streaks are left."""
    oracle = benchmark_script("tone_oracle")
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
    veiled = (0.6 * clean + np.float64([90, 80, 70])).round().astype(np.uint8)
    psnr_y = metrics.psnr_y
    assert psnr_y(veiled, clean) < 20
    assert psnr_y(oracle.fit_tone(veiled, clean), clean) > 45
    streaked = clean.copy()
    streaked[:, ::8] = 255
    assert psnr_y(oracle.fit_tone(streaked, clean), clean) < psnr_y(streaked, clean) + 3
    # the sign says which way the tone is off: a veil left is positive, a darkened photo negative
    assert oracle.mean_y_offset(veiled, clean) > 10 > -10 > oracle.mean_y_offset(clean // 2, clean)


def test_veil_probe_measures_the_share_of_the_veil_left():
    """benchmarks/veil_probe.py (behind docs/models.md's veil figures): 1 when nothing is removed, 0 when all is."""
    probe = benchmark_script("veil_probe")
    clean = np.random.default_rng(0).uniform(0.05, 0.6, (32, 48, 3)).astype(np.float32)
    none = np.zeros((32, 48), np.float32)
    assert abs(probe.veil_left(lambda x: x, clean, none) - 1) < 0.02
    assert abs(probe.veil_left(lambda x: (clean * 255 + 0.5).astype(np.uint8), clean, none)) < 0.02
    half = probe.veil_left(lambda x: ((x.astype(np.float32) + clean * 255) / 2 + 0.5).astype(np.uint8), clean, none)
    assert 0.45 < half < 0.55
