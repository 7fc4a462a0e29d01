"""Scoring a network during training exactly as ``derain run`` would derain the validation photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DerainError
from .data import load_paired


def validate(spec, bundle, variant: str, pairs: tuple[list[np.ndarray], list[np.ndarray]], device, *,
             config: dict) -> float:
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
    derainer = Derainer(spec, config, net, torch.device(device))  # the traits of the config being trained
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
