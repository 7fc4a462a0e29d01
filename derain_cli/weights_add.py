"""``derain weights add``: a weights.toml entry written from the file and its bench reports.

Everything an entry states is read from where it is true (the file's metadata, its bytes, the
reports ``derain bench --json`` wrote), so no config or figure is copied by hand.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import WeightsError
from .weightfile import machine_path, portable

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_value(value: Any) -> str:
    """``value`` as TOML: strings, numbers, booleans, lists and inline tables (what entries hold)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise WeightsError(f"cannot record a non-finite figure ({value})")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in sorted(value.items()))
        return "{ " + items + " }" if items else "{}"
    raise WeightsError(f"cannot write a {type(value).__name__} into weights.toml")


def _field(key: str, value: Any) -> str:
    """``key = value``; a list of strings too long for one line (a lineage) one item a line, so the file stays readable."""
    line = f"{key} = {toml_value(value)}"
    if len(line) > 120 and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return f"{key} = [\n" + "".join(f"  {toml_value(v)},\n" for v in value) + "]"
    return line


def _key(key: str) -> str:
    return key if _BARE.fullmatch(key) else json.dumps(key)


def metrics_from_report(path: Path) -> tuple[str, dict[str, Any]]:
    """(dataset name, metrics table) from one ``derain bench --json`` report of a single model."""
    try:
        report = json.loads(path.read_text())
        results, dataset, command = report["results"], report["dataset"]["name"], report["command"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"--bench {path}: not a derain bench --json report ({exc})") from None
    if len(results) != 1:
        raise WeightsError(f"--bench {path}: holds {len(results)} models; bench one --model per report")
    r = results[0]
    prefix = "half_" if re.search(r"(^|\s)--half(\s|$)", command) else ""
    table = {f"{prefix}psnr": round(float(r["psnr_y"]), 2), f"{prefix}ssim": round(float(r["ssim_y"]), 4),
             f"{prefix}seconds_per_image": round(float(r["seconds_per_image"]), 4),
             f"{prefix}command": portable(command)}
    if found := machine_path(table[f"{prefix}command"]):
        raise WeightsError(f"--bench {path}: its command names a machine path ({found}); "
                           "set DERAIN_DATA to the data folder it read and add again")
    return dataset, table


def entry_text(name: str, fields: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> str:
    """The TOML of one entry and its metrics sub-tables, in weights.toml's layout."""
    lines = [f'\n["{name}"]'] + [_field(k, v) for k, v in fields.items() if v is not None]
    for dataset, table in metrics.items():
        lines.append(f'\n["{name}".metrics.{_key(dataset)}]')
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def add_entry(file: Path, tag: str, *, recipe: str, trained_on: str, reports: list[Path],
              parent: str | None = None, lineage: list[str] | None = None, summary: str | None = None,
              preset: str | None = None, default: bool = False, replace: bool = False,
              toml: Path | None = None) -> str:
    """Bundle ``file`` as ``MODEL.TAG`` and write its entry into weights.toml; returns the entry name.

    ``steps`` and (unless given) ``parent`` come from the file's lineage record
    (:mod:`derain_cli.lineage`). ``replace`` puts the entry where the old one of that name was
    and removes the old bundled file when no other entry names it.
    """
    from . import weights
    from .lineage import total_steps
    from .registry import get_spec
    from .weightfile import read_metadata, sha256_file

    meta = read_metadata(file)
    if found := machine_path(json.dumps(meta)):  # save_weights writes portable paths; older files may not
        raise WeightsError(f"{file}: its metadata names a machine path ({found}); "
                           "rewrite it with benchmarks/scrub_paths.py")
    model = meta.get("architecture")
    if not model or "config" not in meta:
        raise WeightsError(f"{file}: no architecture/config in its metadata; write it with `derain export`")
    if not _BARE.fullmatch(tag) or "." in tag:
        raise WeightsError(f"--tag {tag!r}: use letters, digits, '-' or '_'")
    name, toml = f"{model}.{tag}", toml or weights.toml_path()
    entries = weights.load_registry(toml)
    old = entries.get(name)
    if old is not None and not replace:
        raise WeightsError(f"{toml} already has [{name}]; give --replace to replace it")
    parent = _parent_sha(parent if parent is not None else (meta.get("init") or {}).get("origin"), entries)
    by_sha = {e.sha256: e for e in entries.values() if e is not old}
    steps = total_steps(meta, by_sha[parent].steps if parent in by_sha else None)
    metrics = dict(metrics_from_report(p) for p in reports)
    target = weights.BUNDLED_DIR / f"{model}-{tag}.safetensors"
    digest = sha256_file(file)
    if target.exists() and sha256_file(target) != digest and (old is None or old.file != target.name):
        raise WeightsError(f"{target} exists with other bytes; it belongs to another entry")
    fields = {"file": target.name, "sha256": digest, "size": file.stat().st_size,
              "preset": preset or get_spec(model).default_preset, "config": meta["config"],
              "trained_on": trained_on, "steps": steps, "recipe": recipe,
              "parent": parent, "lineage": lineage or None, "summary": summary, "tasks": meta.get("tasks"),
              "default": default or None}
    text = entry_text(name, fields, metrics)
    current = toml.read_text(encoding="utf-8")
    before, after = _cut(current, name) if old is not None else (current, "")
    updated = before + text + after
    weights.load_registry_text(updated, toml)  # refuse what loading would
    if not target.exists() or sha256_file(target) != digest:
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(file, tmp)
        os.replace(tmp, target)
    real = toml.resolve()  # the packaged weights.toml is a link to the repository's
    tmp = real.with_name(real.name + ".tmp")
    tmp.write_text(updated, encoding="utf-8")
    os.replace(tmp, real)
    if old is not None and old.file != target.name and all(e.file != old.file for e in entries.values() if e is not old):
        (weights.BUNDLED_DIR / old.file).unlink(missing_ok=True)  # last: the registry never names a missing file
    return name


def _cut(text: str, name: str) -> tuple[str, str]:
    """``text`` before and after entry ``name``'s tables (its own and its ``.metrics`` ones)."""
    padded = "\n" + text  # every table starts after a newline, the file's first too
    start = padded.index(f'\n["{name}"]\n')
    end = start + 1
    while (nxt := padded.find('\n["', end)) != -1 and padded.startswith(f'\n["{name}".', nxt):
        end = nxt + 1
    return padded[1:start], ("" if nxt == -1 else padded[nxt:])


def _parent_sha(parent: str | None, entries: dict[str, Any]) -> str | None:
    """``--parent`` as a sha256: an entry name or a 64-hex digest."""
    if parent is None or re.fullmatch(r"[0-9a-f]{64}", parent):
        return parent
    if parent in entries:
        return entries[parent].sha256
    raise WeightsError(f"--parent {parent!r}: give an entry of weights.toml or a sha256")
