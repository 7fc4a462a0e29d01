"""Tiled inference for images of any size, with no seams.

Like Real-ESRGAN's tiler, the image is cut into cores of ``tile`` pixels and
each tile is run with ``overlap`` pixels of extra context on every inner side.
Unlike it, neighbouring tiles do not meet at a hard cut: each contributes over
its core widened by ``overlap // 2`` and the two are cross-faded with a
raised-cosine window. Every pixel a tile contributes still has at least
``overlap`` pixels of real context, so for a convolutional model whose
receptive-field margin is ``<= overlap`` the tiled result equals the untiled one
(up to float rounding); for deeper models the fade hides what differs.

Tile origins are multiples of the model's ``size_multiple`` (so strided models
see the same pixel phase as on the whole image) and only the bottom/right
border is reflect-padded, exactly as for the whole image. The result is
accumulated in one preallocated float32 array: memory is the image plus one tile.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .devices import Notify, free_memory, is_out_of_memory, release_memory, say
from .errors import DerainError
from .models.common import pad_to_multiple as _pad

#: ``fn`` maps a ``1 x 3 x h x w`` float32 tensor in [0, 1] (h, w multiples of
#: ``size_multiple``) to a tensor of the same shape. With ``origin=True`` it is also
#: given the tile's top-left ``(row, column)`` in the image, for models that take each
#: tile's part from something computed once on the whole image (see ``api.Derainer``),
#: and the window ``(i0, i1, j0, j1)`` of the tile that is kept: only that part must be right.
TileFn = Callable[..., torch.Tensor]
#: ``progress(done, total)`` before the first tile and after each; a model's image-wide context
#: (``api.Derainer``) reports its own steps as ``progress(done, total, "context")``.
Progress = Callable[..., None]

#: Smallest tile automatic sizing or OOM halving will go down to.
MIN_TILE = 64
#: Share of free memory automatic sizing may plan to use (activations are estimates).
MEMORY_SHARE = {"cuda": 0.7, "mps": 0.5, "cpu": 0.5}
#: On the CPU bigger tiles are not faster; stay friendly to the rest of the machine.
CPU_BUDGET = 2 << 30
#: Automatic CPU tile of models that share a per-image context (``api.Derainer.shares_context``): their
#: tiles need far less memory than the whole model, meet at hard cuts (only the context margin is
#: computed twice), and their full-resolution maps stay in the CPU's cache and in the allocator's
#: reused memory. dualstage.general on a 24 MP photo, 1 thread: 1024 -> 512 took the tiles from
#: 87 s to 63 s (with the hard cuts; page faults 22 M -> 8 M).
CPU_SHARED_TILE = 512
#: Most tiles run at once on the CPU (``workers``), each on an equal share of the threads: small
#: convolutions scale poorly inside one op, so at 2 threads two tiles on one thread each ran
#: dualstage's shared-context tiles of a 6 MP photo 1.19-1.30x faster than one tile on two (its
#: context's head tiles, with wider maps, ran slower that way and stay serial). Each tile in flight holds its maps.
MAX_TILE_WORKERS = 4


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _round_down(x: int, m: int) -> int:
    return (x // m) * m


@dataclass(frozen=True)
class Span:
    """One tile along one axis: read ``[src0, src1)``, add ``weights`` over ``[dst0, dst1)``."""

    src0: int
    src1: int
    dst0: int
    dst1: int
    weights: np.ndarray


def _ramp(n: int) -> np.ndarray:
    """Raised cosine rising over ``n`` samples; ``ramp + ramp[::-1] == 1``."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return 0.5 - 0.5 * np.cos(np.pi * t)


def plan_axis(length: int, tile: int, overlap: int, multiple: int = 1, fade: bool = True) -> list[Span]:
    """Split one axis into tiles (``tile <= 0`` or ``>= length``: one span for the whole axis).

    ``fade=False``: neighbours meet at a hard cut (each tile contributes its core only, still
    reading ``overlap`` pixels of context), for models whose tiles reproduce the whole image.
    """
    multiple = max(1, multiple)
    if tile <= 0 or tile >= length:
        return [Span(0, length, 0, length, np.ones(length, np.float32))]
    tile = max(multiple, _round_down(tile, multiple))
    # As many tiles as ``tile`` needs, of even size: no thin last tile that is mostly context.
    tile = min(tile, _round_up(-(-length // -(-length // tile)), multiple))
    half = min(overlap // 2, tile // 2) if fade else 0  # fade half-width
    context = overlap + half  # from a core edge to the edge of what the tile reads
    spans = []
    for core0 in range(0, length, tile):
        core1 = min(length, core0 + tile)
        dst0 = max(0, core0 - half) if core0 > 0 else 0
        dst1 = min(length, core1 + half) if core1 < length else length
        src0 = max(0, _round_down(core0 - context, multiple)) if core0 > 0 else 0
        src1 = min(length, core1 + context) if core1 < length else length
        src1 = min(length, src0 + _round_up(src1 - src0, multiple))  # extend with real pixels, not padding
        w = np.ones(dst1 - dst0, np.float64)
        if core0 > 0 and half:
            w[: 2 * half] *= _ramp(2 * half)[: dst1 - dst0]
        if core1 < length and half:
            n = dst1 - (core1 - half)
            w[-n:] *= _ramp(2 * half)[::-1][:n]
        spans.append(Span(src0, src1, dst0, dst1, w.astype(np.float32)))
    return spans


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom/right up to a multiple (replicate when too short): the output keeps the tile's origin."""
    return _pad(x, multiple, centre=False)[0]


def _scale_of(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype in (np.float32, np.float64):
        return 1.0
    raise DerainError(f"images must be uint8, uint16 or float32 arrays, not {dtype}")


def to_unit(image: np.ndarray) -> np.ndarray:
    """uint8/uint16/float32 array -> float32 array in [0, 1] (one copy for integers, none for contiguous float32)."""
    scale = _scale_of(image.dtype)
    if scale == 1.0:
        return np.ascontiguousarray(image, np.float32)
    x = image.astype(np.float32)
    x *= np.float32(1.0 / scale)
    return x


def unit_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8/uint16/float32 array -> ``1 x 3 x H x W`` float32 tensor in [0, 1]."""
    return torch.from_numpy(to_unit(image)).permute(2, 0, 1)[None]


def run_tiles(
    fn: TileFn,
    image: np.ndarray,
    *,
    tile: int,
    overlap: int,
    multiple: int = 1,
    out: np.ndarray | None = None,
    origin: bool = False,
    clip: bool = True,
    progress: Progress | None = None,
    fade: bool = True,
    dtype: np.dtype = np.float32,
    workers: int = 1,
) -> np.ndarray:
    """Apply ``fn`` tile by tile; returns ``H x W x 3`` ``dtype`` (float32 in [0, 1]; ``out`` reused if given).

    ``workers > 1`` runs that many tiles at once after the first (which may compute a model's
    context with all threads), splitting the threads among them; ``fn`` must then be thread-safe.

    ``clip=False`` leaves values outside [0, 1], for callers that average several results first.
    ``fade=False`` cuts between tiles instead of cross-fading (see :func:`plan_axis`): for models
    whose tiles agree with the whole image, so that the fade band is not computed twice; each tile
    is then written once, already in ``dtype`` (a 24 MP photo needs no float copy, nor a pass over it).
    A new ``out`` is left to the allocator's zero pages, so a 24 MP result only takes memory as
    tiles fill it (a model's context computed on the first tile does not have it to share).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise DerainError(f"expected an H x W x 3 image, got shape {tuple(image.shape)}")
    if not fade:
        return _run_cut_tiles(fn, image, tile=tile, overlap=overlap, multiple=multiple, out=out, origin=origin,
                              clip=clip, progress=progress, dtype=dtype, workers=workers)
    h, w = image.shape[:2]
    if out is None:
        out = np.zeros((h, w, 3), np.float32)
    else:
        out.fill(0.0)
    rows = plan_axis(h, tile, overlap, multiple, fade)
    cols = plan_axis(w, tile, overlap, multiple, fade)
    row_sum = np.zeros(h, np.float64)
    col_sum = np.zeros(w, np.float64)
    for r in rows:
        row_sum[r.dst0 : r.dst1] += r.weights
    for c in cols:
        col_sum[c.dst0 : c.dst1] += c.weights

    for r, c, y in _tile_outputs(fn, image, rows, cols, multiple, origin, progress, workers):
        y *= r.weights[:, None, None]
        y *= c.weights[None, :, None]
        out[r.dst0 : r.dst1, c.dst0 : c.dst1] += y

    inv_col = (1.0 / col_sum).astype(np.float32)[None, :, None]
    for y0 in range(0, h, 256):  # normalise in row chunks: no image-sized temporaries
        block = out[y0 : y0 + 256]
        block *= (1.0 / row_sum[y0 : y0 + 256]).astype(np.float32)[:, None, None] * inv_col
        if clip:
            np.clip(block, 0.0, 1.0, out=block)
    return from_unit(out, dtype)


def _tile_outputs(fn: TileFn, image: np.ndarray, rows: list[Span], cols: list[Span], multiple: int, origin: bool,
                  progress: Progress | None, workers: int = 1) -> Iterator[tuple[Span, Span, np.ndarray]]:
    """Yield ``(row span, column span, output)`` for every tile in order: the kept part, ``h x w x 3`` float32."""
    scale = _scale_of(image.dtype)
    spans = [(r, c) for r in rows for c in cols]

    def run(r: Span, c: Span) -> np.ndarray:
        # a copy, not to_unit's view of float32: the model never holds the caller's array
        patch = image[r.src0 : r.src1, c.src0 : c.src1].astype(np.float32)
        if scale != 1.0:
            patch *= np.float32(1.0 / scale)
        x = pad_to_multiple(torch.from_numpy(patch).permute(2, 0, 1)[None], multiple)
        keep = (r.dst0 - r.src0, r.dst1 - r.src0, c.dst0 - c.src0, c.dst1 - c.src0)
        y = fn(x, (r.src0, c.src0), keep) if origin else fn(x)
        return y[0, :, keep[0] : keep[1], keep[2] : keep[3]].float().cpu().numpy().transpose(1, 2, 0)

    if progress:
        progress(0, len(spans))  # before the first tile, which may compute a model's context
    first = (run(r, c) for r, c in spans[:1])  # alone: a model's context is computed with all threads
    rest = parallel_map(run, spans[1:], workers)
    try:
        for n, y in enumerate(itertools.chain(first, rest), 1):
            yield (*spans[n - 1], y)
            del y
            if progress:
                progress(n, len(spans))
    finally:
        rest.close()  # a consumer that stops early still gets its threads back


def parallel_map(run: Callable[..., Any], items: list[tuple], workers: int) -> Iterator[Any]:
    """``run(*item)`` for each item, results in order; with ``workers > 1`` that many at once (at most
    twice as many results waiting), each worker on ``threads // workers`` threads, restored afterwards.

    For tiles that only read what they share: the caller's thread keeps every write and progress report.
    """
    if workers <= 1 or len(items) < 2:
        yield from (run(*item) for item in items)
        return
    run = _in_callers_modes(run)
    with _threads_per_worker(workers), ThreadPoolExecutor(workers, thread_name_prefix="derain-tile") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(run, *item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _in_callers_modes(run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` under the calling thread's grad, inference and autocast modes, which are per thread in torch."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    casts = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]

    def wrapped(*item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), ExitStack() as stack:
            for device, dtype in casts:
                stack.enter_context(torch.autocast(device, dtype=dtype))
            return run(*item)

    return wrapped


@contextmanager
def _threads_per_worker(workers: int):
    """torch's intra-op threads split among ``workers`` (threads created inside take the new count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tile_workers(device: torch.device) -> int:
    """How many tiles to run at once: on the CPU one per thread up to :data:`MAX_TILE_WORKERS`, elsewhere one."""
    return min(torch.get_num_threads(), MAX_TILE_WORKERS) if device.type == "cpu" else 1


def _run_cut_tiles(fn: TileFn, image: np.ndarray, *, tile: int, overlap: int, multiple: int, out: np.ndarray | None,
                   origin: bool, clip: bool, progress: Progress | None, dtype: np.dtype, workers: int) -> np.ndarray:
    """:func:`run_tiles` with ``fade=False``: cores do not overlap, so each tile's output is final."""
    h, w = image.shape[:2]
    dtype = np.dtype(dtype)
    if out is None or out.dtype != dtype:
        out = np.zeros((h, w, 3), dtype)  # zero pages until tiles fill it
    rows = plan_axis(h, tile, overlap, multiple, fade=False)
    cols = plan_axis(w, tile, overlap, multiple, fade=False)
    for r, c, y in _tile_outputs(fn, image, rows, cols, multiple, origin, progress, workers):
        if clip:
            np.clip(y, 0.0, 1.0, out=y)
        out[r.dst0 : r.dst1, c.dst0 : c.dst1] = from_unit(y, dtype)
    return out


def from_unit(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float [0, 1] -> ``dtype`` (rounded), converted in row chunks to bound memory; ``dtype`` already: as it is."""
    dtype = np.dtype(dtype)
    if dtype == np.float32 or img.dtype == dtype:
        return img
    scale = _scale_of(dtype)
    res = np.empty(img.shape, dtype)
    for y0 in range(0, img.shape[0], 256):
        res[y0 : y0 + 256] = np.rint(img[y0 : y0 + 256] * np.float32(scale))
    return res


def auto_tile(
    height: int,
    width: int,
    *,
    device: torch.device,
    bytes_per_pixel: float,
    overlap: int,
    multiple: int = 1,
    min_tile: int = 0,
) -> int:
    """Tile side for ``--tile 0``: 0 (whole image) if it fits in free memory, else the largest that does."""
    share = MEMORY_SHARE.get(device.type, 0.5)
    budget = free_memory(device) * share
    if device.type == "cpu":
        budget = min(budget, CPU_BUDGET)
    padded = _round_up(height, multiple) * _round_up(width, multiple)
    if padded * bytes_per_pixel <= budget:
        return 0
    side = int(math.sqrt(budget / bytes_per_pixel)) - 3 * overlap
    side = max(side, MIN_TILE, min_tile)
    return max(multiple, _round_down(side, multiple))


def run_with_retry(
    fn: TileFn,
    image: np.ndarray,
    *,
    tile: int,
    overlap: int,
    multiple: int,
    device: torch.device,
    min_tile: int = 0,
    notify: Notify = say,
    origin: bool = False,
    clip: bool = True,
    progress: Progress | None = None,
    fade: bool = True,
    dtype: np.dtype = np.float32,
    workers: int = 1,
) -> tuple[np.ndarray, int]:
    """:func:`run_tiles`, halving the tile on out-of-memory; returns ``(result, tile used)``."""
    floor = max(MIN_TILE, min_tile, multiple)
    while True:
        try:
            return run_tiles(fn, image, tile=tile, overlap=overlap, multiple=multiple, origin=origin, clip=clip,
                             progress=progress, fade=fade, dtype=dtype, workers=workers), tile
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            del exc
            release_memory(device)
            current = tile if tile > 0 else max(image.shape[:2])
            smaller = _round_down(current // 2, multiple)
            if smaller < floor:
                raise DerainError(
                    f"out of memory on {device} even with {current}-pixel tiles; "
                    "close other programs, or try --device cpu"
                ) from None
            notify(f"out of memory on {device} with tile {current or 'whole image'}; retrying with tile {smaller}")
            tile = smaller
