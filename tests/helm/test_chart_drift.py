"""The chart and compose speak the services' language: env names, ports and gRPC targets come from
services/common/settings.py, so a renamed setting or a changed default port fails here."""

from __future__ import annotations

import ast
import contextlib
import json
import re
from pathlib import Path

import pytest
import yaml
from chart_helpers import (
    CHART,
    NAMESPACE,
    ROOT,
    SETTINGS,
    VALUE_SET_IDS,
    VALUE_SETS,
    by_kind,
    component,
    defaults,
    final_stage,
    render,
)

from services.common.settings import env_names

# Which backend each address setting points at.
TARGETS = {
    "MMSERVE_FUSION_TEXT_ADDRESS": "text",
    "MMSERVE_FUSION_VISION_ADDRESS": "vision",
    "MMSERVE_FUSION_AUDIO_ADDRESS": "audio",
    "MMSERVE_GATEWAY_FUSION_ADDRESS": "fusion",
    "MMSERVE_GATEWAY_TEXT_ADDRESS": "text",
    "MMSERVE_GATEWAY_VISION_ADDRESS": "vision",
    "MMSERVE_GATEWAY_AUDIO_ADDRESS": "audio",
}


def _expected_ports(name: str) -> dict[str, int]:
    values = defaults(SETTINGS[name])
    if name == "gateway":
        return {"http": values["port"]}
    return {"grpc": values["port"], "metrics": values["metrics_port"]}


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_env_names_are_settings_of_their_component(values_file: Path | None) -> None:
    deployments = by_kind(render(values_file), "Deployment")
    assert sorted(component(d) for d in deployments) == sorted(SETTINGS)
    for deployment in deployments:
        name = component(deployment)
        allowed = set(env_names(SETTINGS[name]))
        spec = deployment["spec"]["template"]["spec"]
        # Service links would add MMSERVE_<SERVICE>_PORT=tcp://... behind the chart's back.
        assert spec["enableServiceLinks"] is False
        for container in spec["containers"] + spec.get("initContainers", []):
            env = [e["name"] for e in container.get("env", [])]
            unknown = sorted(set(env) - allowed)
            assert not unknown, f"{name}: env vars the service does not read: {unknown}"
            assert len(env) == len(set(env)), f"{name}: duplicate env vars {env}"


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_ports_are_the_settings_defaults(values_file: Path | None) -> None:
    for deployment in by_kind(render(values_file), "Deployment"):
        name = component(deployment)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == _expected_ports(name)
        env = {e["name"]: e.get("value") for e in container["env"]}
        prefix = SETTINGS[name].ENV_PREFIX
        main_port = ports.get("grpc", ports.get("http"))
        assert env[f"{prefix}PORT"] == str(main_port)
        if "metrics" in ports:
            assert env[f"{prefix}METRICS_PORT"] == str(ports["metrics"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[kind]
            if "grpc" in probe:
                assert probe["grpc"]["port"] == ports["grpc"], f"{name} {kind}"
            if "httpGet" in probe:
                assert probe["httpGet"]["port"] in ("http", ports.get("http")), f"{name} {kind}"


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_grpc_targets_reach_headless_services_of_the_right_backend(values_file: Path | None) -> None:
    docs = render(values_file)
    headless = {
        s["metadata"]["name"]: s for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"
    }
    seen = set()
    for deployment in by_kind(docs, "Deployment"):
        for env in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
            if env["name"] not in TARGETS:
                continue
            seen.add(env["name"])
            match = re.fullmatch(rf"dns:///([a-z0-9-]+)\.{NAMESPACE}\.svc:(\d+)", env["value"])
            assert match, f"{env['name']}={env['value']} is not a dns:/// target"
            service = headless[match[1]]
            backend = TARGETS[env["name"]]
            assert service["spec"]["selector"]["app.kubernetes.io/component"] == backend
            assert [p["port"] for p in service["spec"]["ports"]] == [int(match[2])]
            assert int(match[2]) == defaults(SETTINGS[backend])["port"]
    assert seen == set(TARGETS)


def test_compose_uses_the_same_names_and_ports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert sorted(services) == sorted(SETTINGS)
    for name, service in services.items():
        module = "gateway" if name == "gateway" else f"services.{name}"
        # Without a command, compose runs the image's CMD.
        dockerfile = (
            ROOT / "deploy" / "docker" / ("gateway.Dockerfile" if name == "gateway" else "model.Dockerfile")
        )
        image_cmd = json.loads(dict(final_stage(dockerfile))["CMD"])
        command = service.get("command", image_cmd)
        assert command == ["python", "-m", module]
        env = service["environment"]
        unknown = sorted(set(env) - set(env_names(SETTINGS[name])))
        assert not unknown, f"compose {name}: env vars the service does not read: {unknown}"
        expected = _expected_ports(name)
        prefix = SETTINGS[name].ENV_PREFIX
        assert env[f"{prefix}PORT"] == str(expected.get("grpc", expected.get("http")))
        if "metrics" in expected:
            assert env[f"{prefix}METRICS_PORT"] == str(expected["metrics"])
        for variable, backend in TARGETS.items():
            if variable in env:
                assert env[variable] == f"dns:///{backend}:{defaults(SETTINGS[backend])['port']}"


def _module_constants(path: Path) -> dict[str, object]:
    """Top-level constants of a module, read without importing it (fusion's heads import torch)."""
    constants = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            if isinstance(node.value, ast.Call) and getattr(node.value.func, "attr", "") == "compile":
                constants[node.targets[0].id] = ast.literal_eval(node.value.args[0])
    return constants


def test_heads_from_a_configmap_land_where_fusion_looks() -> None:
    heads = _module_constants(ROOT / "services" / "fusion" / "heads.py")
    docs = render(
        None,
        "1.33.0",
        "fusion.heads.source=configMap",
        "fusion.heads.configMapName=h",
        "fusion.heads.names={match}",
    )
    (fusion,) = [d for d in by_kind(docs, "Deployment") if component(d) == "fusion"]
    spec = fusion["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "heads"]
    paths = sorted(item["path"] for item in volume["configMap"]["items"])
    assert paths == sorted([f"match/{heads['MANIFEST_FILE']}", f"match/{heads['WEIGHTS_FILE']}"])
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "heads"]
    assert env["MMSERVE_FUSION_HEADS_DIR"] == mount["mountPath"]
    schema = json.loads((CHART / "values.schema.json").read_text())
    names = schema["properties"]["fusion"]["properties"]["heads"]["properties"]["names"]
    manifest = _module_constants(ROOT / "services" / "fusion" / "manifest.py")
    pattern = manifest["_NAME_RE"]
    assert names["items"]["pattern"] == pattern, "head names the chart accepts differ from fusion's"


def test_connection_age_reaches_every_grpc_server() -> None:
    from chart_helpers import pod_specs, render

    specs = {
        name.rsplit("-", 1)[-1]: spec
        for name, spec in pod_specs(render(None, "1.33.0", "grpc.maxConnectionAgeSeconds=45"))
    }
    for name in ("text", "vision", "fusion"):
        env = {e["name"]: e.get("value") for e in specs[name]["containers"][0]["env"]}
        assert env[f"MMSERVE_{name.upper()}_MAX_CONNECTION_AGE_S"] == "45"
        assert env[f"MMSERVE_{name.upper()}_MAX_CONNECTION_AGE_GRACE_S"] == "15"
