"""Caller tokens on the chart's service hops: on by default, each component mounts only the token
files it needs, and the env names point at them."""

from __future__ import annotations

import base64

from chart_helpers import by_kind, pod_specs, render

MOUNT = "/etc/mmserve/auth"
EXPECTED_FILES = {
    "text": {"callers"},
    "vision": {"callers"},
    "audio": {"callers"},
    "fusion": {"callers", "fusion.token"},
    "gateway": {"gateway.token"},
}


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_each_component_mounts_only_its_token_files() -> None:
    docs = render()
    specs = {name.rsplit("-", 1)[-1]: spec for name, spec in pod_specs(docs)}
    assert set(EXPECTED_FILES) <= set(specs)
    for name, files in EXPECTED_FILES.items():
        spec = specs[name]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "service-tokens"]
        assert {item["path"] for item in volume["secret"]["items"]} == files, name
        env = _env(spec["containers"][0])
        prefix = f"MMSERVE_{name.upper()}_"
        if "callers" in files:
            assert env[prefix + "AUTH_TOKENS_FILE"] == f"{MOUNT}/callers"
        if f"{name}.token" in files:
            assert env[prefix + "AUTH_TOKEN_FILE"] == f"{MOUNT}/{name}.token"
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("service-tokens")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    callers = dict(line.split(" ") for line in data["callers"].splitlines())
    assert callers == {"gateway": data["gateway.token"], "fusion": data["fusion.token"]}
    assert len(data["gateway.token"]) >= 32 and data["gateway.token"] != data["fusion.token"]


def test_service_auth_can_be_turned_off() -> None:
    docs = render(None, "1.33.0", "serviceAuth.enabled=false")
    assert not [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("service-tokens")]
    for _name, spec in pod_specs(docs):
        assert all(v["name"] != "service-tokens" for v in spec["volumes"])
        assert not [k for k in _env(spec["containers"][0]) if "AUTH_TOKEN" in k]
