"""Building blocks and losses shared by several architectures."""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def charbonnier(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-3, per_image: bool = False) -> torch.Tensor:
    """Smooth L1-like loss used by most deraining papers (robust, PSNR-friendly); ``per_image``: one value per image."""
    d = torch.sqrt((x - y) ** 2 + eps * eps)
    return d.flatten(1).mean(1) if per_image else d.mean()


def edge_loss(x: torch.Tensor, y: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Charbonnier distance between Laplacians: rewards sharp, streak-free detail."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device, dtype=x.dtype)
    k = k.expand(x.shape[1], 1, 3, 3)
    lap = lambda t: F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k, groups=t.shape[1])  # noqa: E731
    return charbonnier(lap(x), lap(y), per_image=per_image)


def block_mean_error(x: torch.Tensor, y: torch.Tensor, block: int = 8) -> torch.Tensor:
    """Per-image mean squared error between ``block`` x ``block`` means: the low frequencies (a veil, a tint)."""
    return (F.avg_pool2d(x - y, block, ceil_mode=True) ** 2).flatten(1).mean(1)


def cat_channels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, 1)`` in the first tensor's memory format.

    A one-channel map (a rain mask) is contiguous in both formats, and ``torch.cat`` then picks
    NCHW: a channels_last conv on that input ran 4x slower on the CPU. Outside autograd the
    result is written into a channels_last buffer instead (``out=`` does not record gradients).
    """
    first = tensors[0]
    if torch.is_grad_enabled() or first.is_contiguous() or not first.is_contiguous(memory_format=torch.channels_last):
        return torch.cat(tensors, 1)
    b, _, h, w = first.shape
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    out = torch.empty(b, sum(t.shape[1] for t in tensors), h, w, dtype=dtype, device=first.device,
                      memory_format=torch.channels_last)
    return torch.cat(tensors, 1, out=out)


def shifted_extreme(x: torch.Tensor, offsets, reduce) -> torch.Tensor:
    """Element-wise ``reduce`` (torch.minimum or torch.maximum) of x shifted by every ``(dy, dx)``, borders replicated.

    One padded copy and a running reduction over views of it: exact, differentiable,
    and on the CPU far faster than stacking shifted copies.
    """
    offsets = list(offsets)
    p = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    xp = F.pad(x, (p, p, p, p), mode="replicate") if p else x
    h, w = x.shape[-2:]
    out = None
    for dy, dx in offsets:
        view = xp[..., p + dy:p + dy + h, p + dx:p + dx + w]
        out = view if out is None else reduce(out, view)
    return out


def box_extreme(x: torch.Tensor, size: int, reduce) -> torch.Tensor:
    """Min or max (``reduce``) over every ``size`` x ``size`` window, without padding ("valid").

    The same values as ``max_pool2d(x, size, stride=1)`` (or its negated-input minimum),
    by a running reduction along rows, then columns. CPU max-pooling with stride 1 is
    slow: 18 ms against 0.5 ms for a 5 x 5 window over 512 x 352 on one thread here.
    """
    h, w = x.shape[-2:]
    rows = x[..., :, : w - size + 1]
    for i in range(1, size):
        rows = reduce(rows, x[..., :, i:i + w - size + 1])
    out = rows[..., : h - size + 1, :]
    for i in range(1, size):
        out = reduce(out, rows[..., i:i + h - size + 1, :])
    return out


def pad_to_multiple(
    x: torch.Tensor, multiple: int, *, centre: bool = True, mode: str = "reflect"
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad H and W up to a multiple; returns the padded tensor and its box, the one padding helper.

    The box is ``(top, left, h, w)`` for :func:`crop_to_box`. ``centre`` splits the padding
    between both sides: every border's mirrored band is then at most half as wide as padding
    only the bottom/right; on RainTrainL 191-200 that took the shipped dualstage from 36.21
    to 36.32 dB (``benchmarks/padding_probe.py``), since the network never sees padding in
    training. ``centre=False`` pads the bottom/right only (tiles keep their origin; jrgr's
    shipped weights were scored that way). ``mode="reflect"`` falls back to replicate where a
    side is too short to mirror; ``mode="replicate"`` always replicates.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    top, left = (ph // 2, pw // 2) if centre else (0, 0)
    if ph or pw:
        if mode == "reflect" and not (ph - top < h and pw - left < w):
            mode = "replicate"
        x = F.pad(x, (left, pw - left, top, ph - top), mode=mode)
    return x, (top, left, h, w)


def crop_to_box(y: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: the ``h x w`` region at ``(top, left)``."""
    top, left, h, w = box
    return y[..., top:top + h, left:left + w]


class ResBlock(nn.Module):
    """conv-act-conv with a residual link; ``act`` makes the activation (GELU, rainfog's LeakyReLU(0.2)).

    The activation has no parameters, so every user's state-dict keys are ``body.0`` and ``body.2``.
    """

    def __init__(self, ch: int, act: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), act(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``batch``, ``instance`` (no affine, no running statistics, as in CycleGAN and CUT) or ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (batch, instance or none)")


class ReflectResBlock(nn.Module):
    """CycleGAN's ResnetBlock: two reflect-padded 3x3 convs, each normalised, ReLU between, identity shortcut.

    Shared by dcdgan's and jrgr's generators (keys ``body.1``, ``body.5`` and, for BatchNorm,
    ``body.2``, ``body.6``). The convs have no bias before BatchNorm, which would cancel it.
    """

    def __init__(self, ch: int, norm: str = "instance"):
        super().__init__()
        bias = norm != "batch"
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), norm_layer(norm, ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3, bias=bias), norm_layer(norm, ch))

    def forward(self, x):
        return x + self.body(x)


def start_grown_as_identity(net: nn.Module, missing: list[str]) -> list[str]:
    """Let every module that ``missing`` (``load_state_dict``'s new tensors) covers entirely, and that
    can, start as the identity (``start_as_identity()``), so a model grown onto trained weights
    first gives their output. Returns those modules' names.

    Modules that start as the identity anyway (a refiner, a veil head) need no hook; a residual
    block that does not (an attention block, random so that fresh models and tests exercise it) has one.
    """
    new, started = set(missing), []
    for name, module in net.named_modules():
        names = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
        if hasattr(module, "start_as_identity") and names and new.issuperset(names):
            module.start_as_identity()
            started.append(name)
    return started


class FullResRefiner(nn.Module):
    """Residual blocks at full image resolution that correct an output image.

    The CPU presets do most of their work on space-to-depth features, which leaves the
    thin streaks of light rain to very few full-resolution channels. This adds them back.
    Its last conv, and the last conv of every block, start at zero, so a refiner grown onto
    trained weights (``derain train --init`` with ``--set fullres_blocks=N``, whether the
    weights had no refiner or a shallower one) first reproduces the old output exactly.
    """

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.head = nn.Conv2d(6, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        for conv in [self.tail] + [blk.body[-1] for blk in self.blocks]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg: dict) -> "FullResRefiner | None":
        """The refiner a config asks for, or None (configs of older weights lack the keys)."""
        blocks = cfg.get("fullres_blocks", 0)
        return cls(cfg.get("fullres_width", 16), blocks) if blocks else None

    def forward(self, rainy: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out + self.tail(self.blocks(self.head(torch.cat([rainy, out], 1))))


class VeilHead(nn.Module):
    """Rain accumulation undone first: a smooth per-pixel gain and offset, ``x * (1 + g) + o``.

    Heavy rain scatters light into a veil over whole regions (JORDER's ``O = a B + (1 - a) A``).
    Streak layers are local and thin; the veil is neither, and local stages trained on it learn
    to leave it (a uniform veil they were trained on passes through them unchanged). This head
    reads a ``scale``-times smaller copy (block means and block minima, the dark-channel cue), so
    its receptive field spans ``~17 * scale`` pixels, and predicts the correction there; it is
    upsampled bilinearly. Its last conv starts at zero: grown onto trained weights
    (``derain train --init`` with ``--set veil_width=N``) it first changes nothing.
    """

    def __init__(self, width: int, scale: int):
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(6, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.GELU(),
            nn.Conv2d(width, 4, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    @classmethod
    def from_config(cls, cfg: dict) -> "VeilHead | None":
        """The head a config asks for, or None (``veil_width`` 0, or older weights without the key)."""
        width = cfg.get("veil_width", 0)
        return cls(width, cfg.get("veil_scale", 8)) if width else None

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Block means and minima (``1 x 6 x ceil(H/scale) x ceil(W/scale)``); exact on bands of ``scale`` rows."""
        x = x.float()
        return torch.cat([F.avg_pool2d(x, self.scale, ceil_mode=True),
                          -F.max_pool2d(-x, self.scale, ceil_mode=True)], 1)

    def params(self, pooled: torch.Tensor) -> torch.Tensor:
        """The low-resolution correction map ``1 x 4 x h x w`` (gain, offset RGB) from :meth:`pool`'s output."""
        return self.body(pooled)

    def apply(self, x: torch.Tensor, params: torch.Tensor, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """``x`` (the part of the image at ``origin``) corrected by ``params`` (the whole image's)."""
        p = upsample_part(params, self.scale, origin, x.shape[-2:]).to(x.dtype)
        return x * (1 + p[:, :1]) + p[:, 1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.params(self.pool(x)))


def _lerp_axis(start: int, n: int, scale: int, size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear indices and weights along one axis: pixel ``i`` sits at ``(i + 0.5) / scale - 0.5`` of the grid."""
    pos = ((torch.arange(start, start + n, device=device, dtype=torch.float32) + 0.5) / scale - 0.5).clamp(0, size - 1)
    i0 = pos.floor().long()
    return i0, (i0 + 1).clamp(max=size - 1), pos - i0


def upsample_part(grid: torch.Tensor, scale: int, origin: tuple[int, int], size) -> torch.Tensor:
    """Rows and columns ``origin + [0, size)`` of ``grid`` upsampled ``scale`` times (bilinear, edges clamped).

    The same values whether the whole image or one tile asks: tiles never build the full-size map.
    """
    r0, r1, ty = _lerp_axis(origin[0], size[0], scale, grid.shape[-2], grid.device)
    c0, c1, tx = _lerp_axis(origin[1], size[1], scale, grid.shape[-1], grid.device)
    rows = torch.lerp(grid[..., r0, :], grid[..., r1, :], ty.to(grid.dtype)[:, None])
    return torch.lerp(rows[..., c0], rows[..., c1], tx.to(grid.dtype))
