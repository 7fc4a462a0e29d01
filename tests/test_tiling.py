"""Tiled inference, devices and the Python API, on tiny test-only models with random weights."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from derain_cli import devices, tiling
from derain_cli.api import Derainer, load_model
from derain_cli.errors import DerainError, WeightsError
from derain_cli.weightfile import save_weights
from tiny_spec import TINY_CONFIGS, make_spec, randomize, save_random_weights, tiny_net


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One loaded tiny model per kind: conv (margin 3), unet (multiple 4), norm (not tile safe)."""
    folder = tmp_path_factory.mktemp("w")
    out = {}
    for kind in ("conv", "unet", "norm"):
        spec = make_spec(kind=kind)
        out[kind] = load_model(spec, weights=save_random_weights(spec, folder / f"{kind}.safetensors"), device="cpu")
    return out


def _image(h=93, w=130, seed=0):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("length,tile,overlap,multiple", [(100, 40, 8, 4), (97, 32, 6, 1), (64, 64, 8, 1), (130, 48, 40, 8)])
def test_windows_partition_unity(length, tile, overlap, multiple):
    spans = tiling.plan_axis(length, tile, overlap, multiple)
    total = np.zeros(length)
    for s in spans:
        total[s.dst0 : s.dst1] += s.weights
        assert s.src0 % multiple == 0 and s.src0 <= s.dst0 and s.dst1 <= s.src1 <= length
        # every pixel a tile contributes to has >= overlap pixels of real context inside the tile
        if s.src0 > 0:
            assert s.dst0 - s.src0 >= overlap
        if s.src1 < length:
            assert s.src1 - s.dst1 >= overlap
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    weights = np.concatenate([s.weights for s in spans])
    assert weights.min() > 0 and (np.diff(spans[0].weights) <= 0).all()  # smooth fade, no hard cut


@pytest.mark.parametrize("length,tile,overlap,multiple", [(100, 40, 8, 4), (97, 32, 6, 1), (64, 64, 8, 1), (130, 48, 40, 8)])
def test_hard_cuts_partition_with_full_context(length, tile, overlap, multiple):
    """``fade=False``: the cores tile the axis exactly once, with weight 1, each with ``overlap`` of context."""
    spans = tiling.plan_axis(length, tile, overlap, multiple, fade=False)
    assert spans[0].dst0 == 0 and spans[-1].dst1 == length
    for a, b in zip(spans, spans[1:]):
        assert a.dst1 == b.dst0  # no band computed by two tiles
    for s in spans:
        assert (s.weights == 1).all() and s.src0 % multiple == 0 and s.src0 <= s.dst0 and s.dst1 <= s.src1 <= length
        if s.src0 > 0:
            assert s.dst0 - s.src0 >= overlap
        if s.src1 < length:
            assert s.src1 - s.dst1 >= overlap


def test_hard_cuts_equal_untiled_for_a_margin_model(models):
    model = models["conv"]  # margin 3
    img = _image()
    whole = model.process(img, tile=0)
    fn = model.process_tensor
    cut = tiling.run_tiles(fn, img, tile=32, overlap=3, fade=False)
    np.testing.assert_allclose(cut, whole, atol=1e-5)
    seams = tiling.run_tiles(fn, img, tile=32, overlap=0, fade=False)
    assert np.abs(seams - whole).max() > 1 / 255


@pytest.mark.parametrize("fade", [True, False])
def test_tiles_in_parallel_give_the_same_image_and_the_threads_back(models, fade):
    """Tiles run on several workers (CPU) come out identical and in order; the first tile runs alone on
    all threads (it may compute a model's context), the others on a share, in the caller's modes."""
    model = models["unet"]
    img = _image()
    seen = []

    def fn(x):
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))
        return model.process_tensor(x)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = tiling.run_tiles(fn, img, tile=32, overlap=16, fade=fade, workers=1)
        seen.clear()
        with torch.inference_mode():
            shared = tiling.run_tiles(fn, img, tile=32, overlap=16, fade=fade, workers=2)
        assert torch.get_num_threads() == 2
        assert seen[0] == (2, True) and set(seen[1:]) == {(1, True)} and len(seen) > 4
        np.testing.assert_array_equal(shared, alone)

        def broken(x):
            if x.shape[-1] < 48:  # a tile at the right border, after the first
                raise ValueError("a bug in one tile")
            return x

        with pytest.raises(ValueError, match="a bug in one tile"):
            tiling.run_tiles(broken, _image(64, 100), tile=32, overlap=8, fade=fade, workers=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind,margin", [("conv", 3), ("unet", 16)])
def test_tiled_equals_untiled(models, kind, margin):
    model = models[kind]
    img = _image()
    whole = model.process(img, tile=0)
    assert model.last_tile == 0
    tiled = model.process(img, tile=32, tile_overlap=margin)
    assert model.last_tile == 32
    assert np.abs(tiled - whole).max() <= 1 / 255
    # the check has teeth: without context the tiles visibly disagree with the whole image
    seams = model.process(img, tile=32, tile_overlap=0)
    assert np.abs(seams - whole).max() > 1 / 255


#: What exact tiling (``Traits.exact_tiles``) promises: tiled output within this PSNR (8-bit RGB)
#: of the whole image at the default overlap (``tile_margin``), whatever the tile size.
TILE_SAFE_PSNR = 45.0
#: Models with per-tile statistics only promise that the wide fades keep tiles close.
TILE_UNSAFE_PSNR = 30.0


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_model_tiles_as_its_traits_promise(name):
    from conftest import make_rainy_pair
    from derain_cli.metrics import psnr_rgb
    from derain_cli.registry import model_names

    assert set(TINY_CONFIGS) == set(model_names())  # a new architecture needs a tiny config here
    spec, config, net = tiny_net(name)
    derainer = Derainer(spec, config, randomize(net), torch.device("cpu"))
    traits = derainer.traits
    if traits.exact_tiles:
        h, w, tile = 160, 200, 64
    else:  # the smallest tiles it allows, on an image that needs four
        h, w, tile = traits.min_tile + 96, traits.min_tile + 160, traits.min_tile
    rainy, _ = make_rainy_pair(h, w, seed=3)
    whole = derainer.process(rainy, tile=max(h, w))
    assert derainer.last_tile == 0 and psnr_rgb(whole, rainy) < 30  # the net really changes the image
    tiled = derainer.process(rainy, tile=tile)
    assert derainer.last_tile == tile and derainer.last_overlap >= traits.tile_margin
    score = psnr_rgb(tiled, whole)
    assert score >= (TILE_SAFE_PSNR if traits.exact_tiles else TILE_UNSAFE_PSNR), (name, score)
    if traits.exact_tiles:  # the check has teeth: without context the tiles disagree
        assert psnr_rgb(derainer.process(rainy, tile=tile, tile_overlap=0), whole) < TILE_SAFE_PSNR


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)])
def test_process_keeps_dtype(models, dtype, top):
    img = (_image(40, 52) * top).astype(dtype)
    out = models["conv"].process(img, tile=24, tile_overlap=4)
    assert out.dtype == dtype and out.shape == img.shape
    ref = models["conv"].process(_image(40, 52) if dtype == np.float32 else img.astype(np.float32) / top)
    assert np.abs(out.astype(np.float32) / top - ref).max() <= 1 / 255


def test_process_rejects_bad_arrays(models):
    with pytest.raises(DerainError, match="H x W x 3"):
        models["conv"].process(np.zeros((8, 8), np.uint8))
    with pytest.raises(DerainError, match="uint8, uint16 or float32"):
        models["conv"].process(np.zeros((8, 8, 3), np.int64))


def test_process_tensor_any_size_and_batch(models):
    x = torch.rand(2, 3, 21, 35)
    y = models["unet"].process_tensor(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_input_range_is_mapped(tmp_path):
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            seen["range"] = (float(x.min()), float(x.max()))
            return x * self.scale

    spec = make_spec(name="probe", input_range=(-1.0, 1.0), build=lambda cfg: Probe(), derain_net=lambda b, v: b)
    model = load_model(spec, weights=save_random_weights(spec, tmp_path / "p.safetensors"), device="cpu")
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    y = model.process_tensor(x)
    assert seen["range"] == (-1.0, 1.0)
    torch.testing.assert_close(y, x)


def test_out_of_memory_halves_tile():
    calls, lines = [], []

    def fn(x):
        calls.append(x.shape[-1])
        if x.shape[-1] * x.shape[-2] > 120 * 120:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return x

    img = _image(150, 200)
    out, used = tiling.run_with_retry(
        fn, img, tile=0, overlap=4, multiple=1, device=torch.device("cpu"), notify=lines.append
    )
    assert used == 100 and len(lines) == 1 and "retrying with tile 100" in lines[0]
    assert max(calls[1:]) <= 120
    np.testing.assert_allclose(out, img, atol=1e-6)

    def always(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(DerainError, match="out of memory .* even with"):
        tiling.run_with_retry(always, img, tile=128, overlap=4, multiple=1, device=torch.device("cpu"), notify=lines.append)


def test_other_errors_are_not_retried():
    def broken(x):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        tiling.run_with_retry(broken, _image(20, 20), tile=0, overlap=0, multiple=1, device=torch.device("cpu"))


def test_auto_tile_from_free_memory(monkeypatch, models):
    monkeypatch.setattr(tiling, "free_memory", lambda device: 8 << 30)
    assert tiling.auto_tile(100, 100, device=torch.device("cpu"), bytes_per_pixel=4096, overlap=16) == 0
    monkeypatch.setattr(tiling, "free_memory", lambda device: 1 << 30)  # 1 GiB free
    side = tiling.auto_tile(4000, 6000, device=torch.device("cpu"), bytes_per_pixel=4096, overlap=16, multiple=8)
    assert side % 8 == 0 and 200 < side < 4000
    assert (side + 3 * 16) ** 2 * 4096 <= (1 << 30) * tiling.MEMORY_SHARE["cpu"]  # a tile with context fits
    # CUDA sizing reads the GPU's free memory, not RAM
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123 << 20, 8 << 30))
    assert devices.free_memory(torch.device("cuda")) == 123 << 20
    assert devices.available_ram() > 0
    # through the model: tiny memory -> tiles, and the tile used is reported
    model = models["conv"]
    img = _image(300, 300)
    monkeypatch.setattr(tiling, "free_memory", lambda device: 300 * 300 * 256 // 4)
    model.process(img)
    assert 0 < model.last_tile < 300


def test_tile_unsafe_model_prefers_whole_image(models, monkeypatch):
    model = models["norm"]
    assert model.plan_tile(200, 300, tile=0) == (0, 16)  # fits: whole image, whatever the statistics
    tile, overlap = model.plan_tile(500, 500, tile=32)  # explicit small tile: raised to min_tile
    assert tile == 96 and overlap == 16
    assert model.plan_tile(900, 900, tile=400) == (400, 50)  # wide fade for big tiles
    monkeypatch.setattr(tiling, "free_memory", lambda device: 1 << 20)
    tile, _ = model.plan_tile(2000, 2000, tile=0)
    assert tile >= 96


def test_devices(capsys, monkeypatch):
    assert devices.resolve_device("cpu") == torch.device("cpu")
    lines = []
    monkeypatch.setattr(devices, "cuda_built", lambda: True)  # a CUDA build, no GPU on this machine
    assert devices.resolve_device("auto", notify=lines.append) == torch.device("cpu")
    assert len(lines) == 1 and "CPU" in lines[0]  # the fallback is visible
    monkeypatch.setattr(devices, "cuda_built", lambda: False)  # a CPU-only torch: nothing to say
    assert devices.resolve_device("auto", notify=lines.append) == torch.device("cpu") and len(lines) == 1
    for bad, msg in [("cuda", "cuda"), ("cuda:3", "cuda"), ("gpu", "unknown device"), ("mps", "MPS")]:
        with pytest.raises(DerainError, match=msg):
            devices.resolve_device(bad)
    cpu = torch.device("cpu")
    with pytest.raises(DerainError, match="AMX or AVX512-BF16"):  # emulated bf16 would be slower than fp32
        devices.half_dtype(cpu, True, has_native_bf16=lambda: False)
    assert devices.half_dtype(cpu, True, has_native_bf16=lambda: True) is torch.bfloat16
    assert devices.half_dtype(cpu, False, has_native_bf16=lambda: False) is None
    with pytest.raises(DerainError, match="threads"):
        devices.set_threads(0)
    assert devices.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))


def test_load_model_errors(tmp_path, models):
    spec = make_spec()
    other = make_spec(name="other")
    wrong = save_random_weights(other, tmp_path / "other.safetensors")
    with pytest.raises(WeightsError, match="architecture 'other'"):
        load_model(spec, weights=wrong, device="cpu")
    # tensors of a wider net, metadata claiming the tiny config: refused, not half-loaded
    wide = spec.build({**spec.config(), "width": 16}).state_dict()
    save_weights(tmp_path / "t.safetensors", wide, architecture=spec.name, config=spec.config())
    with pytest.raises(WeightsError, match="do not fit"):
        load_model(spec, weights=tmp_path / "t.safetensors", device="cpu")
    with pytest.raises(DerainError, match="unknown model"):
        load_model("no-such-model", device="cpu")
    with pytest.raises(DerainError, match="variant"):
        load_model(spec, weights=wrong, variant="fancy", device="cpu")
    if not devices.cpu_has_native_bf16():
        with pytest.raises(DerainError, match="half"):
            load_model(spec, weights=save_random_weights(spec, tmp_path / "s.safetensors"), device="cpu", half=True)


def test_rainify_task(tmp_path):
    spec = make_spec()
    path = save_random_weights(spec, tmp_path / "w.safetensors")
    derain = load_model(spec, weights=path, device="cpu")
    rain = load_model(spec, weights=path, device="cpu", task="rainify")
    assert isinstance(rain, Derainer) and rain.net is not derain.net and rain.output_tag == "_rainy"
    assert len(list(rain.net.parameters())) < len(list(derain.net.parameters()))
    no_rain = make_spec(name="norain", rainify_net=None)
    with pytest.raises(DerainError, match="cannot render rain"):
        load_model(no_rain, weights=path, device="cpu", task="rainify")


def test_package_import_is_lazy():
    code = "import sys, derain_cli, derain_cli.cli; print('torch' in sys.modules); print(callable(derain_cli.load_model))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_auto_falls_back_when_cuda_fails_to_initialise(monkeypatch):
    real_zeros = torch.zeros

    def zeros(*args, device=None, **kw):
        if device is not None and torch.device(device).type == "cuda":
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        return real_zeros(*args, device=device, **kw)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "zeros", zeros)
    lines = []
    assert devices.resolve_device("auto", notify=lines.append).type == "cpu"
    assert lines == ["CUDA failed to initialise (CUDA driver version is insufficient for CUDA runtime version); "
                     "running on the CPU"]
    with pytest.raises(DerainError, match="failed to initialise"):
        devices.resolve_device("cuda:0")


def test_bf16_warning_only_where_bf16_is_emulated():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    warning = devices.bf16_warning(cpu, has_native_bf16=lambda: False)
    assert warning is not None and "--half" in warning and "\n" not in warning
    assert devices.bf16_warning(cpu, has_native_bf16=lambda: True) is None
    assert devices.bf16_warning(gpu, has_native_bf16=lambda: False) is None
    assert isinstance(devices.cpu_has_native_bf16(), bool)  # the real probe runs on any CPU
