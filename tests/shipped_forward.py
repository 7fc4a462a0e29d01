"""Forward passes of every shipped weights file on one bundled crop, to guard refactors.

``python tests/shipped_forward.py`` rewrites ``tests/shipped_reference.npz`` with the
current code: run it only before a change that must keep outputs, never to make a
failing comparison pass.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import derain_cli

PACKAGE = Path(derain_cli.__file__).resolve().parent
WEIGHTS = PACKAGE / "data" / "weights"
CROP = PACKAGE / "data" / "samples" / "crops" / "rainy" / "191.png"
REFERENCE = Path(__file__).resolve().parent / "shipped_reference.npz"
#: An odd-sized window, padded by the inference path (``Derainer.process_tensor``).
ODD_WINDOW = (slice(3, 32), slice(5, 50))
#: A 32 x 64 window of the crop: a multiple of every model's size multiple (jrgr: 32).
WINDOW = (slice(32, 64), slice(32, 96))


def crop_tensor(window=WINDOW):
    """A window of the bundled crop as a 1 x 3 x H x W float tensor in [0, 1]."""
    import torch

    from derain_cli.imageio import read_rgb8

    rgb = read_rgb8(CROP)[window]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0


def shipped_outputs() -> dict[str, np.ndarray]:
    """``{"<file stem>/<net>": output}`` for every shipped file, every variant and its rainify net."""
    import torch

    from derain_cli.registry import get_spec
    from derain_cli.weightfile import load_weights

    x = crop_tensor()
    outputs: dict[str, np.ndarray] = {}
    for path in sorted(WEIGHTS.glob("*.safetensors")):
        state, meta = load_weights(path)
        spec = get_spec(meta.get("architecture", path.stem))
        bundle = spec.build(meta.get("config") or spec.config())
        bundle.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
        bundle.eval()
        nets = {f"derain-{v}": spec.derain_net(bundle, v) for v in spec.variants}
        if spec.rainify_net is not None:
            nets["rainify"] = spec.rainify_net(bundle)
        lo, hi = spec.traits(meta.get("config") or spec.config()).input_range
        for label, net in nets.items():
            with torch.no_grad():
                y = net(x * (hi - lo) + lo)
            y = y[0] if isinstance(y, (tuple, list)) else y
            outputs[f"{path.stem}/{label}"] = y.float().numpy()
        outputs[f"{path.stem}/api-odd"] = api_output(spec, bundle, path)
    return outputs


def api_output(spec, bundle, path: Path) -> np.ndarray:
    """The default derain net through ``Derainer.process_tensor`` on the odd window (pads, crops, clamps)."""
    import torch

    from derain_cli.api import Derainer

    net = spec.derain_net(bundle, spec.variants[0]).eval()
    d = Derainer(spec, {}, net, torch.device("cpu"), meta={"weights_path": str(path)})
    return d.process_tensor(crop_tensor(ODD_WINDOW)).numpy()


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    np.savez_compressed(REFERENCE, **shipped_outputs())
    print(f"wrote {REFERENCE.name}")
