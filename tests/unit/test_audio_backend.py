"""The audio service's model choice, execution providers and pooling, without loading a model."""

from __future__ import annotations

import numpy as np
import pytest

from services.audio.backend import model_family, pool_embeddings, pool_scores, top_labels
from services.common.onnx_session import CPU_PROVIDER, check_float32, providers_for
from services.common.settings import AudioSettings


@pytest.mark.parametrize(
    ("model", "family"),
    [("", "yamnet"), ("yamnet", "yamnet"), ("/m/enc.onnx", "onnx"), ("/m/ENC.ONNX", "onnx"),
     ("/models/wav2vec2", "transformers"), ("laion/clap-htsat-unfused", "transformers")],
)  # fmt: skip
def test_the_model_setting_picks_the_family(model: str, family: str) -> None:
    assert model_family(AudioSettings(model=model)) == family


def test_devices_map_to_onnxruntime_providers() -> None:
    assert providers_for("cpu") == [CPU_PROVIDER]
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert providers_for("auto") == [CPU_PROVIDER]
        with pytest.raises(ValueError, match="install onnxruntime-gpu"):
            providers_for("cuda:0")
    with pytest.raises(ValueError, match="choose auto, cpu, cuda or cuda:N"):
        providers_for("tpu")
    check_float32("auto")
    with pytest.raises(ValueError, match="float32"):
        check_float32("float16")


def test_a_clip_is_the_normalised_mean_of_its_segments() -> None:
    rows = np.array([[3.0, 0.0], [1.0, 2.0]], np.float32)
    np.testing.assert_allclose(pool_embeddings(rows), [2 / np.sqrt(5), 1 / np.sqrt(5)], rtol=1e-6)
    np.testing.assert_allclose(pool_scores(np.array([[0.2, 0.9], [0.4, 0.1]])), [0.3, 0.5], rtol=1e-6)
    assert top_labels(np.array([0.1, 0.7, 0.7, 0.2]), ["a", "b", "c", "d"], 3) == [
        ("b", pytest.approx(0.7)), ("c", pytest.approx(0.7)), ("d", pytest.approx(0.2))
    ]  # fmt: skip
