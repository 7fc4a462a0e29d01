"""Rain found on a smaller copy of a photo and subtracted at full resolution (``--work-size``).

The networks learned rain as it looks in photos of about 500-1000 pixels a side. In a photo
with more pixels of the same scene the same rain is that many times wider and longer, and
they leave it (Rain100L test enlarged 3x: 28.45 dB from 26.94; found at 512 pixels, 34.78).
So the rain is found on a copy whose long side is ``work_size``, and only the rain layer (the
copy minus its derained copy) is enlarged and subtracted: the photo keeps its own detail. The
full-resolution work runs in bands of rows, so memory stays near the output's own size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: Rows of the full-resolution image converted and corrected at a time.
BAND = 256
#: The smallest long side to find rain at: below it little of a scene is left to tell rain from.
MIN_WORK_SIZE = 128


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


def derain_at(process: Callable[[np.ndarray], np.ndarray], rgb: np.ndarray, work_size: int) -> np.ndarray:
    """``rgb`` (uint8, uint16 or float32) derained by ``process`` on a copy ``work_size`` pixels long; same dtype.

    ``process`` takes and returns a float32 ``H x W x 3`` array in [0, 1]. A photo no larger than
    ``work_size`` goes to it whole, unchanged.
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
    return out

