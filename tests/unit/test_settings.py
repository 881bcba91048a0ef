"""Settings: one declaration per option, env and CLI with documented precedence."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.settings import (
    FusionSettings,
    GatewaySettings,
    TextSettings,
    VisionSettings,
    env_names,
    load_settings,
)


def test_defaults_are_the_documented_ports() -> None:
    assert load_settings(TextSettings, [], {}).port == 50051
    assert load_settings(VisionSettings, [], {}).port == 50052
    assert load_settings(FusionSettings, [], {}).port == 50053
    assert load_settings(GatewaySettings, [], {}).port == 8080


def test_env_then_cli_precedence_and_types() -> None:
    env = {
        "MMSERVE_TEXT_MAX_BATCH_SIZE": "7",
        "MMSERVE_TEXT_WARMUP": "false",
        "MMSERVE_TEXT_MAX_WAIT_MS": "2.5",
    }
    from_env = load_settings(TextSettings, [], env)
    assert (from_env.max_batch_size, from_env.warmup, from_env.max_wait_ms) == (7, False, 2.5)
    from_cli = load_settings(TextSettings, ["--max-batch-size", "9", "--warmup", "yes"], env)
    assert (from_cli.max_batch_size, from_cli.warmup) == (9, True)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(SystemExit, match="MMSERVE_VISION_PORT"):
        load_settings(VisionSettings, [], {"MMSERVE_VISION_PORT": "eighty"})


def test_settings_are_frozen_and_env_names_cover_every_field() -> None:
    settings = load_settings(FusionSettings, [], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    names = env_names(FusionSettings)
    assert "MMSERVE_FUSION_TEXT_ADDRESS" in names
    assert len(names) == len(dataclasses.fields(FusionSettings))
