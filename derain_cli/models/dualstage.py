"""dualstage: dual-stage deraining with a rain-streak mask and non-local (clustered) attention.

Hou et al., "Dual-stage deraining network based on mask and non-local attention" (2026).
The paper gives the ideas, not the layers; this module fills them in the way the field does:

* Stage 1 (rain-streak suppression): a rain-streak mask from morphology (a white
  top-hat keeps thin bright structures, then an opening along short line elements at
  several orientations keeps only elongated ones, i.e. streaks rather than dots, texture
  or plain edges), and mask attention: features at masked positions are suppressed by a
  learned per-channel factor and every block (at half resolution) is gated by the mask.
  Outputs a coarse image.
* Stage 2 (detail reconstruction): at quarter resolution (pixel-unshuffle), blocks alternate
  non-local cluster attention (k-means on features, tokens sorted by cluster so each
  window holds similar pixels from anywhere in the image, window attention, unsort) with
  shifted-window attention; pixel-shuffle restores full resolution.

Both stages are supervised (Charbonnier on each, plus an edge term on the final image).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Card, ModelSpec, Tiling, Training, Traits, register_model
from .common import (FullResRefiner, ResBlock, VeilHead, box_extreme, cat_channels, crop_to_box, pad_to_multiple,
                     shifted_extreme)

# ---------------------------------------------------------------------------- mask


def line_offsets(length: int, angle_deg: float) -> list[tuple[int, int]]:
    """Pixel offsets of a centred line structuring element."""
    r = (length - 1) / 2
    a = math.radians(angle_deg)
    pts = {(round(t * math.sin(a)), round(t * math.cos(a))) for t in torch.linspace(-r, r, length).tolist()}
    return sorted(pts)


#: Orientations (degrees from horizontal) of the line openings that keep rain-like streaks.
RAIN_ANGLES = (60.0, 75.0, 90.0, 105.0, 120.0)


def rain_mask(rgb: torch.Tensor, *, tophat: int = 5, line: int = 7, angles: tuple[float, ...] = RAIN_ANGLES,
              threshold: float = 0.03, softness: float = 0.01, tolerance: int = 1) -> torch.Tensor:
    """Soft rain-streak mask in [0, 1] (B x 1 x H x W) from morphology on the luminance.

    White top-hat (Y minus its opening by a ``tophat`` square, as min/max-pooling)
    keeps bright structures thinner than the square; a step edge survives the opening
    and so gives no response. The top-hat is then opened along ``line``-long segments
    at rain-like orientations and the maximum taken: only elongated structures remain.
    A one-pixel-wide streak is a staircase on the pixel grid, so the segments are fitted
    inside the top-hat dilated by ``tolerance`` pixels, and the result is capped by the
    undilated top-hat so the mask stays as thin as the streak.
    """
    y = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    p = tophat // 2
    eroded = box_extreme(F.pad(y, (p, p, p, p), mode="replicate"), tophat, torch.minimum)
    opened = box_extreme(F.pad(eroded, (p, p, p, p), mode="replicate"), tophat, torch.maximum)
    th = (y - opened).clamp_min(0)
    # Replicated borders give the same maximum as max-pooling's implicit -inf padding.
    t = tolerance
    loose = box_extreme(F.pad(th, (t, t, t, t), mode="replicate"), 2 * t + 1, torch.maximum) if t else th
    best = torch.zeros_like(th)
    for ang in angles:
        offs = line_offsets(line, ang)
        ero = shifted_extreme(loose, offs, torch.minimum)
        dil = shifted_extreme(ero, [(-dy, -dx) for dy, dx in offs], torch.maximum)
        best = torch.maximum(best, dil)
    best = torch.minimum(best, th)
    return torch.sigmoid((best - threshold) / softness)


# -------------------------------------------------------------------------- stage 1


class UnshuffleConv(nn.Sequential):
    """Pixel-unshuffle by ``r``, then a 1x1 conv, computed as one r x r conv with stride r.

    The same map (the 1x1 conv's weights, reshaped) and the same parameter names as
    ``nn.Sequential(nn.PixelUnshuffle(r), nn.Conv2d(r * r * C, out, 1))``, so earlier weight
    files load unchanged; oneDNN runs the strided conv about 4x faster than the pair.
    The unshuffle layer is kept (never called) for those names and to say what this computes.
    """

    def __init__(self, r: int, in_ch: int, out_ch: int):
        super().__init__(nn.PixelUnshuffle(r), nn.Conv2d(r * r * in_ch, out_ch, 1))

    def forward(self, x):
        r, conv = self[0].downscale_factor, self[1]
        weight = conv.weight.reshape(conv.out_channels, conv.in_channels // (r * r), r, r)
        return F.conv2d(x, weight, conv.bias, stride=r)


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` (odd sides floored) as a reshape and max: the same values, faster on the CPU."""
    b, c, h, w = x.shape
    x = x[..., : h - h % 2, : w - w % 2]
    return x.reshape(b, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))


class MaskAttentionBlock(nn.Module):
    """Residual block whose update is gated by the features and the rain mask."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1))
        self.gate = nn.Conv2d(ch + 1, ch, 1)

    @torch.no_grad()
    def start_as_identity(self) -> None:
        """Zero the body's last conv: a block added to a trained stage first changes nothing."""
        self.body[-1].weight.zero_()
        self.body[-1].bias.zero_()

    def forward(self, x, mask):
        h = self.body(x)
        return x + h * torch.sigmoid(self.gate(cat_channels([h, mask])))


class Stage1(nn.Module):
    """Full-resolution head, mask-attention blocks at half resolution, rain layer out."""

    def __init__(self, ch: int, width: int, blocks: int):
        super().__init__()
        self.head = nn.Conv2d(4, ch, 3, padding=1)
        # Learned per-channel suppression of rain-covered positions (sigmoid -> 0..1).
        self.suppress = nn.Parameter(torch.zeros(1, ch, 1, 1))
        self.down = UnshuffleConv(2, ch, width)
        self.blocks = nn.ModuleList(MaskAttentionBlock(width) for _ in range(blocks))
        self.up = nn.Sequential(nn.Conv2d(width, 4 * ch, 1), nn.PixelShuffle(2))
        self.tail = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x, mask):
        f = self.features(x, mask)
        return self.finish(x, f, self.run_blocks(f, mask))

    def features(self, x, mask):
        """Full-resolution features with rain suppressed (local, 1 pixel beyond the mask's margin)."""
        f = self.head(cat_channels([x, mask]))
        # f * (1 - s * mask) as f - (f * mask) * s: no 16-channel factor map in the mask's (NCHW) layout,
        # and in the conv dtype: fp32 would turn every later feature map fp32 under bf16 autocast.
        return torch.addcmul(f, f * mask.to(f.dtype), torch.sigmoid(self.suppress).to(f.dtype), value=-1)

    def run_blocks(self, f, mask):
        """The half-resolution mask-attention blocks: most of this stage's time."""
        g = self.down(f)
        m2 = max_pool2(mask).to(g.dtype)  # once here, not in every block's concatenation
        for blk in self.blocks:
            g = blk(g, m2)
        return g

    def finish(self, x, f, g):
        """The coarse image and the features stage 2 gets, from the blocks' result ``g``."""
        f = f + self.up(g)
        return x - self.tail(f), f


# -------------------------------------------------------------------------- stage 2


class WindowMSA(nn.Module):
    """Multi-head self-attention over groups of tokens (B*, T, C)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, t):
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


def _windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, ws * ws, c)


def _unwindows(t: torch.Tensor, b: int, c: int, h: int, w: int, ws: int) -> torch.Tensor:
    x = t.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h, w)


def _token_rows(order: torch.Tensor) -> torch.Tensor:
    """A ``B x N`` permutation as rows of the ``B*N x C`` token matrix: ``index_select`` on those is
    several times faster than ``gather`` with an index expanded over the channels."""
    b, n = order.shape
    return (order + torch.arange(0, b * n, n, device=order.device)[:, None]).reshape(-1)


def kmeans_order(tokens: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Permutation (B x N) that groups tokens by k-means cluster of their normalised features.

    Spherical k-means without a normalised copy of the tokens: a token's nearest centroid by
    cosine is its largest dot product (its norm is a positive factor), and the centroids are
    sums of unit tokens, i.e. of tokens weighted by their inverse norms. On a 24 MP photo's
    map (1.5 M tokens) the copy and its re-reads were most of the time.
    """
    with torch.no_grad():
        t = tokens.float()
        b, n, _ = t.shape
        inv = t.norm(dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()  # as F.normalize's eps
        idx = torch.linspace(0, n - 1, k, device=t.device).long()
        cent = t[:, idx] * inv[:, idx]
        for _ in range(iters):
            assign = torch.bmm(t, cent.transpose(1, 2)).argmax(-1)
            weights = F.one_hot(assign, k).to(t.dtype) * inv
            cent = F.normalize(torch.bmm(weights.transpose(1, 2), t) + 1e-6 * cent, dim=-1)
        assign = torch.bmm(t, cent.transpose(1, 2)).argmax(-1)
        key = assign * n + torch.arange(n, device=t.device)  # a stable sort by cluster (ONNX has no stable sort)
        return key.argsort(dim=1)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: window attention (plain, shifted or clustered) + conv FFN."""

    def __init__(self, dim: int, heads: int, window: int, kind: str, clusters: int, kmeans_iters: int):
        super().__init__()
        self.kind, self.window, self.clusters, self.iters = kind, window, clusters, kmeans_iters
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = WindowMSA(dim, heads)
        self.norm2 = nn.GroupNorm(1, dim)
        hidden = dim * 2
        self.ffn = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
                                 nn.GELU(), nn.Conv2d(hidden, dim, 1))

    @torch.no_grad()
    def start_as_identity(self) -> None:
        """Zero both residual branches' last layers: a block added to a trained stack first changes nothing."""
        for layer in (self.attn.proj, self.ffn[-1]):
            layer.weight.zero_()
            layer.bias.zero_()

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm1(x)
        ws = self.window
        if self.kind == "cluster":
            t = y.flatten(2).transpose(1, 2)  # B, N, C
            n = t.shape[1]
            rows = _token_rows(kmeans_order(t, self.clusters, self.iters))
            ts = t.reshape(b * n, c).index_select(0, rows).reshape(b, n, c)
            g = ws * ws
            pad = (-n) % g
            if pad:
                ts = torch.cat([ts, ts[:, -1:].expand(-1, pad, -1)], 1)
            out = self.attn(ts.reshape(-1, g, c)).reshape(b, n + pad, c)[:, :n]
            res = torch.empty_like(out).reshape(b * n, c).index_copy_(0, rows, out.reshape(b * n, c))
            y = res.reshape(b, n, c).transpose(1, 2).reshape(b, c, h, w)
        else:
            shift = ws // 2 if self.kind == "shifted" else 0
            if shift:
                y = torch.roll(y, (-shift, -shift), (2, 3))
            y = _unwindows(self.attn(_windows(y, ws)), b, c, h, w, ws)
            if shift:
                y = torch.roll(y, (shift, shift), (2, 3))
        x = x + y
        return x + self.ffn(self.norm2(x))

    def forward_lean(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """:meth:`forward` on one big map (batch 1) with one or two map-sized buffers, updating ``x`` in place.

        The same operations, image-wide where they are (GroupNorm, k-means), but attention and
        the FFN run on about ``chunk`` tokens at a time: on a 12 MP photo's map the plain
        forward peaks at 2.5 GB, this at a third of that.
        """
        b, c, h, w = x.shape
        y = self.norm1(x)
        ws = self.window
        if self.kind == "cluster":
            t = y.flatten(2).transpose(1, 2)[0]  # N x C, a view of y
            n, g = t.shape[0], ws * ws
            rows = kmeans_order(t[None], self.clusters, self.iters)[0]
            out = x.flatten(2).transpose(1, 2)[0]  # N x C, a view of x: each group's result is added in place
            step = max(1, chunk // g) * g
            for s in range(0, n, step):
                idx = rows[s:s + step]
                piece = t.index_select(0, idx)
                size = piece.shape[0]
                if size % g:  # the last group, filled up with the last token as in forward()
                    piece = torch.cat([piece, piece[-1:].expand((-size) % g, -1)], 0)
                out.index_add_(0, idx, self.attn(piece.reshape(-1, g, c)).reshape(-1, c)[:size])
            del rows
        else:
            shift = ws // 2 if self.kind == "shifted" else 0
            rows = max(1, chunk // (w * ws)) * ws
            for r in range(0, h, rows):  # bands of window rows of the rolled map
                idx = (torch.arange(r, min(h, r + rows), device=x.device) + shift) % h
                band = y.index_select(2, idx)
                if shift:
                    band = torch.roll(band, -shift, 3)
                band = _unwindows(self.attn(_windows(band, ws)), b, c, band.shape[2], w, ws)
                if shift:
                    band = torch.roll(band, shift, 3)
                x.index_add_(2, idx, band)
        del y
        z = self.norm2(x)
        side = max(8, math.isqrt(chunk))  # square blocks: the 3x3 conv's one pixel of context costs least
        for r in range(0, h, side):
            for s in range(0, w, side):
                a0, a1, b0, b1 = max(0, r - 1), min(h, r + side + 1), max(0, s - 1), min(w, s + side + 1)
                x[..., r:r + side, s:s + side] += \
                    self.ffn(z[..., a0:a1, b0:b1])[..., r - a0:r - a0 + side, s - b0:s - b0 + side]
        return x


class Stage2(nn.Module):
    """Attention at quarter resolution (pixel-unshuffle by 4), pixel-shuffle back, refine."""

    def __init__(self, ch: int, dim: int, depth: int, heads: int, window: int, clusters: int, kmeans_iters: int):
        super().__init__()
        self.head = nn.Conv2d(6, ch, 3, padding=1)
        self.down = UnshuffleConv(4, ch, dim)
        kinds = ["cluster", "shifted"]
        self.blocks = nn.Sequential(*[AttentionBlock(dim, heads, window, kinds[i % 2], clusters, kmeans_iters)
                                      for i in range(depth)])
        self.up = nn.Sequential(nn.Conv2d(dim, 16 * ch, 1), nn.PixelShuffle(4))
        self.refine = ResBlock(ch)
        self.tail = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, coarse, x, f1):
        f = self.features(coarse, x, f1)
        return self.finish(coarse, f, self.blocks(self.down(f)))

    def features(self, coarse, x, f1):
        """Full-resolution features before the attention (local: computable tile by tile)."""
        return self.head(torch.cat([coarse, x], 1)) + f1

    def finish(self, coarse, f, g):
        """The output from the features and the attention blocks' result ``g`` (local again)."""
        f = self.refine(f + self.up(g))
        return coarse + self.tail(f)


#: Stage 2's full-resolution features and stage 1's coarse image are kept in the tile context in
#: float32 while they take at most this much memory (a 7 MP photo); beyond, in float16 (half the
#: bytes: in float32 a 24 MP photo passes 3 GB; rounding 2^-11 of each value). Tiles then run only
#: stage 2's last layers and the refiner: computing the head again in every tile cost a twentieth of the time.
KEEP_FP32_BYTES = 512 << 20
#: Largest head tile of :meth:`DualStageNet.tile_context`: stage 1's blocks slow down on bigger maps (CPU cache).
CONTEXT_STEP = 512
#: Rows of the full-resolution refiner's bands in :meth:`DualStageNet.forward_tile` (see ``_refine_in_bands``).
REFINE_BAND = 192
#: Tokens the attention blocks handle at a time in :meth:`DualStageNet.tile_context`.
LEAN_CHUNK = 1 << 13


@dataclass(frozen=True)
class TileContext:
    """What every tile of one image shares: the image-wide attention's output, and what it was computed from."""

    g: torch.Tensor  # 1 x dim x Hp/4 x Wp/4, over the whole padded image
    box: tuple[int, int, int, int]  # (top, left, h, w) of the image inside the padded one
    padded: tuple[int, int]  # (Hp, Wp)
    mode: str  # how the whole image was padded: reflect or replicate
    #: 1 x channels x Hp x Wp: stage 2's features before the attention (computed for ``g`` anyway),
    #: kept so that tiles do not run the head again (float16 beyond ``KEEP_FP32_BYTES``).
    f: torch.Tensor
    #: 1 x 3 x Hp x Wp: stage 1's coarse image, which stage 2's output adds to (same dtype as ``f``).
    coarse: torch.Tensor
    #: 1 x 4 x H/s x W/s: the veil head's correction map over the whole (unpadded) image.
    veil: torch.Tensor | None = None


def _mask_margin(cfg: dict) -> int:
    """Receptive-field margin of :func:`rain_mask`: the top-hat's opening, the tolerance, the line opening."""
    reach = max(max(abs(dy), abs(dx)) for a in RAIN_ANGLES for dy, dx in line_offsets(cfg["line"], a))
    return 2 * (cfg["tophat"] // 2) + cfg["mask_tolerance"] + 2 * reach


def head_margins(cfg: dict) -> tuple[int, int]:
    """``(crop, blocks)``: context (multiples of 4) a head tile of :meth:`DualStageNet.tile_context` reads
    around its core, and what it still keeps when stage 1's blocks run.

    The blocks reach 2 half-resolution pixels each (4 at full resolution), stage 1's tail and stage 2's
    head one more each (checked by ``tests/test_dualstage.py``). Only the mask and stage 1's head need
    the wider crop: the blocks, most of the head's time, run on the narrower one.
    """
    blocks = -(-(4 * cfg["stage1_blocks"] + 2) // 4) * 4
    return blocks + -(-(_mask_margin(cfg) + 3) // 4) * 4, blocks


def local_margins(cfg: dict) -> tuple[int, int]:
    """``(before, refiner)``: receptive-field margins of a tile's work, all of it after the context.

    ``before`` covers stage 2's refine block and tail (its pixel-shuffle is aligned on the
    4-pixel grid), ``refiner`` the full-resolution refiner's convs.
    """
    return 3, 2 + 2 * cfg.get("fullres_blocks", 0) if cfg.get("fullres_blocks", 0) else 0


def context_bytes_per_pixel(cfg: dict) -> float:
    """What :meth:`DualStageNet.tile_context` keeps per image pixel on a big photo: stage 2's features and
    the coarse image in float16, the attention's quarter-resolution map in float32 (54 for the shipped
    weights; below ``KEEP_FP32_BYTES`` the float32 maps take at most 256 MiB more). Widths a config
    lacks take the default preset's values: here, not for every key in ``ModelSpec.traits``, since an
    older file's missing ``fullres_blocks`` means no refiner, not the preset's."""
    cfg = {**PRESETS["cpu"], **cfg}
    return 2 * (cfg["channels"] + 3) + 4 * cfg["dim"] / 16


def tile_margin(cfg: dict) -> int:
    """Context a tile needs on each side: :func:`local_margins` and up to 3 pixels given up to meet the
    quarter-resolution grid, rounded up to a multiple of 4."""
    return -(-(sum(local_margins(cfg)) + 3) // 4) * 4


class DualStageNet(nn.Module):
    """Rainy image in [0, 1] -> derained image; ``forward_stages`` also returns the coarse image."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.stage1 = Stage1(cfg["channels"], cfg["stage1_width"], cfg["stage1_blocks"])
        self.stage2 = Stage2(cfg["channels"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["window"],
                             cfg["clusters"], cfg["kmeans_iters"])
        self.multiple = 4 * cfg["window"]
        self.fullres = FullResRefiner.from_config(cfg)
        self.veil = VeilHead.from_config(cfg)

    def mask(self, x):
        c = self.cfg
        return rain_mask(x, tophat=c["tophat"], line=c["line"], threshold=c["mask_threshold"],
                         softness=c["mask_softness"], tolerance=c["mask_tolerance"])

    def forward_stages(self, x):
        if self.veil is not None:
            x = self.veil(x)
        xp, box = pad_to_multiple(x, self.multiple)
        m = self.mask(xp)
        coarse, f1 = self.stage1(xp, m)
        coarse, final = crop_to_box(coarse, box), crop_to_box(self.stage2(coarse, xp, f1), box)
        if self.fullres is not None:
            # Cropped first: the padding is there for the attention windows, and at full
            # resolution it would cost the refiner 17% more pixels on a 481x321 photo (512x352).
            final = self.fullres(x, final)
        return coarse, final

    def forward(self, x, context: "TileContext | None" = None, origin: tuple[int, int] = (0, 0), stages: bool = False,
                window: tuple[int, int, int, int] | None = None):
        """The derained image; with a ``context`` (:meth:`tile_context`), of the tile of its image at ``origin``
        (exact over ``window``, see :meth:`forward_tile`).

        ``stages=True`` returns ``(coarse, final)`` for training: through ``forward`` so that a
        DistributedDataParallel wrapper's forward runs and the gradients are all-reduced.
        """
        if context is not None:
            return self.forward_tile(x, context, origin, window)
        if stages:
            return self.forward_stages(x)
        return self.forward_stages(x)[1]

    # -- tiles that agree with the whole image --------------------------------------------
    # Everything but stage 2's attention blocks is convolutional. The blocks are not: k-means,
    # sorting by cluster and GroupNorm see the whole map. So everything up to the blocks runs once,
    # in head tiles with enough margin to be exact, the blocks on the whole image at quarter
    # resolution (dim/16 values per pixel), and every tile runs the layers after them on its part.

    def _head(self, xp):
        """Stage 1's coarse image and stage 2's features before the attention (both local)."""
        coarse, f1 = self.stage1(xp, self.mask(xp))
        return coarse, self.stage2.features(coarse, xp, f1)

    def tile_context(self, x: torch.Tensor, tile: int, progress=None) -> "TileContext":
        """Run the attention blocks on the whole image ``x`` (its full-resolution part in tiles of ``tile``).

        ``x`` is in [0, 1], or uint8 (0-255): each piece is then converted as it is read, so a
        24 MP photo never has a 288 MB float copy beside the context.

        Each head tile reads :func:`head_margins` extra pixels on every side and keeps its core, so
        the maps equal the whole-image ones (up to float rounding) at any tile size. The padded
        image is never built whole: each tile pads its own crop where it meets the border.
        Stage 2's features before the attention and the coarse image are kept too (float16 beyond
        ``KEEP_FP32_BYTES``), so that :meth:`forward_tile` runs only the layers after the attention.
        ``progress(done, total)`` is called after each head tile and each attention block.
        """
        h, w = x.shape[-2:]
        hp, wp = h + (-h) % self.multiple, w + (-w) % self.multiple
        top, left = (hp - h) // 2, (wp - w) // 2  # as pad_to_multiple splits it
        mode = "reflect" if (hp - top - h < h and wp - left - w < w) else "replicate"
        geometry = ((top, left, h, w), (hp, wp), mode)
        step = max(32, min(tile, CONTEXT_STEP) // 32 * 32)
        m, mb = head_margins(self.cfg)
        g = f = coarse = None
        veil = self._veil_params(x)
        prepare = self._veil_fn(veil)
        full = hp * wp * (self.cfg["channels"] + 3) * 4 <= KEEP_FP32_BYTES  # the kept maps' bytes in float32
        steps = [(y0, x0) for y0 in range(0, hp, step) for x0 in range(0, wp, step)]
        report = progress or (lambda done, total: None)
        total = len(steps) + len(self.stage2.blocks)
        for done, (y0, x0) in enumerate(steps, 1):
            y1, x1 = min(hp, y0 + step), min(wp, x0 + step)
            a1, b1 = min(hp, y1 + m), min(wp, x1 + m)
            a0, b0 = max(0, min(y0 - m, a1 - 96)), max(0, min(x0 - m, b1 - 96))  # 96: room to reflect
            crop = _padded_region(x, (0, 0), geometry, a0, a1, b0, b1, prepare)
            mask = self.mask(crop)
            fs = self.stage1.features(crop, mask)
            # the blocks need less context than the mask: narrow to it (never on the image's border)
            r0, c0 = max(0, y0 - mb - a0), max(0, x0 - mb - b0)
            r1, c1 = min(a1, y1 + mb) - a0, min(b1, x1 + mb) - b0
            crop, mask, fs = (t[..., r0:r1, c0:c1] for t in (crop, mask, fs))
            a0, b0 = a0 + r0, b0 + c0
            c, f1 = self.stage1.finish(crop, fs, self.stage1.run_blocks(fs, mask))
            feats = self.stage2.features(c, crop, f1)
            part = self.stage2.down(feats)
            if g is None:
                g = _empty_like(part, hp // 4, wp // 4)
                kept = feats.dtype if full or feats.element_size() < 4 else torch.float16
                f, coarse = _empty_like(feats, hp, wp, kept), _empty_like(c, hp, wp, kept)
            g[..., y0 // 4:y1 // 4, x0 // 4:x1 // 4] = \
                part[..., (y0 - a0) // 4:(y1 - a0) // 4, (x0 - b0) // 4:(x1 - b0) // 4]
            f[..., y0:y1, x0:x1] = feats[..., y0 - a0:y1 - a0, x0 - b0:x1 - b0]
            coarse[..., y0:y1, x0:x1] = c[..., y0 - a0:y1 - a0, x0 - b0:x1 - b0]
            del crop, mask, fs, c, f1, feats, part
            report(done, total)
        for done, blk in enumerate(self.stage2.blocks, len(steps) + 1):
            blk.forward_lean(g, LEAN_CHUNK)
            report(done, total)
        return TileContext(g, *geometry, f=f, coarse=coarse, veil=veil)

    def _veil_params(self, x: torch.Tensor) -> torch.Tensor | None:
        """The veil head's map of the whole image, pooled in bands (no float copy of a big photo)."""
        if self.veil is None:
            return None
        band = self.veil.scale * 64
        pooled = torch.cat([self.veil.pool(_unit(x[..., r:r + band, :])) for r in range(0, x.shape[-2], band)], -2)
        return self.veil.params(pooled)

    def _veil_fn(self, params: torch.Tensor | None):
        """``prepare(part, image_origin)`` for :func:`_padded_region`: the veil correction of the image's part."""
        return None if params is None else (lambda part, at: self.veil.apply(part, params, at))

    def forward_tile(self, x: torch.Tensor, ctx: "TileContext", origin: tuple[int, int],
                     window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """The whole image's output over this tile (exact wherever the tile has :func:`tile_margin` of context).

        ``window`` (rows ``i0:i1``, columns ``j0:j1`` of the tile) is the part the caller keeps:
        each stage then runs only as far beyond it as the next stage needs, and the rest of the
        tile comes back as copies of the nearest computed pixels. Stage 2's last layers run on the
        context's maps, cut to its quarter-resolution grid; only the refiner reads the tile itself.
        """
        top, left, h, w = ctx.box
        th, tw = x.shape[-2:]
        margins = self.local
        rows = _tile_rows(origin[0], th, window[:2] if window else (0, th), top, h, ctx.padded[0], margins)
        cols = _tile_rows(origin[1], tw, window[2:] if window else (0, tw), left, w, ctx.padded[1], margins)
        (sy, ey, fy0, fy1), (sx, ex, fx0, fx1) = rows, cols
        f, coarse = ctx.f[..., sy:ey, sx:ex], ctx.coarse[..., sy:ey, sx:ex]
        if not torch.is_autocast_enabled(x.device.type):  # kept in float16: computed in the tile's dtype
            f, coarse = f.to(x.dtype), coarse.to(x.dtype)
        final = self.stage2.finish(coarse, f, ctx.g[..., sy // 4:ey // 4, sx // 4:ex // 4])
        final = final[..., fy0 - sy:fy1 - sy, fx0 - sx:fx1 - sx]
        # The part computed, inside the image, in this tile's coordinates: [i0, i1) x [j0, j1).
        i0, i1 = fy0 - top - origin[0], fy1 - top - origin[0]
        j0, j1 = fx0 - left - origin[1], fx1 - left - origin[1]
        if self.fullres is not None:
            # the refiner's input: the tile inside the image, veil-corrected as the whole image is
            xr = _padded_region(x, origin, (ctx.box, ctx.padded, ctx.mode), fy0, fy1, fx0, fx1,
                                self._veil_fn(ctx.veil))
            final = _refine_in_bands(self.fullres, xr, final, self.local[1])
        if (i0, j0, i1, j1) != (0, 0, th, tw):
            final = F.pad(final, (j0, tw - j1, i0, th - i1), mode="replicate")
        return final

    @property
    def local(self) -> tuple[int, int]:
        """:func:`local_margins` of this net's config."""
        return local_margins(self.cfg)


def _refine_in_bands(refiner: nn.Module, x: torch.Tensor, out: torch.Tensor, margin: int) -> torch.Tensor:
    """``refiner(x, out)`` in bands of ``REFINE_BAND`` rows, each with ``margin`` rows of context: the same values.

    Its many full-resolution convs run about 1.6x faster per pixel on a band that stays in the
    CPU's cache than on a whole big tile, for 2 x ``margin`` rows of extra work per band.
    """
    h = x.shape[-2]
    if h <= REFINE_BAND + 2 * margin:
        return refiner(x, out)
    res = torch.empty_like(out)
    for r in range(0, h, REFINE_BAND):
        a0, a1 = max(0, r - margin), min(h, r + REFINE_BAND + margin)
        res[..., r:r + REFINE_BAND, :] = refiner(x[..., a0:a1, :], out[..., a0:a1, :])[..., r - a0:r - a0 + REFINE_BAND, :]
    return res


def _empty_like(t: torch.Tensor, h: int, w: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An ``h x w`` map like ``t`` in its memory format: channels_last blocks run about 15% faster on the CPU."""
    cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.empty(1, t.shape[1], h, w, dtype=dtype or t.dtype, device=t.device,
                       memory_format=torch.channels_last if cl else torch.contiguous_format)


def _tile_rows(y0: int, th: int, keep: tuple[int, int], top: int, h: int, hp: int, margins: tuple[int, int]):
    """Along one axis, in padded coordinates: ``(s, e)`` the tile's head runs on, ``(f0, f1)`` its final output.

    ``[s, e)`` lies on the 4-pixel grid and inside what the tile can compute (the padding where it
    touches the image's border); ``[f0, f1)`` is ``keep`` widened by the refiner's margin, inside the image.
    """
    before, refiner = margins
    s = -(-(y0 + top) // 4) * 4 if y0 else 0
    e = (y0 + th + top) // 4 * 4 if y0 + th < h else hp
    f0 = max(s, top, top + y0 + keep[0] - refiner)
    f1 = min(e, top + h, top + y0 + keep[1] + refiner)
    s = max(s, (f0 - before) // 4 * 4)
    e = min(e, -(-(f1 + before) // 4) * 4)
    return s, e, f0, f1


def _unit(part: torch.Tensor) -> torch.Tensor:
    """A uint8 part of the image in [0, 1] float32, as :func:`derain_cli.tiling.unit_tensor` makes it; floats pass."""
    return part.float() * (1.0 / 255) if part.dtype == torch.uint8 else part


def _padded_region(x: torch.Tensor, origin: tuple[int, int], geometry, sy: int, ey: int, sx: int, ex: int,
                   prepare=None):
    """Rows ``[sy, ey)`` x columns ``[sx, ex)`` of the whole padded image, from ``x``: its part at ``origin``.

    ``geometry`` is ``(box, padded size, mode)`` of the whole image's padding. Padding is
    added only where the region leaves the image, as :func:`pad_to_multiple` did for the
    whole image (reflect falls back to replicate where a tile is thinner than its padding).
    ``prepare(part, image_origin)`` (the veil head) runs on the image's part before the padding, as it does whole.
    """
    (top, left, h, w), _, mode = geometry
    y0, x0 = origin
    iy0, iy1 = max(sy - top, 0), min(ey - top, h)
    ix0, ix1 = max(sx - left, 0), min(ex - left, w)
    crop = _unit(x[..., iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0])
    if prepare is not None:
        crop = prepare(crop, (iy0, ix0))
    pads = (ix0 - (sx - left), (ex - left) - ix1, iy0 - (sy - top), (ey - top) - iy1)
    if not any(pads):
        return crop
    if mode == "reflect" and (max(pads[:2]) >= crop.shape[-1] or max(pads[2:]) >= crop.shape[-2]):
        mode = "replicate"
    return F.pad(crop, pads, mode=mode)


PRESETS = {
    # Trains on a 2-core CPU: attention only at quarter resolution, narrow widths, and seven
    # full-resolution residual blocks at the end for the thin streaks.
    "cpu": dict(channels=16, stage1_width=32, stage1_blocks=3, dim=64, depth=4, heads=2, window=8, clusters=4,
                kmeans_iters=3, tophat=5, line=7, mask_threshold=0.06, mask_softness=0.01, mask_tolerance=1,
                fullres_blocks=7, fullres_width=20, veil_width=0, veil_scale=8),
    # Paper-scale for GPU users.
    "paper": dict(channels=32, stage1_width=64, stage1_blocks=8, dim=128, depth=8, heads=4, window=8, clusters=8,
                  kmeans_iters=5, tophat=5, line=7, mask_threshold=0.06, mask_softness=0.01, mask_tolerance=1,
                  fullres_blocks=0, fullres_width=32, veil_width=0, veil_scale=8),
}


def traits(config: dict) -> Traits:
    """Any size (the network pads to its attention windows itself); tiles are exact through
    :meth:`DualStageNet.tile_context`."""
    # The attention blocks (k-means, GroupNorm: image-wide) and everything before them run once on
    # the whole image (DualStageNet.tile_context); tiles run the local layers after them.
    return Traits(tiling=Tiling.CONTEXT, tile_margin=tile_margin(config), bytes_per_pixel=3000.0,
                  context_bytes_per_pixel=context_bytes_per_pixel(config))


SPEC = register_model(ModelSpec(
    "dualstage", build=DualStageNet, traits_of=traits, presets=PRESETS, default_for=("derain",),
    training=Training("derain_cli.train.recipes.dualstage:DualStageRecipe", modes=("paired",)),
    card=Card("Rain-streak mask attention, then clustered non-local + window attention (supervised).",
              "Hou et al., Dual-stage deraining network based on mask and non-local attention, 2026"),
))
