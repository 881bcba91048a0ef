"""Encoded audio bytes -> a mono float32 waveform at the model's sample rate, refusing anything
unsafe or unreadable with InvalidInput.

Formats: WAV, FLAC and OGG (Vorbis, Opus) through libsndfile (soundfile); MP3 and M4A (AAC,
ALAC) through FFmpeg (PyAV). The format is recognised from the file's own magic bytes and each
decoder is told which one to read, so FFmpeg never probes its other demuxers (playlists,
concat lists, ...) on untrusted bytes.

What a header declares (sample rate, channels, duration, WAV data size) is checked before any
sample is decoded, so a small file that claims ten hours costs nothing; decoding then streams in
blocks, mixing channels to mono (their mean) and resampling (soxr) as it goes, and stops as soon
as the decoded length passes the limit whatever the header said. Memory stays bounded by the
output at the model's rate. Whatever the bytes, the only exception that leaves
``decode_audio`` is InvalidInput.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soxr

from services.common.errors import InvalidInput, decoder_message
from services.common.settings import settings_subset

SUPPORTED_TEXT = "WAV, FLAC, OGG (Vorbis, Opus), MP3, M4A (AAC, ALAC)"
# FFmpeg demuxer and decoders allowed for the formats libsndfile does not read.
_FFMPEG_FORMATS = {"MP3": "mp3", "M4A": "mp4"}
_FFMPEG_CODECS = frozenset({"mp3", "mp3float", "aac", "alac"})
_BLOCK_FRAMES = 1 << 16
# soxr's "high quality" preset: 20-bit precision, flat passband to 91% of Nyquist, linear phase.
_RESAMPLE_QUALITY = "HQ"

# Magic numbers of common files that are not audio (or not a supported audio format).
_OTHER_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG", 0, "a PNG image"),
    (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"GIF8", 0, "a GIF image"),
    (b"%PDF", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"\x1a\x45\xdf\xa3", 0, "a Matroska/WebM file"),
    (b"FORM", 0, "an AIFF file"),
    (b"caff", 0, "a CAF file"),
    (b"#!AMR", 0, "an AMR file"),
    (b"MThd", 0, "a MIDI file"),
)


@dataclass(frozen=True)
class AudioLimits:
    """What an accepted clip may be; built from AudioSettings."""

    max_audio_bytes: int = 32 * 1024 * 1024
    max_audio_seconds: float = 600.0
    min_sample_rate_hz: int = 4000
    max_sample_rate_hz: int = 192_000
    max_channels: int = 8

    @classmethod
    def from_settings(cls, settings: object) -> AudioLimits:
        return settings_subset(cls, settings)


def sniff_format(data: bytes) -> str | None:
    """The supported format the bytes start like, or None."""
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "OGG"
    if data[4:8] == b"ftyp":
        return "M4A"
    if data[:3] == b"ID3":
        return "MP3"
    # An MPEG audio frame header: 11 sync bits, then a layer (01-11); AAC's ADTS has layer 00.
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
        return "MP3"
    return None


def decode_audio(data: bytes, limits: AudioLimits, sample_rate_hz: int) -> np.ndarray:
    """Decodes one clip to a mono float32 waveform at ``sample_rate_hz`` (samples in [-1, 1])."""
    if not data:
        raise InvalidInput("audio is empty (0 bytes)")
    if len(data) > limits.max_audio_bytes:
        raise InvalidInput(f"audio is {len(data)} bytes; the limit is {limits.max_audio_bytes} bytes")
    kind = sniff_format(data)
    if kind is None:
        raise InvalidInput(_unrecognised(data))
    if kind == "WAV":
        _check_wav_header(data, limits)
    decoder = _ffmpeg_blocks if kind in _FFMPEG_FORMATS else _soundfile_blocks
    waveform = _Collector(kind, limits, sample_rate_hz)
    try:
        for rate, block in decoder(data, kind, limits):
            waveform.add(rate, block)
    except InvalidInput:
        raise
    except MemoryError:
        raise InvalidInput(f"{kind} audio needs more memory to decode than this service allows") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise nearly anything on hostile bytes
        raise InvalidInput(f"could not decode {kind} audio: {decoder_message(exc)}") from None
    return waveform.result()


class _Collector:
    """Mixes blocks to mono, checks the running length and resamples as they come."""

    def __init__(self, kind: str, limits: AudioLimits, sample_rate_hz: int) -> None:
        self._kind = kind
        self._limits = limits
        self._out_rate = sample_rate_hz
        self._in_rate = 0
        self._frames = 0
        self._stream: soxr.ResampleStream | None = None
        self._chunks: list[np.ndarray] = []

    def add(self, rate: int, block: np.ndarray) -> None:
        """``block``: (frames, channels) float32 at ``rate``."""
        if self._in_rate == 0:
            _check_rate_and_channels(rate, block.shape[1], self._limits)
            self._in_rate = rate
            if rate != self._out_rate:
                self._stream = soxr.ResampleStream(
                    rate, self._out_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY
                )
        elif rate != self._in_rate:
            raise InvalidInput(
                f"{self._kind} audio changes sample rate mid-stream ({self._in_rate} -> {rate} Hz)"
            )
        if block.shape[1] > self._limits.max_channels:
            raise InvalidInput(_channels_message(block.shape[1], self._limits))
        self._frames += block.shape[0]
        if self._frames > self._limits.max_audio_seconds * rate:
            raise InvalidInput(
                f"audio is longer than {self._limits.max_audio_seconds:g} s (decoded so far: "
                f"{self._frames / rate:.1f} s); the limit is {self._limits.max_audio_seconds:g} s"
            )
        mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        if not np.isfinite(mono).all():
            raise InvalidInput(f"{self._kind} audio contains NaN or infinite samples")
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono, last=False)
        self._chunks.append(np.array(mono, dtype=np.float32, copy=True))

    def result(self) -> np.ndarray:
        if self._frames == 0:
            raise InvalidInput(f"{self._kind} audio has no samples")
        if self._stream is not None:
            self._chunks.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        return np.concatenate(self._chunks).astype(np.float32, copy=False)


def _check_rate_and_channels(rate: int, channels: int, limits: AudioLimits) -> None:
    if not limits.min_sample_rate_hz <= rate <= limits.max_sample_rate_hz:
        raise InvalidInput(
            f"sample rate {rate} Hz is outside the accepted {limits.min_sample_rate_hz}-"
            f"{limits.max_sample_rate_hz} Hz"
        )
    if channels < 1:
        raise InvalidInput("audio has no channels")
    if channels > limits.max_channels:
        raise InvalidInput(_channels_message(channels, limits))


def _channels_message(channels: int, limits: AudioLimits) -> str:
    return f"audio has {channels} channels; the limit is {limits.max_channels}"


def _check_declared_duration(seconds: float, limits: AudioLimits) -> None:
    if seconds > limits.max_audio_seconds:
        raise InvalidInput(
            f"audio is {seconds:.1f} s long (as its header declares); the limit is "
            f"{limits.max_audio_seconds:g} s"
        )


def _check_wav_header(data: bytes, limits: AudioLimits) -> None:
    """What a RIFF/WAVE header declares, checked before libsndfile reads it: libsndfile quietly
    trusts a data size past the end of the file, and reads what is there."""
    fmt, data_size, data_available = None, None, 0
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(data):
            fmt = struct.unpack_from("<HHIIHH", data, body)
        elif chunk_id == b"data":
            data_size, data_available = size, len(data) - body
            break
        offset = body + size + (size & 1)  # chunks are padded to even sizes
    if fmt is None or data_size is None:
        raise InvalidInput("WAV audio is truncated or malformed: no complete 'fmt ' and 'data' chunks")
    _format, channels, rate, _byte_rate, block_align, _bits = fmt
    _check_rate_and_channels(rate, channels, limits)
    # 0 and 0xFFFFFFFF are what streaming writers (and RF64) leave when they cannot seek back.
    if data_size in (0, 0xFFFFFFFF) or block_align == 0:
        return
    _check_declared_duration(data_size / block_align / rate, limits)
    if data_size > data_available:
        raise InvalidInput(
            f"WAV audio is truncated: its header declares {data_size} bytes of samples, the file holds "
            f"{data_available}"
        )


def _soundfile_blocks(data: bytes, kind: str, limits: AudioLimits) -> Iterator[tuple[int, np.ndarray]]:
    import soundfile

    with soundfile.SoundFile(io.BytesIO(data)) as sound:
        _check_rate_and_channels(sound.samplerate, sound.channels, limits)
        if sound.frames > 0:
            _check_declared_duration(sound.frames / sound.samplerate, limits)
        for block in sound.blocks(_BLOCK_FRAMES, dtype="float32", always_2d=True):
            yield sound.samplerate, block


def _ffmpeg_blocks(data: bytes, kind: str, limits: AudioLimits) -> Iterator[tuple[int, np.ndarray]]:
    import av

    with av.open(io.BytesIO(data), mode="r", format=_FFMPEG_FORMATS[kind]) as container:
        if not container.streams.audio:
            raise InvalidInput(f"{kind} file has no audio stream")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        if codec not in _FFMPEG_CODECS:
            raise InvalidInput(f"{kind} audio codec {codec!r} is not supported; supported: MP3, AAC, ALAC")
        rate = stream.codec_context.sample_rate
        _check_rate_and_channels(rate, stream.codec_context.channels, limits)
        declared = _declared_seconds(container, stream)
        if declared is not None:
            _check_declared_duration(declared, limits)
        # Every frame as float planar at the stream's rate, whatever the codec's own sample format.
        resampler = av.AudioResampler(format="fltp", rate=rate)
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                yield rate, converted.to_ndarray().T
        for converted in resampler.resample(None):
            yield rate, converted.to_ndarray().T


def _declared_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _unrecognised(data: bytes) -> str:
    for signature, offset, name in _OTHER_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return f"unsupported audio: the bytes are {name}; supported: {SUPPORTED_TEXT}"
    return f"could not read audio: not a recognised {SUPPORTED_TEXT} file"
