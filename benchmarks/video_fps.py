"""Benchmark: frames per second of ``derain run clip.mp4`` on a generated 1280 x 720 clip with audio.

The clip (10 s at 25 fps by default, H.264 + AAC stereo) is a drifting gradient with
slanted bright streaks falling through it, written into a temporary folder; it is
derained through the real CLI, and the script reports wall time, frames per second
(all frames over the whole command, model loading, decoding, encoding and the join
included) and that the output kept frame count, rate, size and audio.

    python benchmarks/video_fps.py                     # default model, default tiling
    python benchmarks/video_fps.py --model semimsn --seconds 4 --threads 2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clip(path: Path, width: int, height: int, seconds: float, fps: int, seed: int = 0) -> int:
    """Write the rainy test clip; returns its frame count."""
    import av

    rng = np.random.default_rng(seed)
    frames = int(round(seconds * fps))
    drops = rng.integers(0, [height, width], size=(width * height // 900, 2))
    xx = np.arange(width, dtype=np.float32)[None, :]
    yy = np.arange(height, dtype=np.float32)[:, None]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"crf": "18"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=44100)
        audio.layout = "stereo"
        for i in range(frames):
            shift = 3.0 * i
            img = np.stack([0.45 + 0.25 * np.sin((xx + shift) / 90 + yy / 300),
                            0.50 + 0.20 * np.cos(yy / 170) + 0 * xx,
                            0.40 + 0.20 * np.sin((xx + yy + shift) / 230)], -1)
            img = (img * 255).astype(np.uint8)
            ys = (drops[:, 0] + 24 * i) % (height - 30)
            for t in range(30):  # 30-pixel streaks, slanted, falling 24 px a frame
                y, x = ys + t, (drops[:, 1] + t // 6) % width
                img[y, x] = np.minimum(255, img[y, x].astype(np.int16) + 70).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(int(44100 * seconds)) / 44100
        tone = np.stack([0.2 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
        for s in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, s:s + 1024]), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 44100, s
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return frames


def describe(path: Path) -> tuple[int, object, tuple[int, int], int]:
    """(frames, average rate, (width, height), audio streams) of a video."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        count = sum(1 for _ in c.decode(stream))
        return count, stream.average_rate, (stream.codec_context.width, stream.codec_context.height), len(c.streams.audio)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--work-size", type=int, default=None, help="derain run --work-size")
    ap.add_argument("--copy-only", action="store_true", help="derain run --copy-only (with --work-size)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        clip, out = Path(tmp) / "clip.mp4", Path(tmp) / "clip_derained.mp4"
        frames = make_clip(clip, args.width, args.height, args.seconds, args.fps)
        cmd = [sys.executable, "-m", "derain_cli", "run", str(clip), "-o", str(out), "-v"]
        for flag, value in (("--model", args.model), ("--threads", args.threads), ("--tile", args.tile),
                            ("--work-size", args.work_size)):
            if value is not None:
                cmd += [flag, str(value)]
        cmd += ["--copy-only"] if args.copy_only else []
        print("$ derain", " ".join(cmd[3:]).replace(str(tmp), "TMP"), flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        got = describe(out)
        verbose = [ln for ln in done.stderr.splitlines() if ln.startswith("derain: model")]
        print(*(verbose[:1]), sep="")
        print(f"{frames} frames of {args.width}x{args.height} in {seconds:.1f} s: {frames / seconds:.3f} fps "
              f"({seconds / frames:.2f} s a frame); output: {got[0]} frames at {got[1]} fps, {got[2][0]}x{got[2][1]}, "
              f"{got[3]} audio stream(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
