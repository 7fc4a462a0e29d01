"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class DerainError(Exception):
    """An error caused by the user's input or environment, not a bug."""

    exit_code = 2


class WeightsError(DerainError):
    """Weights missing, corrupt, of the wrong architecture, or not safetensors."""


class ImageError(DerainError):
    """An input that is missing, not an image, or corrupt; or an unwritable output."""
