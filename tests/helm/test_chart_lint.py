"""`helm lint --strict` and kubernetes-validate over every value set and supported Kubernetes version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chart_helpers import CHART, VALUE_SET_IDS, VALUE_SETS, by_kind, helm, render, render_text

KUBE_VERSIONS = ["1.29.0", "1.33.0"]
# Custom resources have no schema in kubernetes-validate; their shape is checked in test_chart_monitoring.py.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_helm_lint_strict(values_file: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values_file)] if values_file else [])
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def _kubernetes_validate(manifest: Path, kube_version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "-k", kube_version, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_SET_IDS)
def test_manifests_match_the_kubernetes_api(
    values_file: Path | None, kube_version: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(render_text(values_file, kube_version))
    result = _kubernetes_validate(manifest, kube_version)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every built-in resource was really checked, not skipped for want of a schema.
    built_in = [d for d in render(values_file, kube_version) if d["kind"] not in CUSTOM_KINDS]
    assert result.stdout.count(" passed for resource ") == len(built_in), result.stdout
    assert by_kind(built_in, "Deployment"), "no Deployments rendered"


def test_strict_validation_catches_unknown_fields(tmp_path: Path) -> None:
    """The validator is not vacuous: a stray field in a rendered Deployment fails it."""
    docs = render()
    deployment = by_kind(docs, "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    import yaml

    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    result = _kubernetes_validate(manifest, KUBE_VERSIONS[0])
    assert result.returncode != 0
    assert "livenessProbes" in result.stdout
