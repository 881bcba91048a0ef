"""Heads over any set of modalities: the registry, strategies with three inputs, tabular features
(schema, standardisation, refusals), format 3 manifests beside the older ones, and training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.backend import EncoderInfo
from services.common.errors import InvalidInput
from services.fusion.features import FeatureSchema, fit_schema
from services.fusion.heads import HeadLoadError, IncompatibleHead, check_encoders, load_head, save_head
from services.fusion.modalities import ordered
from services.fusion.registry import check_head
from services.fusion.strategies import FUSED_STRATEGIES, build_head_module
from training.data import EmbeddedSet, read_jsonl
from training.heads.train import TrainConfig, train_classifier

DIMS = {"text": 6, "audio": 5, "features": 3}
CONFIG = {"fused_dim": 8, "hidden_dim": 16}
ENCODERS = {"text": {"model_id": "t", "revision": "1"}, "audio": {"model_id": "yamnet", "revision": "2"}}
SCHEMA = FeatureSchema(("age", "income", "debt"), (40.0, 5000.0, 0.3), (10.0, 1000.0, 0.2))
FIXTURES = Path(__file__).parent.parent / "fixtures" / "heads_v1"


def test_modalities_are_put_in_fusion_order_and_unknown_ones_refused() -> None:
    assert ordered(["features", "text", "audio"]) == ("text", "audio", "features")
    with pytest.raises(ValueError, match="unknown modalities \\['smell'\\]"):
        ordered(["text", "smell"])


def _inputs(n: int, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    masks = {m: torch.ones(n, dtype=torch.bool) for m in DIMS}
    return inputs, masks


@pytest.mark.parametrize("strategy", FUSED_STRATEGIES)
def test_fused_strategies_take_three_modalities_and_ignore_absent_values(strategy: str) -> None:
    torch.manual_seed(0)
    model = build_head_module(strategy, DIMS, CONFIG, num_outputs=2).eval()
    inputs, masks = _inputs(6)
    masks["audio"] = torch.tensor([True, False, True, False, True, True])
    masks["features"] = torch.tensor([True, True, False, False, True, True])
    garbage = {**inputs, "audio": torch.where(masks["audio"][:, None], inputs["audio"], torch.nan)}
    with torch.no_grad():
        clean = model(inputs, masks)
        assert clean.shape == (6, 2)
        torch.testing.assert_close(model(garbage, masks), clean)  # absent rows are never read
        no_features = {**masks, "features": torch.zeros(6, dtype=torch.bool)}
        assert not torch.allclose(model(inputs, no_features)[[0, 1]], clean[[0, 1]])  # features count
    if strategy == "attention":
        weights = model.fusion.attention_weights(inputs, masks)
        assert weights.shape == (6, 4)  # cls, text, audio, features
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(6))
        assert (weights[~masks["audio"], 2] == 0).all()


def test_features_skip_the_layer_norm_that_would_erase_them() -> None:
    model = build_head_module("concat_mlp", DIMS, CONFIG, num_outputs=2)
    assert isinstance(model.fusion.norm_features, torch.nn.Identity)
    assert isinstance(model.fusion.norm_text, torch.nn.LayerNorm)


def test_feature_schema_builds_standardises_and_refuses_by_name() -> None:
    fitted = fit_schema(("a", "b"), np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert fitted.mean == (2.0, 5.0) and fitted.std == (1.0, 1.0)  # a constant feature keeps std 1
    raw = SCHEMA.vector({"debt": 0.5, "age": 50, "income": 6000}, "inputs[0].features")
    np.testing.assert_allclose(raw, [50, 6000, 0.5])
    np.testing.assert_allclose(SCHEMA.standardise(raw[None]), [[1.0, 1.0, 1.0]], rtol=1e-6)
    refusals = {
        "missing": ({"age": 1, "income": 2}, "feature 'debt' is missing"),
        "unknown": ({"age": 1, "income": 2, "debt": 3, "zip": 4}, "unknown feature 'zip'"),
        "nan": ({"age": float("nan"), "income": 2, "debt": 3}, "feature 'age' is nan"),
        "inf": ({"age": 1, "income": float("inf"), "debt": 3}, "feature 'income' is inf"),
        "text": ({"age": "old", "income": 2, "debt": 3}, "feature 'age' must be a number"),
    }
    for values, message in refusals.values():
        with pytest.raises(InvalidInput, match=f"inputs\\[3\\].features: {message}"):
            SCHEMA.vector(values, "inputs[3].features")


def _save(directory: Path, strategy: str = "concat_mlp") -> None:
    torch.manual_seed(0)
    module = build_head_module(strategy, DIMS, CONFIG, num_outputs=2)
    save_head(
        directory, module, strategy=strategy, input_dims=DIMS, config=CONFIG, encoders=ENCODERS,
        labels=("calm", "alert"), features=SCHEMA,
    )  # fmt: skip


def test_a_three_modality_head_saves_loads_and_standardises_raw_features(tmp_path: Path) -> None:
    _save(tmp_path / "alert")
    head = load_head(tmp_path / "alert")
    manifest = head.manifest
    assert manifest.format_version == 3 and manifest.inputs == ("text", "audio", "features")
    assert manifest.encoded_modalities == ("text", "audio") and manifest.features == SCHEMA
    rng = np.random.default_rng(0)
    inputs = {"text": rng.normal(size=(4, 6)), "audio": rng.normal(size=(4, 5))}
    raw = rng.normal(size=(4, 3)) * np.array(SCHEMA.std) + np.array(SCHEMA.mean)
    proba = head.predict_proba(inputs={**inputs, "features": raw})
    module = build_head_module("concat_mlp", DIMS, CONFIG, num_outputs=2)
    module.load_state_dict(head._module.state_dict())
    standardised = {**inputs, "features": SCHEMA.standardise(raw)}
    with torch.no_grad():
        logits = module.eval()(
            {m: torch.from_numpy(np.asarray(x, np.float32)) for m, x in standardised.items()},
            {m: torch.ones(4, dtype=torch.bool) for m in DIMS},
        ).double()
    expected = torch.softmax(logits / manifest.outputs[0].temperature, dim=-1).numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-5)
    with pytest.raises(InvalidInput, match="features values contain NaN or infinity"):
        head.predict_proba(inputs={**inputs, "features": np.where(raw > 1e9, raw, np.nan)})
    # A row without audio is answered from the rest; rows with nothing are refused.
    head.predict(inputs=inputs | {"features": raw}, masks={"audio": np.array([True, False, True, True])})
    with pytest.raises(InvalidInput, match="none of text, audio and features"):
        head.predict(inputs={"text": inputs["text"]}, masks={"text": np.zeros(4, bool)})
    assert head.modalities_used({"text": [True], "audio": [False], "features": [True]}) == [
        ("text", "features")
    ]


def test_format3_manifests_are_checked(tmp_path: Path) -> None:
    _save(tmp_path / "alert")
    path = tmp_path / "alert" / "manifest.json"
    good = json.loads(path.read_text())
    changes = {
        "no schema": (lambda m: m.pop("features"), "lacks 'features'"),
        "short schema": (lambda m: m["features"].update(names=["age", "income"]), "one number per name"),
        "odd order": (lambda m: m.update(modalities=["audio", "text", "features"]), "fusion order"),
        "unknown": (lambda m: m.update(modalities=["text", "smell"]), "unknown modalities"),
        "extra dim": (lambda m: m["input_dims"].update(image=1280), "not among|lack"),
        "no encoder": (lambda m: m["encoders"].pop("audio"), "lacks 'audio'"),
    }
    for change, message in changes.values():
        data = json.loads(json.dumps(good))
        change(data)
        path.write_text(json.dumps(data))
        with pytest.raises(HeadLoadError, match=message):
            load_head(tmp_path / "alert")


def test_older_heads_read_as_text_and_image_and_answer_as_before(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "v1_gated", tmp_path / "v1_gated")
    head = load_head(tmp_path / "v1_gated")
    assert head.manifest.format_version == 1 and head.manifest.inputs == ("text", "image")
    written = head.manifest.to_json()
    assert written["format_version"] == 3 and written["modalities"] == ["text", "image"]


def test_encoder_checks_cover_audio_and_an_unconfigured_encoder(tmp_path: Path) -> None:
    _save(tmp_path / "alert")
    manifest = load_head(tmp_path / "alert").manifest
    check_encoders(manifest, {"text": EncoderInfo("t", "1", 6), "audio": EncoderInfo("yamnet", "2", 5)})
    with pytest.raises(IncompatibleHead, match="trained on audio encoder yamnet@2 \\(dim 5\\)"):
        check_encoders(manifest, {"text": EncoderInfo("t", "1", 6), "audio": EncoderInfo("clap", "", 5)})
    with pytest.raises(IncompatibleHead, match="needs a audio encoder"):
        check_encoders(manifest, {"text": EncoderInfo("t", "1", 6)})
    check_head(manifest, {})  # encoders not reached yet are not held against it
    with pytest.raises(IncompatibleHead, match="reads audio, but this fusion service has no audio encoder"):
        check_head(manifest, {}, configured=("text", "image"))


def _majority_set(n: int, seed: int = 0) -> EmbeddedSet:
    """Three modalities, one signal bit each; the label is their majority (each alone: ~3/4)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, 3))
    # Each bit moves its embedding along a fixed direction (a shift of every component alike
    # would vanish in the strategies' LayerNorm).
    text = rng.normal(size=(n, 6)) * 0.3 + np.outer(bits[:, 0] * 2 - 1, [1, -1, 1, -1, 1, -1])
    audio = rng.normal(size=(n, 5)) * 0.3 + np.outer(bits[:, 1] * 2 - 1, [-1, 1, 1, -1, 0])
    features = np.stack([bits[:, 2] * 2 - 1 + rng.normal(size=n) * 0.2, rng.normal(size=n) * 50 + 100], 1)
    labels = tuple("alert" if b.sum() >= 2 else "calm" for b in bits)
    ones = np.ones(n, dtype=bool)
    return EmbeddedSet(
        labels=labels,
        inputs={"text": text.astype(np.float32), "audio": audio.astype(np.float32), "features": features},
        masks={"text": ones, "audio": ones.copy(), "features": ones.copy()},
        feature_names=("signal", "noise"),
    )


def test_training_over_three_modalities_beats_each_alone_and_records_the_schema() -> None:
    data = _majority_set(400)
    cfg = TrainConfig(epochs=40, patience=10, progress=False)
    fused = train_classifier(data, "concat_mlp", CONFIG, cfg)
    alone = {m: train_classifier(data, f"{m}_only", CONFIG, cfg).metrics["test_accuracy"] for m in DIMS}
    assert max(alone.values()) < 0.85, alone
    assert fused.metrics["test_accuracy"] > max(alone.values()) + 0.1, (fused.metrics, alone)
    assert fused.modalities == ("text", "audio", "features") and fused.features.names == ("signal", "noise")
    assert abs(fused.features.mean[1] - 100) < 10  # training statistics, recorded for serving
    cases = fused.metrics["masked_modality"]["cases"]
    assert set(cases) == {"all", "without_text", "without_audio", "without_features"}
    assert set(fused.metrics["modality_contribution"]) == {"metric", "text", "audio", "features"}


def test_jsonl_rows_carry_audio_paths_and_features(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"RIFF....WAVE")
    rows = [
        {"text": "hi", "audio": "a.wav", "features": {"x": 1, "y": 2.5}, "label": "a"},
        {"features": {"x": 0, "y": 1}, "label": "b"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = read_jsonl(tmp_path / "d.jsonl")
    assert examples[0].audio == b"RIFF....WAVE" and examples[0].features == {"x": 1.0, "y": 2.5}
    assert examples[1].text is None and examples[1].has("features")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"features": {"x": float("nan")}, "label": "a"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: feature 'x' must be a finite number"):
        read_jsonl(tmp_path / "bad.jsonl")
