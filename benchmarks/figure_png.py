"""Shared by the figure scripts: centre crops, pasted on a white grid, written as a PNG atomically."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` square (smaller if the image is)."""
    h, w = img.shape[:2]
    size = min(size, h, w)
    y, x = (h - size) // 2, (w - size) // 2
    return img[y:y + size, x:x + size]


def grid(rows: list[list[np.ndarray]], cell: int, gap: int) -> np.ndarray:
    """Rows of crops (each at most ``cell`` square) on a white canvas, ``gap`` pixels apart."""
    n_cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * cell + (len(rows) - 1) * gap, n_cols * cell + (n_cols - 1) * gap, 3), 255,
                     np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = r * (cell + gap), c * (cell + gap)
            canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
    return canvas


def write_png(canvas: np.ndarray, out: Path) -> None:
    """RGB ``canvas`` -> ``out`` (maximum compression, atomic, parent folders made)."""
    import cv2

    from derain_cli.weightfile import atomic_write_bytes

    ok, buf = cv2.imencode(".png", canvas[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise SystemExit("could not encode the figure")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.tobytes())
