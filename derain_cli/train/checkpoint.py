"""Resumable checkpoints: tensors in safetensors, everything else in JSON, swapped in atomically.

A checkpoint is a folder holding ``state.safetensors`` (networks, optimizer
moments, EMA, torch RNG) and ``state.json`` (step, schedulers, numpy/python RNG,
config, command). It is written to ``<name>.tmp`` and renamed over the old one,
so an interrupted save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def _flatten_optimizer(prefix: str, state_dict: dict, tensors: dict, plain: dict) -> None:
    import torch

    plain[prefix] = {"param_groups": state_dict["param_groups"], "state": {}}
    for idx, st in state_dict["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.state.{idx}.{k}"] = v.detach().cpu().contiguous()
                entry[k] = "__tensor__"
            else:
                entry[k] = v
        plain[prefix]["state"][str(idx)] = entry


def _unflatten_optimizer(prefix: str, tensors: dict, plain: dict) -> dict:
    saved = plain[prefix]
    state = {}
    for idx, entry in saved["state"].items():
        state[int(idx)] = {k: (tensors[f"{prefix}.state.{idx}.{k}"] if v == "__tensor__" else v)
                           for k, v in entry.items()}
    return {"param_groups": saved["param_groups"], "state": state}


def save_checkpoint(folder: str | os.PathLike, *, nets: dict, optimizers: dict, schedulers: dict,
                    ema=None, extra: dict[str, Any]) -> None:
    """Write the full training state to ``folder`` atomically."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors: dict[str, Any] = {}
    plain: dict[str, Any] = {"extra": extra, "schedulers": {}}
    for name, net in nets.items():
        for k, v in net.state_dict().items():
            tensors[f"net.{name}.{k}"] = v.detach().cpu().contiguous()
    if ema is not None:
        for k, v in ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
    for name, opt in optimizers.items():
        _flatten_optimizer(f"opt.{name}", opt.state_dict(), tensors, plain)
    for name, sch in schedulers.items():
        plain["schedulers"][name] = {k: v for k, v in sch.state_dict().items() if k != "lr_lambdas"}
    tensors["rng.torch"] = torch.get_rng_state()
    # safetensors refuses tensors sharing memory; clone to be safe.
    tensors = {k: v.clone() for k, v in tensors.items()}
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(plain, indent=1, default=_json_default))
    old = folder.with_name(folder.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        shutil.rmtree(old)


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_checkpoint(folder: str | os.PathLike, *, nets: dict, optimizers: dict, schedulers: dict,
                    ema=None) -> dict[str, Any]:
    """Restore state saved by :func:`save_checkpoint`; returns the ``extra`` dict."""
    import torch
    from safetensors.torch import load_file

    from ..errors import DerainError

    folder = Path(folder)
    if not (folder / "state.safetensors").is_file():
        # Accept the run folder itself as well as its "last" checkpoint.
        if (folder / "last" / "state.safetensors").is_file():
            folder = folder / "last"
        else:
            raise DerainError(f"no checkpoint in {folder} (expected state.safetensors and state.json)")
    tensors = load_file(str(folder / "state.safetensors"))
    plain = json.loads((folder / "state.json").read_text())
    for name, net in nets.items():
        prefix = f"net.{name}."
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    for name, opt in optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(f"opt.{name}", tensors, plain))
    for name, sch in schedulers.items():
        state = dict(plain["schedulers"][name])
        state["lr_lambdas"] = [None] * len(sch.optimizer.param_groups)  # lambdas are code, not state
        sch.load_state_dict(state)
    torch.set_rng_state(tensors["rng.torch"])
    return plain["extra"]
