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
    # Stubs are generated at build time; tracing is imported only when it is turned on.
    tracing = {name: "tracing" for name in pins(extras["tracing"])}
    elsewhere = {"torch": "", "grpcio-tools": "dev", "tqdm": "training", **tracing}
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


# The model image's VARIANT=cuda set: PyPI's CUDA torch, its nvidia-* libraries, onnxruntime-gpu.
CUDA_LOCK = "requirements-model-cuda.lock"
LOCKS = {  # lock file -> the requirements file whose pins it must hold
    "requirements.lock": "requirements.txt",
    "requirements-gateway.lock": "requirements-gateway.txt",
    "requirements-nodeps.lock": "requirements-nodeps.txt",
}


def lock_entries(name: str) -> dict[str, list[str]]:
    """name -> its sha256 hashes, parsed from a lock file's `name==version \\ --hash=...` entries."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        assert re.fullmatch(r"[a-z0-9-]+==[^=\s]+", requirement), f"{name}: not an exact pin: {line}"
        hashes = [o.removeprefix("--hash=sha256:") for o in options]
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{name}: {line}"
        entries[requirement] = hashes
    return entries


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_lock_entry_is_an_exact_pin_with_hashes(lock: str) -> None:
    assert len(lock_entries(lock)) >= len(pins(requirements_file(LOCKS[lock])))


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_holds_every_pin_of_its_requirements_file_at_the_same_version(lock: str) -> None:
    locked = pins(list(lock_entries(lock)))
    source = requirements_file(LOCKS[lock])
    for name, version in pins(source).items():
        assert locked.get(name) == version, (
            f"{lock}: {name}=={version} is {locked.get(name)}; run `make lock`"
        )
    # Unpinned tools (pytest-timeout, ruff, ...) are locked too.
    assert requirement_names([s for s in source if s.strip() and not s.startswith("#")]) <= set(locked)


def test_all_locks_agree_on_every_version() -> None:
    full = pins(list(lock_entries("requirements.lock")))
    for lock in ("requirements-gateway.lock", "requirements-model.lock", "requirements-build.lock"):
        for name, version in pins(list(lock_entries(lock))).items():
            assert full.get(name) == version, f"{lock}: {name}=={version} vs requirements.lock"
    # The CUDA variant adds what only it installs (nvidia-*, triton, onnxruntime-gpu); the rest agrees.
    for name, version in pins(list(lock_entries(CUDA_LOCK))).items():
        assert full.get(name, version) == version, f"{CUDA_LOCK}: {name}=={version} vs requirements.lock"


def test_every_line_of_the_cuda_model_lock_is_an_exact_pin_with_a_sha256() -> None:
    text = (ROOT / CUDA_LOCK).read_text()
    entries = [
        e.strip() for e in text.replace("\\\n", " ").splitlines() if e.strip() and not e.startswith("#")
    ]
    assert entries
    for entry in entries:
        requirement, *options = entry.split()
        assert re.fullmatch(r"[a-z0-9-]+==[^=\s+]+", requirement), f"{CUDA_LOCK}: not an exact pin: {entry}"
        assert options and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", o) for o in options), entry
    assert len(lock_entries(CUDA_LOCK)) == len(entries)


def test_the_cuda_model_lock_is_the_model_set_with_cuda_torch_and_onnxruntime_gpu() -> None:
    cuda = pins(list(lock_entries(CUDA_LOCK)))
    model = pins(list(lock_entries("requirements-model.lock")))
    # Every runtime package at the CPU variant's version, onnxruntime-gpu standing in for onnxruntime.
    for name, version in model.items():
        if name == "onnxruntime":
            assert "onnxruntime" not in cuda and cuda["onnxruntime-gpu"] == version
        else:
            assert cuda.get(name) == version, f"{CUDA_LOCK}: {name} is {cuda.get(name)}, not {version}"
    # PyPI's Linux torch depends on the CUDA libraries; the lock holds them (pip --require-hashes
    # refuses to install a dependency the lock lacks).
    for library in ("triton", "nvidia-cudnn", "nvidia-cublas", "nvidia-nccl", "nvidia-cuda-runtime"):
        assert any(name.startswith(library) for name in cuda), f"{CUDA_LOCK} lacks {library}"
    assert not {"pytest", "ruff", "grpcio-tools"} & set(cuda)


def test_make_lock_writes_the_cuda_model_lock_from_pypi_for_the_image_platform() -> None:
    from scripts import lock

    (spec,) = [spec for spec in lock.LOCKS if spec.output == CUDA_LOCK]
    assert spec.pypi_only and spec.constrained and not spec.no_deps
    lines = lock._spec_lines(spec)
    assert "onnxruntime-gpu==" + pins(requirements_file("requirements.txt"))["onnxruntime"] in lines
    assert not [line for line in lines if line.startswith("onnxruntime==")]
    assert "manylinux_2_28_x86_64" in lock.IMAGE_PLATFORMS  # torch's Linux wheels
    assert "manylinux_2_27_x86_64" in lock.IMAGE_PLATFORMS  # cuDNN's


def test_make_installs_from_the_locks_and_can_regenerate_them() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M)[1]
    assert "requirements.lock" in stamp_rule and "requirements-nodeps.lock" in stamp_rule
    assert "pip install -q --require-hashes -r requirements.lock" in makefile
    assert "pip install -q --require-hashes --no-deps -r requirements-nodeps.lock" in makefile
    assert re.search(r"^lock:.*\n\t.*\n\t\$\(PY\) -m scripts\.lock$", makefile, re.M)
