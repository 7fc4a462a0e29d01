"""``derain models`` and ``derain weights list|pull|path|add``.

``derain models`` must keep working while an architecture is broken: each model
is imported on its own and an import or build failure is shown in its row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import WeightsError

weights_app = typer.Typer(
    name="weights",
    help="List, download and locate the pretrained weights listed in weights.toml.",
    no_args_is_help=True,
)

_STATUS_STYLE = {"bundled": "green", "cached": "cyan", "missing": "yellow", "corrupt": "red"}


def _status_cell(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _parameter_count(spec: Any) -> int:
    """Parameters of the default preset's derain network.

    Built for real on the CPU: the shipped presets take milliseconds, while the
    first use of torch's meta device costs over a second of imports.
    """
    bundle = spec.build(spec.config())
    try:
        net = spec.derain_net(bundle, spec.variants[0])
    except Exception:
        net = bundle
    seen: set[int] = set()
    total = 0
    for p in net.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _human_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _model_row(name: str, registry_ok: bool) -> dict[str, Any]:
    """One model of ``derain models``; failures of this model end up in its summary."""
    from .. import weights
    from ..registry import get_spec

    row: dict[str, Any] = {"name": name, "kind": "?", "tasks": [], "default_for": [], "parameters": None,
                           "weights": "?", "tags": [], "default_tag": None, "rain100l": None, "summary": ""}
    try:
        spec = get_spec(name)
    except Exception as exc:
        row["summary"] = f"cannot import: {_one_line(exc)}"
        spec = None
    else:
        row["kind"], row["summary"] = spec.kind, spec.summary
        row["tasks"] = ["derain", "rainify"] if spec.rainify_net is not None else ["derain"]
        row["default_for"] = list(spec.default_for)
        try:
            row["parameters"] = _parameter_count(spec)
        except Exception as exc:
            row["summary"] += f" (cannot build: {_one_line(exc)})"
    if registry_ok:
        entries = weights.tagged_entries(name)
        row["tags"] = [e.tag or e.name for e in entries]
        row["tag_status"] = {e.tag or e.name: weights.weights_status(e.name) for e in entries}
        default = weights.find_entry(name)
        if default is not None:
            row["default_tag"] = default.tag or default.name
            row["weights"] = weights.weights_status(default.name)
            row["rain100l"] = default.metrics.get("rain100l")
        else:
            row["weights"] = "missing"
    return row


def _tags_cell(row: dict[str, Any]) -> str:
    """``general*, rain100l``: * marks the default; a tag without a local file says so."""
    cells = []
    for t in row["tags"]:
        status = row.get("tag_status", {}).get(t, "bundled")
        cells.append(t + ("*" if t == row["default_tag"] and len(row["tags"]) > 1 else "")
                     + ("" if status in ("bundled", "cached") else f" ({_status_cell(status)})"))
    return ", ".join(cells) or "[yellow]none[/]"


def _score_cell(metric: dict | None) -> str:
    if not metric or "psnr" not in metric:
        return "-"
    return f"{float(metric['psnr']):.2f}" + (f"/{float(metric['ssim']):.3f}" if "ssim" in metric else "")


def models(
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON (for scripts)."),
) -> None:
    """List the architectures: size, weights tags (* = the default), and the default tag's Rain100L PSNR/SSIM."""
    import json

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from .. import weights
    from ..registry import model_names

    console = Console()
    try:
        weights.load_registry()
        registry_ok = True
    except WeightsError as exc:
        console.print(f"[red]warning: {exc}[/]", markup=True, highlight=False)
        registry_ok = False
    rows = [_model_row(name, registry_ok) for name in model_names()]
    default = next((row["name"] for row in rows if "derain" in row["default_for"]), None)
    if as_json:
        print(json.dumps({"default": default, "models": rows}, indent=1))
        return
    table = Table(title="derain models", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("name", "kind", "params", "weights tags", "Rain100L"):
        table.add_column(col, justify="right" if col in ("params", "Rain100L") else "left",
                         no_wrap=col != "weights tags", overflow="fold")
    for row in rows:
        params = _human_count(row["parameters"]) if row["parameters"] is not None else "?"
        table.add_row(row["name"] + (" (default)" if row["name"] == default else ""), row["kind"], params,
                      _tags_cell(row), _score_cell(row["rain100l"]))
    console.print(table)
    console.print("* the tag a bare --model NAME uses; others: --model NAME.TAG", highlight=False)
    for row in rows:
        rainify = " (+rainify)" if "rainify" in row["tasks"] else ""
        console.print(f"[bold]{row['name']}[/]: {row['summary']}{rainify}", highlight=False)


@weights_app.command("list")
def list_weights(
    as_json: bool = typer.Option(False, "--json", help="Print every field (sha256, data, recipe) as JSON."),
) -> None:
    """Every entry of weights.toml: size, where it is, where it comes from, its Rain100L figure."""
    import dataclasses
    import json

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from .. import weights

    entries = weights.load_registry()
    if as_json:
        print(json.dumps([{**dataclasses.asdict(e), "status": weights.weights_status(n)} for n, e in entries.items()],
                         indent=1))
        return
    console = Console()
    if not entries:
        console.print(f"{weights.toml_path()} lists no weights yet.")
        return
    table = Table(title=f"weights ({weights.toml_path().name})", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for col in ("entry", "size", "status", "hub", "Rain100L"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("size", "Rain100L") else "left")
    for name, e in entries.items():
        hub = f"{e.repo_id}@{e.revision[:7]}" if e.published else "not published"
        table.add_row(name + (" *" if e.default else ""), f"{e.size / 1e6:.2f} MB",
                      _status_cell(weights.weights_status(name)), hub, e.metric_text("rain100l") or "-")
    console.print(table)
    console.print("* its model's default; sha256, data and recipe: derain weights list --json", highlight=False)


@weights_app.command("pull")
def pull_weights(
    names: Optional[List[str]] = typer.Argument(None, metavar="NAME...", help="Entries or models to fetch."),
    all_: bool = typer.Option(False, "--all", help="Fetch every entry of weights.toml."),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy exists."),
) -> None:
    """Download weights at their pinned revision into the Hugging Face cache and verify them."""
    import sys

    from .. import weights

    if all_ == bool(names):
        raise WeightsError("give either NAME... or --all")
    targets = list(weights.load_registry()) if all_ else list(names)
    if all_ and not targets:
        print(f"{weights.toml_path()} lists no weights yet; nothing to pull.")
        return
    failures = 0
    for name in targets:
        try:
            path, how = weights.pull(name, force=force)
        except WeightsError as exc:
            if not all_ and len(targets) == 1:
                raise
            failures += 1
            print(f"derain: error: {name}: {exc}", file=sys.stderr)
            continue
        print(f"{name}: {how} {path}")
    if failures:
        raise typer.Exit(1)


@weights_app.command("path")
def weights_path(name: str = typer.Argument(..., help="Entry or model name.")) -> None:
    """Print the local path of a verified weights file (bundled or cached); never downloads."""
    from .. import weights

    print(weights.weights_path(name))


@weights_app.command("add")
def add_weights(
    file: Path = typer.Argument(..., help="Weights file from `derain export` (its metadata names model and config)."),
    tag: str = typer.Option(..., "--tag", help="Entry tag: MODEL.TAG, e.g. general."),
    recipe: str = typer.Option(..., "--recipe", help="The recipe file of the run, e.g. recipes/MODEL-TAG.toml."),
    trained_on: str = typer.Option(..., "--trained-on", help="Training data and its licence note."),
    bench: Optional[List[Path]] = typer.Option(None, "--bench", help="A `derain bench --json` report (repeatable)."),
    parent: Optional[str] = typer.Option(None, "--parent", help="The entry (or sha256) the run started from."),
    lineage: Optional[List[str]] = typer.Option(None, "--lineage", help="One earlier step, oldest first (repeatable)."),
    summary: Optional[str] = typer.Option(None, "--summary", help="One line for `derain weights list`."),
    default: bool = typer.Option(False, "--default", help="Make it the model's default (edit the old one's flag)."),
    replace: bool = typer.Option(False, "--replace", help="Replace the entry of this name (and its bundled file)."),
) -> None:
    """Bundle a weights file and write its weights.toml entry from its metadata and bench reports."""
    from ..weights_add import add_entry

    if not file.is_file():
        raise WeightsError(f"{file}: no such file")
    name = add_entry(file, tag, recipe=recipe, trained_on=trained_on, reports=list(bench or []), parent=parent,
                     lineage=list(lineage or []), summary=summary, default=default, replace=replace)
    print(f"replaced [{name}] in weights.toml" if replace else f"added [{name}] to weights.toml")


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.add_typer(weights_app, name="weights")
