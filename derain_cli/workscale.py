"""Rain found on a smaller copy of a photo and subtracted at full resolution (``--work-size``).

The networks learned rain as it looks in photos of about 500-1000 pixels a side. In a photo
with more pixels of the same scene the same rain is that many times wider and longer, and
they leave it (Rain100L test enlarged 3x: 28.45 dB from 26.94; found at 512 pixels, 34.59).
So the rain is found on a copy whose long side is ``work_size``, and only the rain layer (the
copy minus its derained copy) is enlarged and subtracted: the photo keeps its own detail. Rain
finer than the copy's pixels is not on the copy, so unless only the copy is asked for, the photo is
also derained at its own size and the two are joined by frequency (:func:`join_bands`). The
full-resolution work runs in bands of rows, so memory stays near the output's own size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: Rows of the full-resolution image converted and corrected at a time.
BAND = 256
#: The smallest long side to find rain at: below it little of a scene is left to tell rain from.
MIN_WORK_SIZE = 128
#: The band where the copy's answer gives way to the full-size one, as a Gaussian sigma in the copy's
#: pixels: about the finest detail a copy holds.
JOIN_SIGMA = 0.5


def small_size(height: int, width: int, work_size: int) -> tuple[int, int]:
    """``(h, w)`` of the copy whose long side is ``work_size`` (the photo's own size when it is not larger)."""
    scale = min(1.0, work_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def cubic_taps(n_out: int, n_in: int, a: float = -0.75) -> tuple[np.ndarray, np.ndarray]:
    """Bicubic interpolation from ``n_in`` to ``n_out`` samples, exactly as ``cv2.INTER_CUBIC`` (Keys, a = -0.75).

    Returns the four source indices of every output sample (``n_out x 4``, clamped at the
    borders) and their weights. Cubic, not linear: the rain layer keeps sharper streak edges
    (Rain100L test enlarged 3x, found at 512 pixels: 0.25 dB more).
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    first = np.floor(src)
    index = np.clip(first[:, None].astype(np.intp) + np.arange(-1, 3), 0, n_in - 1)
    x = np.abs((src - first)[:, None] - np.arange(-1, 3))
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return index, np.where(x <= 1, near, np.where(x < 2, far, 0)).astype(np.float32)


def _enlarge_columns(layer: np.ndarray, width: int) -> np.ndarray:
    index, weight = cubic_taps(width, layer.shape[1])
    return sum(layer[:, index[:, k]] * weight[:, k, None] for k in range(4))


def derain_at(process: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, work_size: int,
              full: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """``rgb`` (uint8, uint16 or float32) derained by ``process`` on a copy ``work_size`` pixels long; same dtype.

    ``process`` takes and returns a float32 ``H x W x 3`` array in [0, 1]. A photo no larger than
    ``work_size`` goes to it whole, unchanged. ``full()``, when given, returns ``rgb`` derained at its
    own size; its detail finer than the copy's pixels is kept (:func:`join_bands`).
    """
    import cv2

    from .tiling import from_unit, to_unit

    h, w = rgb.shape[:2]
    hs, ws = small_size(h, w, work_size)
    if (hs, ws) == (h, w):
        return from_unit(process(to_unit(rgb)), rgb.dtype)
    small = to_unit(cv2.resize(rgb, (ws, hs), interpolation=cv2.INTER_AREA))
    layer = small - process(small)
    layer = _enlarge_columns(layer, w)  # hs x w x 3
    index, weight = cubic_taps(h, hs)
    out = np.empty_like(rgb)
    for y0 in range(0, h, BAND):
        rows = slice(y0, min(h, y0 + BAND))
        band = to_unit(rgb[rows]) - sum(layer[index[rows, k]] * weight[rows, k, None, None] for k in range(4))
        out[rows] = from_unit(np.clip(band, 0.0, 1.0, out=band), rgb.dtype)
    return out if full is None else join_bands(full(), out, JOIN_SIGMA * h / hs)


def join_bands(fine: np.ndarray, coarse: np.ndarray, sigma: float) -> np.ndarray:
    """``fine`` above a Gaussian band of ``sigma`` pixels, ``coarse`` below it: ``fine + blur(coarse - fine)``.

    The full-size pass removes rain finer than the copy holds and leaves coarse rain (and can darken
    wide smooth areas that look like a veil at that size); the copy's pass is the other way round.
    Same dtype as ``fine``; in bands of rows, each with a margin the blur cannot see past.
    """
    import cv2

    from .tiling import from_unit, to_unit

    h = fine.shape[0]
    margin = int(np.ceil(4 * sigma)) + 1  # cv2's kernel radius for a float image is round(4 sigma)
    out = np.empty_like(fine)
    for y0 in range(0, h, BAND):
        y1 = min(h, y0 + BAND)
        a, b = max(0, y0 - margin), min(h, y1 + margin)
        low = cv2.GaussianBlur(to_unit(coarse[a:b]) - to_unit(fine[a:b]), (0, 0), sigma)
        band = to_unit(fine[y0:y1]) + low[y0 - a:y1 - a]
        out[y0:y1] = from_unit(np.clip(band, 0.0, 1.0, out=band), fine.dtype)
    return out

