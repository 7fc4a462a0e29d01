"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class DerainError(Exception):
    """An error caused by the user's input or environment, not a bug."""

    exit_code = 2


class WeightsError(DerainError):
    """Weights missing, corrupt, of the wrong architecture, or not safetensors."""


class ImageError(DerainError):
    """An input that is missing, not an image, or corrupt; or an unwritable output."""


class DerainWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints ``derain: warning: ...``)."""


def one_line(exc: BaseException) -> str:
    """A failure as one line for a table row or an error line: never a traceback.

    Our own errors say what they say; the rest (an OpenCV assertion, a MemoryError,
    a bug) are named by type and the first line of their message.
    """
    if isinstance(exc, DerainError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory while deraining it; try a smaller --tile, or close other programs"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"cannot read or write{where}: {exc.strerror or exc}"
    text = " ".join(str(exc).split())
    start = text.find("error: (")  # OpenCV: "OpenCV(4.x) FILE:LINE: error: (-215:Assertion failed) ..."
    if start >= 0:
        return f"OpenCV: {text[start + len('error: '):]}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
