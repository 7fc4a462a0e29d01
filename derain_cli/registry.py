"""Registry of deraining architectures, in the spirit of timm's ``@register_model``.

Each architecture module registers itself once, ``SPEC = register_model(ModelSpec(...))``.
Built-in modules (:data:`BUILTIN_MODULES`) and other packages' entry points (group
``derain_cli.models``, name = architecture, value = the module that registers it, or a
``module:attribute`` naming a :class:`ModelSpec`) are imported on first use, so that
``derain --help`` never pays for ``import torch``.

A spec says what a model is in three small parts: how to build and run it (its own
fields, and :class:`Traits` computed from the config it is built with, like spandrel's
descriptors), how to train it (:class:`Training`, a recipe imported only by training)
and how to describe it (:class:`Card`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable

#: Modules under ``derain_cli.models`` that register the built-in architectures, in ``derain models`` order.
BUILTIN_MODULES: tuple[str, ...] = ("dualstage", "semimsn", "dcdgan", "jrgr", "rainfog")
#: Entry-point group through which other packages add architectures.
ENTRY_POINT_GROUP = "derain_cli.models"
#: What a spec's ``default_for`` may name: the default of ``derain run``, of ``derain rainify``, or of
#: ``derain train`` for one kind of data.
ROLES = ("derain", "rainify", "paired", "semi", "unpaired")


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered."""


class Tiling(Enum):
    """How tiled inference relates to the whole image (``derain run --tile``)."""

    #: Convolutional: tiles with ``tile_margin`` pixels of overlap equal the whole image.
    MARGIN = "margin"
    #: Image-wide parts run once per image (``net.tile_context``), the rest tile by tile: equal again.
    CONTEXT = "context"
    #: Image-wide statistics (InstanceNorm, global attention): big tiles and wide fades hide the seams.
    APPROXIMATE = "approximate"


@dataclass(frozen=True)
class Traits:
    """What inference needs to know about a network built from one config."""

    #: Input sides are reflect-padded to a multiple of this (strided layers); tile origins lie on it.
    size_multiple: int = 1
    #: Smallest image side the network takes (after that padding).
    min_size: int = 1
    tiling: Tiling = Tiling.MARGIN
    #: Overlap (pixels) at which tiled output matches whole-image output.
    tile_margin: int = 32
    #: Smallest tile worth using when tiling is approximate.
    min_tile: int = 0
    #: Rough peak bytes per input pixel at inference in float32 (for automatic tiling).
    bytes_per_pixel: float = 4096.0
    #: Bytes per image pixel that a shared context (``Tiling.CONTEXT``) keeps for the whole photo
    #: while its tiles run: tiling does not bound it (the memory check counts it).
    context_bytes_per_pixel: float = 0.0
    #: Whether ``--half`` (bfloat16/float16 autocast) gives usable output.
    bf16: bool = True
    #: Value range of the network's input and output images.
    input_range: tuple[float, float] = (0.0, 1.0)
    #: ``derain`` and, for models with a rain generator, ``rainify`` (filled in by :meth:`ModelSpec.traits`).
    tasks: tuple[str, ...] = ("derain",)

    @property
    def exact_tiles(self) -> bool:
        """Whether tiles reproduce the whole image (otherwise fades only hide the differences)."""
        return self.tiling is not Tiling.APPROXIMATE


@dataclass(frozen=True)
class Training:
    """How ``derain train`` trains an architecture; nothing here is imported by inference.

    ``recipe`` is a :class:`~derain_cli.train.recipe.Recipe` subclass or a ``"module:Class"``
    string naming one, imported on first use.
    """

    recipe: Any
    modes: tuple[str, ...]

    def recipe_class(self) -> Any:
        if not isinstance(self.recipe, str):
            return self.recipe
        module, _, attr = self.recipe.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Card:
    """What ``derain models`` and the docs say about an architecture."""

    summary: str
    paper: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: how to build it, run it, describe it and (optionally) train it.

    ``build(config)`` returns the *bundle*: the ``nn.Module`` whose ``state_dict`` is
    exactly the shipped weights file (for GANs: all generators needed at inference, never
    the discriminators). ``derain_net(bundle, variant)`` returns the image-to-image network
    of ``derain run``; ``rainify_net(bundle)`` the clean-to-rainy one of ``derain rainify``
    (None if there is none). Both map ``B x 3 x H x W`` tensors in the traits' ``input_range``.
    ``traits(config)`` describes the network built from ``config``.
    """

    name: str
    build: Callable[[dict[str, Any]], Any]
    presets: dict[str, dict[str, Any]]
    card: Card
    derain_net: Callable[[Any, str], Any] = field(default=lambda bundle, variant: bundle)  # the bundle itself
    traits_of: Callable[[dict[str, Any]], Traits] = field(default=lambda config: Traits())
    default_preset: str = "cpu"
    variants: tuple[str, ...] = ("default",)
    rainify_net: Callable[[Any], Any] | None = None
    training: Training | None = None
    #: Roles (:data:`ROLES`) in which this is the model used when none is named.
    default_for: tuple[str, ...] = ()

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

    def traits(self, config: dict[str, Any]) -> Traits:
        """The :class:`Traits` of the network built from ``config``, with its tasks."""
        tasks = ("derain", "rainify") if self.rainify_net is not None else ("derain",)
        return replace(self.traits_of(config), tasks=tasks)

    @property
    def summary(self) -> str:
        return self.card.summary

    @property
    def modes(self) -> tuple[str, ...]:
        """Kinds of training data (paired, semi, unpaired); none for an inference-only architecture."""
        return self.training.modes if self.training is not None else ()

    @property
    def recipe(self) -> Any:
        """The training recipe class, imported now (training only)."""
        if self.training is None:
            from .errors import DerainError

            raise DerainError(f"model {self.name!r} has no training recipe (it is inference-only)")
        return self.training.recipe_class()

    @property
    def kind(self) -> str:
        """Training kinds shown to users (``semi/paired``)."""
        return "/".join(self.modes) or "inference only"


_SPECS: dict[str, ModelSpec] = {}
_sources: dict[str, str] | None = None


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (once per name) and return it: ``SPEC = register_model(ModelSpec(...))``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model takes a ModelSpec, not {type(spec).__name__}")
    if not spec.name.isidentifier():
        raise ValueError(f"model name {spec.name!r} must be a Python identifier (no dots: NAME.TAG names weights)")
    if _SPECS.get(spec.name, spec) is not spec:
        raise ValueError(f"model {spec.name!r} is already registered")
    unknown = set(spec.default_for) - set(ROLES)
    if unknown:
        raise ValueError(f"{spec.name}: default_for names unknown roles {sorted(unknown)}; roles: {', '.join(ROLES)}")
    if "rainify" in spec.default_for and spec.rainify_net is None:
        raise ValueError(f"{spec.name} cannot be the rainify default: it has no rainify_net")
    _SPECS[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Remove an architecture registered in this process (tests, notebooks)."""
    _SPECS.pop(name, None)


def _source_table() -> dict[str, str]:
    """Architecture name -> what to import to register it: the built-ins, then entry points."""
    global _sources
    if _sources is None:
        from importlib.metadata import entry_points

        table = {name: f"derain_cli.models.{name}" for name in BUILTIN_MODULES}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            table.setdefault(ep.name, ep.value)
        _sources = table
    return _sources


def model_names() -> tuple[str, ...]:
    """Every architecture: built-ins, then entry points, then those registered at run time."""
    names = list(_source_table())
    return tuple(names + [n for n in _SPECS if n not in names])


def split_name(name: str) -> tuple[str, str | None]:
    """``"dualstage.general"`` -> ``("dualstage", "general")``; a bare name has no tag (timm's ``name.tag``)."""
    arch, dot, tag = name.partition(".")
    names = model_names()
    if arch not in names:
        raise UnknownModelError(f"unknown model {arch!r}; available: {', '.join(names)}")
    if dot and not tag:
        raise UnknownModelError(f"empty tag in {name!r}; write NAME or NAME.TAG, e.g. {arch}.general")
    return arch, (tag if dot else None)


def _import_source(arch: str) -> None:
    """Import the module (or ``module:attribute``) that registers ``arch``."""
    module, _, attr = _source_table()[arch].partition(":")
    value = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        value = getattr(value, part)
    if isinstance(value, ModelSpec) and value.name == arch and arch not in _SPECS:
        register_model(value)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name`` (a ``.tag`` names weights, not code), importing its module on first use."""
    arch, _ = split_name(name)
    if arch not in _SPECS:
        _import_source(arch)
    if arch not in _SPECS:
        raise UnknownModelError(f"{_source_table()[arch]} did not register a model named {arch!r}")
    return _SPECS[arch]


def all_specs() -> list[ModelSpec]:
    return [get_spec(n) for n in model_names()]


def default_model(role: str = "derain") -> str:
    """The model used when none is named: the first (in :func:`model_names` order) whose spec claims ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    for name in model_names():
        if role in get_spec(name).default_for:
            return name
    raise UnknownModelError(f"no registered model is the default for {role}")


def rainify_models() -> list[str]:
    """The models with a clean-to-rainy generator (``derain rainify``)."""
    return [s.name for s in all_specs() if s.rainify_net is not None]


def __getattr__(name: str) -> Any:
    """``MODEL_NAMES`` and ``DEFAULT_MODEL``, read from the registry when asked for (kept for callers of old)."""
    if name == "MODEL_NAMES":
        return model_names()
    if name == "DEFAULT_MODEL":
        return default_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
