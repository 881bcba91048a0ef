"""Every pod the chart renders is locked down, and the NetworkPolicies allow exactly the call graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_helpers import CHART, CI_VALUES, VALUE_SET_IDS, VALUE_SETS, by_kind, component, pod_specs, render

GPU_VALUES = next(p for p in CI_VALUES if p.stem == "gpu-values")


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_every_container_is_hardened(values_file: Path | None) -> None:
    for name, spec in pod_specs(render(values_file)):
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] >= 10000, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert container["resources"]["requests"]["memory"], where
            assert container["resources"]["limits"]["memory"], where
            # A read-only root still needs a writable /tmp for caches.
            assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]], where


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_deployments_have_all_three_probes(values_file: Path | None) -> None:
    for deployment in by_kind(render(values_file), "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert kind in container, f"{deployment['metadata']['name']} has no {kind}"


def test_startup_probes_leave_time_to_load_a_model() -> None:
    for deployment in by_kind(render(), "Deployment"):
        if component(deployment) in ("text", "vision", "audio"):
            probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
            assert probe["periodSeconds"] * probe["failureThreshold"] >= 180


def test_network_policies_follow_the_call_graph() -> None:
    policies = {component(p): p for p in by_kind(render(), "NetworkPolicy")}
    assert {"text", "vision", "audio", "fusion", "gateway"} <= set(policies)

    def grpc_callers(name: str) -> set[str]:
        (rule,) = [r for r in policies[name]["spec"]["ingress"] if r["ports"][0]["port"] == "grpc"]
        return {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]}

    assert grpc_callers("text") == {"fusion", "gateway"}
    assert grpc_callers("vision") == {"fusion", "gateway"}
    assert grpc_callers("audio") == {"fusion", "gateway"}
    assert grpc_callers("fusion") == {"gateway"}
    for name, policy in policies.items():
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == name
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            assert rule["ports"], f"{name}: an ingress rule open on every port"


def test_restricted_gateway_still_admits_the_helm_test_pod() -> None:
    docs = render(next(p for p in CI_VALUES if p.stem == "all-features-values"))
    (gateway,) = [p for p in by_kind(docs, "NetworkPolicy") if component(p) == "gateway"]
    peers = gateway["spec"]["ingress"][0]["from"]
    test_labels = by_kind(docs, "Pod")[0]["metadata"]["labels"]
    selectors = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert any(all(test_labels.get(k) == v for k, v in s.items()) for s in selectors)


def test_gpu_values_request_gpus_and_the_cuda_image() -> None:
    deployments = {component(d): d for d in by_kind(render(GPU_VALUES), "Deployment")}
    for name in ("text", "vision", "audio"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"].endswith("-cuda")
    for name in ("fusion", "gateway"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert deployments["fusion"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-cpu")
    hpas = {component(h): h for h in by_kind(render(GPU_VALUES), "HorizontalPodAutoscaler")}
    assert hpas["text"]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "mmserve_queue_depth"
    assert "replicas" not in deployments["text"]["spec"], "the HPA owns the replica count"


def test_default_images_are_cpu_and_tagged_with_the_app_version() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    images = {
        component(d): d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in by_kind(render(), "Deployment")
    }
    assert images["gateway"].endswith(f"mmserve-gateway:{app_version}")
    for name in ("text", "vision", "audio", "fusion"):
        assert images[name].endswith(f"mmserve-model:{app_version}-cpu")


def test_egress_is_restricted_by_default_and_never_reaches_the_metadata_endpoint() -> None:
    import ipaddress

    policies = [p for p in by_kind(render(), "NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]
    assert {p["metadata"]["name"].rsplit("-", 1)[-1] for p in policies} >= {
        "text",
        "vision",
        "fusion",
        "gateway",
    }
    metadata = ipaddress.ip_address("169.254.169.254")
    for policy in policies:
        for rule in policy["spec"]["egress"]:
            for peer in rule.get("to", []):
                block = peer.get("ipBlock")
                if block is None:
                    continue
                excepted = [ipaddress.ip_network(c) for c in block.get("except", [])]
                if metadata in ipaddress.ip_network(block["cidr"]):
                    assert any(metadata in net for net in excepted), policy["metadata"]["name"]
                assert any(ipaddress.ip_address("10.0.0.1") in net for net in excepted)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("gateway.service.type=LoadBalancer",), "without API keys"),
        (("gateway.ingress.enabled=true", "gateway.auth.apiKeys[0]=k"), "has no tls"),
        (("gateway.service.type=NodePort",), "without API keys"),
    ],
)
def test_a_public_gateway_without_keys_or_tls_does_not_render(sets: tuple[str, ...], message: str) -> None:
    from chart_helpers import CHART, helm

    args = ["template", "rel", str(CHART)] + [a for s in sets for a in ("--set", s)]
    failed = helm(*args, check=False)
    assert failed.returncode != 0 and message in failed.stderr
    opted_out = helm(*args, "--set", "gateway.allowPublicWithoutProtection=true", check=False)
    assert opted_out.returncode == 0, opted_out.stderr
