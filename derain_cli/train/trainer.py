"""The training loop in named steps: setup, resume, step, validate, checkpoint, export.

The :class:`Trainer` owns data, devices, precision, EMA, checkpoints, validation,
logging and data parallelism; the architecture's
:class:`~derain_cli.train.recipe.Recipe` owns the networks and losses. Under
``torchrun`` each rank samples its own shard of the images and only rank 0 writes files.
The order of the random draws is part of the checkpoint contract: a resumed run
draws the same batches and reaches the same weights as one that never stopped.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import bf16_warning, resolve_device, say
from ..errors import DerainError
from ..models.common import start_grown_as_identity
from ..weightfile import load_weights, save_weights
from .checkpoint import load_checkpoint, save_checkpoint
from .control import fit_to_budget, make_progress, stop_on_signals
from .data import build_sampler
from .distributed import broadcast_state
from .options import TrainOptions, TrainResult, saved_options
from .recipe import check_recipe_options, check_set_keys
from .resume import checkpoint_dir, jsonable, run_state
from .validation import load_val_sets, validate


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DerainError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None


def _update_ema(ema, model, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
            else:
                e.copy_(p)


def _to_tuple(obj):
    if isinstance(obj, list):
        return tuple(_to_tuple(o) for o in obj)
    return obj


class Trainer:
    """One training job (new, from ``--init`` weights, or resumed); :meth:`run` does it all in order."""

    def __init__(self, opts: TrainOptions, spec):
        self.opts, self.spec = opts, spec
        self.rank, self.world = _dist_info()
        self.is_main, self.distributed = self.rank == 0, self.world > 1
        self.out = Path(opts.out)
        self.steps_done, self.best = 0, None
        self.losses: dict[str, float] = {}
        self.resume_dir: Path | None = None
        self.saved: dict[str, Any] = {}
        self.inherited_tasks: set[str] = set()

    # -- setup: everything that can fail on bad input happens before the first step -----------------
    def setup(self) -> None:
        """Check the options, load the data, build the recipe's networks and optimizers on the device."""
        opts, spec = self.opts, self.spec
        if opts.mode not in spec.modes:
            raise DerainError(
                f"model {spec.name!r} does not train in {opts.mode} mode; it supports: {', '.join(spec.modes)}")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        if self.is_main:
            _check_out_dir(self.out)
            if opts.export is not None:
                _check_out_dir(Path(opts.export).parent)
        self.sampler, self.data_info = build_sampler(opts.mode, opts.folders, opts.patch, opts.batch, opts.seed,
                                                     self.rank, self.world, render=opts.render)
        if opts.render:  # pin the mix and extras in the run folder: a resume must not pick up newer defaults
            rendered = self.data_info["rendered"]
            opts.render = {**opts.render, "mix": rendered["mix"], "extras": rendered["extras"]}
        self.val_sets = load_val_sets(opts.val, opts.val_sets)
        self.config = self._config()
        self.init_record = self._init_record()
        self.device = self._device()
        if opts.bf16 and (warning := bf16_warning(self.device)) is not None and self.is_main:
            say(warning)
        torch.manual_seed(opts.seed)
        random.seed(opts.seed)
        self.recipe = self._build_recipe()
        self.raw_nets = dict(self.recipe.nets)
        self.total = self.requested = self._plan_steps()  # requested: what a time budget may shrink
        self.recipe.setup(self.total)
        broadcast_state(self.raw_nets.values())  # every rank starts from rank 0's weights (no-op alone)
        self.ema = None
        if opts.ema > 0:
            self.ema = copy.deepcopy(self.recipe.bundle).eval()
            for p in self.ema.parameters():
                p.requires_grad_(False)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if opts.bf16
                         else contextlib.nullcontext())

    def _config(self) -> dict[str, Any]:
        """The model config: the run folder's, the ``--init`` file's with ``--set`` applied, or a preset's."""
        opts, spec = self.opts, self.spec
        if opts.resume is not None:
            self.resume_dir = checkpoint_dir(Path(opts.resume))
            self.saved = run_state(Path(opts.resume))
            self.inherited_tasks = set(self.saved.get("tasks") or ())
            return self.saved["config"]
        if opts.init is not None:
            _, meta = load_weights(opts.init, architecture=spec.name)
            config = dict(meta["config"])
            check_set_keys(spec, {**spec.config(), **config}, opts.overrides)  # growing: keys older files lack
            self.inherited_tasks = set(meta.get("tasks") or ())
            return {**config, **opts.overrides}
        try:
            check_set_keys(spec, spec.config(opts.preset), opts.overrides)
            return spec.config(opts.preset, **opts.overrides)
        except ValueError as exc:
            raise DerainError(str(exc)) from None

    def _init_record(self) -> dict[str, Any] | None:
        """What the ``--init`` file carries forward (:mod:`derain_cli.lineage`); a resume keeps its run's."""
        if self.resume_dir is not None:
            return self.saved.get("init_record")
        if self.opts.init is None:
            return None
        from ..lineage import init_record

        return init_record(self.opts.init)

    def _device(self) -> torch.device:
        """``--device`` resolved (``auto``: CUDA when it works); under torchrun, this rank's GPU."""
        device = resolve_device(self.opts.device, notify=say if self.is_main else (lambda message: None))
        if self.distributed:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(device)
        return device

    def _build_recipe(self):
        """The architecture's recipe with its networks on the device, started from ``--init`` weights if given."""
        opts, spec = self.opts, self.spec
        check_recipe_options(spec, opts.recipe_options)
        try:
            recipe = spec.recipe(spec, self.config, opts.mode, lr=opts.lr, **opts.recipe_options)
        except ValueError as exc:  # a recipe refusing its options (e.g. jrgr stage 2 on paired data)
            raise DerainError(str(exc)) from None
        for net in recipe.nets.values():
            net.to(self.device)
            if opts.channels_last:
                net.to(memory_format=torch.channels_last)
        if opts.init is not None and self.resume_dir is None:
            self._load_init(recipe)
        return recipe

    def _load_init(self, recipe) -> None:
        """Growing is allowed (an ``--init`` file without the tensors a ``--set`` added, such as
        ``fullres_blocks``); a file with tensors this config does not have is not."""
        state, _ = load_weights(self.opts.init, architecture=self.spec.name)
        missing, unexpected = recipe.bundle.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if unexpected:
            raise DerainError(f"{self.opts.init} does not fit this config: it has {len(unexpected)} tensors the "
                              f"model lacks (first: {unexpected[0]}); check the --set options")
        started = start_grown_as_identity(recipe.bundle, missing)
        if missing and self.is_main:
            say(f"{len(missing)} tensors not in {self.opts.init} start from their initialisation (grown model)"
                + (f"; {len(started)} new blocks start as the identity" if started else ""))

    def _plan_steps(self) -> int:
        """``--steps``, else ``--epochs`` (default 100) over this rank's share; a resume keeps its plan.

        The saved plan wins unless ``--steps``/``--epochs`` changed, so a run whose schedule a
        time budget shortened does not jump back to a high learning rate when resumed.
        """
        opts, sampler = self.opts, self.sampler
        n_images = len(next(iter(sampler.sources.values()))) or len(sampler.render.images)
        if opts.steps:
            total = opts.steps
        else:
            total = max(1, (opts.epochs or 100) * math.ceil(n_images / (opts.batch * self.world)))
        planned = self.saved.get("options") or {}
        if self.resume_dir is not None and (opts.steps, opts.epochs) == (planned.get("steps"), planned.get("epochs")):
            total = self.saved.get("total_steps", total)  # a time budget may have shrunk the plan
        return total

    # -- resume -----------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore networks, optimizers, schedules, EMA, sampler and RNG states from the run folder."""
        if self.resume_dir is None:
            return
        extra = load_checkpoint(self.resume_dir, nets=self.raw_nets, optimizers=self.recipe.optimizers,
                                schedulers=self.recipe.schedulers, ema=self.ema)
        self.steps_done, self.best = extra["step"], extra.get("best_psnr")
        sampler_state = extra["sampler"]
        self.sampler.set_state(sampler_state[self.rank] if isinstance(sampler_state, list) else sampler_state)
        np.random.set_state(tuple(extra["numpy_rng"]))  # type: ignore[arg-type]
        random.setstate(_to_tuple(extra["python_rng"]))

    # -- one step ---------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One batch: the recipe's forward/backward/update, the schedules, the EMA; returns the loss terms."""
        batch = {k: torch.from_numpy(v).to(self.device) for k, v in self.sampler.next_batch().items()}
        if self.opts.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
        with self.autocast:
            self.losses = self.recipe.train_step(batch, self.steps_done)
        self.recipe.end_step()
        if self.ema is not None:
            _update_ema(self.ema, self.recipe.bundle, self.opts.ema)
        self.steps_done += 1
        return self.losses

    # -- validate -----------------------------------------------------------------------------------
    def validate(self) -> float:
        """Score every validation set (mean = the run's score), log it, export ``best.safetensors`` on a record."""
        source = self.ema if self.ema is not None else self.recipe.bundle
        scores = {name: validate(self.spec, source, self.recipe.val_variant, pairs, self.device, config=self.config)
                  for name, pairs in self.val_sets.items()}
        score = float(np.mean(list(scores.values())))
        self.log({"step": self.steps_done, "val_psnr_y": round(score, 4),
                  **({f"val_{k}": round(v, 4) for k, v in scores.items()} if len(scores) > 1 else {})})
        if self.best is None or score > self.best:
            self.best = score
            self.export(self.out / "best.safetensors")
        return score

    # -- checkpoint and export ----------------------------------------------------------------------
    def tasks_now(self) -> list[str]:
        """What the weights can do so far: the recipe's answer plus what an --init file already could."""
        done = set(self.recipe.trained_tasks(self.steps_done)) | self.inherited_tasks
        return [t for t in ("derain", "rainify") if t in done]

    def extra_state(self) -> dict[str, Any]:
        """The checkpoint's JSON record: position, RNG states, plan, data, options."""
        opts = self.opts
        return {
            "step": self.steps_done, "best_psnr": self.best, "config": self.config, "model": self.spec.name,
            "mode": opts.mode, "sampler": self.sampler.state(), "numpy_rng": list(jsonable(np.random.get_state())),
            "python_rng": jsonable(random.getstate()), "total_steps": self.total, "data": self.data_info,
            "command": opts.command, "recipe_options": opts.recipe_options, "tasks": self.tasks_now(),
            "render": opts.render, "options": saved_options(opts), "init_record": self.init_record,
        }

    def checkpoint(self, name: str = "last", collective: bool = True) -> None:
        """Save the full training state to ``OUT/name`` (rank 0), with every rank's sampler position."""
        extra = self.extra_state()
        if self.distributed and collective:
            import torch.distributed as dist

            states: list[Any] = [None] * self.world
            dist.all_gather_object(states, extra["sampler"])
            extra["sampler"] = states
        if self.is_main:
            save_checkpoint(self.out / name, nets=self.raw_nets, optimizers=self.recipe.optimizers,
                            schedulers=self.recipe.schedulers, ema=self.ema, extra=extra)

    def export(self, path: Path) -> None:
        """Write the inference weights file (the EMA when there is one) with its metadata."""
        source = self.ema if self.ema is not None else self.recipe.bundle
        save_weights(path, source.state_dict(), architecture=self.spec.name, config=self.config,
                     steps=self.steps_done, data=self.data_info, date=_dt.date.today().isoformat(),
                     command=self.opts.command, val_psnr=self.best, tasks=self.tasks_now(),
                     **({"init": self.init_record} if self.init_record else {}))

    def log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def agreed(self, stop: bool) -> bool:
        """Whether any rank wants to stop: ranks must leave the loop at the same step or DDP hangs."""
        if not self.distributed:
            return stop
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Set up, resume, step until done, out of time, or interrupted; then checkpoint and export."""
        self.setup()
        self.resume()
        self._start = (time.monotonic(), self.steps_done)
        self._last = self._start
        stopped, collective = "done", True
        progress = make_progress(self.opts.progress and self.is_main)
        task = progress.add_task(f"{self.spec.name} ({self.opts.mode})", total=self.total,
                                 completed=self.steps_done, terms="")
        signalled: dict[str, bool] = {}
        restore_signals = stop_on_signals(signalled)
        try:
            with progress:
                while self.steps_done < self.total:
                    self.step()
                    self._after_step(progress, task)
                    stop = self._stop_reason(signalled)
                    if stop is not None:
                        stopped = stop
                        break
        except KeyboardInterrupt:  # a second signal, or Ctrl-C inside a step: ranks may disagree
            stopped, collective = "interrupted", False
        finally:
            restore_signals()
        self.finish(collective)
        return TrainResult(step=self.steps_done, losses={k: float(v) for k, v in self.losses.items()},
                           best_psnr=self.best, stopped=stopped,
                           export=Path(self.opts.export) if self.opts.export else self.out / "model.safetensors")

    def _after_step(self, progress, task) -> None:
        """Logging, the time budget's plan, validation and the periodic checkpoint, each at its interval."""
        opts, step = self.opts, self.steps_done
        if step % opts.log_every == 0 or step == self.total:
            now = time.monotonic()
            sps = (step - self._last[1]) / max(1e-9, now - self._last[0])
            self._last = (now, step)
            lr = self.recipe.current_lr(step - 1)
            self.log({"step": step, **{k: round(float(v), 6) for k, v in self.losses.items()},
                      "lr": lr, "steps_per_s": round(sps, 3)})
            terms = " ".join(f"{k} {float(v):.4f}" for k, v in self.losses.items())
            progress.update(task, completed=step, terms=f"{terms} | {sps:.2f} it/s")
        if opts.max_minutes is not None and step % opts.log_every == 0:
            fitted = fit_to_budget(self.total, self.requested, step, self._start[1],
                                   time.monotonic() - self._start[0], opts.max_minutes)
            if fitted != self.total:
                self.total = self.recipe.total_steps = fitted
                progress.update(task, total=self.total)
        if self.val_sets and self.is_main and (step % opts.val_every == 0 or step == self.total):
            self.validate()
        if step % opts.save_every == 0 and step < self.total:
            self.checkpoint()

    def _stop_reason(self, signalled: dict[str, bool]) -> str | None:
        """"interrupted" or "time budget" when the loop must end before its plan (all ranks agree), else None."""
        opts = self.opts
        over_budget = opts.max_minutes is not None and (time.monotonic() - self._start[0]) / 60 >= opts.max_minutes
        if self.agreed(over_budget or bool(signalled)) and self.steps_done < self.total:
            return "interrupted" if self.agreed(bool(signalled)) else "time budget"
        return None

    def finish(self, collective: bool = True) -> None:
        """The last checkpoint and the inference files (``model.safetensors``, ``--export``)."""
        self.checkpoint(collective=collective)
        if self.is_main:
            self.export(self.out / "model.safetensors")
            if self.opts.export is not None:
                self.export(Path(self.opts.export))
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
