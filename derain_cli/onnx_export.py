"""ONNX: export a model's derain network (``derain export --onnx``) and run such a file (``--weights X.onnx``).

The graph takes ``N x 3 x H x W`` float32 RGB in [0, 1] and returns the derained image in
[0, 1]; height and width are dynamic and must be multiples of ``size_multiple`` (stored in
the file's ``metadata_props`` with the architecture, its config and where the weights came
from). Written by the TorchScript-based exporter (``dynamo=False``), which keeps the
image size symbolic through the reshapes of window attention. Both directions need the
optional ``onnx`` extra; ``onnx`` and ``onnxruntime`` are imported only here, lazily.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

from .errors import DerainError

INSTALL = "install it with: pip install 'derain-cli[onnx]'"
OPSET = 17

#: Architectures whose derain network has no ONNX graph with a dynamic height and width, and why.
NOT_EXPORTABLE = {
    "rainfog": "its global attention pools to a grid whose size is computed from the image size "
               "(adaptive average pooling to a data-dependent shape), which ONNX cannot express for a dynamic "
               "height and width",
}


class OnnxError(DerainError):
    """An ONNX file that cannot be written or run, or the optional packages missing."""


def _require(module: str):
    """Import ``onnx`` or ``onnxruntime``, or say in one line how to install them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxError(f"ONNX needs the {module} package; {INSTALL}") from None


def _graph_module(net, input_range: tuple[float, float]):
    """The net between [0, 1] images: maps to its input range, takes its image output, maps back, clamps."""
    import torch

    lo, hi = input_range

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, image):
            x = image * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else image
            y = self.net(x)
            y = y[0] if isinstance(y, (tuple, list)) else y
            y = (y - lo) / (hi - lo) if (lo, hi) != (0.0, 1.0) else y
            return y.clamp(0.0, 1.0)

    return Graph().eval()


def sample_sizes(multiple: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """``(traced, checked)`` image sizes (multiples of ``multiple``).

    The traced size is off the 32-pixel grid, so a network that pads inside records its
    padding (traced at a size needing none, the branch would vanish from the graph); the
    checked sizes differ from it on both sides (a constant-folded size shows), one on the grid.
    """
    m, up = max(32, multiple), lambda n: multiple * -(-n // multiple)  # noqa: E731
    return (2 * m + up(13), 3 * m + up(7)), [(3 * m + up(5), 2 * m + up(19)), (2 * m, 3 * m)]


def _metadata(derainer, tile_safe: bool) -> dict[str, str]:
    """What a runner needs to know, as ONNX ``metadata_props`` (strings only)."""
    from . import __version__
    from .weightfile import sha256_file

    spec, meta, traits = derainer.spec, derainer.meta, derainer.traits
    source = Path(str(meta.get("weights_path", "")))
    return {
        "architecture": spec.name,
        "variant": derainer.variant,
        "size_multiple": str(traits.size_multiple),
        "min_size": str(traits.min_size),
        "input": "image: N x 3 x H x W float32 RGB in [0, 1]; H and W multiples of size_multiple",
        "output": "derained: N x 3 x H x W float32 RGB in [0, 1]",
        "dynamic_axes": "batch, height, width",
        "tile_safe": "true" if tile_safe else "false",
        "tile_margin": str(traits.tile_margin),
        "min_tile": str(traits.min_tile if tile_safe else max(traits.min_tile, 512)),
        "config": json.dumps(derainer.config, sort_keys=True),
        "weights": f"{source.name} ({meta.get('weights_source', '?')})",
        "weights_sha256": sha256_file(source) if source.is_file() else "",
        "derain_cli": __version__,
        "torch": __import__("torch").__version__,
    }


def export_onnx(model: str, output: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                variant: str | None = None, tolerance: float = 1e-4) -> dict[str, Any]:
    """Write ``model``'s derain network to ``output`` (.onnx), checked against torch with onnxruntime.

    Returns ``{"path", "architecture", "max_diff", "checked_size"}``. Refuses, in one line,
    architectures in :data:`NOT_EXPORTABLE` and graphs whose output differs from torch's by
    more than ``tolerance`` at an image size other than the one traced.
    """
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise OnnxError(f"-o {output}: the ONNX file must end in .onnx")
    if weights is not None and Path(weights).suffix.lower() == ".onnx":
        raise OnnxError("--weights must be the .safetensors file to export, not an ONNX file")
    from .registry import UnknownModelError, split_name

    try:
        arch, _ = split_name(model)
    except UnknownModelError as exc:
        raise OnnxError(str(exc)) from None
    if arch in NOT_EXPORTABLE:
        raise OnnxError(f"{arch} cannot be exported to ONNX: {NOT_EXPORTABLE[arch]}")
    onnx = _require("onnx")
    _require("onnxruntime")

    import torch

    from .api import load_model
    from .weightfile import atomic_write_bytes

    derainer = load_model(model, weights=weights, variant=variant, device="cpu", notify=lambda _m: None)
    net = derainer.net.to(memory_format=torch.contiguous_format)
    graph = _graph_module(net, derainer.traits.input_range)
    (th, tw), checks = sample_sizes(derainer.traits.size_multiple)
    data = _trace(graph, torch.rand(1, 3, th, tw), derainer.spec.name)
    proto = onnx.load_from_string(data)
    # Context-sharing nets tile exactly only in torch: the graph is their plain forward.
    tile_safe = derainer.traits.exact_tiles and not derainer.shares_context
    for key, value in _metadata(derainer, tile_safe).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"derain-cli {derainer.spec.name}: {derainer.spec.summary}"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    diff = max(check_graph(graph, _session(data, threads=None), size, derainer.spec.name, tolerance)
               for size in checks)
    atomic_write_bytes(output, data)
    return {"path": output, "architecture": derainer.spec.name, "max_diff": diff, "checked_sizes": checks}


def check_graph(graph, session, size: tuple[int, int], name: str, tolerance: float) -> float:
    """Largest difference between torch and onnxruntime on a seeded image of ``size``; one line if too large."""
    import torch

    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = graph(x).numpy()
    try:
        got = session.run(None, {"image": x.numpy()})[0]
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxError(f"the exported {name} graph fails at {size[0]}x{size[1]} in onnxruntime "
                        f"({first[:200]}); nothing was written") from None
    diff = float(abs(got - reference).max()) if got.shape == reference.shape else float("inf")
    if not diff <= tolerance:
        raise OnnxError(f"the exported {name} graph differs from torch by {diff:.2g} at {size[0]}x{size[1]} "
                        f"(more than {tolerance:g}); nothing was written")
    return diff


def _trace(graph, x, name: str) -> bytes:
    """ONNX bytes of ``graph`` traced at ``x``'s size with dynamic batch, height and width."""
    import torch

    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about shape arithmetic; the check below decides
            torch.onnx.export(graph, (x,), buffer, dynamo=False, opset_version=OPSET, input_names=["image"],
                              output_names=["derained"], dynamic_axes={"image": axes, "derained": axes})
    except Exception as exc:  # the exporter's own message, first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxError(f"{name} cannot be exported to ONNX: {first[:300]}") from None
    return buffer.getvalue()


def _session(model: bytes | str, threads: int | None, providers: list[str] | None = None):
    """An onnxruntime session on the CPU (or the given providers), quiet, with ``threads`` threads."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxError(f"onnxruntime cannot load this file: {first[:300]}") from None


class OnnxNet:
    """An onnxruntime session called like a torch net: ``B x 3 x H x W`` tensor in, tensor out."""

    def __init__(self, session, path: str | os.PathLike | None = None):
        self.session, self.path = session, path

    def parameters(self):
        """The graph's weights as tensors (read with ``onnx``, for parameter counts), else none."""
        import torch

        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            return iter(())
        graph = onnx.load(str(self.path)).graph if self.path else None
        return iter([torch.from_numpy(numpy_helper.to_array(t).copy()) for t in (graph.initializer if graph else [])])

    def __call__(self, x):
        import torch

        y = self.session.run(None, {"image": x.detach().float().contiguous().cpu().numpy()})[0]
        return torch.from_numpy(y).to(x.device)


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (needs onnxruntime, not onnx)."""
    return dict(_session(str(path), threads=1).get_modelmeta().custom_metadata_map)


def load_onnx(path: str | os.PathLike, name: str | None = None, *, device: str = "auto", threads: int | None = None,
              half: bool = False, task: str = "derain", notify=None, ensemble: bool | int = False):
    """A :class:`~derain_cli.api.Derainer` that runs an exported ONNX file with onnxruntime.

    Everything else (padding, tiling, flips, file handling) is the torch path's; tile-unsafe
    and context-sharing architectures are tiled as unsafe (the graph computes each tile alone).
    """
    import torch

    from . import devices
    from .api import Derainer
    from .devices import say
    from .registry import UnknownModelError, get_spec, split_name

    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"--weights {path}: no such file")
    if half:
        raise OnnxError("--half does not apply to ONNX weights (the graph runs in float32)")
    if task != "derain":
        raise OnnxError(f"{path.name} holds a derain network only; {task} needs the .safetensors weights")
    if str(device).lower() not in ("auto", "cpu"):
        raise OnnxError(f"ONNX weights run on the CPU here (onnxruntime's CPU provider); --device {device} is not "
                        "supported with them")
    devices.set_threads(threads)
    session = _session(str(path), threads=threads or torch.get_num_threads())
    meta = dict(session.get_modelmeta().custom_metadata_map)
    arch = meta.get("architecture")
    if not arch:
        raise OnnxError(f"{path.name}: no 'architecture' in its metadata; export it with `derain export --onnx`")
    try:
        spec = get_spec(arch)
        if name is not None and split_name(name)[0] != arch:
            raise OnnxError(f"{path.name} holds a {arch} network, not {split_name(name)[0]}")
    except UnknownModelError as exc:
        raise OnnxError(f"{path.name}: {exc}") from None
    try:
        config = json.loads(meta.get("config", "{}"))
        traits = _traits(meta, spec.traits(config))
    except ValueError as exc:
        raise OnnxError(f"{path.name}: unreadable metadata ({exc})") from None
    info = {**meta, "weights_path": str(path), "weights_source": "onnx file"}
    return Derainer(spec, config, OnnxNet(session, path), torch.device("cpu"), variant=meta.get("variant", "default"),
                    meta=info, notify=notify or say, ensemble=ensemble, traits=traits)


def _traits(meta: dict[str, str], traits):
    """The traits an exported graph runs with: its metadata's, in [0, 1] (the graph maps the range itself)."""
    from .registry import Tiling

    tiling = Tiling.MARGIN if meta.get("tile_safe", "true") == "true" else Tiling.APPROXIMATE
    return dataclasses.replace(
        traits, input_range=(0.0, 1.0), tiling=tiling,
        size_multiple=int(meta.get("size_multiple", traits.size_multiple)),
        min_size=int(meta.get("min_size", traits.min_size)),
        tile_margin=int(meta.get("tile_margin", traits.tile_margin)),
        min_tile=int(meta.get("min_tile", traits.min_tile)))
