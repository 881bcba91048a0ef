"""Heads on disk: save/load round trip, input and mask rules, refusal of corrupt or mismatched heads."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from services.common.backend import ModelDescription
from services.common.errors import FailedPrecondition, InvalidInput
from services.fusion.heads import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    EncoderRef,
    HeadLoadError,
    IncompatibleHead,
    check_compatible,
    load_head,
    save_head,
    update_metrics,
)
from services.fusion.strategies import CLASSIFICATION_STRATEGIES, build_model

TEXT_DIM, IMAGE_DIM = 12, 20
CONFIG = {"fused_dim": 8, "hidden_dim": 16, "dropout": 0.1}
ENCODERS = {
    "text": {"model_id": "sentence-transformers/all-MiniLM-L6-v2", "revision": "sha256:aaa"},
    "image": {"model_id": "efficientnet-lite0", "revision": "sha256:bbb"},
}
LABELS = ("cat", "dog", "fish")


def _save(directory: Path, strategy: str, seed: int = 0, text_dim: int = TEXT_DIM):
    torch.manual_seed(seed)
    alignment = strategy == "alignment"
    config = {"fused_dim": 8} if alignment else CONFIG
    module = build_model(strategy, text_dim, IMAGE_DIM, config, num_outputs=0 if alignment else len(LABELS))
    # Move every parameter off its initial value so a load that silently skipped one would show.
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    manifest = save_head(
        directory,
        module,
        strategy=strategy,
        input_dims={"text": text_dim, "image": IMAGE_DIM},
        config=config,
        encoders=ENCODERS,
        labels=() if alignment else LABELS,
        metrics={"test_accuracy": 0.5},
    )
    return module.eval(), manifest


def _inputs(n: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, TEXT_DIM)).astype(np.float32), rng.standard_normal((n, IMAGE_DIM)).astype(
        np.float32
    )


def _all(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


@pytest.mark.parametrize("strategy", CLASSIFICATION_STRATEGIES)
def test_classifier_round_trip_reproduces_outputs(tmp_path: Path, strategy: str) -> None:
    module, saved = _save(tmp_path / "h1", strategy)
    head = load_head(tmp_path / "h1")
    text, image = _inputs()
    with torch.no_grad():
        expected_probs = torch.softmax(
            module(torch.from_numpy(text), torch.from_numpy(image), _all(5), _all(5)), -1
        )
        expected_embed = module.embed(torch.from_numpy(text), torch.from_numpy(image), _all(5), _all(5))
    np.testing.assert_allclose(head.predict_proba(text, image), expected_probs.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(head.embed(text, image), expected_embed.numpy(), rtol=1e-6, atol=1e-7)
    assert head.manifest == saved
    assert head.name == "h1" and head.labels == LABELS and head.fused_dim == 8
    assert head.manifest.encoders["text"] == EncoderRef(**ENCODERS["text"])
    assert head.manifest.metrics == {"test_accuracy": 0.5}
    # Inference is deterministic: dropout is off in the loaded head.
    np.testing.assert_array_equal(head.predict_proba(text, image), head.predict_proba(text, image))


def test_alignment_round_trip(tmp_path: Path) -> None:
    module, _ = _save(tmp_path / "align", "alignment")
    head = load_head(tmp_path / "align")
    text, image = _inputs()
    with torch.no_grad():
        np.testing.assert_allclose(
            head.project_text(text), module.project_text(torch.from_numpy(text)).numpy(), rtol=1e-6
        )
        np.testing.assert_allclose(
            head.project_image(image), module.project_image(torch.from_numpy(image)).numpy(), rtol=1e-6
        )
    np.testing.assert_allclose(np.linalg.norm(head.project_image(image), axis=1), 1.0, rtol=1e-5)
    assert head.logit_scale == pytest.approx(module.logit_scale.item())
    assert head.task == "alignment" and head.labels == ()
    with pytest.raises(FailedPrecondition, match="alignment head; it has nothing to predict"):
        head.predict_proba(text, image)
    assert head.embed(text, None).shape == (5, 8)


def test_classifier_heads_have_no_projections(tmp_path: Path) -> None:
    _save(tmp_path / "cls", "gated")
    head = load_head(tmp_path / "cls")
    with pytest.raises(FailedPrecondition, match="not an alignment head"):
        head.project_text(_inputs()[0])
    with pytest.raises(FailedPrecondition):
        _ = head.logit_scale


@pytest.mark.parametrize("strategy", ["weighted_sum", "concat_mlp", "gated"])
def test_mixed_batch_equals_rows_sent_alone(tmp_path: Path, strategy: str) -> None:
    """A mask marks rows missing a modality; the result equals sending each row with None for it."""
    _save(tmp_path / "h", strategy)
    head = load_head(tmp_path / "h")
    text, image = _inputs(4)
    text_mask = np.array([True, True, False, True])
    image_mask = np.array([True, False, True, True])
    text[~text_mask] = np.nan  # absent rows may hold anything
    mixed = head.predict_proba(text, image, text_mask, image_mask)
    np.testing.assert_allclose(mixed[1], head.predict_proba(text[1:2], None)[0], rtol=1e-5)
    np.testing.assert_allclose(mixed[2], head.predict_proba(None, image[2:3])[0], rtol=1e-5)
    np.testing.assert_allclose(mixed[[0, 3]], head.predict_proba(text[[0, 3]], image[[0, 3]]), rtol=1e-5)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-5)


def test_input_validation(tmp_path: Path) -> None:
    _save(tmp_path / "h", "weighted_sum")
    head = load_head(tmp_path / "h")
    text, image = _inputs(3)
    with pytest.raises(InvalidInput, match="give text or image"):
        head.embed(None, None)
    with pytest.raises(InvalidInput, match=r"shape \[N, 12\]"):
        head.embed(np.zeros((3, 13), np.float32), image)
    with pytest.raises(InvalidInput, match="3 rows but image has 2"):
        head.embed(text, image[:2])
    with pytest.raises(InvalidInput, match="neither text nor image"):
        head.embed(text, image, np.array([True, False, True]), np.array([True, False, True]))
    with pytest.raises(InvalidInput, match="no image embeddings were given"):
        head.embed(text, None, None, np.array([True, True, True]))
    with pytest.raises(InvalidInput, match="bool array"):
        head.embed(text, image, np.array([1, 1, 1]))
    with pytest.raises(InvalidInput, match="floating point"):
        head.embed(text.astype(np.int64), image)
    bad = text.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        head.predict_proba(bad, image)
    # float64 input is accepted and converted.
    assert head.embed(text.astype(np.float64), image).dtype == np.float32


# --------------------------------------------------------------------------- refusing bad heads


def _manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST_FILE).read_text())


def _write_manifest(directory: Path, data: dict) -> None:
    (directory / MANIFEST_FILE).write_text(json.dumps(data))


def _rewrite_weights(directory: Path, blob: bytes) -> None:
    """Replaces the weights and fixes the manifest's sha256, so only the content is wrong."""
    (directory / WEIGHTS_FILE).write_bytes(blob)
    data = _manifest(directory)
    data["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    _write_manifest(directory, data)


@pytest.fixture
def head_dir(tmp_path: Path) -> Path:
    _save(tmp_path / "good", "concat_mlp")
    load_head(tmp_path / "good")  # sanity: it loads before the test breaks it
    return tmp_path / "good"


def test_sha_mismatch_is_refused(head_dir: Path) -> None:
    blob = bytearray((head_dir / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (head_dir / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(HeadLoadError, match="sha256 .* but the manifest expects"):
        load_head(head_dir)


def test_corrupt_safetensors_is_refused(head_dir: Path) -> None:
    _rewrite_weights(head_dir, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(HeadLoadError, match="not a valid safetensors file"):
        load_head(head_dir)


def test_pickle_is_never_loaded(head_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (marker.write_text, ("x",))

    _rewrite_weights(head_dir, pickle.dumps(Exploit()))
    with pytest.raises(HeadLoadError, match="not a valid safetensors"):
        load_head(head_dir)
    assert not marker.exists()


def test_weights_of_another_shape_are_refused(head_dir: Path) -> None:
    module = build_model("concat_mlp", TEXT_DIM + 4, IMAGE_DIM, CONFIG, num_outputs=len(LABELS))
    _rewrite_weights(head_dir, save_safetensors(module.state_dict()))
    with pytest.raises(HeadLoadError, match=r"tensor 'fusion\.\S+' has shape .* implies"):
        load_head(head_dir)


def test_weights_of_another_strategy_are_refused(head_dir: Path) -> None:
    module = build_model("weighted_sum", TEXT_DIM, IMAGE_DIM, CONFIG, num_outputs=len(LABELS))
    _rewrite_weights(head_dir, save_safetensors(module.state_dict()))
    with pytest.raises(HeadLoadError, match="do not fit strategy 'concat_mlp'"):
        load_head(head_dir)


def test_non_finite_weights_are_refused(head_dir: Path) -> None:
    module = build_model("concat_mlp", TEXT_DIM, IMAGE_DIM, CONFIG, num_outputs=len(LABELS))
    state = module.state_dict()
    state["classifier.0.bias"][0] = float("nan")
    _rewrite_weights(head_dir, save_safetensors(state))
    with pytest.raises(HeadLoadError, match="NaN or infinity"):
        load_head(head_dir)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: m.update(format_version=4), "unsupported format_version 4"),
        (lambda m: m.pop("weights_sha256"), "lacks 'weights_sha256'"),
        (lambda m: m.update(task="ranking"), "unknown task 'ranking'"),
        (lambda m: m.update(task="regression"), "does not fit its outputs"),
        (lambda m: m.update(strategy="alignment"), "not a classification strategy"),
        (lambda m: m.pop("outputs"), "lacks 'outputs'"),
        (lambda m: m.update(outputs=[]), "needs at least one output"),
        (lambda m: m["outputs"][0].update(labels=["only"]), "at least 2 unique labels"),
        (lambda m: m["outputs"][0].update(labels=["a", "a", "b"]), "at least 2 unique labels"),
        (lambda m: m["outputs"][0].update(kind="ranking"), r"outputs\[0\]\.kind must be one of"),
        (lambda m: m["outputs"][0].update(name="../x"), "not a valid name"),
        (lambda m: m["outputs"][0].update(temperature=0), "temperature must be positive"),
        (lambda m: m["outputs"][0].update(temperature=float("nan")), "must be a finite number"),
        (
            lambda m: m["outputs"][0].update(missing_temperatures={"audio": 2.0}),
            "missing_temperatures must map",
        ),
        (lambda m: m["outputs"].append(dict(m["outputs"][0])), "output names must be unique"),
        (
            lambda m: m["outputs"].append({"name": "y", "kind": "regression", "mean": 0, "std": 0}),
            r"outputs\[1\]\.std must be positive",
        ),
        (lambda m: m.update(missing_modality_policy="sometimes"), "missing_modality_policy must be one of"),
        (lambda m: m.pop("missing_modality_policy"), "lacks 'missing_modality_policy'"),
        (lambda m: m.update(fusion_weights={"audio": 1.0}), "fusion_weights must map"),
        (
            lambda m: m.update(fusion_weights={"text": 1.5}),
            r"fusion_weights\.text must be a number in \[0, 1\]",
        ),
        (lambda m: m["input_dims"].update(text=384), r"has shape .* implies"),
        (lambda m: m["input_dims"].update(text="12"), "must be int"),
        (lambda m: m["input_dims"].update(image=True), "must be int"),
        (lambda m: m["input_dims"].pop("image"), "lacks 'image'"),
        (lambda m: m["config"].update(fused_dim=16), r"has shape .* implies"),
        (lambda m: m["config"].update(depth=3), "unknown config keys"),
        (lambda m: m["encoders"].pop("text"), "lacks 'text'"),
        (lambda m: m.update(name="other"), "rename the directory or the manifest"),
        (lambda m: m.update(name="../evil"), "invalid name"),
        (lambda m: m.update(weights_sha256="abc"), "64 lower-case hex"),
    ],
)
def test_bad_manifests_are_refused_with_a_clear_message(head_dir: Path, change, message: str) -> None:
    data = _manifest(head_dir)
    change(data)
    _write_manifest(head_dir, data)
    with pytest.raises(HeadLoadError, match=message):
        load_head(head_dir)


def test_unreadable_manifest_and_missing_files(head_dir: Path, tmp_path: Path) -> None:
    (head_dir / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(HeadLoadError, match="not valid JSON"):
        load_head(head_dir)
    (head_dir / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(HeadLoadError, match="not a JSON object"):
        load_head(head_dir)
    (head_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(HeadLoadError, match="missing head.safetensors"):
        load_head(head_dir)
    with pytest.raises(HeadLoadError, match="not a directory"):
        load_head(tmp_path / "absent")


def test_head_load_error_maps_to_failed_precondition() -> None:
    assert HeadLoadError.code == grpc.StatusCode.FAILED_PRECONDITION
    assert issubclass(IncompatibleHead, FailedPrecondition)


def test_update_metrics_merges_and_keeps_the_head_loadable(head_dir: Path) -> None:
    update_metrics(head_dir, {"test_macro_f1": 0.9})
    assert load_head(head_dir).manifest.metrics == {"test_accuracy": 0.5, "test_macro_f1": 0.9}


# --------------------------------------------------------------------------- encoder compatibility


def _info(model_id: str, revision: str, dim: int) -> ModelDescription:
    return ModelDescription(
        model_id=model_id, revision=revision, embedding_dim=dim, device="cpu", dtype="float32"
    )


TEXT_OK = _info("sentence-transformers/all-MiniLM-L6-v2", "sha256:aaa", TEXT_DIM)
IMAGE_OK = _info("efficientnet-lite0", "sha256:bbb", IMAGE_DIM)


def test_check_compatible(tmp_path: Path) -> None:
    _, manifest = _save(tmp_path / "fused", "gated")
    check_compatible(manifest, TEXT_OK, IMAGE_OK)
    check_compatible(
        manifest, _info(TEXT_OK.model_id, "", TEXT_DIM), IMAGE_OK
    )  # unknown revision: not compared

    with pytest.raises(IncompatibleHead) as caught:
        check_compatible(manifest, _info("BAAI/bge-base-en", "main", 768), IMAGE_OK)
    message = str(caught.value)
    assert (
        "head 'fused' was trained on text encoder sentence-transformers/all-MiniLM-L6-v2@sha256:aaa (dim 12)"
        in message
    )
    assert "but BAAI/bge-base-en@main (dim 768) is serving" in message
    with pytest.raises(IncompatibleHead, match="image encoder efficientnet-lite0@sha256:bbb .* \\(dim 21\\)"):
        check_compatible(manifest, TEXT_OK, _info("efficientnet-lite0", "sha256:bbb", IMAGE_DIM + 1))
    with pytest.raises(IncompatibleHead, match="sha256:ccc"):
        check_compatible(manifest, TEXT_OK, _info("efficientnet-lite0", "sha256:ccc", IMAGE_DIM))
    with pytest.raises(IncompatibleHead, match="needs a image encoder .* none is serving"):
        check_compatible(manifest, TEXT_OK, None)


def test_single_modality_heads_are_checked_only_against_their_encoder(tmp_path: Path) -> None:
    _, manifest = _save(tmp_path / "t", "text_only")
    check_compatible(manifest, TEXT_OK, _info("openai/clip-vit-base-patch32", "main", 512))
    check_compatible(manifest, TEXT_OK, None)
    with pytest.raises(IncompatibleHead, match="text encoder"):
        check_compatible(manifest, _info("other", "", TEXT_DIM), IMAGE_OK)
