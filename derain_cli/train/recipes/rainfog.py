"""rainfog training: the asymmetric unpaired paths with cycle, LSGAN, feature and physics-prior losses."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...models.common import charbonnier
from ...models.rainfog import LEGACY_PRIOR_RAIN, PatchDiscriminator, procedural_degradation
from ...synth import check_rain_mix
from ..recipe import Recipe


class RainFogRecipe(Recipe):
    """The asymmetric unpaired paths with cycle, adversarial (LSGAN), feature and physics-prior losses."""

    lr = 2e-4
    betas = (0.5, 0.999)

    def __init__(self, spec, config, mode, lr=None, **options):
        if mode != "unpaired":
            raise ValueError(f"rainfog trains on unpaired data only, not {mode!r}")
        check_rain_mix(config.get("prior_rain", LEGACY_PRIOR_RAIN))
        super().__init__(spec, config, mode, lr=lr, **options)
        self.nets["D_clean"] = PatchDiscriminator(config["disc_width"])
        self.nets["D_rain"] = PatchDiscriminator(config["disc_width"])
        self.rng = np.random.default_rng(int(options.get("seed", 0) or 0))

    def param_groups(self) -> dict[str, list]:
        n = self.nets
        return {"G": list(n["bundle"].parameters()), "D": list(n["D_clean"].parameters()) + list(n["D_rain"].parameters())}

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        n, cfg = self.nets, self.config
        B = n["bundle"]
        device = next(B.parameters()).device
        rainy = torch.as_tensor(batch["rainy"], device=device)
        clean = torch.as_tensor(batch["clean"], device=device)
        rng = np.random.default_rng([int(step), 7919]) if cfg["step_seeded"] else self.rng

        # Rain -> Clean -> Rain
        t_x, a_x, r_x = B("extractor", rainy)
        derained = B("removal", rainy, t_x, a_x, r_x)
        re_rained = B("generator", derained, t_x, a_x, r_x)
        # The clean batch is split: one half takes the Clean -> Rain -> Clean path with the
        # features of unrelated rainy images, the other half the procedural physics prior.
        h = max(1, clean.shape[0] // 2)
        clean_g, clean_p = clean[:h], clean[h:]
        fx = (t_x[:h].detach(), a_x[:h].detach(), r_x[:h].detach())
        rainified = B("generator", clean_g, *fx)
        t_s, a_s, r_s = B("extractor", rainified)
        back = B("removal", rainified, t_s, a_s, r_s)
        if clean_p.shape[0] == 0:
            clean_p = clean_g
        proc, t_p, a_p, r_p = procedural_degradation(
            clean_p, rng, cfg.get("prior_rain", LEGACY_PRIOR_RAIN), cfg.get("prior_fog_free", 0.25))
        t_q, a_q, r_q = B("extractor", proc)
        proc_clean = B("removal", proc, t_q, a_q, r_q)

        Dc, Dr = n["D_clean"], n["D_rain"]
        # discriminators (LSGAN)
        self.set_requires_grad([Dc, Dr], True)
        opt_d = self.optimizers["D"]
        opt_d.zero_grad(set_to_none=True)
        loss_d = 0.5 * (
            ((Dc(clean) - 1) ** 2).mean() + (Dc(derained.detach().clamp(0, 1)) ** 2).mean()
            + ((Dr(rainy[:h]) - 1) ** 2).mean() + (Dr(rainified.detach().clamp(0, 1)) ** 2).mean()
        )
        loss_d.backward()
        self.step_optimizers(opt_d)

        self.set_requires_grad([Dc, Dr], False)
        opt_g = self.optimizers["G"]
        opt_g.zero_grad(set_to_none=True)
        terms = {
            "cyc_rcr": charbonnier(re_rained, rainy) * cfg["w_cycle"],
            "cyc_crc": charbonnier(back, clean_g) * cfg["w_cycle"],
            "prior": charbonnier(proc_clean, clean_p) * cfg["w_prior"],
            # L1 for the smooth maps; squared error for the sparse rain layer (L1's
            # median would be R = 0 almost everywhere and streaks would never be learned)
            "feat": (
                F.l1_loss(t_s, fx[0]) + F.l1_loss(a_s, fx[1]) + cfg["w_rain"] * F.mse_loss(r_s, fx[2])
                + F.l1_loss(t_q, t_p) + F.l1_loss(a_q, a_p) + cfg["w_rain"] * F.mse_loss(r_q, r_p)
            ) * cfg["w_feat"],
            "adv_clean": ((Dc(derained) - 1) ** 2).mean() * cfg["w_adv"],
            "adv_rain": ((Dr(rainified) - 1) ** 2).mean() * cfg["w_adv"],
        }
        loss_g = sum(terms.values())
        loss_g.backward()
        self.step_optimizers(opt_g)
        self.set_requires_grad([Dc, Dr], True)
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["G"] = float(loss_g.detach())
        out["D"] = float(loss_d.detach())
        return out
