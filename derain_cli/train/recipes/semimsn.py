"""semimsn training: supervised Charbonnier, plus mean/covariance matching with real rain (semi)."""
from __future__ import annotations

from ...models.common import charbonnier
from ...models.semimsn import matching_loss
from ..recipe import Recipe


class SemiMSNRecipe(Recipe):
    """Supervised Charbonnier on synthetic pairs (+ w * matching loss with real rain in semi mode)."""

    lr = 5e-4

    def train_step(self, batch, step):
        net = self.nets["bundle"]  # called directly, so a DDP wrapper syncs the gradients
        model = net.module if hasattr(net, "module") else net
        rainy, clean = batch["rainy"], batch["clean"]
        terms = {}
        if self.mode == "semi":
            out, fs, fr = net(rainy, batch["real"])
            match = matching_loss(fs, fr)
            terms["match"] = match
        else:
            out = net(rainy)
            match = 0.0
        rec = charbonnier(out.float(), clean)
        loss = rec + self.config["match_weight"] * match
        terms = {"loss": loss, "rec": rec, **terms}
        self.optimize(loss)
        return {k: v.detach() for k, v in terms.items()}
