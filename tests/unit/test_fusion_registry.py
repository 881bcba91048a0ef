"""The head registry: hot loading, refusal of corrupt heads and of heads for other encoders."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from services.common.backend import EncoderInfo
from services.common.errors import FailedPrecondition, NotFound
from services.fusion.heads import MANIFEST_FILE, WEIGHTS_FILE, IncompatibleHead, save_head
from services.fusion.registry import HeadRegistry, check_head
from services.fusion.strategies import build_model

TEXT = EncoderInfo("minilm", "sha256:aaa", 12)
IMAGE = EncoderInfo("efficientnet-lite0", "sha256:bbb", 20)
ENCODERS = {
    "text": {"model_id": TEXT.model_id, "revision": TEXT.revision},
    "image": {"model_id": IMAGE.model_id, "revision": IMAGE.revision},
}
PROBE_TEXT = np.random.default_rng(0).standard_normal((3, TEXT.embedding_dim)).astype(np.float32)
PROBE_IMAGE = np.random.default_rng(1).standard_normal((3, IMAGE.embedding_dim)).astype(np.float32)


def save(directory: Path, seed: int = 0, strategy: str = "weighted_sum", encoders=ENCODERS) -> None:
    torch.manual_seed(seed)
    module = build_model(
        strategy, TEXT.embedding_dim, IMAGE.embedding_dim, {"fused_dim": 8, "hidden_dim": 8}, num_outputs=2
    )
    save_head(
        directory,
        module,
        strategy=strategy,
        input_dims={"text": TEXT.embedding_dim, "image": IMAGE.embedding_dim},
        config={"fused_dim": 8, "hidden_dim": 8},
        encoders=encoders,
        labels=("no", "yes"),
    )


class Encoders:
    """What the registry reads from the encoders; a test swaps models or takes one down."""

    def __init__(self) -> None:
        self.infos: dict[str, EncoderInfo | None] = {"text": TEXT, "image": IMAGE}

    async def __call__(self) -> dict[str, EncoderInfo | None]:
        return dict(self.infos)


def scan(registry: HeadRegistry) -> None:
    asyncio.run(registry.scan())


@pytest.fixture
def encoders() -> Encoders:
    return Encoders()


@pytest.fixture
def registry(tmp_path: Path, encoders: Encoders) -> HeadRegistry:
    return HeadRegistry(tmp_path, encoders, interval_s=0.05)


def names(registry: HeadRegistry) -> list[str]:
    return [head.name for head in registry.served()]


def test_new_changed_and_removed_heads_follow_the_directory(tmp_path: Path, registry: HeadRegistry) -> None:
    scan(registry)
    assert names(registry) == []
    save(tmp_path / "a")
    scan(registry)
    first = registry.get("a").predict_proba(PROBE_TEXT, PROBE_IMAGE)

    save(tmp_path / "a", seed=1)
    scan(registry)
    second = registry.get("a").predict_proba(PROBE_TEXT, PROBE_IMAGE)
    assert not np.allclose(first, second), "the rewritten head is served"

    shutil.rmtree(tmp_path / "a")
    scan(registry)
    assert names(registry) == []
    with pytest.raises(NotFound, match="no head named 'a'"):
        registry.get("a")


def test_a_corrupt_update_keeps_the_previous_version(tmp_path: Path, registry: HeadRegistry, caplog) -> None:
    save(tmp_path / "a")
    scan(registry)
    before = registry.get("a").predict_proba(PROBE_TEXT, PROBE_IMAGE)
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes(b"\x00 not safetensors")
    scan(registry)
    assert "previously loaded version keeps serving" in caplog.text
    np.testing.assert_array_equal(registry.get("a").predict_proba(PROBE_TEXT, PROBE_IMAGE), before)

    caplog.clear()
    scan(registry)
    assert "head refused" not in caplog.text, "the same broken files are reported once"

    save(tmp_path / "a", seed=3)
    scan(registry)
    assert not np.allclose(registry.get("a").predict_proba(PROBE_TEXT, PROBE_IMAGE), before)


def test_a_head_that_never_loaded_is_refused_with_the_reason(tmp_path: Path, registry: HeadRegistry) -> None:
    save(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / MANIFEST_FILE).read_text())
    manifest["weights_sha256"] = "0" * 64
    (tmp_path / "b" / MANIFEST_FILE).write_text(json.dumps(manifest))
    scan(registry)
    assert names(registry) == []
    with pytest.raises(FailedPrecondition, match="corrupt or replaced weights") as caught:
        registry.get("b")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_incomplete_and_staging_directories_are_ignored(
    tmp_path: Path, registry: HeadRegistry, caplog
) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / WEIGHTS_FILE).write_bytes(b"still copying")
    save(tmp_path / "staged")
    (tmp_path / "staged").rename(tmp_path / ".staged")
    scan(registry)
    assert names(registry) == [] and "refused" not in caplog.text


def test_heads_for_other_encoders_are_not_served(
    tmp_path: Path, registry: HeadRegistry, encoders: Encoders
) -> None:
    save(tmp_path / "ours")
    save(tmp_path / "theirs", encoders={**ENCODERS, "text": {"model_id": "bge-small", "revision": ""}})
    scan(registry)
    assert names(registry) == ["ours"]
    with pytest.raises(IncompatibleHead, match="trained on text encoder bge-small"):
        registry.get("theirs")

    # The text encoder restarts with another revision of its model: "ours" no longer fits it.
    encoders.infos["text"] = EncoderInfo(TEXT.model_id, "sha256:ccc", TEXT.embedding_dim)
    scan(registry)
    assert names(registry) == []
    encoders.infos["text"] = TEXT
    scan(registry)
    assert names(registry) == ["ours"]


def test_an_encoder_never_reached_is_not_held_against_a_head(
    tmp_path: Path, registry: HeadRegistry, encoders
) -> None:
    save(tmp_path / "a")
    encoders.infos = {"text": TEXT, "image": None}
    scan(registry)
    head = registry.get("a")
    # The embeddings' own models are checked before the head runs on them.
    registry.check(head, {"text": TEXT})
    with pytest.raises(IncompatibleHead, match="dim 20.*dim 64"):
        registry.check(head, {"image": EncoderInfo(IMAGE.model_id, IMAGE.revision, 64)})


def test_check_head_reads_only_the_modalities_the_head_uses(tmp_path: Path) -> None:
    save(tmp_path / "t", strategy="text_only")
    from services.fusion.heads import load_head

    manifest = load_head(tmp_path / "t").manifest
    check_head(manifest, {"text": TEXT, "image": EncoderInfo("another-vision-model", "", 512)})
    with pytest.raises(IncompatibleHead):
        check_head(manifest, {"text": EncoderInfo("another-text-model", "", 12), "image": IMAGE})


def test_the_watcher_picks_up_a_new_head_without_a_rescan_call(
    tmp_path: Path, registry: HeadRegistry
) -> None:
    async def scenario() -> list[str]:
        await registry.start()
        save(tmp_path / "late")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if names(registry):
                break
        await registry.stop()
        return names(registry)

    assert asyncio.run(scenario()) == ["late"]


def test_a_missing_heads_directory_serves_nothing(tmp_path: Path, encoders: Encoders) -> None:
    registry = HeadRegistry(tmp_path / "absent", encoders, interval_s=1)
    scan(registry)
    assert names(registry) == []
    os.mkdir(tmp_path / "absent")
    save(tmp_path / "absent" / "a")
    scan(registry)
    assert names(registry) == ["a"]
