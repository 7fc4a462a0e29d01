"""`derain eval`, `derain bench`, benchmark datasets and the published-figures file."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import make_rainy_pair
from derain_cli import datasets, evaluate, metrics
from derain_cli.errors import DerainError
from derain_cli.registry import MODEL_NAMES

TINY_MODEL = "dcdgan"
TINY_CONFIG = {"ngf": 4, "n_blocks": 1}


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``derain ARGS`` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from derain_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["derain", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("derain: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A registered architecture at a tiny size with random weights, as an exported weights file."""
    import torch

    from derain_cli.registry import get_spec
    from derain_cli.weightfile import save_weights

    torch.manual_seed(0)
    spec = get_spec(TINY_MODEL)
    config = spec.config(**TINY_CONFIG)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(path, spec.build(config).state_dict(), architecture=TINY_MODEL, config=config)
    return path


# -- derain eval OUT GT ----------------------------------------------------------------
def test_eval_scores_folders_and_writes_reports(tiny_pairs, monkeypatch, capsys, tmp_path):
    report = tmp_path / "scores.csv"
    code, out, err = run_cli(monkeypatch, capsys, "eval", tiny_pairs / "rainy", tiny_pairs / "clean",
                             "--report", report)
    assert code == 0, err
    expected = metrics.mean_scores([
        metrics.score(*make_rainy_pair(seed=i)) for i in range(6)
    ])
    assert f"PSNR-Y {expected.psnr_y:.2f} dB" in out
    assert f"SSIM-Y {expected.ssim_y:.4f}" in out
    rows = list(csv.DictReader(report.open()))
    assert [r["image"] for r in rows] == ["000", "001", "002", "003", "004", "005", "mean"]
    assert float(rows[-1]["psnr_y"]) == pytest.approx(expected.psnr_y, abs=1e-4)
    assert float(rows[0]["psnr_y"]) == pytest.approx(metrics.psnr_y(*make_rainy_pair(seed=0)), abs=1e-4)

    jreport = tmp_path / "scores.json"
    code, _, err = run_cli(monkeypatch, capsys, "eval", tiny_pairs / "rainy", tiny_pairs / "clean", "--report", jreport)
    assert code == 0, err
    data = json.loads(jreport.read_text())
    assert len(data["images"]) == 6
    assert data["mean"]["ssim_y"] == pytest.approx(expected.ssim_y)


def test_eval_pairs_derain_batch_output_names(tiny_pairs, tmp_path):
    outs = tmp_path / "outs"
    outs.mkdir()
    for i in range(6):  # named as `derain batch rainy/ -o outs/` names them
        (outs / f"{i:03d}_derained.png").write_bytes((tiny_pairs / "rainy" / f"{i:03d}.png").read_bytes())
    got = evaluate.score_folders(outs, tiny_pairs / "clean")
    assert [r.stem for r in got.rows] == [f"{i:03d}" for i in range(6)]
    assert got.mean == evaluate.score_folders(tiny_pairs / "rainy", tiny_pairs / "clean").mean


def test_eval_identical_folders_is_infinite_psnr_and_json_stays_valid(tiny_pairs, monkeypatch, capsys, tmp_path):
    report = tmp_path / "same.json"
    code, out, err = run_cli(monkeypatch, capsys, "eval", tiny_pairs / "clean", tiny_pairs / "clean", "--report", report)
    assert code == 0, err
    assert "PSNR-Y inf dB  SSIM-Y 1.0000" in out
    assert json.loads(report.read_text())["mean"]["psnr_y"] is None  # strict JSON has no Infinity


def test_eval_16bit_output_scores_like_its_8bit_version(tiny_pairs, tmp_path):
    out16 = tmp_path / "out16"
    out16.mkdir()
    for i in range(6):
        rgb = cv2.imread(str(tiny_pairs / "rainy" / f"{i:03d}.png"), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(out16 / f"{i:03d}.png"), rgb.astype(np.uint16) * 257)
    a = evaluate.score_folders(out16, tiny_pairs / "clean").mean
    b = evaluate.score_folders(tiny_pairs / "rainy", tiny_pairs / "clean").mean
    assert a == b


def test_eval_errors_are_one_clear_line(tiny_pairs, monkeypatch, capsys, tmp_path):
    rainy, clean = tiny_pairs / "rainy", tiny_pairs / "clean"
    (clean / "005.png").unlink()
    line = _one_line_error(*run_cli(monkeypatch, capsys, "eval", rainy, clean)[::2])
    assert "without a reference partner: 005" in line

    cv2.imwrite(str(clean / "005.png"), np.zeros((20, 30, 3), np.uint8))
    line = _one_line_error(*run_cli(monkeypatch, capsys, "eval", rainy, clean)[::2])
    assert "size mismatch for '005'" in line

    line = _one_line_error(*run_cli(monkeypatch, capsys, "eval", rainy, tmp_path / "nope")[::2])
    assert "not a folder" in line
    line = _one_line_error(*run_cli(monkeypatch, capsys, "eval", rainy, clean, "--report", tmp_path / "r.txt")[::2])
    assert ".csv or .json" in line
    (rainy / "003.png").write_bytes(b"not a png")
    (clean / "005.png").unlink()
    cv2.imwrite(str(clean / "005.png"), make_rainy_pair(seed=5)[1][:, :, ::-1])
    line = _one_line_error(*run_cli(monkeypatch, capsys, "eval", rainy, clean)[::2])
    assert "003.png: not a readable image" in line


def test_eval_with_a_model_derains_first(tiny_pairs, tiny_weights, monkeypatch, capsys, tmp_path):
    save = tmp_path / "derained"
    code, out, err = run_cli(monkeypatch, capsys, "eval", "--model", TINY_MODEL, "--weights", tiny_weights,
                             "--device", "cpu", "--threads", "1", "--save-dir", save,
                             tiny_pairs / "rainy", tiny_pairs / "clean")
    assert code == 0, err
    assert sorted(p.name for p in save.iterdir()) == [f"{i:03d}.png" for i in range(6)]
    # the printed figures are those of the saved outputs
    saved = evaluate.score_folders(save, tiny_pairs / "clean").mean
    assert f"PSNR-Y {saved.psnr_y:.2f} dB" in out
    assert saved != evaluate.score_folders(tiny_pairs / "rainy", tiny_pairs / "clean").mean


# -- derain bench ------------------------------------------------------------------------
def test_bench_tiny_model_on_folder_dataset(tiny_pairs, tiny_weights, monkeypatch, capsys, tmp_path):
    jpath, save = tmp_path / "bench.json", tmp_path / "outs"
    code, out, err = run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--model", TINY_MODEL, "--weights",
                             tiny_weights, "--device", "cpu", "--threads", "1", "--limit", "4",
                             "--json", jpath, "--save-dir", save)
    assert code == 0, err
    data = json.loads(jpath.read_text())
    (r,) = data["results"]
    assert r["model"] == TINY_MODEL and r["images"] == 4 and r["device"] == "cpu" and r["threads"] == 1
    assert r["seconds_per_image"] > 0 and r["megapixels_per_second"] > 0
    assert r["megapixels_per_second"] == pytest.approx(48 * 56 / 1e6 / r["seconds_per_image"], rel=1e-6)
    assert 50 < r["peak_memory_mb"] < 8000
    import torch
    from derain_cli.registry import get_spec

    spec = get_spec(TINY_MODEL)
    net = spec.derain_net(spec.build(spec.config(**TINY_CONFIG)), "default")
    assert r["parameters"] == sum(p.numel() for p in net.parameters())
    assert [x["stem"] for x in r["images_detail"]] == ["000", "001", "002", "003"]
    # quality figures are the mean of the per-image ones, which are those of the saved outputs
    saved = evaluate.score_folders(save / TINY_MODEL, evaluate_clean_subset(tiny_pairs, tmp_path, 4))
    assert r["psnr_y"] == pytest.approx(saved.mean.psnr_y, abs=1e-9)
    assert f"{r['psnr_y']:.2f}" in out and TINY_MODEL in out
    assert data["dataset"]["origin"] == "folder"
    # CPU timings depend on the vector unit (AVX2 vs AVX512/AMX): the file says which CPU made them
    assert data["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and data["cpu_model"]

    def variant_row(*options: str) -> tuple[dict, str]:
        """The same bench with more options: its JSON row and the printed table."""
        code, out, err = run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--model", TINY_MODEL, "--weights",
                                 tiny_weights, "--device", "cpu", "--threads", "1", "--limit", "4",
                                 "--json", jpath, *options)
        assert code == 0, err
        (row,) = json.loads(jpath.read_text())["results"]
        return row, out

    e, out = variant_row("--ensemble")
    assert e["model"] == f"{TINY_MODEL}+ensemble" and f"{TINY_MODEL}+ensemble" in out
    assert e["psnr_y"] != pytest.approx(r["psnr_y"], abs=1e-6)  # a different measurement, labelled as such
    f2, out = variant_row("--flips", "2")
    assert f2["model"] == f"{TINY_MODEL}+flips2" and f"{TINY_MODEL}+flips2" in out
    assert f2["psnr_y"] not in (pytest.approx(r["psnr_y"], abs=1e-6), pytest.approx(e["psnr_y"], abs=1e-6))
    from derain_cli import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    h, out = variant_row("--half")
    assert h["model"] == f"{TINY_MODEL}+bf16" and f"{TINY_MODEL}+bf16" in out
    assert h["psnr_y"] == pytest.approx(r["psnr_y"], abs=0.5)  # bf16 changes little


def evaluate_clean_subset(tiny_pairs: Path, tmp_path: Path, n: int) -> Path:
    sub = tmp_path / "clean_subset"
    sub.mkdir()
    for i in range(n):
        (sub / f"{i:03d}.png").write_bytes((tiny_pairs / "clean" / f"{i:03d}.png").read_bytes())
    return sub


def test_bench_prints_published_figures_for_a_registered_layout(tiny_pairs, tiny_weights, monkeypatch, capsys, tmp_path):
    # a folder laid out as DATA/rain100l/test is found through $DERAIN_DATA and gets Rain100L's context
    root = tmp_path / "data" / "rain100l" / "test"
    root.mkdir(parents=True)
    for sub in ("rainy", "clean"):
        (tiny_pairs / sub).rename(root / sub)
    monkeypatch.setenv("DERAIN_DATA", str(tmp_path / "data"))
    code, out, err = run_cli(monkeypatch, capsys, "bench", "rain100l", "--model", TINY_MODEL, "--weights",
                             tiny_weights, "--device", "cpu", "--threads", "1", "--limit", "2")
    assert code == 0, err
    assert "$DERAIN_DATA" in err
    assert "PReNet" in out and "37.48" in out and "0.979" in out and "26.90" in out


def test_bench_errors(tiny_pairs, tiny_weights, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DERAIN_DATA", raising=False)
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", "rain100h", "--model", TINY_MODEL)[::2])
    assert "not published" in line and "--data" in line
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", "rain100l-fog", "--model", TINY_MODEL)[::2])
    assert "derain synth --eval-set rain100l-fog" in line
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", "no-such-set")[::2])
    assert "unknown dataset" in line
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--model", "nope")[::2])
    assert "unknown model" in line
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--model", "all",
                                    "--weights", tiny_weights)[::2])
    assert "single --model" in line
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--limit", "0")[::2])
    assert "--limit" in line
    empty = tmp_path / "weights.toml"
    empty.write_text("")
    monkeypatch.setenv("DERAIN_WEIGHTS_TOML", str(empty))
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--model", "all")[::2])
    assert "no registered model has weights available" in line
    before = (tiny_pairs / "rainy" / "000.png").read_bytes()
    line = _one_line_error(*run_cli(monkeypatch, capsys, "eval", "--model", TINY_MODEL, "--weights", tiny_weights,
                                    "--save-dir", tiny_pairs / "rainy", tiny_pairs / "rainy", tiny_pairs / "clean")[::2])
    assert "is an input folder" in line
    assert (tiny_pairs / "rainy" / "000.png").read_bytes() == before


# -- datasets ----------------------------------------------------------------------------
def test_dataset_lookup_order(tiny_pairs, tmp_path):
    env_root = tmp_path / "env"
    (env_root / "rain12").mkdir(parents=True)
    for sub in ("rainy", "clean"):
        (env_root / "rain12" / sub).mkdir()
    env = {"DERAIN_DATA": str(env_root)}
    assert datasets.resolve_dataset("rain12", env=env).origin == "$DERAIN_DATA"
    got = datasets.resolve_dataset("rain12", data=tiny_pairs, env=env)  # --data wins
    assert (got.origin, got.root, len(got.pairs())) == ("--data", tiny_pairs, 6)
    with pytest.raises(DerainError, match="not published"):
        datasets.resolve_dataset("rain12", env={})
    assert set(datasets.DATASETS) >= {"rain100l", "rain100h", "rain12", "rain100l-fog"}
    for spec in datasets.DATASETS.values():
        assert not spec.published  # nothing is on a hub yet: no invented repo ids


def _png(seed: int, which: int) -> bytes:
    img = make_rainy_pair(24, 20, seed=seed)[which]
    return cv2.imencode(".png", img[:, :, ::-1])[1].tobytes()


@pytest.fixture
def hub_dataset(hub_server, tmp_path, monkeypatch):
    """A two-pair dataset published on the local hub, with a sha256 manifest, and an isolated HF cache."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    files = {f"{sub}/{i:03d}.png": _png(i, which) for i in range(2) for which, sub in enumerate(("rainy", "clean"))}
    revision = None
    for name, data in files.items():
        revision = hub_server.add("derain-test/mini-rain", f"test/{name}", data, repo_type="dataset",
                                  revision=revision)
    manifest = tmp_path / "mini.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    spec = datasets.DatasetSpec(name="mini-rain", title="test", source="tests", pairs=2,
                                hub_repo="derain-test/mini-rain", hub_revision=revision, hub_subdir="test",
                                manifest=str(manifest))
    datasets.register_dataset(spec)
    yield spec, files, manifest
    datasets.DATASETS.pop("mini-rain", None)


def _file_gets(hub_server) -> int:
    return sum(1 for method, path in hub_server.requests if method == "GET" and "/resolve/" in path)


def test_dataset_download_from_hub_then_cache(hub_dataset, hub_server):
    spec, files, _ = hub_dataset
    ds = datasets.resolve_dataset("mini-rain", env={})
    assert ds.origin == "hub download"
    assert [p.stem for p in ds.pairs()] == ["000", "001"]
    assert (ds.root / "rainy" / "001.png").read_bytes() == files["rainy/001.png"]
    gets = _file_gets(hub_server)
    assert gets == 4
    again = datasets.resolve_dataset("mini-rain", env={})
    assert again.origin == "hub cache" and again.root == ds.root
    assert _file_gets(hub_server) == gets  # nothing fetched again


def test_dataset_download_refused_when_manifest_disagrees(hub_dataset, monkeypatch):
    spec, files, manifest = hub_dataset
    lines = manifest.read_text().splitlines()
    digest, name = lines[1].split("  ")
    lines[1] = f"{'0' * 64}  {name}"
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DerainError, match=r"1 file\(s\) do not match the sha256 manifest \(" + name):
        datasets.resolve_dataset("mini-rain", env={})
    # the bad file is gone from the cache, so it can never be used later; the good ones stay
    snapshot = (Path(os.environ["HF_HOME"]) / "hub" / "datasets--derain-test--mini-rain" / "snapshots"
                / spec.hub_revision / "test")
    assert name == "clean/000.png" and not (snapshot / name).exists()
    assert (snapshot / "rainy" / "000.png").read_bytes() == files["rainy/000.png"]
    # offline with nothing cached is a clear error, not a network attempt
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DerainError, match="HF_HUB_OFFLINE"):
        datasets.resolve_dataset("mini-rain", env={})


# -- published figures -------------------------------------------------------------------
def test_published_figures_have_sources_and_cover_every_architecture():
    rows = evaluate.published_figures("rain100l")
    assert all(r.get("source") and r.get("cite") for r in rows)
    by_method = {r["method"]: r for r in rows}
    assert (by_method["PReNet"]["psnr"], by_method["PReNet"]["ssim"]) == (37.48, 0.979)
    assert (by_method["Rainy input"]["psnr"], by_method["Rainy input"]["ssim"]) == (26.90, 0.838)
    assert {r.get("architecture") for r in rows} >= set(MODEL_NAMES)
    for r in rows:  # a figure or an explicit note that the paper states none
        assert "psnr" in r or "not stated" in r.get("note", "")
    h = {r["method"]: r for r in evaluate.published_figures("rain100h")}
    assert (h["PReNet"]["psnr"], h["PReNet"]["ssim"]) == (29.46, 0.899)



def test_bench_and_eval_measure_the_chosen_variant(tiny_pairs, monkeypatch, capsys, tmp_path):
    # jrgr's two removers start from different random weights here, so their figures must differ
    import torch

    from derain_cli.registry import get_spec
    from derain_cli.weightfile import save_weights

    torch.manual_seed(1)
    spec = get_spec("jrgr")
    config = spec.config(unet_ngf=4, unet_downs=2, trans_ngf=4, trans_blocks=1, disc_ndf=4)
    weights = tmp_path / "jrgr_tiny.safetensors"
    save_weights(weights, spec.build(config).state_dict(), architecture="jrgr", config=config)
    figures = {}
    for variant in ("synthetic", "real"):
        jpath = tmp_path / f"{variant}.json"
        code, out, err = run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--model", "jrgr", "--weights", weights,
                                 "--variant", variant, "--device", "cpu", "--threads", "1", "--limit", "2",
                                 "--json", jpath)
        assert code == 0, err
        (r,) = json.loads(jpath.read_text())["results"]
        assert r["model"] == f"jrgr:{variant}" and f"jrgr:{variant}" in out
        figures[variant] = r["psnr_y"]
        code, out, err = run_cli(monkeypatch, capsys, "eval", "--model", "jrgr", "--weights", weights,
                                 "--variant", variant, "--device", "cpu", "--threads", "1",
                                 tiny_pairs / "rainy", tiny_pairs / "clean")
        assert code == 0, err
    assert figures["synthetic"] != figures["real"]
    line = _one_line_error(*run_cli(monkeypatch, capsys, "bench", tiny_pairs, "--model", "jrgr", "--weights",
                                    weights, "--variant", "nope", "--device", "cpu")[::2])
    assert "no variant 'nope'" in line
    line = _one_line_error(*run_cli(monkeypatch, capsys, "eval", "--variant", "real",
                                    tiny_pairs / "rainy", tiny_pairs / "clean")[::2])
    assert "--variant" in line and "only apply with --model" in line
