"""Zero-shot with as many candidate labels as the API promises (256), more than the text encoder
takes in one call (64): fusion splits the prompts into calls it accepts, in order."""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from mmserve.v1 import fusion_pb2, fusion_pb2_grpc
from scripts.stack import ServiceProcess, start_service
from services.common.matrix import from_matrix
from services.common.settings import FusionSettings, TextSettings
from services.fusion.servicer import ZERO_SHOT_PROMPT
from tests.integration.test_fusion_clip import clip_dir, in_process_similarity, png  # noqa: F401 - fixture

TEXTS = ["a photo of a cat", "a blue square", "a red circle"]
# The tiny CLIP's vocabulary spells unknown words letter by letter: two letters make each label unique.
LABELS = [f"{a}{b}x" for a, b in itertools.product(string.ascii_lowercase, repeat=2)][
    : FusionSettings.max_candidate_labels
]


@pytest.fixture(scope="module")
def fusion(clip_dir: Path, tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator:  # noqa: F811
    started: list[ServiceProcess] = []
    try:
        for kind in ("text", "vision"):
            started.append(start_service(kind, args=["--model", str(clip_dir)], log_dir=log_dir))
        heads = tmp_path_factory.mktemp("no-heads")
        args = ["--text-address", started[0].address, "--vision-address", started[1].address]
        started.append(start_service("fusion", args=[*args, "--heads-dir", str(heads)], log_dir=log_dir))
        with grpc.insecure_channel(started[2].address) as channel:
            yield fusion_pb2_grpc.FusionServiceStub(channel)
    finally:
        for service in reversed(started):
            service.stop()


def zero_shot(reply: fusion_pb2.SimilarityResponse) -> list[dict[str, float]]:
    return [{score.label: score.score for score in result.labels} for result in reply.zero_shot]


def test_the_promised_number_of_labels_is_answered_in_order(clip_dir: Path, fusion) -> None:  # noqa: F811
    assert len(TEXTS) + len(LABELS) > TextSettings.max_items_per_request  # more than one text call
    images = [png(seed) for seed in range(2)]
    reply = fusion.Similarity(
        fusion_pb2.SimilarityRequest(texts=TEXTS, images=images, candidate_labels=LABELS), timeout=60
    )
    full = zero_shot(reply)
    assert [len(result) for result in full] == [len(LABELS)] * len(images)

    # Every label's probability is the in-process model's: the chunks came back in order.
    logits = 100.0 * in_process_similarity(clip_dir, [ZERO_SHOT_PROMPT.format(lb) for lb in LABELS], images).T
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    for served, row in zip(full, expected, strict=True):
        np.testing.assert_allclose([served[label] for label in LABELS], row, atol=1e-4)
    np.testing.assert_allclose(
        from_matrix(reply.scores), in_process_similarity(clip_dir, TEXTS, images), atol=1e-4
    )

    # A smaller call over a subset ranks that subset the same way, with the same relative odds.
    subset = LABELS[::17]
    small = zero_shot(
        fusion.Similarity(
            fusion_pb2.SimilarityRequest(texts=TEXTS, images=images, candidate_labels=subset), timeout=60
        )
    )
    for big_result, small_result in zip(full, small, strict=True):
        restricted = np.array([big_result[label] for label in subset])
        np.testing.assert_allclose(
            restricted / restricted.sum(), [small_result[label] for label in subset], atol=1e-4
        )
        assert sorted(subset, key=lambda label: -big_result[label]) == list(small_result)
