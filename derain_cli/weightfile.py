"""The shipped weights format: one safetensors file per model, never pickle.

The file's metadata says which architecture and config the tensors belong to,
so a file made for another architecture is refused before any tensor is used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import WeightsError

FORMAT = "derain-weights/1"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; give outputs the usual umask mode
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def portable(text: str) -> str:
    """``text`` with ``$DERAIN_DATA`` and the working folder in place of machine paths: a run records its
    data folders as given (expanded), and a shipped file or entry must not name the machine."""
    data = os.environ.get("DERAIN_DATA")
    if data:
        text = text.replace(str(Path(data).resolve()), "$DERAIN_DATA").replace(data.rstrip("/"), "$DERAIN_DATA")
    return text.replace(str(Path.cwd()) + os.sep, "")


_MACHINE_PATH = re.compile(r"""(?:^|[\s"'=\[(,])(/[^\s"',\])]+|[A-Za-z]:\\[^\s"',\])]+)""")


def machine_path(text: str) -> str | None:
    """The first absolute path in ``text``: what no file or entry of the project may hold."""
    found = _MACHINE_PATH.search(text)
    return found.group(1) if found else None


def save_weights(
    path: str | os.PathLike,
    state_dict: dict[str, Any],
    *,
    architecture: str,
    config: dict[str, Any],
    half: bool = True,
    **info: Any,
) -> str:
    """Save an inference weights file atomically; returns its sha256.

    ``half`` stores floating tensors as fp16 (halves the file; inference upcasts).
    ``info`` (training data, steps, date, ...) goes into the metadata as JSON.
    """
    import torch

    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.to(torch.float16)
        tensors[k] = v
    meta = {"format": FORMAT, "architecture": architecture, "config": json.dumps(config, sort_keys=True)}
    meta.update({k: portable(json.dumps(v)) for k, v in info.items()})
    write_safetensors(path, tensors, meta)
    return sha256_file(path)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and string ``metadata`` atomically, the metadata keys sorted, so the same
    weights and metadata always give the same file and sha256 (safetensors orders them at random)."""
    from safetensors.torch import save

    blob = save(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    atomic_write_bytes(path, len(text).to_bytes(8, "little") + text + blob[8 + n:])


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Decoded metadata of a weights file (``config`` and extra info parsed from JSON)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # safetensors raises several types for bad headers
        raise WeightsError(f"{path}: not a valid safetensors weights file ({exc})") from None
    if raw.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a derain weights file (no '{FORMAT}' metadata)")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("format", "architecture"):
            meta[k] = v
            continue
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return meta


def load_weights(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    sha256: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load ``(state_dict, metadata)`` from a safetensors file, checking what it claims.

    ``sha256``, when given, must match the file (a truncated or swapped file is
    refused). ``architecture``, when given, must match the file's metadata.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: only .safetensors weights are accepted (pickle files are never loaded)")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsError(
                f"{path}: sha256 mismatch (expected {sha256[:12]}..., got {actual[:12]}...); "
                "the file is corrupt or not the one listed in weights.toml; delete it and pull again"
            )
    meta = read_metadata(path)
    if architecture is not None and meta.get("architecture") != architecture:
        raise WeightsError(
            f"{path}: weights are for architecture {meta.get('architecture')!r}, not {architecture!r}"
        )
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read tensors ({exc})") from None
    check_finite(state, path)
    return state, meta


def check_finite(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse NaN/Inf in any floating tensor: one corrupt value would turn every output pixel to NaN.

    A value check only sees what a damaged byte turns into NaN or Inf; the sha256
    in weights.toml is what catches every changed byte of a registered file.
    """
    import torch

    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        bad = tensor.numel() - int(torch.isfinite(tensor).sum())
        if bad:
            kinds = "NaN" if torch.isnan(tensor).any() else "Inf"
            if kinds == "NaN" and torch.isinf(tensor).any():
                kinds = "NaN and Inf"
            raise WeightsError(
                f"{path}: tensor {name!r} has {bad} non-finite value{'s' if bad > 1 else ''} ({kinds}); "
                "the file is corrupt: download or export it again"
            )
