"""Similarity math and the rule for when two encoders share one embedding space."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from services.common.backend import EncoderInfo
from services.fusion.similarity import cosine_matrix, native_space_reason, same_checkpoint, zero_shot

CLIP_TEXT = EncoderInfo("/models/clip-vit-b32", "sha256:0123456789ab", 512)
CLIP_IMAGE = EncoderInfo("/models/clip-vit-b32/", "sha256:0123456789ab", 512)  # another spelling, same files


def test_two_towers_of_one_local_checkpoint_share_a_space() -> None:
    assert native_space_reason(CLIP_TEXT, CLIP_IMAGE) == ""


def test_other_weights_under_the_same_path_do_not() -> None:
    retrained = EncoderInfo(CLIP_TEXT.model_id, "sha256:ffffffffffff", 512)
    assert not same_checkpoint(retrained, CLIP_IMAGE)


@pytest.mark.parametrize(
    ("text_revision", "image_revision", "shared"),
    [("main", "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268", True), ("abc", "abc", True), ("abc", "def", False)],
)
def test_hub_checkpoints_compare_ids_and_pinned_revisions(text_revision, image_revision, shared) -> None:
    text = EncoderInfo("openai/clip-vit-base-patch32", text_revision, 512)
    image = EncoderInfo("openai/clip-vit-base-patch32", image_revision, 512)
    assert (native_space_reason(text, image) == "") is shared


def test_separately_trained_encoders_do_not_share_a_space_even_at_equal_dims() -> None:
    text = EncoderInfo("sentence-transformers/all-MiniLM-L6-v2", "sha256:aaaaaaaaaaaa", 384)
    image = EncoderInfo("efficientnet-lite0", "sha256:bbbbbbbbbbbb", 384)
    reason = native_space_reason(text, image)
    assert "do not share an embedding space" in reason
    assert "all-MiniLM-L6-v2" in reason and "efficientnet-lite0" in reason and "alignment head" in reason


def test_mismatched_dims_are_refused() -> None:
    assert native_space_reason(CLIP_TEXT, EncoderInfo(CLIP_IMAGE.model_id, CLIP_IMAGE.revision, 768)) != ""


def test_cosine_matrix_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    expected = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a])
    np.testing.assert_allclose(cosine_matrix(a, b), expected, atol=1e-6)
    assert cosine_matrix(a[:0], b).shape == (0, 4)


def test_a_zero_vector_has_zero_similarity_not_nan() -> None:
    scores = cosine_matrix(np.zeros((1, 4)), np.ones((2, 4)))
    assert np.all(scores == 0)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float32, (2, 6), elements=st.floats(-10, 10, width=32)),
    arrays(np.float32, (3, 6), elements=st.floats(-10, 10, width=32)),
    st.floats(1.0, 100.0),
)
def test_zero_shot_is_a_ranked_distribution(images, labels_vectors, scale) -> None:
    labels = ["cat", "dog", "bird"]
    results = zero_shot(labels_vectors, images, labels, scale)
    assert len(results) == 2
    for ranked in results:
        assert sorted(name for name, _ in ranked) == sorted(labels)
        scores = [p for _, p in ranked]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-6)
        assert all(np.isfinite(scores))


def test_zero_shot_ranks_the_aligned_label_first_and_sharpens_with_the_scale() -> None:
    labels_vectors = np.eye(3, dtype=np.float32)
    image = np.array([[0.9, 0.3, 0.1]], dtype=np.float32)
    soft = dict(zero_shot(labels_vectors, image, ["a", "b", "c"], 1.0)[0])
    sharp = dict(zero_shot(labels_vectors, image, ["a", "b", "c"], 100.0)[0])
    assert max(soft, key=soft.get) == "a" and sharp["a"] > soft["a"] > 1 / 3
