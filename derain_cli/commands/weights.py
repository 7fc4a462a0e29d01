"""``derain models`` and ``derain weights list|pull|path``.

``derain models`` must keep working while an architecture is broken: each model
is imported on its own and an import or build failure is shown in its row.
"""
from __future__ import annotations

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


def _model_row(name: str, registry_ok: bool) -> list[str]:
    """One row of ``derain models``; failures of this model end up in its summary cell."""
    from .. import weights
    from ..registry import get_spec

    try:
        spec = get_spec(name)
    except Exception as exc:
        spec, kind, params, summary = None, "?", "?", f"[red]cannot import: {_one_line(exc)}[/]"
    else:
        kind, summary = spec.kind, spec.summary
        try:
            params = _human_count(_parameter_count(spec))
        except Exception as exc:
            params = "?"
            summary += f" [red](cannot build: {_one_line(exc)})[/]"
    status, metric = "?", "-"
    if registry_ok:
        entry_name = (getattr(spec, "weights_entry", None) if spec else None) or name
        entry = weights.find_entry(entry_name)
        status = _status_cell(weights.weights_status(entry_name))
        metric = (entry.metric_text("rain100l") if entry else "") or "-"
    return [name, kind, params, status, metric, summary]


def models() -> None:
    """List the registered architectures, their size, weights and recorded Rain100L score."""
    from rich.console import Console
    from rich.table import Table

    from .. import weights
    from ..registry import DEFAULT_MODEL, MODEL_NAMES

    console = Console()
    try:
        weights.load_registry()
        registry_ok = True
    except WeightsError as exc:
        console.print(f"[red]warning: {exc}[/]", markup=True, highlight=False)
        registry_ok = False
    table = Table(title="derain models", title_justify="left")
    for col, kw in (
        ("name", {"style": "bold", "no_wrap": True}),
        ("kind", {"no_wrap": True}),
        ("parameters", {"justify": "right", "no_wrap": True}),
        ("weights", {"no_wrap": True}),
        ("Rain100L", {"justify": "right", "no_wrap": True}),
        ("summary", {"overflow": "fold", "ratio": 1}),
    ):
        table.add_column(col, **kw)
    for name in MODEL_NAMES:
        row = _model_row(name, registry_ok)
        if name == DEFAULT_MODEL:
            row[0] += " (default)"
        table.add_row(*row)
    console.print(table)


@weights_app.command("list")
def list_weights() -> None:
    """Every entry of weights.toml: file, size, sha256, where it is, and where it comes from."""
    from rich.console import Console
    from rich.table import Table

    from .. import weights

    entries = weights.load_registry()
    console = Console()
    if not entries:
        console.print(f"{weights.toml_path()} lists no weights yet.")
        return
    table = Table(title=f"weights ({weights.toml_path()})", title_justify="left")
    for col in ("entry", "model", "file", "size", "sha256", "status", "hub", "Rain100L", "trained on"):
        table.add_column(col, overflow="fold")
    for name, e in entries.items():
        hub = f"{e.repo_id}@{e.revision[:10]}" if e.published else "not published"
        table.add_row(
            name, e.model, e.file, f"{e.size / 1e6:.2f} MB", e.sha256[:12],
            _status_cell(weights.weights_status(name)), hub, e.metric_text("rain100l") or "-", e.trained_on,
        )
    console.print(table)


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


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.add_typer(weights_app, name="weights")
