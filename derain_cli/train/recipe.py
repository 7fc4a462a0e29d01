"""The contract between the training engine and an architecture.

A recipe owns *what* is learned: networks (generators, discriminators,
projection heads), optimizers, schedules and the loss terms. The engine owns
everything else: data, devices, precision, EMA, checkpoints, validation,
logging and data parallelism (``train/distributed.py``).

Batches are dicts of ``B x 3 x H x W`` float tensors in [0, 1]:

* ``paired``:   ``{"rainy", "clean"}`` aligned pairs
* ``unpaired``: ``{"clean", "rainy"}`` unrelated images
* ``semi``:     ``{"rainy", "clean", "real"}`` pairs plus unlabelled real rain
"""
from __future__ import annotations

import math
from typing import Any

from .distributed import average_gradients, broadcast_state, optimizer_params

from ..errors import DerainError

#: How a declared recipe option is written: ``name -> (type, default, help)``.
OptionSpec = dict[str, tuple[type, Any, str]]


class Recipe:
    """Base class; subclasses fill ``self.nets`` in ``__init__`` and implement ``train_step``.

    Under torchrun every rank runs the same recipe on its own batches: step
    optimizers only through :meth:`optimize` or :meth:`step_optimizers`, which
    average the gradients over the ranks first (``train/distributed.py``).
    """

    #: Default learning rate and Adam betas; ``--lr`` overrides ``lr``.
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    #: Default variant validated during training (see ``ModelSpec.variants``).
    val_variant: str = "default"
    #: Options of this recipe that are not model config, set with ``derain train --set NAME=VALUE``:
    #: ``{name: (type, default, help)}``; the values reach ``__init__`` as keyword arguments.
    recipe_options: OptionSpec = {}

    def __init__(self, spec, config: dict[str, Any], mode: str, lr: float | None = None, **options: Any):
        self.spec = spec
        #: Recipe-specific options from the command line (for example jrgr's ``stage``).
        self.options = options
        self.config = config
        self.mode = mode
        if lr is not None:
            self.lr = lr
        self.bundle = spec.build(config)
        #: Every trainable module by name; checkpointed and moved to the device by the engine.
        self.nets: dict[str, Any] = {"bundle": self.bundle}
        self.optimizers: dict[str, Any] = {}
        self.schedulers: dict[str, Any] = {}
        self.total_steps = 1

    # -- set-up -----------------------------------------------------------------
    def param_groups(self) -> dict[str, list]:
        """Optimizer name -> parameters. Default: one Adam over the bundle."""
        return {"main": list(self.nets["bundle"].parameters())}

    def setup(self, total_steps: int) -> None:
        """Create optimizers and cosine schedules (called once nets are on their device)."""
        import torch

        self.total_steps = max(1, total_steps)
        warmup = min(200, self.total_steps // 20)

        def lr_lambda(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            t = (step - warmup) / max(1, self.total_steps - warmup)
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        for name, params in self.param_groups().items():
            opt = torch.optim.Adam(params, lr=self.group_lr(name), betas=self.betas)
            self.optimizers[name] = opt
            self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)

    def group_lr(self, name: str) -> float:
        """Peak learning rate of one parameter group (all share ``lr`` unless a recipe says otherwise)."""
        return self.lr

    # -- one step ---------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """Forward, backward and optimizer steps for one batch; returns named loss terms."""
        raise NotImplementedError

    def optimize(self, loss, name: str = "main", clip: float | None = 1.0) -> None:
        """One optimizer update: clear grads, backward, clip the grad norm, step."""
        import torch

        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(optimizer_params(opt))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        opt.step()

    @staticmethod
    def step_optimizers(*optimizers) -> None:
        """Step optimizers whose gradients the recipe computed itself (GAN updates), ranks averaged first."""
        average_gradients(optimizer_params(*optimizers))
        for opt in optimizers:
            opt.step()

    def trained_tasks(self, step: int) -> tuple[str, ...]:
        """What an export after ``step`` steps can do (recorded in the weights file's metadata)."""
        return ("derain", "rainify") if self.spec.rainify_net is not None else ("derain",)

    def current_lr(self, step: int) -> float:
        """The learning rate to log at ``step``: the first optimizer's (recipes with phases override it)."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def end_step(self) -> None:
        for s in self.schedulers.values():
            s.step()
        broadcast_state(self.nets.values(), parameters=False)

    @staticmethod
    def set_requires_grad(nets, flag: bool) -> None:
        for net in nets:
            for p in net.parameters():
                p.requires_grad_(flag)


# -- the options a recipe declares, and --set keys ------------------------------------------------
def declared_options(spec) -> OptionSpec:
    """The recipe options of ``spec``'s recipe (none when the recipe declares none)."""
    return dict(getattr(spec.recipe, "recipe_options", None) or {})


def _convert(name: str, kind: type, value: Any) -> Any:
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise DerainError(f"--set {name}={value!r}: {name} takes {'an' if kind is int else 'a'} {kind.__name__}")


def split_sets(spec, sets: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` values as (model config overrides, recipe option values), the latter converted to their type."""
    declared = declared_options(spec)
    overrides = {k: v for k, v in sets.items() if k not in declared}
    options = {k: _convert(k, declared[k][0], v) for k, v in sets.items() if k in declared}
    return overrides, options


def check_recipe_options(spec, values: dict[str, Any]) -> None:
    """Refuse option values the recipe does not declare (a recipe without declarations takes any)."""
    declared = declared_options(spec)
    if not declared and not hasattr(spec.recipe, "recipe_options"):
        return
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise DerainError(f"{spec.name} has no recipe option {', '.join(unknown)}; "
                          f"it has: {', '.join(sorted(declared)) or 'none'}")
    for name, value in values.items():
        _convert(name, declared[name][0], value)


def check_set_keys(spec, config: dict[str, Any], overrides: dict[str, Any]) -> None:
    """One line naming the valid keys when a ``--set`` key is neither a config key nor a recipe option."""
    unknown = sorted(set(overrides) - set(config))
    if not unknown:
        return
    valid = sorted(config) + sorted(declared_options(spec))
    raise DerainError(f"unknown --set key{'s' if len(unknown) > 1 else ''} for {spec.name}: {', '.join(unknown)}; "
                      f"valid keys: {', '.join(valid)}")
