"""Audio and video files made in the test, in every supported format, plus hostile ones built by
hand (their headers lie), so no fixture file is needed."""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import numpy as np


def tone(
    freq_hz: float = 440.0, seconds: float = 3.0, rate: int = 16_000, amplitude: float = 1.0
) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(int(seconds * rate)) / rate)).astype(
        np.float32
    )


def white_noise(seconds: float = 3.0, rate: int = 16_000, seed: int = 51773) -> np.ndarray:
    """Uniform in [-1, 1], as YAMNet's own installation test draws it."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, int(seconds * rate)).astype(np.float32)


def sound_file(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """WAV, FLAC or OGG (Vorbis) bytes through libsndfile; ``samples`` (frames,) or (frames, channels)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def ffmpeg_audio(samples: np.ndarray, rate: int, container: str = "mp3", codec: str = "mp3") -> bytes:
    """MP3 (container mp3, codec mp3) or M4A (container ipod, codec aac) bytes through PyAV; mono."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def wav_header(rate: int, channels: int = 1, bits: int = 16, data_bytes: int = 0) -> bytes:
    """A canonical 44-byte PCM WAV header declaring ``data_bytes`` of samples (it may lie)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", data_bytes)
    )  # fmt: skip


def video_file(
    frames: list[np.ndarray],
    fps: int | Fraction = 8,
    codec: str = "libx264",
    container: str = "mp4",
    keyframe_every: int = 0,
) -> bytes:
    """An encoded video of RGB frames (H, W, 3) uint8 through PyAV (a keyframe every N frames if set)."""
    import av

    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        options = {"g": str(keyframe_every), "sc_threshold": "0"} if keyframe_every else {}
        stream = output.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def pattern_frame(index: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A frame that changes clearly from one index to the next (colour bands and a moving bar)."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = (x * 255 // width + 37 * index) % 256
    frame[..., 1] = (y * 255 // height) ^ (40 * index % 256)
    bar = (index * width // 8) % width
    frame[:, bar : bar + width // 8, 2] = 255
    return frame


def decoded_frames(data: bytes) -> list[tuple[float, np.ndarray]]:
    """(seconds from the first frame, RGB pixels) of every frame, decoded by PyAV in presentation order."""
    import av

    out = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            out.append((float(frame.pts * stream.time_base), frame.to_ndarray(format="rgb24")))
    start = out[0][0]
    return [(t - start, pixels) for t, pixels in out]
