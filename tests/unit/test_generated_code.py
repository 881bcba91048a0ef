"""The generated stubs are exactly what protoc makes from protos/ (never stale, never hand-edited)."""

from __future__ import annotations

from pathlib import Path

from scripts.gen_protos import ROOT, generate


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "mmserve").rglob("*.py*")}
    in_tree = {p.relative_to(ROOT): p.read_bytes() for p in (ROOT / "mmserve").rglob("*.py*")}
    assert fresh, "protoc generated nothing"
    stale = sorted(str(path) for path in fresh if in_tree.get(path) != fresh[path])
    extra = sorted(str(path) for path in in_tree.keys() - fresh.keys())
    assert not stale and not extra, f"stale generated code (run `make protos`): {stale} {extra}"
