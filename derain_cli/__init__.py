"""derain: remove rain (and the fog that comes with it) from photos.

The public API is imported lazily so ``import derain_cli`` (and ``derain --help``)
never pays for ``import torch``::

    from derain_cli import load_model, derain_file
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "derain_cli.api",
    "derain_file": "derain_cli.api",
    "Derainer": "derain_cli.api",
    "read_image": "derain_cli.imageio",
    "write_image": "derain_cli.imageio",
    "read_rgb8": "derain_cli.imageio",
    "DerainError": "derain_cli.errors",
    "ModelSpec": "derain_cli.registry",
    "Traits": "derain_cli.registry",
    "Tiling": "derain_cli.registry",
    "Training": "derain_cli.registry",
    "Card": "derain_cli.registry",
    "register_model": "derain_cli.registry",
    "model_names": "derain_cli.registry",
    "default_model": "derain_cli.registry",
    "MODEL_NAMES": "derain_cli.registry",
    "DEFAULT_MODEL": "derain_cli.registry",
}
#: Read from the registry at every access (architectures may register later), never cached.
_LIVE = {"MODEL_NAMES", "DEFAULT_MODEL"}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'derain_cli' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    if name not in _LIVE:
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
