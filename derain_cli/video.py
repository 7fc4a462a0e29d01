"""Video: frames in, frames out. Derain every frame of a clip with a loaded model (``derain run clip.mp4``).

The output has the clip's size and (average) frame rate, its audio streams copied
packet for packet, and its rotation: frames are turned upright for the model, so rain
falls down as it was filmed, and turned back, so the stored frames keep the
source's orientation and its display rotation. Frames are encoded in segments of
``SEGMENT_FRAMES``, each written atomically into a hidden work folder beside the
output (``.NAME.parts/``); when all are there they are joined (remuxed, not
re-encoded) with the audio into a temporary file renamed onto the output. Ctrl-C
or a crash therefore never leaves a broken output, and a re-run skips the segments
already done. Needs PyAV (the optional ``video`` extra), imported lazily.
"""
from __future__ import annotations

import heapq
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import DerainError

INSTALL = "install it with: pip install 'derain-cli[video]'"
#: Output container and video encoder for each suffix derain writes videos with.
FORMATS = {
    ".mp4": ("mp4", "libx264"), ".m4v": ("mp4", "libx264"), ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"), ".webm": ("webm", "libvpx-vp9"), ".avi": ("avi", "mpeg4"),
}
VIDEO_SUFFIXES = tuple(FORMATS)
#: Frames per segment: the most an interruption loses, and the unit a re-run resumes at.
SEGMENT_FRAMES = 48
#: Encoder settings: visually near-lossless, so deraining is what changes the picture.
ENCODER_OPTIONS = {"libx264": {"crf": "18", "preset": "medium"}, "libvpx-vp9": {"crf": "24", "b": "0"},
                   "mpeg4": {"qscale": "2"}}


class VideoError(DerainError):
    """A video that cannot be read or written, or PyAV missing."""


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video by its suffix (the formats in :data:`FORMATS`)."""
    return Path(path).suffix.lower() in FORMATS


def _av():
    """PyAV, or one line saying how to install it."""
    try:
        import av
    except ImportError:
        raise VideoError(f"videos need PyAV; {INSTALL}") from None
    return av


def check_video_target(target: str | os.PathLike) -> None:
    """An output video we can write: a known container, not a folder, in a writable folder; PyAV present."""
    from .preflight import check_folder

    target = Path(target)
    if target.suffix.lower() not in FORMATS:
        raise VideoError(f"{target}: derain writes videos as {', '.join(FORMATS)}")
    if target.is_dir():
        raise VideoError(f"{target}: is a folder; an output file must not replace it")
    _av()
    check_folder(target.parent)


@dataclass(frozen=True)
class Clip:
    """What the output must keep of the source video."""

    width: int
    height: int
    rate: Fraction  # average frames per second
    frames: int | None  # as the container states it (None: unknown)
    rotation: int  # display rotation in degrees, a multiple of 90
    start: float  # the video stream's start time in seconds (the audio is shifted by it)


def _rotation_of(stream, first_frame) -> int:
    """Counter-clockwise display rotation in degrees (0, 90, 180, 270), as ``VideoFrame.rotation`` reads it.

    From the decoded frame's display matrix, else the ``rotate`` tag older FFmpeg builds
    exported (that one counts clockwise).
    """
    value = getattr(first_frame, "rotation", None) if first_frame is not None else None
    try:
        value = float(value) if value is not None else -float(stream.metadata.get("rotate", 0))
        return int(round(value / 90.0)) * 90 % 360
    except (TypeError, ValueError):
        return 0


def _open(path: Path):
    av = _av()
    try:
        return av.open(str(path))
    except Exception as exc:  # FFmpeg's own reason, on one line
        raise VideoError(f"{path}: cannot read this video ({str(exc).splitlines()[0] if str(exc) else exc})") from None


def probe(path: str | os.PathLike) -> Clip:
    """Size, frame rate, frame count, rotation and start time of the first video stream."""
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        first = next(iter(container.decode(stream)), None)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise VideoError(f"{path}: the video stream states no frame rate")
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        return Clip(stream.codec_context.width, stream.codec_context.height, Fraction(rate),
                    stream.frames or None, _rotation_of(stream, first), start)


def check_audio_fits(src: Path, dst: Path) -> None:
    """Refuse, before any frame is derained, an output container that cannot hold the source's audio as it is."""
    import io

    av = _av()
    with _open(src) as source:
        for stream in source.streams.audio:
            try:
                with av.open(io.BytesIO(), "w", format=FORMATS[dst.suffix.lower()][0]) as probe_out:
                    _copy_stream(probe_out, stream)
                    probe_out.start_encoding()
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise VideoError(f"{src}: its {stream.codec_context.name} audio cannot be copied into a "
                                 f"{dst.suffix} file ({reason}); choose an .mkv or .mp4 output") from None


def work_folder(dst: Path) -> Path:
    """The hidden folder beside ``dst`` that holds its finished segments until they are joined."""
    return dst.parent / f".{dst.name}.parts"


def _job(derainer, src: Path, clip: Clip, codec: str, tile: int, tile_overlap: int | None, segment: int) -> dict:
    """What the segments depend on: a re-run with anything different starts over."""
    st = src.stat()
    return {"source": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "model": derainer.spec.name, "variant": derainer.variant,
            "weights": str(derainer.meta.get("weights_path", "")), "ensemble": derainer.ensemble,
            "tile": tile, "tile_overlap": tile_overlap, "codec": codec, "segment_frames": segment,
            "width": clip.width, "height": clip.height, "rate": str(clip.rate)}


def _prepare_work(work: Path, job: dict, notify) -> set[int]:
    """Segments already done for this same job (others are cleared); writes the job file."""
    done: set[int] = set()
    job_file = work / "job.json"
    if work.is_dir():
        try:
            old = json.loads(job_file.read_text())
        except (OSError, ValueError):
            old = None
        if old == job:
            done = {int(p.stem.split("_")[1]) for p in work.glob("seg_*.mp4")}
            if done:
                notify(f"resuming: {len(done)} segment{'s' if len(done) > 1 else ''} already done in {work}")
        else:
            if old is not None:
                notify(f"the video, model or options changed since {work} was started; starting over")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    from .weightfile import atomic_write_bytes

    atomic_write_bytes(job_file, json.dumps(job, sort_keys=True).encode())
    return done


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as it is displayed (turned ``rotation`` degrees counter-clockwise), where rain falls down."""
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


def _stored(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Undo :func:`_upright`: back to the orientation the source stores its frames in."""
    return np.ascontiguousarray(np.rot90(rgb, -(rotation // 90))) if rotation else rgb


class _SegmentWriter:
    """Encodes one segment into a temporary file and renames it into place when complete."""

    def __init__(self, path: Path, codec: str, clip: Clip):
        av = _av()
        self.path = path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.stream = self.container.add_stream(codec, rate=clip.rate)
        self.stream.width, self.stream.height = clip.width, clip.height
        even = clip.width % 2 == 0 and clip.height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"  # 4:2:0 needs even sides
        self.stream.options = dict(ENCODER_OPTIONS.get(codec, {}))
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        frame = _av().VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def finish(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


def _segment_path(work: Path, index: int) -> Path:
    return work / f"seg_{index:05d}.mp4"


def derain_frames(derainer, src: Path, work: Path, clip: Clip, codec: str, done: set[int], segment: int,
                  *, tile: int, tile_overlap: int | None, on_frame) -> int:
    """Derain every frame of ``src`` into segment files, skipping the segments in ``done``; returns the frame count.

    ``on_frame(derained: bool)`` is called once per frame (for the progress bar).
    """
    writer = None
    count = 0
    try:
        with _open(src) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                index = count // segment
                count += 1
                if index in done:
                    on_frame(False)
                    continue
                if writer is None:
                    writer = _SegmentWriter(_segment_path(work, index), codec, clip)
                rgb = _upright(frame.to_ndarray(format="rgb24"), clip.rotation)
                writer.write(_stored(derainer.process(rgb, tile=tile, tile_overlap=tile_overlap), clip.rotation))
                on_frame(True)
                if count % segment == 0:
                    writer.finish()
                    writer = None
        if writer is not None:
            writer.finish()
            writer = None
    finally:
        if writer is not None:  # interrupted or failed inside a segment: nothing half-written stays
            writer.abandon()
    if count == 0:
        raise VideoError(f"{src}: no video frames could be decoded")
    return count


def _packets(container, stream, shift: Fraction | float) -> Iterator[tuple[float, int, Any]]:
    """``(time in seconds, order, packet)`` of one stream, timestamps moved by ``shift`` seconds."""
    offset = round(Fraction(shift) / stream.time_base)
    for order, packet in enumerate(container.demux(stream)):
        if packet.dts is None:
            continue
        packet.pts = packet.pts + offset if packet.pts is not None else None
        packet.dts += offset
        yield float(packet.dts * stream.time_base), order, packet


def _video_packets(work: Path, segments: int, rate: Fraction, segment: int) -> Iterator[tuple[float, int, Any]]:
    """Every segment's packets in order, each segment moved to where its first frame belongs."""
    for index in range(segments):
        with _open(_segment_path(work, index)) as container:
            yield from _packets(container, container.streams.video[0], index * segment / rate)


def join(work: Path, src: Path, dst: Path, clip: Clip, frames: int, segment: int) -> None:
    """Remux the segments and the source's audio streams into ``dst`` (via a temporary file: atomic)."""
    av = _av()
    segments = -(-frames // segment)
    missing = [i for i in range(segments) if not _segment_path(work, i).is_file()]
    if missing:
        raise VideoError(f"{work}: segment {missing[0]} is missing; run the same command again")
    fmt = FORMATS[dst.suffix.lower()][0]
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with av.open(tmp, "w", format=fmt) as out, _open(_segment_path(work, 0)) as first, _open(src) as source:
            video = _copy_stream(out, first.streams.video[0])
            if clip.rotation:
                video.set_display_rotation(clip.rotation)
            audio = [(stream, _copy_stream(out, stream)) for stream in source.streams.audio]
            streams = [_video_packets(work, segments, clip.rate, segment)]
            streams += [_packets(source, s, -clip.start) for s, _ in audio]
            targets = [video] + [o for _, o in audio]
            tagged = [_tag(it, i) for i, it in enumerate(streams)]
            for _, i, _, packet in heapq.merge(*tagged, key=lambda item: (item[0], item[1], item[2])):
                packet.stream = targets[i]
                out.mux(packet)
        _usual_mode(tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_stream(out, template):
    """An output stream for packets of ``template`` (no re-encoding); PyAV 13 renamed the call."""
    if hasattr(out, "add_stream_from_template"):
        return out.add_stream_from_template(template)
    return out.add_stream(template=template)


def _tag(packets: Iterator[tuple[float, int, Any]], index: int) -> Iterator[tuple[float, int, int, Any]]:
    """``(time, stream index, order, packet)``: merged by time, ties broken by stream, then order."""
    for t, order, packet in packets:
        yield t, index, order, packet


def _usual_mode(path: str | os.PathLike) -> None:
    """mkstemp makes 0600 files; give the output the mode the umask gives new files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _progress_bar():
    """A rich progress bar in frames, with frames per second of deraining (skipped frames do not count) and ETA."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class FpsColumn(ProgressColumn):
        def render(self, task) -> Text:
            done, secs = task.fields.get("worked", 0), task.fields.get("busy", 0.0)
            return Text(f"{done / secs:.2f} fps" if done and secs else "-- fps", style="progress.data.speed")

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    FpsColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True))


def derain_video(derainer, src: str | os.PathLike, dst: str | os.PathLike, *, tile: int = 0,
                 tile_overlap: int | None = None, compare: bool = False, progress=None,
                 segment_frames: int = SEGMENT_FRAMES, **_photo_options) -> Path:
    """Derain the video ``src`` into ``dst`` (resumable; see the module docstring); returns ``dst``.

    ``progress``: a running rich Progress to add this video's bar to (``derain batch``);
    without one, the video shows its own. Photo-only options (``quality``) are ignored.
    """
    src, dst = Path(src), Path(dst)
    if compare:
        raise VideoError(f"{src}: --compare is for photos, not videos")
    check_video_target(dst)
    clip = probe(src)
    if clip.rotation and not hasattr(_av().video.stream.VideoStream, "set_display_rotation"):
        raise VideoError(f"{src}: is rotated {clip.rotation} degrees and this PyAV ({_av().__version__}) cannot write "
                         "a rotation; pip install -U av")
    check_audio_fits(src, dst)
    codec = FORMATS[dst.suffix.lower()][1]
    work = work_folder(dst)
    done = _prepare_work(work, _job(derainer, src, clip, codec, tile, tile_overlap, segment_frames),
                         derainer.notify)
    own = progress is None
    bar = _progress_bar() if own else progress
    stats = {"worked": 0, "busy": 0.0, "last": time.perf_counter()}
    if own:
        bar.start()
    task = bar.add_task(src.name[-40:], total=clip.frames, worked=0, busy=0.0)

    def on_frame(derained: bool) -> None:
        now = time.perf_counter()
        if derained:
            stats["worked"] += 1
            stats["busy"] += now - stats["last"]
        stats["last"] = now
        bar.update(task, advance=1, worked=stats["worked"], busy=stats["busy"])

    try:
        frames = derain_frames(derainer, src, work, clip, codec, done, segment_frames, tile=tile,
                               tile_overlap=tile_overlap, on_frame=on_frame)
        bar.update(task, total=frames, completed=frames)
    finally:
        if own:
            bar.stop()
        else:
            bar.remove_task(task)
    join(work, src, dst, clip, frames, segment_frames)
    shutil.rmtree(work, ignore_errors=True)
    return dst
