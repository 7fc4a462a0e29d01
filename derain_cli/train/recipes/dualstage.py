"""dualstage training: progressive supervision of both stages (paired data)."""
from __future__ import annotations

from ...models.common import charbonnier, edge_loss
from ..recipe import Recipe


class DualStageRecipe(Recipe):
    """Progressive supervision: Charbonnier on both stages, edge loss on the final image."""

    lr = 5e-4

    def train_step(self, batch, step):
        net = self.nets["bundle"]  # called directly, so a DDP wrapper syncs the gradients
        coarse, final = net(batch["rainy"], stages=True)
        clean = batch["clean"]
        l1 = charbonnier(coarse.float(), clean)
        l2 = charbonnier(final.float(), clean)
        le = edge_loss(final.float(), clean)
        loss = 0.5 * l1 + l2 + 0.05 * le
        self.optimize(loss)
        return {"loss": loss.detach(), "coarse": l1.detach(), "final": l2.detach()}
