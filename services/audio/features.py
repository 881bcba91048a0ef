"""YAMNet's front end in numpy: 16 kHz mono waveform -> log-mel patches, exactly as the model was trained.

The parameters and every step follow TensorFlow's reference (tensorflow/models,
research/audioset/yamnet: ``params.py`` and ``features.py``), which produced the features the
weights were trained on:

- STFT magnitude: 25 ms frames (400 samples) every 10 ms (160), a *periodic* Hann window, each
  frame zero-padded at its end to a 512-point FFT; no centring (the first frame starts at 0).
- 64 mel bands from 125 to 7500 Hz, HTK mel scale, with ``tf.signal.linear_to_mel_weight_matrix``'s
  triangles: built in the mel domain (not Hz), unnormalised, the DC bin weighted 0.
- ``log(mel + 0.001)``: YAMNet's ``log_offset`` (VGGish used 0.01; 1e-6 appears in some ports).
- Patches of 96 frames (0.96 s) every 48 frames (0.48 s). The waveform is zero-padded first, as
  YAMNet's ``pad_waveform`` does, so any clip, even a very short one, yields at least one patch
  and the last samples are covered.

The output layout is what the ONNX export takes: ``(patches, 1, 96, 64)`` float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 16_000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512  # the next power of two above the window
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_FRAMES = 96  # 0.96 s
PATCH_HOP_FRAMES = 48  # 0.48 s
PATCH_SECONDS = PATCH_FRAMES * HOP_SAMPLES / SAMPLE_RATE_HZ
PATCH_HOP_SECONDS = PATCH_HOP_FRAMES * HOP_SAMPLES / SAMPLE_RATE_HZ
# Samples one patch needs: 95 hops plus one whole STFT window (0.975 s).
PATCH_SAMPLES = (PATCH_FRAMES - 1) * HOP_SAMPLES + WINDOW_SAMPLES
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * HOP_SAMPLES


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, as TensorFlow computes it: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


def periodic_hann(length: int = WINDOW_SAMPLES) -> np.ndarray:
    """``tf.signal.hann_window(length, periodic=True)``: 0.5 - 0.5 cos(2 pi n / length)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)).astype(np.float32)


def mel_weight_matrix(
    num_mel_bins: int = MEL_BANDS,
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate_hz: float = SAMPLE_RATE_HZ,
    lower_edge_hz: float = MEL_MIN_HZ,
    upper_edge_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """``tf.signal.linear_to_mel_weight_matrix``: (num_spectrogram_bins, num_mel_bins) float32.

    Band edges are evenly spaced in mel; each FFT bin's weight is the triangle evaluated at the
    bin's mel value. The DC bin gets no weight.
    """
    bin_hz = np.linspace(0.0, sample_rate_hz / 2.0, num_spectrogram_bins)[1:]
    bin_mel = hertz_to_mel(bin_hz)[:, np.newaxis]
    edges = np.linspace(hertz_to_mel(lower_edge_hz), hertz_to_mel(upper_edge_hz), num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (center - lower)
    falling = (upper - bin_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.pad(weights, ((1, 0), (0, 0))).astype(np.float32)


def banded(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mel matrix as (bands, width) bin indices and weights: each band's triangle spans a few
    consecutive FFT bins (at most 17 here), so the projection needs no BLAS call. OpenBLAS would
    start its own thread pool per call, and on a busy 2-core pod the decode threads and
    onnxruntime then wait on each other (0.1 ms becomes 1-9 ms)."""
    spans = [np.flatnonzero(matrix[:, band]) for band in range(matrix.shape[1])]
    width = max(len(span) for span in spans)
    bins = np.zeros((matrix.shape[1], width), np.intp)
    weights = np.zeros((matrix.shape[1], width), np.float32)
    for band, span in enumerate(spans):
        start = span[0]
        bins[band] = np.minimum(np.arange(start, start + width), matrix.shape[0] - 1)
        weights[band, : span[-1] + 1 - start] = matrix[start : span[-1] + 1, band]
    return bins, weights


_MEL_BINS, _MEL_WEIGHTS = banded(mel_weight_matrix())
_WINDOW = periodic_hann()


def padded_length(num_samples: int) -> int:
    """YAMNet's ``pad_waveform``: at least one patch, then a whole number of patch hops."""
    needed = max(num_samples, PATCH_SAMPLES)
    hops = math.ceil((needed - PATCH_SAMPLES) / PATCH_HOP_SAMPLES)
    return PATCH_SAMPLES + hops * PATCH_HOP_SAMPLES


def num_patches(num_samples: int) -> int:
    """Patches a clip of ``num_samples`` samples (16 kHz) gives."""
    return 1 + (padded_length(num_samples) - PATCH_SAMPLES) // PATCH_HOP_SAMPLES


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """(samples,) float waveform at 16 kHz -> (frames, 64) float32 log-mel spectrogram."""
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (samples,), got {waveform.shape}")
    if waveform.size < WINDOW_SAMPLES:
        return np.zeros((0, MEL_BANDS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(waveform, WINDOW_SAMPLES)[::HOP_SAMPLES]
    magnitude = np.abs(np.fft.rfft(frames * _WINDOW, n=FFT_LENGTH, axis=-1)).astype(np.float32)
    mel = np.einsum("tbw,bw->tb", magnitude[:, _MEL_BINS], _MEL_WEIGHTS, optimize=False)
    return np.log(mel + LOG_OFFSET, dtype=np.float32)


def log_mel_patches(waveform: np.ndarray) -> np.ndarray:
    """(samples,) waveform at 16 kHz -> (patches, 1, 96, 64) float32, padded as YAMNet pads."""
    waveform = np.asarray(waveform, dtype=np.float32)
    padded = np.zeros(padded_length(waveform.size), dtype=np.float32)
    padded[: waveform.size] = waveform
    spectrogram = log_mel_spectrogram(padded)
    windows = np.lib.stride_tricks.sliding_window_view(spectrogram, PATCH_FRAMES, axis=0)[::PATCH_HOP_FRAMES]
    # sliding_window_view puts the window axis last: (patches, 64, 96) -> (patches, 1, 96, 64).
    return np.ascontiguousarray(windows.transpose(0, 2, 1)[:, np.newaxis])


@dataclass(frozen=True)
class Segment:
    """One model input cut from a clip, with the time span it covers (seconds)."""

    data: np.ndarray
    start_s: float
    end_s: float


def patch_segments(waveform: np.ndarray) -> list[Segment]:
    """The clip's YAMNet patches with their time spans (the last one may reach past the clip's end)."""
    patches = log_mel_patches(waveform)
    return [
        Segment(patch, i * PATCH_HOP_SECONDS, i * PATCH_HOP_SECONDS + PATCH_SECONDS)
        for i, patch in enumerate(patches)
    ]


def window_segments(
    waveform: np.ndarray, sample_rate_hz: int, window_s: float, min_s: float = 0.1
) -> list[Segment]:
    """A waveform model's segments: consecutive windows of ``window_s`` (the last one shorter),
    each at least ``min_s`` long (a shorter clip is zero-padded to it)."""
    window = max(1, round(window_s * sample_rate_hz))
    shortest = max(1, round(min_s * sample_rate_hz))
    waveform = np.asarray(waveform, dtype=np.float32)
    segments = []
    for start in range(0, max(waveform.size, 1), window):
        data = waveform[start : start + window]
        end_s = (start + data.size) / sample_rate_hz
        if data.size < shortest:
            if segments:  # a sliver after full windows adds nothing but padding
                break
            data = np.pad(data, (0, shortest - data.size))
        segments.append(Segment(np.ascontiguousarray(data), start / sample_rate_hz, end_s))
    return segments
