"""jrgr training: G1 on synthetic pairs, then both cycles with GAN and cycle terms (Ye et al., CVPR 2021)."""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.jrgr import ImageHistory, build_discriminators, decompose, high_pass, lsgan
from ..recipe import Recipe


def _warm_cosine(i: int, length: int) -> float:
    """LR factor ``i`` steps into a phase of ``length`` steps: linear warm-up, cosine down to 2%."""
    length = max(1, length)
    warm = min(200, max(1, length // 20))
    if i < warm:
        return (max(i, 0) + 1) / warm
    t = (i - warm) / max(1, length - warm)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class JRGRRecipe(Recipe):
    """Two-step JRGR training.

    Stage 1: G1 alone, MSE to the synthetic background. G3 mirrors G1's weights
    throughout, so the switch (and any stage-1 export) starts G3 from G1, as the
    authors initialise it. Stage 2: the two cycles with all losses; G1, G3 learn at
    ``g1_lr_scale``, ``g3_lr_scale`` times the translators' rate (0 = fixed, the
    authors' final choice for G1).
    ``stage`` option: 1, 2, or None = stage 1 for ``stage1_fraction`` of the steps
    then stage 2. ``paired`` mode is stage 1 alone.
    """

    betas = (0.5, 0.999)
    recipe_options = {"stage": (int, None, "training stage: 1, 2, or unset (stage 1 then 2, see stage1_fraction)")}

    def __init__(self, spec, config, mode, lr=None, **options):
        super().__init__(spec, config, mode, lr=lr, **options)
        stage = options.get("stage")
        if stage not in (None, 1, 2):
            raise ValueError(f"jrgr has training stages 1 and 2, not {stage!r}")
        if mode == "paired":
            if stage == 2:
                raise ValueError("jrgr stage 2 needs real rainy images: use --semi RAINY CLEAN REAL")
            stage = 1
        self.stage = stage
        self.disc = build_discriminators(config)
        self.nets["disc"] = self.disc
        self.history = {k: ImageHistory(config["pool_size"]) for k in ("real", "synthetic", "b1", "b2", "b3", "b4")}

    @property
    def switch_step(self) -> int:
        """First stage-2 step. Read live: the engine may shrink ``total_steps`` to fit ``--max-minutes``."""
        if self.stage == 1:
            return self.total_steps
        if self.stage == 2:
            return 0
        return int(round(self.config["stage1_fraction"] * self.total_steps))

    def stage_at(self, step: int) -> int:
        return 1 if step < self.switch_step else 2

    #: Validation pairs are synthetic; G3 mirrors G1 during stage 1, so "real" scores the right net throughout.
    val_variant = "real"

    def setup(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)
        bundle, lr = self.nets["bundle"], self.lr
        self.optimizers["g1"] = torch.optim.Adam(bundle["g1"].parameters(), lr=lr, betas=self.betas)
        # translators first: ``current_lr`` logs group 0, which always trains
        groups = [{"params": bundle["g2"].parameters(), "lr": lr}, {"params": bundle["g4"].parameters(), "lr": lr}]
        groups += [{"params": bundle[k].parameters(), "lr": lr * self.config[f"{k}_lr_scale"]}
                   for k in ("g1", "g3") if k not in self.frozen]
        self.optimizers["g"] = torch.optim.Adam(groups, lr=lr, betas=self.betas)
        self.optimizers["d"] = torch.optim.Adam(self.nets["disc"].parameters(), lr=lr, betas=self.betas)

        def stage1(step: int) -> float:
            return _warm_cosine(step, self.switch_step)

        def stage2(step: int) -> float:
            return _warm_cosine(step - self.switch_step, self.total_steps - self.switch_step)

        def delayed(step: int) -> float:
            """G1/G3 in stage 2: fixed for the first ``remover_delay`` of it, then their own warm-up and decay."""
            start = self.remover_start
            if step < start:
                return 0.0
            return _warm_cosine(step - start, self.total_steps - start)

        g_fns = [stage2, stage2] + [delayed] * (len(groups) - 2)
        for name, fn in (("g1", stage1), ("g", g_fns), ("d", stage2)):
            self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(self.optimizers[name], fn)

    @property
    def remover_start(self) -> int:
        """First step at which G1/G3 may learn in stage 2 (``remover_delay``; read live like ``switch_step``)."""
        delay = float(self.config.get("remover_delay", 0.0))
        return self.switch_step + int(round(delay * (self.total_steps - self.switch_step)))

    def held(self, step: int) -> tuple[str, ...]:
        """Removers that do not change at this step: the frozen ones, and both during ``remover_delay``."""
        return ("g1", "g3") if step < self.remover_start else self.frozen

    def trained_tasks(self, step: int) -> tuple[str, ...]:
        """Rainify needs G2, which only stage 2 trains."""
        return ("derain", "rainify") if step > self.switch_step else ("derain",)

    def current_lr(self, step: int) -> float:
        """Stage 1: G1's rate; stage 2: the translators' (full) rate, G1 and G3 run at fixed fractions of it."""
        if self.stage_at(step) == 1:
            return self.optimizers["g1"].param_groups[0]["lr"]
        return self.optimizers["g"].param_groups[0]["lr"]

    @property
    def frozen(self) -> tuple[str, ...]:
        """Removers held fixed in stage 2 (lr scale 0): no updates and BatchNorm statistics kept.

        The authors' final strategy fixes G1 ("fix G1 and train G2, G3, G4, initial G3
        with G1"); a remover left in train mode would still drift its BatchNorm
        statistics towards the other domain and lose synthetic accuracy.
        """
        return tuple(k for k in ("g1", "g3") if self.config[f"{k}_lr_scale"] == 0)

    def end_step(self) -> None:
        # every schedule advances every step (so resumed runs stay aligned), even the idle stage's
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            super().end_step()

    @staticmethod
    def _to_signed(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        if self.stage_at(step) == 1:
            return self._stage1(batch)
        return self._stage2(batch, step)

    def _stage1(self, batch) -> dict[str, float]:
        g1, g3 = self.nets["bundle"]["g1"], self.nets["bundle"]["g3"]
        g1.train()
        rainy, clean = self._to_signed(batch["rainy"]), self._to_signed(batch["clean"])
        opt = self.optimizers["g1"]
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(g1(rainy), clean)
        loss.backward()
        self.step_optimizers(opt)
        with torch.no_grad():  # G3 starts stage 2 as a copy of G1
            for a, b in zip(g3.state_dict().values(), g1.state_dict().values()):
                a.copy_(b)
        return {"mse": loss.item()}

    def cycles(self, syn_rainy: torch.Tensor, real_rainy: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both cycles; every tensor the losses need, named as in the paper (s = synthetic, t = real)."""
        g = self.nets["bundle"]
        o = {}
        # synthetic -> real -> synthetic
        o["Bs"], o["Rs"] = decompose(g["g1"], syn_rainy)
        o["Ot"] = o["Bs"] + g["g2"](o["Rs"])
        o["Bs2"], o["Rt2"] = decompose(g["g3"], o["Ot"])
        o["Os2"] = o["Bs2"] + g["g4"](o["Rt2"])
        # real -> synthetic -> real
        o["Bt"], o["Rt"] = decompose(g["g3"], real_rainy)
        o["Os"] = o["Bt"] + g["g4"](o["Rt"])
        o["Bt2"], o["Rs2"] = decompose(g["g1"], o["Os"])
        o["Ot2"] = o["Bt2"] + g["g2"](o["Rs2"])
        return o

    def _stage2(self, batch, step: int) -> dict[str, float]:
        cfg = self.config
        n = cfg["stage2_batch"] or batch["rainy"].shape[0]
        os_, bs = self._to_signed(batch["rainy"][:n]), self._to_signed(batch["clean"][:n])
        ot = self._to_signed(batch["real"][:n])
        bundle, disc = self.nets["bundle"], self.nets["disc"]
        bundle.train()
        disc.train()
        held = self.held(step)
        for k in ("g1", "g3"):
            bundle[k].train(k not in held)
            bundle[k].requires_grad_(k not in held)
        if cfg.get("remover_bn_fixed", False):
            for k in ("g1", "g3"):
                for m in bundle[k].modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()  # normalise with the stage-1 statistics and leave them alone

        # generators
        self.set_requires_grad([disc], False)
        o = self.cycles(os_, ot)
        cycle = (F.l1_loss(o["Os2"], os_) + F.l1_loss(o["Ot2"], ot)
                 + F.l1_loss(o["Bs2"], o["Bs"]) + F.l1_loss(o["Bt2"], o["Bt"]))
        gan = (lsgan(disc["real"](o["Ot"]), True) + lsgan(disc["synthetic"](o["Os"]), True)
               + sum(lsgan(disc["background"](o[k]), True) for k in ("Bs", "Bs2", "Bt", "Bt2")))
        mse = F.mse_loss(o["Bs"], bs) + F.mse_loss(o["Bs2"], bs)
        total = cfg["lambda_mse"] * mse + cfg["lambda_gan"] * gan + cfg["lambda_cycle"] * cycle
        anchor = self.anchor_loss(o["Bt"], ot)
        if anchor is not None:
            total = total + cfg["lambda_anchor"] * anchor
        idt = None
        if cfg.get("lambda_idt", 0.0):
            # G2(Rs) = Ot - Bs and G4(Rt) = Os - Bt: each translated rain layer stays near its source
            idt = F.l1_loss(o["Ot"] - o["Bs"], o["Rs"]) + F.l1_loss(o["Os"] - o["Bt"], o["Rt"])
            total = total + cfg["lambda_idt"] * idt
        opt_g = self.optimizers["g"]
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.step_optimizers(opt_g)

        # discriminators (LSGAN, each term halved as in the official code)
        self.set_requires_grad([disc], True)
        opt_d = self.optimizers["d"]
        opt_d.zero_grad(set_to_none=True)

        def d_loss(net, real, fake):
            return 0.5 * (lsgan(net(real), True) + lsgan(net(fake), False))

        d_real = d_loss(disc["real"], ot, self.history["real"].query(o["Ot"]))
        d_syn = d_loss(disc["synthetic"], os_, self.history["synthetic"].query(o["Os"]))
        d_b = sum(d_loss(disc["background"], bs, self.history[h].query(o[k]))
                  for h, k in (("b1", "Bs"), ("b2", "Bs2"), ("b3", "Bt"), ("b4", "Bt2")))
        (d_real + d_syn + d_b).backward()
        self.step_optimizers(opt_d)
        terms = {"mse": mse, "gan": gan, "cycle": cycle, "g_total": total, "d_real": d_real, "d_syn": d_syn, "d_b": d_b}
        if anchor is not None:
            terms["anchor"] = anchor
        if idt is not None:
            terms["idt"] = idt
        return {k: v.item() for k, v in terms.items()}

    def anchor_loss(self, bt: torch.Tensor, real_rainy: torch.Tensor) -> torch.Tensor | None:
        """Mean amount by which G3's real background is *brighter* than G1's (``lambda_anchor``; 0 = off).

        Rain adds light, so a brighter background means rain left in: this lets G3
        remove more real rain than G1 but not less while the translators learn. With
        ``anchor_sigma`` > 0 the difference is high-passed first, so a global darkening
        cannot pay for streaks left in. Not in the paper; G1 is the teacher and gets no
        gradient from it.
        """
        if not self.config.get("lambda_anchor", 0.0):
            return None
        g1 = self.nets["bundle"]["g1"]
        with torch.no_grad():
            was_training = g1.training
            g1.eval()  # the teacher's BatchNorm statistics stay those of stage 1
            b1, _ = decompose(g1, real_rainy)
            g1.train(was_training)
        diff = high_pass(bt - b1, float(self.config.get("anchor_sigma", 0.0)))
        return F.relu(diff).mean()
