"""Videos: ``derain run clip.mp4`` and ``derain batch`` over videos, on a tiny test model (needs PyAV)."""
from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from clirun import derain
from tiny_spec import install, make_spec, save_random_weights

try:
    import av
except ImportError:
    av = None

needs_av = pytest.mark.skipif(av is None, reason="PyAV not installed (pip install 'derain-cli[video]')")

RATE, FRAMES, W, H, SAMPLE_RATE = 24, 12, 64, 48, 16000


def make_clip(path: Path, rotation: int = 0, frames: int = FRAMES) -> Path:
    """A 64x48 H.264 clip at 24 fps, a bright bar moving over a gradient, with a 440 Hz sine track (AAC)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        audio = out.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        xx = np.linspace(0, 1, W, dtype=np.float32)[None, :]
        yy = np.linspace(0, 1, H, dtype=np.float32)[:, None]
        for i in range(frames):
            rgb = np.stack([0.3 + 0.4 * xx + 0 * yy, 0.2 + 0.5 * yy + 0 * xx, 0.5 + 0 * xx * yy], -1)
            rgb[:, 4 * i:4 * i + 6] = 0.9
            frame = av.VideoFrame.from_ndarray((rgb * 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(SAMPLE_RATE * frames // RATE) / SAMPLE_RATE
        sound = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for s in range(0, len(sound), 1024):
            frame = av.AudioFrame.from_ndarray(sound[None, s:s + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, s
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


def read_clip(path: Path) -> dict:
    """Frames (RGB), frame rate, rotation and audio sample count of a video file."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = stream.average_rate
        frames = list(c.decode(stream))
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0)) if c.streams.audio else 0
    return {"frames": [f.to_ndarray(format="rgb24") for f in frames], "rate": rate,
            "rotation": getattr(frames[0], "rotation", 0) if frames else None, "samples": samples}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture
def tiny(tmp_path, request):
    """The registered test-only model ``tinytest``, its weights file, and it loaded."""
    from derain_cli.api import load_model

    spec = make_spec()
    install(request, spec)
    weights = save_random_weights(spec, tmp_path / "tiny.safetensors")
    return weights, load_model(spec, weights=weights, device="cpu")


def _expected(model, source_frame: np.ndarray, rotation: int = 0) -> np.ndarray:
    """The decoded input frame derained as a photo: upright (turned counter-clockwise, as players show it) and back."""
    k = rotation // 90
    return np.rot90(model.process(np.ascontiguousarray(np.rot90(source_frame, k))), -k)


@needs_av
@pytest.mark.parametrize("rotation", [0, 90])
def test_run_derains_a_clip_keeping_rate_size_audio_rotation(tmp_path, monkeypatch, capsys, tiny, rotation):
    weights, model = tiny
    clip = make_clip(tmp_path / "clip.mp4", rotation=rotation)
    code, out, err = derain(monkeypatch, capsys, "run", clip, "--model", "tinytest", "--weights", weights)
    assert code == 0, err
    result = tmp_path / "clip_derained.mp4"
    assert f"-> {result}" in out and not list(tmp_path.glob(".*"))  # no work folder or temp file left
    src, got = read_clip(clip), read_clip(result)
    assert len(got["frames"]) == FRAMES and got["rate"] == Fraction(RATE)
    assert got["frames"][0].shape == (H, W, 3) and got["rotation"] == src["rotation"] == rotation
    assert got["samples"] == src["samples"] > 0  # the audio packets were copied, not dropped
    for i in (0, 5, FRAMES - 1):
        want = _expected(model, src["frames"][i], rotation)
        assert psnr(got["frames"][i], want) > 34, i  # the codec's loss only
        assert psnr(src["frames"][i], want) < 30  # and the model did change the frame


@needs_av
def test_interrupted_video_resumes_from_its_segments(tmp_path, tiny):
    from derain_cli import video

    _, model = tiny
    clip = make_clip(tmp_path / "clip.mp4")
    dst = tmp_path / "out" / "clean.mp4"
    dst.parent.mkdir()
    calls = []
    real = model.process

    def interrupted(rgb, **kw):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(1)
        return real(rgb, **kw)

    model.process = interrupted
    with pytest.raises(KeyboardInterrupt):
        video.derain_video(model, clip, dst, segment_frames=4)
    work = video.work_folder(dst)
    assert not dst.exists() and sorted(p.name for p in work.iterdir()) == ["job.json", "seg_00000.mp4"]
    assert not list(dst.parent.glob(".*.tmp")) and not list(work.glob(".*"))  # the broken segment is gone
    calls.clear()
    model.process = lambda rgb, **kw: (calls.append(1), real(rgb, **kw))[1]
    video.derain_video(model, clip, dst, segment_frames=4)
    assert len(calls) == FRAMES - 4 and not work.exists()  # only the frames not done yet
    model.process = real
    src, got = read_clip(clip), read_clip(dst)
    assert len(got["frames"]) == FRAMES and got["samples"] == src["samples"]
    for i in range(FRAMES):  # frames in order, each the right one, across the segment joins
        assert psnr(got["frames"][i], _expected(model, src["frames"][i])) > 34


@needs_av
def test_a_changed_model_starts_the_segments_over(tmp_path, tiny, monkeypatch):
    from derain_cli import video

    _, model = tiny
    clip = make_clip(tmp_path / "clip.mp4")
    dst = tmp_path / "clean.mp4"
    work = video.work_folder(dst)
    work.mkdir()
    (work / "job.json").write_text('{"model": "something else"}')
    (work / "seg_00000.mp4").write_bytes(b"stale")
    lines = []
    monkeypatch.setattr(model, "notify", lines.append)
    video.derain_video(model, clip, dst, segment_frames=4)
    assert any("starting over" in line for line in lines)
    assert len(read_clip(dst)["frames"]) == FRAMES


@needs_av
def test_batch_derains_videos_beside_photos(tmp_path, monkeypatch, capsys, tiny):
    import cv2

    weights, _ = tiny
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "clip.mp4")
    cv2.imwrite(str(folder / "photo.png"), np.full((20, 30, 3), 120, np.uint8))
    code, _, err = derain(monkeypatch, capsys, "batch", folder, "-o", tmp_path / "out", "--model", "tinytest",
                          "--weights", weights)
    assert code == 0, err
    assert (tmp_path / "out" / "photo.png").is_file()
    assert len(read_clip(tmp_path / "out" / "clip.mp4")["frames"]) == FRAMES
    code, _, err = derain(monkeypatch, capsys, "batch", folder, "-o", tmp_path / "out", "--model", "tinytest",
                          "--weights", weights)
    assert code == 0 and "2 of 2 already done" in err


def test_without_pyav_one_line_says_how_to_install(tmp_path, monkeypatch, capsys, tiny):
    weights, _ = tiny
    monkeypatch.setitem(sys.modules, "av", None)  # import fails as if not installed
    (tmp_path / "clip.mp4").write_bytes(b"not really a video")
    code, _, err = derain(monkeypatch, capsys, "run", tmp_path / "clip.mp4", "--model", "tinytest",
                          "--weights", weights)
    lines = [ln for ln in err.splitlines() if ln.startswith("derain: error:")]
    assert code != 0 and len(lines) == 1 and "pip install 'derain-cli[video]'" in lines[0]
