"""dualstage training: progressive supervision of both stages (paired data)."""
from __future__ import annotations

from ...errors import DerainError
from ...models.common import charbonnier, edge_loss
from ..recipe import Recipe


class DualStageRecipe(Recipe):
    """Progressive supervision: Charbonnier on both stages, edge loss on the final image."""

    lr = 5e-4
    recipe_options = {"train_only": (str, "", "comma-separated module names to train (e.g. veil, a head grown "
                                               "with --init); the rest stays frozen. Default: everything")}

    def param_groups(self):
        """Everything, or only the modules ``train_only`` names (the others stop needing gradients)."""
        names = [n.strip() for n in (self.options.get("train_only") or "").split(",") if n.strip()]
        if not names:
            return super().param_groups()
        net = self.nets["bundle"]
        unknown = [n for n in names if getattr(net, n, None) is None]
        if unknown:
            raise DerainError(f"train_only: this dualstage config has no module {', '.join(unknown)}")
        keep = [p for n in names for p in getattr(net, n).parameters()]
        kept = {id(p) for p in keep}
        for p in net.parameters():
            p.requires_grad_(id(p) in kept)
        return {"main": keep}

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
