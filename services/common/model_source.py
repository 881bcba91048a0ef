"""Where model weights come from: a local directory, a hub id, or a packaged default."""

from __future__ import annotations

import hashlib
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def weights_digest(directory: Path, length: int = 12) -> str:
    """A short sha256 over the weight files of a local model: its revision when it has no hub commit."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:length]


def model_revision(model: str, revision: str) -> str:
    """The revision recorded for a model: the weights' digest if local, else the hub revision."""
    path = Path(model).expanduser()
    if path.exists():
        return "sha256:" + weights_digest(path if path.is_dir() else path.parent)
    return revision or "main"
