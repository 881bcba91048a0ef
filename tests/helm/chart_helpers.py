"""Shared helpers of the chart and image checks: the real helm binary from .tools/, renders cached per run."""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.settings import SERVICE_SETTINGS as SETTINGS  # noqa: F401 - the checks' lookup by name

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "mmserve"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
HELM = ROOT / ".tools" / "bin" / "helm"
NAMESPACE = "mmserve"
RELEASE = "rel"

# Every value set the chart is checked with: the defaults and each ci/ file.
VALUE_SETS = [None, *CI_VALUES]
VALUE_SET_IDS = ["default", *(p.stem for p in CI_VALUES)]


def defaults(settings_cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(settings_cls)}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `python -m scripts.install_tools` (make tools)")
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


@functools.cache
def render_text(values_file: Path | None = None, kube_version: str = "1.33.0", *sets: str) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version]
    if values_file is not None:
        args += ["-f", str(values_file)]
    for item in sets:
        args += ["--set", item]
    return helm(*args).stdout


def render(values_file: Path | None = None, kube_version: str = "1.33.0", *sets: str) -> list[dict[str, Any]]:
    """The chart's manifests (helm test hooks included) as parsed documents."""
    return [doc for doc in yaml.safe_load_all(render_text(values_file, kube_version, *sets)) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(resource name, pod spec) of every Deployment template and bare Pod."""
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in by_kind(docs, "Deployment")]
    specs += [(d["metadata"]["name"], d["spec"]) for d in by_kind(docs, "Pod")]
    return specs


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]
