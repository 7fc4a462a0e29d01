"""Reading and writing photos without losing what makes them the user's photo.

Pixels go through OpenCV (``cv2.imdecode(np.fromfile(...))`` so non-ASCII paths
work, 8- and 16-bit, alpha); metadata (EXIF, ICC profile) goes through Pillow,
which only parses headers here. The image is handed to the model upright (EXIF
orientation applied) and written back upright with orientation reset to 1, in
the input's format and bit depth, atomically, never over an input.

HEIC/HEIF goes through Pillow with the optional pillow-heif plugin (``pip install
'derain-cli[heif]'``); GIF is read (first frame) but never written. What the
decoders say (libjpeg's "Corrupt JPEG data", Pillow's "Corrupt EXIF data") comes
back as one :class:`DerainWarning` per file instead of raw lines on stderr.
"""
from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .errors import DerainError, DerainWarning, ImageError
from .weightfile import atomic_write_bytes

#: Suffixes read and written without plugins, lower case.
NATIVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
#: HEIC/HEIF photos (phones): read and written through pillow-heif when it is installed.
HEIF_SUFFIXES = (".heic", ".heif")
#: Suffixes ``derain run``/``batch`` write (and read): HEIF only with the plugin.
IMAGE_SUFFIXES = NATIVE_SUFFIXES + HEIF_SUFFIXES
#: Everything ``derain run``/``batch`` can read (GIF: the first frame, written back as PNG).
READ_SUFFIXES = IMAGE_SUFFIXES + (".gif",)
HEIF_INSTALL = "install it with: pip install 'derain-cli[heif]'"


def list_images(folder: str | os.PathLike, suffixes=NATIVE_SUFFIXES, *, required: bool = True) -> list[Path]:
    """The image files directly in ``folder``, sorted by name: one rule for every command that takes folders.

    ``suffixes`` defaults to those read without plugins (training and dataset folders);
    ``required`` makes an empty folder an error naming the suffixes looked for.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DerainError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())
    if required and not files:
        raise DerainError(f"no images in {folder} (looked for {', '.join(sorted(suffixes))})")
    return files

_EXIF_ORIENTATION = 0x0112
#: Baseline TIFF tags that describe pixel storage, not the photo: never copied into EXIF.
_TIFF_STRUCTURE_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 280, 281, 284, 292, 293,
     317, 320, 322, 323, 324, 325, 338, 339, 340, 341, 513, 514, 530, 531, 532, 34675}
)
#: Suffixes whose writer here carries EXIF and ICC (TIFF only at 8 bits, see :func:`encode_image`).
_METADATA_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")


@dataclass
class Photo:
    """An upright image plus everything needed to write it back faithfully.

    ``rgb`` is ``H x W x 3`` uint8 or uint16 in RGB order (grayscale inputs are
    expanded, ``gray`` remembers to collapse them on write); ``alpha`` is the
    untouched alpha plane (same dtype) or None.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    gray: bool = False
    suffix: str = ".png"
    exif: bytes | None = None
    icc: bytes | None = None

    @property
    def bit_depth(self) -> int:
        return 16 if self.rgb.dtype == np.uint16 else 8

    def with_pixels(self, rgb: np.ndarray) -> "Photo":
        """The same photo (alpha, metadata, format) with new colour pixels."""
        return replace(self, rgb=rgb)


def _cv2():
    import cv2

    # decoders report corrupt files through return values; keep their chatter off the terminal
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def not_regular(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file we may open (a FIFO would block the read forever), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing: the caller says "no such file"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"{kind}, not a regular file"


def _read_bytes(path: str | os.PathLike) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{path}: no such file")
    if p.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    problem = not_regular(p)
    if problem:
        raise ImageError(f"{path}: {problem}")
    try:
        return np.fromfile(str(p), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None


@contextmanager
def native_messages(path: str | os.PathLike) -> Iterator[None]:
    """Catch what C libraries (libjpeg, libpng, libtiff via OpenCV) print on fd 2; re-issue it as one warning.

    Lines with terminal escapes (a progress bar redrawn meanwhile) go back to stderr untouched.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (e.g. a GUI launcher): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
        _reissue(path, text)


def _reissue(path: str | os.PathLike, text: str) -> None:
    """Turn captured decoder output into one DerainWarning; keep a progress bar's redraws on stderr."""
    lines, redraws = [], []
    for line in text.splitlines():
        (redraws if ("\x1b" in line or "\r" in line) else lines).append(line.strip())
    if redraws:
        os.write(2, ("\n".join(redraws) + "\n").encode())
    lines = [ln for ln in lines if ln]
    if lines:
        more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
        warnings.warn(f"{path}: {lines[0]}{more}", DerainWarning, stacklevel=3)


def _opencv_problem(exc: Exception) -> str:
    """``(-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS ...`` from OpenCV's multi-line message."""
    text = str(exc)
    start = text.find("error: (")
    text = text[start + len("error: "):] if start >= 0 else text
    return " ".join(text.split())


def _heif_plugin() -> None:
    """Register pillow-heif's HEIC/HEIF opener with Pillow, once; a clear install line without it."""
    global _HEIF_READY
    if _HEIF_READY:
        return
    try:
        import pillow_heif
    except ImportError:
        raise ImageError(f"HEIC/HEIF needs the pillow-heif plugin; {HEIF_INSTALL}") from None
    pillow_heif.register_heif_opener()
    _HEIF_READY = True


_HEIF_READY = False


def _decode_pillow(data: np.ndarray, path: str | os.PathLike) -> np.ndarray | None:
    """Decode the first frame with Pillow, in OpenCV's layout (gray, BGR or BGRA); None if Pillow cannot."""
    from PIL import Image

    try:  # the size was judged by preflight.check_memory: Pillow's bomb limit would only refuse it again
        with _pillow_headers(), Image.open(io.BytesIO(data.tobytes())) as im:
            im.seek(0)
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im.convert("I;16"), dtype=np.uint16)
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGBA" if ("A" in im.mode or "transparency" in im.info) else "RGB")
            arr = np.asarray(im)
    except Exception:  # Pillow raises many types for files it cannot decode
        return None
    if arr.ndim == 2:
        return arr
    return np.ascontiguousarray(arr[:, :, [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[:, :, ::-1])


def _decode(data: np.ndarray, path: str | os.PathLike, flags: int) -> np.ndarray:
    cv2 = _cv2()
    suffix = Path(path).suffix.lower()
    if suffix in HEIF_SUFFIXES:
        _heif_plugin()
        img = _decode_pillow(data, path) if data.size else None
    else:
        try:
            with native_messages(path):
                img = cv2.imdecode(data, flags) if data.size else None
        except cv2.error as exc:  # e.g. a header declaring more pixels than OpenCV allows
            raise ImageError(f"{path}: OpenCV cannot decode it: {_opencv_problem(exc)}") from None
        if img is None and suffix == ".gif":  # OpenCV builds before 4.11 have no GIF decoder
            img = _decode_pillow(data, path)
        if img is not None and flags == cv2.IMREAD_COLOR and img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img is not None and flags == cv2.IMREAD_COLOR and img.shape[2] == 4:
            img = img[:, :, :3]
    if img is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    head = data[:2].tobytes()
    if head == b"\xff\xd8" and b"\xff\xd9" not in data.tobytes():
        # older OpenCV builds return a grey-filled image for a cut-off JPEG
        raise ImageError(f"{path}: truncated JPEG (no end-of-image marker)")
    return img


def read_rgb8(path: str | os.PathLike) -> np.ndarray:
    """Read any supported image as ``H x W x 3`` uint8 RGB (training and scoring use this)."""
    cv2 = _cv2()
    img = _decode(_read_bytes(path), path, cv2.IMREAD_COLOR)
    return img[:, :, ::-1].copy()


@contextmanager
def _pillow_headers() -> Iterator[None]:
    """Pillow without its decompression-bomb limit (DecompressionBombError past 179 Mpx): headers are
    parsed here, and :func:`derain_cli.preflight.check_memory` decides from the size whether pixels may be decoded."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _pillow_warnings(path: str | os.PathLike, caught: list) -> None:
    """Re-issue what Pillow warned while parsing (``Corrupt EXIF data``) as one line naming the file."""
    messages = list(dict.fromkeys(str(w.message).splitlines()[0] for w in caught if str(w.message).strip()))
    if messages:
        warnings.warn(f"{path}: {'; '.join(messages)} (metadata kept as far as it could be read)",
                      DerainWarning, stacklevel=3)


def _metadata(data: np.ndarray, path: str | os.PathLike = "image") -> tuple[int, bytes | None, bytes | None, str | None, int]:
    """``(orientation, exif_bytes, icc_bytes, pillow_mode, frames)`` from the file header (Pillow, lazy)."""
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught, _pillow_headers():
        warnings.simplefilter("always")
        try:
            with Image.open(io.BytesIO(data.tobytes())) as im:
                icc = im.info.get("icc_profile") or None
                exif = im.getexif()
                orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
                for tag in [t for t in exif if t in _TIFF_STRUCTURE_TAGS]:
                    del exif[tag]
                exif_bytes = exif.tobytes() if len(exif) or exif.get_ifd(0x8769) else None
                frames = int(getattr(im, "n_frames", 1) or 1) if getattr(im, "is_animated", False) else 1
                result = orientation, exif_bytes, icc, im.mode, frames
        except Exception:  # Pillow cannot parse every file OpenCV decodes; metadata is best effort
            result = 1, None, None, None, 1
    _pillow_warnings(path, caught)
    return result


class Header(NamedTuple):
    """What a file's header says, read without decoding pixels."""

    width: int
    height: int
    bits: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(path: str | os.PathLike) -> Header | None:
    """Size and bits per sample from the header alone (Pillow reads a few bytes); None if Pillow cannot parse it.

    A PNG that declares 100000 x 100000 pixels is seen for what it is before anything is allocated.
    """
    from PIL import Image

    p = Path(path)
    if p.suffix.lower() in HEIF_SUFFIXES:
        _heif_plugin()
    problem = not_regular(p)
    if problem:
        raise ImageError(f"{path}: {problem}")
    with warnings.catch_warnings(), _pillow_headers():
        warnings.simplefilter("ignore")  # read_image reports what the header holds, once
        try:
            with open(p, "rb") as f:
                head = f.read(32)
            with Image.open(p) as im:
                width, height = im.size
                return Header(int(width), int(height), _bits(im, head))
        except Exception:  # not an image Pillow knows: OpenCV's decoder will judge it
            return None


def _bits(im, head: bytes) -> int:
    """Bits per sample: 16 for 16-bit PNG/TIFF (Pillow opens a 48-bit PNG in an 8-bit mode), else 8."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) > 24:
        return 16 if head[24] == 16 else 8  # IHDR's bit depth
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return 16 if max(bits if isinstance(bits, tuple) else (bits,)) > 8 else 8
    return 8


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored image upright according to its EXIF orientation (1-8)."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1]
    if orientation == 5:
        return img.swapaxes(0, 1)
    if orientation == 6:
        return img.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:
        return img.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return img.swapaxes(0, 1)[::-1]
    return img


def read_image(path: str | os.PathLike) -> Photo:
    """Read a photo upright, as RGB (+ alpha) with its EXIF and ICC profile."""
    cv2 = _cv2()
    data = _read_bytes(path)
    img = _decode(data, path, cv2.IMREAD_UNCHANGED)
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: {img.dtype} samples are not supported (use 8- or 16-bit images)")
    orientation, exif, icc, mode, frames = _metadata(data, path)
    if frames > 1:
        warnings.warn(f"{path}: {frames} frames; derained the first frame only", DerainWarning, stacklevel=2)

    alpha = None
    if img.ndim == 2:
        rgb, gray = np.repeat(img[:, :, None], 3, axis=2), True
    elif img.shape[2] == 1:
        rgb, gray = np.repeat(img, 3, axis=2), True
    elif img.shape[2] == 2:  # gray + alpha (some TIFF decoders)
        rgb, alpha, gray = np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1], True
    elif img.shape[2] == 3:
        rgb, gray = img[:, :, ::-1], mode in ("L", "I;16", "I;16B", "I;16L", "I", "1")
    else:
        rgb, alpha = img[:, :, 2::-1], img[:, :, 3]
        gray = mode in ("LA", "La")
    rgb = np.ascontiguousarray(apply_orientation(rgb, orientation))
    if alpha is not None:
        alpha = np.ascontiguousarray(apply_orientation(alpha, orientation))
    return Photo(rgb=rgb, alpha=alpha, gray=gray, suffix=Path(path).suffix.lower(), exif=exif, icc=icc)


# -- writing ----------------------------------------------------------------------
def _exif_upright(exif: bytes | None) -> bytes | None:
    """The EXIF block with orientation reset to 1 (the pixels are already upright)."""
    if not exif:
        return None
    from PIL import Image

    e = Image.Exif()
    try:
        e.load(exif)
    except Exception:
        return None
    if _EXIF_ORIENTATION in e:
        e[_EXIF_ORIENTATION] = 1
    out = e.tobytes()
    return out if out.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + out


def _matching_icc(icc: bytes | None, gray: bool) -> bytes | None:
    """The profile if it describes what we write (RGB or gray); a CMYK profile on RGB pixels would lie."""
    if not icc or len(icc) < 20:
        return None
    space = icc[16:20]
    return icc if space == (b"GRAY" if gray else b"RGB ") else None


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_with_metadata(png: bytes, exif: bytes | None, icc: bytes | None) -> bytes:
    """Insert ``iCCP`` and ``eXIf`` chunks right after ``IHDR`` (both must precede ``IDAT``)."""
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature + IHDR (length, type, 13 bytes, crc)
    return png[:ihdr_end] + extra + png[ihdr_end:]


def to_uint8(img: np.ndarray) -> np.ndarray:
    """8 bits the way MATLAB's ``im2uint8`` does; one conversion for writing and for scoring.

    uint16 -> round(x / 257) (exact in integers); float in [0, 1] -> round(x * 255)
    after clipping; uint8 unchanged. Used for formats with no 16-bit variant, and by
    :mod:`derain_cli.metrics`, where output and reference must be converted alike.
    """
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        return np.floor(np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise ImageError(f"cannot convert images of type {img.dtype} to 8 bits (expected uint8, uint16 or float)")


def _planes(photo: Photo, keep_alpha: bool) -> np.ndarray:
    """Pixels in OpenCV's layout (gray, BGR or BGRA) for writing."""
    cv2 = _cv2()
    if photo.gray:
        img = cv2.cvtColor(np.ascontiguousarray(photo.rgb), cv2.COLOR_RGB2GRAY)
        if keep_alpha and photo.alpha is not None:
            # gray + alpha has no OpenCV writer layout: store it as BGRA with equal colour planes
            return np.dstack([img, img, img, photo.alpha])
        return img
    bgr = photo.rgb[:, :, ::-1]
    if keep_alpha and photo.alpha is not None:
        return np.ascontiguousarray(np.dstack([bgr, photo.alpha]))
    return np.ascontiguousarray(bgr)


def _pil_image(planes: np.ndarray):
    from PIL import Image

    if planes.ndim == 2:
        return Image.fromarray(planes, "L")
    if planes.shape[2] == 4:
        return Image.fromarray(np.ascontiguousarray(planes[:, :, [2, 1, 0, 3]]), "RGBA")
    return Image.fromarray(np.ascontiguousarray(planes[:, :, ::-1]), "RGB")


def encode_image(photo: Photo, suffix: str, quality: int = 95) -> bytes:
    """Encode ``photo`` for a file ending in ``suffix``, carrying EXIF/ICC where the format allows.

    JPEG, WebP and BMP are 8-bit (16-bit pixels are reduced); JPEG and BMP have
    no alpha. PNG and TIFF keep 16 bits. EXIF and ICC are written for JPEG, PNG,
    WebP and 8-bit TIFF; 16-bit TIFF and BMP carry pixels only.
    """
    cv2 = _cv2()
    suffix = suffix.lower()
    problem = write_problem(suffix)
    if problem:
        raise ImageError(problem)
    if not 1 <= quality <= 100:
        raise ImageError(f"quality must be between 1 and 100, not {quality}")
    exif = _exif_upright(photo.exif)
    icc = _matching_icc(photo.icc, photo.gray)
    keep_alpha = suffix not in (".jpg", ".jpeg")
    sixteen = photo.bit_depth == 16 and suffix in (".png", ".tif", ".tiff")
    if suffix in HEIF_SUFFIXES:
        sixteen = False
    if not sixteen and photo.bit_depth == 16:
        photo = replace(photo, rgb=to_uint8(photo.rgb), alpha=None if photo.alpha is None else to_uint8(photo.alpha))
    planes = _planes(photo, keep_alpha)

    if suffix == ".png":
        ok, buf = cv2.imencode(".png", planes)
        if not ok:
            raise ImageError("OpenCV could not encode a .png image")
        return _png_with_metadata(buf.tobytes(), exif, icc)
    if suffix in (".bmp",) or (sixteen and suffix in (".tif", ".tiff")):
        ok, buf = cv2.imencode(suffix, planes)
        if not ok:
            raise ImageError(f"OpenCV could not encode a {suffix} image")
        return buf.tobytes()

    im = _pil_image(planes)
    kw: dict = {}
    if exif:
        kw["exif"] = exif
    if icc:
        kw["icc_profile"] = icc
    out = io.BytesIO()
    try:
        if suffix in (".jpg", ".jpeg"):
            im.save(out, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **kw)
        elif suffix == ".webp":
            im.save(out, "WEBP", quality=quality, **kw)
        elif suffix in HEIF_SUFFIXES:
            im.save(out, "HEIF", quality=quality, **kw)
        else:  # 8-bit TIFF
            im.save(out, "TIFF", compression="tiff_lzw", **kw)
    except (OSError, ValueError) as exc:  # e.g. WebP is limited to 16383 pixels a side
        raise ImageError(f"cannot encode a {photo.rgb.shape[1]}x{photo.rgb.shape[0]} {suffix} image: {exc}") from None
    return out.getvalue()


def write_problem(suffix: str) -> str | None:
    """Why files ending in ``suffix`` cannot be written (checked before any inference), else None."""
    suffix = suffix.lower()
    if suffix in NATIVE_SUFFIXES:
        return None
    if suffix in HEIF_SUFFIXES:
        try:
            _heif_plugin()
        except ImageError as exc:
            return str(exc)
        return None
    what = f"{suffix} files" if suffix else "files without a suffix"
    return f"derain cannot write {what}; use one of {', '.join(NATIVE_SUFFIXES)} (or .heic with pillow-heif)"


def output_suffix(suffix: str) -> str:
    """The suffix an output gets by default: the input's, or .png for formats only read (GIF)."""
    return ".png" if suffix.lower() == ".gif" else suffix


def default_output(path: str | os.PathLike, out_dir: str | os.PathLike | None = None, tag: str = "_derained") -> Path:
    """``<stem>_derained<suffix>`` (or another ``tag``) next to the input, or inside ``out_dir``; GIF -> PNG."""
    p = Path(path)
    folder = Path(out_dir) if out_dir is not None else p.parent
    return folder / f"{p.stem}{tag}{output_suffix(p.suffix)}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def write_image(
    path: str | os.PathLike,
    photo: Photo,
    *,
    quality: int = 95,
    inputs: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Encode and write atomically (temp file in the target folder, then rename).

    Refuses to replace any of ``inputs``: a derained photo never overwrites its source.
    """
    path = Path(path)
    for src in inputs:
        src = Path(src)
        if path.resolve() == src.resolve() or _same_file(path, src):
            raise ImageError(f"{path}: refusing to overwrite an input image; choose another output")
    data = encode_image(photo, path.suffix, quality=quality)
    if not data:
        raise ImageError(f"{path}: could not encode the image")
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ImageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def side_by_side(before: Photo, after: Photo) -> Photo:
    """Before | after on one canvas (for ``--compare``), keeping format and metadata."""
    rgb = np.concatenate([before.rgb, after.rgb], axis=1)
    alpha = None
    if before.alpha is not None:
        alpha = np.concatenate([before.alpha, after.alpha if after.alpha is not None else before.alpha], axis=1)
    return replace(after, rgb=rgb, alpha=alpha)


def write_png(path, rgb: np.ndarray) -> None:
    """Write RGB (uint8, or float in [0, 1]) as an 8-bit PNG atomically: datasets, bench outputs."""
    import cv2

    from .weightfile import atomic_write_bytes

    if rgb.dtype != np.uint8:
        rgb = (np.clip(rgb, 0, 1) * 255.0).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ImageError(f"cannot encode {path}")
    try:
        atomic_write_bytes(path, buf.tobytes())
    except OSError as exc:
        raise ImageError(f"cannot write {path}: {exc.strerror or exc}") from None
