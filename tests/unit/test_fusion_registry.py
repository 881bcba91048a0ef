"""The head registry: hot loading, refusal of corrupt heads and of heads for other encoders."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from services.common.backend import EncoderInfo
from services.common.errors import FailedPrecondition, NotFound
from services.fusion import registry as registry_module
from services.fusion.heads import MANIFEST_FILE, WEIGHTS_FILE, IncompatibleHead, save_head
from services.fusion.manifest import MAX_INPUT_DIM, MAX_MANIFEST_BYTES, MAX_MANIFEST_DEPTH
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


# --------------------------------------------------------------------------- hostile or corrupt heads


@pytest.fixture
def metrics() -> CollectorRegistry:
    return CollectorRegistry()


def rejected(metrics: CollectorRegistry, reason: str) -> float:
    return metrics.get_sample_value("mmserve_fusion_heads_rejected_total", {"reason": reason}) or 0.0


def rewrite_manifest(directory: Path, **changes) -> None:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def deeply_nested(directory: Path) -> None:
    (directory / MANIFEST_FILE).write_text("[" * 200_000 + "]" * 200_000)


def huge_input_dims(directory: Path) -> None:
    rewrite_manifest(directory, input_dims={"text": 10**12, "image": IMAGE.embedding_dim})


def oversized_manifest(directory: Path) -> None:
    rewrite_manifest(directory, metrics={"note": "x" * (MAX_MANIFEST_BYTES + 1)})


def nested_metrics(directory: Path) -> None:
    nested: dict = {}
    for _ in range(200):  # parses fine, but would be echoed by ListHeads
        nested = {"n": nested}
    rewrite_manifest(directory, metrics=nested)


def infinite_config(directory: Path) -> None:
    (directory / MANIFEST_FILE).write_text(
        (directory / MANIFEST_FILE).read_text().replace('"hidden_dim": 8', '"hidden_dim": Infinity')
    )


@pytest.mark.parametrize(
    ("corrupt", "reason", "message"),
    [
        (deeply_nested, "too_large", "nested too deeply"),
        (huge_input_dims, "too_large", f"exceeds the bound {MAX_INPUT_DIM}"),
        (oversized_manifest, "too_large", f"over the limit {MAX_MANIFEST_BYTES}"),
        (nested_metrics, "too_large", f"nested deeper than {MAX_MANIFEST_DEPTH}"),
        (infinite_config, "invalid", "hidden_dim"),
    ],
)
def test_a_hostile_head_is_refused_alone_and_counted(
    tmp_path: Path, encoders: Encoders, metrics: CollectorRegistry, caplog, corrupt, reason, message
) -> None:
    registry = HeadRegistry(tmp_path, encoders, interval_s=1, metrics_registry=metrics)
    save(tmp_path / "a_bad")
    corrupt(tmp_path / "a_bad")
    save(tmp_path / "b_good")
    began = time.monotonic()

    async def start_and_stop() -> None:
        await registry.start()  # the first scan is where a bad head used to stop the service
        await registry.stop()

    asyncio.run(start_and_stop())
    assert time.monotonic() - began < 10
    assert names(registry) == ["b_good"]
    assert registry.get("b_good").predict_proba(PROBE_TEXT, PROBE_IMAGE).shape == (3, 2)
    with pytest.raises(FailedPrecondition, match=message):
        registry.get("a_bad")
    assert rejected(metrics, reason) == 1
    (line,) = [r for r in caplog.records if "head refused" in r.getMessage()]
    assert line.levelno == logging.WARNING and "a_bad" in line.getMessage()

    save(tmp_path / "c_new")  # hot reload carries on for the others
    scan(registry)
    assert names(registry) == ["b_good", "c_new"]
    assert rejected(metrics, reason) == 1, "an unchanged bad head is counted once"


def test_a_manifest_sizing_a_giant_module_is_refused_before_allocating(
    tmp_path: Path, registry: HeadRegistry
) -> None:
    """Dims within the bounds, but 65536 x 65536 layers (16 GiB): the weights don't match, and the
    module is never built for real."""
    save(tmp_path / "giant")
    rewrite_manifest(
        tmp_path / "giant",
        input_dims={"text": MAX_INPUT_DIM, "image": MAX_INPUT_DIM},
        config={"fused_dim": MAX_INPUT_DIM, "hidden_dim": MAX_INPUT_DIM},
    )
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    began = time.monotonic()
    scan(registry)
    assert time.monotonic() - began < 10
    with pytest.raises(FailedPrecondition, match="but the manifest .* implies"):
        registry.get("giant")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert grown < 512 * 1024 * 1024, f"peak memory grew by {grown} bytes"


def test_an_oversized_weights_file_is_refused_before_reading(
    tmp_path: Path, encoders: Encoders, metrics: CollectorRegistry
) -> None:
    save(tmp_path / "a")
    size = (tmp_path / "a" / WEIGHTS_FILE).stat().st_size
    registry = HeadRegistry(
        tmp_path, encoders, interval_s=1, max_weights_bytes=size - 1, metrics_registry=metrics
    )
    scan(registry)
    assert names(registry) == []
    with pytest.raises(FailedPrecondition, match=f"{size} bytes, over the limit {size - 1}"):
        registry.get("a")
    assert rejected(metrics, "too_large") == 1


def test_symlinks_out_of_the_heads_directory_are_refused(
    tmp_path: Path, encoders: Encoders, metrics: CollectorRegistry
) -> None:
    heads, outside = tmp_path / "heads", tmp_path / "elsewhere"
    save(outside / "linked_dir")
    save(outside / "weights_src")
    (heads / "linked_dir").parent.mkdir()
    (heads / "linked_dir").symlink_to(outside / "linked_dir", target_is_directory=True)
    save(heads / "linked_file")
    (heads / "linked_file" / WEIGHTS_FILE).unlink()
    (heads / "linked_file" / WEIGHTS_FILE).symlink_to(outside / "weights_src" / WEIGHTS_FILE)
    # A symlink that stays inside the heads directory is fine.
    save(heads / ".store" / "inside")
    save(heads / "inside")
    (heads / "inside" / WEIGHTS_FILE).unlink()
    (heads / "inside" / WEIGHTS_FILE).symlink_to(Path("..") / ".store" / "inside" / WEIGHTS_FILE)

    registry = HeadRegistry(heads, encoders, interval_s=1, metrics_registry=metrics)
    scan(registry)
    assert names(registry) == ["inside"]
    with pytest.raises(FailedPrecondition, match="directory resolves outside the heads directory"):
        registry.get("linked_dir")
    with pytest.raises(FailedPrecondition, match=f"{WEIGHTS_FILE} resolves outside the heads directory"):
        registry.get("linked_file")
    assert rejected(metrics, "outside_heads_dir") == 2


def test_an_unexpected_failure_loading_one_head_spares_the_others(
    tmp_path: Path, encoders: Encoders, metrics: CollectorRegistry, monkeypatch
) -> None:
    """A failure no check anticipated (a bug, an input nobody thought of) is that head's alone."""
    real_load = registry_module.load_head

    def load_or_break(directory: Path, *args):
        if directory.name == "boom":
            raise KeyError("a bug in the loader")
        return real_load(directory, *args)

    monkeypatch.setattr(registry_module, "load_head", load_or_break)
    save(tmp_path / "boom")
    save(tmp_path / "fine")
    registry = HeadRegistry(tmp_path, encoders, interval_s=1, metrics_registry=metrics)
    scan(registry)
    assert names(registry) == ["fine"]
    with pytest.raises(FailedPrecondition, match=r"could not be loaded \(KeyError\)"):
        registry.get("boom")
    assert rejected(metrics, "unexpected") == 1
