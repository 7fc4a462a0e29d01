"""Registry of deraining architectures, in the spirit of timm's model registry.

Each architecture lives in ``derain_cli/models/<name>.py`` and exposes ``SPEC``,
a :class:`ModelSpec` that states everything inference, training and evaluation
need to know (like a spandrel model descriptor). Modules are imported lazily so
that ``derain --help`` never pays for ``import torch``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

#: Registered architectures, in the order ``derain models`` lists them.
MODEL_NAMES: tuple[str, ...] = ("dualstage", "semimsn", "dcdgan", "jrgr", "rainfog")


#: The best shipped model by measured Rain100L PSNR (see weights.toml); update when weights change.
DEFAULT_MODEL = "dualstage"
#: What ``derain train`` trains when no ``--model`` is given, per kind of data: the
#: architecture that learned best on a CPU for paired/semi data (jrgr's removal U-Net),
#: and the general unpaired translator (rainfog is the one for foggy rain).
DEFAULT_TRAIN_MODELS: dict[str, str] = {"paired": "jrgr", "semi": "jrgr", "unpaired": "dcdgan"}

TRAIN_MODES = ("paired", "unpaired", "semi")


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered."""


@dataclass(frozen=True)
class ModelSpec:
    """What one architecture is and how to use it.

    ``build(config)`` returns the *bundle*: the ``nn.Module`` whose ``state_dict``
    is exactly the shipped weights file (for GANs: all generators needed at
    inference, never the discriminators). ``derain_net(bundle, variant)`` returns
    the image-to-image network used by ``derain run``; ``rainify_net(bundle)`` the
    clean-to-rainy network used by ``derain rainify`` (None if the model has none).
    Both take and return ``B x 3 x H x W`` tensors in ``input_range``.
    """

    name: str
    summary: str
    paper: str
    presets: dict[str, dict[str, Any]]
    default_preset: str
    build: Callable[[dict[str, Any]], Any]
    derain_net: Callable[[Any, str], Any]
    modes: tuple[str, ...]
    recipe: Callable[..., Any]
    weights_entry: str
    variants: tuple[str, ...] = ("default",)
    rainify_net: Callable[[Any], Any] | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    size_multiple: int = 1
    tile_safe: bool = True
    #: Overlap (pixels) at which tiled output matches whole-image output.
    tile_margin: int = 32
    #: Smallest tile worth using when tiling is unsafe (global statistics).
    min_tile: int = 0
    #: Rough peak bytes per input pixel at inference in float32 (for auto tiling).
    bytes_per_pixel: float = 4096.0
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self, preset: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A copy of a named preset's config with ``overrides`` applied."""
        preset = preset or self.default_preset
        if preset not in self.presets:
            raise ValueError(
                f"model {self.name!r} has no preset {preset!r}; choose one of {', '.join(self.presets)}"
            )
        cfg = dict(self.presets[preset])
        unknown = set(overrides) - set(cfg)
        if unknown:
            raise ValueError(f"unknown config keys for {self.name}: {', '.join(sorted(unknown))}")
        cfg.update(overrides)
        return cfg

    @property
    def kind(self) -> str:
        """Training kind shown to users: the first declared mode."""
        return "/".join(self.modes)


def split_name(name: str) -> tuple[str, str | None]:
    """``"dualstage.general"`` -> ``("dualstage", "general")``; a bare name has no tag (timm's ``name.tag``)."""
    arch, dot, tag = name.partition(".")
    if arch not in MODEL_NAMES:
        raise UnknownModelError(f"unknown model {arch!r}; available: {', '.join(MODEL_NAMES)}")
    if dot and not tag:
        raise UnknownModelError(f"empty tag in {name!r}; write NAME or NAME.TAG, e.g. {arch}.general")
    return arch, (tag if dot else None)


def get_spec(name: str) -> ModelSpec:
    """Import ``derain_cli.models.<name>`` and return its ``SPEC`` (a ``.tag`` names weights, not code)."""
    arch, _ = split_name(name)
    module = importlib.import_module(f"derain_cli.models.{arch}")
    return module.SPEC


def all_specs() -> list[ModelSpec]:
    return [get_spec(n) for n in MODEL_NAMES]
