"""The health checks the images and the chart run, run against the real services: the model
image's HEALTHCHECK, the chart's TLS exec probe (real mTLS handshake), the gateway image's
HEALTHCHECK and the `helm test` script."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chart_helpers import CHART, NAMESPACE, RELEASE, ROOT, by_kind, component, final_stage, render
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scripts.stack import ServiceProcess, free_port, start_service

pytestmark = pytest.mark.slow

HEALTHCHECK = ROOT / "deploy" / "docker" / "grpc_healthcheck.py"
GATEWAY_DOCKERFILE = ROOT / "deploy" / "docker" / "gateway.Dockerfile"
PORT_VARS = ("MMSERVE_TEXT_PORT", "MMSERVE_VISION_PORT", "MMSERVE_FUSION_PORT", "MMSERVE_AUDIO_PORT")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_model_image_healthcheck_finds_whichever_service_runs(text_service: ServiceProcess) -> None:
    closed = {name: str(free_port()) for name in PORT_VARS}
    assert _run([sys.executable, str(HEALTHCHECK)], closed).returncode == 1
    serving = {**closed, "MMSERVE_TEXT_PORT": str(text_service.port)}
    result = _run([sys.executable, str(HEALTHCHECK)], serving)
    assert result.returncode == 0, result.stderr


def _certificate(
    subject: str, key, issuer_name, issuer_key, usage=None, sans=(), ca=False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _tls_secret(directory: Path, service_name: str) -> None:
    """What cert-manager would put in the chart's TLS secret: ca.crt, tls.crt, tls.key."""
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mmserve CA")])
    ca = _certificate("mmserve CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = _certificate(service_name, key, ca.subject, ca_key, usage=usage, sans=[service_name])
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(cert.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_chart_tls_probe_checks_health_over_mtls(tmp_path: Path, log_dir: Path) -> None:
    port = free_port()
    (deployment,) = [
        d
        for d in by_kind(
            render(
                None,
                "1.33.0",
                "tls.enabled=true",
                "tls.existingSecret=mmserve-tls",
                "tls.clientAuth=true",
                f"tls.mountPath={tmp_path}",
                f"text.readinessProbe.grpc.port={port}",
            ),
            "Deployment",
        )
        if component(d) == "text"
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probe = container["readinessProbe"]["exec"]["command"]
    name = re.search(r"ssl_target_name_override','([^']+)'", probe[2])[1]
    assert name == f"{RELEASE}-mmserve-text-headless.{NAMESPACE}.svc"
    _tls_secret(tmp_path, name)
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("MMSERVE_TEXT_TLS_")}
    assert set(env) == {
        "MMSERVE_TEXT_TLS_CERT_FILE",
        "MMSERVE_TEXT_TLS_KEY_FILE",
        "MMSERVE_TEXT_TLS_CLIENT_CA_FILE",
    }
    service = start_service("text", port=port, env=env, log_dir=log_dir, wait=False)
    try:
        for _ in range(180):
            result = _run([sys.executable, *probe[1:]], {})
            if result.returncode == 0:
                break
            assert service.process.poll() is None, service.log_tail()
            time.sleep(1)
        assert result.returncode == 0, result.stderr
        # The probe really verifies: a CA that did not issue the certificates fails the same check.
        # (Only ca.crt changes: the server reloads a whole new consistent set on its own.)
        other = tmp_path / "other-ca"
        other.mkdir()
        _tls_secret(other, name)
        (tmp_path / "ca.crt").write_bytes((other / "ca.crt").read_bytes())
        assert _run([sys.executable, *probe[1:]], {}).returncode != 0
    finally:
        service.stop()


def test_gateway_image_healthcheck_and_helm_test_script(gateway_service: ServiceProcess) -> None:
    (check,) = [args for op, args in final_stage(GATEWAY_DOCKERFILE) if op == "HEALTHCHECK"]
    code = re.search(r'python -c "(.*)"$', check)[1]
    result = _run([sys.executable, "-c", code], {"MMSERVE_GATEWAY_PORT": str(gateway_service.port)})
    assert result.returncode == 0, result.stderr
    script = CHART / "files" / "helm-test.py"
    result = _run([sys.executable, str(script), gateway_service.url], {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"returned \d+ floats", result.stdout)
