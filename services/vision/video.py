"""Encoded video bytes -> the frames a request samples, each prepared for the image model,
refusing anything unsafe or unreadable with InvalidInput.

Only MP4/MOV and WebM/Matroska containers carrying H.264, H.265, VP8, VP9, AV1 or MPEG-4 video
are read (FFmpeg, through PyAV). The container is recognised from the file's magic bytes and
FFmpeg is told which demuxer to use, so it never probes its others (playlists, concat lists,
image sequences, ...) on untrusted bytes.

Two passes over the bytes, both bounded before they cost anything:

1. Demux only (no decoding): the codec, the frame size (``max_video_frame_pixels``) and the
   declared duration are checked, then every packet's timestamp and keyframe flag is read; more
   than ``max_video_decoded_frames`` packets (a frame bomb: hours of tiny or identical frames) or
   a timestamp past ``max_video_seconds`` stops it. From the frames' exact timestamps the sampled
   ones are chosen: ``num_frames`` spread evenly, or ``frames_per_second``.
2. Decode: for each chosen frame, go on decoding if it is in the stretch being decoded, else seek
   to the keyframe before it, so a long video costs a few GOPs per sampled frame, not the whole
   stream. The plan's cost (frames decoded x frame size) is known before decoding starts and is
   refused above ``max_video_decoded_pixels``. Only chosen frames are converted to RGB and go
   through the vision model's own transform (``services.vision.preprocessing``), the path every
   image takes; each one's size is checked again (a stream may change size mid-way).

Whatever the bytes, the only exception that leaves ``prepare_videos`` is InvalidInput.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidInput, decoder_message
from services.common.settings import settings_subset
from services.vision.preprocessing import Preprocessor

SUPPORTED_TEXT = "MP4/MOV or WebM/Matroska with H.264, H.265, VP8, VP9, AV1 or MPEG-4 Part 2 video"
# Sniffed container -> the FFmpeg demuxer it is opened with.
_DEMUXERS = {"MP4": "mp4", "Matroska": "matroska"}
_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})


@dataclass(frozen=True)
class VideoLimits:
    """What an accepted video may be; built from VisionSettings."""

    max_video_bytes: int = 32 * 1024 * 1024
    max_video_seconds: float = 600.0
    max_video_frames: int = 64
    max_video_decoded_frames: int = 36_000
    max_video_frame_pixels: int = 8_294_400
    max_video_decoded_pixels: int = 2_000_000_000

    @classmethod
    def from_settings(cls, settings: object) -> VideoLimits:
        return settings_subset(cls, settings)


@dataclass(frozen=True)
class Sampling:
    """Which frames to take: ``num_frames`` spread evenly, or ``frames_per_second``."""

    num_frames: int = 0
    frames_per_second: float = 0.0

    @classmethod
    def of(
        cls, num_frames: int, frames_per_second: float, default_frames: int, limits: VideoLimits
    ) -> Sampling:
        """Validated request fields; neither set means ``default_frames`` spread evenly."""
        if num_frames and frames_per_second:
            raise InvalidInput("give num_frames or frames_per_second, not both")
        if num_frames < 0 or not 0 <= frames_per_second < math.inf:
            raise InvalidInput("num_frames and frames_per_second must be positive")
        if num_frames > limits.max_video_frames:
            raise InvalidInput(f"num_frames is {num_frames}; the limit is {limits.max_video_frames}")
        if not num_frames and not frames_per_second:
            num_frames = min(default_frames, limits.max_video_frames)
        return cls(num_frames, frames_per_second)


@dataclass(frozen=True)
class PreparedVideo:
    """The sampled frames (model inputs, in time order) and where they are in the clip."""

    frames: np.ndarray  # (frames, 3, H, W) float32
    timestamps_s: list[float]
    duration_s: float


def sniff_container(data: bytes) -> str | None:
    if data[4:8] == b"ftyp":
        return "MP4"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska and WebM
        return "Matroska"
    return None


def prepare_videos(
    videos: Sequence[bytes], limits: VideoLimits, sampling: Sampling, transform: Preprocessor
) -> list[PreparedVideo]:
    """Each video's sampled frames; a bad video raises InvalidInput naming its index."""
    prepared = []
    for index, data in enumerate(videos):
        try:
            prepared.append(prepare_video(data, limits, sampling, transform))
        except InvalidInput as exc:
            raise InvalidInput(f"videos[{index}]: {exc}") from None
    return prepared


def prepare_video(
    data: bytes, limits: VideoLimits, sampling: Sampling, transform: Preprocessor
) -> PreparedVideo:
    if not data:
        raise InvalidInput("video is empty (0 bytes)")
    if len(data) > limits.max_video_bytes:
        raise InvalidInput(f"video is {len(data)} bytes; the limit is {limits.max_video_bytes} bytes")
    container = sniff_container(data)
    if container is None:
        raise InvalidInput(f"could not read video: not a recognised {SUPPORTED_TEXT} file")
    try:
        index = _frame_times(data, container, limits)
        chosen = _choose(index.times, index.duration_s, sampling, limits)
        frames = _decode_chosen(data, container, index, chosen, limits, transform)
    except InvalidInput:
        raise
    except MemoryError:
        raise InvalidInput("video needs more memory to decode than this service allows") from None
    except Exception as exc:  # noqa: BLE001 - FFmpeg raises nearly anything on hostile bytes
        raise InvalidInput(f"could not decode {container} video: {decoder_message(exc)}") from None
    if not frames:
        raise InvalidInput(f"{container} video has no decodable frames")
    shown = sorted(frames)
    return PreparedVideo(
        frames=np.stack([frames[i] for i in shown]),
        timestamps_s=[float(index.times[i] - index.times[0]) for i in shown],
        duration_s=index.duration_s,
    )


def _open(data: bytes, container: str):
    import av

    return av.open(io.BytesIO(data), mode="r", format=_DEMUXERS[container])


def _video_stream(opened, container: str, limits: VideoLimits):
    if not opened.streams.video:
        raise InvalidInput(f"{container} file has no video stream")
    stream = opened.streams.video[0]
    codec = stream.codec_context.name
    if codec not in _CODECS:
        raise InvalidInput(f"video codec {codec!r} is not supported; supported: {SUPPORTED_TEXT}")
    _check_pixels(stream.codec_context.width, stream.codec_context.height, limits)
    return stream


def _check_pixels(width: int, height: int, limits: VideoLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput("video frames have no size")
    if width * height > limits.max_video_frame_pixels:
        raise InvalidInput(
            f"video frames are {width}x{height} = {width * height} pixels; the limit is "
            f"{limits.max_video_frame_pixels} pixels"
        )


def _too_long(seconds: float, limits: VideoLimits) -> InvalidInput:
    return InvalidInput(f"video is {seconds:.1f} s long; the limit is {limits.max_video_seconds:g} s")


@dataclass(frozen=True)
class _FrameIndex:
    """What the demux pass learnt: every frame in presentation order, and the clip's size and length."""

    times: np.ndarray  # seconds, sorted
    pts: list[int] | None  # the stream's own timestamps, aligned with times; None when some lack one
    keyframes: np.ndarray  # bool, aligned with times
    width: int
    height: int
    duration_s: float


def _frame_times(data: bytes, container: str, limits: VideoLimits) -> _FrameIndex:
    """Pass 1: every frame's timestamp and keyframe flag, read from the packets (nothing decoded)."""
    with _open(data, container) as opened:
        stream = _video_stream(opened, container, limits)
        declared = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif opened.duration is not None:
            declared = opened.duration / 1_000_000  # AV_TIME_BASE
        if declared is not None and declared > limits.max_video_seconds:
            raise _too_long(declared, limits)
        time_base = float(stream.time_base) if stream.time_base is not None else 0.0
        rate = float(stream.average_rate or stream.guessed_rate or 0.0)
        stamps: list[tuple[float, int | None, bool]] = []
        earliest = math.inf
        for packet in opened.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            if len(stamps) >= limits.max_video_decoded_frames:
                raise InvalidInput(
                    f"video has more than {limits.max_video_decoded_frames} frames; the limit is "
                    f"{limits.max_video_decoded_frames}"
                )
            pts = packet.pts
            if pts is None or not time_base:
                seconds = len(stamps) / rate if rate else float(len(stamps))
            else:
                seconds = pts * time_base
            stamps.append((seconds, pts, bool(packet.is_keyframe)))
            earliest = min(earliest, seconds)
            if seconds - earliest > limits.max_video_seconds:
                raise _too_long(seconds - earliest, limits)
        width, height = stream.codec_context.width, stream.codec_context.height
    if not stamps:
        raise InvalidInput(f"{container} video has no frames")
    stamps.sort(key=lambda stamp: stamp[0])
    times = np.asarray([seconds for seconds, _, _ in stamps], dtype=np.float64)
    pts = [p for _, p, _ in stamps]
    frame_s = 1.0 / rate if rate else 0.0
    duration = declared if declared is not None else float(times[-1] - times[0]) + frame_s
    if duration > limits.max_video_seconds:
        raise _too_long(duration, limits)
    return _FrameIndex(
        times=times,
        pts=None if None in pts or not time_base else pts,
        keyframes=np.asarray([key for _, _, key in stamps]),
        width=width,
        height=height,
        duration_s=max(duration, float(times[-1] - times[0])),
    )


def _choose(times: np.ndarray, duration_s: float, sampling: Sampling, limits: VideoLimits) -> list[int]:
    """Indices (into the sorted frame times) of the frames to embed."""
    count = len(times)
    if sampling.frames_per_second:
        wanted = max(1, math.ceil(duration_s * sampling.frames_per_second - 1e-9))
        if wanted > limits.max_video_frames:
            raise InvalidInput(
                f"{sampling.frames_per_second:g} frames per second of a {duration_s:.1f} s video is {wanted} "
                f"frames; the limit is {limits.max_video_frames} (lower frames_per_second, or use num_frames)"
            )
        targets = times[0] + np.arange(wanted) / sampling.frames_per_second
        picked = np.minimum(np.searchsorted(times, targets - 1e-6), count - 1)
        return sorted(set(picked.tolist()))
    if sampling.num_frames >= count:
        return list(range(count))
    # The middle frame of each of num_frames equal stretches.
    return sorted({int((i + 0.5) * count / sampling.num_frames) for i in range(sampling.num_frames)})


@dataclass
class _Run:
    """Decode from ``start`` (a keyframe to seek to; None: go on from where decoding is) through ``targets``."""

    start: int | None
    targets: list[int]


def _plan(index: _FrameIndex, chosen: list[int], limits: VideoLimits) -> list[_Run]:
    """The cheapest way to reach the chosen frames: go on decoding while the next one is within
    the current stretch, else seek to the keyframe before it. Its cost (frames decoded x their
    pixels) is checked against the budget before anything is decoded."""
    keyframe_positions = np.flatnonzero(index.keyframes)
    runs: list[_Run] = []
    position, decoded = 0, 0  # the next frame the decoder would give; frames decoded so far
    for target in chosen:
        before = keyframe_positions[keyframe_positions <= target]
        key = int(before[-1]) if before.size else 0
        if index.pts is not None and key > position:
            runs.append(_Run(key, [target]))
            decoded += target - key + 1
        else:
            if not runs:
                runs.append(_Run(None, []))
            runs[-1].targets.append(target)
            decoded += target - position + 1
        position = target + 1
    pixels = decoded * index.width * index.height
    if decoded > limits.max_video_decoded_frames or pixels > limits.max_video_decoded_pixels:
        raise InvalidInput(
            f"sampling these frames needs {decoded} frames of {index.width}x{index.height} decoded "
            f"({pixels} pixels); the limit is {limits.max_video_decoded_pixels} pixels (sample fewer frames)"
        )
    return runs


def _decode_chosen(
    data: bytes,
    container: str,
    index: _FrameIndex,
    chosen: list[int],
    limits: VideoLimits,
    transform: Preprocessor,
) -> dict[int, np.ndarray]:
    """Pass 2: decodes the planned stretches; only the chosen frames become model inputs."""
    runs = _plan(index, chosen, limits)
    prepared: dict[int, np.ndarray] = {}
    decoded = 0
    with _open(data, container) as opened:
        stream = _video_stream(opened, container, limits)
        time_base = float(stream.time_base) if stream.time_base is not None else 0.0
        position = 0
        for run in runs:
            if run.start is not None:
                opened.seek(index.pts[run.start], stream=stream, backward=True)
                position = run.start
            wanted, last = set(run.targets), run.targets[-1]
            for frame in opened.decode(stream):
                decoded += 1
                if (
                    decoded > 2 * limits.max_video_decoded_frames
                ):  # the plan's count, with room for a seek's slack
                    raise InvalidInput(f"video decodes to more than {limits.max_video_decoded_frames} frames")
                # A frame's place in presentation order: from its timestamp when it has one.
                if frame.pts is not None and time_base:
                    at = int(np.searchsorted(index.times, frame.pts * time_base - 1e-9))
                else:
                    at = position
                position = at + 1
                if at in wanted and at not in prepared:
                    _check_pixels(frame.width, frame.height, limits)
                    prepared[at] = transform(frame.to_image())
                if at >= last:
                    break
    return prepared
