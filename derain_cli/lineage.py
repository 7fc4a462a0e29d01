"""Where a weights file came from: the steps behind it and the weights.toml entry its chain began at.

A run started with ``--init FILE`` records :func:`init_record` of that file in the weights it
exports (metadata key ``init``), so a file several stages from a released entry still knows
its total steps and its parent, and ``derain weights add`` writes them without hand edits.
"""
from __future__ import annotations

import os
from typing import Any


def init_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256", "steps", "origin"}`` for a run that starts from ``path``.

    ``steps`` counts every step behind the file: an entry of weights.toml states its own total,
    another file adds its run's steps to its own record; ``origin`` is the sha256 of the
    weights.toml entry the chain began at (None when it began elsewhere).
    """
    from .weightfile import read_metadata, sha256_file
    from .weights import load_registry

    sha = sha256_file(path)
    released = {e.sha256: e for e in load_registry().values()}
    if sha in released:
        return {"sha256": sha, "steps": int(released[sha].steps), "origin": sha}
    meta = read_metadata(path)
    before = meta.get("init") or {}
    return {"sha256": sha, "steps": int(before.get("steps", 0)) + int(meta.get("steps", 0)),
            "origin": before.get("origin")}


def total_steps(meta: dict[str, Any], parent_steps: int | None) -> int:
    """Every step behind a file with metadata ``meta``: its record's and its run's; a file without a
    record (exported before records existed) is taken to continue its parent directly."""
    own = int(meta.get("steps", 0))
    record = meta.get("init")
    if record:
        return int(record.get("steps", 0)) + own
    return own + (parent_steps or 0)
