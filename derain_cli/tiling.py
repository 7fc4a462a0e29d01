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

import math
from dataclasses import dataclass
from typing import Callable

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


def unit_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8/uint16/float32 array -> ``1 x 3 x H x W`` float32 tensor in [0, 1]."""
    scale = _scale_of(image.dtype)
    x = np.ascontiguousarray(image, np.float32)
    if scale != 1.0:
        x = x * np.float32(1.0 / scale)
    return torch.from_numpy(x).permute(2, 0, 1)[None]


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
) -> np.ndarray:
    """Apply ``fn`` tile by tile; returns ``H x W x 3`` ``dtype`` (float32 in [0, 1]; ``out`` reused if given).

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
                              clip=clip, progress=progress, dtype=dtype)
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

    for r, c, y in _tile_outputs(fn, image, rows, cols, multiple, origin, progress):
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
                  progress: Progress | None):
    """Yield ``(row span, column span, output)`` for every tile: the kept part, ``h x w x 3`` float32."""
    scale = _scale_of(image.dtype)
    if progress:
        progress(0, len(rows) * len(cols))  # before the first tile, which may compute a model's context
    for n, (r, c) in enumerate(((r, c) for r in rows for c in cols), 1):
        patch = image[r.src0 : r.src1, c.src0 : c.src1].astype(np.float32)
        if scale != 1.0:
            patch *= np.float32(1.0 / scale)
        x = pad_to_multiple(torch.from_numpy(patch).permute(2, 0, 1)[None], multiple)
        keep = (r.dst0 - r.src0, r.dst1 - r.src0, c.dst0 - c.src0, c.dst1 - c.src0)
        y = fn(x, (r.src0, c.src0), keep) if origin else fn(x)
        del x, patch
        yield r, c, y[0, :, keep[0] : keep[1], keep[2] : keep[3]].float().cpu().numpy().transpose(1, 2, 0)
        if progress:
            progress(n, len(rows) * len(cols))


def _run_cut_tiles(fn: TileFn, image: np.ndarray, *, tile: int, overlap: int, multiple: int, out: np.ndarray | None,
                   origin: bool, clip: bool, progress: Progress | None, dtype: np.dtype) -> np.ndarray:
    """:func:`run_tiles` with ``fade=False``: cores do not overlap, so each tile's output is final."""
    h, w = image.shape[:2]
    dtype = np.dtype(dtype)
    if out is None or out.dtype != dtype:
        out = np.zeros((h, w, 3), dtype)  # zero pages until tiles fill it
    rows = plan_axis(h, tile, overlap, multiple, fade=False)
    cols = plan_axis(w, tile, overlap, multiple, fade=False)
    for r, c, y in _tile_outputs(fn, image, rows, cols, multiple, origin, progress):
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
) -> tuple[np.ndarray, int]:
    """:func:`run_tiles`, halving the tile on out-of-memory; returns ``(result, tile used)``."""
    floor = max(MIN_TILE, min_tile, multiple)
    while True:
        try:
            return run_tiles(fn, image, tile=tile, overlap=overlap, multiple=multiple, origin=origin, clip=clip,
                             progress=progress, fade=fade, dtype=dtype), tile
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
