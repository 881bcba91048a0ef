"""Dashboard, alerts and ServiceMonitors use only metrics the services really export, and the
Python the chart runs (helm test script, TLS probes) is valid."""

from __future__ import annotations

import json
import re

import pytest
from chart_helpers import CHART, CI_VALUES, ROOT, by_kind, component, render

ALL_FEATURES = next(p for p in CI_VALUES if p.stem == "all-features-values")
# Series Prometheus itself provides.
BUILT_IN_SERIES = {"up"}
_SERIES = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def _base_name(series: str) -> str:
    return _HISTOGRAM_SUFFIX.sub("", series).removesuffix("_total")


def _exported_metrics() -> set[str]:
    """Metric names declared in the services' and gateway's source (prometheus_client strips _total)."""
    names = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("gateway/**/*.py")]:
        for literal in re.findall(r"[\"']((?:mmserve|grpc_server)_[a-z0-9_]+)[\"']", path.read_text()):
            names.add(literal.removesuffix("_total"))
    return names


def _used_series(expressions: list[str]) -> set[str]:
    return {_base_name(s) for e in expressions for s in _SERIES.findall(e)} - BUILT_IN_SERIES


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((CHART / "files" / "dashboards" / "mmserve.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    return [t["expr"] for p in panels for t in p["targets"]]


def _rules() -> list[dict]:
    (rule,) = by_kind(render(ALL_FEATURES), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_use_only_exported_metrics(source: str) -> None:
    expressions = _dashboard_expressions() if source == "dashboard" else [r["expr"] for r in _rules()]
    used = _used_series(expressions)
    assert used, "no metric found in the queries"
    missing = sorted(used - _exported_metrics())
    assert not missing, f"{source} queries metrics no service exports: {missing}"


def test_dashboard_covers_every_stage() -> None:
    used = _used_series(_dashboard_expressions())
    for metric in (
        "grpc_server_handled",
        "mmserve_batch_size",
        "mmserve_queue_depth",
        "mmserve_http_requests",
    ):
        assert metric in used


def test_alerts_are_complete() -> None:
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {
        "MmserveGatewayErrorRateHigh",
        "MmserveGatewayLatencyHigh",
        "MmserveQueueSaturated",
        "MmserveBackendDown",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        # Balanced brackets: a cheap guard against a broken template edit.
        for open_, close in ("()", "{}", "[]"):
            assert rule["expr"].count(open_) == rule["expr"].count(close), rule["alert"]


def test_service_monitors_scrape_each_component_once() -> None:
    docs = render(ALL_FEATURES)
    monitors = by_kind(docs, "ServiceMonitor")
    assert sorted(component(m) for m in monitors) == ["audio", "fusion", "gateway", "text", "vision"]
    for monitor in monitors:
        selector = monitor["spec"]["selector"]
        (expression,) = selector["matchExpressions"]
        matched = [
            s
            for s in by_kind(docs, "Service")
            if all(s["metadata"]["labels"].get(k) == v for k, v in selector["matchLabels"].items())
            and expression["key"] not in s["metadata"]["labels"]
        ]
        assert len(matched) == 1, f"{component(monitor)}: selects {len(matched)} Services"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in [p["name"] for p in matched[0]["spec"]["ports"]]
        assert endpoint["path"] == "/metrics"


def test_python_the_chart_runs_compiles() -> None:
    compile((CHART / "files" / "helm-test.py").read_text(), "helm-test.py", "exec")
    (pod,) = by_kind(render(), "Pod")
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    compile(command[2], "helm-test", "exec")
    assert command[3].startswith("http://")
    probes = [
        c[kind]["exec"]["command"]
        for d in by_kind(render(ALL_FEATURES), "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
        if "exec" in c[kind]
    ]
    assert len(probes) == 12, "with TLS on, every gRPC probe becomes an exec probe"
    for probe in probes:
        assert probe[:2] == ["python", "-c"]
        compile(probe[2], "tls-probe", "exec")
