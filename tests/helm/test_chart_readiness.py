"""The gateway's Kubernetes readiness is /readyz, which needs one serving backend, never all of
them: losing every pod of one modality must not take the gateway, and with it the other
modalities' traffic, out of its Service."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_helpers import VALUE_SET_IDS, VALUE_SETS, by_kind, component, render
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.endpoints import state
from gateway.upstreams import READY_TIMEOUT_S
from services.common.settings import GatewaySettings

DEAD = "127.0.0.1:1"


def gateway_pod(values_file: Path | None) -> dict:
    (deployment,) = [d for d in by_kind(render(values_file), "Deployment") if component(d) == "gateway"]
    return deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_gateway_readiness_probe_is_readyz_and_nothing_waits_for_every_backend(
    values_file: Path | None,
) -> None:
    pod = gateway_pod(values_file)
    (container,) = pod["containers"]
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"path": "/readyz", "port": "http"}
    assert not {"exec", "grpc", "tcpSocket"} & set(probe), "readiness must be the gateway's own /readyz"
    assert probe["timeoutSeconds"] > READY_TIMEOUT_S, "/readyz may take READY_TIMEOUT_S to answer"
    # Startup and liveness are the process's own: a backend outage never holds back or restarts a gateway.
    for kind in ("startupProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["path"] == "/healthz", kind
    # No init container waits for the backends, and no readiness gate adds conditions of its own.
    assert not pod.get("initContainers") and not pod.get("readinessGates")


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_the_charts_readiness_path_passes_with_one_backend_serving(
    values_file: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = gateway_pod(values_file)["containers"][0]["readinessProbe"]["httpGet"]["path"]
    settings = GatewaySettings(text_address=DEAD, vision_address=DEAD, fusion_address=DEAD)
    app = create_app(settings, CollectorRegistry())
    with app.app_context():
        upstreams = state().upstreams
    only_text = {"text": "SERVING", "vision": "UNAVAILABLE", "fusion": "NOT_SERVING"}
    monkeypatch.setattr(upstreams, "states", lambda: only_text)
    response = app.test_client().get(path)
    assert response.status_code == 200 and response.get_json()["backends"] == only_text
    monkeypatch.setattr(upstreams, "states", lambda: {**only_text, "text": "UNAVAILABLE"})
    assert app.test_client().get(path).status_code == 503
