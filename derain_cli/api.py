"""The Python API the CLI is built on: load a model once, derain arrays or files.

>>> from derain_cli import load_model
>>> model = load_model("dualstage", device="cpu")
>>> clean = model.process(rainy_rgb_uint8)          # H x W x 3, same dtype back
>>> model.derain_file("photo.jpg")                  # writes photo_derained.jpg
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import devices, imageio, tiling
from .devices import Notify, say
from .errors import DerainError, WeightsError
from .registry import ModelSpec, Traits, UnknownModelError, get_spec

TASKS = ("derain", "rainify")


def _open_weights(spec: ModelSpec, weights: str | os.PathLike | None, entry_name: str | None = None):
    """``(state_dict, meta)``: an explicit file, else :mod:`derain_cli.weights` (bundled -> cache -> hub).

    An explicit file is checked against ``spec.name`` (its metadata must name
    that architecture); it need not be listed in ``weights.toml``.
    """
    if weights is not None:
        from .weightfile import load_weights

        state, meta = load_weights(weights, architecture=spec.name)
        return state, {**meta, "weights_path": str(weights), "weights_source": "file"}
    from .weights import open_weights

    return open_weights(entry_name or spec.name)


def _build(spec: ModelSpec, state: dict[str, Any], meta: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    config = meta.get("config")
    if not isinstance(config, dict):
        config = spec.config()
    try:
        bundle = spec.build(config)
    except Exception as exc:
        raise WeightsError(f"cannot build {spec.name} from the config in the weights file ({exc})") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}  # fp16 on disk
    try:
        bundle.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "tensor names or shapes differ"
        raise WeightsError(f"the weights do not fit {spec.name} with this config: {first}") from None
    return bundle, config


#: Flip axes of the self-ensemble (``--ensemble``): identity, horizontal, vertical, both.
#: ``--flips 2`` takes the first two (the photo and its left-right mirror).
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def flip_views(ensemble: bool | int) -> int:
    """How many flip views an ``ensemble`` argument asks for: False/1 -> 1, True -> 4, 2 or 4 as given."""
    if ensemble is True:
        return len(FLIPS)
    if ensemble in (0, 1):  # False too
        return 1
    if ensemble not in (2, 4):
        raise DerainError(f"--flips must be 1, 2 or 4, not {ensemble}")
    return int(ensemble)


#: Host bytes per pixel that averaging flip views adds (float32 sum and view): a 12 MP JPEG with
#: dualstage and --flips 2 peaked 0.38 GB above the same run without.
FLIP_VIEW_BYTES = 32

class Derainer:
    """A loaded model on a device, ready to derain (or rainify) images of any size.

    Attributes: ``spec`` (the :class:`ModelSpec`), ``config`` (the architecture
    config the weights were trained with), ``traits`` (the :class:`Traits` of that
    config, unless given), ``device``, ``net`` (the image-to-image
    ``nn.Module`` in eval mode), ``task``, ``variant``, ``dtype`` (autocast dtype
    or None for float32), ``meta`` (weights file metadata), ``ensemble`` (how many
    flip views of each image are averaged, 1 = off: more accurate, that many times slower).
    """

    def __init__(
        self,
        spec: ModelSpec,
        config: dict[str, Any],
        net: torch.nn.Module,
        device: torch.device,
        *,
        task: str = "derain",
        variant: str = "default",
        dtype: torch.dtype | None = None,
        meta: dict[str, Any] | None = None,
        notify: Notify = say,
        ensemble: bool | int = False,
        channels_last: bool = False,
        traits: Traits | None = None,
        work_size: int = 0,
        copy_only: bool = False,
    ):
        self.spec, self.config, self.net, self.device = spec, config, net, device
        self.traits = traits if traits is not None else spec.traits(config)
        self.task, self.variant, self.dtype = task, variant, dtype
        self.meta = meta or {}
        self.notify = notify
        self.ensemble = flip_views(ensemble)
        #: Feed the net channels_last tensors (its weights are stored so; see :func:`load_model`).
        self.channels_last = channels_last
        #: Called as ``progress(done, total)`` before the first tile and after each, in :meth:`process` (a progress bar),
        #: and as ``progress(done, total, "context")`` while a net computes its image-wide context.
        self.progress: tiling.Progress | None = None
        #: Long side in pixels at which larger images have their rain found (0 = their own size).
        self.work_size = work_size
        #: With :attr:`work_size`: derain only the copy, not also the photo at its own size (fast, fine rain stays).
        self.copy_only = copy_only
        #: Tile side and overlap used by the last :meth:`process` call (tile 0 = whole image).
        self.last_tile = 0
        self.last_overlap = 0

    def __repr__(self) -> str:
        return f"Derainer({self.spec.name!r}, task={self.task!r}, variant={self.variant!r}, device={str(self.device)!r})"

    @property
    def output_tag(self) -> str:
        """What default output names get after the stem: ``_derained`` or ``_rainy``."""
        return "_rainy" if self.task == "rainify" else "_derained"

    @property
    def dtype_name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).replace("torch.", "") + " autocast"

    # -- tensors ------------------------------------------------------------------
    def process_tensor(
        self, x: torch.Tensor, *, context: Any = None, origin: tuple[int, int] = (0, 0), clamp: bool = True,
        window: tuple[int, int, int, int] | None = None,
    ) -> torch.Tensor:
        """``B x 3 x H x W`` float in [0, 1] -> same, float32 on the model's device.

        Any H, W: the input is reflect-padded to the model's size multiple and the
        result cropped back. No tiling here (see :meth:`process`). With a ``context``
        (:meth:`tile_context`), ``x`` is the tile at ``origin`` of that image, one flip view, and
        only its ``window`` (rows i0:i1, columns j0:j1) need be computed;
        ``clamp=False`` keeps values outside [0, 1] for averaging views.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise DerainError(f"expected a B x 3 x H x W tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if min(h, w) < self.traits.min_size:
            raise DerainError(f"{self.spec.name} needs images of at least {self.traits.min_size} pixels a side, "
                              f"not {w}x{h}")
        lo, hi = self.traits.input_range
        with self._inference():
            x = self._to_net(x)
            if context is not None:
                y = self._forward(x, context=context, origin=origin, window=window)
            else:
                y = self._ensemble_forward(x) if self.ensemble > 1 else self._forward(x)
            y = y[..., :h, :w].float()
            if not bool(torch.isfinite(y).all()):  # clamping would hide it: Inf -> white, NaN -> 0 in uint8
                raise DerainError(f"{self.spec.name} returned NaN/Inf pixels (corrupt weights, or --half "
                                  "overflowing); nothing was written")
            if (lo, hi) != (0.0, 1.0):
                y = (y - lo) / (hi - lo)
            return y.clamp_(0.0, 1.0) if clamp else y

    @contextmanager
    def _inference(self):
        """Inference mode, under autocast when a half dtype was asked for."""
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        )
        with torch.inference_mode(), autocast:
            yield

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, padded to the size multiple, in the net's memory format and input range."""
        lo, hi = self.traits.input_range
        x = x.to(self.device, torch.float32)
        x = tiling.pad_to_multiple(x, self.traits.size_multiple)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        return x

    def _forward(self, x: torch.Tensor, **context: Any) -> torch.Tensor:
        y = self.net(x, **context)
        return y[0] if isinstance(y, (tuple, list)) else y

    def host_bytes(self, pixels: int) -> int:
        """The model's own peak host memory for a photo of ``pixels`` on the CPU (0 on a GPU): the whole
        image's activations up to the CPU tile budget; beyond, a shared context keeps its maps for the
        whole photo while one tile's activations come and go (checked against `derain run`'s peak
        memory at 12, 24 and 50 MP: docs/inference.md). Flip views are averaged in float arrays.
        With :attr:`work_size` the network sees the copy; the enlarged rain layer's rows and the bands
        come on top (sides of at most twice the square root of ``pixels`` assumed); unless
        :attr:`copy_only`, the photo at its own size too, while the copy's result waits in float32 at most.
        """
        if self.device.type != "cpu":
            return 0
        if not self.work_size:
            return self._whole_bytes(pixels)
        from .workscale import BAND

        long_side = 2 * math.isqrt(pixels)
        copy = self._whole_bytes(min(pixels, self.work_size ** 2)) + (self.work_size + 3 * BAND) * long_side * 12
        return copy if self.copy_only else max(copy, self._whole_bytes(pixels)) + pixels * 12

    def _whole_bytes(self, pixels: int) -> int:
        """:meth:`host_bytes` of the network on a whole photo of ``pixels``."""
        traits = self.traits
        whole = pixels * traits.bytes_per_pixel
        if whole <= tiling.CPU_BUDGET or not self.shares_context:
            model = min(whole, tiling.CPU_BUDGET)
        else:
            model = pixels * traits.context_bytes_per_pixel + tiling.CPU_SHARED_TILE ** 2 * traits.bytes_per_pixel
        views = pixels * FLIP_VIEW_BYTES if self.ensemble > 1 else 0
        return int(model + views)

    @property
    def shares_context(self) -> bool:
        """Whether the net computes its image-wide operations once per image for all tiles (``net.tile_context``)."""
        return callable(getattr(self.net, "tile_context", None))

    def tile_context(self, rgb: np.ndarray, tile: int) -> Any:
        """The net's per-image context for ``rgb`` (H x W x 3), computed in pieces of about ``tile`` pixels.

        An 8-bit photo goes in as it is (the net converts each piece it reads), not as a float copy.
        The net reports its steps to :attr:`progress` (on a 24 MP photo the context is 40% of the time).
        """
        progress = self.progress
        steps = (lambda done, total: progress(done, total, "context")) if progress else None
        with self._inference():
            if rgb.dtype == np.uint8 and self.traits.input_range == (0.0, 1.0) and self.traits.size_multiple == 1:
                x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(self.device)
            else:
                x = self._to_net(tiling.unit_tensor(rgb))
            return self.net.tile_context(x, tile, progress=steps)

    def _ensemble_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the model over the image and its horizontal, vertical and double flips (the first ``ensemble``).

        Flips (not 90-degree turns) because rain falls mostly downwards: a flipped rainy
        image is still a plausible one, a turned one has horizontal rain. The padding to
        the size multiple happened before, so every flip has a valid size.
        """
        total = None
        for dims in FLIPS[: self.ensemble]:
            y = self._forward(torch.flip(x, dims) if dims else x).float()
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total.add_(y)
        return total / self.ensemble

    # -- arrays -------------------------------------------------------------------
    def plan_tile(self, height: int, width: int, tile: int = 0, tile_overlap: int | None = None) -> tuple[int, int]:
        """``(tile, overlap)`` actually used for an image: resolves ``tile=0`` and tile-unsafe models."""
        if tile < 0:
            raise DerainError(f"--tile must be 0 (automatic) or a positive size, not {tile}")
        traits = self.traits
        overlap = traits.tile_margin if tile_overlap is None else tile_overlap
        if overlap < 0:
            raise DerainError(f"--tile-overlap must be >= 0, not {overlap}")
        if tile == 0:
            tile = tiling.auto_tile(
                height,
                width,
                device=self.device,
                bytes_per_pixel=traits.bytes_per_pixel * (0.6 if self.dtype is not None else 1.0),
                overlap=overlap,
                multiple=traits.size_multiple,
                min_tile=traits.min_tile,
            )
            if tile and self.shares_context and self.device.type == "cpu":
                tile = tiling.CPU_SHARED_TILE
        elif not traits.exact_tiles:
            tile = max(tile, traits.min_tile)  # global statistics need big tiles
        if tile and not traits.exact_tiles:
            overlap = max(overlap, tile // 8)  # wide fades hide tile-to-tile statistics
        if tile >= max(height, width):
            tile = 0
        return tile, overlap

    def process(self, rgb: np.ndarray, tile: int = 0, tile_overlap: int | None = None) -> np.ndarray:
        """Derain ``H x W x 3`` RGB (uint8, uint16 or float32 in [0, 1]); returns the same dtype.

        ``tile=0`` picks a tile size from free memory (whole image when it fits);
        on out-of-memory the tile is halved and the image retried. With :attr:`work_size`, an image
        with a longer side has its rain found on a copy that long too (only there with :attr:`copy_only`;
        :mod:`derain_cli.workscale` joins the two).
        """
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            shape = getattr(rgb, "shape", None)
            raise DerainError(f"expected an H x W x 3 RGB array, got {type(rgb).__name__} of shape {shape}")
        if rgb.dtype not in (np.uint8, np.uint16, np.float32):
            raise DerainError(f"images must be uint8, uint16 or float32 arrays, not {rgb.dtype}")
        if self.work_size:
            from .workscale import derain_at

            def whole(x: np.ndarray) -> np.ndarray:
                return self._process_whole(x, tile, tile_overlap)

            return derain_at(whole, rgb, self.work_size, full=None if self.copy_only else lambda: whole(rgb))
        return self._process_whole(rgb, tile, tile_overlap)

    def _process_whole(self, rgb: np.ndarray, tile: int, tile_overlap: int | None) -> np.ndarray:
        """:meth:`process` at the image's own size: whole, or in tiles."""
        tile, overlap = self.plan_tile(rgb.shape[0], rgb.shape[1], tile, tile_overlap)
        self.last_overlap = overlap
        if tile and self.shares_context:
            out, self.last_tile = self._process_shared(rgb, tile, overlap)
            return tiling.from_unit(out, rgb.dtype)  # as it is when the tiles wrote rgb's dtype
        out, self.last_tile = tiling.run_with_retry(
            self.process_tensor,
            rgb,
            tile=tile,
            overlap=overlap,
            multiple=self.traits.size_multiple,
            device=self.device,
            min_tile=self.traits.min_tile if not self.traits.exact_tiles else 0,
            notify=self.notify,
            progress=self.progress,
            dtype=rgb.dtype,
        )
        return out

    def _process_shared(self, rgb: np.ndarray, tile: int, overlap: int) -> tuple[np.ndarray, int]:
        """Tiles of a net with image-wide operations: each flip view gets its own context, then its tiles.

        The views run one after another (a context belongs to one view), so memory holds one
        context and two image-sized float arrays; like the whole-image ensemble, the mean is clamped, not the views.
        """
        total = None
        for dims in FLIPS[: self.ensemble]:
            axes = tuple(d - 2 for d in dims)  # tensor H, W -> array rows, columns
            view = np.flip(rgb, axes) if axes else rgb
            fn = _SharedContextTiles(self, view)
            out, tile = tiling.run_with_retry(
                fn, view, tile=tile, overlap=overlap, multiple=self.traits.size_multiple, device=self.device,
                notify=self.notify, origin=True, clip=self.ensemble == 1, progress=self.progress, fade=False,
                dtype=rgb.dtype if self.ensemble == 1 else np.float32,  # views are averaged in float
                workers=tiling.tile_workers(self.device),  # tiles share only the read-only context
            )
            del fn
            out = np.flip(out, axes) if axes else out
            if total is None:
                total = out if self.ensemble == 1 else out.copy()
            else:
                total += out
        if self.ensemble > 1:
            total *= np.float32(1.0 / self.ensemble)
            np.clip(total, 0.0, 1.0, out=total)
        return total, tile

    # -- files --------------------------------------------------------------------
    def derain_file(
        self,
        path: str | os.PathLike,
        out: str | os.PathLike | None = None,
        *,
        quality: int = 95,
        tile: int = 0,
        tile_overlap: int | None = None,
        compare: bool = False,
    ) -> Path:
        """Read, derain and write one photo (same format, depth, alpha, EXIF, ICC); returns the output path.

        ``out``: a file path, a folder, or None for ``<stem>_derained<suffix>`` next
        to the input (``_rainy`` for ``task="rainify"``). With ``compare``, also
        writes ``<output stem>_compare<suffix>``.
        """
        path = Path(path)
        target = resolve_output(path, out, tag=self.output_tag)
        photo = imageio.read_image(path)
        result = photo.with_pixels(self.process(photo.rgb, tile=tile, tile_overlap=tile_overlap))
        imageio.write_image(target, result, quality=quality, inputs=(path,))
        if compare:
            imageio.write_image(
                compare_path(target), imageio.side_by_side(photo, result), quality=quality, inputs=(path,)
            )
        return target


class _SharedContextTiles:
    """Tile function that computes the net's context on its first call and gives it to every tile.

    Computed lazily so that an out-of-memory while computing it is retried with smaller
    tiles like any other (:func:`tiling.run_with_retry`), and kept across such retries.
    """

    def __init__(self, derainer: Derainer, image: np.ndarray):
        self.derainer, self.image, self.context = derainer, image, None

    def __call__(self, x: torch.Tensor, origin: tuple[int, int], window: tuple[int, int, int, int]) -> torch.Tensor:
        if self.context is None:
            self.context = self.derainer.tile_context(self.image, tile=max(x.shape[-2:]))
        return self.derainer.process_tensor(x, context=self.context, origin=origin, clamp=self.derainer.ensemble == 1,
                                            window=window)


def compare_path(output: str | os.PathLike) -> Path:
    """Where ``--compare`` puts the before/after image for ``output``."""
    p = Path(output)
    return p.with_name(f"{p.stem}_compare{p.suffix}")


def resolve_output(path: str | os.PathLike, out: str | os.PathLike | None, tag: str = "_derained") -> Path:
    """Output file for ``path``: ``out`` itself if it names an image file, else the default name in ``out``."""
    if out is None:
        return imageio.default_output(path, tag=tag)
    out = Path(out)
    if out.is_dir() or out.suffix.lower() not in imageio.IMAGE_SUFFIXES:
        return imageio.default_output(path, out, tag=tag)
    return out


def _requested_spec(name: str | ModelSpec | None, weights, variant: str | None, task: str,
                    ensemble: bool | int) -> tuple[ModelSpec, str]:
    """The model and variant asked for, every cheap check done before a device or weights are touched."""
    from . import registry

    if isinstance(name, ModelSpec):
        spec = name
    else:
        try:
            spec = get_spec(name or registry.default_model())
        except UnknownModelError as exc:
            raise DerainError(str(exc)) from None
    flip_views(ensemble)  # a bad count fails before the weights are read
    if weights is None and isinstance(name, str) and "." in name:
        from .weights import entry

        entry(name)  # an unknown tag fails before a device is chosen
    variant = variant or spec.variants[0]
    if variant not in spec.variants:
        raise DerainError(f"model {spec.name!r} has no variant {variant!r}; choose one of {', '.join(spec.variants)}")
    if task == "rainify" and spec.rainify_net is None:
        raise DerainError(f"model {spec.name!r} cannot render rain; use a model with a rain generator (e.g. dcdgan)")
    return spec, variant


def _check_task(spec: ModelSpec, meta: dict[str, Any], task: str) -> None:
    """Refuse weights whose metadata says they were not trained for ``task``."""
    tasks = meta.get("tasks")
    if isinstance(tasks, list) and task not in tasks:
        where = meta.get("weights_path", "these weights")
        raise DerainError(
            f"{Path(where).name} ({spec.name}) was not trained to {task}, only to {', '.join(tasks)}"
            + ("; train the rain generator first (jrgr: derain train --stage 2)" if task == "rainify" else "")
        )


def _ready(net: torch.nn.Module, dev: torch.device) -> tuple[torch.nn.Module, bool]:
    """``net`` on ``dev`` for inference, and whether it runs channels_last."""
    net = net.to(dev).eval()
    # oneDNN's convolutions are faster channels_last on the CPU, most of all in bf16 (--half).
    channels_last = dev.type == "cpu" and os.environ.get("DERAIN_CHANNELS_LAST", "1") != "0"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, channels_last


def load_model(
    name: str | ModelSpec | None = None,
    *,
    weights: str | os.PathLike | None = None,
    variant: str | None = None,
    device: str | torch.device = "auto",
    threads: int | None = None,
    half: bool = False,
    task: str = "derain",
    notify: Notify = say,
    ensemble: bool | int = False,
    work_size: int = 0,
    copy_only: bool = False,
) -> Derainer:
    """Load a model by registry name (default :func:`registry.default_model`) or from a :class:`ModelSpec`.

    Weights come from ``weights`` (a .safetensors file) or the registry's
    resolution (bundled -> Hugging Face cache -> hub), sha256-checked.
    ``task="rainify"`` returns the clean-to-rainy network of models that have one.
    ``ensemble=True`` averages each image over its four flips (4x the time); ``ensemble=2``
    over the image and its left-right mirror (2x). ``work_size=N`` finds the rain of images longer
    than N pixels on a copy N pixels long as well as at their own size (``copy_only``: on the copy
    alone; :mod:`derain_cli.workscale`). A ``weights`` file ending in
    ``.onnx`` (``derain export --onnx``) runs with onnxruntime instead (:mod:`derain_cli.onnx_export`).
    """
    if task not in TASKS:
        raise DerainError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    check_work_size(work_size, copy_only)
    if weights is not None and Path(weights).suffix.lower() == ".onnx":
        from .onnx_export import load_onnx

        flip_views(ensemble)
        derainer = load_onnx(weights, name.name if isinstance(name, ModelSpec) else name, device=device,
                             threads=threads, half=half, task=task, notify=notify, ensemble=ensemble)
        derainer.work_size, derainer.copy_only = work_size, copy_only
        return derainer
    spec, variant = _requested_spec(name, weights, variant, task, ensemble)
    devices.set_threads(threads)
    dev = device if isinstance(device, torch.device) else devices.resolve_device(str(device), notify=notify)
    dtype = devices.half_dtype(dev, half)
    state, meta = _open_weights(spec, weights, name if isinstance(name, str) else None)
    _check_task(spec, meta, task)
    bundle, config = _build(spec, state, meta)
    del state
    if dtype is not None and not spec.traits(config).bf16:
        raise DerainError(f"{spec.name} gives unusable output in half precision; drop --half")
    net, channels_last = _ready(spec.rainify_net(bundle) if task == "rainify" else spec.derain_net(bundle, variant), dev)
    return Derainer(spec, config, net, dev, task=task, variant=variant, dtype=dtype, meta=meta, notify=notify,
                    ensemble=ensemble, channels_last=channels_last, work_size=work_size, copy_only=copy_only)


def check_work_size(work_size: int, copy_only: bool = False) -> None:
    """``work_size`` is 0 (off) or a long side the networks can work at; ``copy_only`` needs one."""
    from .workscale import MIN_WORK_SIZE

    if work_size != 0 and not (isinstance(work_size, int) and work_size >= MIN_WORK_SIZE):
        raise DerainError(f"--work-size must be 0 (off) or at least {MIN_WORK_SIZE} pixels, not {work_size}")
    if copy_only and not work_size:
        raise DerainError("--copy-only needs --work-size: it says to derain only the copy that long")


def derain_file(
    path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    model: str | ModelSpec | Derainer | None = None,
    quality: int = 95,
    tile: int = 0,
    tile_overlap: int | None = None,
    compare: bool = False,
    **load_kw: Any,
) -> Path:
    """One-call convenience: load ``model`` (or reuse a :class:`Derainer`) and derain one file."""
    derainer = model if isinstance(model, Derainer) else load_model(model, **load_kw)
    return derainer.derain_file(path, out, quality=quality, tile=tile, tile_overlap=tile_overlap, compare=compare)
