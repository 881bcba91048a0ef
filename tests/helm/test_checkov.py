"""checkov over the rendered chart (every value set); skips live, justified, in deploy/helm/.checkov.yaml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from chart_helpers import ROOT, VALUE_SET_IDS, VALUE_SETS, render_text

CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
CONFIG = ROOT / "deploy" / "helm" / ".checkov.yaml"


def test_checkov_passes(tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `python -m scripts.install_tools` (make tools)")
    for name, values_file in zip(VALUE_SET_IDS, VALUE_SETS, strict=True):
        (tmp_path / f"{name}.yaml").write_text(render_text(values_file))
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(CONFIG), "--directory", str(tmp_path), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]
    ]
    assert summary["failed"] == 0 and result.returncode == 0, "\n".join(failed) or result.stderr
    assert summary["passed"] > 500, "checkov checked suspiciously little"


def test_every_skip_is_justified() -> None:
    """Each skipped check id is preceded by a comment saying why."""
    lines = CONFIG.read_text().splitlines()
    skips = yaml.safe_load(CONFIG.read_text())["skip-check"]
    assert skips
    for check in skips:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"- {check}")
        above = lines[index - 1].strip()
        assert above.startswith("#") or lines[index - 1].strip().startswith("- CKV"), f"{check} has no reason"
