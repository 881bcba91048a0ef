"""Writes the hash-locked install sets (requirements*.lock) from the human-edited requirements*.txt.

    python -m scripts.lock          # or: make lock

pip itself resolves each set (``pip install --dry-run --ignore-installed --report``), so the
locks hold exactly what ``pip install`` picks with this machine's pip configuration (its
find-links and extra indexes included), for CPython 3.11 on Linux x86_64, which CI and the
images run. Each pin then carries the sha256 of the file pip chose plus those of PyPI's files
of the same version for CPython 3.11 on any platform (and the sdist), read from PyPI's JSON
simple API (PEP 691), so installs on other platforms verify too. A local build (the CPU torch
wheel, version 2.13.0+cpu, from a find-links folder) keeps its own hash alone (see ``render``).
Without network only the chosen files' hashes are written.

The smaller sets (the model image's runtime set, the gateway image's, the stubs stage's) are
resolved with the full lock's versions as constraints, so every lock agrees on every version.

The model image's CUDA variant (requirements-model-cuda.lock: the runtime set with PyPI's CUDA
torch and its nvidia-* libraries, and onnxruntime-gpu for onnxruntime) is resolved from PyPI
alone, for the image's platform rather than this machine's (``IMAGE_PLATFORMS``, CPython 3.11,
wheels only): this machine's package sources (its find-links with the CPU torch build, extra
indexes, constraints) stay out. pip reads only the wheels' metadata (PEP 658) and the report
names each file's sha256, so the multi-GB CUDA wheels are never downloaded. pip evaluates
environment markers (torch's ``platform_system == "Linux"`` nvidia-* dependencies) for the
interpreter running it, so this lock is written only from a CPython 3.11 on Linux x86_64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_TOOLS_MARKER = "# Test and development tools"
PYPI_SIMPLE = "https://pypi.org/simple"
# Wheel python tags that a CPython 3.11 interpreter installs (abi3 wheels of older minors too).
_PY311_TAG = re.compile(r"^(py3|py311|cp311|py2\.py3|cp3(?:[2-9]|10|11)-abi3)$")
# What pip in the images (python:3.11-slim-bookworm, glibc 2.36, x86_64) installs: manylinux
# wheels for glibc 2.36 and older. pip does not widen a --platform to older glibc tags itself.
IMAGE_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
# This machine's package sources, which a PyPI-only resolution leaves out (pip's config files
# are skipped too; network settings such as PIP_CERT or PIP_PROXY still apply).
_PIP_SOURCES = frozenset(
    {
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "PIP_NO_INDEX",
        "PIP_CONSTRAINT",
        "PIP_CONFIG_FILE",
    }
)


@dataclass(frozen=True)
class LockSpec:
    """One lock file: the requirement lines it resolves and how pip installs it."""

    output: str
    source: str  # the requirements file these lines come from (named in the header)
    no_deps: bool = False
    constrained: bool = True  # resolve with requirements.lock's versions as constraints
    pypi_only: bool = False  # resolve from PyPI alone for the images' platform (IMAGE_PLATFORMS)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path, runtime_only: bool = False) -> list[str]:
    """The requirement lines of a requirements file; ``runtime_only`` stops at the dev-tools
    marker and drops grpcio-tools (the images generate stubs in a separate stage)."""
    text = path.read_text()
    if runtime_only:
        text = text.split(DEV_TOOLS_MARKER)[0]
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if runtime_only:
        lines = [line for line in lines if normalize(re.match(r"[A-Za-z0-9_.-]+", line)[0]) != "grpcio-tools"]
    return lines


def _spec_lines(spec: LockSpec) -> list[str]:
    if spec.output == "requirements-model.lock":
        return requirement_lines(ROOT / "requirements.txt", runtime_only=True)
    if spec.output == "requirements-model-cuda.lock":
        # onnxruntime-gpu is onnxruntime's build with the CUDA execution provider (same module).
        return [
            re.sub(r"^onnxruntime(?=[=<>!~;\s]|$)", "onnxruntime-gpu", line)
            for line in requirement_lines(ROOT / "requirements.txt", runtime_only=True)
        ]
    if spec.output == "requirements-build.lock":
        return [
            line for line in requirement_lines(ROOT / "requirements.txt") if line.startswith("grpcio-tools")
        ]
    return requirement_lines(ROOT / spec.source)


LOCKS = (
    LockSpec("requirements.lock", "requirements.txt", constrained=False),
    LockSpec("requirements-model.lock", "requirements.txt (runtime part, without grpcio-tools)"),
    LockSpec(
        "requirements-model-cuda.lock",
        "requirements.txt (runtime part, without grpcio-tools, onnxruntime-gpu for onnxruntime; "
        "PyPI's CUDA torch for Linux x86_64, CPython 3.11: the model image's VARIANT=cuda)",
        pypi_only=True,
    ),
    LockSpec("requirements-gateway.lock", "requirements-gateway.txt"),
    LockSpec("requirements-build.lock", "requirements.txt (grpcio-tools, for the images' stubs stage)"),
    LockSpec("requirements-nodeps.lock", "requirements-nodeps.txt", no_deps=True),
)


def resolve(
    lines: Iterable[str], no_deps: bool, constraints: dict[str, str], pypi_only: bool = False
) -> dict[str, tuple[str, str]]:
    """normalized name -> (version, sha256 of the file pip chose), as pip resolves ``lines``;
    ``pypi_only``: from PyPI alone, for the images' platform (IMAGE_PLATFORMS, CPython 3.11)."""
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("\n".join(lines) + "\n")
        report = Path(tmp) / "report.json"
        args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        args += ["--report", str(report), "-r", str(requirements)]
        if no_deps:
            args.append("--no-deps")
        if constraints:
            pins = Path(tmp) / "constraints.txt"
            pins.write_text("".join(f"{name}=={version}\n" for name, version in constraints.items()))
            args += ["-c", str(pins)]
        env = None
        if pypi_only:
            here = (sys.platform, platform.machine(), sys.version_info[:2])
            if here != ("linux", "x86_64", (3, 11)):
                raise SystemExit(
                    f"lock: the images' lock needs CPython 3.11 on Linux x86_64 (markers), not {here}"
                )
            args += ["--index-url", PYPI_SIMPLE, "--only-binary=:all:", "--implementation", "cp"]
            args += ["--python-version", "3.11", *(f"--platform={p}" for p in IMAGE_PLATFORMS)]
            env = {key: value for key, value in os.environ.items() if key not in _PIP_SOURCES}
            env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no config file
        subprocess.run(args, check=True, env=env)
        installs = json.loads(report.read_text())["install"]
    resolved = {}
    for item in installs:
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(f"lock: pip reported no sha256 for {item['metadata']['name']}")
        resolved[normalize(item["metadata"]["name"])] = (item["metadata"]["version"], hashes["sha256"])
    return resolved


def public_version(version: str) -> str:
    """2.13.0+cpu -> 2.13.0: '==2.13.0' matches the local build and PyPI's alike (PEP 440)."""
    return version.split("+")[0]


def pypi_hashes(name: str, version: str) -> set[str]:
    """sha256 of PyPI's files of name==version that CPython 3.11 can install; empty offline."""
    request = urllib.request.Request(
        f"{PYPI_SIMPLE}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            files = json.load(response)["files"]
    except OSError as exc:
        print(f"lock: PyPI unavailable for {name} ({exc}); only the resolved file's hash", file=sys.stderr)
        return set()
    hashes = set()
    for file in files:
        filename = file["filename"]
        if file.get("yanked") or "sha256" not in file.get("hashes", {}):
            continue
        if filename.endswith(".whl"):
            parts = filename[: -len(".whl")].split("-")
            if parts[1] != version:
                continue
            python, abi = parts[-3], parts[-2]
            tag = f"{python}-{abi}" if abi == "abi3" else python
            if not any(_PY311_TAG.match(t) for t in (tag, *python.split("."))):
                continue
        elif not filename.endswith((f"-{version}.tar.gz", f"-{version}.zip")):
            continue
        hashes.add(file["hashes"]["sha256"])
    return hashes


def render(spec: LockSpec, resolved: dict[str, tuple[str, str]]) -> str:
    out = [
        f"# Hash-locked from {spec.source} by `make lock` (python -m scripts.lock); do not edit.",
        f"# pip install --require-hashes{' --no-deps' if spec.no_deps else ''} -r {spec.output}",
    ]
    for name in sorted(resolved):
        version, chosen = resolved[name]
        pinned = public_version(version)
        # A local build (torch 2.13.0+cpu from find-links) keeps its hash alone: pip ranks files
        # whose index lists an allowed hash above one without, so with PyPI's hashes here it would
        # take PyPI's (CUDA) torch and then miss the CUDA libraries it needs.
        extra = pypi_hashes(name, pinned) if pinned == version else set()
        hashes = sorted({chosen} | extra)
        lines = [f"{name}=={pinned}", *(f"    --hash=sha256:{h}" for h in hashes)]
        out.append(" \\\n".join(lines))
    return "\n".join(out) + "\n"


def lock_pins(path: Path) -> dict[str, str]:
    """name -> version of a lock file."""
    return {normalize(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="lock file names to write (default: all)")
    args = parser.parse_args(argv)
    for spec in LOCKS:  # requirements.lock first: the others take its versions
        if args.only and spec.output not in args.only:
            continue
        constraints = lock_pins(ROOT / "requirements.lock") if spec.constrained else {}
        resolved = resolve(_spec_lines(spec), spec.no_deps, constraints, spec.pypi_only)
        (ROOT / spec.output).write_text(render(spec, resolved))
        print(f"lock: wrote {spec.output} ({len(resolved)} packages)", file=sys.stderr)


if __name__ == "__main__":
    main()
