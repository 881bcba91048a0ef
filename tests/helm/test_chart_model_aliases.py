"""gateway.modelAliases reaches the gateway as MMSERVE_GATEWAY_MODEL_ALIASES, in the format it
parses, and names the schema cannot carry are refused at render time."""

from __future__ import annotations

from chart_helpers import CHART, NAMESPACE, RELEASE, by_kind, component, helm, render

from gateway.model_names import parse_aliases


def _gateway_env(docs: list[dict]) -> dict[str, str]:
    (gateway,) = [d for d in by_kind(docs, "Deployment") if component(d) == "gateway"]
    return {
        e["name"]: e.get("value", "") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_aliases_render_as_the_setting_the_gateway_parses() -> None:
    docs = render(
        None,
        "1.33.0",
        "gateway.modelAliases.text-embedding-3-small=sentence-transformers/all-MiniLM-L6-v2",
        "gateway.modelAliases.vision=efficientnet-lite0",
    )
    value = _gateway_env(docs)["MMSERVE_GATEWAY_MODEL_ALIASES"]
    assert parse_aliases(value) == {
        "text-embedding-3-small": "sentence-transformers/all-MiniLM-L6-v2",
        "vision": "efficientnet-lite0",
    }


def test_no_aliases_by_default() -> None:
    assert "MMSERVE_GATEWAY_MODEL_ALIASES" not in _gateway_env(render())


def test_a_name_with_a_separator_fails_the_render() -> None:
    result = helm(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--set",
        "gateway.modelAliases.a=b c",
        check=False,
    )
    assert result.returncode != 0 and "modelAliases" in result.stderr
