"""The training engine shared by every architecture.

It owns data, devices, precision, EMA, checkpoints, validation, logging and
DistributedDataParallel; the architecture's :class:`~derain_cli.train.recipe.Recipe`
owns the networks and losses. Under ``torchrun`` each rank samples its own shard
of the images and only rank 0 writes files.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import bf16_warning, say
from ..errors import DerainError
from ..registry import get_spec
from ..weightfile import load_weights, save_weights
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import wrap_nets
from .data import build_sampler, load_paired
from .resume import checkpoint_dir, run_state
from .resume import jsonable as _jsonable


@dataclass
class TrainOptions:
    model: str
    mode: str
    folders: list[str]
    out: Path
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    patch: int = 64
    batch: int = 16
    steps: int | None = None
    epochs: int | None = None
    max_minutes: float | None = None
    lr: float | None = None
    ema: float = 0.0
    seed: int = 0
    val: tuple[str, str] | None = None
    #: More validation sets, each a folder with ``rainy/`` and ``clean/``; the score is the mean over sets.
    val_sets: list[str] = field(default_factory=list)
    #: Rendered rain on clean photos: ``{"folders", "ratio", "mix", "streaks"}`` (see train.data.build_render).
    render: dict[str, Any] | None = None
    val_every: int = 500
    save_every: int = 500
    log_every: int = 10
    resume: Path | None = None
    init: Path | None = None
    export: Path | None = None
    threads: int | None = None
    bf16: bool = False
    channels_last: bool = False
    device: str = "cpu"
    recipe_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    command: str = ""


@dataclass
class TrainResult:
    step: int
    losses: dict[str, float]
    best_psnr: float | None
    export: Path | None
    stopped: str  # "done", "time budget", "interrupted"


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DerainError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None


def _total_steps(opts: TrainOptions, n_images: int, world: int) -> int:
    if opts.steps:
        return opts.steps
    epochs = opts.epochs or 100
    return max(1, epochs * math.ceil(n_images / (opts.batch * world)))


def _update_ema(ema, model, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
            else:
                e.copy_(p)


def validate(spec, bundle, variant: str, pairs: tuple[list[np.ndarray], list[np.ndarray]], device) -> float:
    """Mean Y-channel PSNR of the derained validation images, through ``derain run``'s inference path.

    Whole images via ``Derainer.process_tensor`` (padding, input range, clamping) and
    ``tiling.from_unit`` (rounding), so the score is that of what ``derain run`` would write.
    A NaN/Inf output scores NaN: a diverging run is logged as such and keeps its best export.
    """
    from ..api import Derainer
    from ..metrics import psnr_y
    from ..tiling import from_unit, unit_tensor

    net = spec.derain_net(bundle, variant)
    was_training = net.training
    net.eval()
    derainer = Derainer(spec, {}, net, torch.device(device))
    scores = []
    for rainy, clean in zip(*pairs):
        try:
            y = derainer.process_tensor(unit_tensor(rainy))
        except DerainError:  # non-finite output (process_tensor refuses it)
            scores.append(float("nan"))
            continue
        scores.append(psnr_y(from_unit(y[0].permute(1, 2, 0).cpu().numpy(), np.uint8), clean))
    net.train(was_training)
    return float(np.mean(scores))


#: TrainOptions fields a run folder keeps, so that ``derain train --resume RUN_DIR`` needs nothing else.
SAVED_FIELDS = ("model", "mode", "folders", "preset", "overrides", "patch", "batch", "steps", "epochs", "max_minutes",
                "lr", "ema", "seed", "val", "val_sets", "val_every", "save_every", "log_every", "export", "threads",
                "bf16", "channels_last", "device", "recipe_options", "render")


def saved_options(opts: TrainOptions) -> dict[str, Any]:
    """The run's options as JSON values (paths as strings, tuples as lists)."""
    return {name: _jsonable(getattr(opts, name)) for name in SAVED_FIELDS}


def load_val_sets(val: tuple[str, str] | None, folders: list[str]) -> dict[str, tuple[list, list]]:
    """Validation pairs by set name: ``--val RAINY CLEAN`` is ``val``, each ``--val-set DIR`` its folder name."""
    sets: dict[str, tuple[list, list]] = {}
    if val:
        vr, vc, _ = load_paired(val[0], val[1], 1)
        sets["val"] = (vr, vc)
    for folder in folders:
        name = Path(folder).name
        if name in sets:
            raise DerainError(f"two validation sets are named {name!r}; give them different folder names")
        vr, vc, _ = load_paired(Path(folder) / "rainy", Path(folder) / "clean", 1)
        sets[name] = (vr, vc)
    return sets


def train(opts: TrainOptions) -> TrainResult:
    """Run (or resume) one training job; returns when done, out of time, or interrupted."""
    spec = get_spec(opts.model)
    if opts.mode not in spec.modes:
        raise DerainError(
            f"model {spec.name!r} does not train in {opts.mode} mode; it supports: {', '.join(spec.modes)}"
        )
    rank, world = _dist_info()
    is_main = rank == 0
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if is_main:
        _check_out_dir(opts.out)
    if opts.export is not None and is_main:
        _check_out_dir(Path(opts.export).parent)

    # Everything that can fail on bad input happens before the first step.
    sampler, data_info = build_sampler(opts.mode, opts.folders, opts.patch, opts.batch, opts.seed, rank, world,
                                       render=opts.render)
    val_sets = load_val_sets(opts.val, opts.val_sets)

    resume_dir = None
    inherited_tasks: set[str] = set()
    if opts.resume is not None:
        resume_dir = checkpoint_dir(Path(opts.resume))
        saved = run_state(Path(opts.resume))
        config = saved["config"]
        inherited_tasks = set(saved.get("tasks") or ())
    elif opts.init is not None:
        _, meta = load_weights(opts.init, architecture=spec.name)
        config = dict(meta["config"])
        config.update(opts.overrides)
        inherited_tasks = set(meta.get("tasks") or ())
    else:
        try:
            config = spec.config(opts.preset, **opts.overrides)
        except ValueError as exc:
            raise DerainError(str(exc)) from None

    device = torch.device(opts.device)
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)

    if opts.bf16 and (warning := bf16_warning(device)) is not None and rank == 0:
        say(warning)
    torch.manual_seed(opts.seed)
    random.seed(opts.seed)
    recipe = spec.recipe(spec, config, opts.mode, lr=opts.lr, **opts.recipe_options)
    for name, net in recipe.nets.items():
        net.to(device)
        if opts.channels_last:
            net.to(memory_format=torch.channels_last)
    if opts.init is not None and resume_dir is None:
        state, _ = load_weights(opts.init, architecture=spec.name)
        # Growing is allowed (an --init file without the tensors a --set added, such as
        # fullres_blocks); a file with tensors this config does not have is not.
        missing, unexpected = recipe.bundle.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if unexpected:
            raise DerainError(f"{opts.init} does not fit this config: it has {len(unexpected)} tensors the "
                              f"model lacks (first: {unexpected[0]}); check the --set options")
        if missing and rank == 0:
            say(f"{len(missing)} tensors not in {opts.init} start from their initialisation (grown model)")

    raw_nets = dict(recipe.nets)
    n_images = len(next(iter(sampler.sources.values()))) or len(sampler.render.images)
    total = _total_steps(opts, n_images, world)
    if resume_dir is not None and not opts.steps and not opts.epochs:
        total = saved.get("total_steps", total)
    requested = total  # what a time budget may shrink, and early on grow back to
    recipe.setup(total)
    if distributed:
        wrap_nets(recipe, device)
    ema = None
    if opts.ema > 0:
        ema = copy.deepcopy(recipe.bundle).eval()
        for p in ema.parameters():
            p.requires_grad_(False)

    step, best = 0, None
    if resume_dir is not None:
        extra = load_checkpoint(resume_dir, nets=raw_nets, optimizers=recipe.optimizers,
                                schedulers=recipe.schedulers, ema=ema)
        step, best = extra["step"], extra.get("best_psnr")
        sampler.set_state(extra["sampler"][rank] if isinstance(extra["sampler"], list) else extra["sampler"])
        np.random.set_state(tuple(extra["numpy_rng"]))  # type: ignore[arg-type]
        random.setstate(_to_tuple(extra["python_rng"]))
    out = Path(opts.out)
    log_path = out / "log.jsonl"

    def extra_state() -> dict[str, Any]:
        return {
            "step": step, "best_psnr": best, "config": config, "model": spec.name, "mode": opts.mode,
            "sampler": sampler.state(), "numpy_rng": list(_jsonable(np.random.get_state())),
            "python_rng": _jsonable(random.getstate()), "total_steps": total, "data": data_info,
            "command": opts.command, "recipe_options": opts.recipe_options, "tasks": tasks_now(),
            "render": opts.render, "options": saved_options(opts),
        }

    def checkpoint(name: str = "last", collective: bool = True) -> None:
        extra = extra_state()
        if distributed and collective:  # every rank's own sampler position, so a resume is exact
            import torch.distributed as dist

            states: list[Any] = [None] * world
            dist.all_gather_object(states, extra["sampler"])
            extra["sampler"] = states
        if is_main:
            save_checkpoint(out / name, nets=raw_nets, optimizers=recipe.optimizers,
                            schedulers=recipe.schedulers, ema=ema, extra=extra)

    def agreed(stop: bool) -> bool:
        """Whether any rank wants to stop: ranks must leave the loop at the same step or DDP hangs."""
        if not distributed:
            return stop
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def tasks_now() -> list[str]:
        """What the weights can do so far: the recipe's answer plus what an --init file already could."""
        done = set(recipe.trained_tasks(step)) | inherited_tasks
        return [t for t in ("derain", "rainify") if t in done]

    def export(path: Path) -> None:
        source = ema if ema is not None else recipe.bundle
        save_weights(path, source.state_dict(), architecture=spec.name, config=config,
                     steps=step, data=data_info, date=_dt.date.today().isoformat(),
                     command=opts.command, val_psnr=best, tasks=tasks_now())

    def log(record: dict[str, Any]) -> None:
        if is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if opts.bf16
                else _NullContext())
    start_time, start_step = time.monotonic(), step
    stopped = "done"
    losses: dict[str, float] = {}
    progress = _make_progress(opts.progress and is_main)
    task = progress.add_task(f"{spec.name} ({opts.mode})", total=total, completed=step, terms="")
    last_t, last_step = time.monotonic(), step
    signalled: dict[str, bool] = {}
    restore_signals = _stop_on_signals(signalled)
    collective = True
    try:
        with progress:
            while step < total:
                batch = {k: torch.from_numpy(v).to(device) for k, v in sampler.next_batch().items()}
                if opts.channels_last:
                    batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
                with autocast:
                    losses = recipe.train_step(batch, step)
                recipe.end_step()
                if ema is not None:
                    _update_ema(ema, recipe.bundle, opts.ema)
                step += 1
                if step % opts.log_every == 0 or step == total:
                    now = time.monotonic()
                    sps = (step - last_step) / max(1e-9, now - last_t)
                    last_t, last_step = now, step
                    lr = recipe.current_lr(step - 1)
                    log({"step": step, **{k: round(float(v), 6) for k, v in losses.items()},
                         "lr": lr, "steps_per_s": round(sps, 3)})
                    terms = " ".join(f"{k} {float(v):.4f}" for k, v in losses.items())
                    progress.update(task, completed=step, terms=f"{terms} | {sps:.2f} it/s")
                if opts.max_minutes is not None and step % opts.log_every == 0:
                    fitted = fit_to_budget(total, requested, step, start_step,
                                           time.monotonic() - start_time, opts.max_minutes)
                    if fitted != total:
                        total = recipe.total_steps = fitted
                        progress.update(task, total=total)
                if val_sets and is_main and (step % opts.val_every == 0 or step == total):
                    scores = {name: validate(spec, ema if ema is not None else recipe.bundle,
                                             recipe.val_variant, pairs, device) for name, pairs in val_sets.items()}
                    score = float(np.mean(list(scores.values())))
                    log({"step": step, "val_psnr_y": round(score, 4),
                         **({f"val_{k}": round(v, 4) for k, v in scores.items()} if len(scores) > 1 else {})})
                    if best is None or score > best:
                        best = score
                        export(out / "best.safetensors")
                if step % opts.save_every == 0 and step < total:
                    checkpoint()
                over_budget = opts.max_minutes is not None and (time.monotonic() - start_time) / 60 >= opts.max_minutes
                if agreed(over_budget or bool(signalled)) and step < total:
                    stopped = "interrupted" if agreed(bool(signalled)) else "time budget"
                    break
    except KeyboardInterrupt:  # a second signal, or Ctrl-C inside a step: ranks may disagree
        stopped, collective = "interrupted", False
    finally:
        restore_signals()
    checkpoint(collective=collective)
    if is_main:
        export(out / "model.safetensors")
        if opts.export is not None:
            export(Path(opts.export))
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    return TrainResult(step=step, losses={k: float(v) for k, v in losses.items()}, best_psnr=best,
                       export=Path(opts.export) if opts.export else out / "model.safetensors",
                       stopped=stopped)


def fit_to_budget(total: int, requested: int, step: int, start_step: int,
                  elapsed: float, max_minutes: float) -> int:
    """The step count the time budget can reach at the speed measured so far (capped at ``requested``).

    The learning-rate schedule reads ``recipe.total_steps``, so a run that is slower than
    planned (a shared machine) still anneals fully before its budget ends instead of
    stopping at a high learning rate. In the first third of the plan it may also grow
    back towards ``requested``: a pause early on (the other core busy with tests, say)
    would otherwise cut the whole run short for good, and this early the cosine barely
    moves. Later it only shrinks. The plan is saved in the checkpoint, so a resumed run
    continues the same schedule.
    """
    done = step - start_step
    if done < 50 or elapsed <= 0:
        return total
    reachable = max(step + 1, step + int(done / elapsed * (max_minutes * 60 - elapsed) * 0.97))
    if reachable < total or step < total / 3:
        return min(requested, reachable)
    return total


def _stop_on_signals(signalled: dict[str, bool]):
    """Make Ctrl-C and SIGTERM end training with a checkpoint.

    A job started with ``nohup ... &`` inherits an ignored SIGINT, and ``kill`` sends
    SIGTERM: both would otherwise lose everything since the last periodic save.
    The first signal sets ``signalled`` and training stops after the current step
    (all DDP ranks at the same one); a second one interrupts at once.
    Returns a function that restores the previous handlers.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum, frame):
        if signalled:
            raise KeyboardInterrupt
        signalled["signal"] = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in previous.items()]


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _make_progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[terms]}"),
        disable=not enabled, transient=False,
    )


def _to_tuple(obj):
    if isinstance(obj, list):
        return tuple(_to_tuple(o) for o in obj)
    return obj


def export_checkpoint(run_dir: Path, out_file: Path, use_ema: bool = True) -> Path:
    """Write an inference weights file from a run folder's last checkpoint (``derain export``)."""
    from safetensors.torch import load_file

    ckpt = checkpoint_dir(Path(run_dir))
    if not (ckpt / "state.json").is_file():
        raise DerainError(f"no checkpoint in {run_dir}")
    extra = run_state(Path(run_dir))
    spec = get_spec(extra["model"])
    recipe = spec.recipe(spec, extra["config"], extra["mode"], **extra.get("recipe_options", {}))
    tensors = load_file(str(ckpt / "state.safetensors"))
    ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    if use_ema and ema_state:
        recipe.bundle.load_state_dict(ema_state)
    else:
        for name, net in recipe.nets.items():
            prefix = f"net.{name}."
            net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    save_weights(out_file, recipe.bundle.state_dict(), architecture=spec.name, config=extra["config"],
                 steps=extra["step"], data=extra.get("data"), date=_dt.date.today().isoformat(),
                 command=extra.get("command", ""), val_psnr=extra.get("best_psnr"),
                 **({"tasks": extra["tasks"]} if extra.get("tasks") else {}))
    return Path(out_file)
