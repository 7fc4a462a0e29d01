"""Issue #31: nothing stops a batch, nothing eats the machine, nothing lies.

Every hostile file is made here, small: PNG headers that declare gigapixels, a real
30000 x 30000 PNG of 100 KB, FIFOs, animated images, corrupt JPEG data and EXIF.
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from clirun import derain
from derain_cli import devices, imageio, preflight
from derain_cli.api import Derainer
from derain_cli.imageio import Header, read_header, read_image
from tiny_spec import install, make_spec, save_random_weights

REPO = Path(__file__).resolve().parents[1]
SEMIMSN = REPO / "derain_cli" / "data" / "weights" / "semimsn.safetensors"


@pytest.fixture
def tiny(tmp_path, request):
    spec = make_spec()
    install(request, spec)
    return save_random_weights(spec, tmp_path / "tiny.safetensors")


def _png(path: Path, seed: int = 0, h: int = 24, w: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    path.write_bytes(cv2.imencode(path.suffix, rgb)[1].tobytes())
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_bytes(width: int, height: int, bits: int, colour: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` RGB pixels, with almost no data behind it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(width, height, 8, 2, zlib.compress(b"\x00" * 64)))
    return path


def _valid_huge_png(path: Path, side: int = 30000) -> Path:
    """A complete, valid ``side`` x ``side`` 1-bit gray PNG (all black): ~100 KB on disk, gigabytes decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    rows_per_block = 1000
    data = b"".join(z.compress(row * rows_per_block) for _ in range(side // rows_per_block)) + z.flush()
    path.write_bytes(_png_bytes(side, side, 1, 0, data))
    return path


def _lines(err: str, prefix: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith(prefix)]


# -- 1. every per-file failure is a row ------------------------------------------------
def test_batch_turns_every_failure_into_a_row_and_goes_on(tmp_path, monkeypatch, capsys, tiny):
    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("a_good.png", "b_memory.png", "c_bug.png", "e_good.png"):
        _png(src / name)
    _header_only_png(src / "d_huge.png", 100000, 100000)
    real = Derainer.process

    def hostile(self, rgb, **kw):
        size = rgb.shape[0] * rgb.shape[1]
        name = hostile.names.pop(0)
        if name == "b_memory.png":
            raise MemoryError
        if name == "c_bug.png":
            raise ValueError(f"an unexpected bug\nwith a second line ({size})")
        return real(self, rgb, **kw)

    hostile.names = ["a_good.png", "b_memory.png", "c_bug.png", "e_good.png"]
    monkeypatch.setattr(Derainer, "process", hostile)
    args = ["batch", src, "-o", out, "--model", "tinytest", "--weights", tiny, "--device", "cpu",
            "--max-pixels", "20000000000"]  # lets the huge header through to OpenCV's own limit
    code, _, err = derain(monkeypatch, capsys, *args)
    assert code == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["a_good.png", "e_good.png"]  # it went on after each failure
    assert "2 derained" in err and "3 failed" in err and "Failed images" in err
    flat = " ".join(err.split())
    assert "out of memory" in flat and "ValueError: an unexpected bug with a second line" in flat
    assert "CV_IO_MAX_IMAGE_PIXELS" in flat


def test_debug_shows_the_traceback_of_a_failed_file(tmp_path, monkeypatch, capsys, tiny):
    src = tmp_path / "in"
    _png(src / "a.png")

    def broken(self, rgb, **kw):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(Derainer, "process", broken)
    code, _, err = derain(monkeypatch, capsys, "--debug", "batch", src, "-o", tmp_path / "out", "--model", "tinytest",
                          "--weights", tiny, "--device", "cpu")
    assert code == 1 and "Traceback" in err and "RuntimeError: kaputt" in err and "Failed images" in err
    code, _, err = derain(monkeypatch, capsys, "--debug", "run", src / "a.png", "--model", "tinytest",
                          "--weights", tiny, "--device", "cpu")
    assert code == 1 and "Traceback" in err and "derain: error:" in err


# -- 2. memory checked before work -----------------------------------------------------------
def test_header_gives_size_and_depth_without_decoding(tmp_path):
    assert read_header(_header_only_png(tmp_path / "h.png", 100000, 100000)) == Header(100000, 100000, 8)
    deep = tmp_path / "deep.png"
    deep.write_bytes(cv2.imencode(".png", np.zeros((5, 7, 3), np.uint16))[1].tobytes())
    assert read_header(deep) == Header(7, 5, 16)
    assert read_header(_png(tmp_path / "p.jpg")) == Header(32, 24, 8)
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert read_header(tmp_path / "junk.png") is None  # the decoder will judge it


def test_estimate_follows_the_measured_factors():
    h8, h16 = Header(4000, 3000, 8), Header(4000, 3000, 16)
    assert preflight.estimate_bytes(h8) == 12_000_000 * preflight.PEAK_BYTES_PER_PIXEL[8]
    assert preflight.estimate_bytes(h16) > preflight.estimate_bytes(h8)
    assert preflight.estimate_bytes(h8, compare=True) == 2 * preflight.estimate_bytes(h8)
    with_model = preflight.estimate_bytes(h8, model_bytes=lambda pixels: 1 << 30)
    assert with_model == preflight.estimate_bytes(h8) + (1 << 30)


@pytest.mark.parametrize("megapixels,flips,measured_gb", [(12, 1, 1.76), (12, 2, 2.15), (24, 1, 2.82), (50, 1, 5.01)])
def test_a_big_photo_counts_the_context_the_default_model_keeps(megapixels, flips, measured_gb, tmp_path):
    """dualstage keeps 54 bytes a pixel of context for the whole photo; tiling bounds only the rest.
    Counting just the capped activations said 3.7 GB for a 50 MP JPEG that peaked at 5.0 GB.
    (Peaks of `derain run` on generated JPEGs, with and without --flips 2.)"""
    from derain_cli.api import load_model

    derainer = load_model("dualstage", device="cpu", ensemble=flips)
    header = Header(megapixels * 1000, 1000, 8)
    need = preflight.estimate_bytes(header, model_bytes=derainer.host_bytes) / 1e9
    assert measured_gb <= need <= 1.15 * measured_gb  # never below what `derain run` was measured to take
    small_photo = 300_000 * derainer.traits.bytes_per_pixel + (300_000 * 32 if flips > 1 else 0)
    assert derainer.host_bytes(300_000) == small_photo  # run whole
    small = _png(tmp_path / "x.png")  # check_memory adds what model_bytes says to the image's own arrays
    preflight.check_memory(small, model_bytes=lambda px: 1 << 30, available=(1 << 30) + 10**6)
    with pytest.raises(preflight.ImageError, match="would need about"):
        preflight.check_memory(small, model_bytes=lambda px: 1 << 30, available=1 << 30)


@pytest.mark.parametrize("megapixels,measured_gb", [(24, 0.82), (50, 1.17)])
def test_with_work_size_a_big_photo_is_counted_at_the_copy(megapixels, measured_gb):
    """--work-size 1024 --copy-only: the network sees a 1024-pixel copy, so a 50 MP photo the default needs
    5 GB for peaked at 1.17 GB (`derain run` on the generated JPEGs of benchmarks/bench_large_image.py).
    Without --copy-only the photo is derained at its own size as well, and counted so."""
    from derain_cli.api import load_model

    derainer = load_model("dualstage", device="cpu")
    header = Header(megapixels * 1000, 1000, 8)
    whole = preflight.estimate_bytes(header, model_bytes=derainer.host_bytes)
    derainer.work_size, derainer.copy_only = 1024, True
    need = preflight.estimate_bytes(header, model_bytes=derainer.host_bytes)
    assert measured_gb <= need / 1e9 <= 2.5 * measured_gb and need < 0.7 * whole
    derainer.copy_only = False
    assert preflight.estimate_bytes(header, model_bytes=derainer.host_bytes) > whole


def test_a_30000_pixel_square_is_refused_before_decoding(tmp_path, monkeypatch, capsys, tiny):
    huge = _valid_huge_png(tmp_path / "huge.png")
    assert huge.stat().st_size < 1_000_000
    monkeypatch.setattr(devices, "available_ram", lambda: 4 << 30)

    def no_decoding(*a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(imageio, "read_image", no_decoding)
    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    code, _, err = derain(monkeypatch, capsys, "run", huge, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu")
    assert code == 1
    (line,) = _lines(err, "derain: error:")
    assert "30000x30000 (900 Mpx)" in line and "GiB of memory" in line and "4.0 GiB is available" in line
    assert "--max-pixels 900000000" in line and "Traceback" not in err
    code, _, err = derain(monkeypatch, capsys, "run", huge, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu", "--max-pixels", "1000000")
    assert code == 1 and "is over --max-pixels 1000000" in err
    assert not (tmp_path / "huge_derained.png").exists()


def test_max_pixels_overrides_the_memory_limit(tmp_path, monkeypatch, capsys, tiny):
    small = _png(tmp_path / "small.png")
    code, _, err = derain(monkeypatch, capsys, "run", small, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu", "--max-pixels", "100")
    assert code == 1 and "32x24" in err and "over --max-pixels 100" in err
    monkeypatch.setattr(devices, "available_ram", lambda: 1000)  # "no memory", but --max-pixels decides
    code, _, err = derain(monkeypatch, capsys, "run", small, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu", "--max-pixels", "1000")
    assert code == 0, err
    assert (tmp_path / "small_derained.png").is_file()
    code, _, err = derain(monkeypatch, capsys, "run", small, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu", "--max-pixels", "0")
    assert code == 2 and "--max-pixels" in err


# -- 6. formats, outputs and special files -------------------------------------------------
def _no_heif(monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # "import pillow_heif" raises ImportError
    monkeypatch.setattr(imageio, "_HEIF_READY", False)


def test_heic_without_the_plugin_says_how_to_install_it(tmp_path, monkeypatch, capsys, tiny):
    _no_heif(monkeypatch)
    photo = tmp_path / "phone.heic"
    photo.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    code, _, err = derain(monkeypatch, capsys, "run", photo, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu")
    (line,) = _lines(err, "derain: error:")
    assert code == 2 and "pip install 'derain-cli[heif]'" in line  # the output format is refused up front
    code, _, err = derain(monkeypatch, capsys, "run", photo, "-o", tmp_path / "phone.jpg", "--model", "tinytest",
                          "--weights", tiny, "--device", "cpu")
    (line,) = _lines(err, "derain: error:")
    assert code == 1 and "pip install 'derain-cli[heif]'" in line and "phone.heic" in line
    assert not (tmp_path / "phone.jpg").exists()


def test_heic_round_trip_with_the_plugin(tmp_path, monkeypatch, capsys, tiny):
    pytest.importorskip("pillow_heif")
    imageio._heif_plugin()
    rgb = (np.random.default_rng(1).random((32, 48, 3)) * 255).astype(np.uint8)
    src = tmp_path / "p.heic"
    Image.fromarray(rgb).save(src, "HEIF", quality=95)
    photo = read_image(src)
    assert photo.rgb.shape == (32, 48, 3)
    out = imageio.write_image(tmp_path / "o.heic", photo)
    assert read_image(out).rgb.shape == (32, 48, 3)
    code, _, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny, "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "p_derained.heic").is_file() and read_image(tmp_path / "p_derained.heic").rgb.shape == (32, 48, 3)


def _animated(path: Path, fmt: str, frames: int = 3) -> Path:
    images = [Image.fromarray((np.random.default_rng(i).random((20, 28, 3)) * 255).astype(np.uint8))
              for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, fmt, save_all=True, append_images=images[1:])
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("name,fmt,written", [("a.gif", "GIF", "a_derained.png"), ("a.webp", "WEBP", "a_derained.webp"),
                                              ("a.tif", "TIFF", "a_derained.tif")])
def test_animated_inputs_derain_the_first_frame_and_say_so(tmp_path, monkeypatch, capsys, tiny, name, fmt, written):
    src = _animated(tmp_path / name, fmt)
    code, out, err = derain(monkeypatch, capsys, "run", src, "--model", "tinytest", "--weights", tiny,
                            "--device", "cpu")
    assert code == 0, err
    (line,) = _lines(err, "derain: warning:")
    assert f"{name}: 3 frames; derained the first frame only" in line
    assert read_image(tmp_path / written).rgb.shape == (20, 28, 3)


@pytest.mark.parametrize("target", ["out/out.gif", "out/noformat", "out/x.txt"])
def test_unwritable_output_formats_are_refused_before_inference(tmp_path, monkeypatch, capsys, tiny, target):
    src = _png(tmp_path / "a.png")
    loaded = []
    monkeypatch.setattr(Derainer, "__init__", lambda *a, **k: loaded.append(1) or None)
    code, _, err = derain(monkeypatch, capsys, "run", src, "-o", tmp_path / target, "--model", "tinytest",
                          "--weights", tiny, "--device", "cpu")
    (line,) = _lines(err, "derain: error:")
    assert code == 2 and "derain cannot write" in line and "end it with /" in line
    assert not loaded and not (tmp_path / "out").exists()  # nothing created, no model loaded


def test_o_is_a_folder_only_when_it_is_one_or_ends_in_a_slash(tmp_path, monkeypatch, capsys, tiny):
    a, b = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    common = ["--model", "tinytest", "--weights", tiny, "--device", "cpu"]
    code, _, err = derain(monkeypatch, capsys, "run", a, b, "-o", tmp_path / "new", *common)
    assert code == 2 and "end it with /" in err and not (tmp_path / "new").exists()
    code, _, err = derain(monkeypatch, capsys, "run", a, b, "-o", f"{tmp_path / 'new'}/", *common)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a_derained.png", "b_derained.png"]
    (tmp_path / "there").mkdir()
    code, _, err = derain(monkeypatch, capsys, "run", a, "-o", tmp_path / "there", *common)
    assert code == 0 and (tmp_path / "there" / "a_derained.png").is_file()
    code, _, err = derain(monkeypatch, capsys, "run", a, "-o", tmp_path / "one.jpg", *common)
    assert code == 0 and (tmp_path / "one.jpg").is_file() and not (tmp_path / "one.jpg").is_dir()


def test_output_folder_that_cannot_be_made_is_refused_up_front(tmp_path, monkeypatch, capsys, tiny):
    src = _png(tmp_path / "a.png")
    (tmp_path / "file.txt").write_text("a file, not a folder")
    code, _, err = derain(monkeypatch, capsys, "run", src, "-o", tmp_path / "file.txt" / "x.png", "--model",
                          "tinytest", "--weights", tiny, "--device", "cpu")
    assert code == 2 and "is not a folder" in _lines(err, "derain: error:")[0]
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    code, _, err = derain(monkeypatch, capsys, "batch", tmp_path / "in", "-o", tmp_path / "file.txt" / "o",
                          "--model", "tinytest", "--weights", tiny, "--device", "cpu")
    assert code == 2 and "is not a folder" in _lines(err, "derain: error:")[0]


def _cli(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "derain_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    res = _cli("run", fifo, "--weights", SEMIMSN, "--device", "cpu")  # would block forever on open
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == f"derain: error: {fifo}: a FIFO, not a regular file; derain reads image files only"
    src = tmp_path / "in"
    src.mkdir()
    os.mkfifo(src / "pipe.png")
    _png(src / "ok.png")
    res = _cli("batch", src, "-o", tmp_path / "out", "--weights", SEMIMSN, "--device", "cpu", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert "pipe.png: a FIFO, not a regular file" in res.stderr and "1 ignored" in res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.png"]


def test_batch_lists_every_file_it_skips_with_why(tmp_path, monkeypatch, capsys, tiny):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "a.png")
    _animated(src / "anim.gif", "GIF")
    (src / "notes.txt").write_text("not an image")
    _png(src / ".hidden.png")
    (src / ".a.png.k2j4h5g6.tmp").write_bytes(b"half a file")
    (src / ".git").mkdir()
    (src / ".git" / "x.png").write_bytes(b"")
    (src / "sub").mkdir()
    (src / "sub" / "README").write_text("no suffix")
    code, _, err = derain(monkeypatch, capsys, "batch", src, "-o", out, "-r", "--model", "tinytest",
                          "--weights", tiny, "--device", "cpu")
    assert code == 0, err
    assert "derain: ignoring 5 files:" in err
    for rel, reason in ((".a.png.k2j4h5g6.tmp", "hidden temporary file of an interrupted write"),
                        (".git/", "hidden folder (not entered)"), (".hidden.png", "hidden file"),
                        ("notes.txt", "not an image type derain reads (.txt)"),
                        ("sub/README", "not an image type derain reads (no suffix)")):
        assert f"  {rel}: {reason}" in err
    assert "2 derained, 0 skipped, 5 ignored, 0 failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "anim.png"]  # GIF is read, written as PNG


def test_a_resumed_batch_removes_its_own_stale_temp_files(tmp_path, monkeypatch, capsys, tiny):
    src, out = tmp_path / "in", tmp_path / "out"
    _png(src / "a.png")
    _png(src / "b.png")
    out.mkdir()
    _png(out / "a.png")  # done before the kill -9
    stale = [out / ".b.png.x8_ab3qz.tmp", out / ".a.png.0123abcd.tmp", out / ".b_compare.png.abcdefgh.tmp"]
    kept = [out / ".c.png.abcdefgh.tmp", out / ".b.png.tmp", out / "b.png.abcdefgh.tmp", out / ".notes.txt"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    code, _, err = derain(monkeypatch, capsys, "batch", src, "-o", out, "--model", "tinytest", "--weights", tiny,
                          "--device", "cpu")
    assert code == 0, err
    assert "removed 3 temporary files an interrupted run left" in err
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert read_image(out / "b.png").rgb.shape == (24, 32, 3)


def test_temp_pattern_matches_what_atomic_writes_leave(tmp_path, monkeypatch):
    """The pattern is derived from atomic_write_bytes: a real leftover of it must match."""
    from derain_cli import weightfile

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(weightfile.os, "replace", crash)
    monkeypatch.setattr(weightfile.os, "unlink", lambda p: None)  # like kill -9: nothing cleans up
    with pytest.raises(KeyboardInterrupt):
        weightfile.atomic_write_bytes(tmp_path / "x.png", b"data")
    (left,) = list(tmp_path.iterdir())
    assert preflight.stale_temp_target(left.name) == "x.png"


# -- 7. clean stderr -------------------------------------------------------------------------
def _corrupt_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    data[len(data) // 2: len(data) // 2 + 40] = b"\x00" * 40  # libjpeg decodes it, and complains on fd 2
    path.write_bytes(bytes(data))
    return path


def test_libjpeg_complaints_become_one_warning_line(tmp_path, monkeypatch, capfd, tiny):
    src = _corrupt_jpeg(tmp_path / "c.jpg")
    code, _, err = derain(monkeypatch, capfd, "run", src, "--model", "tinytest", "--weights", tiny, "--device", "cpu")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"derain: warning: {src}: Corrupt JPEG data"), err


def _bad_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF segment is cut in the middle of a tag's data (Pillow warns about it)."""
    exif = Image.Exif()
    exif[0x010F] = "TestCamera" * 5
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    app1 = data.find(b"\xff\xe1")
    length = struct.unpack(">H", data[app1 + 2: app1 + 4])[0]
    cut = data.find(b"TestCamera") - app1 - 2 + 10
    path.write_bytes(data[: app1 + 2] + struct.pack(">H", cut) + data[app1 + 4: app1 + 2 + cut]
                     + data[app1 + 2 + length:])
    return path


def test_pillow_exif_warnings_become_one_line(tmp_path, monkeypatch, capfd, tiny):
    src = _bad_exif_jpeg(tmp_path / "e.jpg")
    code, _, err = derain(monkeypatch, capfd, "run", src, "--model", "tinytest", "--weights", tiny, "--device", "cpu")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"derain: warning: {src}: "), err
    assert "UserWarning" not in err and ".py:" not in err


def test_warnings_are_one_line_and_numpy_noise_is_dropped(capsys):
    from derain_cli import cli
    from derain_cli.errors import DerainWarning

    cli._show_warning(DerainWarning("x.png: 3 frames;\n derained the first"), DerainWarning, "f.py", 1)
    cli._show_warning(RuntimeWarning("invalid value encountered in divide"), RuntimeWarning, "f.py", 2)
    err = capsys.readouterr().err
    assert err == "derain: warning: x.png: 3 frames; derained the first\n"
