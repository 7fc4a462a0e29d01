"""Scoring folders and benchmarking models: the numbers users choose a model by.

Quality uses :mod:`derain_cli.metrics` (the field's Y-channel PSNR/SSIM).
Speed is measured around the model call only: images are read before the clock
starts and written after it stops, and one untimed warm-up run on the first
image comes first (allocator, thread pool and kernel caches), so seconds per
image and MP/s describe the model, not the disk.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import metrics
from .datasets import Dataset, Pair, pair_by_stem
from .errors import DerainError, ImageError
from .imageio import write_png  # noqa: F401 (one implementation, in imageio)
from .weightfile import atomic_write_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PUBLISHED_TOML = Path(__file__).resolve().parent / "data" / "published.toml"

Progress = Callable[[int, int], None]

#: ``derain run``/``derain batch`` name outputs ``<stem>_derained<suffix>``; eval pairs them with ``<stem>``.
OUTPUT_TAG = "_derained"


# -- reading and writing ------------------------------------------------------------
def read_for_scoring(path: str | os.PathLike) -> np.ndarray:
    """An image as the metrics expect it: uint8/uint16, gray or RGB, EXIF orientation applied.

    16-bit files keep their depth here so :func:`metrics.to_uint8` scales output
    and reference identically (OpenCV's own 8-bit conversion would truncate).
    """
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    if img is None:
        raise ImageError(f"{path}: not a readable image (corrupt or unsupported format)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: {img.dtype} images cannot be scored (8- or 16-bit only)")
    if img.ndim == 3:
        img = img[:, :, 2::-1] if img.shape[2] >= 3 else img[:, :, 0]
    return np.ascontiguousarray(img)


# -- results ---------------------------------------------------------------------------
@dataclass
class ImageResult:
    stem: str
    width: int
    height: int
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    seconds: float | None = None  # model time, when a model produced the output


@dataclass
class EvalResult:
    """Per-image figures and their means (per image, then over images)."""

    rows: list[ImageResult]

    @property
    def mean(self) -> metrics.Scores:
        return metrics.mean_scores([metrics.Scores(r.psnr_y, r.ssim_y, r.psnr_rgb) for r in self.rows])


def _scored(stem: str, output: np.ndarray, reference: np.ndarray, what: str, seconds: float | None = None) -> ImageResult:
    if output.shape[:2] != reference.shape[:2]:
        raise ImageError(
            f"{what}: size mismatch for {stem!r}: {output.shape[1]}x{output.shape[0]} vs "
            f"reference {reference.shape[1]}x{reference.shape[0]} (width x height)"
        )
    s = metrics.score(output, reference)
    return ImageResult(stem, reference.shape[1], reference.shape[0], s.psnr_y, s.ssim_y, s.psnr_rgb, seconds)


def score_folders(out_dir: str | os.PathLike, gt_dir: str | os.PathLike, progress: Progress | None = None) -> EvalResult:
    """Score existing outputs against references paired by file stem."""
    pairs = pair_by_stem(Path(out_dir), Path(gt_dir), "output", "reference", first_tag=OUTPUT_TAG)
    rows = []
    for i, p in enumerate(pairs):
        rows.append(_scored(p.stem, read_for_scoring(p.first), read_for_scoring(p.second), str(out_dir)))
        if progress:
            progress(i + 1, len(pairs))
    return EvalResult(rows)


# -- running a model -------------------------------------------------------------------
def load_derainer(name: str, *, weights: str | os.PathLike | None = None, device: str = "auto",
                  threads: int | None = None, variant: str | None = None, ensemble: bool | int = False,
                  half: bool = False, work_size: int = 0, copy_only: bool = False) -> Any:
    """The inference API's model (:func:`derain_cli.api.load_model`), loaded once for a whole folder."""
    from .api import load_model

    return load_model(name, weights=weights, device=device, threads=threads, variant=variant, ensemble=ensemble,
                      half=half, work_size=work_size, copy_only=copy_only)


def count_parameters(derainer: Any) -> int:
    """Parameters of the network that actually derains (not discriminators or rain generators)."""
    net = getattr(derainer, "net", None)
    if net is None:
        return 0
    return sum(p.numel() for p in net.parameters())


def _run_pairs(derainer: Any, pairs: list[Pair], *, tile: int | None, save_dir: Path | None,
               progress: Progress | None, warm_up: bool) -> EvalResult:
    from .imageio import read_rgb8

    tile = tile or 0  # 0: the API picks (whole image when it fits)
    if warm_up and pairs:
        derainer.process(read_rgb8(pairs[0].first), tile=tile)
    rows = []
    for i, p in enumerate(pairs):
        rainy = read_rgb8(p.first)
        reference = read_for_scoring(p.second)
        t0 = time.perf_counter()
        out = derainer.process(rainy, tile=tile)
        seconds = time.perf_counter() - t0
        rows.append(_scored(p.stem, out, reference, "model output", seconds))
        if save_dir is not None:
            write_png(save_dir / f"{p.stem}.png", out)
        if progress:
            progress(i + 1, len(pairs))
    return EvalResult(rows)


def score_model(derainer: Any, rainy_dir: str | os.PathLike, gt_dir: str | os.PathLike, *, tile: int | None = None,
                save_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> EvalResult:
    """Derain every image of ``rainy_dir`` and score it against ``gt_dir`` (paired by stem)."""
    pairs = pair_by_stem(Path(rainy_dir), Path(gt_dir), "rainy", "reference")
    check_save_dir(save_dir, rainy_dir, gt_dir)
    return _run_pairs(derainer, pairs, tile=tile, save_dir=Path(save_dir) if save_dir else None,
                      progress=progress, warm_up=False)


def check_save_dir(save_dir, *inputs) -> None:
    if save_dir is None:
        return
    out = Path(save_dir).resolve()
    for src in inputs:
        if out == Path(src).resolve():
            raise DerainError(f"--save-dir {save_dir} is an input folder; choose another so no input is overwritten")


# -- peak memory -----------------------------------------------------------------------
def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise), so the next model's peak starts low."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so each model gets its own peak."""
    release_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# -- bench -------------------------------------------------------------------------------
@dataclass
class BenchResult:
    model: str
    weights: str
    dataset: str
    images: int
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    seconds_per_image: float
    megapixels_per_second: float
    peak_memory_mb: float
    memory_kind: str  # "peak RSS (process)" or "CUDA max allocated"
    parameters: int
    device: str
    threads: int
    tile: int | None
    rows: list[ImageResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("rows")
        return d


def device_of(derainer: Any) -> str:
    return str(getattr(derainer, "device", "cpu"))


def weights_text(derainer: Any, weights: str | os.PathLike | None) -> str:
    """Which weights were measured: the file and how it was found (bundled, cache, download, file)."""
    meta = getattr(derainer, "meta", {}) or {}
    path = meta.get("weights_path") or (str(weights) if weights else "")
    source = meta.get("weights_source", "file" if weights else "registered")
    return f"{Path(path).name} ({source})" if path else source


def bench_model(name: str, dataset: Dataset, *, weights: str | os.PathLike | None = None, device: str = "auto",
                threads: int | None = None, tile: int | None = None, limit: int | None = None,
                save_dir: str | os.PathLike | None = None, progress: Progress | None = None,
                variant: str | None = None, ensemble: bool | int = False, half: bool = False,
                work_size: int = 0, copy_only: bool = False) -> BenchResult:
    """Load ``name`` and measure quality, speed and memory on ``dataset`` (first ``limit`` pairs).

    A ``variant`` given explicitly is reported in the model column as ``name:variant``, the
    four-flip ensemble as ``name+ensemble`` (two flips: ``name+flips2``) and ``half`` as
    ``name+bf16`` (or ``+fp16``) and ``work_size`` as ``name+workN`` (``copy_only``: ``name+workN-copy``), so a
    table never mixes them up.
    """
    import torch

    pairs = dataset.pairs()
    if limit is not None:
        if limit < 1:
            raise DerainError("--limit must be at least 1")
        pairs = pairs[:limit]
    if save_dir is not None:
        check_save_dir(save_dir, dataset.root / "rainy", dataset.root / "clean")

    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reset_peak_rss()
    derainer = load_derainer(name, weights=weights, device=device, threads=threads, variant=variant,
                             ensemble=ensemble, half=half, work_size=work_size, copy_only=copy_only)
    dev = device_of(derainer)
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = _run_pairs(derainer, pairs, tile=tile, save_dir=Path(save_dir) if save_dir else None,
                        progress=progress, warm_up=True)
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(), "CUDA max allocated"
    else:
        peak, kind = peak_rss_bytes(), "peak RSS (process)"
    total_s = sum(r.seconds for r in result.rows)
    total_mp = sum(r.width * r.height for r in result.rows) / 1e6
    mean = result.mean
    return BenchResult(
        model=(name if variant is None else f"{name}:{variant}")
        + {1: "", 2: "+flips2", 4: "+ensemble"}[derainer.ensemble]
        + ("" if derainer.dtype is None else "+" + {torch.bfloat16: "bf16", torch.float16: "fp16"}[derainer.dtype])
        + (f"+work{derainer.work_size}" + ("-copy" if derainer.copy_only else "") if derainer.work_size else ""),
        weights=weights_text(derainer, weights),
        dataset=dataset.name,
        images=len(result.rows),
        psnr_y=mean.psnr_y,
        ssim_y=mean.ssim_y,
        psnr_rgb=mean.psnr_rgb,
        seconds_per_image=total_s / len(result.rows),
        megapixels_per_second=total_mp / total_s if total_s > 0 else float("inf"),
        peak_memory_mb=peak / 2**20,
        memory_kind=kind,
        parameters=count_parameters(derainer),
        device=dev,
        threads=torch.get_num_threads(),
        tile=tile,
        rows=result.rows,
    )


def available_models() -> list[str]:
    """Every weights entry (each tag of each model) bundled or cached here: what ``--model all`` benchmarks."""
    from .registry import model_names
    from .weights import tagged_entries, weights_status

    return [e.name for n in model_names() for e in tagged_entries(n) if weights_status(e.name) in ("bundled", "cached")]


def bench_names(model: str, *, weights=None, variant: str | None = None) -> tuple[list[str], list[str]]:
    """What ``derain bench --model X`` measures: ``(names, skipped)``, skipped = models without weights here.

    ``all`` is every available tag of every model; a single name (or ``NAME.TAG``) is itself.
    """
    from .registry import model_names

    names = model_names()
    if model != "all":
        if model.partition(".")[0] not in names:
            raise DerainError(f"unknown model {model!r}; available: {', '.join(names)} (or NAME.TAG) or 'all'")
        return [model], []
    if weights is not None or variant is not None:
        raise DerainError("--weights and --variant need a single --model, not 'all'")
    available = available_models()
    if not available:
        raise DerainError("no registered model has weights available; pass --model NAME --weights FILE")
    return available, [n for n in names if not any(x.partition(".")[0] == n for x in available)]


def published_figures(dataset: str) -> list[dict[str, Any]]:
    """Published figures for ``dataset`` from ``data/published.toml`` (each with its source)."""
    with open(PUBLISHED_TOML, "rb") as f:
        data = tomllib.load(f)
    return [r for r in data.get("result", []) if r.get("dataset") == dataset]


# -- reports -----------------------------------------------------------------------------
def _finite(x: Any) -> Any:
    """JSON has no Infinity: identical images (infinite PSNR) are written as null."""
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def environment() -> dict[str, Any]:
    """Machine facts that make a figure reproducible."""
    import torch

    return {
        "command": "derain " + " ".join(sys.argv[1:]) if sys.argv else "",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": _processor(),
        "cpu_model": cpu_model(),
        # the widest vector unit torch uses here (AVX2, AVX512, ...): CPU timings depend on it
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
    }


def cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _processor()


def _processor() -> str:
    return platform.processor() or platform.machine()


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    text = json.dumps(_finite(payload), indent=2, allow_nan=False) + "\n"
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as exc:
        raise DerainError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_report(path: str | os.PathLike, result: EvalResult, info: dict[str, Any]) -> None:
    """Per-image figures as CSV (one row per image plus a ``mean`` row) or JSON, by suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        mean = result.mean
        write_json(path, {**info, "mean": asdict(mean), "images": [asdict(r) for r in result.rows]})
        return
    if suffix != ".csv":
        raise DerainError(f"--report {path}: use a .csv or .json file name")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "width", "height", "psnr_y", "ssim_y", "psnr_rgb", "seconds"])
    for r in result.rows:
        w.writerow([r.stem, r.width, r.height, f"{r.psnr_y:.4f}", f"{r.ssim_y:.6f}", f"{r.psnr_rgb:.4f}",
                    "" if r.seconds is None else f"{r.seconds:.4f}"])
    m = result.mean
    w.writerow(["mean", "", "", f"{m.psnr_y:.4f}", f"{m.ssim_y:.6f}", f"{m.psnr_rgb:.4f}", ""])
    try:
        atomic_write_bytes(path, buf.getvalue().encode())
    except OSError as exc:
        raise DerainError(f"cannot write {path}: {exc.strerror or exc}") from None
