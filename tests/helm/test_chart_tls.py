"""TLS identities in the chart: with tls.perComponent each component mounts only its own Secret,
whose generated certificate names the Services its clients dial and is signed by the one CA;
each service lists its callers as allowed clients; the shared single-Secret mode still works."""

from __future__ import annotations

import base64

import pytest
from chart_helpers import CHART, NAMESPACE, RELEASE, by_kind, component, helm, pod_specs, render
from cryptography import x509
from cryptography.x509.oid import NameOID

COMPONENTS = ("text", "vision", "audio", "fusion", "gateway")
PER_COMPONENT = ("tls.enabled=true", "tls.perComponent.enabled=true", "tls.clientAuth=true")
CALLERS = {
    "text": {"fusion", "gateway"},
    "vision": {"fusion", "gateway"},
    "audio": {"gateway"},
    "fusion": {"gateway"},
}


def _name(c: str) -> str:
    return f"{RELEASE}-mmserve-{c}"


def _specs(docs: list[dict]) -> dict[str, dict]:
    return {component(d): d["spec"]["template"]["spec"] for d in by_kind(docs, "Deployment")}


def _tls_secret_of(spec: dict) -> str:
    (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    return volume["secret"]["secretName"]


def _env(spec: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in spec["containers"][0]["env"]}


def _expected_dns_names(c: str) -> set[str]:
    services = [_name(c)] + ([f"{_name(c)}-headless"] if c != "gateway" else [])
    suffixes = ("", f".{NAMESPACE}", f".{NAMESPACE}.svc", f".{NAMESPACE}.svc.cluster.local")
    return {s + suffix for s in services for suffix in suffixes}


def test_each_component_gets_and_mounts_only_its_own_certificate() -> None:
    docs = render(None, "1.33.0", *PER_COMPONENT)
    secrets = {s["metadata"]["name"]: s["data"] for s in by_kind(docs, "Secret")}
    ca = x509.load_pem_x509_certificate(base64.b64decode(secrets[f"{RELEASE}-mmserve-tls-ca"]["tls.crt"]))
    specs = _specs(docs)
    assert set(specs) == set(COMPONENTS)
    serials = set()
    for c in COMPONENTS:
        secret_name = f"{_name(c)}-tls"
        assert _tls_secret_of(specs[c]) == secret_name, c
        data = secrets[secret_name]
        assert base64.b64decode(data["ca.crt"]) == base64.b64decode(
            secrets[f"{RELEASE}-mmserve-tls-ca"]["tls.crt"]
        )
        cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
        # Signed by the chart's CA (raises otherwise).
        cert.verify_directly_issued_by(ca)
        assert cert.issuer == ca.subject
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == _name(c)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == _expected_dns_names(c), c
        serials.add(cert.serial_number)
        env = _env(specs[c])
        prefix = f"MMSERVE_{c.upper()}_"
        if c in CALLERS:
            allowed = set(env[prefix + "TLS_ALLOWED_CLIENTS"].split(","))
            assert allowed == {_name(caller) for caller in CALLERS[c]}, c
            assert env[prefix + "TLS_CLIENT_CA_FILE"].endswith("/ca.crt")
        else:
            assert prefix + "TLS_ALLOWED_CLIENTS" not in env
    assert len(serials) == len(COMPONENTS), "one identity per component"


def test_the_clients_dial_names_the_certificates_hold() -> None:
    docs = render(None, "1.33.0", *PER_COMPONENT)
    specs = _specs(docs)
    targets = {
        k: v for c in ("fusion", "gateway") for k, v in _env(specs[c]).items() if k.endswith("_ADDRESS")
    }
    assert targets
    secrets = {s["metadata"]["name"]: s["data"] for s in by_kind(docs, "Secret")}
    for name, target in targets.items():
        host = target.removeprefix("dns:///").rsplit(":", 1)[0]
        backend = name.split("_")[2].lower()
        cert = x509.load_pem_x509_certificate(base64.b64decode(secrets[f"{_name(backend)}-tls"]["tls.crt"]))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert host in sans.get_values_for_type(x509.DNSName), (name, host)


def test_user_supplied_per_component_secrets_are_mounted_and_nothing_is_generated() -> None:
    sets = [f"tls.perComponent.existingSecrets.{c}=mine-{c}" for c in COMPONENTS]
    docs = render(None, "1.33.0", *PER_COMPONENT, *sets)
    assert not [s for s in by_kind(docs, "Secret") if "-tls" in s["metadata"]["name"]]
    for c, spec in _specs(docs).items():
        assert _tls_secret_of(spec) == f"mine-{c}"


def test_the_shared_single_secret_mode_still_works() -> None:
    docs = render(None, "1.33.0", "tls.enabled=true", "tls.existingSecret=shared-tls", "tls.clientAuth=true")
    assert not [s for s in by_kind(docs, "Secret") if "-tls" in s["metadata"]["name"]]
    for _resource, spec in pod_specs(docs):
        if any(v["name"] == "tls" for v in spec["volumes"]):
            assert _tls_secret_of(spec) == "shared-tls"
            assert not [k for k in _env(spec) if k.endswith("TLS_ALLOWED_CLIENTS")]


@pytest.mark.parametrize(
    "sets, message",
    [
        (("tls.existingSecret=shared",), "not both"),
        (("tls.perComponent.existingSecrets.text=mine",), "must name all of"),
    ],
)
def test_contradictory_tls_values_fail_with_a_clear_message(sets: tuple[str, ...], message: str) -> None:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for item in (*PER_COMPONENT, *sets):
        args += ["--set", item]
    result = helm(*args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
