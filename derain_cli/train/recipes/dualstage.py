"""dualstage training: progressive supervision of both stages (paired data)."""
from __future__ import annotations

import torch

from ...errors import DerainError
from ...models.common import block_mean_error, charbonnier, edge_loss
from ..recipe import Recipe


class DualStageRecipe(Recipe):
    """Progressive supervision: Charbonnier on both stages, edge loss on the final image."""

    lr = 5e-4
    recipe_options = {"train_only": (str, "", "comma-separated module names to train (e.g. veil, a head grown "
                                               "with --init); the rest stays frozen. Default: everything"),
                      "loss": (str, "charbonnier", "charbonnier (pixels weigh the same) or log (the mean over "
                                                   "images of each image's log loss: a drizzle crop weighs as "
                                                   "much as a downpour's, as in a mean PSNR)"),
                      "lowfreq": (float, 0.0, "weight of a squared error on 8x8 block means, added outside the log (0 = "
                                              "off): L1-like losses learn the median, which for a veil that only some "
                                              "similar crops carry is no correction; squared error learns its mean, "
                                              "as PSNR scores it")}

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        kind = self.options.get("loss") or "charbonnier"
        if kind not in ("charbonnier", "log"):
            raise DerainError(f"--set loss={kind}: choose charbonnier or log")
        self.log_loss = kind == "log"  # checked once here, not at every step
        self.lowfreq = float(self.options.get("lowfreq") or 0.0)
        if self.lowfreq < 0:
            raise DerainError(f"--set lowfreq={self.lowfreq:g}: a weight of 0 or more")

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
        l1 = charbonnier(coarse.float(), clean, per_image=True)
        l2 = charbonnier(final.float(), clean, per_image=True)
        le = edge_loss(final.float(), clean, per_image=True)
        per_image = 0.5 * l1 + l2 + 0.05 * le
        loss = torch.log(per_image).mean() if self.log_loss else per_image.mean()
        if self.lowfreq:  # outside the log, which would weigh a veiled crop's error down
            loss = loss + self.lowfreq * block_mean_error(final.float(), clean).mean()
        self.optimize(loss)
        return {"loss": loss.detach(), "coarse": l1.mean().detach(), "final": l2.mean().detach()}
