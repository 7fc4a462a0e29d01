"""Reading and writing images (the foundation issue extends this module)."""
from __future__ import annotations

import os

import numpy as np

from .errors import ImageError


def read_rgb8(path: str | os.PathLike) -> np.ndarray:
    """Read any supported image as ``H x W x 3`` uint8 RGB (training and scoring use this)."""
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageError(f"{path}: not a readable image (corrupt or unsupported format)")
    return img[:, :, ::-1].copy()
