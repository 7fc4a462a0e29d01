"""What the commands print and write: tables, summary lines and JSON payloads, built from API results.

Commands parse their options, call the API and hand the results here, so the text a
user sees (and tests check) is made in one place. rich is imported inside the functions.
"""
from __future__ import annotations

import math
from typing import Any


def fmt(x: float, digits: int) -> str:
    """A figure with ``digits`` decimals; identical images score ``inf``."""
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


# -- derain eval ----------------------------------------------------------------------------
def eval_line(result) -> str:
    """``N images  PSNR-Y .. dB  SSIM-Y ..  PSNR-RGB .. dB``: the mean of an eval result."""
    mean = result.mean
    return (f"{len(result.rows)} images  PSNR-Y {fmt(mean.psnr_y, 2)} dB  SSIM-Y {fmt(mean.ssim_y, 4)}  "
            f"PSNR-RGB {fmt(mean.psnr_rgb, 2)} dB")


def eval_model_info(derainer, model: str, weights_text: str, rainy: str, references: str, device: str) -> dict:
    """The header of ``derain eval --model``'s report: what was measured, with what."""
    return {"model": model, "variant": derainer.variant, "ensemble": derainer.ensemble,
            "precision": derainer.dtype_name, "weights": weights_text, "rainy": rainy,
            "references": references, "device": device}


# -- derain bench ----------------------------------------------------------------------------
BENCH_COLUMNS = ("model", "PSNR-Y", "SSIM-Y", "PSNR-RGB", "s/image", "MP/s", "peak mem", "params", "device", "threads")


def bench_table(dataset: str, results: list) -> Any:
    """One row per measured model."""
    from rich.table import Table

    table = Table(title=f"derain bench {dataset} ({results[0].images} images, Y channel)")
    for col in BENCH_COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "device") else "right", no_wrap=True)
    for r in results:
        table.add_row(r.model, fmt(r.psnr_y, 2), fmt(r.ssim_y, 4), fmt(r.psnr_rgb, 2), f"{r.seconds_per_image:.4f}",
                      f"{r.megapixels_per_second:.3f}", f"{r.peak_memory_mb:.0f} MB", f"{r.parameters:,}", r.device,
                      str(r.threads))
    return table


def bench_notes(results: list, tile: int | None) -> list[str]:
    """The lines under the table: how speed and memory were measured, the tile, which weights."""
    notes = []
    if len(results) > 1 and not results[0].memory_kind.startswith("CUDA"):
        notes.append("several models share one process: a peak can include tens of MB that earlier models left "
                     "(kernel caches, imports); bench one --model for its exact figure")
    notes.append(f"speed excludes file I/O and one warm-up image; peak mem = {results[0].memory_kind}; tile = "
                 f"{tile or 'auto'}; weights: " + ", ".join(f"{r.model} = {r.weights}" for r in results))
    return notes


def published_table(dataset: str, published: list[dict]) -> Any:
    """The papers' own figures on ``dataset``, beside (never mixed with) the measured ones."""
    from rich.table import Table

    table = Table(title=f"published figures on {dataset} (from their papers, not measured here)")
    for col in ("method", "ours", "PSNR", "SSIM", "source"):
        table.add_column(col, justify="right" if col in ("PSNR", "SSIM") else "left", no_wrap=True)
    for p in published:
        table.add_row(p["method"], p.get("architecture", ""),
                      f"{p['psnr']:.2f}" if "psnr" in p else "not stated",
                      str(p["ssim"]) if "ssim" in p else "not stated",
                      p.get("cite", p["source"]))
    return table


def bench_payload(environment: dict, dataset, results: list, published: list[dict]) -> dict:
    """``derain bench --json``: the environment, the dataset, every figure with its per-image rows."""
    return {
        **environment,
        "dataset": {"name": dataset.name, "root": str(dataset.root), "origin": dataset.origin,
                    "pairs_used": results[0].images},
        "results": [{**r.summary(), "images_detail": [vars(x) for x in r.rows]} for r in results],
        "published": published,
    }


# -- derain train -------------------------------------------------------------------------------
def train_line(result) -> str:
    """How a training run ended: ``done at step N, best val PSNR-Y .. dB; weights: FILE``."""
    best = f", best val PSNR-Y {result.best_psnr:.2f} dB" if result.best_psnr is not None else ""
    return f"{result.stopped} at step {result.step}{best}; weights: {result.export}"
