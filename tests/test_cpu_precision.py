"""CPU inference layout and precision: channels_last by default, bf16 with --half on CPUs that have it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from derain_cli import devices
from derain_cli.api import load_model
from tiny_spec import make_spec, save_random_weights


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(45, 61, 3), dtype=np.uint8)


def test_cpu_inference_runs_channels_last_with_the_same_result(tmp_path, monkeypatch):
    spec = make_spec()
    weights = save_random_weights(spec, tmp_path / "w.safetensors")
    fast = load_model(spec, weights=weights, device="cpu")
    assert fast.channels_last
    assert any(p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
               for p in fast.net.parameters())
    monkeypatch.setenv("DERAIN_CHANNELS_LAST", "0")
    plain = load_model(spec, weights=weights, device="cpu")
    assert not plain.channels_last
    img = _image().astype(np.float32) / 255
    assert np.abs(fast.process(img) - plain.process(img)).max() < 1e-5


def test_half_on_a_cpu_with_native_bf16_runs_bfloat16_close_to_float32(tmp_path, monkeypatch):
    spec = make_spec()
    weights = save_random_weights(spec, tmp_path / "w.safetensors")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)  # emulated bf16 computes the same
    half = load_model(spec, weights=weights, device="cpu", half=True)
    assert half.dtype is torch.bfloat16 and half.dtype_name == "bfloat16 autocast"
    full = load_model(spec, weights=weights, device="cpu")
    img = _image(1).astype(np.float32) / 255
    a, b = half.process(img), full.process(img)
    assert a.dtype == np.float32 and a.shape == img.shape
    err = np.abs(a - b)
    assert 0 < err.max() < 0.05  # really computed in bf16, and still close
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(Exception, match="AMX or AVX512-BF16"):
        load_model(spec, weights=weights, device="cpu", half=True)
