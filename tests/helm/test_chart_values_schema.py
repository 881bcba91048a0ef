"""values.schema.json and the chart's cross-field checks refuse bad values with a clear message."""

from __future__ import annotations

import pytest
from chart_helpers import CHART, NAMESPACE, RELEASE, helm


def _template(*args: str):
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "text.replicaCount=two"], "/text/replicaCount"),
        (["--set-string", "gateway.replicaCount=2"], "/gateway/replicaCount"),
        (["--set", "vision.replicas=2"], "additional properties 'replicas' not allowed"),
        (["--set", "networkPolicies.enabled=false"], "additional properties 'networkPolicies' not allowed"),
        (["--set", "gateway.service.port=-1"], "/gateway/service/port"),
        (["--set", "gateway.service.port=70000"], "/gateway/service/port"),
        (["--set", "text.image.pullPolicy=Sometimes"], "/text/image/pullPolicy"),
        (["--set", "text.env.lowercase=1"], "invalid propertyName 'lowercase'"),
        (["--set", "fusion.heads.source=s3"], "/fusion/heads/source"),
    ],
    ids=[
        "string-replicas",
        "quoted-replicas",
        "unknown-key",
        "unknown-top-key",
        "negative-port",
        "port-too-big",
        "pull-policy",
        "env-name",
        "heads-source",
    ],
)
def test_schema_rejects(args: list[str], message: str) -> None:
    result = _template(*args)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_a_probe_with_two_handlers_is_refused() -> None:
    result = _template("--set", "text.livenessProbe.tcpSocket.port=50051")
    assert result.returncode != 0
    assert "/text/livenessProbe" in result.stderr


def test_switching_a_probe_handler_with_null_is_accepted() -> None:
    result = _template(
        "--set", "text.livenessProbe.grpc=null", "--set", "text.livenessProbe.tcpSocket.port=grpc"
    )
    assert result.returncode == 0, result.stderr
    assert "tcpSocket:" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "modelStorage.initContainer.enabled=true"], "needs modelStorage.volume"),
        (
            ["--set", "modelStorage.initContainer.enabled=true", "--set", "modelStorage.volume=emptyDir"],
            "modelStorage.initContainer.command is required",
        ),
        (["--set", "fusion.heads.source=configMap"], "fusion.heads.configMapName is required"),
        (
            ["--set", "fusion.heads.source=configMap", "--set", "fusion.heads.configMapName=heads"],
            "fusion.heads.names must list the heads",
        ),
        (["--set", "fusion.heads.source=pvc"], "fusion.heads.existingClaim is required"),
        (["--set", "tls.enabled=true"], "tls.existingSecret is required"),
        (
            ["--set", "gateway.auth.apiKeys={a}", "--set", "gateway.auth.existingSecret=keys"],
            "not both",
        ),
        (["--set", "text.env.MMSERVE_TEXT_PORT=1"], "text.env.MMSERVE_TEXT_PORT is set by the chart"),
    ],
    ids=[
        "init-without-volume",
        "init-without-command",
        "heads-configmap",
        "heads-names",
        "heads-pvc",
        "tls-secret",
        "two-key-sources",
        "managed-env",
    ],
)
def test_cross_field_checks(args: list[str], message: str) -> None:
    result = _template(*args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
