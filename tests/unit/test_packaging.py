"""Packaging: pyproject.toml declares what requirements*.txt pin, and the gateway runs from
requirements-gateway.txt alone, in a fresh venv, without torch."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEV_TOOLS_MARKER = "# Test and development tools"


def pins(lines: list[str]) -> dict[str, str]:
    """name -> version of each ``name==version`` line (names normalised as pip does)."""
    found = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==\s*(\S+)", line.split("#")[0].strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r)[0]).lower() for r in requirements}


def requirements_file(name: str) -> list[str]:
    return (ROOT / name).read_text().splitlines()


def test_runtime_dependencies_are_requirements_txt_pins_with_torch_as_a_range() -> None:
    declared = PYPROJECT["project"]["dependencies"]
    runtime = pins(requirements_file("requirements.txt")[: _dev_marker_line()])
    extras = PYPROJECT["project"]["optional-dependencies"]
    elsewhere = {"torch": "", "grpcio-tools": "dev", "tqdm": "training"}  # stubs are generated at build time
    assert pins(declared) == {name: version for name, version in runtime.items() if name not in elsewhere}
    for name, extra in elsewhere.items():
        if extra:
            assert pins(extras[extra])[name] == runtime[name], name
    (torch,) = [d for d in declared if d.startswith("torch")]
    assert re.fullmatch(r"torch>=\d+(\.\d+)*", torch), "torch is a range, so an installed CUDA build is kept"
    lowest = tuple(int(x) for x in torch.split(">=")[1].split("."))
    pinned = tuple(int(x) for x in re.match(r"[\d.]+", runtime["torch"])[0].split("."))
    assert pinned[: len(lowest)] >= lowest, "requirements.txt's torch must satisfy the declared range"
    # The --no-deps model packages are not dependencies: pip would install what they wrongly declare.
    assert not requirement_names(declared) & set(pins(requirements_file("requirements-nodeps.txt")))


def test_extras_match_the_install_sets() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert pins(extras["gateway"]) == pins(requirements_file("requirements-gateway.txt"))
    assert len(extras["gateway"]) == len(pins(requirements_file("requirements-gateway.txt")))
    assert {"tqdm"} <= requirement_names(extras["training"])
    assert {"pytest", "ruff", "grpcio-tools"} <= requirement_names(extras["dev"])
    tools = requirements_file("requirements.txt")[_dev_marker_line() :]
    tool_names = requirement_names([t for t in tools if t.strip() and not t.startswith("#")])
    assert tool_names <= requirement_names(extras["dev"])
    for name, version in pins(tools).items():
        assert pins(extras["dev"]).get(name) == version, name


def test_only_the_importable_packages_are_installed() -> None:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(include) == ["gateway*", "mmserve*", "services*", "training*"]
    first_party = PYPROJECT["tool"]["ruff"]["lint"]["isort"]["known-first-party"]
    assert {"services", "gateway", "training", "mmserve", "bench", "scripts", "tests"} == set(first_party)


def _dev_marker_line() -> int:
    lines = requirements_file("requirements.txt")
    return next(i for i, line in enumerate(lines) if line.startswith(DEV_TOOLS_MARKER))


GATEWAY_CHECK = """
import sys
from prometheus_client import CollectorRegistry
from gateway.app import create_app
from services.common.settings import GatewaySettings

app = create_app(GatewaySettings(text_address="127.0.0.1:1", vision_address="127.0.0.1:1",
                                 fusion_address="127.0.0.1:1"), CollectorRegistry())
assert app.test_client().get("/healthz").status_code == 200
assert app.test_client().get("/openapi.json").status_code == 200
heavy = {"torch", "transformers", "spacy", "PIL"} & set(sys.modules)
assert not heavy, heavy
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("torch is importable from the gateway's install set")
print("gateway ok")
"""


@pytest.mark.slow
def test_the_gateway_runs_from_requirements_gateway_txt_in_a_fresh_venv(tmp_path: Path) -> None:
    """10-30 s with pip's cache warm (PyPI, or the configured index, must be reachable)."""
    if not (ROOT / "mmserve" / "v1" / "text_pb2.py").exists():
        pytest.fail("generated stubs are missing: run `python -m scripts.gen_protos` (make does)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
         str(ROOT / "requirements-gateway.txt")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    # No bytecode: the checkout stays as it is (tests/unit/test_generated_code.py compares mmserve/ with protoc's output).
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for command, expected in (
        ([str(python), "-c", GATEWAY_CHECK], "gateway ok"),
        ([str(python), "-m", "gateway", "--help"], "--max-body-bytes"),
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr
