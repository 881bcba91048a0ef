"""YAMNet's front end (services/audio/features.py) against references written here from the
formulas, independently of the numpy implementation: the HTK mel scale, TensorFlow's mel-domain
triangles, librosa's Hz-domain construction of the same HTK filters, a periodic Hann window, a
plain DFT, and YAMNet's padding and patch framing."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest

from services.audio import features
from services.audio.features import (
    PATCH_SAMPLES,
    log_mel_patches,
    log_mel_spectrogram,
    mel_weight_matrix,
    num_patches,
    padded_length,
    window_segments,
)


def htk_mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


def htk_hz(mel: float) -> float:
    return 700.0 * (math.exp(mel / 1127.0) - 1.0)


def band_edges_mel() -> list[float]:
    low, high = htk_mel(125.0), htk_mel(7500.0)
    return [low + i * (high - low) / 65 for i in range(66)]


def reference_tf_mel_matrix() -> np.ndarray:
    """tf.signal.linear_to_mel_weight_matrix(64, 257, 16000, 125, 7500), element by element:
    triangles in mel, evaluated at each FFT bin's mel value; the DC bin weighs nothing."""
    edges = band_edges_mel()
    matrix = np.zeros((257, 64))
    for k in range(1, 257):
        mel = htk_mel(k * 8000.0 / 256)
        for band in range(64):
            low, center, high = edges[band : band + 3]
            matrix[k, band] = max(0.0, min((mel - low) / (center - low), (high - mel) / (high - center)))
    return matrix


def reference_librosa_htk_matrix() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None)'s
    construction: the same HTK band edges, but triangles linear in Hz."""
    edges = [htk_hz(m) for m in band_edges_mel()]
    matrix = np.zeros((257, 64))
    for k in range(257):
        hz = k * 8000.0 / 256
        for band in range(64):
            low, center, high = edges[band : band + 3]
            matrix[k, band] = max(0.0, min((hz - low) / (center - low), (high - hz) / (high - center)))
    return matrix


def test_mel_matrix_is_tensorflows_htk_matrix() -> None:
    matrix = mel_weight_matrix()
    assert matrix.shape == (257, 64) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, reference_tf_mel_matrix(), atol=1e-6)
    assert not matrix[0].any(), "the DC bin carries no weight"


def test_mel_matrix_agrees_with_librosas_htk_filters_up_to_the_interpolation_domain() -> None:
    """librosa interpolates the triangles in Hz, TensorFlow (which YAMNet was trained with) in mel:
    same bands, same peaks, weights within 0.005."""
    ours, librosa_like = mel_weight_matrix(), reference_librosa_htk_matrix()
    assert (ours.argmax(axis=0) == librosa_like.argmax(axis=0)).all()
    assert np.abs(ours - librosa_like).max() < 0.005


def test_log_mel_spectrogram_is_the_stft_magnitude_through_the_mel_matrix() -> None:
    rng = np.random.default_rng(0)
    waveform = rng.uniform(-1, 1, 16_000).astype(np.float32)
    spectrogram = log_mel_spectrogram(waveform)
    assert spectrogram.shape == (1 + (16_000 - 400) // 160, 64)  # no centring: frames start at 0
    hann = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / 400) for n in range(400)])  # periodic
    dft = np.exp(-2j * np.pi * np.outer(np.arange(512), np.arange(257)) / 512)[:400]  # zero-padded to 512
    mel = reference_tf_mel_matrix()
    for frame in (0, 7, 97):
        chunk = waveform[frame * 160 : frame * 160 + 400].astype(np.float64)
        magnitude = np.abs((chunk * hann) @ dft)
        np.testing.assert_allclose(spectrogram[frame], np.log(magnitude @ mel + 0.001), rtol=1e-4, atol=1e-4)


def test_silence_is_the_log_offset() -> None:
    assert np.allclose(log_mel_spectrogram(np.zeros(4000, np.float32)), math.log(0.001))


@pytest.mark.parametrize(
    ("samples", "patches"),
    [
        (1, 1),
        (PATCH_SAMPLES, 1),
        (PATCH_SAMPLES + 1, 2),
        (PATCH_SAMPLES + 7680, 2),
        (48_000, 6),
        (160_000, 20),
    ],
)
def test_padding_and_patch_count_follow_yamnets_pad_waveform(samples: int, patches: int) -> None:
    """At least 0.975 s, then whole hops of 0.48 s (yamnet/features.py pad_waveform)."""
    assert num_patches(samples) == patches
    length = padded_length(samples)
    assert length >= max(samples, PATCH_SAMPLES) and (length - PATCH_SAMPLES) % 7680 == 0
    assert log_mel_patches(np.ones(samples, np.float32)).shape == (patches, 1, 96, 64)


def test_patches_are_96_frames_every_48() -> None:
    waveform = np.random.default_rng(1).standard_normal(3 * 16_000).astype(np.float32)
    patches = log_mel_patches(waveform)
    padded = np.zeros(padded_length(waveform.size), np.float32)
    padded[: waveform.size] = waveform
    spectrogram = log_mel_spectrogram(padded)
    for index, patch in enumerate(patches):
        np.testing.assert_array_equal(patch[0], spectrogram[index * 48 : index * 48 + 96])


def test_the_packaged_graph_takes_one_96_by_64_patch() -> None:
    """What the ONNX export expects is what the front end makes: (batch, 1, 96 frames, 64 bands)."""
    import onnx

    from services.audio.yamnet import INPUT, package_data_dir

    with zipfile.ZipFile(package_data_dir() / "YamNet_float.onnx.zip") as bundle:
        name = next(n for n in bundle.namelist() if n.endswith(".onnx"))
        graph = onnx.load_model_from_string(bundle.read(name)).graph
    (single,) = graph.input
    dims = [d.dim_value for d in single.type.tensor_type.shape.dim]
    assert single.name == INPUT and dims == [1, 1, features.PATCH_FRAMES, features.MEL_BANDS]


def test_window_segments_cover_the_clip() -> None:
    waveform = np.arange(25_000, dtype=np.float32)
    segments = window_segments(waveform, 10_000, 1.0)
    assert [(s.start_s, s.end_s, s.data.size) for s in segments] == [
        (0.0, 1.0, 10_000),
        (1.0, 2.0, 10_000),
        (2.0, 2.5, 5_000),
    ]
    (short,) = window_segments(np.ones(10, np.float32), 10_000, 1.0)
    assert short.data.size == 1_000 and short.end_s == 0.001, "a very short clip is padded to 0.1 s"
