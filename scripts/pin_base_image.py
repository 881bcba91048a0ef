"""Pins the Dockerfiles' Python base image by digest: ``PYTHON_IMAGE=python:<tag>@sha256:<digest>``.

    python -m scripts.pin_base_image              # or: make pin-base-image
    python -m scripts.pin_base_image --tag 3.11.14-slim-bookworm

Asks Docker Hub's registry API (anonymous pull token, then a HEAD of the tag's manifest list)
for the digest the tag points at now, and rewrites the one ``ARG PYTHON_IMAGE=`` line of each
Dockerfile. A digest never moves, so rebuilds get the same base until this runs again; the tag
stays in front of it for people. Needs network access to Docker Hub.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = (
    ROOT / "deploy" / "docker" / "gateway.Dockerfile",
    ROOT / "deploy" / "docker" / "model.Dockerfile",
)
_ARG = re.compile(r"^ARG PYTHON_IMAGE=python:(?P<tag>[^@\s]+)(?:@sha256:[0-9a-f]{64})?$", re.M)
_TOKEN_URL = "https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/python:pull"
_MANIFEST_URL = "https://registry-1.docker.io/v2/library/python/manifests/{tag}"
_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def current_tag(dockerfile: Path) -> str:
    match = _ARG.search(dockerfile.read_text())
    if match is None:
        raise SystemExit(f"{dockerfile}: no 'ARG PYTHON_IMAGE=python:<tag>' line")
    return match["tag"]


def resolve_digest(tag: str, timeout_s: float = 30.0) -> str:
    """The sha256 digest python:<tag> points at on Docker Hub now (of its multi-arch index)."""
    with urllib.request.urlopen(_TOKEN_URL, timeout=timeout_s) as response:
        token = json.load(response)["token"]
    request = urllib.request.Request(
        _MANIFEST_URL.format(tag=tag),
        method="HEAD",
        headers={"Authorization": f"Bearer {token}", "Accept": _ACCEPT},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        digest = response.headers.get("Docker-Content-Digest", "")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise SystemExit(f"python:{tag}: the registry returned no digest ({digest!r})")
    return digest


def pin(dockerfile: Path, tag: str, digest: str) -> None:
    text = _ARG.sub(f"ARG PYTHON_IMAGE=python:{tag}@{digest}", dockerfile.read_text(), count=1)
    dockerfile.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="image tag to pin (default: the Dockerfiles' current tag)")
    args = parser.parse_args(argv)
    tags = {current_tag(d) for d in DOCKERFILES}
    tag = args.tag or tags.pop()
    if not args.tag and tags:
        raise SystemExit(f"the Dockerfiles name different tags: {sorted({tag, *tags})}; pass --tag")
    digest = resolve_digest(tag)
    for dockerfile in DOCKERFILES:
        pin(dockerfile, tag, digest)
        print(f"{dockerfile.relative_to(ROOT)}: python:{tag}@{digest}")


if __name__ == "__main__":
    main()
