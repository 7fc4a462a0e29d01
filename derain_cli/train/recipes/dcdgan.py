"""dcdgan training: hinge GAN, dual PatchNCE and identity terms on unpaired data (Chen et al., CVPR 2022)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...models.dcdgan import (PRESETS, PatchDiscriminator, PatchSampleMLP, hinge_d_loss, hinge_g_loss, init_xavier,
                              jitter_brightness, patch_nce_loss)
from ...synth import check_rain_mix, rain_mix_layers
from ..recipe import Recipe


class DCDGANRecipe(Recipe):
    """One DCD-GAN step: update both discriminators, then generators and projection heads.

    Domain A is rain, B is clean (as in the reference): ``real_A`` rainy,
    ``fake_B = G_A(real_A)`` derained, ``fake_A = G_B(real_B)`` rainified.
    """

    lr = 1e-4
    betas = (0.5, 0.999)

    def __init__(self, spec, config, mode, lr=None, **options):
        if mode != "unpaired":
            raise ValueError(f"dcdgan trains on unpaired data only, not {mode!r}")
        check_rain_mix(config.get("prior_rain", PRESETS["paper"]["prior_rain"]))
        super().__init__(spec, config, mode, lr=lr, **options)
        cfg = self.config
        self.nce_layers = list(cfg["nce_layers"])
        channels = self.bundle["G_A"].feature_channels(self.nce_layers)
        self.nets["D_A"] = PatchDiscriminator(cfg["ndf"], cfg["n_layers_d"])  # judges clean outputs
        self.nets["D_B"] = PatchDiscriminator(cfg["ndf"], cfg["n_layers_d"])  # judges rainy outputs
        self.nets["F1"] = PatchSampleMLP(channels, cfg["nce_dim"])
        self.nets["F2"] = PatchSampleMLP(channels, cfg["nce_dim"])
        for name in ("D_A", "D_B"):
            init_xavier(self.nets[name], cfg.get("init_gain_d", cfg["init_gain"]))
        for name in ("F1", "F2"):
            init_xavier(self.nets[name], cfg["init_gain"])

    def param_groups(self) -> dict[str, list]:
        n = self.nets
        return {
            "G": list(n["bundle"].parameters()),
            "D": list(n["D_A"].parameters()) + list(n["D_B"].parameters()),
        }

    def group_lr(self, name: str) -> float:
        """``lr_d_mult`` scales the discriminators' rate (1 in the reference; the two
        time-scale rule of Heusel et al. 2017 for a discriminator that learns too slowly)."""
        return self.lr * float(self.config.get("lr_d_mult", 1.0)) if name == "D" else self.lr

    def setup(self, total_steps: int) -> None:
        """G and D share Adam(lr, (0.5, 0.999)); the heads use Adam's defaults, as in the reference."""
        super().setup(total_steps)
        schedule = self.schedulers["G"].lr_lambdas[0]
        heads = list(self.nets["F1"].parameters()) + list(self.nets["F2"].parameters())
        opt = torch.optim.Adam(heads, lr=self.config["lr_heads"])
        self.optimizers["F"] = opt
        self.schedulers["F"] = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    def _nce(self, src: torch.Tensor, out: torch.Tensor, enc_src, enc_out, head_src, head_out) -> torch.Tensor:
        """Dual PatchNCE: ``out``'s patches (other generator's encoder) must match ``src``'s (own encoder)."""
        cfg = self.config
        feat_k = enc_src(src, self.nce_layers, encode_only=True)
        feat_q = enc_out(out, self.nce_layers, encode_only=True)
        k_pool, ids = head_src(feat_k, cfg["num_patches"])
        q_pool, _ = head_out(feat_q, cfg["num_patches"], ids)
        total = sum(patch_nce_loss(q, k, cfg["nce_tau"], src.shape[0]).mean() for q, k in zip(q_pool, k_pool))
        return total / len(self.nce_layers)

    def _prior(self, G_A, real_B: torch.Tensor, step: int) -> torch.Tensor:
        """L1 of ``G_A`` on clean crops under procedural rain (``prior_rain``), times ``w_prior``.

        Rain adds light (O = B + R), so the clean crop with a rendered streak layer
        added is a rainy image whose background is known: a supervised signal that
        needs no paired data. Seeded by the step, so a resumed run draws the same rain.
        """
        b, _, h, w = real_B.shape
        mix = self.config.get("prior_rain", PRESETS["paper"]["prior_rain"])
        layers = rain_mix_layers(b, h, w, np.random.default_rng([int(step), 4099]), mix)
        rain = torch.as_tensor(layers, device=real_B.device, dtype=real_B.dtype)[:, None]
        rainy = (real_B + 2 * rain).clamp(-1, 1)  # [-1, 1] images: a [0, 1] layer counts twice
        return F.l1_loss(G_A(rainy), real_B) * self.config["w_prior"]

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        n, cfg = self.nets, self.config
        G = n["bundle"]
        device = next(G.parameters()).device
        jitter = cfg.get("brightness_jitter", 0.0)
        real_A = jitter_brightness(torch.as_tensor(batch["rainy"], device=device) * 2 - 1, jitter)
        real_B = jitter_brightness(torch.as_tensor(batch["clean"], device=device) * 2 - 1, jitter)

        def G_A(*args, **kwargs):
            return G("G_A", *args, **kwargs)

        def G_B(*args, **kwargs):
            return G("G_B", *args, **kwargs)

        fake_B = G_A(real_A)
        fake_A = G_B(real_B)
        idt_A = G_A(real_B)
        idt_B = G_B(real_A)

        # discriminators
        D_A, D_B = n["D_A"], n["D_B"]
        self.set_requires_grad([D_A, D_B], True)
        opt_D = self.optimizers["D"]
        opt_D.zero_grad(set_to_none=True)
        loss_D_A = hinge_d_loss(D_A(real_B), D_A(fake_B.detach())) * cfg["lambda_gan"]
        loss_D_B = hinge_d_loss(D_B(real_A), D_B(fake_A.detach())) * cfg["lambda_gan"]
        (loss_D_A + loss_D_B).backward()
        self.step_optimizers(opt_D)

        # generators and projection heads
        self.set_requires_grad([D_A, D_B], False)
        opt_G, opt_F = self.optimizers["G"], self.optimizers["F"]
        opt_G.zero_grad(set_to_none=True)
        opt_F.zero_grad(set_to_none=True)
        loss_G_A = hinge_g_loss(D_A(fake_B)) * cfg["lambda_gan"]
        loss_G_B = hinge_g_loss(D_B(fake_A)) * cfg["lambda_gan"]
        loss_NCE1 = self._nce(real_A, fake_B, G_A, G_B, n["F1"], n["F2"]) * cfg["lambda_nce"]
        loss_NCE2 = self._nce(real_B, fake_A, G_B, G_A, n["F2"], n["F1"]) * cfg["lambda_nce"]
        loss_idt_A = F.l1_loss(idt_A, real_B) * cfg["lambda_idt"]
        loss_idt_B = F.l1_loss(idt_B, real_A) * cfg["lambda_idt"]
        loss_G = 0.5 * (loss_G_A + loss_G_B) + 0.5 * (loss_NCE1 + loss_NCE2) + 0.5 * (loss_idt_A + loss_idt_B)
        loss_prior = self._prior(G_A, real_B, step) if cfg.get("w_prior", 0.0) > 0 else torch.zeros((), device=device)
        loss_G = loss_G + loss_prior
        loss_G.backward()
        self.step_optimizers(opt_G, opt_F)
        self.set_requires_grad([D_A, D_B], True)
        terms = {
            "G": loss_G, "G_A": loss_G_A, "G_B": loss_G_B, "NCE1": loss_NCE1, "NCE2": loss_NCE2,
            "idt_A": loss_idt_A, "idt_B": loss_idt_B, "D_A": loss_D_A, "D_B": loss_D_B, "prior": loss_prior,
        }
        return {k: float(v.detach()) for k, v in terms.items()}
