"""Benchmark datasets: registered names, folder datasets, and where their files come from.

A dataset is a folder with ``rainy/`` and ``clean/`` whose files pair by stem
(``rainy/001.png`` <-> ``clean/001.jpg``); ``test/rainy`` + ``test/clean`` under
the given folder is accepted too, so a data root laid out as ``rain100l/test``
works as is. A registered name is looked up, in order, at ``--data DIR``,
``$DERAIN_DATA/<name>``, the Hugging Face cache, and finally downloaded from a
dataset repository at a pinned revision; hub files are checked against the
sha256 manifest shipped in this package (the manifest lists the files, so the
download needs nothing but the hub's resolve endpoint).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import imageio
from .errors import DerainError


#: Environment variable naming the folder that holds one sub-folder per dataset.
DATA_ENV = "DERAIN_DATA"

_MANIFEST_DIR = Path(__file__).resolve().parent / "data" / "datasets"


@dataclass(frozen=True)
class DatasetSpec:
    """A named benchmark set: what it is, how many pairs, and where it can be fetched or built.

    ``hub_repo``/``hub_revision`` stay empty until the set is really published;
    ``manifest`` is a sha256sum-style file (``HEX  path``) naming every file, with
    paths relative to ``hub_subdir`` in the repository (relative names are looked
    up in ``derain_cli/data/datasets/``).
    """

    name: str
    title: str
    source: str
    pairs: int | None = None
    hub_repo: str = ""
    hub_revision: str = ""
    hub_subdir: str = ""
    manifest: str = ""
    #: How to make the set locally when it is derived from another one.
    builder: str = ""

    @property
    def published(self) -> bool:
        return bool(self.hub_repo and self.hub_revision and self.manifest)

    def manifest_path(self) -> Path:
        p = Path(self.manifest)
        return p if p.is_absolute() else _MANIFEST_DIR / p


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add (or replace) a named dataset; returns it so tests can register temporary ones."""
    DATASETS[spec.name] = spec
    return spec


_JORDER = "Yang et al., Deep Joint Rain Detection and Removal from a Single Image (JORDER), CVPR 2017"
for _name, _title, _source, _pairs in (
    ("rain100l", "Rain100L test (original 2017 release, 100 pairs, light rain)", _JORDER, 100),
    ("rain100h", "Rain100H test (100 pairs, heavy rain)", _JORDER, 100),
    ("rain12", "Rain12 (12 pairs)", "Li et al., Rain Streak Removal Using Layer Priors, CVPR 2016", 12),
):
    register_dataset(DatasetSpec(name=_name, title=_title, source=_source, pairs=_pairs))
register_dataset(DatasetSpec(
    name="rain100l-fog",
    title="Rain100L test rainy images with synthetic fog (fixed seed), clean targets unchanged",
    source="derived here from Rain100L test by `derain synth --eval-set rain100l-fog`",
    pairs=100,
    builder="derain synth --eval-set rain100l-fog --data DIR_HOLDING_rain100l -o $DERAIN_DATA/rain100l-fog",
))


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DerainError(
            f"unknown dataset {name!r}: not a folder and not a registered name ({', '.join(DATASETS)})"
        ) from None


@dataclass(frozen=True)
class Pair:
    stem: str
    first: Path
    second: Path


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to use: its folder, how it was found, and its pairs."""

    name: str
    root: Path
    origin: str  # "folder", "--data", "$DERAIN_DATA", "hub cache", "hub download"
    spec: DatasetSpec | None

    def pairs(self) -> list[Pair]:
        """(stem, rainy, clean) triples sorted by stem."""
        return pair_by_stem(self.root / "rainy", self.root / "clean", "rainy", "clean")


def list_images(folder: Path) -> dict[str, Path]:
    """Images of a folder by stem; two files with one stem are an error (which one to score?)."""
    found: dict[str, Path] = {}
    for p in imageio.list_images(folder, required=False):
        if p.stem in found:
            raise DerainError(f"{folder}: two images share the stem {p.stem!r} ({found[p.stem].name}, {p.name})")
        found[p.stem] = p
    return found


def _stems_text(stems: list[str], limit: int = 5) -> str:
    more = f" and {len(stems) - limit} more" if len(stems) > limit else ""
    return ", ".join(stems[:limit]) + more


def pair_by_stem(first_dir: Path, second_dir: Path, first_label: str, second_label: str,
                 first_tag: str = "") -> list[Pair]:
    """Pair two folders by file stem; any image without a partner is an error that names it.

    ``first_tag`` is a suffix the first folder's stems may carry (``_derained``, as
    ``derain run``/``derain batch`` name their outputs); it is ignored for pairing.
    """
    a, b = list_images(first_dir), list_images(second_dir)
    if first_tag:
        untagged: dict[str, Path] = {}
        for stem, path in a.items():
            key = stem[: -len(first_tag)] if stem.endswith(first_tag) and stem not in b else stem
            if key in untagged:
                raise DerainError(f"{first_dir}: both {untagged[key].name} and {path.name} would pair with {key!r}")
            untagged[key] = path
        a = untagged
    if not a:
        raise DerainError(f"no images in {first_dir}")
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if only_a or only_b:
        def a_(label: str) -> str:
            return ("an " if label[0] in "aeiou" else "a ") + label

        parts = []
        if only_a:
            parts.append(f"{len(only_a)} {first_label} image(s) without {a_(second_label)} partner: {_stems_text(only_a)}")
        if only_b:
            parts.append(f"{len(only_b)} {second_label} image(s) without {a_(first_label)} partner: {_stems_text(only_b)}")
        raise DerainError(f"cannot pair {first_dir} with {second_dir}: " + "; ".join(parts))
    return [Pair(s, a[s], b[s]) for s in sorted(a)]


def pairs_root(folder: Path) -> Path | None:
    """``folder`` or ``folder/test`` if it holds ``rainy/`` and ``clean/``; else None."""
    for cand in (folder, folder / "test"):
        if (cand / "rainy").is_dir() and (cand / "clean").is_dir():
            return cand
    return None


def infer_registered_name(folder: Path) -> str | None:
    """The registered name a folder is laid out as (``.../rain100l`` or ``.../rain100l/test``), for context only."""
    folder = folder.resolve()
    for part in (folder.name, folder.parent.name if folder.name == "test" else ""):
        if part.lower() in DATASETS:
            return part.lower()
    return None


def resolve_dataset(
    name_or_folder: str,
    data: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
) -> Dataset:
    """Find a dataset by folder path or registered name (see the module docstring for the order)."""
    env = os.environ if env is None else env
    as_path = Path(name_or_folder).expanduser()
    if name_or_folder not in DATASETS or os.sep in name_or_folder:
        if as_path.is_dir():
            root = pairs_root(as_path)
            if root is None:
                raise DerainError(f"{as_path} has no rainy/ and clean/ folders (nor test/rainy and test/clean)")
            return Dataset(infer_registered_name(root) or as_path.name, root, "folder", None)
        if name_or_folder not in DATASETS:
            get_dataset(name_or_folder)  # raises the "unknown dataset" error
    spec = DATASETS[name_or_folder]

    if data is not None:
        data = Path(data).expanduser()
        for cand in (data, data / spec.name):
            root = pairs_root(cand)
            if root is not None:
                return Dataset(spec.name, root, "--data", spec)
        raise DerainError(f"--data {data}: no rainy/ and clean/ folders there or in {data / spec.name}")

    if env.get(DATA_ENV):
        root = pairs_root(Path(env[DATA_ENV]).expanduser() / spec.name)
        if root is not None:
            return Dataset(spec.name, root, "$" + DATA_ENV, spec)

    if not spec.published:
        how = f"; build it with: {spec.builder}" if spec.builder else ""
        raise DerainError(
            f"dataset {spec.name} is not published on a hub and was not found locally: "
            f"pass --data DIR or put it in ${DATA_ENV}/{spec.name} (rainy/ + clean/){how}"
        )
    root, origin = fetch_from_hub(spec)
    return Dataset(spec.name, root, origin, spec)


def read_manifest(path: Path) -> list[tuple[str, str]]:
    """(sha256, relative path) lines of a sha256sum-style manifest."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DerainError(f"cannot read dataset manifest {path}: {exc.strerror or exc}") from None
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, rel = line.partition(" ")
        rel = rel.strip().lstrip("*")
        if len(digest) != 64 or not rel or rel.startswith("/") or ".." in Path(rel).parts:
            raise DerainError(f"{path}:{n}: not a 'sha256  relative/path' line")
        entries.append((digest.lower(), rel))
    if not entries:
        raise DerainError(f"dataset manifest {path} lists no files")
    return entries


def _discard_cached(path: Path) -> None:
    """Remove a cached file (the snapshot link and the blob it points to) so it is never used again."""
    target = path.resolve()
    for p in (path, target):
        try:
            p.unlink()
        except OSError:
            pass


def fetch_from_hub(spec: DatasetSpec) -> tuple[Path, str]:
    """Root folder of ``spec`` from the Hugging Face cache, or downloaded into it; every file is verified."""
    from huggingface_hub import hf_hub_download

    from .weightfile import sha256_file
    from .weights import hub_cache_dir, hub_endpoint, hub_offline

    entries = read_manifest(spec.manifest_path())
    prefix = spec.hub_subdir.strip("/")
    # huggingface_hub reads HF_* variables once at import; pass them on as they are now.
    endpoint, cache_dir = hub_endpoint(), str(hub_cache_dir())

    def get(rel: str, cache_only: bool) -> Path:
        filename = f"{prefix}/{rel}" if prefix else rel
        return Path(hf_hub_download(
            repo_id=spec.hub_repo, filename=filename, repo_type="dataset",
            revision=spec.hub_revision, local_files_only=cache_only,
            endpoint=endpoint, cache_dir=cache_dir,
        ))

    origin = "hub cache"
    try:
        paths = [get(rel, True) for _, rel in entries]
    except Exception:  # not (fully) cached: download what is missing
        origin = "hub download"
        if hub_offline():
            raise DerainError(
                f"dataset {spec.name} is not in the Hugging Face cache ({cache_dir}) and HF_HUB_OFFLINE "
                f"is set; unset it to download, or pass --data DIR / set ${DATA_ENV}"
            ) from None
        try:
            paths = [get(rel, False) for _, rel in entries]
        except Exception as exc:
            raise DerainError(
                f"dataset {spec.name}: download from {spec.hub_repo}@{spec.hub_revision[:12]} failed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                f"pass --data DIR or set ${DATA_ENV} to use a local copy"
            ) from None

    bad = []
    for (digest, rel), path in zip(entries, paths):
        if sha256_file(path) != digest:
            bad.append(rel)
            _discard_cached(path)
    if bad:
        raise DerainError(
            f"dataset {spec.name}: {len(bad)} file(s) do not match the sha256 manifest "
            f"({_stems_text(bad, 3)}); they were removed from the cache and not used"
        )
    rel0 = Path(entries[0][1])
    root = paths[0]
    for _ in rel0.parts:
        root = root.parent
    if pairs_root(root) is None:
        raise DerainError(f"dataset {spec.name}: the downloaded files have no rainy/ and clean/ folders")
    return pairs_root(root), origin
