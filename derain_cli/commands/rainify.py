"""``derain rainify``: render rain onto clean photos with an unpaired model's rain generator.

A data-augmentation tool: the outputs keep the input file names, so
``derain train --paired OUT CLEAN`` pairs each rendered image with its source.
torch is imported only when the command runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import DerainError

def collect_images(inputs: list[Path]) -> list[Path]:
    """Expand folders to the images inside them (sorted); files are kept as given."""
    from ..imageio import IMAGE_SUFFIXES, list_images

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += list_images(item, IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise DerainError(f"no such file or folder: {item}")
    return files


def rainify_command(
    images: list[Path] = typer.Argument(..., help="Clean images or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created); files keep their input names."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Model with a rain generator (`derain models` marks them +rainify); default: the registry's."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights file (default: the registered one)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads."),
    seed: int = typer.Option(0, "--seed", help="Random seed, for generators that sample rain."),
    quality: int = typer.Option(95, "--quality", help="JPEG/WebP quality of the outputs."),
) -> None:
    """Add rain to clean photos (data augmentation for training your own deraining model).

    Example: derain rainify clean/ --model dcdgan -o rainy/
    """
    from ..registry import default_model, get_spec, model_names, rainify_models

    model = model or default_model("rainify")
    if model not in model_names():
        raise DerainError(f"unknown model {model!r}; models that render rain: {', '.join(rainify_models())}")
    if get_spec(model).rainify_net is None:
        raise DerainError(f"model {model!r} has no rain generator; use one of: {', '.join(rainify_models())}")
    files = collect_images(images)
    if out.exists() and not out.is_dir():
        raise DerainError(f"--out must be a folder, not the file {out}")
    targets = [out / f.name for f in files]
    if len(set(targets)) != len(targets):
        raise DerainError("two inputs share a file name; rainify them into separate --out folders")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DerainError(f"cannot create output folder {out}: {exc.strerror or exc}") from None

    import torch

    from ..api import load_model

    torch.manual_seed(seed)
    generator = load_model(model, weights=weights, device=device, threads=threads, task="rainify")
    for src, dst in zip(files, targets):
        generator.derain_file(src, dst, quality=quality)  # same pipeline, clean -> rainy network
        print(dst)


def register(app: typer.Typer) -> None:
    app.command("rainify")(rainify_command)
