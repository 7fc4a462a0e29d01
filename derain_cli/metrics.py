"""PSNR and SSIM exactly as the deraining literature computes them.

The field's numbers (Rain100L/H, Rain12 tables since JORDER and PReNet) come from
MATLAB scripts: ``rgb2ycbcr`` on the 8-bit images, keep Y (rounded to uint8, as
MATLAB does for uint8 input), PSNR with peak 255 over the whole image, and the
original Wang et al. ``SSIM_index`` (11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, L = 255, ``filter2(..., 'valid')``, mean of the map).
Figures computed any other way (RGB, float Y, [0, 1] range, cropped borders)
are not comparable with published tables, so this module is the one place
that defines them. numpy + OpenCV only, so the CLI and the training loop can
import it without torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ImageError
from .imageio import to_uint8  # scoring converts to 8 bits as writing does

#: MATLAB ``rgb2ycbcr`` luma row for 8-bit RGB (ITU-R BT.601, studio swing).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PEAK = 255.0


def _colour(img: np.ndarray) -> np.ndarray:
    """Drop an alpha channel and a trailing singleton axis; keep gray as 2-D."""
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        return img[:, :, :3]
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3):
        return img
    raise ImageError(f"cannot score an image of shape {img.shape}")


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Y of MATLAB ``rgb2ycbcr`` for 8-bit RGB, rounded to integers like MATLAB's uint8 output.

    Returned as float64 (values 16..235). A gray image is its own Y, as in the
    field's scripts (they only convert 3-channel images).
    """
    rgb = _colour(to_uint8(rgb))
    if rgb.ndim == 2:
        return rgb.astype(np.float64)
    y = rgb.astype(np.float64) @ _Y_WEIGHTS + _Y_OFFSET
    return np.floor(y + 0.5)


def _check_same_size(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise ImageError(
            f"size mismatch: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]} (width x height)"
        )


def psnr_from_mse(mse: float, peak: float = PEAK) -> float:
    """PSNR in dB; identical images give ``inf``."""
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (peak 255) over all pixels and channels of two arrays already on the 0..255 scale."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    _check_same_size(a, b)
    if a.shape != b.shape:
        raise ImageError(f"shape mismatch: {a.shape} vs {b.shape}")
    return psnr_from_mse(float(np.mean((a - b) ** 2)))


def _y_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Y of both images; a gray image paired with a colour one is scored as colour (R = G = B),
    so both sides use the same studio-range luma."""
    a8, b8 = _colour(to_uint8(a)), _colour(to_uint8(b))
    _check_same_size(a8, b8)
    if a8.ndim != b8.ndim:
        a8 = a8 if a8.ndim == 3 else np.repeat(a8[:, :, None], 3, axis=2)
        b8 = b8 if b8.ndim == 3 else np.repeat(b8[:, :, None], 3, axis=2)
    return rgb_to_y(a8), rgb_to_y(b8)


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    """Y-channel PSNR of two RGB images (uint8, uint16 or float in [0, 1]): the field's PSNR."""
    return psnr(*_y_pair(a, b))


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR over the three 8-bit RGB channels (gray is compared as gray)."""
    a8, b8 = _colour(to_uint8(a)), _colour(to_uint8(b))
    _check_same_size(a8, b8)
    if a8.ndim != b8.ndim:  # one gray, one colour: compare both as colour
        a8 = a8 if a8.ndim == 3 else np.repeat(a8[:, :, None], 3, axis=2)
        b8 = b8 if b8.ndim == 3 else np.repeat(b8[:, :, None], 3, axis=2)
    return psnr(a8, b8)


def _gaussian_kernel() -> np.ndarray:
    """``fspecial('gaussian', 11, 1.5)`` as a normalised 1-D kernel (the 2-D window is its outer product)."""
    r = (SSIM_WINDOW - 1) / 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


_KERNEL = _gaussian_kernel()


def _filter_valid(img: np.ndarray) -> np.ndarray:
    """Gaussian-weighted local mean over the 'valid' region only (no padded borders)."""
    import cv2

    full = cv2.sepFilter2D(img, cv2.CV_64F, _KERNEL, _KERNEL, borderType=cv2.BORDER_CONSTANT)
    m = SSIM_WINDOW // 2
    return full[m:-m, m:-m]


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two single-channel 0..255 images (Wang et al. 2004, ``SSIM_index``)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    _check_same_size(a, b)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ImageError(
            f"image {a.shape[1]}x{a.shape[0]} is smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window"
        )
    c1 = (SSIM_K1 * PEAK) ** 2
    c2 = (SSIM_K2 * PEAK) ** 2
    mu_a, mu_b = _filter_valid(a), _filter_valid(b)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a) - mu_aa
    var_b = _filter_valid(b * b) - mu_bb
    cov = _filter_valid(a * b) - mu_ab
    return ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))


def ssim_y(a: np.ndarray, b: np.ndarray) -> float:
    """Y-channel SSIM of two RGB images: the field's SSIM (mean of the valid-region map)."""
    return float(ssim_map(*_y_pair(a, b)).mean())


@dataclass(frozen=True)
class Scores:
    """The figures we report for one image pair."""

    psnr_y: float
    ssim_y: float
    psnr_rgb: float


def score(output: np.ndarray, reference: np.ndarray) -> Scores:
    """All reported figures for one (output, reference) pair, each computed once on 8-bit values."""
    y_out, y_ref = _y_pair(output, reference)
    return Scores(
        psnr_y=psnr(y_out, y_ref),
        ssim_y=float(ssim_map(y_out, y_ref).mean()),
        psnr_rgb=psnr_rgb(output, reference),
    )


def mean_scores(scores: list[Scores]) -> Scores:
    """Per-image figures averaged over images (the field averages PSNR in dB, not MSE)."""
    if not scores:
        raise ValueError("no scores to average")
    return Scores(
        psnr_y=float(np.mean([s.psnr_y for s in scores])),
        ssim_y=float(np.mean([s.ssim_y for s in scores])),
        psnr_rgb=float(np.mean([s.psnr_rgb for s in scores])),
    )
