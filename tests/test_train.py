"""The training engine end to end on tiny images and tiny networks.

Covers: every training mode learns, an interrupted run resumes to the same weights,
exports load in ``derain run`` / ``derain export``, two-process DDP keeps the ranks in
sync, and bad input fails with one clear line before any training step.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import make_rainy_pair
from tiny_configs import DCDGAN_TINY, DUALSTAGE_TINY, SEMIMSN_TINY
from derain_cli import cli
from derain_cli.train import engine
from derain_cli.train.data import PatchSampler
from derain_cli.train.engine import TrainOptions
from clirun import derain  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _write_folder(folder: Path, n: int, which: str, seed0: int = 100, h: int = 48, w: int = 56) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rainy, clean = make_rainy_pair(h, w, seed=seed0 + i)
        img = rainy if which == "rainy" else clean
        cv2.imwrite(str(folder / f"{i:03d}.png"), img[:, :, ::-1])
    return folder


def _opts(tmp_path: Path, **kw) -> TrainOptions:
    base = dict(model="semimsn", mode="paired", folders=[str(tmp_path / "rainy"), str(tmp_path / "clean")],
                out=tmp_path / "run", overrides=SEMIMSN_TINY, patch=32, batch=4, steps=20, log_every=1,
                save_every=1000, progress=False, seed=0)
    base.update(kw)
    return TrainOptions(**base)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _first_vs_last(run: Path, key: str, k: int = 4) -> tuple[float, float]:
    values = [r[key] for r in _log(run) if key in r]
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from derain_cli.weightfile import load_weights

    state, _ = load_weights(path)
    return {k: v.float() for k, v in state.items()}


def _assert_same(a: dict, b: dict, atol: float = 2e-3) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].numel())
    assert worst <= atol, f"weights differ by up to {worst}"


def test_augmentation_keeps_rain_falling_down_and_crops_aligned():
    """Mirrors only: a vertical streak stays vertical (a quarter turn would lay it flat),
    all four mirror combinations occur, and a pair gets the same crop and mirror."""
    img = np.zeros((40, 40, 3), np.uint8)
    img[5, :30] = 128  # a dim horizontal mark to tell the mirrors apart ...
    img[:, 10] = 255  # ... crossed by one vertical streak
    sampler = PatchSampler({"rainy": [img], "clean": [img.copy()]}, [["rainy", "clean"]], patch=40, batch=64, seed=3)
    batch = sampler.next_batch()
    np.testing.assert_array_equal(batch["rainy"], batch["clean"])
    seen = set()
    for crop in batch["rainy"][:, 0]:
        col = int(np.flatnonzero(crop.min(0) == 1.0).item())  # the streak spans the full height
        row = int(np.flatnonzero(np.isclose(crop, 128 / 255).sum(1) >= 29).item())
        seen.add((col, row))
    assert seen == {(10, 5), (29, 5), (10, 34), (29, 34)}


def test_time_budget_shrinks_the_plan_and_grows_it_back_only_early():
    """A slow start (a pause, a busy core) must not cut a long run short for good."""
    budget = 10.0  # minutes
    # 100 steps in the first 60 s: the 9 minutes left fit ~870 more, not the 5000 asked
    assert 900 < engine.fit_to_budget(5000, 5000, 100, 0, 60.0, budget) < 1000
    # the machine got faster: early in the (shrunk) plan it grows back, never past what was asked
    grown = engine.fit_to_budget(1050, 5000, 300, 0, 120.0, budget)
    assert 1050 < grown <= 5000
    assert engine.fit_to_budget(1050, 1200, 300, 0, 120.0, budget) == 1200
    # past the first third it only shrinks, so the cosine is not pulled back up late
    assert engine.fit_to_budget(1050, 5000, 500, 0, 120.0, budget) == 1050
    assert engine.fit_to_budget(1050, 5000, 500, 0, 500.0, budget) < 1050
    # too little measured yet: the plan stays
    assert engine.fit_to_budget(5000, 5000, 20, 0, 60.0, budget) == 5000


# -- 1. every mode learns ------------------------------------------------------------------

@pytest.mark.parametrize("model,overrides", [("semimsn", SEMIMSN_TINY), ("dualstage", DUALSTAGE_TINY)])
def test_paired_training_lowers_the_loss(tiny_pairs, model, overrides):
    opts = _opts(tiny_pairs, model=model, overrides=overrides, steps=25, lr=2e-3)
    result = engine.train(opts)
    assert result.step == 25 and result.stopped == "done"
    first, last = _first_vs_last(opts.out, "loss" if "loss" in _log(opts.out)[0] else next(iter(result.losses)))
    assert last < 0.8 * first, (first, last)
    assert (opts.out / "model.safetensors").is_file() and (opts.out / "last" / "state.json").is_file()


def test_semi_training_lowers_the_loss(tiny_pairs):
    real = _write_folder(tiny_pairs / "real", 4, "rainy")
    opts = _opts(tiny_pairs, mode="semi", folders=[str(tiny_pairs / "rainy"), str(tiny_pairs / "clean"), str(real)],
                 steps=25, lr=2e-3)
    engine.train(opts)
    records = _log(opts.out)
    assert "match" in records[0], "semi mode must log the matching term"
    first, last = _first_vs_last(opts.out, "rec")
    assert last < 0.8 * first, (first, last)


def test_unpaired_training_lowers_the_generator_loss(tiny_pairs):
    opts = _opts(tiny_pairs, model="dcdgan", mode="unpaired", overrides=DCDGAN_TINY,
                 folders=[str(tiny_pairs / "clean"), str(tiny_pairs / "rainy")], steps=16, batch=2, lr=1e-3)
    engine.train(opts)
    records = _log(opts.out)
    assert len(records) == 16
    # The contrastive (NCE) term is the one a few steps must reduce; adversarial terms oscillate.
    key = next(k for k in records[0] if "nce" in k.lower())
    first, last = _first_vs_last(opts.out, key)
    assert last < first, (key, first, last)


# -- 2. resume is exact ------------------------------------------------------------------------

def _keyboard_interrupt():
    raise KeyboardInterrupt  # like Ctrl-C while the next batch is prepared: the step is lost


def _sigterm():
    import signal

    os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` on a background run: the step finishes


@pytest.mark.parametrize("stop, at_call", [(_keyboard_interrupt, 4), (_sigterm, 3)], ids=["ctrl-c", "sigterm"])
def test_resume_after_interrupt_matches_an_uninterrupted_run(tiny_pairs, monkeypatch, stop, at_call):
    full = _opts(tiny_pairs, out=tiny_pairs / "full", steps=6)
    engine.train(full)

    calls = {"n": 0}
    real_next = PatchSampler.next_batch

    def stop_at_call(self):
        calls["n"] += 1
        if calls["n"] == at_call:
            stop()
        return real_next(self)

    monkeypatch.setattr(PatchSampler, "next_batch", stop_at_call)
    part = _opts(tiny_pairs, out=tiny_pairs / "part", steps=6)
    first = engine.train(part)
    assert first.stopped == "interrupted" and first.step == 3 and calls["n"] == at_call
    monkeypatch.setattr(PatchSampler, "next_batch", real_next)

    second = engine.train(_opts(tiny_pairs, out=tiny_pairs / "part", steps=6, resume=tiny_pairs / "part"))
    assert second.step == 6 and second.stopped == "done"
    _assert_same(_weights(part.out / "model.safetensors"), _weights(full.out / "model.safetensors"))
    assert _log(part.out)[-1]["step"] == 6


# -- 3. exports work in the inference CLI ---------------------------------------------------------

def test_export_loads_in_derain_run_and_derain_export(tiny_pairs, monkeypatch, capsys):
    opts = _opts(tiny_pairs, steps=3, export=tiny_pairs / "exported" / "semimsn.safetensors")
    engine.train(opts)
    assert opts.export.is_file()

    code, out, err = derain(monkeypatch, capsys, "export", opts.out, "-o", tiny_pairs / "again.safetensors")
    assert code == 0, err
    _assert_same(_weights(tiny_pairs / "again.safetensors"), _weights(opts.export), atol=1e-6)

    photo = tiny_pairs / "rainy" / "000.png"
    for weights in (opts.export, tiny_pairs / "again.safetensors"):
        target = tiny_pairs / f"out_{weights.stem}.png"
        code, out, err = derain(monkeypatch, capsys, "run", photo, "--weights", weights, "--model", "semimsn",
                                "-o", target)
        assert code == 0, err
        result = cv2.imread(str(target))
        assert result is not None and result.shape == cv2.imread(str(photo)).shape


@pytest.mark.parametrize("model,overrides", [("semimsn", SEMIMSN_TINY), ("dualstage", DUALSTAGE_TINY)])
@pytest.mark.parametrize("before,after", [(0, 2), (1, 3)])
def test_a_grown_full_resolution_refiner_starts_as_the_identity(model, overrides, before, after):
    """Growing a refiner, or deepening a trained one, starts from the old output exactly."""
    spec = engine.get_spec(model)
    torch.manual_seed(0)
    old = spec.build(spec.config(None, **{**overrides, "fullres_blocks": before})).eval()
    for p in old.parameters():  # as if trained: no tensor is still at its zero initialisation
        torch.nn.init.normal_(p, std=0.05)
    grown = spec.build(spec.config(None, **{**overrides, "fullres_blocks": after})).eval()
    missing, unexpected = grown.load_state_dict(old.state_dict(), strict=False)
    assert missing and all(k.startswith("fullres.") for k in missing) and not unexpected
    x = torch.rand(1, 3, 37, 45)
    with torch.inference_mode():
        assert torch.equal(grown(x), old(x))


@pytest.mark.parametrize("key,blocks", [("depth", ["stage2.blocks.2", "stage2.blocks.3"]),
                                        ("stage1_blocks", ["stage1.blocks.1", "stage1.blocks.2"])])
def test_blocks_added_to_a_trained_dualstage_start_as_the_identity(key, blocks):
    """Deepening dualstage (--set depth=N or stage1_blocks=N with --init) first gives the old output: the
    new blocks' residual branches start at zero, while a fresh model's blocks are random (they change it)."""
    from derain_cli.models.common import start_grown_as_identity

    spec = engine.get_spec("dualstage")
    torch.manual_seed(0)
    old = spec.build(spec.config(None, **DUALSTAGE_TINY)).eval()
    deeper = {**DUALSTAGE_TINY, key: DUALSTAGE_TINY[key] + 2}
    x = torch.rand(1, 3, 40, 48)
    for hook in (False, True):
        grown = spec.build(spec.config(None, **deeper)).eval()
        missing, unexpected = grown.load_state_dict(old.state_dict(), strict=False)
        assert not unexpected and missing and all(k.startswith(tuple(f"{b}." for b in blocks)) for k in missing)
        started = start_grown_as_identity(grown, missing) if hook else []
        with torch.inference_mode():
            assert torch.equal(grown(x), old(x)) == hook
    assert started == blocks


def test_init_starts_new_blocks_as_the_identity(tiny_pairs):
    """Through the trainer: the exported new blocks are one small step away from zero, not random."""
    small, deep = tiny_pairs / "ds_small.safetensors", tiny_pairs / "ds_deep.safetensors"
    engine.train(_opts(tiny_pairs, model="dualstage", overrides=DUALSTAGE_TINY, steps=1, out=tiny_pairs / "d1",
                       export=small))
    engine.train(_opts(tiny_pairs, model="dualstage", overrides={"depth": 4}, steps=1, out=tiny_pairs / "d2",
                       export=deep, init=small, lr=1e-4))
    tensors = _weights(deep)
    assert tensors["stage2.blocks.3.attn.proj.weight"].abs().max() < 1e-3
    assert tensors["stage2.blocks.1.attn.proj.weight"].abs().max() > 1e-2


def test_init_grows_a_model_and_refuses_a_file_that_does_not_fit(tiny_pairs):
    from derain_cli.errors import DerainError
    from derain_cli.weightfile import read_metadata

    small, grown = tiny_pairs / "small.safetensors", tiny_pairs / "grown.safetensors"
    engine.train(_opts(tiny_pairs, steps=2, out=tiny_pairs / "g1", export=small,
                       overrides={**SEMIMSN_TINY, "fullres_blocks": 0}))
    engine.train(_opts(tiny_pairs, steps=3, out=tiny_pairs / "g2", export=grown, init=small,
                       overrides={"fullres_blocks": 1, "fullres_width": 4}))
    meta = read_metadata(grown)
    assert meta["config"]["fullres_blocks"] == 1
    tensors = _weights(grown)
    assert any(k.startswith("fullres.") for k in tensors)
    assert tensors["fullres.tail.weight"].abs().sum() > 0  # the refiner trained
    with pytest.raises(DerainError, match="does not fit this config"):
        engine.train(_opts(tiny_pairs, steps=1, out=tiny_pairs / "g3", init=grown, overrides={"fullres_blocks": 0}))


# -- 4. DDP keeps ranks identical ------------------------------------------------------------------

_DDP_SCRIPT = """
import dataclasses, os, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
from derain_cli.train import engine

captured = []
spec = engine.get_spec("semimsn")
def recipe(*a, **k):
    captured.append(spec.recipe(*a, **k))
    return captured[-1]
wrapped = dataclasses.replace(spec, training=dataclasses.replace(spec.training, recipe=recipe))
engine.get_spec = lambda name: wrapped

root = Path(sys.argv[1])
engine.train(engine.TrainOptions(
    model="semimsn", mode="paired", folders=[str(root / "rainy"), str(root / "clean")], out=root / "run",
    overrides={OVERRIDES}, patch=32, batch=2, steps=4, log_every=1, progress=False, threads=1, lr=1e-2))
state = {k: v.detach().clone() for k, v in captured[0].bundle.state_dict().items()}
save_file(state, str(root / f"rank{os.environ['RANK']}.safetensors"))
"""


def _gloo_available() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_gloo_available() and TORCHRUN.exists()


@pytest.mark.skipif(not _gloo_available(), reason="torch.distributed with gloo (and torchrun) not available")
def test_two_process_ddp_ends_with_identical_weights(tiny_pairs):
    from safetensors.torch import load_file

    script = tiny_pairs / "ddp_train.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT).replace("{OVERRIDES}", repr(SEMIMSN_TINY)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone picks a free rendezvous port; own session so a hang can be killed whole
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(script), str(tiny_pairs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        pytest.fail("torchrun did not finish within 120 s")
    assert proc.returncode == 0, err[-3000:]
    r0, r1 = load_file(str(tiny_pairs / "rank0.safetensors")), load_file(str(tiny_pairs / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
    # the ranks saw different shards, so training must actually have moved the weights
    init = engine.get_spec("semimsn")
    torch.manual_seed(0)
    fresh = init.build(init.config(None, **SEMIMSN_TINY)).state_dict()
    assert any(not torch.equal(fresh[k], r0[k]) for k in r0 if fresh[k].is_floating_point())
    assert len(_log(tiny_pairs / "run")) == 4  # only rank 0 writes the log
    # the checkpoint keeps each rank's own sampler position, so a resumed DDP run is exact
    saved = json.loads((tiny_pairs / "run" / "last" / "state.json").read_text())["extra"]["sampler"]
    assert isinstance(saved, list) and len(saved) == 2 and saved[0] != saved[1]


# -- 5. bad input: one clear line before training ---------------------------------------------

def _assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("derain: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _train_cli(monkeypatch, capsys, tmp_path, *args):
    return derain(monkeypatch, capsys, "train", "--model", "semimsn", "--set", "channels=4", "--set", "units=1",
                  "--set", "cclb_depth=1", "--patch", "32", "--batch", "2", "--steps", "2", "-q",
                  "--out", tmp_path / "cli_run", *args)


def test_empty_folder_is_a_clear_error(tiny_pairs, monkeypatch, capsys):
    empty = tiny_pairs / "empty"
    empty.mkdir()
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--paired", tiny_pairs / "rainy", empty)
    _assert_clean_error(code, err, "no images", "empty")
    assert not (tiny_pairs / "cli_run" / "log.jsonl").exists()


def test_non_image_file_is_a_clear_error(tiny_pairs, monkeypatch, capsys):
    (tiny_pairs / "clean" / "003.png").write_bytes(b"this is not a png")
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--paired", tiny_pairs / "rainy", tiny_pairs / "clean")
    _assert_clean_error(code, err, "003.png")
    assert not (tiny_pairs / "cli_run" / "log.jsonl").exists()


def test_image_smaller_than_patch_is_a_clear_error(tiny_pairs, monkeypatch, capsys):
    code, _, err = derain(monkeypatch, capsys, "train", "--model", "semimsn", "--set", "channels=4", "--patch", "64",
                          "--steps", "2", "-q", "--out", tiny_pairs / "cli_run",
                          "--paired", tiny_pairs / "rainy", tiny_pairs / "clean")
    _assert_clean_error(code, err, "smaller than the training patch", "--patch")


def test_mode_the_model_does_not_support_is_a_clear_error(tiny_pairs, monkeypatch, capsys):
    code, _, err = derain(monkeypatch, capsys, "train", "--model", "dualstage", "--patch", "32", "--steps", "2", "-q",
                          "--out", tiny_pairs / "cli_run", "--unpaired", tiny_pairs / "clean", tiny_pairs / "rainy")
    _assert_clean_error(code, err, "unpaired", "paired")


def test_unwritable_out_folder_is_a_clear_error(tiny_pairs, monkeypatch, capsys):
    # a regular file where the run folder's parent should be: unwritable even for root
    blocker = tiny_pairs / "blocker"
    blocker.write_text("a file, not a folder")
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--out", blocker / "run",
                              "--paired", tiny_pairs / "rainy", tiny_pairs / "clean")
    _assert_clean_error(code, err, "cannot write", "blocker")
    assert blocker.read_text() == "a file, not a folder"


def test_missing_pair_partner_lists_the_stems(tiny_pairs, monkeypatch, capsys):
    (tiny_pairs / "clean" / "002.png").unlink()
    shutil.copy(tiny_pairs / "clean" / "000.png", tiny_pairs / "clean" / "extra.png")
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--paired", tiny_pairs / "rainy", tiny_pairs / "clean")
    _assert_clean_error(code, err, "002", "extra")


def test_train_without_model_picks_the_default_for_the_data(tiny_pairs, monkeypatch, capsys):
    # the README's promise: `derain train --unpaired clean/ rainy/`
    out = tiny_pairs / "default_run"
    sets = [x for k, v in DCDGAN_TINY.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    code, _, err = derain(monkeypatch, capsys, "train", "--unpaired", tiny_pairs / "clean", tiny_pairs / "rainy",
                          *sets, "--patch", "32", "--batch", "2", "--steps", "2", "-q", "--out", out)
    assert code == 0, err
    assert "training dcdgan, the default for --unpaired" in err
    state = json.loads((out / "last" / "state.json").read_text())["extra"]
    assert state["model"] == "dcdgan" and state["mode"] == "unpaired" and state["step"] == 2


# -- 6. rain rendered per crop, several validation sets ------------------------------------------

def test_rendered_rain_alone_trains_and_resumes_to_the_same_weights(tiny_pairs):
    render = {"folders": [str(tiny_pairs / "clean")], "ratio": 1.0, "mix": {"downpour": 1.0, "fine": 1.0}}
    full = engine.train(_opts(tiny_pairs, folders=[], render=render, out=tiny_pairs / "full", steps=6,
                              val_sets=[str(tiny_pairs)]))
    assert full.stopped == "done" and full.best_psnr is not None
    first = engine.train(_opts(tiny_pairs, folders=[], render=render, out=tiny_pairs / "part", steps=3))
    assert first.step == 3
    second = engine.train(_opts(tiny_pairs, folders=[], render=render, out=tiny_pairs / "part", steps=6,
                                resume=tiny_pairs / "part"))
    assert second.step == 6
    _assert_same(_weights(tiny_pairs / "full" / "model.safetensors"),
                 _weights(tiny_pairs / "part" / "model.safetensors"))  # fp16 files
    meta_data = json.loads((tiny_pairs / "full" / "last" / "state.json").read_text())["extra"]["data"]
    assert meta_data["rendered"]["count"] == 6 and meta_data["rendered"]["ratio"] == 1.0


def test_two_validation_sets_are_scored_apart_and_averaged(tiny_pairs):
    other = tiny_pairs / "other"
    _write_folder(other / "rainy", 3, "rainy", seed0=300)
    _write_folder(other / "clean", 3, "clean", seed0=300)
    engine.train(_opts(tiny_pairs, steps=2, val_every=2, val_sets=[str(tiny_pairs), str(other)]))
    rec = [r for r in _log(tiny_pairs / "run") if "val_psnr_y" in r][-1]
    names = (f"val_{tiny_pairs.name}", "val_other")
    assert all(n in rec for n in names)
    assert abs(rec["val_psnr_y"] - (rec[names[0]] + rec[names[1]]) / 2) < 1e-3


@pytest.mark.parametrize("args, needles", [
    (("--unpaired", "CLEAN", "RAINY", "--render", "CLEAN"), ("--render", "--unpaired")),
    (("--render", "CLEAN", "--render-mix", "hail=1"), ("--render-mix", "hail")),
    (("--render", "CLEAN", "--render-mix", "photoreal=1"), ("streak bank",)),
    (("--render", "CLEAN", "--render-extras", "hail=1"), ("--render-extras", "hail", "night")),
    (("--render", "CLEAN", "--render-extras", "night=2"), ("--render-extras", "between 0 and 1")),
    (("--paired", "RAINY", "CLEAN", "--render", "CLEAN", "--render-ratio", "0"), ("--render-ratio",)),
])
def test_render_options_fail_with_one_clear_line(tiny_pairs, monkeypatch, capsys, args, needles):
    paths = {"CLEAN": tiny_pairs / "clean", "RAINY": tiny_pairs / "rainy"}
    args = [str(paths.get(a, a)) for a in args]
    model = ["--model", "dcdgan"] if "--unpaired" in args else []
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, *args) if not model else derain(
        monkeypatch, capsys, "train", *model, "--patch", "32", "--steps", "1", "-q", "--out", tiny_pairs / "cli_run",
        *args)
    _assert_clean_error(code, err, *needles)
    assert not (tiny_pairs / "cli_run" / "log.jsonl").exists()


# -- 7. --resume RUN_DIR alone ---------------------------------------------------------------

def test_resume_alone_takes_everything_from_the_run_folder(tiny_pairs, monkeypatch, capsys):
    run = tiny_pairs / "cli_run"
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--paired", tiny_pairs / "rainy", tiny_pairs / "clean",
                              "--render", tiny_pairs / "clean", "--render-ratio", "0.5", "--ema", "0.9")
    assert code == 0, err
    code, out, err = derain(monkeypatch, capsys, "train", "--resume", run, "--steps", "4", "-q")
    assert code == 0, err
    extra = json.loads((run / "last" / "state.json").read_text())["extra"]
    assert extra["step"] == 4 and extra["options"]["ema"] == 0.9 and extra["options"]["patch"] == 32
    assert extra["options"]["render"]["ratio"] == 0.5 and extra["mode"] == "paired"
    assert "done at step 4" in out
    from derain_cli.rainrender import GENERAL_EXTRAS, GENERAL_MIX

    # the default mix and extras are pinned in the run folder: newer defaults must not change a resumed run
    assert extra["options"]["render"]["mix"] == {k: v for k, v in GENERAL_MIX.items() if k != "photoreal"}
    assert extra["options"]["render"]["extras"] == GENERAL_EXTRAS


def test_render_extras_change_the_extras_and_are_kept_on_resume(tiny_pairs, monkeypatch, capsys):
    run = tiny_pairs / "cli_run"
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--render", tiny_pairs / "clean",
                              "--render-extras", "night=1,jpeg=0")
    assert code == 0, err
    from derain_cli.rainrender import GENERAL_EXTRAS

    extras = json.loads((run / "last" / "state.json").read_text())["extra"]["options"]["render"]["extras"]
    assert extras == {**GENERAL_EXTRAS, "night": 1.0, "jpeg": 0.0}
    code, _, err = derain(monkeypatch, capsys, "train", "--resume", run, "--steps", "4", "-q")
    assert code == 0, err
    code, _, err = derain(monkeypatch, capsys, "train", "--resume", run, "--steps", "5", "-q",
                          "--render-extras", "night=1,jpeg=0")  # the same again
    assert code == 0, err
    code, _, err = derain(monkeypatch, capsys, "train", "--resume", run, "--steps", "6", "-q",
                          "--render-extras", "night=0")
    assert code != 0 and "--render-extras" in err and "contradicts" in err and len(err.strip().splitlines()) == 1, err
    # a run pinned before an extra existed (here: coarse) resumes with the same --render-extras
    state = json.loads((run / "last" / "state.json").read_text())
    del state["extra"]["options"]["render"]["extras"]["coarse"]
    (run / "last" / "state.json").write_text(json.dumps(state))
    code, _, err = derain(monkeypatch, capsys, "train", "--resume", run, "--steps", "6", "-q",
                          "--render-extras", "night=1,jpeg=0")
    assert code == 0, err


def test_resume_keeps_the_plan_a_time_budget_shortened(tiny_pairs, monkeypatch, capsys):
    """A run asked for 5 steps whose budget cut the plan to 3 goes on to 3, at the shortened schedule's rate."""
    run = tiny_pairs / "cli_run"
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--paired", tiny_pairs / "rainy", tiny_pairs / "clean")
    assert code == 0, err
    state = run / "last" / "state.json"
    record = json.loads(state.read_text())
    record["extra"]["options"]["steps"], record["extra"]["total_steps"] = 5, 3
    state.write_text(json.dumps(record))
    code, out, err = derain(monkeypatch, capsys, "train", "--resume", run, "-q")
    assert code == 0, err
    assert "done at step 3" in out
    assert json.loads(state.read_text())["extra"]["total_steps"] == 3


@pytest.mark.parametrize("extra_args, needles", [
    (("--patch", "48"), ("--patch", "contradicts", "32")),
    (("--set", "channels=8"), ("--set", "cannot change a run being resumed")),
    (("--preset", "cpu"), ("--preset", "cannot change")),
    (("--model", "dualstage"), ("--model", "contradicts")),
    (("--paired", "CLEAN", "RAINY"), ("--paired", "contradicts")),
])
def test_resume_refuses_options_that_contradict_the_run(tiny_pairs, monkeypatch, capsys, extra_args, needles):
    run = tiny_pairs / "cli_run"
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--paired", tiny_pairs / "rainy", tiny_pairs / "clean")
    assert code == 0, err
    paths = {"CLEAN": tiny_pairs / "clean", "RAINY": tiny_pairs / "rainy"}
    args = [str(paths.get(a, a)) for a in extra_args]
    code, _, err = derain(monkeypatch, capsys, "train", "--resume", run, *args, "-q")
    _assert_clean_error(code, err, *needles)
    assert json.loads((run / "last" / "state.json").read_text())["extra"]["step"] == 2


def test_resume_alone_from_a_folder_without_options_says_what_to_do(tiny_pairs, monkeypatch, capsys):
    run = tiny_pairs / "cli_run"
    code, _, err = _train_cli(monkeypatch, capsys, tiny_pairs, "--paired", tiny_pairs / "rainy", tiny_pairs / "clean")
    state = run / "last" / "state.json"
    record = json.loads(state.read_text())
    del record["extra"]["options"]
    state.write_text(json.dumps(record))
    code, _, err = derain(monkeypatch, capsys, "train", "--resume", run)
    _assert_clean_error(code, err, "did not record its options", "data options again")
    code, _, err = derain(monkeypatch, capsys, "train", "--resume", tiny_pairs / "nothing_here")
    _assert_clean_error(code, err, "nothing to resume")
