"""Find, verify and load the weights listed in ``weights.toml``.

Resolution order for :func:`open_weights`: an explicit ``--weights FILE`` ->
the file bundled in the package -> the Hugging Face cache -> ``hf_hub_download``
at the pinned revision -> a :class:`WeightsError` saying what to do. Every
listed file is checked against its sha256 before any tensor is used.

huggingface_hub reads ``HF_HUB_OFFLINE``/``HF_ENDPOINT``/``HF_HOME`` once, at
import; this module reads them on every call and passes them on explicitly, so
changing them in a running process (or a test) takes effect.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WeightsError
from .registry import model_names
from .weightfile import load_weights, sha256_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Environment variable naming another weights.toml (tests, private registries).
TOML_ENV = "DERAIN_WEIGHTS_TOML"
PACKAGE_DIR = Path(__file__).resolve().parent
#: The registry shipped with the package (a symlink to the repo's top-level weights.toml).
PACKAGED_TOML = PACKAGE_DIR / "weights.toml"
#: Where listed ``file`` names live when the weights are bundled.
BUNDLED_DIR = PACKAGE_DIR / "data" / "weights"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_REQUIRED = {
    "file": str,
    "sha256": str,
    "size": int,
    "preset": str,
    "config": dict,
    "trained_on": str,
    "steps": int,
    "recipe": str,
}
_HUB_FIELDS = ("repo_id", "revision", "filename")
_OPTIONAL = {"model": str, "summary": str, "metrics": dict, "tasks": list, "default": bool, "parent": str,
             "lineage": list,
             **{k: str for k in _HUB_FIELDS}}


@dataclass(frozen=True)
class WeightsEntry:
    """One table of weights.toml, validated."""

    name: str
    model: str
    file: str
    sha256: str
    size: int
    preset: str
    config: dict[str, Any]
    trained_on: str
    steps: int
    #: The recipe file (``recipes/MODEL-TAG.toml``) of the run that made the file.
    recipe: str
    summary: str = ""
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: What these weights were trained to do (``derain``, ``rainify``); None = all the model can.
    tasks: list[str] | None = None
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None
    #: The weights a bare ``--model NAME`` means (one per architecture; else its first entry).
    default: bool = False
    #: sha256 of the weights the last run started from, when they are another entry.
    parent: str | None = None
    #: One short line per earlier run or step that led to these weights, oldest first.
    lineage: list[str] = field(default_factory=list)

    @property
    def tag(self) -> str:
        """``general`` for the entry ``dualstage.general``; ``""`` for an untagged entry."""
        return self.name.partition(".")[2]

    @property
    def published(self) -> bool:
        """True when the entry names a hub repo, revision and filename to download from."""
        return self.repo_id is not None

    @property
    def bundled_path(self) -> Path:
        return BUNDLED_DIR / self.file

    def metric_text(self, dataset: str = "rain100l") -> str:
        """``"PSNR dB / SSIM"`` as recorded for ``dataset``, or ``""`` if none is recorded."""
        m = self.metrics.get(dataset)
        if not m or "psnr" not in m:
            return ""
        text = f"{float(m['psnr']):.2f} dB"
        if "ssim" in m:
            text += f" / {float(m['ssim']):.4f}"
        return text


# -- the registry file ---------------------------------------------------------------
def toml_path() -> Path:
    """The weights.toml in use: ``$DERAIN_WEIGHTS_TOML`` if set, else the packaged one."""
    override = os.environ.get(TOML_ENV)
    return Path(override) if override else PACKAGED_TOML


def _parse_entry(name: str, table: Any, where: Path) -> WeightsEntry:
    def bad(msg: str) -> WeightsError:
        return WeightsError(f"{where}: [{name}] {msg}")

    if not isinstance(table, dict):
        raise bad("must be a table")
    unknown = set(table) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
        if key in table and (not isinstance(table[key], typ) or isinstance(table[key], bool) and typ is not bool):
            raise bad(f"field {key!r} must be a {typ.__name__}")
    missing = [k for k in _REQUIRED if k not in table]
    if missing:
        raise bad(f"missing field(s): {', '.join(missing)}")
    model = table.get("model", name.partition(".")[0])
    if model not in model_names():
        raise bad(f"model {model!r} is not registered (known: {', '.join(model_names())})")
    if "." in name and name.partition(".")[0] != model:
        raise bad(f"a tagged entry is named MODEL.TAG, but its model is {model!r}")
    for key in ("sha256", "parent"):
        if key in table and not _HEX64.fullmatch(table[key]):
            raise bad(f"{key} must be 64 lowercase hex digits")
    if not all(isinstance(x, str) and x for x in table.get("lineage", [])):
        raise bad("lineage must be a list of non-empty strings")
    if not table["recipe"].endswith(".toml") or Path(table["recipe"]).is_absolute():
        raise bad("recipe must be a relative path to a .toml recipe file")
    if "/" in table["file"] or "\\" in table["file"] or not table["file"].endswith(".safetensors"):
        raise bad("file must be a bare .safetensors file name")
    hub = [k for k in _HUB_FIELDS if k in table]
    if hub and len(hub) != len(_HUB_FIELDS):
        raise bad("repo_id, revision and filename go together: give all three or none")
    if hub and not _HEX40.fullmatch(table["revision"]):
        raise bad("revision must be a 40-hex commit id, not a branch or tag")
    tasks = table.get("tasks")
    if tasks is not None and (not tasks or any(t not in ("derain", "rainify") for t in tasks)):
        raise bad("tasks must list 'derain' and/or 'rainify'")
    metrics = table.get("metrics", {})
    for dataset, m in metrics.items():
        if not isinstance(m, dict):
            raise bad(f"metrics.{dataset} must be a table")
        for key in ("psnr", "ssim"):
            if key in m and (isinstance(m[key], bool) or not isinstance(m[key], (int, float))):
                raise bad(f"metrics.{dataset}.{key} must be a number")
        if ("psnr" in m or "ssim" in m) and not isinstance(m.get("command"), str):
            raise bad(f"metrics.{dataset} needs the exact 'command' that measured it")
    return WeightsEntry(name=name, model=model, **{k: v for k, v in table.items() if k != "model"})


def load_registry(path: str | os.PathLike | None = None) -> dict[str, WeightsEntry]:
    """All entries of weights.toml (``path`` or :func:`toml_path`), in file order."""
    where = Path(path) if path is not None else toml_path()
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(f"weights registry not found: {where}") from None
    return load_registry_text(text, where)


def load_registry_text(text: str, where: Path) -> dict[str, WeightsEntry]:
    """The entries of weights.toml's text (``where`` names it in errors), validated."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WeightsError(f"{where}: invalid TOML ({exc})") from None
    entries = {name: _parse_entry(name, table, where) for name, table in data.items()}
    defaults: dict[str, str] = {}
    for e in entries.values():
        if e.default and defaults.setdefault(e.model, e.name) != e.name:
            raise WeightsError(f"{where}: [{defaults[e.model]}] and [{e.name}] are both the default of {e.model!r}")
    return entries


def tagged_entries(model: str) -> list[WeightsEntry]:
    """Every entry of one architecture, the default first."""
    found = [e for e in load_registry().values() if e.model == model]
    return sorted(found, key=lambda e: not e.default)


def find_entry(name: str) -> WeightsEntry | None:
    """The entry for an entry name (``dualstage.general``) or a model name (its default tag), else None."""
    entries = load_registry()
    if name in entries:
        return entries[name]
    if "." in name:
        return None
    matches = tagged_entries(name)
    return matches[0] if matches else None


def entry(name: str) -> WeightsEntry:
    """The entry for ``name`` (an entry name or a model name); a clear error if none is listed."""
    found = find_entry(name)
    if found is not None:
        return found
    model, dot, tag = name.partition(".")
    if dot and not tag:
        raise WeightsError(f"empty tag in {name!r}; write NAME or NAME.TAG, e.g. {model}.general")
    if model not in model_names():
        raise WeightsError(f"unknown model {model!r}; available: {', '.join(model_names())}")
    if tag:
        have = [e.name for e in tagged_entries(model)]
        raise WeightsError(f"model {model!r} has no weights tagged {tag!r}; "
                           + (f"available: {', '.join(have)}" if have else "none are listed"))
    raise WeightsError(
        f"no trained weights are listed for {name!r} in {toml_path()}; "
        f"train some with `derain train --model {name} ... --export FILE.safetensors` "
        "and pass them with --weights FILE"
    )


# -- environment (read on every call, see module docstring) --------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as currently set."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_endpoint(endpoint: str | None = None) -> str | None:
    """``endpoint`` if given, else ``HF_ENDPOINT``, else None (huggingface_hub's default)."""
    value = endpoint or os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``HF_HUB_CACHE``, else ``$HF_HOME/hub`` (as huggingface_hub does)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


# -- locating files ------------------------------------------------------------------
def cached_file(e: WeightsEntry, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The entry's file in the Hugging Face cache at its pinned revision, if present."""
    if not e.published:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        e.repo_id, e.filename, revision=e.revision, cache_dir=str(hub_cache_dir(cache_dir))
    )
    return Path(found) if isinstance(found, str) else None


def _file_status(path: Path, e: WeightsEntry) -> str | None:
    if not path.is_file():
        return None
    return "ok" if path.stat().st_size == e.size else "corrupt"


def weights_status(name: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """``"bundled"``, ``"cached"`` or ``"missing"`` (``"corrupt"`` if a file has the wrong size).

    Cheap (no hashing): the full sha256 check happens on every load.
    """
    e = find_entry(name)
    if e is None:
        return "missing"
    bundled = _file_status(e.bundled_path, e)
    if bundled is not None:
        return "bundled" if bundled == "ok" else "corrupt"
    cached = cached_file(e, cache_dir)
    if cached is not None:
        return "cached" if _file_status(cached, e) == "ok" else "corrupt"
    return "missing"


def _verify(path: Path, e: WeightsEntry) -> bool:
    return path.is_file() and path.stat().st_size == e.size and sha256_file(path) == e.sha256


def _delete_cached(path: Path) -> None:
    """Remove a cache pointer and the blob it links to, so the next pull fetches a fresh copy."""
    blob = Path(os.path.realpath(path))
    for p in {path, blob}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _not_here_message(e: WeightsEntry, cache_dir: Path) -> str:
    if not e.published:
        return (
            f"weights for {e.name!r} ({e.file}) are not bundled in this installation and are not "
            "published on a hub yet; reinstall derain-cli from a source that ships them, "
            "or pass a weights file with --weights FILE"
        )
    return (
        f"weights for {e.name!r} are not bundled and not in the Hugging Face cache ({cache_dir})"
    )


def weights_path(name: str, *, cache_dir: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Local path of the entry's verified file (bundled, else cached); never downloads."""
    e = entry(name)
    cache = hub_cache_dir(cache_dir)
    if e.bundled_path.is_file():
        if verify and not _verify(e.bundled_path, e):
            raise _bundled_corrupt(e)
        return e.bundled_path
    cached = cached_file(e, cache)
    if cached is not None:
        if verify and not _verify(cached, e):
            _delete_cached(cached)
            raise _cached_corrupt(e, cached)
        return cached
    msg = _not_here_message(e, cache)
    if e.published:
        msg += f"; run `derain weights pull {e.name}` to download it"
    raise WeightsError(msg)


def _bundled_corrupt(e: WeightsEntry) -> WeightsError:
    return WeightsError(
        f"bundled weights {e.bundled_path} do not match weights.toml (sha256/size differ: "
        "truncated or replaced file); it was not used. Reinstall derain-cli, or pass --weights FILE"
    )


def _cached_corrupt(e: WeightsEntry, path: Path) -> WeightsError:
    return WeightsError(
        f"cached weights for {e.name!r} ({path}) did not match the sha256 in weights.toml and were "
        f"deleted; run `derain weights pull {e.name}` to download them again"
    )


def _download(e: WeightsEntry, *, endpoint: str | None, cache_dir: Path, force: bool = False) -> Path:
    """``hf_hub_download`` at the pinned revision, then the sha256 check (bad files are deleted)."""
    if hub_offline():
        raise WeightsError(
            f"{_not_here_message(e, cache_dir)}, and HF_HUB_OFFLINE is set so nothing is downloaded; "
            f"unset HF_HUB_OFFLINE and run `derain weights pull {e.name}`, or pass --weights FILE"
        )
    from huggingface_hub import hf_hub_download

    url = f"{hub_endpoint(endpoint) or 'https://huggingface.co'}/{e.repo_id}@{e.revision[:10]}"
    try:
        path = Path(
            hf_hub_download(
                e.repo_id,
                e.filename,
                revision=e.revision,
                endpoint=hub_endpoint(endpoint),
                cache_dir=str(cache_dir),
                local_files_only=False,
                force_download=force,
            )
        )
    except Exception as exc:  # network, HTTP and consistency errors of every kind
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"could not download weights for {e.name!r} from {url} ({type(exc).__name__}: {first}); "
            "check the network and HF_ENDPOINT, or pass --weights FILE"
        ) from None
    if not _verify(path, e):
        _delete_cached(path)
        raise WeightsError(
            f"the file downloaded for {e.name!r} from {url} does not match the sha256 in weights.toml; "
            "it was deleted and not used (the hub copy or the mirror is wrong)"
        )
    return path


def pull(
    name: str,
    *,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> tuple[Path, str]:
    """Make the entry's weights available locally; returns ``(path, how)``.

    ``how`` is ``"bundled"``, ``"cached"`` or ``"downloaded"``. Raises
    :class:`WeightsError` when the weights are not published or cannot be fetched.
    """
    e = entry(name)
    cache = hub_cache_dir(cache_dir)
    if e.bundled_path.is_file() and not force:
        if not _verify(e.bundled_path, e):
            raise _bundled_corrupt(e)
        return e.bundled_path, "bundled"
    if not e.published:
        raise WeightsError(
            f"weights for {e.name!r} are not published on a hub yet (weights.toml has no "
            "repo_id/revision/filename), so there is nothing to pull"
            + ("" if e.bundled_path.is_file() else "; pass a weights file with --weights FILE")
        )
    cached = cached_file(e, cache)
    if cached is not None and not force:
        if _verify(cached, e):
            return cached, "cached"
        _delete_cached(cached)
    return _download(e, endpoint=endpoint, cache_dir=cache, force=force), "downloaded"


# -- loading -------------------------------------------------------------------------
def _architecture_for(name: str) -> str | None:
    e = find_entry(name)
    if e is not None:
        return e.model
    model = name.partition(".")[0]
    return model if model in model_names() else None


def open_weights(
    model_name: str,
    weights_file: str | os.PathLike | None = None,
    *,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, meta)`` for ``model_name`` (a model or weights-entry name).

    ``meta`` is the file's metadata (``architecture``, ``config``, ...) plus
    ``weights_path`` and ``weights_source`` (file / bundled / cache / download).
    """
    if weights_file is not None:
        if model_name.partition(".")[0] not in model_names() and find_entry(model_name) is None:
            raise WeightsError(f"unknown model {model_name!r}; available: {', '.join(model_names())}")
        path = Path(weights_file)
        state, meta = load_weights(path, architecture=_architecture_for(model_name))
        return state, {**meta, "weights_path": str(path), "weights_source": "file"}

    e = entry(model_name)
    cache = hub_cache_dir(cache_dir)
    if e.bundled_path.is_file():
        path, source = e.bundled_path, "bundled"
        if not _verify(path, e):
            raise _bundled_corrupt(e)
    else:
        path, source = None, "cache"
        cached = cached_file(e, cache)
        if cached is not None:
            if _verify(cached, e):
                path = cached
            else:
                _delete_cached(cached)
                if hub_offline():
                    raise _cached_corrupt(e, cached)
        if path is None:
            if not e.published:
                raise WeightsError(_not_here_message(e, cache))
            path, source = _download(e, endpoint=endpoint, cache_dir=cache), "download"
    # the sha256 was checked just above (_verify), with a message that says what to do
    state, meta = load_weights(path, architecture=e.model)
    if meta.get("config") != e.config:
        raise WeightsError(
            f"{path}: the config in the file's metadata differs from [{e.name}].config in weights.toml; "
            "fix the entry so it records the config the weights were trained with"
        )
    if e.tasks is not None:
        meta = {**meta, "tasks": list(e.tasks)}
    return state, {**meta, "weights_path": str(path), "weights_source": source}
