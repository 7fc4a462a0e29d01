"""Shared fixtures. Tests that need the research datasets ($DERAIN_DATA or ../shared/data) skip when they are absent."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
#: The research datasets, one folder each: $DERAIN_DATA as the product reads it, else ../shared/data.
SHARED_DATA = Path(os.environ.get("DERAIN_DATA") or REPO.parent / "shared" / "data")

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "rain100l").is_dir(), reason="no rain100l in $DERAIN_DATA or ../shared/data"
)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests share two cores with background training: keep torch on one thread."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield


def make_rainy_pair(h: int = 48, w: int = 56, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth synthetic scene and the same scene with bright diagonal streaks (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    clean = np.stack(
        [
            0.5 + 0.3 * np.sin(xx / 7 + seed),
            0.5 + 0.3 * np.cos(yy / 9),
            0.4 + 0.2 * np.sin((xx + yy) / 11),
        ],
        axis=-1,
    )
    streaks = np.zeros((h, w), np.float32)
    for _ in range(max(1, h * w // 150)):
        y, x = rng.integers(0, h), rng.integers(0, w)
        for t in range(6):
            yy2, xx2 = y + t, x + t // 3
            if yy2 < h and xx2 < w:
                streaks[yy2, xx2] = 0.35
    rainy = np.clip(clean + streaks[..., None], 0, 1)
    return (rainy * 255).round().astype(np.uint8), (clean * 255).round().astype(np.uint8)


@pytest.fixture
def tiny_pairs(tmp_path: Path):
    """A folder pair ``rainy/`` and ``clean/`` of six small synthetic images."""
    import cv2

    for sub in ("rainy", "clean"):
        (tmp_path / sub).mkdir()
    for i in range(6):
        rainy, clean = make_rainy_pair(seed=i)
        cv2.imwrite(str(tmp_path / "rainy" / f"{i:03d}.png"), rainy[:, :, ::-1])
        cv2.imwrite(str(tmp_path / "clean" / f"{i:03d}.png"), clean[:, :, ::-1])
    return tmp_path


@pytest.fixture
def hub_server():
    """A local stand-in for the Hugging Face Hub resolve endpoint (tests/hubserver.py).

    Add files with ``hub_server.add(repo_id, filename, data, repo_type=...)`` and pass
    ``endpoint=hub_server.endpoint`` to ``hf_hub_download``; stopped after the test.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hubserver import HubServer

    with HubServer() as server:
        yield server
