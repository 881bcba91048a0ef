"""Audio decoding in-process: formats, channel mixing, resampling, and the guards that hold even
when a header lies."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soxr

from services.audio.decoding import AudioLimits, _Collector, decode_audio, sniff_format
from services.common.errors import InvalidInput
from tests.support.media import ffmpeg_audio, sound_file, tone, wav_header

LIMITS = AudioLimits()


def dominant_hz(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(waveform.size)))
    return float(np.fft.rfftfreq(waveform.size, 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000, 96_000])
def test_resampling_keeps_pitch_level_and_length(rate: int) -> None:
    source = tone(1000, 2.0, rate, 0.5)
    out = decode_audio(sound_file(source, rate, "WAV", "FLOAT"), LIMITS, 16_000)
    assert out.dtype == np.float32 and abs(out.size - 32_000) <= 1
    assert dominant_hz(out, 16_000) == pytest.approx(1000, abs=1)
    middle = out[2000:-2000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_block_streaming_resamples_exactly_as_one_call() -> None:
    """Long clips are decoded in blocks through soxr's stream; the result is its one-shot output."""
    source = np.random.default_rng(0).uniform(-0.5, 0.5, 200_000).astype(np.float32)
    out = decode_audio(sound_file(source, 44_100, "WAV", "FLOAT"), LIMITS, 16_000)
    np.testing.assert_allclose(out, soxr.resample(source, 44_100, 16_000, quality="HQ"), atol=1e-6)


def test_channels_are_averaged_to_mono() -> None:
    left = tone(440, 1.0, 16_000, 0.5)
    cancel = decode_audio(sound_file(np.stack([left, -left], -1), 16_000, "WAV", "FLOAT"), LIMITS, 16_000)
    assert np.abs(cancel).max() < 1e-7
    same = decode_audio(sound_file(np.stack([left] * 6, -1), 16_000, "FLAC", "PCM_24"), LIMITS, 16_000)
    np.testing.assert_allclose(same, left, atol=1e-6)


def test_integer_pcm_is_scaled_to_unit_range() -> None:
    pcm = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    out = decode_audio(wav_header(16_000, data_bytes=len(pcm)) + pcm, LIMITS, 16_000)
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768], atol=1e-7)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda x: sound_file(x, 16_000, "WAV"), "WAV"),
        (lambda x: sound_file(x, 16_000, "FLAC"), "FLAC"),
        (lambda x: sound_file(x, 16_000, "OGG", "VORBIS"), "OGG"),
        (lambda x: sound_file(x, 48_000 // 3, "OGG", "OPUS"), "OGG"),
        (lambda x: ffmpeg_audio(x, 16_000, "mp3", "mp3"), "MP3"),
        (lambda x: ffmpeg_audio(x, 16_000, "ipod", "aac"), "M4A"),
    ],
    ids=["wav", "flac", "vorbis", "opus", "mp3", "m4a"],
)
def test_every_supported_format_decodes_to_the_same_tone(make, kind: str) -> None:
    data = make(tone(700, 1.5, 16_000, 0.5))
    assert sniff_format(data) == kind
    out = decode_audio(data, LIMITS, 16_000)
    assert 1.4 * 16_000 <= out.size <= 1.6 * 16_000
    assert dominant_hz(out, 16_000) == pytest.approx(700, abs=3)


def test_a_streamed_wav_header_is_read_and_its_length_still_bounded() -> None:
    """Writers that cannot seek leave the data size at 0xFFFFFFFF: accepted, its length measured."""
    pcm = np.zeros(16_000 * 3, "<i2").tobytes()
    header = wav_header(16_000, data_bytes=0)[:-4] + struct.pack("<I", 0xFFFFFFFF)
    assert decode_audio(header + pcm, LIMITS, 16_000).size == 48_000
    with pytest.raises(InvalidInput, match=r"3\.0 s long"):
        decode_audio(header + pcm, AudioLimits(max_audio_seconds=2.0), 16_000)


def test_the_decoded_length_is_bounded_whatever_a_header_declared() -> None:
    """Decoding stops at the first block past the limit (formats whose length is unknown up front)."""
    collector = _Collector("MP3", AudioLimits(max_audio_seconds=1.0), 16_000)
    collector.add(44_100, np.zeros((44_100, 2), np.float32))
    with pytest.raises(InvalidInput, match=r"longer than 1 s \(decoded so far: 1\.0 s\)"):
        collector.add(44_100, np.zeros((1, 2), np.float32))
    with pytest.raises(InvalidInput, match="changes sample rate mid-stream"):
        collector.add(48_000, np.zeros((1, 2), np.float32))


def test_limits_are_inclusive_and_exact() -> None:
    limits = AudioLimits(max_audio_seconds=1.0, max_audio_bytes=40_000, max_channels=2)
    assert decode_audio(sound_file(np.zeros(16_000), 16_000, "WAV"), limits, 16_000).size == 16_000
    with pytest.raises(InvalidInput, match=r"1\.0 s long \(as its header declares\); the limit is 1 s"):
        decode_audio(sound_file(np.zeros(16_016), 16_000, "WAV"), limits, 16_000)
    with pytest.raises(InvalidInput, match="bytes; the limit is 40000 bytes"):
        decode_audio(sound_file(np.zeros(20_000), 16_000, "WAV"), limits, 16_000)
    with pytest.raises(InvalidInput, match="3 channels; the limit is 2"):
        decode_audio(sound_file(np.zeros((100, 3)), 16_000, "FLAC"), limits, 16_000)
    with pytest.raises(InvalidInput, match="sample rate 2000 Hz is outside"):
        decode_audio(sound_file(np.zeros(100), 2_000, "WAV"), limits, 16_000)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 64,
        b"RIFF",
        b"RIFF\xff\xff\xff\xffWAVE",
        b"fLaC",
        b"OggS",
        b"ID3",
        b"\xff\xfb",
        b"\x00\x00\x00\x00ftyp",
    ],
)
def test_fragments_raise_only_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_audio(data, LIMITS, 16_000)
