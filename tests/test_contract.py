"""One contract every registered model keeps, checked for each (in the way timm's test_models.py is).

For each model, from its tiny config (``tiny_configs.TINY``):

* it builds, and ``derain run``'s inference path (``Derainer.process_tensor``) returns
  odd, tiny (down to its traits' ``min_size``) and non-square images at their size with
  finite values, for every task; a smaller image is one clear error;
* its traits are honest: sizes are a multiple of ``size_multiple`` where the net needs it,
  and ``Tiling.CONTEXT`` is declared exactly when the derain net computes a tile context;
* its weights survive a save/load round trip (``save_weights(half=False)``) with an identical forward;
* training through its recipe moves every trainable parameter. The contract chosen:
  after three steps of *each phase* the recipe has (jrgr: stage 1, then stage 2; the others
  one phase), every parameter of every network in ``recipe.nets`` that requires a gradient
  has changed, or else autograd reached it (``.grad`` is set) and the loss is flat in it:
  dcdgan's hinge loss gives its discriminators' last bias an exactly zero gradient while
  every output is inside the margins. "Changed" comes first because GAN recipes run several
  optimizers in one step, each clearing its gradients before its own backward; three steps
  because the refiners' zero-initialised residual and tail convolutions (two in a row) give
  the layers before them a zero gradient until both have moved. A parameter with no
  ``.grad`` that never moved is one the losses do not reach, or no optimizer owns;
* under a 2-process gloo torchrun, where each rank trains on its own shard, both ranks end
  with identical weights and buffers in every network of the recipe (one launch trains each
  model in turn): the gradients are averaged over the ranks before every optimizer step.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_rainy_pair
from derain_cli.api import Derainer
from derain_cli.errors import DerainError
from derain_cli.registry import MODEL_NAMES, Tiling, all_specs, get_spec
from derain_cli.weightfile import load_weights, save_weights
from tiny_configs import TINY, tiny_config

TORCHRUN = Path(sys.executable).with_name("torchrun")
#: Batch keys per training mode (derain_cli/train/recipe.py).
BATCH_KEYS = {"paired": ("rainy", "clean"), "semi": ("rainy", "clean", "real"), "unpaired": ("clean", "rainy")}


def test_every_registered_model_has_a_tiny_config():
    assert sorted(TINY) == sorted(MODEL_NAMES) == sorted(s.name for s in all_specs())


def _bundle(name: str, seed: int = 0):
    spec = get_spec(name)
    torch.manual_seed(seed)
    return spec, spec.build(tiny_config(name)).eval()


def _derainers(spec, bundle):
    """A Derainer for every net ``derain run`` / ``derain rainify`` can use."""
    nets = [spec.derain_net(bundle, v) for v in spec.variants]
    if spec.rainify_net is not None:
        nets.append(spec.rainify_net(bundle))
    return [Derainer(spec, tiny_config(spec.name), net.eval(), torch.device("cpu")) for net in nets]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_odd_tiny_and_non_square_inputs_keep_their_size(name):
    spec, bundle = _bundle(name)
    assert sum(p.numel() for p in bundle.parameters()) > 0
    side = spec.traits(tiny_config(name)).min_size
    gen = torch.Generator().manual_seed(1)
    for d in _derainers(spec, bundle):
        for h, w in ((13, 17), (37, 29), (side, side), (side, side + 6)):
            x = torch.rand(1, 3, h, w, generator=gen)
            y = d.process_tensor(x, clamp=False)
            assert y.shape == x.shape, (name, h, w)
            assert torch.isfinite(y).all(), (name, h, w)
        if side > 1:
            with pytest.raises(DerainError, match=f"at least {side} pixels"):
                d.process_tensor(torch.rand(1, 3, side - 1, side + 6))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("preset", ["tiny", "cpu", "paper"])
def test_traits_follow_the_config(name, preset):
    """The net takes sizes on its traits' grid as they are (no padding by ``Derainer``), in every
    preset, and ``Tiling.CONTEXT`` comes with a net that computes the context."""
    spec = get_spec(name)
    config = tiny_config(name) if preset == "tiny" else spec.config(preset)
    traits = spec.traits(config)
    assert traits.size_multiple >= 1 and traits.min_size >= 1 and traits.tasks[0] == "derain"
    torch.manual_seed(0)
    net = spec.derain_net(spec.build(config if preset == "tiny" else {**config, **_NARROW.get(name, {})}),
                          spec.variants[0]).eval()
    assert (traits.tiling is Tiling.CONTEXT) == callable(getattr(net, "tile_context", None))
    m, lo, hi = traits.size_multiple, *traits.input_range
    side = m * -(-max(traits.min_size, 2 * m) // m)
    with torch.inference_mode():
        assert net(torch.rand(1, 3, side, side + m) * (hi - lo) + lo).shape[-2:] == (side, side + m)


#: Narrower versions of the presets (same depths, so the same traits) for a fast forward pass.
_NARROW = {"dualstage": dict(channels=4, stage1_width=8, dim=16, heads=1, fullres_width=4),
           "semimsn": dict(channels=4, fullres_width=4), "dcdgan": dict(ngf=4, ndf=4),
           "jrgr": dict(unet_ngf=2, trans_ngf=2), "rainfog": dict(ext_width=4, width=4, gen_width=4, disc_width=4)}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_state_dict_round_trip_gives_an_identical_forward(name, tmp_path):
    spec, bundle = _bundle(name, seed=0)
    config = tiny_config(name)
    path = tmp_path / f"{name}.safetensors"
    save_weights(path, bundle.state_dict(), architecture=name, config=config, half=False)
    state, meta = load_weights(path, architecture=name)
    _, other = _bundle(name, seed=1)  # different initial weights, replaced by the loaded ones
    other.load_state_dict(state, strict=True)
    assert meta["config"] == config
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    for a, b in zip(_derainers(spec, bundle), _derainers(spec, other)):
        assert torch.equal(a.process_tensor(x), b.process_tensor(x)), name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_validation_scores_what_derain_run_writes(name):
    """engine.validate goes through the inference path of ``derain run`` (Derainer), not a copy of it."""
    from derain_cli.metrics import psnr_y
    from derain_cli.train.engine import validate

    spec, bundle = _bundle(name)
    pairs = [make_rainy_pair(29, 37, seed=s) for s in (3, 4)]
    rainy, clean = [p[0] for p in pairs], [p[1] for p in pairs]
    variant = spec.recipe.val_variant if spec.recipe.val_variant in spec.variants else spec.variants[0]
    d = Derainer(spec, tiny_config(name), spec.derain_net(bundle, variant).eval(), torch.device("cpu"))
    expected = np.mean([psnr_y(d.process(r, tile=0), c) for r, c in zip(rainy, clean)])
    assert validate(spec, bundle, variant, (rainy, clean), "cpu", config=tiny_config(name)) == pytest.approx(
        expected, abs=1e-9)


def _batch(mode: str, n: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    """A batch of the mode's keys: synthetic pairs, and other scenes as the "real" rain."""
    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    pairs = [make_rainy_pair(size, size, seed=i) for i in range(n)]
    images = {"rainy": stack([p[0] for p in pairs]), "clean": stack([p[1] for p in pairs]),
              "real": stack([make_rainy_pair(size, size, seed=50 + i)[0] for i in range(n)])}
    return {k: images[k] for k in BATCH_KEYS[mode]}


def _phase_starts(recipe) -> list[int]:
    """The first step of each training phase: jrgr's stage 2 starts at ``switch_step``."""
    switch = getattr(recipe, "switch_step", None)
    return [0] if switch in (None, 0, recipe.total_steps) else [0, switch]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_steps_move_every_trainable_parameter(name):
    spec = get_spec(name)
    mode = spec.modes[0]
    torch.manual_seed(0)
    recipe = spec.recipe(spec, tiny_config(name), mode, lr=1e-3)
    recipe.setup(10)
    before = {(net, k): p.detach().clone() for net, m in recipe.nets.items()
              for k, p in m.named_parameters() if p.requires_grad}
    batch = _batch(mode)
    for start in _phase_starts(recipe):
        for step in range(start, start + 3):
            terms = recipe.train_step(batch, step)
            assert all(np.isfinite(float(v)) for v in terms.values()), (name, step, terms)
            recipe.end_step()
    after = {(net, k): p for net, m in recipe.nets.items() for k, p in m.named_parameters()}
    still = sorted(f"{net}.{k}" for (net, k), p in before.items()
                   if torch.equal(p, after[net, k].detach()) and after[net, k].grad is None)
    assert not still, f"{name}: {len(still)} trainable parameters got no gradient and did not change: {still[:5]}"


_DDP_WORKER = """
import dataclasses, os, sys, traceback
from pathlib import Path
import torch
from safetensors.torch import save_file
from derain_cli.train import engine

root, models, rank = Path(sys.argv[1]), sys.argv[2].split(","), os.environ["RANK"]
TINY = {TINY}
FOLDERS = {"paired": ["rainy", "clean"], "semi": ["rainy", "clean", "real"], "unpaired": ["clean", "rainy"]}
get_spec = engine.get_spec
for name in models:  # a model that fails is recorded, and the next one still runs
    captured, initial = [], {}
    spec = get_spec(name)
    def recipe(*a, _spec=spec, **k):
        captured.append(_spec.recipe(*a, **k))
        initial.update({f"initial/{k}": v.detach().clone() for k, v in captured[-1].bundle.state_dict().items()})
        return captured[-1]
    training = dataclasses.replace(spec.training, recipe=recipe)
    engine.get_spec = lambda _, wrapped=dataclasses.replace(spec, training=training): wrapped
    mode = spec.modes[0]
    try:
        engine.train(engine.TrainOptions(
            model=name, mode=mode, folders=[str(root / f) for f in FOLDERS[mode]], out=root / f"run-{name}",
            overrides=TINY[name], patch=32, batch=2, steps=2, log_every=1, progress=False, threads=1, lr=1e-2))
    except Exception:
        (root / f"{name}-rank{rank}.error").write_text(traceback.format_exc())
        continue
    state = {f"{net}/{k}": v.detach().clone().contiguous()
             for net, m in captured[0].nets.items() for k, v in m.state_dict().items()}
    state.update(initial)
    save_file(state, str(root / f"{name}-rank{rank}.safetensors"))
"""


def _gloo_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available() and TORCHRUN.exists()


def _ddp_folders(root: Path) -> None:
    """rainy/ clean/ pairs and real/ rain of other scenes, four 40 x 48 images each."""
    import cv2

    for sub in ("rainy", "clean", "real"):
        (root / sub).mkdir()
    for i in range(4):
        rainy, clean = make_rainy_pair(40, 48, seed=i)
        cv2.imwrite(str(root / "rainy" / f"{i:03d}.png"), rainy[:, :, ::-1])
        cv2.imwrite(str(root / "clean" / f"{i:03d}.png"), clean[:, :, ::-1])
        cv2.imwrite(str(root / "real" / f"{i:03d}.png"), make_rainy_pair(40, 48, seed=30 + i)[0][:, :, ::-1])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """One 2-process gloo torchrun that trains every registered model in turn; the folder of its results."""
    root = tmp_path_factory.mktemp("ddp")
    _ddp_folders(root)
    script = root / "ddp_contract.py"
    script.write_text(textwrap.dedent(_DDP_WORKER).replace("{TINY}", repr(TINY)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone picks a free rendezvous port; own session so a hang can be killed whole
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(script), str(root),
                             ",".join(MODEL_NAMES)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("torchrun did not finish within 240 s")
    assert proc.returncode == 0, err[-3000:]
    return root


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with gloo (and torchrun) not available")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_two_process_ddp_ends_with_identical_weights(ddp_run, name):
    from safetensors.torch import load_file

    for rank in (0, 1):
        error = ddp_run / f"{name}-rank{rank}.error"
        assert not error.exists(), error.read_text()[-2000:]
    r0 = load_file(str(ddp_run / f"{name}-rank0.safetensors"))
    r1 = load_file(str(ddp_run / f"{name}-rank1.safetensors"))
    assert r0.keys() == r1.keys()
    bad = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not bad, f"ranks disagree on {len(bad)} of {len(r0)} tensors: {bad[:3]}"
    # the ranks saw different shards, so training must actually have moved the weights
    start = {k[len("initial/"):]: v for k, v in r0.items() if k.startswith("initial/")}
    trained = {k.split("/", 1)[1].removeprefix("module."): v for k, v in r0.items() if k.startswith("bundle/")}
    assert any(not torch.equal(v, trained[k]) for k, v in start.items() if v.is_floating_point())
