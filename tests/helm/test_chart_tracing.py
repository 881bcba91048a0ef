"""The chart's `tracing` block: off by default; on, every component exports to the collector
under its own service name, the egress policy lets it reach the collector, and a missing
endpoint fails the render instead of shipping pods that trace nowhere."""

from __future__ import annotations

from chart_helpers import CHART, NAMESPACE, RELEASE, by_kind, component, helm, pod_specs, render

ENDPOINT = "http://otel-collector.observability:4317"
ON = (
    "tracing.enabled=true",
    f"tracing.endpoint={ENDPOINT}",
    "tracing.protocol=grpc",
    "tracing.sampleRatio=0.25",
)


def _env(spec: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in spec["containers"][0].get("env", [])}


def test_off_by_default() -> None:
    for name, spec in pod_specs(render()):
        assert not any(key.startswith("OTEL_") for key in _env(spec)), name


def test_on_every_component_exports_under_its_own_name() -> None:
    docs = render(None, "1.33.0", *ON)
    deployments = by_kind(docs, "Deployment")
    assert {component(d) for d in deployments} >= {"gateway", "fusion", "text", "vision", "audio"}
    for deployment in deployments:
        env = _env(deployment["spec"]["template"]["spec"])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == ENDPOINT
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        assert env["OTEL_SERVICE_NAME"] == f"mmserve-{component(deployment)}"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert float(env["OTEL_TRACES_SAMPLER_ARG"]) == 0.25


def test_egress_policy_reaches_the_collector_port_only() -> None:
    docs = render(None, "1.33.0", *ON, "tracing.port=4317")
    for policy in by_kind(docs, "NetworkPolicy"):
        if "Egress" not in policy["spec"]["policyTypes"]:
            continue
        rules = [
            r for r in policy["spec"]["egress"] if any(p.get("port") == 4317 for p in r.get("ports", []))
        ]
        assert len(rules) == 1, policy["metadata"]["name"]
        assert [p["port"] for p in rules[0]["ports"]] == [4317]


def test_missing_endpoint_fails_the_render() -> None:
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        "tracing.enabled=true",
        check=False,
    )
    assert result.returncode != 0 and "tracing.endpoint" in result.stderr
